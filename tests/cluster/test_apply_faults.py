"""`apply` when things go wrong (issue 9, "Prove it": the fault half), on the real engine:
upstream virt-controller, virt-api and cdi-controller (KubeVirt v1.8.4, CDI v1.65.0) react to
what the node side (``testenv.node``) fails, stalls, slows or holds; what apply does about it is
what each test checks.

Migrations that fail every time or twice, a clone that keeps failing (CDI restarts it), the
target StorageClass deleted, the VM edited, started, stopped or deleted by someone else, the
plan's timeout, a volume migration waiting for a free migration slot, the circuit breaker,
`--max-vms`, maintenance windows, `status` on an open journal and after success, `apply
--dry-run`, and KubeVirt's ManualRecoveryRequired (reverted, or, once the target domain was
ready, the destination kept). Each test asserts upstream-faithful behaviour (KubeVirt's
cancellation confirmed, the retries CDI and KubeVirt make) and what `apply` leaves behind: the
VM exactly as before, the sources untouched, the move's DataVolumes deleted, the exit code, and
the ApplyReport outcome with its rule. (Crash-at-every-step, SIGTERM, two applies at once and
API-server restarts are in test_apply_crash.py.)

Cases deleted because upstream never produces them (what it does instead, and the test):

- a clone DataVolume failed for good (``Failed``): CDI never maps a clone's phase to Failed
  (clone-controller-base.go ``updateStatusPhaseForPopulator``), it restarts the cloner:
  ``test_clone_failing_and_retried_counts_as_failed_and_restarts_the_vm``;
- a Pending VMIM reported queued for a slot, on stderr too: the workload updater creates no
  volume-update VMIM while active migrations fill ``parallelMigrationsPerCluster``
  (workload-updater.go), apply says it waits for KubeVirt to create the migration:
  ``test_a_volume_migration_waits_for_a_free_slot_then_succeeds``;
- the VM stopped after the copy finished, forged by writing the VMIM's migrationState as
  admin: virt-controller copies a final VMIM's migrationState from the VMI, which the target's
  virt-handler writes: ``test_vm_stopped_once_the_target_domain_is_ready_keeps_the_destination``.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pykube
import pytest

from reconciler.cli.main import main
from testenv.controlplane import ControlPlane
from testenv.node.handler import HOLD_ANNOTATION
from testenv.node.runtime import FaultAction
from tests.cluster.test_apply import KV, cluster_objects
from tests.cluster.test_plan import create, plan_file
from tests.support.kube import Eventually, condition, get_json, stays
from tests.support.moves import (
    FAULT_ANNOTATION,
    TARGET_CLASS,
    Disk,
    Moves,
    create_class,
    disks_of,
    moves_ctx,
    storage_class,
    storage_shape,
)
from tests.support.node_faults import NodeSide

__all__ = ["cluster_objects"]  # the module fixture that seeds the classes and the KubeVirt CR

DV_KIND = "DataVolume"
MIXED = [Disk("root", "template", "vm1-root"), Disk("data", "dv", "vm1-data")]
PLAIN = [Disk("data", "dv", "vm1-data"), Disk("scratch", "pvc", "vm1-scratch")]


@pytest.fixture
def ctx(
    api: pykube.HTTPClient,
    control_plane: ControlPlane,
    namespace: str,
    tmp_path: Path,
    eventually: Eventually,
    capsys: pytest.CaptureFixture[str],
    node_side: NodeSide,
) -> Iterator[Moves]:
    with moves_ctx(api, control_plane, namespace, tmp_path, eventually, capsys, node_side) as moves:
        yield moves


KubeVirtPatch = Callable[[dict[str, Any]], None]


@pytest.fixture
def kubevirt(api: pykube.HTTPClient) -> Iterator[KubeVirtPatch]:
    """Merge-patch the shared KubeVirt CR for one test; its annotations and spec are put back
    afterwards."""
    url = "kubevirts/kubevirt"
    saved = get_json(api, KV, "kubevirt", url)

    def patch(body: dict[str, Any]) -> None:
        response = api.patch(
            version=KV,
            namespace="kubevirt",
            url=url,
            data=json.dumps(body),
            headers={"Content-Type": "application/merge-patch+json"},
        )
        api.raise_for_status(response)

    yield patch
    ops = [
        {"op": "replace", "path": "/spec", "value": saved["spec"]},
        {
            "op": "add",
            "path": "/metadata/annotations",
            "value": saved["metadata"].get("annotations") or {},
        },
    ]
    response = api.patch(
        version=KV,
        namespace="kubevirt",
        url=url,
        data=json.dumps(ops),
        headers={"Content-Type": "application/json-patch+json"},
    )
    api.raise_for_status(response)


IGNORE_BACKOFF = "kubevirt.io/func-test-ignore-migration-backoff"


@pytest.fixture
def fast_backoff(ctx: Moves) -> Iterator[None]:
    """KubeVirt's retry back-off skipped, so retries take moments. Upstream (v1.8
    migration.go ``handleMigrationBackoff``) holds a workload-update VMIM Pending for 20 s
    after a failed one of the same VMI, doubling with each failure, a constant no KubeVirt CR
    field changes; only a VMIM annotated ``kubevirt.io/func-test-ignore-migration-backoff``
    (upstream's functional tests' hook) skips it, so each VMIM of the test's namespace is
    annotated as it appears (the annotation re-queues one already held)."""
    done = threading.Event()
    failures: list[BaseException] = []

    def mark() -> None:
        body = json.dumps({"metadata": {"annotations": {IGNORE_BACKOFF: ""}}})
        try:
            while not done.wait(0.1):
                url = "virtualmachineinstancemigrations"
                for migration in get_json(ctx.api, KV, ctx.ns, url)["items"]:
                    meta = migration["metadata"]
                    if IGNORE_BACKOFF in (meta.get("annotations") or {}):
                        continue
                    response = ctx.api.patch(
                        version=KV,
                        namespace=ctx.ns,
                        url=f"{url}/{meta['name']}",
                        data=body,
                        headers={"Content-Type": "application/merge-patch+json"},
                    )
                    if response.status_code != 404:  # gone meanwhile: nothing to mark
                        ctx.api.raise_for_status(response)
        except BaseException as exc:  # handed to the test's teardown
            failures.append(exc)

    marker = threading.Thread(target=mark, name="ignore-migration-backoff", daemon=True)
    marker.start()
    yield
    done.set()
    marker.join(timeout=10)
    if failures:
        raise failures[0]


def body(vm: str = "vm1", extra: str = "", cls: str = TARGET_CLASS) -> str:
    return f"storageClass: {cls}\n{extra}virtualMachines:\n  - name: {vm}\n"


def only(report: dict[str, Any], name: str = "vm1") -> dict[str, Any]:
    (outcome,) = [o for o in report["outcomes"] if o["name"] == name]
    return dict(outcome)


def assert_rolled_back(
    ctx: Moves,
    name: str,
    before: dict[str, Any],
    report: dict[str, Any],
    rule: str,
    *,
    result: str = "RolledBack",
) -> dict[str, Any]:
    """The VM exactly as before, the sources untouched, the move's DataVolumes gone, the
    journal closed with a RolledBack record naming ``rule``."""
    outcome = only(report, name)
    assert (outcome["result"], outcome["rule"]) == (result, rule), outcome
    vm = ctx.vm(name)
    assert storage_shape(vm) == storage_shape(before), "the VM is exactly as it was"
    assert ctx.hashes(vm) == ctx.source_hashes, "the sources are untouched"
    for claim in disks_of(before).values():
        pvc = ctx.pvc(claim)
        assert pvc and not pvc["metadata"].get("deletionTimestamp"), claim
    ctx.eventually(lambda: not ctx.ours(), what="the move's DataVolumes deleted")
    assert ctx.journal(name) is None, "the journal is closed"
    last = ctx.last(name)
    assert (last["result"], last["rule"]) == ("RolledBack", rule)
    assert last["volumes"] == disks_of(before)
    return outcome


def remember(ctx: Moves, name: str = "vm1") -> dict[str, Any]:
    vm = ctx.vm(name)
    ctx.source_hashes = ctx.hashes(vm)
    assert all(ctx.source_hashes.values())
    return vm


def annotate_vm(ctx: Moves, name: str, key: str, value: str | None) -> None:
    ctx.merge(f"virtualmachines/{name}", {"metadata": {"annotations": {key: value}}})


# --------------------------------------------------------------------------------------------
# live migration faults


@pytest.mark.usefixtures("fast_backoff")
def test_migration_failing_every_time_is_cancelled_and_rolled_back(ctx: Moves) -> None:
    ctx.make("vm1", MIXED)
    annotate_vm(ctx, "vm1", FAULT_ANNOTATION, "fail")  # every migration fails at Running
    before = remember(ctx)
    uid = ctx.vmi("vm1")["metadata"]["uid"]

    rc, report, err = ctx.apply(body=body())

    assert rc == 3, err
    outcome = assert_rolled_back(ctx, "vm1", before, report, "migration-failed")
    assert "3 migration attempts failed" in outcome["reason"]
    migrations = ctx.migrations("vm1")
    assert [m["status"]["phase"] for m in migrations].count("Failed") >= 3
    assert all(
        m["status"]["phase"] in ("Failed", "Succeeded")
        for m in migrations
        if not m["metadata"].get("deletionTimestamp")
    ), "nothing left running"
    vmi = ctx.vmi("vm1")
    assert vmi["metadata"]["uid"] == uid, "the guest kept running on its sources"
    change = condition(vmi, "VolumesChange")
    assert (change.get("status"), change.get("reason")) == ("False", "VolumesChangeCancellation")
    assert not vmi["status"].get("migratedVolumes")
    assert disks_of({"spec": {"template": {"spec": vmi["spec"]}}}) == disks_of(before)
    assert "volumeMigrationState" not in (ctx.vm("vm1")["status"].get("volumeUpdateState") or {})
    assert [s["step"] for s in outcome["steps"]][-4:] == [
        "revert",
        "wait-reverted",
        "remove-strategy",
        "delete-targets",
    ]


@pytest.mark.usefixtures("fast_backoff")
def test_migration_failing_twice_then_succeeding_is_a_success(ctx: Moves) -> None:
    ctx.make("vm1", MIXED)
    annotate_vm(ctx, "vm1", FAULT_ANNOTATION, "fail-times:2")
    before = remember(ctx)
    uid = ctx.vmi("vm1")["metadata"]["uid"]

    rc, report, err = ctx.apply(body=body())

    assert rc == 0, err
    assert (only(report)["result"], only(report)["flow"]) == ("Succeeded", "live")
    phases = sorted(m["status"]["phase"] for m in ctx.migrations("vm1"))
    assert phases == ["Failed", "Failed", "Succeeded"], "KubeVirt retried twice"
    vm = ctx.vm("vm1")
    assert ctx.hashes(vm) == ctx.source_hashes
    assert set(disks_of(vm).values()) == set(ctx.ours())
    assert all("-mig-" in claim for claim in disks_of(vm).values())
    assert ctx.vmi("vm1")["metadata"]["uid"] == uid
    assert ctx.last("vm1")["result"] == "Succeeded"
    assert disks_of(before) != disks_of(vm)


# --------------------------------------------------------------------------------------------
# clone faults (offline)


OFFLINE = "mode: Offline\nallowStop: true\n"
BOUNDED = "timeout: 1m\n"  # a test whose meddler misses fails in a minute, not at 300 s


def test_clone_failing_and_retried_counts_as_failed_and_restarts_the_vm(ctx: Moves) -> None:
    ctx.make("vm1", MIXED)
    before = remember(ctx)
    targets = ctx.targets(body(extra=OFFLINE))["vm1"]
    ctx.fault(DV_KIND, targets["data"], FaultAction.FAIL)  # every cloner pod attempt fails
    restarts: list[int] = []
    ctx.during(
        lambda: int((ctx.dv(targets["data"]).get("status") or {}).get("restartCount") or 0) >= 1,
        lambda _: restarts.append(1),
    )

    rc, report, err = ctx.apply(body=body(extra=OFFLINE))

    assert rc == 3, err
    outcome = assert_rolled_back(ctx, "vm1", before, report, "copy-failed")
    assert f"DataVolume {targets['data']} copy restarted 3 times" in outcome["reason"]
    assert "Unable to process data" in outcome["reason"], "CDI's own message is quoted"
    assert restarts, "CDI retried the clone (restartCount rose) before apply gave up"
    assert ctx.vm("vm1")["spec"]["runStrategy"] == "Always"
    ctx.eventually(lambda: ctx.vmi_phase("vm1") == "Running", what="the VM runs again")
    steps = [s["step"] for s in outcome["steps"]]
    assert steps[:3] == ["stop", "wait-stopped", "create-targets"]
    assert steps[-4:] == ["revert", "start", "wait-running", "delete-targets"]


def test_target_storage_class_deleted_mid_copy_rolls_back(ctx: Moves) -> None:
    doomed = f"doomed-{ctx.ns}"[:63]
    create_class(ctx.api, storage_class(doomed, "doomed.csi.example.com"))
    ctx.make("vm1", MIXED)
    before = remember(ctx)
    uid = ctx.vmi("vm1")["metadata"]["uid"]
    targets = ctx.targets(body(cls=doomed, extra=BOUNDED))["vm1"]
    ctx.fault(DV_KIND, targets["data"], FaultAction.STALL)
    deleted = ctx.during(
        lambda: (
            ctx.dv(targets["data"]).get("status", {}).get("phase")
            and ctx.at_step("vm1", "wait-targets")()
        ),
        lambda _: ctx.delete("storage.k8s.io/v1", f"storageclasses/{doomed}", namespaced=False),
    )

    rc, report, err = ctx.apply(body=body(cls=doomed, extra=BOUNDED))

    deleted.check()
    assert rc == 3, err
    outcome = assert_rolled_back(ctx, "vm1", before, report, "storage-class-deleted")
    assert f"StorageClass {doomed} was deleted" in outcome["reason"]
    assert ctx.vmi("vm1")["metadata"]["uid"] == uid, "never swapped: the guest was not touched"
    assert not ctx.migrations("vm1")


# --------------------------------------------------------------------------------------------
# someone else acts on the VM mid-run


def test_volume_renamed_by_someone_else_mid_copy_is_never_clobbered(ctx: Moves) -> None:
    ctx.make("vm1", PLAIN, running=False)
    before = remember(ctx)
    create(ctx.api, Disk("scratch", "pvc", "their-scratch").standalone(ctx.ns) or {})
    targets = ctx.targets(body(extra=BOUNDED))["vm1"]
    ctx.fault(DV_KIND, targets["scratch"], FaultAction.STALL)
    index = [v["name"] for v in before["spec"]["template"]["spec"]["volumes"]].index("scratch")
    path = f"/spec/template/spec/volumes/{index}/persistentVolumeClaim/claimName"

    def edit(_: object) -> None:  # their edit, then the copy may finish
        ctx.json_patch(
            "virtualmachines/vm1",
            [
                {"op": "test", "path": path, "value": "vm1-scratch"},
                {"op": "replace", "path": path, "value": "their-scratch"},
            ],
        )
        ctx.clear_fault(DV_KIND, targets["scratch"])

    edited = ctx.during(ctx.at_step("vm1", "wait-targets"), edit)

    rc, report, err = ctx.apply(body=body(extra=BOUNDED))

    edited.check()
    assert rc == 3, err
    outcome = only(report)
    assert (outcome["result"], outcome["rule"]) == ("RolledBack", "vm-changed"), outcome
    assert "volume scratch now uses 'their-scratch'" in outcome["reason"]
    vm = ctx.vm("vm1")
    assert disks_of(vm) == {**disks_of(before), "scratch": "their-scratch"}, "their edit stays"
    assert vm["spec"]["runStrategy"] == "Halted"
    assert ctx.hashes(vm)["data"] == ctx.source_hashes["data"]
    assert ctx.content("vm1-scratch") == ctx.source_hashes["scratch"]
    ctx.eventually(lambda: not ctx.ours(), what="the move's DataVolumes deleted")
    assert ctx.journal("vm1") is None
    assert ctx.last("vm1")["rule"] == "vm-changed"


def test_run_strategy_changed_by_someone_else_while_stopped_is_left_alone(ctx: Moves) -> None:
    ctx.make("vm1", PLAIN)
    before = remember(ctx)
    targets = ctx.targets(body(extra=OFFLINE + BOUNDED))["vm1"]
    ctx.fault(DV_KIND, targets["data"], FaultAction.STALL)

    def edit(_: object) -> None:  # an operator takes the VM over while we copy
        ctx.merge("virtualmachines/vm1", {"spec": {"runStrategy": "Manual"}})
        ctx.clear_fault(DV_KIND, targets["data"])

    edited = ctx.during(ctx.at_step("vm1", "wait-targets"), edit)

    rc, report, err = ctx.apply(body=body(extra=OFFLINE + BOUNDED))

    edited.check()
    assert rc == 3, err
    outcome = only(report)
    # Their edit changed the VM's spec after the copy began: the copy can no longer be proven
    # current (the generation moved on), so it is never swapped in.
    assert (outcome["result"], outcome["rule"]) == ("RolledBack", "source-changed"), outcome
    vm = ctx.vm("vm1")
    assert vm["spec"]["runStrategy"] == "Manual", "their run strategy is not overwritten"
    assert disks_of(vm) == disks_of(before), "the volumes are back on the sources"
    assert ctx.hashes(vm) == ctx.source_hashes
    assert not ctx.vmi("vm1"), "Manual: nobody asked it to start"
    ctx.eventually(lambda: not ctx.ours(), what="the move's DataVolumes deleted")
    assert ctx.journal("vm1") is None


def test_vm_started_by_someone_else_mid_clone_is_rolled_back_at_once(ctx: Moves) -> None:
    ctx.make("vm1", PLAIN)
    before = remember(ctx)
    targets = ctx.targets(body(extra=OFFLINE + BOUNDED))["vm1"]
    ctx.fault(DV_KIND, targets["data"], FaultAction.STALL)
    started = ctx.during(  # an operator starts the VM we stopped to copy its disks
        ctx.at_step("vm1", "wait-targets"), lambda _: ctx.set_running("vm1", True)
    )

    rc, report, err = ctx.apply(body=body(extra=OFFLINE + BOUNDED))

    started.check()
    assert rc == 3, err
    outcome = assert_rolled_back(ctx, "vm1", before, report, "vm-changed")
    assert "started by someone else during the offline copy" in outcome["reason"]
    assert outcome["seconds"] < 20, "noticed when the VM started, not at the deadline"
    assert ctx.vmi_phase("vm1") == "Running", "it runs, on its sources"
    assert disks_of({"spec": {"template": {"spec": ctx.vmi("vm1")["spec"]}}}) == disks_of(before)


def test_concurrent_edit_between_read_and_patch_is_re_read_not_clobbered(
    ctx: Moves, monkeypatch: pytest.MonkeyPatch
) -> None:
    from reconciler.apply import store

    ctx.make("vm1", MIXED)
    before = remember(ctx)
    real_read = store.read_vm
    edits: list[str] = []
    swap_reads: list[int] = []

    def read_then_edited(run: Any) -> Any:
        """The swap read the VM; someone labels it before our patch lands (once)."""
        vm = real_read(run)
        journal = json.loads(
            (vm or {}).get("metadata", {}).get("annotations", {}).get("vmstorage.dev/journal")
            or "{}"
        )
        if journal.get("step") == "swap":
            swap_reads.append(1)
        if vm is not None and journal.get("step") == "swap" and not edits:
            ctx.merge("virtualmachines/vm1", {"metadata": {"labels": {"team": "db"}}})
            edits.append(str(vm["metadata"]["resourceVersion"]))
        return vm

    monkeypatch.setattr("reconciler.apply.vm_steps.read_vm", read_then_edited)

    rc, report, err = ctx.apply(body=body())

    assert rc == 0, err
    assert edits, "the edit landed between the swap's read and its patch"
    # The swap tests the values it replaces and the journal, not the resourceVersion: an
    # unrelated edit between our read and our patch does not even make it conflict.
    assert len(swap_reads) == 1, "the swap landed on its first try"
    vm = ctx.vm("vm1")
    assert vm["metadata"]["labels"]["team"] == "db", "their label survives our patch"
    assert ctx.hashes(vm) == ctx.source_hashes
    assert disks_of(vm) != disks_of(before)
    assert only(report)["result"] == "Succeeded"


def test_vm_deleted_mid_copy_removes_the_move_s_datavolumes_only(ctx: Moves) -> None:
    ctx.make("vm1", PLAIN)
    remember(ctx)
    targets = ctx.targets(body(extra=BOUNDED))["vm1"]
    ctx.fault(DV_KIND, targets["data"], FaultAction.STALL)
    gone = ctx.during(
        ctx.at_step("vm1", "wait-targets"), lambda _: ctx.delete(KV, "virtualmachines/vm1")
    )

    rc, report, err = ctx.apply(body=body(extra=BOUNDED))

    gone.check()
    assert rc == 3, err
    outcome = only(report)
    assert (outcome["result"], outcome["rule"]) == ("Failed", "vm-deleted"), outcome
    ctx.eventually(lambda: not ctx.ours(), what="the move's DataVolumes deleted")
    ctx.eventually(lambda: not ctx.vm("vm1"), what="the VM gone")
    for claim, volume in (("vm1-data", "data"), ("vm1-scratch", "scratch")):
        pvc = ctx.pvc(claim)
        assert pvc and not pvc["metadata"].get("deletionTimestamp"), claim
        assert ctx.content(claim) == ctx.source_hashes[volume]
    assert ctx.dv("vm1-data"), "a standalone source DataVolume is not ours to delete"
    assert outcome["seconds"] < 30, "noticed at once, not at the deadline"


# --------------------------------------------------------------------------------------------
# time: the plan's timeout, a migration waiting for a slot


def test_plan_timeout_with_a_stalled_migration_cancels_it(ctx: Moves) -> None:
    ctx.make("vm1", MIXED)
    annotate_vm(ctx, "vm1", FAULT_ANNOTATION, "stall")  # the copy makes no progress
    before = remember(ctx)
    uid = ctx.vmi("vm1")["metadata"]["uid"]

    # 15 s: on the real engine under load the blank destinations alone can take over 3 s
    rc, report, err = ctx.apply(body=body(extra="timeout: 15s\n"))

    assert rc == 3, err
    outcome = assert_rolled_back(ctx, "vm1", before, report, "timeout")
    assert "timed out waiting for KubeVirt's volume migration" in outcome["reason"]
    vmi = ctx.vmi("vm1")
    assert vmi["metadata"]["uid"] == uid
    assert condition(vmi, "VolumesChange").get("reason") == "VolumesChangeCancellation"
    # apply ends only once KubeVirt has ended the migration of the cancelled change (deleted
    # or Failed): one still running could land on the destinations the rollback deletes.
    # Upstream's workload updater deletes it at its next pass, which nothing may trigger
    # before the node side fails the stalled copy at KubeVirt's progress timeout (150 s).
    migrations = ctx.migrations("vm1")
    assert all(m["status"]["phase"] == "Failed" for m in migrations), migrations
    assert outcome["seconds"] < 15 + 150 + 20, "the deadline, then at most the abort"


def _phase_time(migration: dict[str, Any], phase: str) -> datetime | None:
    for entry in (migration.get("status") or {}).get("phaseTransitionTimestamps") or []:
        if entry.get("phase") == phase:
            return datetime.fromisoformat(str(entry["phaseTransitionTimestamp"]))
    return None


def _created(migration: dict[str, Any]) -> datetime:
    return datetime.fromisoformat(str(migration["metadata"]["creationTimestamp"]))


def test_a_volume_migration_waits_for_a_free_slot_then_succeeds(
    ctx: Moves, kubevirt: KubeVirtPatch
) -> None:
    """Another VM's migration holds the cluster's only migration slot
    (``parallelMigrationsPerCluster: 1``): upstream's workload updater creates no VMIM for
    our volume update while it runs (workload-updater.go: ``maxNewMigrations`` = limit -
    active). apply says on stderr that it waits for KubeVirt to create the migration, does
    not fail meanwhile, and succeeds once the slot is free and KubeVirt migrates; the
    migration KubeVirt then creates may be Pending a moment (tests/unit/test_narration.py
    pins how apply tells that)."""
    ctx.make("vm0", [])  # a VM without disks: LiveMigratable, its migration takes the slot
    ctx.make("vm1", MIXED)
    remember(ctx)
    kubevirt({"spec": {"configuration": {"migrations": {"parallelMigrationsPerCluster": 1}}}})
    annotate_vm(ctx, "vm0", FAULT_ANNOTATION, "stall")
    ctx.post(
        "virtualmachineinstancemigrations",
        {
            "apiVersion": KV,
            "kind": "VirtualMachineInstanceMigration",
            "metadata": {"name": "maintenance", "namespace": ctx.ns},
            "spec": {"vmiName": "vm0"},
        },
    )
    ctx.eventually(
        lambda: (ctx.migrations("vm0") or [{}])[0].get("status", {}).get("phase") == "Running",
        timeout=60,
        what="the other migration holds the only slot",
    )
    waiting: list[float] = []

    def held_back() -> bool:
        """apply waits for the migration (its journal at wait-migration), and for longer than
        the workload updater's 5 s throttle none of vm1 was created: the slot is what holds
        it back."""
        if not ctx.at_step("vm1", "wait-migration")():
            return False
        waiting.append(time.monotonic())
        return waiting[-1] - waiting[0] >= 8 and not ctx.migrations("vm1")

    def free_the_slot(_: object = None) -> None:
        annotate_vm(ctx, "vm0", FAULT_ANNOTATION, None)

    opened = ctx.during(held_back, free_the_slot, 90, otherwise=free_the_slot)

    rc, report, err = ctx.apply(body=body(extra="timeout: 3m\n"))

    opened.check()
    outcome = only(report)
    assert (outcome["result"], rc) == ("Succeeded", 0), (outcome, err)
    assert f"{ctx.ns}/vm1: waiting for KubeVirt to create the migration" in err, err
    assert ctx.hashes(ctx.vm("vm1")) == ctx.source_hashes
    (other,) = ctx.migrations("vm0")
    (migration,) = ctx.migrations("vm1")
    assert migration["status"]["phase"] == "Succeeded"
    freed = _phase_time(other, "Succeeded")
    assert freed is not None and _created(migration) >= freed.replace(microsecond=0), (
        "KubeVirt created our migration only once the slot was free"
    )


# --------------------------------------------------------------------------------------------
# the loop over VMs: circuit breaker, --max-vms, maintenance windows


FLEET = "storageClass: ceph-rbd\nselector:\n  matchLabels: {fleet: a}\n"


def fleet(ctx: Moves, count: int) -> list[str]:
    names = [f"vm{i}" for i in range(1, count + 1)]
    for name in names:
        ctx.make(
            name, [Disk("root", "template", f"{name}-root")], running=False, labels={"fleet": "a"}
        )
    return names


def test_three_failing_vms_in_a_row_trip_the_breaker(ctx: Moves) -> None:
    names = fleet(ctx, 4)
    before = {n: ctx.vm(n) for n in names}
    targets = ctx.targets(FLEET)
    for name in names:  # every cloner pod attempt fails: CDI retries, apply gives up
        ctx.fault(DV_KIND, targets[name]["root"], FaultAction.FAIL)

    rc, report, err = ctx.apply(body=FLEET)

    assert rc == 3, err
    assert [(o["name"], o["result"], o["rule"]) for o in report["outcomes"]] == [
        (n, "RolledBack", "copy-failed") for n in names[:3]
    ]
    assert report["pending"] == [f"{ctx.ns}/vm4"], "the 4th VM is left for a later run"
    assert "3 VMs failed in a row" in report["stoppedEarly"]
    assert report["summary"]["rolledBack"] == 3 and report["summary"]["pending"] == 1
    untouched = ctx.vm("vm4")
    assert storage_shape(untouched) == storage_shape(before["vm4"])
    assert ctx.journal("vm4") is None and not ctx.last("vm4"), "never started"
    assert targets["vm4"]["root"] not in ctx.dvs()
    for name in names[:3]:
        assert storage_shape(ctx.vm(name)) == storage_shape(before[name])
    ctx.eventually(lambda: not ctx.ours(), what="every move's DataVolumes deleted")


def test_max_vms_moves_one_and_leaves_the_other_pending(ctx: Moves) -> None:
    fleet(ctx, 2)
    before = ctx.vm("vm2")

    rc, report, err = ctx.apply("--max-vms", "1", "--detailed-exitcode", body=FLEET)

    assert rc == 1, err
    assert [(o["name"], o["result"]) for o in report["outcomes"]] == [("vm1", "Succeeded")]
    assert report["pending"] == [f"{ctx.ns}/vm2"]
    assert (report["summary"]["succeeded"], report["summary"]["pending"]) == (1, 1)
    assert storage_shape(ctx.vm("vm2")) == storage_shape(before)
    assert ctx.journal("vm2") is None and not ctx.last("vm2")

    rc, report, err = ctx.apply("--max-vms", "1", body=FLEET)  # the next run takes the next

    assert rc == 0, err
    assert [(o["name"], o["result"]) for o in report["outcomes"]] == [("vm2", "Succeeded")]


def closed_window(now: datetime) -> str:
    """A one-hour window that opens twelve hours from now (so it is shut now)."""
    opens = (now + timedelta(hours=12)).strftime("%H:%M")
    return f'window: {{start: "{opens}", duration: 1h, timeZone: UTC}}\n'


def test_a_vm_outside_its_window_is_not_started(ctx: Moves) -> None:
    ctx.make("vm1", MIXED, running=False)
    before = ctx.vm("vm1")

    rc, report, err = ctx.apply(
        "--detailed-exitcode", body=body(extra=closed_window(datetime.now(UTC)))
    )

    assert rc == 5, err
    assert report["outsideWindow"] == [f"{ctx.ns}/vm1"] and not report["outcomes"]
    assert storage_shape(ctx.vm("vm1")) == storage_shape(before)
    assert ctx.journal("vm1") is None and not ctx.ours()


def test_outside_one_window_while_another_plan_moves_is_pending_not_5(ctx: Moves) -> None:
    ctx.make("vm1", [Disk("root", "template", "vm1-root")], running=False)
    ctx.make("vm2", [Disk("root", "template", "vm2-root")], running=False)

    rc, report, err = ctx.apply_files(
        ("shut", body("vm1", closed_window(datetime.now(UTC)))),
        ("open", body("vm2")),
        args=("--detailed-exitcode",),
    )

    assert rc == 1, err
    assert report["outsideWindow"] == [f"{ctx.ns}/vm1"]
    assert [(o["name"], o["result"]) for o in report["outcomes"]] == [("vm2", "Succeeded")]


# --------------------------------------------------------------------------------------------
# status, --dry-run


def status(ctx: Moves, path: Path, *args: str) -> tuple[int, str]:
    rc = main(["status", str(path), "--kubeconfig", str(ctx.control_plane.kubeconfig), *args])
    out, _err = ctx.capsys.readouterr()
    return rc, out


def test_status_shows_an_open_journal_then_the_last_migration(ctx: Moves) -> None:
    ctx.make("vm1", MIXED)
    remember(ctx)
    path = plan_file(ctx.tmp_path, ctx.ns, body())
    killed = subprocess.run(
        [
            sys.executable,
            "-m",
            "reconciler",
            "apply",
            str(path),
            "--kubeconfig",
            str(ctx.control_plane.kubeconfig),
            "--lease-namespace",
            ctx.lease_ns,
        ],
        env={**os.environ, "VMSR_FAILPOINT": "before:wait-migration"},
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert killed.returncode == -9, killed.stderr

    rc, text = status(ctx, path)
    assert rc == 1, text
    journal = ctx.journal("vm1")
    assert journal is not None and journal["step"] == "wait-migration"
    (row,) = [line for line in text.splitlines() if line.startswith(f"{ctx.ns}/vm1")]
    assert "moving (wait-migration)" in row and journal["id"] in row and "live" in row
    rc, text = status(ctx, path, "-o", "json")
    assert rc == 1
    (entry,) = json.loads(text)["vms"]
    assert entry["inFlight"]["step"] == "wait-migration"
    assert entry["inFlight"]["migrationId"] == journal["id"]
    assert entry["inFlight"]["rollingBack"] is False
    assert {v["volume"] for v in entry["inFlight"]["volumes"]} == {"root", "data"}
    assert entry["lastMigration"] is None

    # the killed run's Lease would hold for its duration: let it expire now
    ctx.delete(
        "coordination.k8s.io/v1",
        f"namespaces/{ctx.lease_ns}/leases/vm-storage-reconciler",
        namespaced=False,
    )
    rc, report, err = ctx.apply(body=body())
    assert rc == 0, err
    assert only(report)["resumed"] is True and only(report)["migrationId"] == journal["id"]

    rc, text = status(ctx, path)
    assert rc == 0, text
    (row,) = [line for line in text.splitlines() if line.startswith(f"{ctx.ns}/vm1")]
    assert "last: Succeeded" in row and journal["id"] in row
    rc, text = status(ctx, path, "-o", "json")
    (entry,) = json.loads(text)["vms"]
    assert entry["inFlight"] is None
    last = entry["lastMigration"]
    assert (last["result"], last["migrationId"], last["flow"]) == (
        "Succeeded",
        journal["id"],
        "live",
    )
    assert last["volumes"] == disks_of(ctx.vm("vm1"))
    assert ctx.hashes(ctx.vm("vm1")) == ctx.source_hashes


def test_apply_dry_run_changes_nothing(ctx: Moves) -> None:
    ctx.make("vm1", MIXED)
    before = ctx.vm("vm1")

    rc, report, err = ctx.apply("--dry-run", body=body())

    assert rc == 1, err
    assert report["kind"] == "PlanReport", "a dry run is a plan with a server dry run"
    (vm,) = report["vms"]
    assert vm["action"] == "MoveLive"
    vm_now = ctx.vm("vm1")
    assert vm_now["spec"] == before["spec"]
    assert vm_now["metadata"].get("annotations") == before["metadata"].get("annotations")
    assert not ctx.dvs().keys() - {"vm1-root", "vm1-data"}, "no DataVolume created"
    assert not ctx.migrations("vm1")
    leases = get_json(ctx.api, "coordination.k8s.io/v1", ctx.lease_ns, "leases")["items"]
    assert not leases, "not even the Lease was taken"


# --------------------------------------------------------------------------------------------
# ManualRecoveryRequired: the VM stopped during its volume migration


def stop_mid_copy(ctx: Moves, before_stop: Callable[[dict[str, Any]], None] | None = None) -> Any:
    """Once our migration copies (stalled), someone stops the VM (runStrategy Halted)."""

    def running_migration() -> dict[str, Any] | None:
        return next(
            (m for m in ctx.migrations("vm1") if (m.get("status") or {}).get("phase") == "Running"),
            None,
        )

    def stop(migration: dict[str, Any]) -> None:
        if before_stop is not None:
            before_stop(migration)
        ctx.set_running("vm1", False)

    return ctx.during(running_migration, stop)


def test_vm_stopped_mid_migration_is_reverted_at_once(ctx: Moves) -> None:
    ctx.make("vm1", MIXED)
    annotate_vm(ctx, "vm1", FAULT_ANNOTATION, "stall")
    before = remember(ctx)
    recorded: list[bool] = []

    def record(_: dict[str, Any]) -> None:  # KubeVirt knew about the migration when stopped
        state = ctx.vm("vm1")["status"].get("volumeUpdateState") or {}
        recorded.append(bool(state.get("volumeMigrationState")))

    stopped = stop_mid_copy(ctx, record)

    rc, report, err = ctx.apply(body=body(extra=BOUNDED))

    stopped.check()
    assert rc == 3, err
    assert recorded == [True], (
        "KubeVirt recorded the volume update on the VM (nothing of ours "
        "overwrote its status write), so it can flag the VM for manual recovery"
    )
    outcome = only(report)
    assert (outcome["result"], outcome["rule"]) == ("RolledBack", "manual-recovery-required")
    assert outcome["seconds"] < 20, "decided when the VMI went, not at the deadline"
    vm = ctx.vm("vm1")
    assert disks_of(vm) == disks_of(before), "recovered the upstream way: volumes reverted"
    assert "updateVolumesStrategy" not in vm["spec"]
    assert vm["spec"]["runStrategy"] == "Halted", "who stopped it decides when it starts"
    ctx.eventually(
        lambda: condition(ctx.vm("vm1"), "ManualRecoveryRequired").get("status") != "True",
        what="no ManualRecoveryRequired left",
    )
    ctx.eventually(lambda: not ctx.ours(), what="the move's DataVolumes deleted")
    assert ctx.hashes(vm) == ctx.source_hashes


def test_manual_recovery_required_blocks_the_start_until_apply_reverts(ctx: Moves) -> None:
    ctx.make("vm1", MIXED)
    annotate_vm(ctx, "vm1", FAULT_ANNOTATION, "stall")
    before = remember(ctx)
    path = plan_file(ctx.tmp_path, ctx.ns, body(extra=BOUNDED))
    killed = subprocess.run(  # the run dies while KubeVirt copies: nobody watches the VM
        [
            sys.executable,
            "-m",
            "reconciler",
            "apply",
            str(path),
            "--kubeconfig",
            str(ctx.control_plane.kubeconfig),
            "--lease-namespace",
            ctx.lease_ns,
        ],
        env={**os.environ, "VMSR_FAILPOINT": "before:wait-migration"},
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert killed.returncode == -9, killed.stderr
    ctx.eventually(
        lambda: any(
            (m.get("status") or {}).get("phase") == "Running" for m in ctx.migrations("vm1")
        ),
        what="the copy under way",
    )

    ctx.set_running("vm1", False)  # someone stops the VM mid-copy
    recovery = ctx.eventually(
        lambda: (
            condition(ctx.vm("vm1"), "ManualRecoveryRequired")
            if condition(ctx.vm("vm1"), "ManualRecoveryRequired").get("status") == "True"
            else None
        ),
        what="KubeVirt asks for manual recovery",
    )
    assert recovery["reason"] == "VMI was removed or was final during the volume migration"
    ctx.eventually(lambda: not ctx.vmi("vm1"), what="the VMI gone")
    ctx.set_running("vm1", True)  # and tries to start it again: KubeVirt refuses
    assert stays(lambda: not ctx.vmi("vm1")), "no VMI on a half-copied disk"

    ctx.delete(
        "coordination.k8s.io/v1",
        f"namespaces/{ctx.lease_ns}/leases/vm-storage-reconciler",
        namespaced=False,
    )  # the dead run's Lease expired
    rc, report, err = ctx.apply(body=body(extra=BOUNDED))

    assert rc == 3, err
    outcome = only(report)
    assert (outcome["result"], outcome["rule"], outcome["resumed"]) == (
        "RolledBack",
        "manual-recovery-required",
        True,
    )
    assert (
        "KubeVirt set ManualRecoveryRequired (VMI was removed or was final during the "
        "volume migration)" in outcome["reason"]
    ), "KubeVirt's reason is quoted"
    vm = ctx.vm("vm1")
    assert disks_of(vm) == disks_of(before), "the upstream recovery: the volumes reverted"
    assert "updateVolumesStrategy" not in vm["spec"]
    ctx.eventually(
        lambda: condition(ctx.vm("vm1"), "ManualRecoveryRequired").get("status") != "True",
        what="KubeVirt cleared ManualRecoveryRequired",
    )
    ctx.eventually(lambda: ctx.vmi_phase("vm1") == "Running", what="the VM starts again")
    status = {
        v["name"]: v["persistentVolumeClaimInfo"]["claimName"]
        for v in ctx.vmi("vm1")["status"]["volumeStatus"]
        if v.get("persistentVolumeClaimInfo")
    }
    assert status == disks_of(before), "on its sources"
    assert ctx.hashes(ctx.vm("vm1")) == ctx.source_hashes
    ctx.eventually(lambda: not ctx.ours(), what="the move's DataVolumes deleted")


def test_vm_stopped_once_the_target_domain_is_ready_keeps_the_destination(ctx: Moves) -> None:
    """The reference's exception: the target's virt-handler reported the domain ready there
    (the copy finished) and the source never acknowledged it (the node side holds the
    migration at that point: ``HOLD_ANNOTATION``) when someone stops the VM. KubeVirt fails
    the migration; apply recovers it the upstream way, keeping the destination (removing
    updateVolumesStrategy), and leaves the VM stopped."""
    ctx.make("vm1", MIXED)
    annotate_vm(ctx, "vm1", HOLD_ANNOTATION, "target-ready")
    before = remember(ctx)
    ready: list[dict[str, Any]] = []

    def target_ready() -> dict[str, Any] | None:
        state = (ctx.vmi("vm1").get("status") or {}).get("migrationState") or {}
        done = state.get("targetNodeDomainReadyTimestamp") and not state.get("completed")
        return state if done else None

    def stop(state: dict[str, Any]) -> None:
        ready.append(state)
        ctx.set_running("vm1", False)

    stopped = ctx.during(target_ready, stop, 90)

    rc, report, err = ctx.apply(body=body(extra=BOUNDED))

    stopped.check()
    assert ready, "the target domain was ready when the VM was stopped"
    outcome = only(report)
    assert (outcome["result"], rc) == ("Succeeded", 0), (
        f"{outcome['result']} {outcome['rule']}: {outcome['reason']}\n{err}"
    )
    assert "the copy finished before the VMI went away" in err, err
    vm = ctx.vm("vm1")
    assert "updateVolumesStrategy" not in vm["spec"], "the upstream recovery: strategy removed"
    assert condition(vm, "ManualRecoveryRequired").get("status") != "True"
    moved = disks_of(vm)
    assert set(moved) == set(disks_of(before))
    assert all("-mig-" in claim for claim in moved.values()), "the destinations are kept"
    assert ctx.hashes(vm) == ctx.source_hashes
    assert vm["spec"]["runStrategy"] == "Halted", "stopped by someone else: left stopped"
    assert set(ctx.ours()) == set(moved.values())
    assert ctx.last("vm1")["volumes"] == moved
