"""`plan` on the real engine: upstream KubeVirt and CDI controllers, our node side.

Each test builds its scenario in its own namespace with plain API calls, waits until the
controllers have settled it (VMs running, DataVolumes imported), writes a plan file and runs the
CLI in-process. Assertions are on the CLI's JSON output, exit code and the cluster's state.
"""

from __future__ import annotations

import copy
import json
import textwrap
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pykube
import pytest

from reconciler.cli.main import main
from reconciler.kube.client import PAGE_SIZE_ENV
from reconciler.render.sandbox import load_templates
from testenv import seed
from testenv.controlplane import ControlPlane
from tests.support.kube import Eventually, get_json, reason_lines, vmi_running

KUBEVIRT_API = "kubevirt.io/v1"
CDI_API = "cdi.kubevirt.io/v1beta1"


@pytest.fixture(scope="module", autouse=True)
def cluster_objects(api: pykube.HTTPClient) -> None:
    """The seed's StorageClasses and KubeVirt CR (configured for live migration)."""
    seed.seed_cluster(api)


@pytest.fixture
def kubevirt_config(api: pykube.HTTPClient) -> Iterator[Callable[[dict[str, Any]], None]]:
    """Patch the shared KubeVirt CR's spec for one test; the spec it had is restored after
    (the real engine's, which its virt-controller runs with, or the seed's)."""
    original = get_json(api, KUBEVIRT_API, "kubevirt", "kubevirts/kubevirt")["spec"]

    def patch(spec: dict[str, Any]) -> None:
        _merge(api, KUBEVIRT_API, "kubevirt", "kubevirts/kubevirt", {"spec": spec})

    yield patch
    body = [{"op": "replace", "path": "/spec", "value": original}]
    response = api.patch(
        version=KUBEVIRT_API,
        namespace="kubevirt",
        url="kubevirts/kubevirt",
        data=json.dumps(body),
        headers={"Content-Type": "application/json-patch+json"},
    )
    api.raise_for_status(response)


# --------------------------------------------------------------------------------------------
# helpers
# --------------------------------------------------------------------------------------------


def _merge(
    api: pykube.HTTPClient, version: str, namespace: str, url: str, body: dict[str, Any]
) -> None:
    response = api.patch(
        version=version,
        namespace=namespace,
        url=url,
        data=json.dumps(body),
        headers={"Content-Type": "application/merge-patch+json"},
    )
    api.raise_for_status(response)


def create(api: pykube.HTTPClient, obj: dict[str, Any]) -> None:
    plural = {
        "VirtualMachine": "virtualmachines",
        "PersistentVolumeClaim": "persistentvolumeclaims",
        "DataVolume": "datavolumes",
    }[obj["kind"]]
    response = api.post(
        version=obj["apiVersion"],
        namespace=obj["metadata"]["namespace"],
        url=plural,
        data=json.dumps(obj),
    )
    api.raise_for_status(response)


def dv_succeeded(api: pykube.HTTPClient, namespace: str, name: str) -> bool:
    dv = get_json(api, "cdi.kubevirt.io/v1beta1", namespace, f"datavolumes/{name}")
    return (dv.get("status") or {}).get("phase") == "Succeeded"


def fedora(
    namespace: str, name: str = "vm-fedora", *, running: bool = True, **kwargs: Any
) -> dict[str, Any]:
    return seed.fedora_vm(namespace, name, f"{name}-disk", running=running, **kwargs)


SETTLE = 60.0
"""Seconds a new VM may take to import its disks and run: on the real engine a start goes
through virt-controller, the scheduler, KWOK and the node side."""


def settle(api: pykube.HTTPClient, eventually: Eventually, vm: dict[str, Any]) -> None:
    """Create ``vm`` and wait for its disks (and VMI, when it should run) to be ready."""
    create(api, vm)
    namespace, name = vm["metadata"]["namespace"], vm["metadata"]["name"]
    for template in vm["spec"].get("dataVolumeTemplates", []):
        dv = template["metadata"]["name"]
        if vm["spec"].get("runStrategy") == "Always":
            eventually(lambda dv=dv: dv_succeeded(api, namespace, dv), SETTLE, what=f"DV {dv}")
    if vm["spec"].get("runStrategy") == "Always":
        eventually(lambda: vmi_running(api, namespace, name), SETTLE, what=f"VMI {name} Running")


def plan_file(tmp_path: Path, namespace: str, body: str = "", *, name: str = "move") -> Path:
    """A StoragePlan for ``namespace``; ``body`` is extra YAML under spec (indented 2)."""
    path = tmp_path / f"{name}.yaml"
    spec = body or "storageClass: ceph-rbd\nvirtualMachines:\n  - name: vm-fedora\n"
    path.write_text(
        "apiVersion: vmstorage.dev/v1alpha1\nkind: StoragePlan\n"
        f"metadata:\n  name: {name}\nspec:\n  namespace: {namespace}\n"
        + textwrap.indent(spec, "  ")
    )
    return path


def run_plan(
    capsys: pytest.CaptureFixture[str], control_plane: ControlPlane, *args: str | Path
) -> tuple[int, dict[str, Any] | str, str]:
    """Run `plan ... --kubeconfig <admin>`; parse stdout as JSON when -o json was given."""
    argv = ["plan", *map(str, args), "--kubeconfig", str(control_plane.kubeconfig)]
    rc = main(argv)
    out, err = capsys.readouterr()
    return rc, (json.loads(out) if "json" in argv else out), err


def only_vm(report: dict[str, Any] | str) -> dict[str, Any]:
    assert isinstance(report, dict)
    (vm,) = report["vms"]
    assert isinstance(vm, dict)
    return vm


class Ctx:
    """What every test here uses: the cluster, its namespace, a scratch dir and the CLI."""

    def __init__(
        self,
        api: pykube.HTTPClient,
        control_plane: ControlPlane,
        namespace: str,
        tmp_path: Path,
        eventually: Eventually,
        capsys: pytest.CaptureFixture[str],
    ) -> None:
        self.api, self.control_plane, self.ns = api, control_plane, namespace
        self.tmp_path, self.eventually, self.capsys = tmp_path, eventually, capsys

    def settle(self, vm: dict[str, Any]) -> None:
        settle(self.api, self.eventually, vm)

    def stop(self, name: str = "vm-fedora") -> None:
        _merge(
            self.api,
            "kubevirt.io/v1",
            self.ns,
            f"virtualmachines/{name}",
            {"spec": {"runStrategy": "Halted"}},
        )
        self.eventually(lambda: not vmi_running(self.api, self.ns, name), what="VM stopped")

    def delete_vm(self, name: str = "vm-fedora") -> None:
        """Delete a VM (virt-controller removes its VMI, the garbage collector its
        DataVolumes): tests that stall a copy end with it, so the session's shared engine is
        not kept busy by their leftovers."""
        response = self.api.delete(
            version="kubevirt.io/v1", namespace=self.ns, url=f"virtualmachines/{name}"
        )
        self.api.raise_for_status(response)

    def plan(self, *args: str | Path, body: str = "") -> tuple[int, Any, str]:
        """Run `plan <plan file for body> args...` as admin."""
        return run_plan(
            self.capsys, self.control_plane, plan_file(self.tmp_path, self.ns, body), *args
        )

    def blocked_reasons(self, body: str = "") -> str:
        reasons, _ = _blocked(self.plan("-o", "json", body=body)[1])
        return reasons


@pytest.fixture
def ctx(
    api: pykube.HTTPClient,
    control_plane: ControlPlane,
    namespace: str,
    tmp_path: Path,
    eventually: Eventually,
    capsys: pytest.CaptureFixture[str],
) -> Ctx:
    return Ctx(api, control_plane, namespace, tmp_path, eventually, capsys)


# --------------------------------------------------------------------------------------------
# moves
# --------------------------------------------------------------------------------------------


def test_running_seed_vm_is_planned_as_a_live_move(ctx: Ctx) -> None:
    ctx.settle(fedora(ctx.ns))
    rc, report, err = ctx.plan("-o", "json")

    assert rc == 1, "changes pending"
    vm = only_vm(report)
    assert (vm["action"], vm["running"], vm["stopRequired"]) == ("MoveLive", True, False)
    (volume,) = vm["volumes"]
    assert volume["claim"] == "vm-fedora-disk"
    assert (volume["from"], volume["to"]) == ("local-hostpath", "ceph-rbd")
    assert volume["target"].startswith("vm-fedora-disk-mig-") and len(volume["target"]) <= 63
    assert volume["sizeBytes"] >= 30 * 2**30
    assert "(8 requests)" in err, "one LIST per kind, nothing per VM"


def test_plan_names_are_deterministic_and_nothing_is_written(ctx: Ctx) -> None:
    ctx.settle(fedora(ctx.ns))
    vm_before = get_json(ctx.api, "kubevirt.io/v1", ctx.ns, "virtualmachines/vm-fedora")
    first = only_vm(ctx.plan("-o", "json")[1])
    second = only_vm(ctx.plan("-o", "json", "--server-dry-run")[1])

    assert first["volumes"][0]["target"] == second["volumes"][0]["target"]
    dvs = get_json(ctx.api, "cdi.kubevirt.io/v1beta1", ctx.ns, "datavolumes")["items"]
    assert [d["metadata"]["name"] for d in dvs] == ["vm-fedora-disk"], "dry run created nothing"
    vm_after = get_json(ctx.api, "kubevirt.io/v1", ctx.ns, "virtualmachines/vm-fedora")
    assert vm_after["spec"] == vm_before["spec"]


def test_stopped_vm_is_planned_as_an_offline_clone_with_manifests(ctx: Ctx) -> None:
    ctx.settle(fedora(ctx.ns))  # run once so the disk is imported, then stop it
    ctx.stop()

    rc, report, _ = ctx.plan("-o", "json", "--show-manifests")
    vm = only_vm(report)
    assert rc == 1 and vm["action"] == "MoveOffline" and not vm["running"]
    (dv,) = vm["manifests"]["dataVolumes"]
    assert dv["spec"]["source"] == {"pvc": {"namespace": ctx.ns, "name": "vm-fedora-disk"}}
    assert dv["spec"]["storage"]["storageClassName"] == "ceph-rbd"
    ops = vm["manifests"]["vmPatch"]
    assert ops[0]["op"] == "test" and ops[0]["path"] == "/metadata/resourceVersion"
    assert not any(op["path"] == "/spec/updateVolumesStrategy" for op in ops)


def test_vm_already_on_target_is_in_sync_and_exits_zero(ctx: Ctx) -> None:
    vm = fedora(ctx.ns)
    vm["spec"]["dataVolumeTemplates"][0]["spec"]["storage"]["storageClassName"] = "ceph-rbd"
    ctx.settle(vm)
    rc, out, _ = ctx.plan()
    assert rc == 0
    assert f"In sync: {ctx.ns}/vm-fedora" in out
    assert "0 volume(s)" in out


def test_server_dry_run_surfaces_schema_errors_from_the_api_server(ctx: Ctx) -> None:
    """A template override that renders what the move's scope allows (render.scope: an
    annotation of ours) but the API server's validation refuses (a key with a space) is caught
    by the server dry run, and `plan` says which object and why. (A field DataVolume does not
    have, once this test's override, is refused earlier now, by the scope check.)"""
    ctx.settle(fedora(ctx.ns))
    overrides = ctx.tmp_path / "templates"
    overrides.mkdir()
    default = load_templates(None).path_of("datavolume-live.j2")
    bad = '  annotations:\n    "vmstorage.dev/two words": "x"\n'
    text = default.read_text().replace("  annotations:\n", bad, 1)
    assert "two words" in text
    (overrides / "datavolume-live.j2").write_text(text)

    rc, out, err = ctx.plan("--server-dry-run", "--templates", overrides)
    assert rc == 2, err
    assert f"DataVolume/{ctx.ns}/vm-fedora-disk-mig-" in out
    assert "two words" in out and "Invalid value" in out


# --------------------------------------------------------------------------------------------
# Blocked: every reason that can be set up on the real engine
# --------------------------------------------------------------------------------------------


def _blocked(report: dict[str, Any] | str) -> tuple[str, str]:
    vm = only_vm(report)
    assert vm["action"] == "Blocked", vm
    return " ".join(reason_lines(vm)), json.dumps(vm["volumes"])


def test_running_vm_with_a_shareable_disk_needs_allow_stop(ctx: Ctx) -> None:
    vm = fedora(ctx.ns)
    vm["spec"]["template"]["spec"]["domain"]["devices"]["disks"][0]["shareable"] = True
    ctx.settle(vm)

    reasons = ctx.blocked_reasons()
    assert "[shareable-disk]" in reasons and "allowStop" in reasons

    allow = "storageClass: ceph-rbd\nallowStop: true\nvirtualMachines:\n  - name: vm-fedora\n"
    vm_doc = only_vm(ctx.plan("-o", "json", body=allow)[1])
    assert (vm_doc["action"], vm_doc["stopRequired"]) == ("MoveOffline", True)


def test_rwo_volume_left_out_blocks_a_live_move(ctx: Ctx) -> None:
    vm = fedora(ctx.ns)
    second = copy.deepcopy(vm["spec"]["dataVolumeTemplates"][0])
    second["metadata"]["name"] = "vm-fedora-data"
    second["spec"]["storage"]["accessModes"] = ["ReadWriteOnce"]
    vm["spec"]["dataVolumeTemplates"].append(second)
    template = vm["spec"]["template"]["spec"]
    template["domain"]["devices"]["disks"].append({"name": "data", "disk": {"bus": "virtio"}})
    template["volumes"].append({"name": "data", "dataVolume": {"name": "vm-fedora-data"}})
    ctx.settle(vm)

    only_root = (
        "storageClass: ceph-rbd\nvirtualMachines:\n  - name: vm-fedora\n"
        "    volumes:\n      - name: data\n        storageClass: local-hostpath\n"
    )
    reasons = ctx.blocked_reasons(only_root)
    assert "[rwo-volume-not-moved]" in reasons and "data" in reasons


def test_persistent_reservation_makes_storage_not_live_migratable(ctx: Ctx) -> None:
    vm = fedora(ctx.ns)
    vm["spec"]["template"]["spec"]["domain"]["devices"]["disks"][0] = {
        "name": "datavolumedisk1",
        "lun": {"reservation": True},
    }
    ctx.settle(vm)
    reasons = ctx.blocked_reasons()
    assert "[persistent-reservation]" in reasons
    assert "[storage-not-live-migratable]" in reasons


@pytest.mark.parametrize(
    ("spec", "rule"),
    [
        (
            {"workloadUpdateStrategy": {"workloadUpdateMethods": []}},
            "workload-update-no-live-migrate",
        ),
        ({"configuration": {"vmRolloutStrategy": "Stage"}}, "rollout-strategy-not-live-update"),
    ],
)
def test_kubevirt_configuration_that_prevents_live_migration_blocks_running_vms(
    ctx: Ctx,
    kubevirt_config: Callable[[dict[str, Any]], None],
    spec: dict[str, Any],
    rule: str,
) -> None:
    ctx.settle(fedora(ctx.ns))
    kubevirt_config(spec)
    assert f"[{rule}]" in ctx.blocked_reasons()


def test_missing_target_storage_class_is_blocked_with_the_classes_that_exist(ctx: Ctx) -> None:
    ctx.settle(fedora(ctx.ns))
    body = "storageClass: gold-nvme\nvirtualMachines:\n  - name: vm-fedora\n"
    reasons = ctx.blocked_reasons(body)
    assert "[storage-class-not-found]" in reasons and "ceph-rbd" in reasons


def test_vm_whose_claim_does_not_exist_is_blocked(ctx: Ctx) -> None:
    vm = fedora(ctx.ns, running=False)
    vm["spec"].pop("dataVolumeTemplates")
    vm["spec"]["template"]["spec"]["volumes"][0] = {
        "name": "datavolumedisk1",
        "persistentVolumeClaim": {"claimName": "gone"},
    }
    create(ctx.api, vm)
    assert "[claim-not-found]" in ctx.blocked_reasons()


def test_gitops_managed_vm_is_refused_with_the_ignore_rule_to_add(ctx: Ctx) -> None:
    vm = fedora(ctx.ns)
    vm["metadata"]["annotations"] = {
        "argocd.argoproj.io/tracking-id": "vms:kubevirt.io/VirtualMachine:ns/vm-fedora"
    }
    ctx.settle(vm)
    reasons = ctx.blocked_reasons()
    assert "[gitops-managed]" in reasons
    assert "RespectIgnoreDifferences=true" in reasons and "allowGitOpsManaged" in reasons


def test_mode_live_on_a_stopped_vm_is_blocked(ctx: Ctx) -> None:
    ctx.settle(fedora(ctx.ns))
    ctx.stop()
    body = "storageClass: ceph-rbd\nmode: Live\nvirtualMachines:\n  - name: vm-fedora\n"
    assert "[live-required]" in ctx.blocked_reasons(body)


def test_vm_carrying_our_journal_is_reported_in_progress(ctx: Ctx) -> None:
    vm = fedora(ctx.ns)
    vm["metadata"]["annotations"] = {"vmstorage.dev/journal": '{"step": "create-targets"}'}
    ctx.settle(vm)
    rc, report, _ = ctx.plan("-o", "json")
    assert rc == 1 and only_vm(report)["action"] == "InProgress"


def test_named_vm_that_does_not_exist_is_blocked(ctx: Ctx) -> None:
    assert "[vm-not-found]" in ctx.blocked_reasons()


# --------------------------------------------------------------------------------------------
# Refusals before any cluster work
# --------------------------------------------------------------------------------------------


def test_plan_outside_the_namespace_allow_list_is_refused(ctx: Ctx) -> None:
    rc, _, err = ctx.plan("--allow-namespace", "mig-vm")
    assert rc == 2
    assert ctx.ns in err and "nothing was changed" in err


def test_unreachable_cluster_is_a_cluster_error_not_a_traceback(ctx: Ctx) -> None:
    kubeconfig = ctx.tmp_path / "kubeconfig"
    kubeconfig.write_text(
        textwrap.dedent("""\
        apiVersion: v1
        kind: Config
        clusters: [{name: c, cluster: {server: "https://127.0.0.1:1"}}]
        users: [{name: u, user: {token: t}}]
        contexts: [{name: c, context: {cluster: c, user: u}}]
        current-context: c
        """)
    )
    plan = plan_file(ctx.tmp_path, ctx.ns)
    rc = main(["plan", str(plan), "--kubeconfig", str(kubeconfig)])
    _, err = ctx.capsys.readouterr()
    assert rc == 6
    assert "cannot reach the API server" in err and "Traceback" not in err


def test_plans_for_two_namespaces_are_observed_with_eight_cluster_wide_lists(
    ctx: Ctx, control_plane: ControlPlane, monkeypatch: pytest.MonkeyPatch
) -> None:
    # One page per list, whatever the session left in other namespaces (lists are paginated,
    # 500 objects a page by default: tests/apiserver/test_paginated_observe.py).
    monkeypatch.setenv(PAGE_SIZE_ENV, "100000")
    other = control_plane.create_namespace("second")
    ctx.settle(fedora(ctx.ns))
    ctx.settle(fedora(other))
    plans = ctx.tmp_path / "plans"
    plans.mkdir()
    plan_file(plans, ctx.ns, name="first")
    plan_file(plans, other, name="second")

    rc, report, err = run_plan(ctx.capsys, control_plane, plans, "-o", "json")
    assert rc == 1
    assert isinstance(report, dict)
    moves = {(vm["namespace"], vm["name"]): vm["action"] for vm in report["vms"]}
    assert moves == {(ctx.ns, "vm-fedora"): "MoveLive", (other, "vm-fedora"): "MoveLive"}
    assert "(8 requests)" in err, "one LIST per kind across namespaces, not per namespace"


# --------------------------------------------------------------------------------------------
# More reasons, set up through the KubeVirt CR and the node side's documented knobs
# --------------------------------------------------------------------------------------------


@pytest.fixture
def kubevirt_version(api: pykube.HTTPClient) -> Iterator[Callable[[str], None]]:
    """Make the KubeVirt CR report another version for one test, then put the old one back.

    What virt-operator would write after an install of that version: the CR's
    ``status.observedKubeVirtVersion``, which is all ``plan`` reads (on the real engine no
    virt-operator runs, so the status stays as written)."""
    before = _reported_version(api)

    def report(version: str | None) -> None:
        _merge(
            api,
            KUBEVIRT_API,
            "kubevirt",
            "kubevirts/kubevirt/status",
            {"status": {"observedKubeVirtVersion": version or before}},
        )

    yield report
    report(None)


def _reported_version(api: pykube.HTTPClient) -> str:
    status = get_json(api, KUBEVIRT_API, "kubevirt", "kubevirts/kubevirt").get("status") or {}
    return str(status.get("observedKubeVirtVersion", ""))


@pytest.mark.parametrize(
    ("version", "rule"),
    [("v1.4.0", "feature-gates-missing"), ("v1.2.0", "kubevirt-too-old")],
)
def test_kubevirt_version_without_volume_migration_blocks_running_vms(
    ctx: Ctx, kubevirt_version: Callable[[str], None], version: str, rule: str
) -> None:
    ctx.settle(fedora(ctx.ns))
    kubevirt_version(version)
    ctx.eventually(lambda: _reported_version(ctx.api) == version, what=f"KubeVirt {version}")
    assert f"[{rule}]" in ctx.blocked_reasons()


FILESYSTEM_ONLY = "hostpath-filesystem-only"
"""A class of the hostpath provisioner, Immediate: CDI's StorageProfile for it offers only
ReadWriteOnce Filesystem (storagecapabilities.go; ceph-rbd's offers Block too)."""


def filesystem_only_class(api: pykube.HTTPClient, eventually: Eventually) -> str:
    """FILESYSTEM_ONLY (created if absent), once its StorageProfile has claimPropertySets."""
    seed.create(
        api,
        {
            "apiVersion": "storage.k8s.io/v1",
            "kind": "StorageClass",
            "metadata": {"name": FILESYSTEM_ONLY},
            "provisioner": "kubevirt.io.hostpath-provisioner",
            "volumeBindingMode": "Immediate",
            "reclaimPolicy": "Delete",
        },
    )

    def property_sets() -> Any:
        response = api.get(version=CDI_API, url=f"storageprofiles/{FILESYSTEM_ONLY}")
        return response.ok and (response.json().get("status") or {}).get("claimPropertySets")

    eventually(property_sets, what=f"StorageProfile {FILESYSTEM_ONLY}")
    return FILESYSTEM_ONLY


def test_target_profile_without_the_wanted_volume_mode_is_blocked(ctx: Ctx) -> None:
    ctx.settle(fedora(ctx.ns))
    target = filesystem_only_class(ctx.api, ctx.eventually)
    body = (
        f"storageClass: {target}\nvolumeMode: Block\nallowStop: true\n"
        "virtualMachines:\n  - name: vm-fedora\n"
    )
    reasons = ctx.blocked_reasons(body)
    assert "[storage-profile-mismatch]" in reasons and "Filesystem" in reasons


def test_unbound_claim_of_a_stopped_vm_is_blocked(ctx: Ctx) -> None:
    """local-hostpath is WaitForFirstConsumer: a claim no VM has started on stays Pending."""
    spec = {
        "accessModes": ["ReadWriteOnce"],
        "storageClassName": "local-hostpath",
        "resources": {"requests": {"storage": "1Gi"}},
    }
    create(
        ctx.api,
        {
            "apiVersion": "v1",
            "kind": "PersistentVolumeClaim",
            "metadata": {"name": "data", "namespace": ctx.ns},
            "spec": spec,
        },
    )
    vm = fedora(ctx.ns, running=False)
    vm["spec"].pop("dataVolumeTemplates")
    vm["spec"]["template"]["spec"]["volumes"][0] = {
        "name": "datavolumedisk1",
        "persistentVolumeClaim": {"claimName": "data"},
    }
    create(ctx.api, vm)
    assert "[claim-not-bound]" in ctx.blocked_reasons()


def test_data_volume_still_importing_is_blocked(ctx: Ctx) -> None:
    vm = fedora(ctx.ns, running=False)
    vm["spec"]["dataVolumeTemplates"][0]["metadata"]["annotations"] = {
        "sim.vmstorage.dev/fault": "stall"
    }
    vm["spec"]["runStrategy"] = "Always"  # KubeVirt creates the DataVolume for a VM it starts
    create(ctx.api, vm)
    ctx.eventually(
        lambda: (
            (
                get_json(
                    ctx.api, "cdi.kubevirt.io/v1beta1", ctx.ns, "datavolumes/vm-fedora-disk"
                ).get("status")
                or {}
            ).get("phase")
            == "ImportInProgress"
        ),
        SETTLE,
        what="import stalled",
    )
    assert "[datavolume-not-succeeded]" in ctx.blocked_reasons()
    ctx.delete_vm()


def _start_stalled_migration(ctx: Ctx) -> None:
    """A live migration of ours that never finishes: the manifests `plan` rendered, sent."""
    vm = fedora(ctx.ns)
    vm["metadata"]["annotations"] = {"sim.vmstorage.dev/fault": "stall"}
    ctx.settle(vm)
    _, report, _ = ctx.plan("-o", "json", "--show-manifests")
    manifests = only_vm(report)["manifests"]
    for dv in manifests["dataVolumes"]:
        create(ctx.api, dv)
    patch = manifests["vmPatch"]
    assert patch[0]["path"] == "/metadata/resourceVersion", patch[0]
    for _ in range(5):
        response = ctx.api.patch(
            version="kubevirt.io/v1",
            namespace=ctx.ns,
            url="virtualmachines/vm-fedora",
            data=json.dumps(patch),
            headers={"Content-Type": "application/json-patch+json"},
        )
        if response.status_code != 422:
            break
        # virt-controller wrote the VM since `plan` read it (its first op tests the
        # resourceVersion, as apply's does): test against the current one, as apply retries
        current = get_json(ctx.api, "kubevirt.io/v1", ctx.ns, "virtualmachines/vm-fedora")
        patch[0]["value"] = current["metadata"]["resourceVersion"]
    ctx.api.raise_for_status(response)
    ctx.eventually(
        lambda: any(
            (m.get("status") or {}).get("phase") == "Running"
            for m in get_json(
                ctx.api, "kubevirt.io/v1", ctx.ns, "virtualmachineinstancemigrations"
            ).get("items", [])
        ),
        what="volume migration Running",
    )


def test_a_volume_migration_under_way_is_reported_in_progress(ctx: Ctx) -> None:
    _start_stalled_migration(ctx)
    rc, report, _ = ctx.plan("-o", "json")
    vm = only_vm(report)
    assert rc == 1 and vm["action"] == "InProgress"
    assert "[volume-migration-in-progress]" in " ".join(reason_lines(vm))
    ctx.delete_vm()


def test_vm_stopped_mid_migration_needs_manual_recovery(ctx: Ctx) -> None:
    _start_stalled_migration(ctx)
    ctx.stop()
    ctx.eventually(
        lambda: any(
            c.get("type") == "ManualRecoveryRequired" and c.get("status") == "True"
            for c in (
                get_json(ctx.api, "kubevirt.io/v1", ctx.ns, "virtualmachines/vm-fedora").get(
                    "status"
                )
                or {}
            ).get("conditions", [])
        ),
        what="ManualRecoveryRequired",
    )
    # The spec now names the half-copied destination on the target class: without the
    # recovery rule this VM would read as in sync (found by this very test).
    rc, report, _ = ctx.plan("-o", "json")
    vm = only_vm(report)
    assert rc == 1 and vm["action"] == "Blocked"
    assert "[manual-recovery-required]" in reason_lines(vm)[0]
    assert "restore the original claim names" in reason_lines(vm)[0]
    ctx.delete_vm()


# --------------------------------------------------------------------------------------------
# What a new user trips on (issue 18): every reason at once, plans that select nothing, VMs
# that do not exist, a VM being deleted (issue 14)
# --------------------------------------------------------------------------------------------


def test_a_blocked_vm_lists_every_reason_in_one_round(ctx: Ctx) -> None:
    """Argo CD tracking id + shareable disk on a running VM: on 2d06030 only [gitops-managed]
    showed, and stop-not-allowed/shareable-disk only after the Argo CD edit."""
    vm = fedora(ctx.ns)
    vm["metadata"]["annotations"] = {
        "argocd.argoproj.io/tracking-id": "vms:kubevirt.io/VirtualMachine:ns/vm-fedora"
    }
    vm["spec"]["template"]["spec"]["domain"]["devices"]["disks"][0]["shareable"] = True
    ctx.settle(vm)
    rc, report, _ = ctx.plan("-o", "json")
    found = only_vm(report)
    assert rc == 1 and found["action"] == "Blocked"
    assert [r["rule"] for r in found["reasons"]] == [
        "stop-not-allowed",
        "shareable-disk",
        "gitops-managed",
    ], "what to fix first first; the edit outside the plans last"


def _empty(ctx: Ctx, body: str, *, namespace: str | None = None) -> tuple[int, dict[str, Any]]:
    """`plan -o json` on a plan for ``namespace`` (the test's by default); (rc, the one
    nothingSelected entry)."""
    path = plan_file(ctx.tmp_path, namespace or ctx.ns, body)
    rc, report, _ = run_plan(ctx.capsys, ctx.control_plane, path, "-o", "json")
    assert isinstance(report, dict)
    assert report["converged"] is False and report["summary"]["plansSelectingNothing"] == 1
    (empty,) = report["nothingSelected"]
    assert (empty["plan"], empty["effect"]) == ("move", "NothingSelected")
    return rc, empty


def test_a_plan_for_a_namespace_that_does_not_exist_exits_7_naming_the_close_one(
    ctx: Ctx,
) -> None:
    ctx.settle(fedora(ctx.ns))
    typo = ctx.ns[:-1] + ("x" if ctx.ns[-1] != "x" else "y")
    rc, empty = _empty(ctx, "", namespace=typo)
    assert rc == 7, "not 0: a typo never reads as in sync"
    assert empty["rule"] == "namespace-not-found"
    assert f"namespace {typo} does not exist (did you mean {ctx.ns}" in empty["message"]

    rc, out, _ = run_plan(ctx.capsys, ctx.control_plane, plan_file(ctx.tmp_path, typo))
    assert rc == 7
    assert isinstance(out, str)
    assert f"VM {typo}/vm-fedora (missing, plan move): blocked\n" in out
    assert f"! plan move selects no VM: namespace {typo} does not exist" in out
    assert out.rstrip().endswith("1 plan(s) selected nothing.")


@pytest.mark.parametrize(
    ("labels", "selector", "rule", "needle"),
    [
        ({}, None, "namespace-empty", "has no VirtualMachine; check the plan's namespace"),
        (
            {"tier": "archive"},
            "matchLabels: {tier: archve}",
            "selector-matched-none",
            "did you mean tier=archive?",
        ),
        (
            {"tier": "gold", "vmstorage.dev/exclude": "yes"},
            "matchLabels: {tier: gold}\n  matchExpressions:\n"
            "    - {key: vmstorage.dev/exclude, operator: DoesNotExist}",
            "every-match-excluded",
            "VM vm-fedora matches its selector's labels, but its matchExpressions exclude each "
            "(vm-fedora: vmstorage.dev/exclude=yes)",
        ),
    ],
)
def test_a_plan_that_selects_nothing_says_why_and_exits_7(
    ctx: Ctx, labels: dict[str, str], selector: str | None, rule: str, needle: str
) -> None:
    if labels:
        vm = fedora(ctx.ns, running=False)
        vm["metadata"]["labels"] = labels
        create(ctx.api, vm)
    body = f"storageClass: ceph-rbd\nselector:\n  {selector}\n" if selector else ""
    rc, empty = _empty(ctx, body or "storageClass: ceph-rbd\nselector: {}\n")
    assert (rc, empty["rule"]) == (7, rule)
    assert needle in empty["message"]
