"""kubevirt-migration-controller (KMC) plans as a new user writes them: the examples of KubeVirt's
user guide (docs/storage/migration_controller.md in kubevirt/user-guide, copied here), the
namespace taken from -n/--namespace by kubectl's rule, and names checked against the current
upstream CRDs (kubevirt-migration-controller main, 8a45c9e, 2026-04-30) and KubeVirt's rules."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from reconciler.cli.main import main
from reconciler.model.errors import PlanError, Problem
from reconciler.model.plan import DEFAULT_CLASS, Retention, VolumeTarget
from reconciler.plans.kmc_names import child_plan_name
from reconciler.plans.load import load_plans, parse_plans

REPO = Path(__file__).resolve().parents[2]

# The user guide's "Create a migration plan", as it is: no metadata.namespace (the guide
# pipes it to `kubectl apply -f -`, which puts it in the current namespace).
GUIDE_PLAN = """\
apiVersion: migrations.kubevirt.io/v1alpha1
kind: VirtualMachineStorageMigrationPlan
metadata:
  name: test-plan
spec:
  virtualMachines:
  - name: simple-vm
    targetMigrationPVCs:
    - volumeName: dv-disk
      destinationPVC:
        name: test-pvc
        storageClassName: storageclass-b
"""

# The user guide's "Multi namespace" example, as it is.
GUIDE_MULTI = """\
apiVersion: migrations.kubevirt.io/v1alpha1
kind: MultiNamespaceVirtualMachineStorageMigrationPlan
metadata:
  name: multi-ns-storage-migration-plan
spec:
  namespaces:
    - name: production
      virtualMachines:
        - name: prod-vm-1
          targetMigrationPVCs:
            - volumeName: rootdisk
              destinationPVC:
                storageClassName: fast-ssd
    - name: development
      virtualMachines:
        - name: dev-vm-1
          targetMigrationPVCs:
            - volumeName: rootdisk
              destinationPVC:
                storageClassName: standard
"""

NATIVE = """\
apiVersion: vmstorage.dev/v1alpha1
kind: StoragePlan
metadata:
  name: native
spec:
  storageClass: fast
  virtualMachines: [{name: vm-a}]
"""

Row = tuple[int, str, str, str]


def write(directory: Path, name: str, text: str) -> Path:
    path = directory / name
    path.write_text(text)
    return path


def rows(paths: list[Path], **kwargs: object) -> list[Row]:
    with pytest.raises(PlanError) as caught:
        load_plans(paths, **kwargs)  # type: ignore[arg-type]
    found = []
    for problem in caught.value.problems:
        assert problem.source is not None, problem
        found.append((problem.source.line, problem.source.path, problem.message, problem.hint))
    return found


def with_namespace(text: str, namespace: str) -> str:
    return text.replace("metadata:\n", f"metadata:\n  namespace: {namespace}\n", 1)


MISSING_HINT = (
    "a VirtualMachineStorageMigrationPlan acts in one namespace: set metadata.namespace, or "
    "pass -n/--namespace NAMESPACE (as with kubectl, a document without a namespace lands in "
    "the given one, else in the kubeconfig context's namespace)"
)


# --------------------------------------------------------------------------------------------
# The namespace: kubectl's rule
# --------------------------------------------------------------------------------------------


def test_guide_plan_without_a_namespace_is_refused_with_a_hint(tmp_path: Path) -> None:
    path = write(tmp_path, "test-plan.yaml", GUIDE_PLAN)
    assert rows([path]) == [
        (4, "metadata.namespace", "missing required field 'namespace'", MISSING_HINT)
    ]


def test_guide_plan_lands_in_the_namespace_given_with_n(tmp_path: Path) -> None:
    path = write(tmp_path, "test-plan.yaml", GUIDE_PLAN)
    (plan,) = load_plans([path], namespace="apps")
    assert (plan.name, plan.namespace, plan.origin_kind) == (
        "test-plan",
        "apps",
        "VirtualMachineStorageMigrationPlan",
    )
    assert plan.storage_class is None and plan.retention is Retention.KEEP
    (vm,) = plan.virtual_machines
    assert vm.name == "simple-vm"
    (volume,) = vm.volumes
    assert volume == VolumeTarget(
        name="dv-disk",
        source=volume.source,
        storage_class="storageclass-b",
        target_name="test-pvc",
    )
    assert (volume.source.line, volume.source.path) == (
        9,
        "spec.virtualMachines[0].targetMigrationPVCs[0]",
    )


def test_a_document_namespace_that_agrees_with_n_is_used(tmp_path: Path) -> None:
    path = write(tmp_path, "p.yaml", with_namespace(GUIDE_PLAN, "apps"))
    assert [p.namespace for p in load_plans([path])] == ["apps"]
    assert [p.namespace for p in load_plans([path], namespace="apps")] == ["apps"]


def test_a_document_namespace_that_differs_from_n_is_an_error_like_kubectl(
    tmp_path: Path,
) -> None:
    path = write(tmp_path, "p.yaml", with_namespace(GUIDE_PLAN, "prod"))
    assert rows([path], namespace="apps") == [
        (
            4,
            "metadata.namespace",
            "the namespace from the document 'prod' does not match the namespace 'apps' "
            "given with -n/--namespace",
            "kubectl refuses this too: pass --namespace=prod, or remove metadata.namespace so "
            "the document lands in 'apps'",
        )
    ]


def test_n_is_held_to_the_allowed_namespaces(tmp_path: Path) -> None:
    path = write(tmp_path, "p.yaml", GUIDE_PLAN)
    assert rows([path], namespace="apps", allowed_namespaces=frozenset({"prod"})) == [
        (
            4,
            "metadata.namespace",
            "namespace 'apps' (from -n/--namespace) is not allowed here",
            "this run may act only in: prod",
        )
    ]
    assert load_plans([path], namespace="prod", allowed_namespaces=frozenset({"prod"}))


def test_an_invalid_n_is_bad_input_before_any_file_is_read(tmp_path: Path) -> None:
    with pytest.raises(PlanError) as caught:
        load_plans([tmp_path / "does-not-matter"], namespace="Apps")
    assert list(caught.value.problems) == [
        Problem(
            None,
            "-n/--namespace: invalid namespace 'Apps': not a DNS-1123 label",
            "use at most 63 lowercase letters, digits and '-', starting and ending with a "
            "letter or digit",
        )
    ]


def test_guide_multi_namespace_plan_needs_no_namespace(tmp_path: Path) -> None:
    path = write(tmp_path, "multi.yaml", GUIDE_MULTI)
    for namespace in (None, "migrations"):
        plans = load_plans([path], namespace=namespace)
        assert [(p.name, p.namespace) for p in plans] == [
            ("multi-ns-storage-migration-plan-development", "development"),
            ("multi-ns-storage-migration-plan-production", "production"),
        ]
        classes = [p.virtual_machines[0].volumes[0].storage_class for p in plans]
        assert classes == ["standard", "fast-ssd"]


def test_a_multi_namespace_plan_in_another_namespace_than_n_is_an_error(tmp_path: Path) -> None:
    path = write(tmp_path, "multi.yaml", with_namespace(GUIDE_MULTI, "kmc"))
    assert len(load_plans([path])) == 2
    assert load_plans([path], namespace="kmc")
    ((line, field, message, _),) = rows([path], namespace="apps")
    assert (line, field) == (4, "metadata.namespace")
    assert message.startswith("the namespace from the document 'kmc' does not match")


def test_storage_plan_follows_the_same_rule_with_spec_namespace(tmp_path: Path) -> None:
    path = write(tmp_path, "native.yaml", NATIVE)
    ((line, field, message, hint),) = rows([path])
    assert (line, field, message) == (6, "spec.namespace", "missing required field 'namespace'")
    assert hint.startswith("a StoragePlan acts in one namespace: set spec.namespace, or pass -n")
    assert [p.namespace for p in load_plans([path], namespace="apps")] == ["apps"]
    other = write(tmp_path, "other.yaml", NATIVE.replace("spec:\n", "spec:\n  namespace: db\n"))
    ((line, field, message, _),) = rows([other], namespace="apps")
    assert (line, field) == (6, "spec.namespace")
    assert "'db' does not match the namespace 'apps'" in message


def test_parse_plans_takes_n_too() -> None:
    (plan,) = parse_plans(GUIDE_PLAN, "stdin", namespace="apps")
    assert plan.namespace == "apps"


# --------------------------------------------------------------------------------------------
# Names: the current upstream CRDs, and what KubeVirt would refuse later
# --------------------------------------------------------------------------------------------

CRD = (
    "(kubevirt-migration-controller's CRD pattern ^[a-z]([-a-z0-9]*[a-z0-9])?$: the API server "
    "refuses the plan)"
)
DNS1035 = (
    "use at most 63 lowercase letters, digits and '-', starting with a letter and ending "
    "with a letter or digit " + CRD
)
KUBEVIRT = (
    "(KubeVirt admits only DNS-1123 label disk names and each volume needs the disk of its "
    "name, so no VM has such a volume)"
)
VM_FIELD = "spec.virtualMachines[0].name"
VOLUME_FIELD = "spec.virtualMachines[0].targetMigrationPVCs[0].volumeName"
PVC_FIELD = "spec.virtualMachines[0].targetMigrationPVCs[0].destinationPVC.name"


@pytest.mark.parametrize(
    ("old", "new", "expected"),
    [
        pytest.param(
            "name: simple-vm",
            "name: 1st-vm",
            (
                7,
                VM_FIELD,
                "invalid VM name '1st-vm': not a DNS-1035 label",
                "did you mean 'st-vm'? " + DNS1035,
            ),
            id="vm-name-starting-with-a-digit",
        ),
        pytest.param(
            "name: simple-vm",
            "name: simple.vm",
            (
                7,
                VM_FIELD,
                "invalid VM name 'simple.vm': not a DNS-1035 label",
                "did you mean 'simple-vm'? " + DNS1035,
            ),
            id="vm-name-with-a-dot",
        ),
        pytest.param(
            "name: simple-vm",
            "name: " + "v" * 64,
            (
                7,
                VM_FIELD,
                f"invalid VM name '{'v' * 64}': 64 characters, more than 63",
                f"did you mean '{'v' * 63}'? " + DNS1035,
            ),
            id="vm-name-over-63",
        ),
        pytest.param(
            "name: test-pvc",
            "name: " + "p" * 64,
            (
                11,
                PVC_FIELD,
                f"invalid destination PVC name '{'p' * 64}': 64 characters, more than 63",
                f"did you mean '{'p' * 63}'? " + DNS1035,
            ),
            id="destination-pvc-name-over-63",
        ),
        pytest.param(
            "name: test-pvc",
            "name: Test_PVC",
            (
                11,
                PVC_FIELD,
                "invalid destination PVC name 'Test_PVC': not a DNS-1035 label",
                "did you mean 'test-pvc'? " + DNS1035,
            ),
            id="destination-pvc-name-not-dns",
        ),
        pytest.param(
            "name: test-pvc",
            "name: 0-pvc",
            (
                11,
                PVC_FIELD,
                "invalid destination PVC name '0-pvc': not a DNS-1035 label",
                "did you mean 'pvc'? " + DNS1035,
            ),
            id="destination-pvc-name-starting-with-a-digit",
        ),
        pytest.param(
            "volumeName: dv-disk",
            "volumeName: dv_disk",
            (
                9,
                VOLUME_FIELD,
                "invalid volume name 'dv_disk': not a DNS-1123 label",
                "did you mean 'dv-disk'? use at most 63 lowercase letters, digits and '-', "
                "starting and ending with a letter or digit " + KUBEVIRT,
            ),
            id="volume-name-kubevirt-would-never-have",
        ),
    ],
)
def test_names_the_crd_or_kubevirt_would_refuse_are_refused_now_naming_the_rule(
    tmp_path: Path, old: str, new: str, expected: Row
) -> None:
    path = write(tmp_path, "p.yaml", GUIDE_PLAN.replace(old, new))
    assert rows([path], namespace="apps") == [expected]


def test_names_the_crd_accepts_load(tmp_path: Path) -> None:
    text = GUIDE_PLAN.replace("name: simple-vm", "name: " + "v" * 63).replace(
        "name: test-pvc", "name: " + "p" * 63
    )
    (plan,) = load_plans([write(tmp_path, "p.yaml", text)], namespace="apps")
    assert plan.virtual_machines[0].volumes[0].target_name == "p" * 63


def test_child_plan_names_match_kmc_get_namespaced_plan_name() -> None:
    # The vector of KMC's own test (multinamespacestoragemigplan/controller_test.go,
    # "should respect naming length constraints for namespaced plans").
    assert child_plan_name("a" * 253, "test-namespace") == ("a" * 229 + "-df1f7590-test-namespace")
    assert child_plan_name("plan", "dev") == "plan-dev"
    assert len(child_plan_name("p" * 249, "dev")) == 253  # exactly at the limit: not cut
    assert child_plan_name("p" * 249, "dev") == "p" * 249 + "-dev"


def test_a_child_plan_name_cut_at_a_dot_is_refused(tmp_path: Path) -> None:
    text = GUIDE_MULTI.replace(
        "name: multi-ns-storage-migration-plan", "name: " + "m" * 232 + "." + "m" * 20
    )
    found = rows([write(tmp_path, "m.yaml", text)])
    # Cut to 253 - len("-<hash>-production") = 233 characters: it ends in the '.'; for
    # "development" the cut is one character earlier, and that name stays valid.
    ((line, field, message, hint),) = found
    assert (line, field) == (7, "spec.namespaces[0].name")
    assert re.fullmatch(
        r"the per-namespace plan name 'm{232}\.-[0-9a-f]{8}-production' that KMC derives from "
        r"the plan and namespace names is not a valid DNS-1123 subdomain",
        message,
    ), message
    assert hint.startswith("shorten or rename metadata.name; ")


def test_missing_destination_storage_class_is_the_default_class(tmp_path: Path) -> None:
    text = GUIDE_PLAN.replace("        storageClassName: storageclass-b\n", "")
    (plan,) = load_plans([write(tmp_path, "p.yaml", text)], namespace="apps")
    assert plan.virtual_machines[0].volumes[0].storage_class == DEFAULT_CLASS


# --------------------------------------------------------------------------------------------
# The command line and the docs
# --------------------------------------------------------------------------------------------


def test_validate_n_accepts_the_guide_examples(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    plan = write(tmp_path, "test-plan.yaml", GUIDE_PLAN)
    multi = write(tmp_path, "multi.yaml", GUIDE_MULTI)
    assert main(["validate", str(plan), str(multi)]) == 2
    _, err = capsys.readouterr()
    assert f"error: {plan}:4: metadata.namespace: missing required field 'namespace'" in err
    assert "hint: " + MISSING_HINT in err
    assert main(["validate", "-n", "apps", str(plan), str(multi), "-o", "json"]) == 0
    out, _ = capsys.readouterr()
    assert [(p["name"], p["namespace"]) for p in json.loads(out)["plans"]] == [
        ("test-plan", "apps"),
        ("multi-ns-storage-migration-plan-development", "development"),
        ("multi-ns-storage-migration-plan-production", "production"),
    ]
    assert main(["validate", "--namespace", "apps", str(plan)]) == 0


@pytest.mark.parametrize("command", ["validate", "plan", "apply"])
def test_every_plan_command_takes_n(command: str, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        main([command, "--help"])
    out, _ = capsys.readouterr()
    assert "-n NS, --namespace NS" in out


def test_the_docs_kmc_example_without_a_namespace_validates_with_n() -> None:
    text = (REPO / "docs/plans.md").read_text()
    blocks = re.findall(r"```yaml\n(# [^\n]*-n [^\n]*\n.*?)```", text, flags=re.DOTALL)
    assert blocks, "docs/plans.md shows a KMC plan without a namespace"
    for block in blocks:
        with pytest.raises(PlanError):
            parse_plans(block, "docs/plans.md")
        assert parse_plans(block, "docs/plans.md", namespace="apps")
