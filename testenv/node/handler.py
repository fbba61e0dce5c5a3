"""virt-handler's part of a VMI, and the kubelet's end of virt-launcher pods.

What upstream virt-handler (v1.8, ``pkg/virt-handler``) does, minus libvirt:

- start: a VMI ``Scheduled`` on a node whose launcher pod runs goes ``Running``, with the
  ``LiveMigratable`` and ``StorageLiveMigratable`` conditions and ``migrationMethod``
  (``updateLiveMigrationConditions``), ``selinuxContext: none`` (no SELinux here), the phase
  transition timestamp;
- while running: the conditions recomputed whenever the VMI changes, e.g. when virt-controller
  adds ``status.migratedVolumes`` (``checkVolumesForMigration``: a claim that is neither
  shared nor migrated makes the VMI not migratable, and the migration validator refuses the
  workload updater's VMIM);
- migration: the target side advertises ``targetNodeAddress`` and ports once the target pod
  runs; the source starts (``startTimestamp``, mode PreCopy), copies for the migrated
  volumes' size x ``copy_seconds_per_gib`` (a stalled copy is aborted after the
  configuration's ``progressTimeout``, as virt-launcher does), then either completes (first
  the target: ``targetNodeDomainDetected``/``ReadyTimestamp``, the destinations hold the
  content; then the source: ``nodeName`` and the ``kubevirt.io/nodeName`` label moved to the
  target, ``migratedVolumes`` and ``VolumesChange`` removed, ``completed``; the source
  launcher exits) or fails (``failed``, ``failureReason``; the target launcher exits) or is
  aborted (``abortRequested`` -> ``abortStatus: Succeeded``); ``sim.vmstorage.dev/
  migration-hold: target-ready`` on the VM or VMIM holds it between the two halves;
- shutdown: a deleted VMI, or a deleted launcher pod of a running VMI, makes the guest shut
  down: the VMI goes ``Succeeded`` and the pod is finalized (containers terminated, deleted
  with grace period 0), which KWOK leaves to us for KubeVirt's pods.

JSON shape: conditions are written as Go marshals ``VirtualMachineInstanceCondition`` (zero
``lastProbeTime``/``lastTransitionTime`` as ``null``, empty reason and message absent), times
at second precision, ``migrationState`` without zero values (every field is ``omitempty``).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterable, Mapping
from typing import Any, ClassVar

from testenv.node import rules
from testenv.node.runtime import (
    CONTENT_HASH_ANNOTATION,
    ApiError,
    Client,
    Controller,
    FaultAction,
    Key,
    Simulator,
    annotations_of,
    content_hash,
    is_deleting,
    key_of,
    now_rfc3339,
)
from testenv.quantity import to_bytes

log = logging.getLogger("testenv.node.handler")

VMI = "virtualmachineinstances"
VMIM = "virtualmachineinstancemigrations"
VM = "virtualmachines"
POD = "pods"
PVC = "persistentvolumeclaims"
PV = "persistentvolumes"
NODE = "nodes"

APP_LABEL = "kubevirt.io"
CREATED_BY = "kubevirt.io/created-by"
NODE_NAME_LABEL = "kubevirt.io/nodeName"
HOLD_ANNOTATION = "sim.vmstorage.dev/migration-hold"
"""``target-ready`` on a VM or VMIM: its migration stops once the target domain is ready."""
TARGET_NODE_LABEL = "kubevirt.io/migrationTargetNodeName"
"""Set by virt-controller at the hand-off, for the target's virt-handler; it removes it once
the migration ended (``finalCleanup``)."""
HOST_MODEL_CPU_LABEL = "host-model-cpu.node.kubevirt.io/"
KUBEVIRT_PODS = frozenset({"virt-launcher", "hotplug-disk"})
SHARED_MODES = frozenset({"ReadWriteMany"})
TERMINAL = frozenset({"Succeeded", "Failed"})
MIGRATION_PORTS = {"49152": 0, "49153": 0}
"""targetDirectMigrationNodePorts: the ports a target's migration proxy listens on."""


def attach_handler_client(sim: Simulator, handler_api: Any) -> None:
    """Give the handler its own client, acting as virt-handler's ServiceAccount."""
    for controller in sim.controllers:
        if isinstance(controller, VirtHandler):
            controller.vmi_client = Client(handler_api, sim.store, component="virt-handler")


def go_condition(type_: str, status: str, reason: str = "", message: str = "") -> dict[str, Any]:
    """A VirtualMachineInstanceCondition as Go marshals one without timestamps."""
    cond: dict[str, Any] = {"type": type_, "status": status, "lastProbeTime": None,
                            "lastTransitionTime": None}
    if reason:
        cond["reason"] = reason
    if message:
        cond["message"] = message
    return cond


def _status(obj: Mapping[str, Any]) -> dict[str, Any]:
    return dict(obj.get("status") or {})


def _phase(obj: Mapping[str, Any]) -> str:
    return str(_status(obj).get("phase") or "")


class VirtHandler(Controller):
    """virt-handler on every fake node (see the module docstring)."""

    watches: ClassVar[tuple[str, ...]] = (VMI, POD, PVC, VMIM)

    def __init__(self, sim: Simulator) -> None:
        super().__init__(sim)
        self.vmi_client: Client = sim.client  # replaced by attach_handler_client
        self._copy_due: dict[str, float] = {}  # migration uid -> monotonic deadline
        self._decided: dict[str, FaultAction | None] = {}  # migration uid -> its fault
        self._stalled: dict[str, float] = {}  # migration uid -> since when without progress

    # -- mapping events to VMIs ----------------------------------------------------------

    def keys_for(self, resource: str, obj: dict[str, Any]) -> Iterable[Key]:
        meta = obj.get("metadata") or {}
        namespace = meta.get("namespace", "")
        if resource == VMI:
            return [key_of(VMI, obj)]
        if resource == POD:
            labels = meta.get("labels") or {}
            if labels.get(APP_LABEL) not in KUBEVIRT_PODS:
                return []
            keys: list[Key] = [(POD, namespace, meta["name"])]
            name = (meta.get("annotations") or {}).get("kubevirt.io/domain")
            if name:
                keys.append((VMI, namespace, name))
            return keys
        if resource == VMIM:
            name = (obj.get("spec") or {}).get("vmiName")
            return [(VMI, namespace, name)] if name else []
        return self.sim.store.keys(VMI, namespace)  # a claim changed: its VMIs' conditions

    def reconcile(self, key: Key) -> None:
        resource, namespace, name = key
        if resource == POD:
            self._reconcile_pod(namespace, name)
            return
        vmi = self.sim.store.get(VMI, namespace, name)
        if vmi is None:
            return
        if is_deleting(vmi):
            self._shutdown(vmi)
            return
        phase = _phase(vmi)
        if phase == "Scheduled":
            self._start(vmi)
        elif phase == "Running":
            self._running(vmi)

    # -- VMI lifecycle ---------------------------------------------------------------------

    def _start(self, vmi: dict[str, Any]) -> None:
        node = _status(vmi).get("nodeName")
        pod = self._active_pod(vmi, str(node or ""))
        if not node or pod is None or _pod_phase(pod) != "Running":
            return
        now = now_rfc3339()
        status = _status(vmi)
        conditions = self._migratability(vmi, status.get("conditions") or [])
        history = [dict(h) for h in status.get("phaseTransitionTimestamps") or []]
        history.append({"phase": "Running", "phaseTransitionTimestamp": now})
        self._write(vmi, {
            "phase": "Running",
            "phaseTransitionTimestamps": history,
            "conditions": conditions,
            "migrationMethod": self._migration_method(vmi),
            "selinuxContext": "none",
            "guestOSInfo": {},
        })
        self.vmi_client.event(vmi, "Normal", "Started", "VirtualMachineInstance started.")

    def _running(self, vmi: dict[str, Any]) -> None:
        status = _status(vmi)
        conditions = self._migratability(vmi, status.get("conditions") or [])
        method = self._migration_method(vmi)
        if conditions != (status.get("conditions") or []) or method != status.get(
                "migrationMethod"):
            vmi = self._write(vmi, {"conditions": conditions, "migrationMethod": method})
        self._migrate(vmi)

    def _shutdown(self, vmi: dict[str, Any]) -> None:
        """A deleted VMI: the guest shuts down, virt-handler reports Succeeded."""
        if _phase(vmi) in ("Running", "Scheduled") and not rules.is_migrating(vmi):
            now = now_rfc3339()
            status = _status(vmi)
            history = [dict(h) for h in status.get("phaseTransitionTimestamps") or []]
            history.append({"phase": "Succeeded", "phaseTransitionTimestamp": now})
            self._write(vmi, {"phase": "Succeeded", "phaseTransitionTimestamps": history})
            self.vmi_client.event(vmi, "Normal", "Stopped",
                                  "The VirtualMachineInstance was shut down.")
        for pod in self._launcher_pods(vmi):
            if _pod_phase(pod) not in TERMINAL:
                self._finish_pod(pod, "Succeeded")

    # -- migration -------------------------------------------------------------------------

    def _migrate(self, vmi: dict[str, Any]) -> None:
        state = dict(_status(vmi).get("migrationState") or {})
        uid = str(state.get("migrationUid") or "")
        if not uid or state.get("completed") or state.get("failed") or not state.get(
                "targetNode"):
            return
        if not state.get("targetNodeAddress"):
            self._prepare_target(vmi, state)
            return
        if state.get("abortRequested"):
            self._end(vmi, state, failed=True, reason="Live migration aborted by request",
                      abort=True)
            return
        if not state.get("startTimestamp"):
            state.update(startTimestamp=now_rfc3339(), mode="PreCopy")
            self._write(vmi, {"migrationState": state})
            self._copy_due[uid] = time.monotonic() + self._copy_seconds(vmi)
            self.sim.enqueue(self, key_of(VMI, vmi), 0.1)
            return
        migration = self._migration(vmi, uid)
        fault = self._fault(vmi, migration)
        if fault is FaultAction.STALL:
            # virt-launcher aborts a migration without progress for progressTimeout seconds
            timeout = int((state.get("migrationConfiguration") or {}).get("progressTimeout")
                          or 150)
            stalled = self._stalled.setdefault(uid, time.monotonic())
            if time.monotonic() - stalled >= timeout:
                self._end(vmi, state, failed=True, abort=True, reason=(
                    f"Live migration stuck for {timeout} seconds and has been aborted"))
                return
            self.sim.enqueue(self, key_of(VMI, vmi), 0.5)
            return
        self._stalled.pop(uid, None)
        due = self._copy_due.setdefault(uid, time.monotonic() + self._copy_seconds(vmi))
        if time.monotonic() < due:
            self.sim.enqueue(self, key_of(VMI, vmi), due - time.monotonic())
            return
        if fault in (FaultAction.FAIL, FaultAction.FAIL_TIMES, FaultAction.FATAL):
            self._end(vmi, state, failed=True,
                      reason="Live migration failed: injected fault (sim.vmstorage.dev/fault)")
            return
        if not state.get("targetNodeDomainReadyTimestamp"):
            self._target_ready(vmi, state)
            self.sim.enqueue(self, key_of(VMI, vmi), 0.1)
            return
        if self._held(vmi, migration):
            self.sim.enqueue(self, key_of(VMI, vmi), 0.5)
            return
        self._complete(vmi, state)

    def _target_ready(self, vmi: dict[str, Any], state: dict[str, Any]) -> None:
        """Target: the copy finished and the domain runs there (migration-target.go: the
        domain active on the target, before the source acknowledges the completion): the
        destinations hold the content."""
        now = now_rfc3339()
        state.update(targetNodeDomainDetected=True, targetNodeDomainReadyTimestamp=now)
        if isinstance(state.get("targetState"), dict):
            state["targetState"] = {**state["targetState"], "domainDetected": True,
                                    "domainReadyTimestamp": now}
        for entry in _status(vmi).get("migratedVolumes") or []:
            self._carry_content(vmi["metadata"]["namespace"], entry)
        self._write(vmi, {"migrationState": state})

    def _held(self, vmi: Mapping[str, Any], migration: Mapping[str, Any] | None) -> bool:
        """``HOLD_ANNOTATION: target-ready`` on the VMIM or the VM: the source never
        acknowledges the completion (e.g. its node went away) while it stays."""
        namespace = vmi["metadata"]["namespace"]
        owners = [ref.get("name") for ref in vmi["metadata"].get("ownerReferences") or []
                  if ref.get("kind") == "VirtualMachine"]
        vm = self.sim.store.get(VM, namespace, str(owners[0])) if owners else None
        return any(annotations_of(obj).get(HOLD_ANNOTATION) == "target-ready"
                   for obj in (migration, vm) if obj)

    def _prepare_target(self, vmi: dict[str, Any], state: dict[str, Any]) -> None:
        """The target node: once its launcher pod runs, advertise where it listens."""
        pod = self.sim.store.get(POD, vmi["metadata"]["namespace"],
                                 str(state.get("targetPod") or ""))
        if pod is None or _pod_phase(pod) != "Running":
            return
        address = self._node_address(str(state["targetNode"]))
        state.update(targetNodeAddress=address, targetDirectMigrationNodePorts=MIGRATION_PORTS)
        if isinstance(state.get("targetState"), dict):
            state["targetState"] = {**state["targetState"], "nodeAddress": address,
                                    "directMigrationNodePorts": MIGRATION_PORTS}
        self._write(vmi, {"migrationState": state})
        self.vmi_client.event(vmi, "Normal", "PreparingTarget",
                              f"Migration Target is listening at {address}, on ports: "
                              f"{','.join(MIGRATION_PORTS)}")

    def _complete(self, vmi: dict[str, Any], state: dict[str, Any]) -> None:
        """Source: the copy finished; target: the domain runs there (ackMigrationCompletion
        and finalizeMigration in one write)."""
        now = now_rfc3339()
        target = str(state["targetNode"])
        ready = state.get("targetNodeDomainReadyTimestamp") or now
        state.update(endTimestamp=now, targetNodeDomainDetected=True,
                     targetNodeDomainReadyTimestamp=ready, completed=True)
        if isinstance(state.get("targetState"), dict):
            state["targetState"] = {**state["targetState"], "domainDetected": True,
                                    "domainReadyTimestamp": ready}
        status = _status(vmi)
        for entry in status.get("migratedVolumes") or []:
            self._carry_content(vmi["metadata"]["namespace"], entry)
        conditions = [c for c in status.get("conditions") or []
                      if c.get("type") != "VolumesChange"]
        patch: dict[str, Any] = {
            "migrationState": state, "nodeName": target, "migrationTransport": "Unix",
            "migratedVolumes": None, "launcherContainerImageVersion": None,
            "evacuationNodeName": None, "conditions": conditions,
        }
        if state.get("targetMemoryOverhead"):
            patch["memory"] = {**(status.get("memory") or {}),
                               "memoryOverhead": state["targetMemoryOverhead"]}
        self._write(vmi, patch, labels={NODE_NAME_LABEL: target},
                    drop_labels=(TARGET_NODE_LABEL,))
        self._copy_due.pop(str(state.get("migrationUid")), None)
        self.vmi_client.event(vmi, "Normal", "Migrated",
                              f"The VirtualMachineInstance migrated to node {target}.")
        source = str(state.get("sourcePod") or "")
        for pod in self._launcher_pods(vmi):
            name = pod["metadata"]["name"]
            if (name == source or (pod.get("spec") or {}).get("nodeName") == state.get(
                    "sourceNode")) and name != state.get("targetPod"):
                self._finish_pod(pod, "Succeeded", delete=False)

    def _end(self, vmi: dict[str, Any], state: dict[str, Any], *, failed: bool, reason: str,
             abort: bool = False) -> None:
        """The migration failed (or was aborted): the source reports it; the target
        virt-handler then signals its launcher to clean up (``finalCleanup``:
        ``SignalTargetPodCleanup``), the target launcher exits, and the VMI runs on with one
        active launcher pod again (virt-controller schedules no new target pod while two
        run)."""
        state.update(endTimestamp=now_rfc3339(), failed=failed, failureReason=reason)
        if not state.get("startTimestamp"):
            state["startTimestamp"] = state["endTimestamp"]
        if abort:
            state["abortStatus"] = "Succeeded"
        self._write(vmi, {"migrationState": state}, drop_labels=(TARGET_NODE_LABEL,))
        self._copy_due.pop(str(state.get("migrationUid")), None)
        self.vmi_client.event(vmi, "Warning", "Migrated",
                              f"VirtualMachineInstance migration uid {state.get('migrationUid')}"
                              f" failed. reason:{reason}")
        target = self.sim.store.get(POD, vmi["metadata"]["namespace"],
                                    str(state.get("targetPod") or ""))
        if target is not None and _pod_phase(target) not in TERMINAL:
            self._finish_pod(target, "Succeeded", delete=False)

    def _carry_content(self, namespace: str, entry: Mapping[str, Any]) -> None:
        source = str((entry.get("sourcePVCInfo") or {}).get("claimName") or "")
        destination = str((entry.get("destinationPVCInfo") or {}).get("claimName") or "")
        source_pvc = self.sim.store.get(PVC, namespace, source)
        dest_pvc = self.sim.store.get(PVC, namespace, destination)
        if source_pvc is None or dest_pvc is None:
            return
        value = content_hash(source_pvc)
        if value is None or content_hash(dest_pvc) == value:
            return
        annotation = {"metadata": {"annotations": {CONTENT_HASH_ANNOTATION: value}}}
        self.sim.client.merge_patch(PVC, namespace, destination, annotation)
        volume = (dest_pvc.get("spec") or {}).get("volumeName")
        if volume:
            self.sim.client.merge_patch(PV, "", volume, annotation)

    def _migration(self, vmi: Mapping[str, Any], uid: str) -> dict[str, Any] | None:
        for migration in self.sim.store.list(VMIM, vmi["metadata"]["namespace"]):
            if migration["metadata"].get("uid") == uid:
                return migration
        return None

    def _fault(self, vmi: Mapping[str, Any], migration: Mapping[str, Any] | None
               ) -> FaultAction | None:
        """The migration's injected fault: on the VMIM, else on the VM (annotation
        ``sim.vmstorage.dev/fault``). A failure is decided once per migration (fail-times
        counts migrations); a stall holds while its annotation stays."""
        namespace = vmi["metadata"]["namespace"]
        owners = [ref.get("name") for ref in vmi["metadata"].get("ownerReferences") or []
                  if ref.get("kind") == "VirtualMachine"]
        vm = self.sim.store.get(VM, namespace, str(owners[0])) if owners else None
        sources = [(kind, obj) for kind, obj in ((VMIM, migration), (VM, vm)) if obj]
        for kind, obj in sources:
            if self.sim.faults.take(kind, namespace, obj["metadata"]["name"], "stall", obj):
                return FaultAction.STALL
        uid = str((migration or {}).get("metadata", {}).get("uid") or "")
        if uid not in self._decided:
            decided = None
            for kind, obj in sources:
                fault = self.sim.faults.take(kind, namespace, obj["metadata"]["name"], "fail",
                                             obj)
                if fault is not None:
                    decided = fault.action
                    break
            self._decided[uid] = decided
        return self._decided[uid]

    def _copy_seconds(self, vmi: Mapping[str, Any]) -> float:
        sizes = [to_bytes(str(((e.get("sourcePVCInfo") or {}).get("capacity") or {})
                                          .get("storage") or "0"))
                 for e in _status(vmi).get("migratedVolumes") or []]
        return max(rules.copy_seconds(sizes, self.sim.config.copy_seconds_per_gib), 0.2)

    # -- migratability ---------------------------------------------------------------------

    def _migratability(self, vmi: Mapping[str, Any], current: Iterable[Mapping[str, Any]]
                       ) -> list[dict[str, Any]]:
        """``current`` with LiveMigratable and StorageLiveMigratable as virt-handler computes
        them now (an unchanged condition keeps its place and its exact JSON)."""
        common = self._common_reasons(vmi)
        if common:
            live = go_condition("LiveMigratable", "False", common[0][0], common[0][1])
        else:
            disk_error = self._disk_error(vmi)
            live = (go_condition("LiveMigratable", "False", "DisksNotLiveMigratable", disk_error)
                    if disk_error else go_condition("LiveMigratable", "True"))
        storage = (go_condition("StorageLiveMigratable", "False", "NotMigratable",
                                ", ".join(f"{r}: {m}" for r, m in common))
                   if common else go_condition("StorageLiveMigratable", "True"))
        result = [dict(c) for c in current]
        for wanted in (live, storage):
            for index, cond in enumerate(result):
                if cond.get("type") == wanted["type"]:
                    if _same_condition(cond, wanted):
                        break
                    del result[index]
                    result.append(wanted)
                    break
            else:
                result.append(wanted)
        return result

    def _common_reasons(self, vmi: Mapping[str, Any]) -> list[tuple[str, str]]:
        """evaluateCommonMigrationConstraints as far as the VMIs here can hit them."""
        spec = vmi.get("spec") or {}
        domain = spec.get("domain") or {}
        reasons: list[tuple[str, str]] = []
        cpu = domain.get("cpu") or {}
        if cpu.get("model") == "host-model":
            node = self.sim.store.get(NODE, "", str(_status(vmi).get("nodeName") or ""))
            labels = ((node or {}).get("metadata") or {}).get("labels") or {}
            if not any(k.startswith(HOST_MODEL_CPU_LABEL) for k in labels):
                reasons.append(("CPUModeLiveMigratable",
                                f'the node "{_status(vmi).get("nodeName")}" does not allow '
                                "migration with host-model"))
        devices = domain.get("devices") or {}
        if devices.get("hostDevices") or devices.get("gpus"):
            reasons.append(("HostDeviceNotLiveMigratable", "VMI uses a PCI host devices"))
        reasons.extend(rules.non_migratable_reasons(vmi))  # persistent reservation, sim knob
        return reasons

    def _disk_error(self, vmi: Mapping[str, Any]) -> str:
        """checkVolumesForMigration's error ("" when every claim is shared or migrated)."""
        status = _status(vmi)
        infos = {v.get("name"): v.get("persistentVolumeClaimInfo")
                 for v in status.get("volumeStatus") or []}
        migrated = {v.get("volumeName") for v in status.get("migratedVolumes") or []}
        for volume in (vmi.get("spec") or {}).get("volumes") or []:
            source = volume.get("persistentVolumeClaim") or volume.get("dataVolume")
            if not source:
                continue
            claim = source.get("claimName") or source.get("name")
            info = infos.get(volume.get("name"))
            if info is None:
                return (f"cannot migrate VMI: Unable to determine if PVC {claim} is shared, live "
                        "migration requires that all PVCs must be shared (using ReadWriteMany "
                        "access mode)")
            if not SHARED_MODES & set(info.get("accessModes") or []) and \
                    volume.get("name") not in migrated:
                return (f"cannot migrate VMI: PVC {claim} is not shared, live migration "
                        "requires that all PVCs must be shared (using ReadWriteMany access "
                        "mode)")
        return ""

    def _migration_method(self, vmi: Mapping[str, Any]) -> str:
        status = _status(vmi)
        if status.get("migratedVolumes"):
            return "BlockMigration"
        spec = vmi.get("spec") or {}
        readonly = {d.get("name") for d in (spec.get("domain") or {}).get("devices", {}).get(
            "disks") or [] if d.get("cdrom") and (d["cdrom"].get("readonly", True))}
        filesystems = {f.get("name") for f in (spec.get("domain") or {}).get(
            "devices", {}).get("filesystems") or []}
        for volume in spec.get("volumes") or []:
            if volume.get("persistentVolumeClaim") or volume.get("dataVolume") or volume.get(
                    "hostDisk"):
                continue
            if volume.get("name") in readonly or volume.get("name") in filesystems:
                continue
            return "BlockMigration"
        return "LiveMigration"

    # -- launcher pods (the kubelet's end) -----------------------------------------------

    def _reconcile_pod(self, namespace: str, name: str) -> None:
        pod = self.sim.store.get(POD, namespace, name)
        if pod is None or not is_deleting(pod):
            return
        vmi_name = (pod["metadata"].get("annotations") or {}).get("kubevirt.io/domain", "")
        vmi = self.sim.store.get(VMI, namespace, vmi_name) if vmi_name else None
        if vmi is not None and self._is_active_pod(vmi, pod) and _phase(vmi) == "Running" \
                and not rules.is_migrating(vmi):
            self._shutdown(vmi)  # the launcher got SIGTERM: the guest shuts down
        self._finish_pod(pod, "Succeeded")

    def _finish_pod(self, pod: Mapping[str, Any], phase: str, *, delete: bool = True) -> None:
        """The launcher exited: containers terminated, the pod ``phase``; a deleted pod then
        goes (the kubelet's final delete, grace period 0)."""
        meta = pod["metadata"]
        now = now_rfc3339()
        if _pod_phase(pod) not in TERMINAL:
            statuses = []
            for status in (pod.get("status") or {}).get("containerStatuses") or []:
                started = ((status.get("state") or {}).get("running") or {}).get("startedAt", now)
                statuses.append({**status, "ready": False, "started": False, "state": {
                    "terminated": {"exitCode": 0, "reason": "Completed", "startedAt": started,
                                   "finishedAt": now}}})
            conditions = [{**c, "status": "False", "lastTransitionTime": now}
                          if c.get("type") in ("Ready", "ContainersReady") else c
                          for c in (pod.get("status") or {}).get("conditions") or []]
            try:
                self.sim.client.patch_status(POD, meta["namespace"], meta["name"], {
                    "status": {"phase": phase, "containerStatuses": statuses,
                               "conditions": conditions}})
            except ApiError as err:
                if err.code != 404:
                    raise
        if delete and (is_deleting(pod) or meta.get("deletionTimestamp")):
            self.sim.client.delete(POD, meta["namespace"], meta["name"], grace_period=0)

    def _launcher_pods(self, vmi: Mapping[str, Any]) -> list[dict[str, Any]]:
        meta = vmi["metadata"]
        return self.sim.store.list(POD, meta["namespace"],
                                   {APP_LABEL: "virt-launcher", CREATED_BY: meta["uid"]})

    def _active_pod(self, vmi: Mapping[str, Any], node: str) -> dict[str, Any] | None:
        for pod in self._launcher_pods(vmi):
            if (pod.get("spec") or {}).get("nodeName") == node and not is_deleting(pod) \
                    and _pod_phase(pod) not in TERMINAL:
                return pod
        return None

    def _is_active_pod(self, vmi: Mapping[str, Any], pod: Mapping[str, Any]) -> bool:
        state = _status(vmi).get("migrationState") or {}
        return ((pod.get("spec") or {}).get("nodeName") == _status(vmi).get("nodeName")
                and pod["metadata"]["name"] != state.get("targetPod"))

    def _node_address(self, node: str) -> str:
        obj = self.sim.store.get(NODE, "", node) or {}
        for address in (obj.get("status") or {}).get("addresses") or []:
            if address.get("type") == "InternalIP":
                return str(address.get("address"))
        return "127.0.0.1"

    # -- writing VMI status ----------------------------------------------------------------

    def _write(self, vmi: Mapping[str, Any], status: Mapping[str, Any], *,
               labels: Mapping[str, str] | None = None,
               drop_labels: Iterable[str] = ()) -> dict[str, Any]:
        """Patch the VMI (no status subresource) as virt-handler. A JSON patch, not a merge
        patch: a merge patch drops the ``null`` timestamps inside list items, and then the
        stored conditions no longer equal virt-controller's Go marshalling, which its
        ``test`` operations compare against. The ``test`` of the resourceVersion makes a
        stale view fail (422) and be retried on fresh data."""
        meta = vmi["metadata"]
        current = vmi.get("status") or {}
        ops: list[dict[str, Any]] = [
            {"op": "test", "path": "/metadata/resourceVersion", "value": meta["resourceVersion"]}]
        if "status" not in vmi:
            ops.append({"op": "add", "path": "/status", "value": {}})
        for key, value in status.items():
            path = f"/status/{key}"
            if value is None:
                if key in current:
                    ops.append({"op": "remove", "path": path})
            else:
                ops.append({"op": "add", "path": path, "value": value})
        for key, value in (labels or {}).items():
            if "labels" not in meta:
                ops.append({"op": "add", "path": "/metadata/labels", "value": {}})
                meta = {**meta, "labels": {}}
            escaped = key.replace("~", "~0").replace("/", "~1")
            ops.append({"op": "add", "path": f"/metadata/labels/{escaped}", "value": value})
        for key in drop_labels:
            if key in (meta.get("labels") or {}):
                escaped = key.replace("~", "~0").replace("/", "~1")
                ops.append({"op": "remove", "path": f"/metadata/labels/{escaped}"})
        try:
            return self.vmi_client.json_patch(VMI, meta["namespace"], meta["name"], ops)
        except ApiError as err:
            if err.code == 422 and "test" in err.message.lower():
                raise ApiError(409, "Conflict", err.message) from err  # retried at once
            raise


def _pod_phase(pod: Mapping[str, Any]) -> str:
    return str((pod.get("status") or {}).get("phase") or "Pending")


def _same_condition(a: Mapping[str, Any], b: Mapping[str, Any]) -> bool:
    keys = ("type", "status", "reason", "message")
    return all((a.get(k) or "") == (b.get(k) or "") for k in keys)


__all__ = ["VirtHandler", "annotations_of", "attach_handler_client", "go_condition"]
