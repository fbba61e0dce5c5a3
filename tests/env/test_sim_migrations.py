"""Failure shapes of simulated live migrations, as upstream migration.go and the
workload updater have them: parallel limits queue migrations, a stalled copy is aborted
after `progressTimeout` and retried with back-off, finished migrations are
garbage-collected beyond five per VMI, and `workloadUpdateMethods: [Evict]` evicts."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest

from tests.env import test_sim_kubevirt as kv
from tests.env.test_sim_kubevirt import (
    FAULT,
    Cluster,
    events,
    listing,
    patch,
    pvc_volume,
    status,
    vm_body,
)
from tests.support.kube import condition, stays

classes, kubevirt, cluster = kv.classes, kv.kubevirt, kv.cluster  # fixtures, by name
Configure = Callable[..., dict[str, Any]]


def set_migrations(cluster: Cluster, **settings: Any) -> None:
    """spec.configuration.migrations of the KubeVirt CR (the fixture restores the spec)."""
    patch(cluster.api, "KubeVirt", "kubevirt", "kubevirt",
          {"spec": {"configuration": {"migrations": settings}}})


def user_migration(cluster: Cluster, name: str, vmi: str) -> None:
    cluster.create("VirtualMachineInstanceMigration",
                   {"metadata": {"name": name}, "spec": {"vmiName": vmi}})


def succeeded(cluster: Cluster, name: str) -> Callable[[], bool]:
    return lambda: phase_of(cluster, name) == "Succeeded"


def phase_of(cluster: Cluster, name: str) -> str:
    return str(status(cluster.get("VirtualMachineInstanceMigration", name)).get("phase", ""))


@pytest.mark.cluster
def test_the_cluster_limit_keeps_further_migrations_pending(cluster: Cluster) -> None:
    set_migrations(cluster, parallelMigrationsPerCluster=1)
    for vm in ("a", "b"):
        cluster.bound_pvc(f"{vm}-disk", modes=("ReadWriteMany",))
        cluster.running_vm(vm_body(vm, [pvc_volume("rootdisk", f"{vm}-disk")],
                                   annotations={FAULT: "stall"} if vm == "a" else None))
    user_migration(cluster, "move-a", "a")
    cluster.wait(lambda: phase_of(cluster, "move-a") == "Running", "move-a Running")
    user_migration(cluster, "move-b", "b")
    cluster.wait(lambda: phase_of(cluster, "move-b") == "Pending", "move-b Pending")
    assert stays(lambda: phase_of(cluster, "move-b") == "Pending", seconds=1.0), \
        cluster.get("VirtualMachineInstanceMigration", "move-b")  # queued

    cluster.patch("VirtualMachine", "a", {"metadata": {"annotations": {FAULT: None}}})
    cluster.wait(lambda: phase_of(cluster, "move-a") == "Succeeded", "move-a done")
    cluster.wait(lambda: phase_of(cluster, "move-b") == "Succeeded", "move-b after the slot")


@pytest.mark.cluster
def test_a_stalled_copy_is_aborted_after_the_progress_timeout_and_retried(
        cluster: Cluster) -> None:
    set_migrations(cluster, progressTimeout=1)
    cluster.bound_pvc("root")
    cluster.bound_pvc("root-new", size="3Gi")
    cluster.running_vm(vm_body("vm1", [pvc_volume("rootdisk", "root")],
                               annotations={FAULT: "stall"}))
    cluster.migrate("vm1", "rootdisk", "root-new")
    first = cluster.migration_in("vm1", "Failed")
    state = status(first)["migrationState"]
    assert (state["failureReason"], state["abortStatus"]) == (
        "Live migration has been aborted", "Succeeded")
    started = [h["phaseTransitionTimestamp"] for h in status(first)["phaseTransitionTimestamps"]
               if h["phase"] == "Running"]
    assert started  # it ran, then made no progress
    cluster.wait(lambda: ("Warning", "MigrationBackoff", f"backoff migrating vmi {cluster.ns}/vm1")
                 in events(cluster.api, cluster.ns, "vm1"), "MigrationBackoff on the VMI")
    cluster.patch("VirtualMachine", "vm1", {"metadata": {"annotations": {FAULT: None}}})
    cluster.migration_in("vm1", "Succeeded", exclude=(first["metadata"]["name"],))


@pytest.mark.cluster
def test_finished_migrations_beyond_five_are_garbage_collected(cluster: Cluster) -> None:
    cluster.bound_pvc("shared", modes=("ReadWriteMany",))
    vmi = cluster.running_vm(vm_body("vm1", [pvc_volume("rootdisk", "shared")]))
    names = [f"move-{i}" for i in range(6)]
    for name in names:
        user_migration(cluster, name, "vm1")
        cluster.wait(succeeded(cluster, name), f"{name} Succeeded")
    first_source = status(kv.get(cluster.api, "VirtualMachineInstanceMigration", cluster.ns,
                                 "move-1"))["migrationState"]["sourcePod"]
    cluster.wait(lambda: [m["metadata"]["name"] for m in listing(
        cluster.api, "VirtualMachineInstanceMigration", cluster.ns)] == names[1:],
        "the oldest migration collected")
    pods = {p["metadata"]["name"] for p in listing(cluster.api, "Pod", cluster.ns, {
        "kubevirt.io/created-by": vmi["metadata"]["uid"]})}
    assert first_source in pods  # move-1's source pod stays with move-1
    assert len(pods) == 6  # five kept source pods and the running one


@pytest.mark.cluster
def test_evict_method_evicts_instead_of_migrating(cluster: Cluster, kubevirt: Configure) -> None:
    kubevirt(methods=("Evict",))
    cluster.bound_pvc("root")
    cluster.bound_pvc("root-new")
    cluster.running_vm(vm_body("vm1", [pvc_volume("rootdisk", "root")]))
    cluster.migrate("vm1", "rootdisk", "root-new")
    vm = cluster.wait(lambda: (v := cluster.vm("vm1")) and condition(
        v, "ManualRecoveryRequired").get("status") == "True" and v, "ManualRecoveryRequired")
    assert condition(vm, "ManualRecoveryRequired")["reason"] == (
        "VMI was removed or was final during the volume migration")
    assert ("Normal", "SuccessfulEvict",
            "Initiated eviction of VMI as part of automated workload update: <nil>") in \
        events(cluster.api, cluster.ns, "vm1")
    assert cluster.migrations("vm1") == []
    cluster.wait(lambda: cluster.vmi("vm1") is None, "evicted VMI gone, not restarted")
    assert stays(lambda: cluster.vmi("vm1") is None)
