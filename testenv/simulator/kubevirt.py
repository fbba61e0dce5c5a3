"""KubeVirt half of the simulator: virt-operator status, virt-controller, virt-handler.

Controllers (all run on the framework's single worker thread, see `core`):

- `KubeVirtStatusController`: marks the KubeVirt CR `Deployed` with the simulated version
  (`SimConfig.kubevirt_version`, or the CR annotation `sim.vmstorage.dev/version`).
- `VirtualMachineController` (virt-controller VM loop): DataVolumes from
  `dataVolumeTemplates`, the VMI per run strategy with its start ControllerRevision
  (`revision-start-vm-<uid>-<generation>`, the restart baseline), RestartRequired (recomputed
  from v1.8, sticky before), the storage live migration request (`handleVolumeUpdateRequest`:
  cancellation by revert, destinations validated before anything is written, v1.6+ removal
  of an old VolumesChange condition), ManualRecoveryRequired, and the VM status.
- `VirtualMachineInstanceController` (virt-controller VMI loop + scheduler + virt-handler):
  VMI phases Pending -> Scheduling -> Scheduled -> Running on a node (round-robin over
  `SimConfig.nodes`), the virt-launcher Pod (`pods`), WaitForFirstConsumer binding
  (`volume.kubernetes.io/selected-node`), volumeStatus, LiveMigratable /
  StorageLiveMigratable / VolumesChange, graceful shutdown.

The workload updater and the migration controller (faults, back-off, limits, progress
timeout, GC) are in `kubevirt_migration`; every knob is listed in `testenv.simulator`.

Admission: the VM webhook's refusals (unreferenced `dataVolumeTemplates`, `running` with
`runStrategy`, edits during a snapshot) are API errors (HTTP 422) from the policies in
`testenv.admission`; the version-gated `updateVolumesStrategy` feature-gate refusals (before
v1.5) are still reported as a VM `Failure` condition plus a Warning Event.

What cannot be simulated (documented deviations): the `subresources.kubevirt.io` API (use
`runStrategy` or `status.stateChangeRequests`), guests (VMIs never stop on their own).
"""

from __future__ import annotations

import copy
import itertools
import logging
import time
from collections.abc import Iterable, Mapping
from datetime import UTC, datetime
from typing import Any, ClassVar

from testenv.node.runtime import (
    ApiError,
    Controller,
    Key,
    Simulator,
    annotations_of,
    key_of,
    now_rfc3339,
    owner_reference,
)
from testenv.simulator import kubevirt_rules as rules
from testenv.simulator import pods
from testenv.simulator.kubevirt_rules import (
    KubeVirtConfig,
    RunStrategy,
    VMIPhase,
)

log = logging.getLogger("testenv.simulator.kubevirt")

VM = "virtualmachines"
VMI = "virtualmachineinstances"
VMIM = "virtualmachineinstancemigrations"
KUBEVIRT = "kubevirts"
DV = "datavolumes"
PVC = "persistentvolumeclaims"
SC = "storageclasses"
REVISION = "controllerrevisions"

KUBEVIRT_NAMESPACE = "kubevirt"

DV_READY_PHASES = frozenset({"Succeeded", "WaitForFirstConsumer", "PendingPopulation"})


# --------------------------------------------------------------------------------------------
# Shared helpers


def kubevirt_cr(sim: Simulator) -> dict[str, Any] | None:
    """The KubeVirt CR (the one in namespace `kubevirt` first), or None."""
    crs = [cr for cr in sim.store.list(KUBEVIRT) if not rules.is_deleting_obj(cr)]
    crs.sort(key=lambda cr: cr["metadata"].get("namespace") != KUBEVIRT_NAMESPACE)
    return crs[0] if crs else None


def cluster_config(sim: Simulator) -> KubeVirtConfig:
    """The KubeVirt configuration in force (defaults when there is no KubeVirt CR)."""
    return rules.kubevirt_config(kubevirt_cr(sim), sim.config.kubevirt_version)


def namespace_terminating(sim: Simulator, namespace: str) -> bool:
    """The namespace is being deleted: nothing new can be created in it (403), so the
    controllers leave its objects alone instead of retrying forever."""
    found = sim.store.get("namespaces", "", namespace)
    return found is not None and rules.is_deleting_obj(found)


def by_name(sim: Simulator, resource: str, namespace: str) -> dict[str, dict[str, Any]]:
    """Cached objects of one namespace, by name."""
    return {o["metadata"]["name"]: o for o in sim.store.list(resource, namespace)}


def names_anywhere(obj: Mapping[str, Any], name: str) -> bool:
    """Whether the string `name` appears anywhere in the spec or status of `obj` (a VM or
    VMI): volumes, dataVolumeTemplates, volumeStatus, migratedVolumes, ... A superset of the
    claims it refers to (a coincidence only costs a needless reconcile), read in place."""
    stack: list[Any] = [obj.get("spec"), obj.get("status")]
    while stack:
        value = stack.pop()
        if value == name:
            return True
        if isinstance(value, dict):
            stack.extend(value.values())
        elif isinstance(value, list):
            stack.extend(value)
    return False


def referring(sim: Simulator, resource: str, namespace: str, claim: str) -> list[Key]:
    """Keys of the VMs (resource VM) or VMIs (VMI) in `namespace` that may care about the PVC
    or DataVolume `claim`: those naming it, or whose VMI (or VM) of the same name does.
    Without this every DataVolume/PVC event reconciled every VM and VMI of the namespace,
    each reading all its claims: quadratic in the VMs of a namespace."""
    other = VMI if resource == VM else VM
    related = {k[2] for k in sim.store.keys_where(other, namespace,
                                                  lambda o: names_anywhere(o, claim))}
    return sim.store.keys_where(
        resource, namespace,
        lambda o: o["metadata"]["name"] in related or names_anywhere(o, claim))


def merge_diff(old: Mapping[str, Any], new: Mapping[str, Any]) -> dict[str, Any]:
    """The RFC 7386 merge patch that turns `old` into `new` (lists are replaced whole)."""
    patch: dict[str, Any] = {}
    for key in old.keys() - new.keys():
        patch[key] = None
    for key, value in new.items():
        before = old.get(key)
        if isinstance(value, Mapping) and isinstance(before, Mapping):
            nested = merge_diff(before, value)
            if nested:
                patch[key] = nested
        elif key not in old or before != value:
            patch[key] = copy.deepcopy(value)
    return patch


def write_status(sim: Simulator, resource: str, obj: Mapping[str, Any],
                 status: Mapping[str, Any]) -> dict[str, Any]:
    """Make `obj`'s status equal `status` (a no-op when it already is).

    The patch carries the cached resourceVersion, so a stale view ends in 409 Conflict and
    the framework retries with fresh data instead of overwriting someone else's change."""
    diff = merge_diff(obj.get("status") or {}, status)
    if not diff:
        return dict(obj)
    meta = obj["metadata"]
    body = {"metadata": {"resourceVersion": meta["resourceVersion"]}, "status": diff}
    return sim.client.patch_status(resource, meta.get("namespace", ""), meta["name"], body)


def write_meta(sim: Simulator, resource: str, obj: Mapping[str, Any],
               patch: Mapping[str, Any]) -> dict[str, Any]:
    """Merge-patch the main resource with a resourceVersion precondition."""
    meta = obj["metadata"]
    body = copy.deepcopy(dict(patch))
    body.setdefault("metadata", {})["resourceVersion"] = meta["resourceVersion"]
    return sim.client.merge_patch(resource, meta.get("namespace", ""), meta["name"], body)


def phase_history(status: Mapping[str, Any], phase: str, now: str) -> list[dict[str, Any]]:
    """`phaseTransitionTimestamps` with `phase` appended (unless it is already the last)."""
    history = [dict(h) for h in status.get("phaseTransitionTimestamps") or []]
    if not history or history[-1].get("phase") != phase:
        history.append({"phase": phase, "phaseTransitionTimestamp": now})
    return history


def wall_to_monotonic(stamp: str) -> float | None:
    """An RFC 3339 timestamp of the past as a time.monotonic() value (None if unparsable)."""
    try:
        when = datetime.strptime(stamp, "%Y-%m-%dT%H:%M:%SZ").replace(tzinfo=UTC)
    except (TypeError, ValueError):
        return None
    return time.monotonic() - (datetime.now(UTC) - when).total_seconds()


class Dwell:
    """How long an object has been in its current phase (monotonic, in memory).

    After a simulator restart the clock starts again, which only delays progress."""

    def __init__(self) -> None:
        self._since: dict[str, tuple[str, float]] = {}

    def remaining(self, uid: str, phase: str, seconds: float) -> float:
        """Seconds left before `seconds` have passed in `phase` (0 when they have)."""
        now = time.monotonic()
        current = self._since.get(uid)
        if current is None or current[0] != phase:
            current = (phase, now)
            self._since[uid] = current
        return max(current[1] + seconds - now, 0.0)

    def restart(self, uid: str, phase: str) -> None:
        """Count the time in `phase` from now on."""
        self._since[uid] = (phase, time.monotonic())

    def forget(self, uid: str) -> None:
        self._since.pop(uid, None)


def controller_owner(obj: Mapping[str, Any]) -> dict[str, Any] | None:
    for ref in obj.get("metadata", {}).get("ownerReferences") or []:
        if ref.get("controller"):
            return dict(ref)
    return None


def _strip_template_meta(meta: Mapping[str, Any] | None) -> dict[str, Any]:
    cleaned = {k: copy.deepcopy(v) for k, v in (meta or {}).items()
               if k in ("labels", "annotations") and v}
    return cleaned


# --------------------------------------------------------------------------------------------
# KubeVirt CR


class KubeVirtStatusController(Controller):
    """virt-operator: the KubeVirt CR is Deployed at the simulated version."""

    watches: ClassVar[tuple[str, ...]] = (KUBEVIRT,)

    def reconcile(self, key: Key) -> None:
        cr = self.sim.store.get(*key)
        if cr is None or rules.is_deleting_obj(cr):
            return
        config = rules.kubevirt_config(cr, self.sim.config.kubevirt_version)
        old = cr.get("status") or {}
        now = now_rfc3339()
        conditions = old.get("conditions")
        for type_, value in (("Available", "True"), ("Progressing", "False"),
                             ("Degraded", "False")):
            conditions = rules.put_condition(conditions, type_, value,
                                             reason="AllComponentsReady",
                                             message="All components are ready.", now=now)
        status = {
            **old,
            "phase": "Deployed",
            "observedKubeVirtVersion": config.version,
            "targetKubeVirtVersion": config.version,
            "observedKubeVirtRegistry": "quay.io/kubevirt",
            "targetKubeVirtRegistry": "quay.io/kubevirt",
            "observedGeneration": cr["metadata"].get("generation", 1),
            "conditions": conditions,
        }
        write_status(self.sim, KUBEVIRT, cr, status)


# --------------------------------------------------------------------------------------------
# VirtualMachine


class _VMSync:
    """Working state of one VM reconcile: what was read, and the status being built."""

    def __init__(self, sim: Simulator, vm: dict[str, Any], vmi: dict[str, Any] | None) -> None:
        namespace = vm["metadata"]["namespace"]
        self.vm = vm
        self.vmi = vmi
        self.status: dict[str, Any] = copy.deepcopy(vm.get("status") or {})
        self.config = cluster_config(sim)
        self.dvs = by_name(sim, DV, namespace)
        self.pvcs = by_name(sim, PVC, namespace)
        self.sync_error: tuple[str, str] | None = None
        self.restart_marked = False  # RestartRequired was (re)asserted during this sync
        self.stop_expected = False
        self.strategy: RunStrategy | None = None

    @property
    def namespace(self) -> str:
        return str(self.vm["metadata"]["namespace"])

    @property
    def name(self) -> str:
        return str(self.vm["metadata"]["name"])

    def vm_view(self) -> dict[str, Any]:
        """The VM with the status being built (rules read status fields from it)."""
        return {**self.vm, "status": self.status}

    def set_condition(self, type_: str, status: str, *, reason: str = "",
                      message: str = "") -> None:
        if type_ == "RestartRequired":
            self.restart_marked = True
        self.status["conditions"] = rules.put_condition(
            self.status.get("conditions"), type_, status, reason=reason, message=message,
            now=now_rfc3339())

    def drop_condition(self, type_: str) -> None:
        self.status["conditions"] = rules.drop_condition(self.status.get("conditions"), type_)

    def has_condition(self, type_: str, status: str | None = None) -> bool:
        cond = rules.find_condition({"status": self.status}, type_)
        return cond is not None and (status is None or cond.get("status") == status)

    def vmi_alive(self) -> bool:
        """A VMI exists that is neither final nor being deleted."""
        return (self.vmi is not None and not rules.is_deleting_obj(self.vmi)
                and not rules.is_final_vmi(self.vmi))


class VirtualMachineController(Controller):
    """virt-controller's VM loop."""

    watches: ClassVar[tuple[str, ...]] = (VM, VMI, DV, PVC, KUBEVIRT)

    def __init__(self, sim: Simulator) -> None:
        super().__init__(sim)
        self._reported: set[tuple[str, str]] = set()

    def keys_for(self, resource: str, obj: dict[str, Any]) -> Iterable[Key]:
        meta = obj["metadata"]
        if resource == VM:
            return [key_of(VM, obj)]
        if resource == VMI:
            return [(VM, meta["namespace"], meta["name"])]
        if resource in (DV, PVC):
            return referring(self.sim, VM, meta["namespace"], meta["name"])
        return self.sim.store.keys(VM, meta.get("namespace") if resource != KUBEVIRT else None)

    # -- main loop

    def reconcile(self, key: Key) -> None:
        _, namespace, name = key
        if namespace_terminating(self.sim, namespace):
            return
        vm = self.sim.store.get(VM, namespace, name)
        vmi = self.sim.store.get(VMI, namespace, name)
        if vm is None:
            self._release_orphan(vmi)
            self._collect_data_volumes(namespace)
            return
        if vmi is not None and not self._owns(vm, vmi):
            vmi = self._stale_vmi(vm, vmi)
        ctx = _VMSync(self.sim, vm, vmi)
        if rules.is_deleting_obj(vm):
            self._stop(ctx)
        else:
            self._sync(ctx)
        self._update_status(ctx)

    def _sync(self, ctx: _VMSync) -> None:
        try:
            ctx.strategy = rules.run_strategy(ctx.vm.get("spec") or {})
        except rules.RunStrategyError as err:
            message = f"Error fetching RunStrategy: {err}"
            # The API refuses such a spec (testenv.admission); one stored before the
            # policy existed gets virt-controller's Failure condition, as upstream.
            ctx.sync_error = (rules.REASON_FAILED_CREATE, message)
            return
        admission = ctx.config.admission_errors(ctx.vm.get("spec") or {})
        if admission:
            text = f"{rules.VM_WEBHOOK}: {'; '.join(admission)}"
            ctx.sync_error = (rules.REASON_ADMISSION, text)
            self._warn_once(ctx.vm, "FailedAdmission", text)
        ready = self._handle_data_volumes(ctx)
        if not ready and ctx.strategy is not RunStrategy.HALTED:
            return  # upstream: "Waiting on DataVolumes to be ready."
        self._sync_run_strategy(ctx)
        if admission or not ctx.vmi_alive():
            return
        vmi = ctx.vmi
        assert vmi is not None
        last_seen = self._start_spec(ctx)
        restart = last_seen is not None and rules.needs_restart(
            ctx.vm, last_seen, live_update=ctx.config.live_update)
        recompute = last_seen is not None and ctx.config.recomputes_restart_required
        if restart:
            ctx.set_condition("RestartRequired", "True", message=rules.MSG_NON_LIVE_UPDATABLE)
        elif ctx.config.live_update and (recompute
                                         or not ctx.has_condition("RestartRequired")):
            self._handle_volume_update(ctx)
        if recompute and not ctx.restart_marked:
            # v1.8+ syncRestartRequired drops the condition when no restart is needed any
            # more; the volume update above sets it again while the update stays invalid
            # (decided in one pass, so an unchanged condition is not rewritten).
            ctx.drop_condition("RestartRequired")

    def _start_spec(self, ctx: _VMSync) -> dict[str, Any] | None:
        """getLastVMRevisionSpec: the template spec the VMI started with, from the VM's
        start ControllerRevision (None without one: then nothing requires a restart)."""
        name = ((ctx.vmi or {}).get("status") or {}).get("virtualMachineRevisionName")
        revision = self.sim.store.get(REVISION, ctx.namespace, name) if name else None
        if revision is None:
            return None
        spec = ((revision.get("data") or {}).get("spec") or {})
        return dict((spec.get("template") or {}).get("spec") or {})

    def _create_revision(self, ctx: _VMSync) -> str:
        """createVMRevision: `revision-start-vm-<uid>-<generation>` holding the VM spec
        (older start revisions of the VM are deleted)."""
        prefix = f"revision-start-vm-{ctx.vm['metadata']['uid']}"
        generation = int(ctx.vm["metadata"].get("generation", 1))
        name = f"{prefix}-{generation}"
        for old in self.sim.store.list(REVISION, ctx.namespace):
            if old["metadata"]["name"].startswith(prefix) and old["metadata"]["name"] != name:
                self.sim.client.delete(REVISION, ctx.namespace, old["metadata"]["name"])
        if self.sim.store.get(REVISION, ctx.namespace, name) is None:
            body = {"metadata": {"name": name, "namespace": ctx.namespace,
                                 "ownerReferences": [owner_reference(ctx.vm)]},
                    "data": {"spec": copy.deepcopy(ctx.vm.get("spec") or {})},
                    "revision": generation}
            try:
                self.sim.client.create(REVISION, body)
            except ApiError as err:
                if err.code != 409:
                    raise
        return name

    # -- DataVolumes

    def _handle_data_volumes(self, ctx: _VMSync) -> bool:
        """Create missing DataVolumes of `dataVolumeTemplates`; True when all are usable."""
        ready = True
        for template in (ctx.vm.get("spec") or {}).get("dataVolumeTemplates") or []:
            name = template["metadata"]["name"]
            dv = ctx.dvs.get(name)
            if dv is None:
                ready = False
                self._create_data_volume(ctx, template)
                continue
            phase = (dv.get("status") or {}).get("phase")
            if phase in DV_READY_PHASES:
                continue
            if phase == "Failed":
                self._warn_once(ctx.vm, "FailedDataVolumeImport",
                                f"DataVolume {name} failed to import disk image",
                                uid=dv["metadata"]["uid"])
            ready = False
        return ready

    def _create_data_volume(self, ctx: _VMSync, template: Mapping[str, Any]) -> None:
        meta = _strip_template_meta(template.get("metadata"))
        labels = {**meta.get("labels", {}), rules.CREATED_BY_LABEL: ctx.vm["metadata"]["uid"]}
        annotations = {**meta.get("annotations", {}),
                       rules.ALLOW_CLAIM_ADOPTION_ANNOTATION: "true"}
        body: dict[str, Any] = {
            "apiVersion": "cdi.kubevirt.io/v1beta1",
            "kind": "DataVolume",
            "metadata": {
                "name": template["metadata"]["name"],
                "namespace": ctx.namespace,
                "labels": labels,
                "annotations": annotations,
                "ownerReferences": [owner_reference(ctx.vm)],
            },
            "spec": copy.deepcopy(template.get("spec") or {}),
        }
        try:
            created = self.sim.client.create(DV, body)
        except ApiError as err:
            if err.code == 409:  # created meanwhile; the watch will tell us
                return
            self.sim.client.event(ctx.vm, "Warning", "FailedDataVolumeCreate",
                                  f"Error creating DataVolume {body['metadata']['name']}: "
                                  f"{err.message}")
            raise
        ctx.dvs[created["metadata"]["name"]] = created
        self.sim.client.event(ctx.vm, "Normal", "SuccessfulDataVolumeCreate",
                              f"Created DataVolume {created['metadata']['name']}")

    # -- run strategy

    def _sync_run_strategy(self, ctx: _VMSync) -> None:
        vm, vmi, strategy = ctx.vm, ctx.vmi, ctx.strategy
        if strategy is RunStrategy.ALWAYS:
            if vmi is None:
                self._start(ctx)
            elif rules.has_stop_request_for(vm, vmi) or rules.is_final_vmi(vmi):
                self._stop(ctx)
        elif strategy is RunStrategy.RERUN_ON_FAILURE:
            if vmi is not None:
                failed = rules.vmi_phase(vmi) == VMIPhase.FAILED
                if not rules.is_deleting_obj(vmi) and (
                        rules.has_stop_request_for(vm, vmi) or rules.is_final_vmi(vmi)):
                    self._stop(ctx)
                    if failed:
                        requests = ctx.status.get("stateChangeRequests") or []
                        ctx.status["stateChangeRequests"] = [*requests, {"action": "Start"}]
            elif rules.has_start_request(vm) or ctx.status.get("runStrategy") != strategy:
                self._start(ctx)
        elif strategy is RunStrategy.MANUAL:
            if vmi is not None:
                if rules.has_stop_request_for(vm, vmi):
                    self._stop(ctx)
            elif rules.has_start_request(vm):
                self._start(ctx)
        elif strategy is RunStrategy.HALTED:
            if vmi is None:
                if rules.has_start_request(vm):
                    self._start_halted(ctx)
            else:
                self._stop(ctx)
        elif strategy is RunStrategy.ONCE and vmi is None:
            self._start(ctx)

    def _start(self, ctx: _VMSync) -> None:
        """startVMI: create the VMI from the template (refused during manual recovery)."""
        if ctx.has_condition("ManualRecoveryRequired", "True"):
            log.info("%s/%s: not starting, manual recovery required", ctx.namespace, ctx.name)
            return
        ctx.drop_condition("RestartRequired")
        revision = self._create_revision(ctx)
        template = (ctx.vm.get("spec") or {}).get("template") or {}
        meta = _strip_template_meta(template.get("metadata"))
        annotations = {**meta.get("annotations", {}),
                       rules.VM_GENERATION_ANNOTATION: str(ctx.vm["metadata"].get("generation",
                                                                                   1))}
        body: dict[str, Any] = {
            "apiVersion": "kubevirt.io/v1",
            "kind": "VirtualMachineInstance",
            "metadata": {
                "name": ctx.name,
                "namespace": ctx.namespace,
                "labels": meta.get("labels", {}),
                "annotations": annotations,
                "ownerReferences": [owner_reference(ctx.vm)],
                "finalizers": [rules.VM_CONTROLLER_FINALIZER],
            },
            "spec": copy.deepcopy(template.get("spec") or {}),
            "status": {"virtualMachineRevisionName": revision},
        }
        try:
            ctx.vmi = self.sim.client.create(VMI, body)
        except ApiError as err:
            if err.code == 409:  # the previous VMI is still shutting down; its deletion wakes us
                return
            self.sim.client.event(ctx.vm, "Warning", "FailedCreate",
                                  f"Error creating virtual machine instance: {err.message}")
            raise
        self.sim.client.event(
            ctx.vm, "Normal", "SuccessfulCreate",
            f"Started the virtual machine by creating the new virtual machine instance "
            f"{ctx.name}")

    def _start_halted(self, ctx: _VMSync) -> None:
        """A Start request on a Halted VM switches it to Always (what `virtctl start` does)."""
        spec = ctx.vm.get("spec") or {}
        patch = {"spec": {"running": True}} if "running" in spec and spec["running"] is not None \
            else {"spec": {"runStrategy": RunStrategy.ALWAYS.value}}
        ctx.vm = write_meta(self.sim, VM, ctx.vm, patch)

    def _stop(self, ctx: _VMSync) -> None:
        """stopVMI: delete the VMI (virt-handler then shuts the guest down)."""
        vmi = ctx.vmi
        if vmi is None or rules.is_deleting_obj(vmi):
            return
        self.sim.client.delete(VMI, ctx.namespace, ctx.name)
        ctx.vmi = self.sim.store.get(VMI, ctx.namespace, ctx.name)
        ctx.stop_expected = True
        ctx.drop_condition("RestartRequired")
        self.sim.client.event(
            ctx.vm, "Normal", "SuccessfulDelete",
            f"Stopped the virtual machine by deleting the virtual machine instance "
            f"{vmi['metadata']['uid']}")

    # -- volume updates (storage live migration)

    def _handle_volume_update(self, ctx: _VMSync) -> None:
        """handleVolumeUpdateRequest (runs only with LiveUpdate and no RestartRequired):
        cancel by revert, else validate every destination before anything is written."""
        vm, vmi = ctx.vm, ctx.vmi
        assert vmi is not None
        if rules.spec_volumes(vmi) == rules.template_volumes(vm):
            return
        migrating = rules.condition_is(vmi, "VolumesChange", "True")  # IsVolumeMigrating
        if migrating and rules.changes_migrated_volumes(vmi, vm):
            if rules.reverted_to_sources(vmi, vm):
                self._cancel_migration(ctx)
            else:
                ctx.sync_error = (rules.REASON_VOLUMES_UPDATE_ERROR,
                                  "error encountered while handling volumes update requests: "
                                  f"{rules.MSG_REVERT_ONLY}")
            return
        strategy = (vm.get("spec") or {}).get("updateVolumesStrategy")
        if strategy in (None, "Replacement"):
            if ctx.has_condition("RestartRequired"):
                ctx.restart_marked = True
            else:
                ctx.set_condition("RestartRequired", "True",
                                  message=rules.MSG_REPLACEMENT_RESTART)
            return
        if strategy != "Migration":
            ctx.sync_error = (rules.REASON_VOLUMES_UPDATE_ERROR,
                              "error encountered while handling volumes update requests: "
                              f"updateVolumes strategy not recognized: {strategy}")
            return
        if not rules.updated_volumes(rules.spec_volumes(vmi), rules.template_volumes(vm)):
            return  # PersistentVolumesUpdated: no claim changed
        invalid = rules.validate_volumes(vmi, vm, dvs=ctx.dvs, pvcs=ctx.pvcs, config=ctx.config)
        if invalid is not None:
            if invalid.missing and ctx.config.reports_missing_destination:
                self._set_volumes_change(ctx, "False",
                                         f"{rules.MSG_DESTINATION_MISSING}: {invalid.message}")
            else:
                ctx.set_condition("RestartRequired", "True", message=invalid.message)
            return
        if ctx.config.unsets_volumes_change and rules.find_condition(vmi, "VolumesChange"):
            status = copy.deepcopy(vmi.get("status") or {})
            status["conditions"] = rules.drop_condition(status.get("conditions"),
                                                        "VolumesChange")
            vmi = ctx.vmi = write_status(self.sim, VMI, vmi, status)
        migrated = rules.migrated_volumes(vmi, vm, ctx.pvcs)
        error = rules.update_migration_error(vmi, migrated)
        if error:
            ctx.set_condition("RestartRequired", "True", message=error)
            return
        if migrated and (vmi.get("status") or {}).get("migratedVolumes") != migrated:
            vmi = write_status(self.sim, VMI, vmi,
                               {**(vmi.get("status") or {}), "migratedVolumes": migrated})
        volumes = rules.patched_vmi_volumes(vmi, vm)
        if volumes != rules.spec_volumes(vmi):
            vmi = write_meta(self.sim, VMI, vmi, {"spec": {"volumes": volumes}})
        ctx.vmi = vmi
        if migrated and ctx.config.has_volume_update_state:
            ctx.status["volumeUpdateState"] = {
                "volumeMigrationState": {"migratedVolumes": migrated}}

    def _set_volumes_change(self, ctx: _VMSync, status_value: str, message: str) -> None:
        """SetVolumesChangeCondition on the VMI."""
        vmi = ctx.vmi
        assert vmi is not None
        status = copy.deepcopy(vmi.get("status") or {})
        status["conditions"] = rules.put_condition(status.get("conditions"), "VolumesChange",
                                                   status_value, message=message,
                                                   now=now_rfc3339())
        ctx.vmi = write_status(self.sim, VMI, vmi, status)

    def _cancel_migration(self, ctx: _VMSync) -> None:
        """VolumeMigrationCancel: the VMI gets its source volumes back."""
        vmi = ctx.vmi
        assert vmi is not None
        volumes = rules.patched_vmi_volumes(vmi, ctx.vm)
        if volumes != rules.spec_volumes(vmi):
            vmi = write_meta(self.sim, VMI, vmi, {"spec": {"volumes": volumes}})
        status = copy.deepcopy(vmi.get("status") or {})
        status["conditions"] = rules.put_condition(
            status.get("conditions"), "VolumesChange", "False",
            reason=rules.REASON_CANCELLATION, now=now_rfc3339())
        status.pop("migratedVolumes", None)
        ctx.vmi = write_status(self.sim, VMI, vmi, status)
        log.info("%s/%s: volume migration cancelled", ctx.namespace, ctx.name)

    # -- status

    def _update_status(self, ctx: _VMSync) -> None:
        vm = ctx.vm
        vmi = ctx.vmi
        status = ctx.status
        status["created"] = vmi is not None
        status["ready"] = vmi is not None and rules.condition_is(vmi, "Ready", "True")
        if ctx.strategy is not None and (status.get("runStrategy") or status["created"]):
            status["runStrategy"] = ctx.strategy.value
        if rules.trim_first_change_request(ctx.vm_view(), vmi):
            status["stateChangeRequests"] = (status.get("stateChangeRequests") or [])[1:]
        if not status.get("stateChangeRequests"):
            status.pop("stateChangeRequests", None)
        if ctx.config.has_volume_update_state:
            self._sync_volume_migration(ctx)
        else:
            status.pop("volumeUpdateState", None)
        self._sync_conditions(ctx)
        status["printableStatus"] = rules.printable_status(
            ctx.vm_view(), vmi, dvs=ctx.dvs, pvcs=ctx.pvcs, stop_expected=ctx.stop_expected)
        status["desiredGeneration"] = vm["metadata"].get("generation", 1)
        if vmi is not None:
            observed = annotations_of(vmi).get(rules.VM_GENERATION_ANNOTATION)
            if observed and observed.isdigit():
                status["observedGeneration"] = int(observed)
        write_status(self.sim, VM, vm, status)
        if vmi is not None:
            self._bump_generation(ctx)
            if rules.is_final_vmi(vmi):
                self._release_vmi(vmi)

    def _sync_volume_migration(self, ctx: _VMSync) -> None:
        """syncVolumeMigration: keep, clear or escalate the VM's volumeMigrationState."""
        update = ctx.status.get("volumeUpdateState") or {}
        if not update.get("volumeMigrationState"):
            return
        strategy = (ctx.vm.get("spec") or {}).get("updateVolumesStrategy")
        if rules.recovered_source_volumes(ctx.vm_view()) or strategy != "Migration":
            ctx.status["volumeUpdateState"] = {
                k: v for k, v in update.items() if k != "volumeMigrationState"}
            ctx.drop_condition("VolumesChange")
            ctx.drop_condition("ManualRecoveryRequired")
            return
        vmi = ctx.vmi
        if vmi is None or rules.is_final_vmi(vmi):
            # The VM mirrors the VMI's VolumesChange; a final VMI still carries it (the
            # mirror may not have run between the migration's start and the VMI's end).
            if ctx.has_condition("VolumesChange", "True") or (
                    vmi is not None and rules.condition_is(vmi, "VolumesChange", "True")):
                ctx.set_condition("ManualRecoveryRequired", "True",
                                  reason=rules.MSG_MANUAL_RECOVERY)
            return
        cond = rules.find_condition(vmi, "VolumesChange")
        if cond and cond.get("status") == "False" and \
                cond.get("reason") == rules.REASON_CANCELLATION:
            ctx.status["volumeUpdateState"] = {
                k: v for k, v in update.items() if k != "volumeMigrationState"}

    def _sync_conditions(self, ctx: _VMSync) -> None:
        """syncConditions: Ready and Failure, then mirror the VMI's conditions."""
        vmi = ctx.vmi
        if vmi is None:
            ctx.set_condition("Ready", "False", reason="VMINotExists",
                              message="VMI does not exist")
        else:
            ready = rules.find_condition(vmi, "Ready")
            if ready is None:
                ctx.set_condition("Ready", "False", reason="VMIConditionMissing",
                                  message="VMI is missing the Ready condition")
            else:
                ctx.set_condition("Ready", ready["status"], reason=ready.get("reason", ""),
                                  message=ready.get("message", ""))
        if ctx.sync_error is not None:
            ctx.set_condition("Failure", "True", reason=ctx.sync_error[0],
                              message=ctx.sync_error[1])
        else:
            ctx.drop_condition("Failure")
        if vmi is None:
            return
        # ManualRecoveryRequired is owned by the VM (upstream would drop it while a final
        # VMI still exists and set it again once the VMI is gone; we skip the flicker).
        ignored = {"Ready", "Failure", "RestartRequired", "ManualRecoveryRequired"}
        mirrored = set()
        for cond in (vmi.get("status") or {}).get("conditions") or []:
            if cond["type"] in ignored:
                continue
            mirrored.add(cond["type"])
            ctx.set_condition(cond["type"], cond["status"], reason=cond.get("reason", ""),
                              message=cond.get("message", ""))
        for cond in list(ctx.status.get("conditions") or []):
            if cond["type"] not in ignored and cond["type"] not in mirrored:
                ctx.drop_condition(cond["type"])

    def _bump_generation(self, ctx: _VMSync) -> None:
        """Record on the VMI that it matches the VM's current generation (when it does)."""
        vmi = ctx.vmi
        if vmi is None or rules.is_deleting_obj(vmi) or rules.is_final_vmi(vmi):
            return
        generation = str(ctx.vm["metadata"].get("generation", 1))
        if annotations_of(vmi).get(rules.VM_GENERATION_ANNOTATION) == generation:
            return
        template = ((ctx.vm.get("spec") or {}).get("template") or {}).get("spec") or {}
        if template == vmi.get("spec"):
            write_meta(self.sim, VMI, vmi, {
                "metadata": {"annotations": {rules.VM_GENERATION_ANNOTATION: generation}}})

    # -- VMI ownership and finalizers

    @staticmethod
    def _owns(vm: Mapping[str, Any], vmi: Mapping[str, Any]) -> bool:
        owner = controller_owner(vmi)
        return owner is None or owner.get("uid") == vm["metadata"]["uid"]

    def _stale_vmi(self, vm: Mapping[str, Any], vmi: dict[str, Any]) -> dict[str, Any] | None:
        """A VMI of an earlier VM with the same name: let it go, start afresh later."""
        log.info("%s/%s: VMI belongs to an earlier VM, deleting it",
                 vm["metadata"]["namespace"], vm["metadata"]["name"])
        self._release_orphan(vmi)
        return None

    def _release_orphan(self, vmi: dict[str, Any] | None) -> None:
        """The VM is gone: drop our finalizer from its VMI and delete the VMI."""
        if vmi is None:
            return
        owner = controller_owner(vmi)
        if owner is not None and owner.get("kind") != "VirtualMachine":
            return
        if owner is None and rules.VM_CONTROLLER_FINALIZER not in (
                vmi["metadata"].get("finalizers") or []):
            return
        vmi = self._release_vmi(vmi)
        if not rules.is_deleting_obj(vmi):
            meta = vmi["metadata"]
            self.sim.client.delete(VMI, meta["namespace"], meta["name"])

    def _collect_data_volumes(self, namespace: str) -> None:
        """Garbage-collect DataVolumes whose controlling VM is gone (the test control plane
        runs no garbage collector; upstream relies on it for dataVolumeTemplates)."""
        alive = {vm["metadata"]["uid"] for vm in self.sim.store.list(VM, namespace)}
        for dv in self.sim.store.list(DV, namespace):
            owner = controller_owner(dv)
            if owner is None or owner.get("kind") != "VirtualMachine" \
                    or owner.get("uid") in alive or rules.is_deleting_obj(dv):
                continue
            self.sim.client.delete(DV, namespace, dv["metadata"]["name"])

    def _release_vmi(self, vmi: dict[str, Any]) -> dict[str, Any]:
        """Remove the VM controller finalizer (after a final VMI's status was recorded)."""
        finalizers = vmi["metadata"].get("finalizers") or []
        if rules.VM_CONTROLLER_FINALIZER not in finalizers:
            return vmi
        kept = [f for f in finalizers if f != rules.VM_CONTROLLER_FINALIZER]
        return write_meta(self.sim, VMI, vmi, {"metadata": {"finalizers": kept}})

    def _warn_once(self, obj: Mapping[str, Any], reason: str, message: str,
                   uid: str | None = None) -> None:
        """A Warning Event, once per (object state, reason) rather than once per reconcile."""
        marker = (uid or f"{obj['metadata']['uid']}/{obj['metadata'].get('generation')}",
                  reason)
        if marker in self._reported:
            return
        self._reported.add(marker)
        self.sim.client.event(obj, "Warning", reason, message)


# --------------------------------------------------------------------------------------------
# VirtualMachineInstance


class VirtualMachineInstanceController(Controller):
    """virt-controller's VMI loop, the scheduler and virt-handler for one VMI."""

    watches: ClassVar[tuple[str, ...]] = (VMI, PVC, DV)

    def __init__(self, sim: Simulator) -> None:
        super().__init__(sim)
        self._dwell = Dwell()
        self._nodes: dict[str, str] = {}
        self._round_robin = itertools.count()

    def keys_for(self, resource: str, obj: dict[str, Any]) -> Iterable[Key]:
        if resource == VMI:
            return [key_of(VMI, obj)]
        return referring(self.sim, VMI, obj["metadata"]["namespace"], obj["metadata"]["name"])

    @property
    def tick(self) -> float:
        return float(self.sim.config.progress_tick)

    def reconcile(self, key: Key) -> None:
        vmi = self.sim.store.get(*key)
        if vmi is None or namespace_terminating(self.sim, key[1]):
            return
        uid = vmi["metadata"]["uid"]
        if rules.is_deleting_obj(vmi):
            self._shut_down(vmi)
            return
        phase = rules.vmi_phase(vmi)
        if phase in rules.FINAL_VMI_PHASES:
            return
        if not phase:
            self._set_phase(vmi, VMIPhase.PENDING, self._not_ready(vmi.get("status") or {}))
        elif phase == VMIPhase.PENDING:
            self._pending(vmi)
        elif phase == VMIPhase.SCHEDULING:
            self._scheduling(vmi)
        elif phase == VMIPhase.SCHEDULED:
            if self._wait(key, uid, phase, self.tick):
                return
            status = self._running_status(vmi, vmi.get("status") or {})
            self._set_phase(vmi, VMIPhase.RUNNING, status)
            self.sim.client.event(vmi, "Normal", "Started", "VirtualMachineInstance started.")
        else:
            write_status(self.sim, VMI, vmi, self._running_status(vmi, vmi.get("status") or {}))

    # -- phases

    def _pending(self, vmi: dict[str, Any]) -> None:
        """Wait for every claim to exist and every DataVolume to be usable, then schedule."""
        namespace = vmi["metadata"]["namespace"]
        pvcs = by_name(self.sim, PVC, namespace)
        dvs = by_name(self.sim, DV, namespace)
        status = copy.deepcopy(vmi.get("status") or {})
        now = now_rfc3339()
        missing = [c for c in self._claims(vmi) if c not in pvcs and c not in dvs]
        if missing:
            status["conditions"] = rules.put_condition(
                status.get("conditions"), "Synchronized", "False",
                reason=rules.REASON_PVC_NOT_FOUND,
                message=f"PVC {namespace}/{missing[0]} does not exist, waiting for it to appear",
                now=now)
        else:
            status["conditions"] = rules.drop_condition(status.get("conditions"), "Synchronized")
        dv_names = [v["dataVolume"]["name"] for v in rules.spec_volumes(vmi)
                    if v.get("dataVolume")]
        unusable = [n for n in dv_names
                    if ((dvs.get(n) or {}).get("status") or {}).get("phase") not in DV_READY_PHASES]
        if dv_names:
            status["conditions"] = self._dv_condition(status, dvs, dv_names, now)
        if missing or unusable:
            write_status(self.sim, VMI, vmi, status)
            return
        node = self._node_for(vmi)
        self._bind_wffc(namespace, self._claims(vmi), node)
        self._set_phase(vmi, VMIPhase.SCHEDULING, status)

    def _scheduling(self, vmi: dict[str, Any]) -> None:
        """The launcher pod waits for its claims to bind and its DataVolumes to finish."""
        namespace = vmi["metadata"]["namespace"]
        node = self._node_for(vmi)
        claims = self._claims(vmi)
        self._bind_wffc(namespace, claims, node)
        pvcs = by_name(self.sim, PVC, namespace)
        dvs = by_name(self.sim, DV, namespace)
        dv_names = [v["dataVolume"]["name"] for v in rules.spec_volumes(vmi)
                    if v.get("dataVolume")]
        status = copy.deepcopy(vmi.get("status") or {})
        if dv_names:
            status["conditions"] = self._dv_condition(status, dvs, dv_names, now_rfc3339())
        bound = all(((pvcs.get(c) or {}).get("status") or {}).get("phase") == "Bound"
                    for c in claims)
        populated = all(((dvs.get(n) or {}).get("status") or {}).get("phase") == "Succeeded"
                        for n in dv_names)
        if not (bound and populated):
            write_status(self.sim, VMI, vmi, status)
            return
        key = key_of(VMI, vmi)
        if self._wait(key, vmi["metadata"]["uid"], VMIPhase.SCHEDULING, self.tick):
            return
        pod = pods.active_pod(self.sim.store, vmi, node) or pods.create_launcher_pod(
            self.sim, vmi, node, rules.claims_by_volume(rules.spec_volumes(vmi)))
        status["nodeName"] = node
        status["activePods"] = {pod["metadata"]["uid"]: node}
        vmi = write_meta(self.sim, VMI, vmi, {"metadata": {"labels": {
            rules.NODE_NAME_LABEL: node}}})
        self._set_phase(vmi, VMIPhase.SCHEDULED, status)

    def _running_status(self, vmi: Mapping[str, Any], old: Mapping[str, Any]) -> dict[str, Any]:
        """Status of a running VMI: Ready, migratability, volumeStatus, VolumesChange."""
        namespace = vmi["metadata"]["namespace"]
        pvcs = by_name(self.sim, PVC, namespace)
        status = copy.deepcopy(dict(old))
        now = now_rfc3339()
        conds = rules.put_condition(status.get("conditions"), "Ready", "True", now=now)
        conds = rules.drop_condition(conds, "Synchronized")
        live = rules.live_migratable(vmi, pvcs)
        conds = rules.put_condition(conds, "LiveMigratable", live[0], reason=live[1],
                                    message=live[2], now=now)
        storage = rules.storage_live_migratable(vmi)
        conds = rules.put_condition(conds, "StorageLiveMigratable", storage[0],
                                    reason=storage[1], message=storage[2], now=now)
        status["conditions"] = self._volumes_change(conds, status, pvcs, now)
        status["volumeStatus"] = self._volume_status(vmi, pvcs)
        return status

    @staticmethod
    def _volumes_change(conds: list[dict[str, Any]], status: Mapping[str, Any],
                        pvcs: Mapping[str, Any], now: str) -> list[dict[str, Any]]:
        """requireVolumesUpdate / syncVolumesUpdate: VolumesChange=True "migrate volumes"
        once volumes migrate and the VMI has no VolumesChange condition at all (a condition
        left by a cancellation stays, and blocks a new migration, until the VM controller
        removes it: v1.6+)."""
        if not status.get("migratedVolumes"):
            return conds
        if rules.find_condition({"status": {"conditions": conds}}, "VolumesChange"):
            return conds
        return rules.put_condition(conds, "VolumesChange", "True",
                                   message=rules.MSG_MIGRATE_VOLUMES, now=now)

    @staticmethod
    def _volume_status(vmi: Mapping[str, Any], pvcs: Mapping[str, Any]) -> list[dict[str, Any]]:
        """updateVolumeStatus: one entry per volume (sorted by name), with the claim's info."""
        targets = _disk_targets(vmi.get("spec") or {})
        entries = []
        for volume in rules.spec_volumes(vmi):
            entry: dict[str, Any] = {"name": volume["name"],
                                     "target": targets.get(volume["name"], "")}
            pvc = pvcs.get(rules.claim_of(volume))
            if pvc is not None:
                entry["persistentVolumeClaimInfo"] = rules.pvc_claim_info(pvc)
            entries.append(entry)
        return sorted(entries, key=lambda e: str(e["name"]))

    def _shut_down(self, vmi: dict[str, Any]) -> None:
        """Graceful shutdown of a deleted VMI, then release virt-handler's finalizer."""
        uid = vmi["metadata"]["uid"]
        if not rules.is_final_vmi(vmi):
            if self._wait(key_of(VMI, vmi), uid, "Stopping", self.tick):
                return
            status = copy.deepcopy(vmi.get("status") or {})
            status["conditions"] = rules.put_condition(
                status.get("conditions"), "Ready", "False", reason="PodTerminating",
                message="virt-launcher pod is terminating", now=now_rfc3339())
            self._set_phase(vmi, VMIPhase.SUCCEEDED, status)
            pods.finish_pods(self.sim, vmi)
            self.sim.client.event(vmi, "Normal", "Stopped",
                                  "The VirtualMachineInstance was shut down.")
            return
        finalizers = vmi["metadata"].get("finalizers") or []
        if rules.VMI_FOREGROUND_FINALIZER in finalizers:
            kept = [f for f in finalizers if f != rules.VMI_FOREGROUND_FINALIZER]
            write_meta(self.sim, VMI, vmi, {"metadata": {"finalizers": kept}})
        self._dwell.forget(uid)
        self._nodes.pop(uid, None)

    # -- helpers

    def _set_phase(self, vmi: dict[str, Any], phase: VMIPhase,
                   status: Mapping[str, Any]) -> dict[str, Any]:
        now = now_rfc3339()
        new = {**status, "phase": phase.value,
               "phaseTransitionTimestamps": phase_history(status, phase.value, now)}
        if phase is VMIPhase.PENDING:
            finalizers = vmi["metadata"].get("finalizers") or []
            if rules.VMI_FOREGROUND_FINALIZER not in finalizers:
                vmi = write_meta(self.sim, VMI, vmi, {"metadata": {
                    "finalizers": [*finalizers, rules.VMI_FOREGROUND_FINALIZER]}})
        return write_status(self.sim, VMI, vmi, new)

    def _not_ready(self, status: Mapping[str, Any]) -> dict[str, Any]:
        new = dict(status)
        new["conditions"] = rules.put_condition(
            status.get("conditions"), "Ready", "False", reason="GuestNotRunning",
            message="Guest VM is not reported as running", now=now_rfc3339())
        return new

    @staticmethod
    def _dv_condition(status: Mapping[str, Any], dvs: Mapping[str, Any], names: list[str],
                      now: str) -> list[dict[str, Any]]:
        done = all(((dvs.get(n) or {}).get("status") or {}).get("phase") in DV_READY_PHASES
                   for n in names)
        if done:
            return rules.put_condition(status.get("conditions"), "DataVolumesReady", "True",
                                       reason="AllDVsReady",
                                       message="All of the VMI's DVs are bound and not running",
                                       now=now)
        return rules.put_condition(status.get("conditions"), "DataVolumesReady", "False",
                                   reason="NotAllDVsReady",
                                   message="Not all of the VMI's DVs are ready", now=now)

    @staticmethod
    def _claims(vmi: Mapping[str, Any]) -> list[str]:
        return [c for c in (rules.claim_of(v) for v in rules.spec_volumes(vmi)) if c]

    def _node_for(self, vmi: Mapping[str, Any]) -> str:
        """The node this VMI is scheduled to (round-robin over SimConfig.nodes)."""
        uid = vmi["metadata"]["uid"]
        node = (vmi.get("status") or {}).get("nodeName") or self._nodes.get(uid)
        if not node:
            nodes = self.sim.config.nodes
            node = nodes[next(self._round_robin) % len(nodes)]
        self._nodes[uid] = node
        return str(node)

    def _bind_wffc(self, namespace: str, claims: Iterable[str], node: str) -> None:
        """The scheduler's part of WaitForFirstConsumer: pick the node for pending claims."""
        select_node(self.sim, namespace, claims, node)

    def _wait(self, key: Key, uid: str, phase: str, seconds: float) -> bool:
        """True (and a wake-up scheduled) while the object must stay in `phase`."""
        left = self._dwell.remaining(uid, phase, seconds)
        if left > 0:
            self.sim.enqueue(self, key, left)
            return True
        return False


def select_node(sim: Simulator, namespace: str, claims: Iterable[str], node: str) -> None:
    """Annotate unbound WaitForFirstConsumer claims with the chosen node, so that the
    storage simulator provisions and binds them there."""
    for claim in claims:
        pvc = sim.store.get(PVC, namespace, claim)
        if pvc is None or (pvc.get("status") or {}).get("phase") == "Bound":
            continue
        if rules.SELECTED_NODE_ANNOTATION in annotations_of(pvc):
            continue
        class_name = (pvc.get("spec") or {}).get("storageClassName")
        storage_class = sim.store.get(SC, "", class_name) if class_name else None
        if storage_class is None or storage_class.get("volumeBindingMode") != \
                "WaitForFirstConsumer":
            continue
        sim.client.merge_patch(PVC, namespace, claim, {"metadata": {"annotations": {
            rules.SELECTED_NODE_ANNOTATION: node}}})


def _disk_targets(spec: Mapping[str, Any]) -> dict[str, str]:
    """Device names as libvirt assigns them: vda, vdb... for virtio, sda... otherwise."""
    counters = {"vd": 0, "sd": 0}
    targets = {}
    for disk in ((spec.get("domain") or {}).get("devices") or {}).get("disks") or []:
        bus = next((disk[kind].get("bus") for kind in ("disk", "lun", "cdrom")
                    if isinstance(disk.get(kind), Mapping)), None)
        prefix = "vd" if bus in (None, "virtio") and "cdrom" not in disk else "sd"
        targets[disk["name"]] = prefix + chr(ord("a") + counters[prefix])
        counters[prefix] += 1
    return targets


CONTROLLERS: list[type[Controller]] = [
    KubeVirtStatusController,
    VirtualMachineController,
    VirtualMachineInstanceController,
]
"""The VM and VMI controllers, picked up by `testenv.simulator.all_controllers()` (the
workload updater and the migration controller are in `kubevirt_migration`)."""
