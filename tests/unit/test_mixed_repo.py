"""Issue 18 item 9: a GitOps repository that mixes VM manifests and plans.

Documents of kinds that are clearly not plans (any other API group) are skipped with one
summary note, not one error each; a StorageClass-like typo in a plan's own group gets one hint
suggesting StoragePlan; a plan's kind in another group is still an error (a typo).
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from reconciler.cli.main import main
from reconciler.model.errors import PlanError
from reconciler.plans.load import not_a_plan, read_plans

PLAN = """\
apiVersion: vmstorage.dev/v1alpha1
kind: StoragePlan
metadata:
  name: fedora-to-ceph
spec:
  namespace: mig-vm
  storageClass: ceph-rbd
  virtualMachines:
    - name: vm-fedora
"""
VM = """\
apiVersion: kubevirt.io/v1
kind: VirtualMachine
metadata:
  name: {name}
  namespace: mig-vm
spec:
  runStrategy: Always
  template: {{spec: {{domain: {{devices: {{}}}}}}}}
"""
OTHERS = """\
apiVersion: storage.k8s.io/v1
kind: StorageClass
metadata: {name: ceph-rbd}
provisioner: rbd.csi.ceph.com
---
apiVersion: v1
kind: ConfigMap
metadata: {name: settings, namespace: mig-vm}
data: {a: b}
---
apiVersion: kustomize.config.k8s.io/v1beta1
kind: Kustomization
resources: [vms.yaml]
---
apiVersion: v1
kind: List
items:
  - apiVersion: kubevirt.io/v1
    kind: VirtualMachine
    metadata: {name: vm-listed, namespace: mig-vm}
  - apiVersion: vmstorage.dev/v1alpha1
    kind: StoragePlan
    metadata: {name: listed}
    spec: {namespace: mig-vm, storageClass: ceph-rbd, virtualMachines: [{name: vm-listed}]}
"""


def monorepo(root: Path) -> Path:
    """apps/ (three VMs), infra/ (a StorageClass, a ConfigMap, a Kustomization, a List of a VM
    and a plan) and vm-storage/ (a plan): what `plan` of the repository's root reads."""
    (root / "apps").mkdir(parents=True)
    (root / "infra").mkdir()
    (root / "vm-storage").mkdir()
    (root / "apps" / "vms.yaml").write_text(
        "---\n".join(VM.format(name=f"vm-{n}") for n in ("a", "b", "c"))
    )
    (root / "infra" / "all.yaml").write_text(OTHERS)
    (root / "vm-storage" / "fedora.yaml").write_text(PLAN)
    return root


NOTE = (
    "skipped 7 documents that are not plans (other API groups): 4 VirtualMachine "
    "(kubevirt.io/v1), 1 ConfigMap (v1), 1 Kustomization (kustomize.config.k8s.io/v1beta1), "
    "1 StorageClass (storage.k8s.io/v1); to read only the plans, point at their directory "
    '(docs/plans.md, "Plans in a GitOps repository")'
)


def test_documents_of_other_api_groups_are_skipped_and_told_in_one_note(tmp_path: Path) -> None:
    found = read_plans([monorepo(tmp_path)])

    assert [p.name for p in found.plans] == ["fedora-to-ceph", "listed"]
    assert [(s.kind, s.source.line) for s in found.skipped] == [
        ("VirtualMachine", 2),
        ("VirtualMachine", 11),
        ("VirtualMachine", 20),
        ("StorageClass", 2),
        ("ConfigMap", 7),
        ("Kustomization", 12),
        ("VirtualMachine", 19),
    ]
    assert found.note == NOTE


def test_validate_of_a_mixed_repository_passes_with_one_note(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    root = monorepo(tmp_path)

    rc = main(["validate", str(root)])
    out, err = capsys.readouterr()
    assert rc == 0, err
    assert err == f"note: {NOTE}\n"
    assert out.endswith("2 plan(s) valid.\n")

    rc = main(["validate", str(root), "-o", "json"])
    doc = json.loads(capsys.readouterr().out)
    assert rc == 0 and len(doc["plans"]) == 2
    assert doc["skipped"][0] == {
        "file": str(root / "apps" / "vms.yaml"),
        "line": 2,
        "apiVersion": "kubevirt.io/v1",
        "kind": "VirtualMachine",
    }


def test_a_storageclass_typo_in_a_plans_group_gets_one_hint_and_a_real_one_is_skipped(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / "p.yaml"
    path.write_text(
        PLAN + "---\napiVersion: vmstorage.dev/v1alpha1\nkind: StorageClass\nmetadata: {name: x}\n"
        "---\n" + OTHERS.split("---\n", maxsplit=1)[0]
    )
    rc = main(["validate", str(path)])
    _, err = capsys.readouterr()
    assert rc == 2
    assert err.count("error: ") == 1, err
    assert err.count("hint: ") == 1, err
    assert (
        f"{path}:12: kind: unknown kind 'StorageClass' (apiVersion 'vmstorage.dev/v1alpha1')" in err
    )
    assert "hint: did you mean 'StoragePlan'?" in err
    assert "note: skipped 1 document that is not a plan" not in err  # problems come first


@pytest.mark.parametrize(
    ("api", "kind", "skipped"),
    [
        ("kubevirt.io/v1", "VirtualMachine", True),
        ("cdi.kubevirt.io/v1beta1", "DataVolume", True),
        ("storage.k8s.io/v1", "StorageClass", True),
        ("v1", "ConfigMap", True),
        ("apps/v1", "Deployment", True),
        ("argoproj.io/v1alpha1", "Application", True),
        ("vmstorage.dev/v1alpha1", "StorageClass", False),  # our group: a typo
        ("vmstorage.dev/v1", "Deployment", False),
        ("migrations.kubevirt.io/v1alpha1", "VirtualMachineStorageMigration", False),
        ("vmstorage.io/v1alpha1", "Storageplan", False),  # a group spelled close to ours
        ("storage.k8s.io/v1", "StoragePlan", False),  # a plan's kind in another group
        ("v1", "VirtualMachineStorageMigrationPlan", False),
    ],
)
def test_what_is_clearly_not_a_plan(api: str, kind: str, skipped: bool) -> None:
    assert not_a_plan(api, kind) is skipped


def test_a_plans_kind_in_another_group_is_still_an_error(tmp_path: Path) -> None:
    path = tmp_path / "p.yaml"
    path.write_text(PLAN.replace("vmstorage.dev/v1alpha1", "storage.k8s.io/v1"))
    with pytest.raises(PlanError) as caught:
        read_plans([path])
    (problem,) = caught.value.problems
    assert "kind StoragePlan needs apiVersion vmstorage.dev/v1alpha1" in problem.message


def test_plan_of_a_directory_without_plans_says_what_it_skipped(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    (tmp_path / "vms.yaml").write_text(VM.format(name="vm-a"))
    rc = main(["plan", str(tmp_path), "--kubeconfig", str(tmp_path / "none")])
    _, err = capsys.readouterr()
    assert rc == 2
    assert "note: skipped 1 document that is not a plan" in err
    assert "the files hold no plan documents (1 document(s) of other kinds were skipped)" in err
