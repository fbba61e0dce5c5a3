"""Rollback and failure handling (tests/cluster/test_apply_faults.py) on the real engine: the
node side fails, stalls or slows migrations and copies; how upstream virt-controller and
cdi-controller react, and what apply does about it, is not ours. ``LEAVE_OUT`` names the tests
that still run on the simulator only, each with the upstream difference that keeps it there
(read in KubeVirt v1.8.4 and CDI v1.65.0, the engine's versions); where upstream behaves
otherwise, a test below proves what it does instead."""

from __future__ import annotations

import time
from datetime import datetime
from typing import Any

from reconciler import engine
from reconciler.apply.context import Settings
from testenv.controlplane import ControlPlane
from tests.cluster import test_apply_faults
from tests.cluster.test_apply_faults import (
    BOUNDED,
    MIXED,
    KubeVirtPatch,
    annotate_vm,
    body,
    only,
    remember,
)
from tests.cluster.test_plan import plan_file
from tests.support.kube import condition
from tests.support.mirror import mirror
from tests.support.moves import FAULT_ANNOTATION, Moves, disks_of

KV = "kubevirt.io/v1"
HOLD_ANNOTATION = "sim.vmstorage.dev/migration-hold"  # testenv.node.handler

LEAVE_OUT = {
    "test_fatal_clone_is_rolled_back_and_a_stopped_vm_stays_stopped": (
        "a clone DataVolume never goes Failed upstream: CDI fails one for good only on a fatal "
        "importer error, and a clone's phase never maps to Failed (clone-controller-base.go "
        "updateStatusPhaseForPopulator 'Avoid setting DV to failed for consistency with "
        "non-populator flow'; a failed source pod only raises a CloneFailed event); the "
        "failing clone's upstream form (restarts) is test_clone_failing_and_retried_..."
    ),
    "test_a_migration_waiting_for_a_slot_is_reported_queued_then_succeeds": (
        "upstream's workload updater creates no volume-update VMIM while the cluster's active "
        "migrations fill parallelMigrationsPerCluster (workload-updater.go: maxNewMigrations "
        "= limit - active), so there is never a Pending 'queued' VMIM to report, as the "
        "simulator makes; what upstream does is test_a_volume_migration_waits_for_a_free_slot"
    ),
    "test_queued_progress_goes_to_stderr": (
        "the same: with parallelMigrationsPerCluster 0 upstream never creates the VMIM, so "
        "apply says it waits for KubeVirt to create the migration, not that one is queued"
    ),
    "test_vm_stopped_after_the_copy_finished_keeps_the_destination": (
        "writes the failed VMIM's migrationState (targetNodeDomainReadyTimestamp) as admin, "
        "where upstream virt-controller copies a final VMIM's migrationState from the VMI "
        "(migration.go), whose status only KubeVirt's ServiceAccounts write; upstream's "
        "target virt-handler writes it there (migration-target.go) and so does the node "
        "side, held at that point by its migration-hold knob: "
        "test_vm_stopped_once_the_target_domain_is_ready_keeps_the_destination"
    ),
}

globals().update(mirror(test_apply_faults, LEAVE_OUT))


def _phase_time(migration: dict[str, Any], phase: str) -> datetime | None:
    for entry in (migration.get("status") or {}).get("phaseTransitionTimestamps") or []:
        if entry.get("phase") == phase:
            return datetime.fromisoformat(str(entry["phaseTransitionTimestamp"]))
    return None


def _created(migration: dict[str, Any]) -> datetime:
    return datetime.fromisoformat(str(migration["metadata"]["creationTimestamp"]))


def test_a_volume_migration_waits_for_a_free_slot_then_succeeds(
    ctx: Moves, kubevirt: KubeVirtPatch, control_plane: ControlPlane
) -> None:
    """Another VM's migration holds the cluster's only migration slot
    (``parallelMigrationsPerCluster: 1``): upstream's workload updater creates no VMIM for
    our volume update until it ends, and apply waits for it without failing, then succeeds
    once KubeVirt migrates."""
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
    lines: list[str] = []
    waiting: list[float] = []

    def held_back() -> bool:
        """apply waits for KubeVirt's migration, and for longer than the workload updater's
        5 s throttle none was created: the slot is what holds it back."""
        if not any("waiting for KubeVirt to create the migration" in line for line in lines):
            return False
        waiting.append(time.monotonic())
        return waiting[-1] - waiting[0] >= 8 and not ctx.migrations("vm1")

    opened = ctx.during(held_back, lambda _: annotate_vm(ctx, "vm0", FAULT_ANNOTATION, None), 90)
    path = plan_file(ctx.tmp_path, ctx.ns, body(extra="timeout: 3m\n"))

    report = engine.apply(
        [path],
        kubeconfig=str(control_plane.kubeconfig),
        lease_namespace=ctx.lease_ns,
        progress=lines.append,
        settings=Settings(tick=0.1),
    )

    opened.check()
    (outcome,) = report.outcomes
    assert outcome.result == "Succeeded", outcome.reason
    assert not any("failed" in line for line in lines), "waiting for a slot is not a failure"
    assert ctx.hashes(ctx.vm("vm1")) == ctx.source_hashes
    (other,) = ctx.migrations("vm0")
    (migration,) = ctx.migrations("vm1")
    assert migration["status"]["phase"] == "Succeeded"
    freed = _phase_time(other, "Succeeded")
    assert freed is not None and _created(migration) >= freed.replace(microsecond=0), (
        "KubeVirt created our migration only once the slot was free"
    )


def test_vm_stopped_once_the_target_domain_is_ready_keeps_the_destination(ctx: Moves) -> None:
    """The reference's exception, upstream: the target's virt-handler reported the domain
    ready there (the copy finished) and the source never acknowledged it (the node side holds
    the migration at that point) when someone stops the VM. KubeVirt fails the migration;
    apply recovers it the upstream way, keeping the destination (removing
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
