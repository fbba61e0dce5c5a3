"""`apply` on VMs that a real Flux manages: the refusal and its advice, the cancellation Flux
causes without an ignore rule, the move with the rule, the write-back to Git, offline moves.

Each test commits a VM manifest to the local Git server, lets a real kustomize-controller apply
it (GitRepository + Kustomization in the test's namespace) through upstream virt-api's
admission, and upstream virt-controller and cdi-controller act on it with our node side. Syncs
are asked for with ``reconcile.fluxcd.io/requestedAt`` and waited for; the Kustomizations'
interval (10 min) never fires. Where a sync must land while a copy is in flight, the node side
holds the copy (a "stall" fault through ``node_side.faults``) until the test releases it.
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import jsonpatch
import pykube
import pytest
import yaml

from reconciler.cli.main import main
from testenv.controlplane import ControlPlane
from testenv.node.runtime import CONTENT_HASH_ANNOTATION, Fault, FaultAction
from tests.cluster.test_plan import dv_succeeded, fedora, plan_file
from tests.support.flux import FluxSync, MakeSync
from tests.support.kube import Eventually, annotation, get_json, vmi_running
from tests.support.node_faults import NodeSide

KV = "kubevirt.io/v1"
CDI = "cdi.kubevirt.io/v1beta1"
SOURCE = "vm-fedora-disk"
JOURNAL = "vmstorage.dev/journal"
SSA = "kustomize.toolkit.fluxcd.io/ssa"
REPO = Path(__file__).resolve().parents[2]
ALLOW = "storageClass: ceph-rbd\nallowGitOpsManaged: true\nvirtualMachines:\n  - name: vm-fedora\n"
REFUSE = "storageClass: ceph-rbd\nvirtualMachines:\n  - name: vm-fedora\n"
OFFLINE = (
    "storageClass: ceph-rbd\nmode: Offline\nallowStop: true\nallowGitOpsManaged: true\n"
    "virtualMachines:\n  - name: vm-fedora\n"
)


@pytest.fixture(scope="module", autouse=True)
def cluster_objects(api: pykube.HTTPClient) -> None:
    from testenv import seed

    seed.seed_cluster(api)


class FluxVM:
    """The test's namespace with vm-fedora applied from Git by Flux, and `apply` / `plan`."""

    def __init__(
        self,
        api: pykube.HTTPClient,
        control_plane: ControlPlane,
        namespace: str,
        tmp_path: Path,
        eventually: Eventually,
        capsys: pytest.CaptureFixture[str],
        flux_sync: MakeSync,
        node_side: NodeSide,
    ) -> None:
        self.api, self.control_plane, self.ns = api, control_plane, namespace
        self.tmp_path, self.eventually, self.capsys = tmp_path, eventually, capsys
        self.flux_sync, self.node_side = flux_sync, node_side
        self.lease_ns = control_plane.create_namespace("lease")
        self.manifest: dict[str, Any] = {}
        self._sync: FluxSync | None = None

    @property
    def sync(self) -> FluxSync:
        assert self._sync is not None, "call create() first"
        return self._sync

    # -- the VM, through Git -------------------------------------------------------------

    def create(self, annotations: dict[str, str] | None = None) -> FluxSync:
        """Commit the running vm-fedora to Git, let Flux apply it, wait until it runs."""
        self.manifest = fedora(self.ns)
        if annotations:
            self.manifest["metadata"]["annotations"] = annotations
        self._sync = self.flux_sync({"vm.yaml": yaml.safe_dump(self.manifest)})
        self.sync.wait_applied(self.eventually)
        # Set-up, not the behaviour under test: upstream cdi-controller and virt-controller
        # on a loaded two-core machine can take well over the default 10 s to get here.
        self.eventually(
            lambda: dv_succeeded(self.api, self.ns, SOURCE), timeout=60, what=f"DV {SOURCE}"
        )
        self.eventually(
            lambda: vmi_running(self.api, self.ns, "vm-fedora"), timeout=60, what="VMI Running"
        )
        return self.sync

    def commit(self, manifest: dict[str, Any], message: str, **files: str) -> None:
        self.manifest = manifest
        self.sync.repo.commit({"vm.yaml": yaml.safe_dump(manifest), **files}, message)

    def vm(self) -> dict[str, Any]:
        return get_json(self.api, KV, self.ns, "virtualmachines/vm-fedora")

    def vmi(self) -> dict[str, Any]:
        return get_json(self.api, KV, self.ns, "virtualmachineinstances/vm-fedora")

    def claim(self) -> str:
        (volume,) = [
            v
            for v in self.vm()["spec"]["template"]["spec"]["volumes"]
            if v["name"] == "datavolumedisk1"
        ]
        return str(volume["dataVolume"]["name"])

    def content(self, claim: str) -> str | None:
        pvc = get_json(self.api, "v1", self.ns, f"persistentvolumeclaims/{claim}")
        return annotation(pvc, CONTENT_HASH_ANNOTATION)

    def dvs(self) -> list[str]:
        return sorted(
            d["metadata"]["name"] for d in get_json(self.api, CDI, self.ns, "datavolumes")["items"]
        )

    def set_ignore(self, rules: list[dict[str, Any]] | None) -> None:
        """Set (or, with None, remove) the Kustomization's spec.ignore, as a user would."""
        response = self.api.patch(
            version="kustomize.toolkit.fluxcd.io/v1",
            namespace=self.ns,
            url=f"kustomizations/{self.sync.name}",
            headers={"Content-Type": "application/merge-patch+json"},
            data=json.dumps({"spec": {"ignore": rules}}),
        )
        self.api.raise_for_status(response)

    def stall(self, kind: str = "VirtualMachine", name: str = "vm-fedora") -> None:
        self.node_side.faults.add(kind, self.ns, name, Fault(FaultAction.STALL))

    def release(self, kind: str = "VirtualMachine", name: str = "vm-fedora") -> None:
        self.node_side.faults.clear(kind, self.ns, name)

    # -- the reconciler ---------------------------------------------------------------------

    def _argv(self, command: str, body: str, *extra: str) -> list[str]:
        path = plan_file(self.tmp_path, self.ns, body)
        kubeconfig = str(self.control_plane.kubeconfig)
        argv = [command, str(path), "-o", "json", "--kubeconfig", kubeconfig]
        if command == "apply":
            argv += ["--lease-namespace", self.lease_ns]
        return [*argv, *extra]

    def run(self, command: str, body: str = ALLOW) -> tuple[int, dict[str, Any], str]:
        """`plan` or `apply` in-process, as admin; the JSON report."""
        rc = main(self._argv(command, body))
        out, err = self.capsys.readouterr()
        return rc, json.loads(out) if out.strip().startswith("{") else {}, err

    def start_apply(self, body: str = ALLOW) -> subprocess.Popen[str]:
        """`apply` as a separate process, so the test can drive Flux while it runs."""
        return subprocess.Popen(
            [sys.executable, "-m", "reconciler", *self._argv("apply", body)],
            cwd=REPO,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )

    @staticmethod
    def finish(
        proc: subprocess.Popen[str], timeout: float = 120
    ) -> tuple[int, dict[str, Any], str]:
        try:
            out, err = proc.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            out, err = proc.communicate()
            pytest.fail(f"apply did not finish in {timeout}s:\n{err[-3000:]}")
        return proc.returncode, json.loads(out) if out.strip().startswith("{") else {}, err

    def wait_while_applying(
        self, proc: subprocess.Popen[str], probe: Any, what: str, timeout: float = 90
    ) -> Any:
        """``eventually(probe)``, failing at once with apply's output if apply exits first."""
        found = self.eventually(
            lambda: probe() or proc.poll() is not None, timeout=timeout, what=what
        )
        if proc.poll() is not None and not probe():
            rc, report, err = self.finish(proc)
            pytest.fail(f"apply exited ({rc}) before {what}:\n{err[-3000:]}\n{report}")
        return found

    def in_flight(self, proc: subprocess.Popen[str]) -> bool:
        """`apply` still runs and its journal is on the VM (the move is not finished)."""
        return proc.poll() is None and annotation(self.vm(), JOURNAL) is not None

    def swapped(self) -> str | None:
        """The target claim once `apply` has swapped the VM's volume, else None."""
        claim = self.claim()
        return claim if claim != SOURCE else None


@pytest.fixture
def ctx(
    api: pykube.HTTPClient,
    control_plane: ControlPlane,
    namespace: str,
    tmp_path: Path,
    eventually: Eventually,
    capsys: pytest.CaptureFixture[str],
    flux_sync: MakeSync,
    node_side: NodeSide,
) -> FluxVM:
    return FluxVM(api, control_plane, namespace, tmp_path, eventually, capsys, flux_sync, node_side)


def printed_ignore_rule(reason: str) -> list[dict[str, Any]]:
    """The ``spec.ignore`` value the gitops-managed message prints (YAML flow syntax)."""
    match = re.search(r"add spec\.ignore: (\[.*?\}\}\])", reason)
    assert match, reason
    rules = yaml.safe_load(match.group(1))
    assert isinstance(rules, list)
    return rules


def blocked_reason(report: dict[str, Any]) -> str:
    (vm,) = report["blocked"] if "blocked" in report else report["vms"]
    return "\n".join(r["message"] for r in vm["reasons"] if r["rule"] == "gitops-managed")


# -- without a rule -----------------------------------------------------------------------------


def test_a_flux_managed_vm_is_refused_with_the_flux_fix_and_nothing_is_written(
    ctx: FluxVM,
) -> None:
    sync = ctx.create()
    before = ctx.vm()

    rc, report, err = ctx.run("apply", REFUSE)

    reason = blocked_reason(report)
    assert f"managed by Flux Kustomization {sync.name}" in reason, err
    assert printed_ignore_rule(reason) == [
        {
            "paths": [
                "/spec/template/spec/volumes",
                "/spec/dataVolumeTemplates",
                "/spec/updateVolumesStrategy",
                "/spec/runStrategy",
            ],
            "target": {
                "group": "kubevirt.io",
                "kind": "VirtualMachine",
                "name": "vm-fedora",
                "namespace": ctx.ns,
            },
        }
    ]
    assert "allowGitOpsManaged: true" in reason
    assert report["outcomes"] == [] and rc == 0, "blocked: reported (Event), not a failed run"
    after = ctx.vm()
    assert after["spec"] == before["spec"]
    assert after["metadata"].get("annotations") == before["metadata"].get("annotations")
    assert "vm-storage-reconciler" not in {m["manager"] for m in after["metadata"]["managedFields"]}
    assert ctx.dvs() == [SOURCE], "no target was created"


def test_without_an_ignore_rule_flux_reverts_the_live_move_and_it_is_rolled_back(
    ctx: FluxVM,
) -> None:
    sync = ctx.create()
    vmi_uid = ctx.vmi()["metadata"]["uid"]
    source_hash = ctx.content(SOURCE)
    ctx.stall()  # hold the copy so Flux syncs while the migration runs
    proc = ctx.start_apply(ALLOW)
    target = ctx.wait_while_applying(proc, ctx.swapped, "apply to swap the volume")
    assert ctx.vm()["spec"]["updateVolumesStrategy"] == "Migration"

    sync.wait_applied(ctx.eventually, token=sync.reconcile())  # the sync Flux would run anyway
    rc, report, err = ctx.finish(proc)
    ctx.release()

    (outcome,) = report["outcomes"]
    assert (outcome["result"], outcome["rule"]) == ("RolledBack", "migration-cancelled"), err
    assert f"reverted by Flux Kustomization {ctx.ns}/{sync.name}" in outcome["reason"]
    assert rc == 3
    vm = ctx.vm()
    assert ctx.claim() == SOURCE
    assert "updateVolumesStrategy" not in vm["spec"], "the strategy we added is removed"
    assert [t["metadata"]["name"] for t in vm["spec"]["dataVolumeTemplates"]] == [SOURCE]
    ctx.eventually(lambda: target not in ctx.dvs(), what=f"target {target} deleted")
    assert ctx.vmi()["metadata"]["uid"] == vmi_uid, "the guest kept running on its source"
    assert ctx.content(SOURCE) == source_hash


def test_if_not_present_from_git_lets_the_vm_through(ctx: FluxVM) -> None:
    """Created from Git with ``ssa: IfNotPresent``, Flux never updates the VM again (it wrote
    the annotation itself), so `plan` does not refuse it."""
    ctx.create(annotations={SSA: "IfNotPresent"})

    _, report, err = ctx.run("plan", REFUSE)

    (vm,) = report["vms"]
    assert vm["action"] == "MoveLive", err


def test_if_not_present_set_live_with_kubectl_protects_nothing(ctx: FluxVM) -> None:
    """Flux reads IfNotPresent from Git only and drops kubectl's fields: still refused, and
    the next sync removes the annotation."""
    sync = ctx.create()
    response = ctx.api.patch(
        version=KV,
        namespace=ctx.ns,
        url="virtualmachines/vm-fedora",
        headers={"Content-Type": "application/merge-patch+json"},
        params={"fieldManager": "kubectl-annotate"},
        data=json.dumps({"metadata": {"annotations": {SSA: "IfNotPresent"}}}),
    )
    ctx.api.raise_for_status(response)

    _, report, err = ctx.run("plan", REFUSE)
    assert "add spec.ignore" in blocked_reason(report), err
    sync.wait_applied(ctx.eventually, token=sync.reconcile())
    assert annotation(ctx.vm(), SSA) is None


# -- with the printed rule ----------------------------------------------------------------------


def apply_printed_rule(ctx: FluxVM) -> None:
    """Run `plan`, take the spec.ignore it prints for the VM, and add it to the Kustomization."""
    _, report, err = ctx.run("plan", REFUSE)
    ctx.set_ignore(printed_ignore_rule(blocked_reason(report) or err))


def live_volumes(vm: dict[str, Any]) -> list[dict[str, Any]]:
    return list(vm["spec"]["template"]["spec"]["volumes"])


def flux_writes(vm: dict[str, Any]) -> tuple[int, list[str]]:
    """The VM's generation and the times of kustomize-controller's managedFields entries:
    both stay put while Flux finds no drift (status writes by KubeVirt change neither)."""
    times = [
        str(m.get("time"))
        for m in vm["metadata"].get("managedFields") or []
        if m["manager"] == "kustomize-controller"
    ]
    return int(vm["metadata"]["generation"]), times


def sync_and_check(ctx: FluxVM, claim: str) -> dict[str, Any]:
    """One Flux sync of the head revision, waited for; the VM still uses ``claim``."""
    ks = ctx.sync.sync_now(ctx.eventually)
    assert ctx.claim() == claim, "Flux reverted the VM's volumes"
    return ks


def test_with_the_printed_rule_the_vm_moves_live_and_the_write_back_converges_git(
    ctx: FluxVM,
) -> None:
    """The order of steps the README gives: add the ignore rule, apply, commit the write-back,
    then keep or remove the rule. Flux syncs (and a new Git revision) land while the copy runs
    and after it; none reverts anything, and Git agrees with the cluster at the end."""
    sync = ctx.create()
    vmi_uid = ctx.vmi()["metadata"]["uid"]
    source_hash = ctx.content(SOURCE)
    apply_printed_rule(ctx)
    ctx.stall()
    proc = ctx.start_apply(ALLOW)
    target = ctx.wait_while_applying(proc, ctx.swapped, "apply to swap the volume")

    for _ in range(3):  # several syncs (what intervals would do) while KubeVirt copies
        sync_and_check(ctx, target)
        assert ctx.in_flight(proc)
    labelled = {
        **ctx.manifest,
        "metadata": {
            **ctx.manifest["metadata"],
            "labels": {**ctx.manifest["metadata"]["labels"], "tier": "gold"},
        },
    }
    ctx.commit(labelled, "a new revision that changes the VM")
    sync_and_check(ctx, target)
    assert ctx.vm()["metadata"]["labels"]["tier"] == "gold", "Flux did apply the VM"
    assert ctx.in_flight(proc)
    ctx.release()
    rc, report, err = ctx.finish(proc)

    (outcome,) = report["outcomes"]
    assert (rc, outcome["result"], outcome["flow"]) == (0, "Succeeded", "live"), err
    sync_and_check(ctx, target)
    assert ctx.vmi()["metadata"]["uid"] == vmi_uid, "the guest never restarted"
    assert ctx.content(target) == source_hash

    # The write-back `apply` reports for a VM applied from Git, committed to the manifest.
    write_back = outcome["writeBack"]
    assert write_back["owners"] == [f"Flux Kustomization {ctx.ns}/{sync.name}"], write_back
    patch = write_back["jsonPatch"]
    written_back = jsonpatch.apply_patch(ctx.manifest, patch)
    assert written_back["spec"]["template"]["spec"]["volumes"] == live_volumes(ctx.vm())
    live = ctx.vm()
    ctx.commit(written_back, "write-back: vm-fedora moved to ceph-rbd")
    written = flux_writes(live)

    ks = sync_and_check(ctx, target)
    assert ks["status"]["lastAppliedRevision"] == sync.repo.flux_revision()
    assert flux_writes(ctx.vm()) == written, "no drift: Flux wrote nothing to the VM"

    ctx.set_ignore(None)  # Git and the cluster agree: the rule can go
    sync_and_check(ctx, target)
    assert flux_writes(ctx.vm()) == written
    rc, plan_report, err = ctx.run("plan", ALLOW)
    assert rc == 0, err
    (vm,) = plan_report["vms"]
    assert vm["action"] == "InSync", vm
    assert ctx.vmi()["metadata"]["uid"] == vmi_uid


@pytest.mark.parametrize("running", [True, False], ids=["running-allow-stop", "stopped"])
def test_an_offline_move_of_a_flux_managed_vm_survives_flux_syncs(
    ctx: FluxVM, running: bool
) -> None:
    """Offline: stop (for a running VM; Flux must not put runStrategy back), clone, swap,
    restore the run state. The clone is held while Flux syncs."""
    ctx.create()
    if not running:  # the user stops the VM through Git
        halted = json.loads(json.dumps(ctx.manifest))
        halted["spec"]["runStrategy"] = "Halted"
        ctx.commit(halted, "stop vm-fedora")
        ctx.sync.sync_now(ctx.eventually)
        ctx.eventually(lambda: not ctx.vmi(), what="VMI gone")
    source_hash = ctx.content(SOURCE)
    apply_printed_rule(ctx)
    _, plan_report, err = ctx.run("plan", OFFLINE)
    (vm,) = plan_report["vms"]
    assert vm["action"] == "MoveOffline", err
    target = vm["volumes"][0]["target"]
    ctx.stall("DataVolume", target)
    proc = ctx.start_apply(OFFLINE)
    ctx.wait_while_applying(proc, lambda: target in ctx.dvs(), f"clone {target} created")
    assert ctx.vm()["spec"]["runStrategy"] == "Halted"
    assert not ctx.vmi(), "stopped for the clone"

    sync_and_check(ctx, SOURCE)  # mid-clone: Flux keeps runStrategy Halted (ignored path)
    assert ctx.vm()["spec"]["runStrategy"] == "Halted" and not ctx.vmi()
    assert ctx.in_flight(proc)
    ctx.release("DataVolume", target)
    rc, report, err = ctx.finish(proc)

    (outcome,) = report["outcomes"]
    assert (rc, outcome["result"], outcome["flow"]) == (0, "Succeeded", "offline"), err
    for _ in range(2):
        sync_and_check(ctx, target)
    assert ctx.vm()["spec"]["runStrategy"] == ("Always" if running else "Halted")
    assert bool(ctx.vmi()) is running
    assert ctx.content(target) == source_hash
