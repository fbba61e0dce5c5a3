"""KubeVirt's VirtualMachineSnapshot controller, reduced to what admission depends on.

Upstream (``pkg/storage/snapshot``) locks the source VM while a snapshot is taken: it sets
the VM's ``status.snapshotInProgress`` to the snapshot's name and adds the finalizer
``snapshot.kubevirt.io/snapshot-source-protection``; the VM webhook then refuses volume and
run-state edits (``testenv.admission``). When the snapshot is done it removes the finalizer,
clears ``snapshotInProgress`` and the snapshot is ``Succeeded`` with ``readyToUse: true``.
A second snapshot of a locked VM waits until the lock is released.

Simplified: no VirtualMachineSnapshotContent, no VolumeSnapshots, no guest freeze; the
snapshot completes in the reconcile after the lock is taken, unless the snapshot carries
the fault annotation ``sim.vmstorage.dev/fault: stall`` (it then stays ``InProgress``, the
VM locked, until the annotation is removed). A snapshot deleted while in progress releases
the lock (upstream: through the snapshot's own finalizer). Only ``VirtualMachine`` sources
are handled.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any, ClassVar

from testenv.node.runtime import (
    RESOURCES,
    Controller,
    FaultAction,
    Key,
    ResourceInfo,
    key_of,
    now_rfc3339,
    set_condition,
)

SNAPSHOT = "virtualmachinesnapshots"
VM = "virtualmachines"
SOURCE_FINALIZER = "snapshot.kubevirt.io/snapshot-source-protection"
MSG_LOCKED = "Source locked and operation in progress"
MSG_NOT_LOCKED = "Source not locked"
MSG_COMPLETE = "Operation complete"

RESOURCES.setdefault(
    SNAPSHOT, ResourceInfo("snapshot.kubevirt.io/v1beta1", "VirtualMachineSnapshot", True)
)


def _source_vm(snapshot: dict[str, Any]) -> str | None:
    source = (snapshot.get("spec") or {}).get("source") or {}
    return source.get("name") if source.get("kind") == "VirtualMachine" else None


def _done(snapshot: dict[str, Any]) -> bool:
    return (snapshot.get("status") or {}).get("phase") in ("Succeeded", "Failed")


class VirtualMachineSnapshotController(Controller):
    """Locks the source VM while a VirtualMachineSnapshot is in progress, then completes it."""

    watches: ClassVar[tuple[str, ...]] = (SNAPSHOT, VM)

    def keys_for(self, resource: str, obj: dict[str, Any]) -> Iterable[Key]:
        if resource == VM:
            return [key_of(VM, obj)]
        namespace = obj["metadata"]["namespace"]
        keys = [key_of(SNAPSHOT, obj)]
        vm = _source_vm(obj)
        if vm:
            keys.append((VM, namespace, vm))
        return keys

    def reconcile(self, key: Key) -> None:
        resource, namespace, name = key
        if resource == VM:
            self._release_stale_lock(namespace, name)
            return
        snapshot = self.sim.store.get(SNAPSHOT, namespace, name)
        if snapshot is None or _done(snapshot) or snapshot["metadata"].get("deletionTimestamp"):
            return
        vm_name = _source_vm(snapshot)
        vm = self.sim.store.get(VM, namespace, vm_name) if vm_name else None
        if vm is None:
            self._set_status(snapshot, "InProgress", locked=False)
            return
        holder = (vm.get("status") or {}).get("snapshotInProgress")
        if holder not in (None, name):
            self._set_status(snapshot, "InProgress", locked=False, vm=vm,
                             message=f'{MSG_NOT_LOCKED} snapshot "{holder}" in progress')
            return
        if holder is None or SOURCE_FINALIZER not in (vm["metadata"].get("finalizers") or []):
            vm = self._lock(vm, name)
        stalled = self.sim.faults.take(SNAPSHOT, namespace, name, FaultAction.STALL,
                                       obj=snapshot) is not None
        if stalled:
            self._set_status(snapshot, "InProgress", locked=True, vm=vm)
            return
        self._set_status(snapshot, "Succeeded", locked=True, vm=vm)
        self._unlock(vm)

    # -- the VM lock

    def _lock(self, vm: dict[str, Any], snapshot: str) -> dict[str, Any]:
        meta = vm["metadata"]
        if (vm.get("status") or {}).get("snapshotInProgress") != snapshot:
            vm = self.sim.client.patch_status(VM, meta["namespace"], meta["name"],
                                              {"status": {"snapshotInProgress": snapshot}})
        finalizers = list(vm["metadata"].get("finalizers") or [])
        if SOURCE_FINALIZER not in finalizers:
            vm = self.sim.client.merge_patch(VM, meta["namespace"], meta["name"], {
                "metadata": {"finalizers": [*finalizers, SOURCE_FINALIZER],
                             "resourceVersion": vm["metadata"]["resourceVersion"]}})
        return vm

    def _unlock(self, vm: dict[str, Any]) -> None:
        meta = vm["metadata"]
        finalizers = list(meta.get("finalizers") or [])
        if SOURCE_FINALIZER in finalizers:
            vm = self.sim.client.merge_patch(VM, meta["namespace"], meta["name"], {
                "metadata": {"finalizers": [f for f in finalizers if f != SOURCE_FINALIZER],
                             "resourceVersion": meta["resourceVersion"]}})
        if (vm.get("status") or {}).get("snapshotInProgress") is not None:
            self.sim.client.patch_status(VM, meta["namespace"], meta["name"],
                                         {"status": {"snapshotInProgress": None}})

    def _release_stale_lock(self, namespace: str, name: str) -> None:
        """Unlock a VM whose lock names a snapshot that is gone or finished."""
        vm = self.sim.store.get(VM, namespace, name)
        if vm is None:
            return
        holder = (vm.get("status") or {}).get("snapshotInProgress")
        if holder is None:
            return
        snapshot = self.sim.store.get(SNAPSHOT, namespace, holder)
        if snapshot is None or _done(snapshot) or _source_vm(snapshot) != name:
            self._unlock(vm)
        else:
            self.sim.enqueue(self, key_of(SNAPSHOT, snapshot))

    # -- the snapshot's status

    def _set_status(self, snapshot: dict[str, Any], phase: str, *, locked: bool,
                    vm: dict[str, Any] | None = None, message: str = "") -> None:
        current = snapshot.get("status") or {}
        conditions = current.get("conditions")
        ready = phase == "Succeeded"
        if ready:
            conditions = set_condition(conditions, "Progressing", "False", message=MSG_COMPLETE)
            conditions = set_condition(conditions, "Ready", "True", message=MSG_COMPLETE)
        else:
            text = MSG_LOCKED if locked else (message or MSG_NOT_LOCKED)
            conditions = set_condition(conditions, "Progressing", "True" if locked else "False",
                                       message=text)
            conditions = set_condition(conditions, "Ready", "False", message="Not ready")
        status: dict[str, Any] = {"phase": phase, "readyToUse": ready, "conditions": conditions}
        if vm is not None:
            status["sourceUID"] = vm["metadata"]["uid"]
        if ready:
            status["creationTime"] = current.get("creationTime") or now_rfc3339()
        if all(current.get(k) == v for k, v in status.items()):
            return
        meta = snapshot["metadata"]
        self.sim.client.patch_status(SNAPSHOT, meta["namespace"], meta["name"],
                                     {"status": status})


CONTROLLERS: tuple[type[Controller], ...] = (VirtualMachineSnapshotController,)
