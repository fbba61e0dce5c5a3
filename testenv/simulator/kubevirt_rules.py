"""Pure KubeVirt rules used by the simulated virt-controller / virt-handler (`kubevirt.py`).

Everything here takes plain API objects (dicts) and returns plain data; nothing does I/O.
The rules follow kubevirt/kubevirt (vm.go, volume-migration.go, workload-updater.go,
migration.go, virt-handler vm.go) and keep the upstream messages verbatim, because the
reconciler under test matches on them.

Version-dependent behaviour (`KubeVirtConfig`):

- `updateVolumesStrategy` / volume migration need the feature gates `VolumesUpdateStrategy`
  and `VolumeMigration` below v1.5 (GA from v1.5);
- `vmRolloutStrategy: LiveUpdate` is needed for any live volume update; the default is
  `Stage` below v1.6 and `LiveUpdate` from v1.6; below v1.5 `LiveUpdate` also needs the
  `VMLiveUpdateFeatures` gate;
- the workload updater creates the migration only when `LiveMigrate` is one of
  `workloadUpdateStrategy.workloadUpdateMethods`;
- VM `status.volumeUpdateState` (and so ManualRecoveryRequired) exists from v1.4;
- hotplugged volumes cannot be migrated below v1.5; from v1.5 a destination DataVolume that
  is not Succeeded must be populated by a volume populator (PVC `spec.dataSourceRef`).
"""

from __future__ import annotations

import copy
import enum
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from testenv.node.runtime import GI
from testenv.quantity import to_bytes

# -- names used on objects -------------------------------------------------------------------

VERSION_ANNOTATION = "sim.vmstorage.dev/version"
"""On the KubeVirt CR: the KubeVirt version to simulate (overrides SimConfig.kubevirt_version)."""
BACKOFF_ANNOTATION = "sim.vmstorage.dev/migration-backoff-seconds"
"""On the KubeVirt CR: base of the migration retry back-off (upstream: 20 s, doubling)."""
NOT_LIVE_MIGRATABLE_ANNOTATION = "sim.vmstorage.dev/not-live-migratable"
"""On a VM template (copied to the VMI): "<Reason>[: <message>]" makes it not migratable."""

WORKLOAD_UPDATE_ANNOTATION = "kubevirt.io/workloadUpdateMigration"
VOLUME_UPDATE_MIGRATION_LABEL = "kubevirt.io/volume-update-migration"
VMI_NAME_LABEL = "kubevirt.io/vmi-name"
NODE_NAME_LABEL = "kubevirt.io/nodeName"
CREATED_BY_LABEL = "kubevirt.io/created-by"
VM_GENERATION_ANNOTATION = "kubevirt.io/vm-generation"
ALLOW_CLAIM_ADOPTION_ANNOTATION = "cdi.kubevirt.io/allowClaimAdoption"
SELECTED_NODE_ANNOTATION = "volume.kubernetes.io/selected-node"

VM_CONTROLLER_FINALIZER = "kubevirt.io/virtualMachineControllerFinalize"
VMI_FOREGROUND_FINALIZER = "foregroundDeleteVirtualMachine"
MIGRATION_FINALIZER = "kubevirt.io/migrationJobFinalize"

# -- upstream messages and reasons ----------------------------------------------------------

MSG_MIGRATE_VOLUMES = "migrate volumes"
MSG_DESTINATION_MISSING = "One of the destination volumes doesn't exist"
"""Prefix; upstream appends ": the datavolume X doesn't exist" (or "the pvc X ...")."""
MSG_REVERT_ONLY = "The volume can only be reverted to the previous version during the update"
MSG_REPLACEMENT_RESTART = "the volumes replacement is effective only after restart"
MSG_NON_LIVE_UPDATABLE = "a non-live-updatable field was changed in the template spec"
MSG_MANUAL_RECOVERY = "VMI was removed or was final during the volume migration"
MSG_SMALLER_DESTINATION = (
    "Volume migration cannot be performed because the destination volume is smaller "
    "than the source volume"
)
MSG_ABORTED = "Live migration has been aborted"
REASON_CANCELLATION = "VolumesChangeCancellation"
REASON_VOLUMES_UPDATE_ERROR = "VolumesUpdateError"
REASON_FAILED_CREATE = "FailedCreate"
REASON_ADMISSION = "SimulatedAdmissionRejected"
REASON_DISKS_NOT_MIGRATABLE = "DisksNotLiveMigratable"
REASON_PR_NOT_MIGRATABLE = "PersistentReservationNotLiveMigratable"
REASON_NOT_MIGRATABLE = "NotMigratable"
REASON_PVC_NOT_FOUND = "FailedPvcNotFound"

VM_WEBHOOK = 'admission webhook "virtualmachine-validator.kubevirt.io" denied the request'

GATE_LIVE_UPDATE = "VMLiveUpdateFeatures"
GATE_VOLUMES_UPDATE_STRATEGY = "VolumesUpdateStrategy"
GATE_VOLUME_MIGRATION = "VolumeMigration"

READ_WRITE_MANY = "ReadWriteMany"
READ_ONLY_MANY = "ReadOnlyMany"


class VMIPhase(enum.StrEnum):
    """VirtualMachineInstance `status.phase` values the simulator uses."""

    PENDING = "Pending"
    SCHEDULING = "Scheduling"
    SCHEDULED = "Scheduled"
    RUNNING = "Running"
    SUCCEEDED = "Succeeded"
    FAILED = "Failed"


class MigrationPhase(enum.StrEnum):
    """VirtualMachineInstanceMigration `status.phase` values, in the order they happen."""

    PENDING = "Pending"
    SCHEDULING = "Scheduling"
    SCHEDULED = "Scheduled"
    PREPARING_TARGET = "PreparingTarget"
    TARGET_READY = "TargetReady"
    RUNNING = "Running"
    SUCCEEDED = "Succeeded"
    FAILED = "Failed"


FINAL_VMI_PHASES = frozenset({VMIPhase.SUCCEEDED, VMIPhase.FAILED})
FINAL_MIGRATION_PHASES = frozenset({MigrationPhase.SUCCEEDED, MigrationPhase.FAILED})


class RunStrategy(enum.StrEnum):
    """VirtualMachine `spec.runStrategy` values."""

    ALWAYS = "Always"
    HALTED = "Halted"
    MANUAL = "Manual"
    RERUN_ON_FAILURE = "RerunOnFailure"
    ONCE = "Once"
    WAIT_AS_RECEIVER = "WaitAsReceiver"


class RunStrategyError(ValueError):
    """The VM's run state cannot be decided (upstream: a sync error, no action)."""


# -- KubeVirt configuration -----------------------------------------------------------------


def parse_version(text: str) -> tuple[int, int]:
    """(major, minor) of "v1.4.2", "1.5", "v1.10.0-rc.1"; ValueError for anything else."""
    match = re.match(r"^v?(\d+)\.(\d+)", text.strip())
    if match is None:
        raise ValueError(f"not a KubeVirt version: {text!r}")
    return int(match.group(1)), int(match.group(2))


@dataclass(frozen=True)
class KubeVirtConfig:
    """The cluster configuration the controllers act on, read from the KubeVirt CR."""

    version: str
    rollout_strategy: str | None = None  # as written in the CR (None = version default)
    feature_gates: frozenset[str] = frozenset()
    workload_update_methods: tuple[str, ...] = ()
    deployed: bool = False  # a KubeVirt CR exists (the workload updater needs one)
    backoff_seconds: float | None = None  # from the CR annotation, None = default
    parallel_migrations_per_cluster: int = 5  # spec.configuration.migrations.*
    parallel_outbound_migrations_per_node: int = 2
    progress_timeout: float = 150.0  # seconds without copy progress before an abort

    @property
    def minor(self) -> tuple[int, int]:
        """(major, minor) of `version`."""
        return parse_version(self.version)

    @property
    def effective_rollout_strategy(self) -> str:
        """`Stage` by default below v1.6, `LiveUpdate` from v1.6."""
        if self.rollout_strategy:
            return self.rollout_strategy
        return "LiveUpdate" if self.minor >= (1, 6) else "Stage"

    @property
    def live_update(self) -> bool:
        """IsVMRolloutStrategyLiveUpdate: LiveUpdate, plus the VMLiveUpdateFeatures gate < 1.5."""
        if self.effective_rollout_strategy != "LiveUpdate":
            return False
        return self.minor >= (1, 5) or GATE_LIVE_UPDATE in self.feature_gates

    @property
    def live_migrate(self) -> bool:
        """The workload updater may create migrations (LiveMigrate is an update method)."""
        return "LiveMigrate" in self.workload_update_methods

    @property
    def evict(self) -> bool:
        """The workload updater may evict outdated VMIs it cannot migrate (Evict method)."""
        return "Evict" in self.workload_update_methods

    @property
    def has_volume_update_state(self) -> bool:
        """VM status.volumeUpdateState (and ManualRecoveryRequired) exist from v1.4."""
        return self.minor >= (1, 4)

    @property
    def rejects_hotplugged_volumes(self) -> bool:
        """Hotplugged volumes could not be migrated before v1.5."""
        return self.minor < (1, 5)

    @property
    def checks_populators(self) -> bool:
        """From v1.5 a destination DV must exist, and when not Succeeded its PVC must exist
        and be populated by a volume populator (dataSourceRef)."""
        return self.minor >= (1, 5)

    @property
    def checks_destination_pvcs(self) -> bool:
        """From v1.9 ValidateVolumes also requires a plain PVC destination to exist."""
        return self.minor >= (1, 9)

    @property
    def reports_missing_destination(self) -> bool:
        """From v1.6 a missing destination is VolumesChange=False "One of the destination
        volumes doesn't exist: ..." (handleValidationErrors); v1.5 sets RestartRequired."""
        return self.minor >= (1, 6)

    @property
    def unsets_volumes_change(self) -> bool:
        """From v1.6 a valid new update first removes the VMI's old VolumesChange condition
        (UnsetVolumeChangeCondition), so an update after a cancellation migrates again."""
        return self.minor >= (1, 6)

    @property
    def recomputes_restart_required(self) -> bool:
        """From v1.8 syncRestartRequired removes RestartRequired once no restart is needed;
        before (addRestartRequiredIfNeeded) it stays until the VM restarts."""
        return self.minor >= (1, 8)

    def admission_errors(self, vm_spec: Mapping[str, Any]) -> list[str]:
        """What the VM validating webhook would refuse about `updateVolumesStrategy`."""
        strategy = vm_spec.get("updateVolumesStrategy")
        if strategy is None or self.minor >= (1, 5):
            return []
        errors = []
        if GATE_VOLUMES_UPDATE_STRATEGY not in self.feature_gates:
            errors.append(f"{GATE_VOLUMES_UPDATE_STRATEGY} feature gate is not enabled in "
                          "kubevirt-config")
        if strategy == "Migration" and GATE_VOLUME_MIGRATION not in self.feature_gates:
            errors.append(f"{GATE_VOLUME_MIGRATION} feature gate is not enabled in "
                          "kubevirt-config")
        return errors


def kubevirt_config(cr: Mapping[str, Any] | None, default_version: str) -> KubeVirtConfig:
    """Read the KubeVirt CR (None = no KubeVirt CR: defaults, nothing deployed)."""
    if cr is None:
        return KubeVirtConfig(version=default_version)
    annotations = cr.get("metadata", {}).get("annotations") or {}
    spec = cr.get("spec") or {}
    configuration = spec.get("configuration") or {}
    developer = configuration.get("developerConfiguration") or {}
    methods = (spec.get("workloadUpdateStrategy") or {}).get("workloadUpdateMethods") or []
    backoff = annotations.get(BACKOFF_ANNOTATION)
    migrations = configuration.get("migrations") or {}
    return KubeVirtConfig(
        version=annotations.get(VERSION_ANNOTATION) or default_version,
        rollout_strategy=configuration.get("vmRolloutStrategy"),
        feature_gates=frozenset(developer.get("featureGates") or []),
        workload_update_methods=tuple(methods),
        deployed=True,
        backoff_seconds=float(backoff) if backoff else None,
        parallel_migrations_per_cluster=int(migrations.get("parallelMigrationsPerCluster", 5)),
        parallel_outbound_migrations_per_node=int(
            migrations.get("parallelOutboundMigrationsPerNode", 2)),
        progress_timeout=float(migrations.get("progressTimeout", 150)),
    )


# -- run strategy ---------------------------------------------------------------------------


def run_strategy(vm_spec: Mapping[str, Any]) -> RunStrategy:
    """VirtualMachine.RunStrategy(): `runStrategy`, else deprecated `running`, else Halted.

    Raises RunStrategyError when both are set (the webhook would have refused it)."""
    running = vm_spec.get("running")
    strategy = vm_spec.get("runStrategy")
    if running is not None and strategy is not None:
        raise RunStrategyError("running and runstrategy are mutually exclusive")
    if strategy is not None:
        try:
            return RunStrategy(strategy)
        except ValueError:
            raise RunStrategyError(f"unknown runstrategy: {strategy}") from None
    return RunStrategy.ALWAYS if running else RunStrategy.HALTED


def first_state_change(vm: Mapping[str, Any]) -> dict[str, Any] | None:
    """The first of `status.stateChangeRequests` (only it is acted upon), or None."""
    requests = (vm.get("status") or {}).get("stateChangeRequests") or []
    return dict(requests[0]) if requests else None


def has_start_request(vm: Mapping[str, Any]) -> bool:
    """The first state change request is Start."""
    change = first_state_change(vm)
    return change is not None and change.get("action") == "Start"


def has_stop_request_for(vm: Mapping[str, Any], vmi: Mapping[str, Any] | None) -> bool:
    """The first state change request is Stop for exactly this VMI (by uid)."""
    change = first_state_change(vm)
    if change is None or vmi is None or change.get("action") != "Stop":
        return False
    return bool(change.get("uid")) and change.get("uid") == vmi["metadata"].get("uid")


def is_set_to_start(vm: Mapping[str, Any], vmi: Mapping[str, Any] | None) -> bool:
    """isSetToStart: whether the VM is configured to be running now."""
    try:
        strategy = run_strategy(vm.get("spec") or {})
    except RunStrategyError:
        return False
    if strategy is RunStrategy.ALWAYS:
        return True
    if strategy is RunStrategy.MANUAL:
        return not has_stop_request_for(vm, vmi) if vmi is not None else has_start_request(vm)
    if strategy is RunStrategy.RERUN_ON_FAILURE:
        return vmi is None or vmi_phase(vmi) != VMIPhase.SUCCEEDED
    if strategy is RunStrategy.ONCE:
        return vmi is None
    return False


def trim_first_change_request(vm: Mapping[str, Any], vmi: Mapping[str, Any] | None) -> bool:
    """isTrimFirstChangeRequestNeeded: the first request has been carried out."""
    change = first_state_change(vm)
    if change is None:
        return False
    if change.get("action") == "Stop":
        return vmi is None or not change.get("uid") or change["uid"] != vmi["metadata"]["uid"]
    if change.get("action") == "Start":
        return vmi is not None and not is_deleting_obj(vmi) and not is_final_vmi(vmi)
    return False


# -- small object helpers -------------------------------------------------------------------


def is_deleting_obj(obj: Mapping[str, Any]) -> bool:
    """The object has a deletionTimestamp."""
    return bool(obj.get("metadata", {}).get("deletionTimestamp"))


def vmi_phase(vmi: Mapping[str, Any]) -> str:
    """The VMI's phase ("" before the controller saw it)."""
    return str((vmi.get("status") or {}).get("phase") or "")


def is_final_vmi(vmi: Mapping[str, Any]) -> bool:
    """The VMI is Succeeded or Failed."""
    return vmi_phase(vmi) in FINAL_VMI_PHASES


def migration_phase(vmim: Mapping[str, Any]) -> str:
    """The migration's phase ("" before the controller saw it)."""
    return str((vmim.get("status") or {}).get("phase") or "")


def is_final_migration(vmim: Mapping[str, Any]) -> bool:
    """The migration is Succeeded or Failed."""
    return migration_phase(vmim) in FINAL_MIGRATION_PHASES


def find_condition(obj: Mapping[str, Any], type_: str) -> dict[str, Any] | None:
    """The status condition of `type_`, or None."""
    for cond in (obj.get("status") or {}).get("conditions") or []:
        if cond.get("type") == type_:
            return dict(cond)
    return None


def condition_is(obj: Mapping[str, Any], type_: str, status: str) -> bool:
    """The object has condition `type_` with `status` ("True"/"False")."""
    cond = find_condition(obj, type_)
    return cond is not None and cond.get("status") == status


def put_condition(
    conditions: Sequence[Mapping[str, Any]] | None,
    type_: str,
    status: str,
    *,
    reason: str = "",
    message: str = "",
    now: str,
) -> list[dict[str, Any]]:
    """A copy of `conditions` with `type_` set, in KubeVirt's shape (type, status, reason,
    message, lastTransitionTime; empty strings omitted, as Go's omitempty).

    An unchanged condition is returned untouched, so writing the list causes no churn."""
    result = [dict(c) for c in conditions or []]
    wanted = {"type": type_, "status": status}
    if reason:
        wanted["reason"] = reason
    if message:
        wanted["message"] = message
    for index, cond in enumerate(result):
        if cond.get("type") != type_:
            continue
        if same_condition(cond, wanted):
            return result
        stamp = now if cond.get("status") != status else cond.get("lastTransitionTime") or now
        result[index] = {**wanted, "lastTransitionTime": stamp}
        return result
    result.append({**wanted, "lastTransitionTime": now})
    return result


def drop_condition(
    conditions: Sequence[Mapping[str, Any]] | None, type_: str
) -> list[dict[str, Any]]:
    """A copy of `conditions` without `type_`."""
    return [dict(c) for c in conditions or [] if c.get("type") != type_]


def same_condition(a: Mapping[str, Any], b: Mapping[str, Any]) -> bool:
    """Equal in type, status, reason and message (timestamps ignored)."""
    return all((a.get(k) or "") == (b.get(k) or "") for k in ("type", "status", "reason",
                                                                 "message"))


def same_conditions(
    a: Sequence[Mapping[str, Any]] | None, b: Sequence[Mapping[str, Any]] | None
) -> bool:
    """Both lists hold the same conditions (order and timestamps ignored)."""
    left = {c.get("type"): c for c in a or []}
    right = {c.get("type"): c for c in b or []}
    return left.keys() == right.keys() and all(same_condition(left[k], right[k]) for k in left)


# -- volumes and claims ---------------------------------------------------------------------


def claim_of(volume: Mapping[str, Any]) -> str:
    """PVCNameFromVirtVolume: the claim behind a PVC, DataVolume or memory-dump volume."""
    for source, field_name in (("persistentVolumeClaim", "claimName"), ("dataVolume", "name"),
                               ("memoryDump", "claimName")):
        if volume.get(source):
            return str(volume[source].get(field_name) or "")
    return ""


def is_hotpluggable(volume: Mapping[str, Any]) -> bool:
    """The volume is marked hotpluggable (PVC or DataVolume source)."""
    return any(bool((volume.get(source) or {}).get("hotpluggable"))
               for source in ("persistentVolumeClaim", "dataVolume"))


def claims_by_volume(volumes: Iterable[Mapping[str, Any]]) -> dict[str, str]:
    """Volume name -> claim, for volumes backed by a claim."""
    return {v["name"]: claim_of(v) for v in volumes if claim_of(v)}


def template_volumes(vm: Mapping[str, Any]) -> list[dict[str, Any]]:
    """`spec.template.spec.volumes` of a VM."""
    return list(((vm.get("spec") or {}).get("template") or {}).get("spec", {}).get("volumes")
                or [])


def spec_volumes(vmi: Mapping[str, Any]) -> list[dict[str, Any]]:
    """`spec.volumes` of a VMI."""
    return list((vmi.get("spec") or {}).get("volumes") or [])


def disks_by_name(spec: Mapping[str, Any]) -> dict[str, dict[str, Any]]:
    """`domain.devices.disks` of a VMI (or template) spec, by name."""
    disks = ((spec.get("domain") or {}).get("devices") or {}).get("disks") or []
    return {d["name"]: dict(d) for d in disks}


def filesystem_names(spec: Mapping[str, Any]) -> set[str]:
    """Names of `domain.devices.filesystems` (virtiofs) of a VMI spec."""
    filesystems = ((spec.get("domain") or {}).get("devices") or {}).get("filesystems") or []
    return {f["name"] for f in filesystems}


def updated_volumes(
    vmi_volumes: Iterable[Mapping[str, Any]], vm_volumes: Iterable[Mapping[str, Any]]
) -> dict[str, str]:
    """updatedVolumesMapping: volume name -> new claim, for volumes in both whose claim
    changed."""
    new = claims_by_volume(vm_volumes)
    old = claims_by_volume(vmi_volumes)
    return {name: new[name] for name, claim in old.items() if name in new and new[name] != claim}


def is_read_write_once(access_modes: Iterable[str] | None) -> bool:
    """IsReadWriteOnceAccessMode: neither ReadWriteMany nor ReadOnlyMany (empty counts)."""
    return not any(m in (READ_WRITE_MANY, READ_ONLY_MANY) for m in access_modes or [])


def pvc_size(pvc: Mapping[str, Any]) -> int:
    """Bytes of a PVC: status.capacity.storage, else spec.resources.requests.storage."""
    capacity = ((pvc.get("status") or {}).get("capacity") or {}).get("storage")
    request = (((pvc.get("spec") or {}).get("resources") or {}).get("requests") or {}).get(
        "storage")
    value = capacity or request
    return to_bytes(value) if value else 0


FILESYSTEM_OVERHEAD = 0.06
"""CDI's default global filesystem overhead: the share of a Filesystem PVC that the disk
image cannot use."""


def disk_image_size(pvc: Mapping[str, Any]) -> int:
    """Bytes the guest disk can have on this claim: all of a Block volume, a Filesystem
    volume minus the filesystem overhead (so an FS destination of the same nominal size as
    its source is too small, as kubevirt#13135 users found out)."""
    size = pvc_size(pvc)
    if ((pvc.get("spec") or {}).get("volumeMode") or "Filesystem") == "Block":
        return size
    return int(size * (1 - FILESYSTEM_OVERHEAD))


def pvc_claim_info(pvc: Mapping[str, Any]) -> dict[str, Any]:
    """The VMI volumeStatus persistentVolumeClaimInfo of a PVC."""
    spec = pvc.get("spec") or {}
    info: dict[str, Any] = {"claimName": pvc["metadata"]["name"]}
    if spec.get("accessModes"):
        info["accessModes"] = list(spec["accessModes"])
    if spec.get("volumeMode"):
        info["volumeMode"] = spec["volumeMode"]
    capacity = (pvc.get("status") or {}).get("capacity")
    if capacity:
        info["capacity"] = dict(capacity)
    requests = (spec.get("resources") or {}).get("requests")
    if requests:
        info["requests"] = dict(requests)
    return info


def _go_list(items: Sequence[str]) -> str:
    """Go's %v of a []string."""
    return "[" + " ".join(items) + "]"


# -- volume migration validation ------------------------------------------------------------


@dataclass(frozen=True)
class VolumeError:
    """What ValidateVolumes refused: the upstream message, and whether a destination is
    missing (v1.6+ reports that as VolumesChange=False instead of RestartRequired)."""

    message: str
    missing: bool = False


def validate_volumes(
    vmi: Mapping[str, Any],
    vm: Mapping[str, Any],
    *,
    dvs: Mapping[str, Mapping[str, Any]],
    pvcs: Mapping[str, Mapping[str, Any]],
    config: KubeVirtConfig,
) -> VolumeError | None:
    """ValidateVolumes (volume-migration.go), version by version: the kinds KubeVirt will
    not migrate are collected; a missing destination stops the check at once (its DataVolume
    from v1.5, the DataVolume's claim from v1.5, a plain PVC destination from v1.9).

    `dvs` and `pvcs` map names to objects of the VM's namespace."""
    updated = updated_volumes(spec_volumes(vmi), template_volumes(vm))
    vmi_spec = vmi.get("spec") or {}
    disks = disks_by_name(vmi_spec)
    filesystems = filesystem_names(vmi_spec)
    old_volumes = {v["name"]: v for v in spec_volumes(vmi)}
    invalid: dict[str, list[str]] = {"hotplugged": [], "filesystems": [], "shareable": [],
                                     "luns": [], "populators": []}
    for volume in template_volumes(vm):
        name = volume["name"]
        if name not in updated:
            continue
        if name in filesystems:
            invalid["filesystems"].append(name)
            continue
        if config.rejects_hotplugged_volumes and (
            is_hotpluggable(volume) or is_hotpluggable(old_volumes.get(name, {}))
        ):
            invalid["hotplugged"].append(name)
            continue
        disk = disks.get(name)
        if disk is None:
            continue
        if disk.get("shareable"):
            invalid["shareable"].append(name)
            continue
        if disk.get("lun") is not None:
            invalid["luns"].append(name)
            continue
        claim = (volume.get("persistentVolumeClaim") or {}).get("claimName")
        if claim and config.checks_destination_pvcs and claim not in pvcs:
            return VolumeError(f"the pvc {claim} doesn't exist", missing=True)
        if config.checks_populators and volume.get("dataVolume"):
            dv_name = volume["dataVolume"]["name"]
            dv = dvs.get(dv_name)
            if dv is None:
                return VolumeError(f"the datavolume {dv_name} doesn't exist", missing=True)
            if ((dv.get("status") or {}).get("phase")) == "Succeeded":
                continue
            pvc = pvcs.get(dv_name)
            if pvc is None:
                return VolumeError(f"the pvc {dv_name} doesn't exist", missing=True)
            if not (pvc.get("spec") or {}).get("dataSourceRef"):
                invalid["populators"].append(name)
    if not any(invalid.values()):
        return None
    labels = {"hotplugged": "hotplugged", "filesystems": "filesystems",
              "shareable": "shareable", "luns": "luns",
              "populators": "DV storage class isn't a CSI or not using volume populators"}
    text = "invalid volumes to update with migration:"
    for key, names in invalid.items():
        if names:
            text += f" {labels[key]}: {_go_list(names)}"
    return VolumeError(text)


def invalid_volumes_error(
    vmi: Mapping[str, Any],
    vm: Mapping[str, Any],
    *,
    dvs: Mapping[str, Mapping[str, Any]],
    pvcs: Mapping[str, Mapping[str, Any]],
    config: KubeVirtConfig,
) -> str | None:
    """The message of `validate_volumes` (None when the volumes can be migrated)."""
    error = validate_volumes(vmi, vm, dvs=dvs, pvcs=pvcs, config=config)
    return error.message if error is not None else None


def migrated_volumes(
    vmi: Mapping[str, Any], vm: Mapping[str, Any], pvcs: Mapping[str, Mapping[str, Any]]
) -> list[dict[str, Any]]:
    """GenerateMigratedVolumes: one entry per volume whose claim changes (claim name and
    volume mode of source and destination, nothing else, as upstream)."""
    old = claims_by_volume(spec_volumes(vmi))
    result = []
    for volume in template_volumes(vm):
        claim = claim_of(volume)
        name = volume["name"]
        if not claim or name not in old or old[name] == claim:
            continue
        result.append({
            "volumeName": name,
            "sourcePVCInfo": _claim_ref(old[name], pvcs.get(old[name])),
            "destinationPVCInfo": _claim_ref(claim, pvcs.get(claim)),
        })
    return result


def _claim_ref(claim: str, pvc: Mapping[str, Any] | None) -> dict[str, Any]:
    info: dict[str, Any] = {"claimName": claim}
    mode = ((pvc or {}).get("spec") or {}).get("volumeMode")
    if mode:
        info["volumeMode"] = mode
    return info


def update_migration_error(vmi: Mapping[str, Any], migrated: Sequence[Mapping[str, Any]]
                           ) -> str | None:
    """ValidateVolumesUpdateMigration: StorageLiveMigratable must not be False, and every
    RWO PVC of the VMI (per volumeStatus) must be part of the migration."""
    if not migrated:
        return None
    storage = find_condition(vmi, "StorageLiveMigratable")
    if storage is not None and storage.get("status") == "False":
        return ("cannot migrate the volumes as the VMI isn't migratable: "
                f"{storage.get('message', '')}")
    names = {m["volumeName"] for m in migrated}
    for status in (vmi.get("status") or {}).get("volumeStatus") or []:
        info = status.get("persistentVolumeClaimInfo")
        if info is None:
            continue
        if is_read_write_once(info.get("accessModes")) and status["name"] not in names:
            return (f"cannot migrate the VM. The volume {status['name']} is RWO and not "
                    "included in the migration volumes")
    return None


def changes_migrated_volumes(vmi: Mapping[str, Any], vm: Mapping[str, Any]) -> bool:
    """changeMigratedVolumes: the VM changed a volume that is being migrated."""
    updated = updated_volumes(spec_volumes(vmi), template_volumes(vm))
    return any(m["volumeName"] in updated
               for m in (vmi.get("status") or {}).get("migratedVolumes") or [])


def reverted_to_sources(vmi: Mapping[str, Any], vm: Mapping[str, Any]) -> bool:
    """revertedToOldVolumes: every migrated volume points at its source again and nothing
    else changed."""
    updated = updated_volumes(spec_volumes(vmi), template_volumes(vm))
    for migrated in (vmi.get("status") or {}).get("migratedVolumes") or []:
        source = (migrated.get("sourcePVCInfo") or {}).get("claimName")
        if not source or updated.pop(migrated["volumeName"], None) != source:
            return False
    return not updated


def patched_vmi_volumes(vmi: Mapping[str, Any], vm: Mapping[str, Any]) -> list[dict[str, Any]]:
    """PatchVMIVolumes: the VMI volumes with every migrated volume replaced by the VM's."""
    migrating = {m["volumeName"] for m in (vmi.get("status") or {}).get("migratedVolumes")
                 or []}
    wanted = {v["name"]: v for v in template_volumes(vm)}
    return [dict(wanted[v["name"]]) if v["name"] in migrating and v["name"] in wanted
            else dict(v) for v in spec_volumes(vmi)]


def recovered_source_volumes(vm: Mapping[str, Any]) -> bool:
    """syncVolumeMigration: every volume of the VM's volumeMigrationState points at its
    source claim again."""
    state = (((vm.get("status") or {}).get("volumeUpdateState") or {})
             .get("volumeMigrationState") or {})
    sources = {m["volumeName"]: (m.get("sourcePVCInfo") or {}).get("claimName")
               for m in state.get("migratedVolumes") or []}
    return all(claim_of(v) == sources[v["name"]]
               for v in template_volumes(vm) if v["name"] in sources)


# -- restart required -----------------------------------------------------------------------


def needs_restart(vm: Mapping[str, Any], last_seen: Mapping[str, Any], *,
                  live_update: bool) -> bool:
    """syncRestartRequired / addRestartRequiredIfNeeded: whether the VM's template spec
    differs from `last_seen`, the template spec the VMI was started with (the VM's start
    ControllerRevision, `getLastVMRevisionSpec`), in a field that cannot be live-updated.

    With LiveUpdate the live-updatable fields are ignored: CPU sockets, guest memory, node
    selector, affinity, tolerations, and the volumes/disks when only claims change under
    the Migration strategy (or only hotplugged ones change)."""
    current = _plain(((vm.get("spec") or {}).get("template") or {}).get("spec") or {})
    running = _plain(last_seen)
    if live_update:
        migration = (vm.get("spec") or {}).get("updateVolumesStrategy") == "Migration"
        if _valid_live_update_volumes(running.get("volumes") or [],
                                      current.get("volumes") or [], migration):
            running["volumes"] = current.get("volumes")
        if _valid_live_update_disks(running, current):
            _devices(running)["disks"] = _devices(current).get("disks")
        for path in (("domain", "cpu", "sockets"), ("domain", "memory", "guest"),
                     ("nodeSelector",), ("affinity",), ("tolerations",)):
            _copy_path(current, running, path)
    return bool(_prune(current) != _prune(running))


def _plain(obj: Mapping[str, Any]) -> dict[str, Any]:
    return copy.deepcopy(dict(obj))


def _devices(spec: dict[str, Any]) -> dict[str, Any]:
    domain: dict[str, Any] = spec.setdefault("domain", {})
    devices: dict[str, Any] = domain.setdefault("devices", {})
    return devices


def _copy_path(src: Mapping[str, Any], dst: dict[str, Any], path: tuple[str, ...]) -> None:
    value: Any = src
    for part in path:
        if not isinstance(value, Mapping) or part not in value:
            value = None
            break
        value = value[part]
    target = dst
    for part in path[:-1]:
        target = target.setdefault(part, {})
    if value is None:
        target.pop(path[-1], None)
    else:
        target[path[-1]] = value


def _prune(value: Any) -> Any:
    """Drop empty dicts/lists/None so that `{}` and a missing field compare equal."""
    if isinstance(value, Mapping):
        pruned = {k: _prune(v) for k, v in value.items()}
        return {k: v for k, v in pruned.items() if v not in (None, {}, [])}
    if isinstance(value, list):
        return [_prune(v) for v in value]
    return value


def _valid_live_update_volumes(old: Sequence[Mapping[str, Any]],
                               new: Sequence[Mapping[str, Any]], migration: bool) -> bool:
    old_by_name = {v["name"]: v for v in old}
    for volume in new:
        previous = old_by_name.pop(volume["name"], None)
        if is_hotpluggable(volume):
            continue
        if previous is None:
            return False
        claim_backed = bool(volume.get("persistentVolumeClaim") or volume.get("dataVolume"))
        if claim_backed and migration:
            continue
        if _prune(previous) != _prune(volume):
            return False
    return all(is_hotpluggable(v) for v in old_by_name.values())


def _valid_live_update_disks(old_spec: Mapping[str, Any], new_spec: Mapping[str, Any]) -> bool:
    old = disks_by_name(old_spec)
    new = disks_by_name(new_spec)
    new_volumes = {v["name"]: v for v in new_spec.get("volumes") or []}
    old_volumes = {v["name"]: v for v in old_spec.get("volumes") or []}
    for name, disk in new.items():
        previous = old.pop(name, None)
        if is_hotpluggable(new_volumes.get(name, {})):
            continue
        if previous is None or _prune(previous) != _prune(disk):
            return False
    return all(is_hotpluggable(old_volumes.get(name, {})) for name in old)


# -- migratability --------------------------------------------------------------------------


def non_migratable_reasons(vmi: Mapping[str, Any]) -> list[tuple[str, str]]:
    """evaluateCommonMigrationConstraints, as far as the simulator models them:
    SCSI persistent reservation (a LUN disk with `reservation: true`) and the simulator
    annotation `sim.vmstorage.dev/not-live-migratable: "<Reason>[: <message>]"`."""
    reasons = []
    disks = disks_by_name(vmi.get("spec") or {}).values()
    if any((d.get("lun") or {}).get("reservation") for d in disks):
        reasons.append((REASON_PR_NOT_MIGRATABLE, "VMI uses SCSI persistent reservation"))
    value = (vmi.get("metadata", {}).get("annotations") or {}).get(
        NOT_LIVE_MIGRATABLE_ANNOTATION)
    if value:
        reason, _, message = value.partition(":")
        reasons.append((reason.strip() or "NotLiveMigratable",
                        message.strip() or "VMI is not live migratable (simulated)"))
    return reasons


def storage_live_migratable(vmi: Mapping[str, Any]) -> tuple[str, str, str]:
    """(status, reason, message) of StorageLiveMigratable."""
    reasons = non_migratable_reasons(vmi)
    if not reasons:
        return "True", "", ""
    return "False", REASON_NOT_MIGRATABLE, ", ".join(f"{r}: {m}" for r, m in reasons)


def live_migratable(vmi: Mapping[str, Any], pvcs: Mapping[str, Mapping[str, Any]]
                    ) -> tuple[str, str, str]:
    """(status, reason, message) of LiveMigratable: the first common reason wins, then
    every claim must be shared (ReadWriteMany)."""
    reasons = non_migratable_reasons(vmi)
    if reasons:
        return "False", reasons[0][0], reasons[0][1]
    for volume in spec_volumes(vmi):
        claim = claim_of(volume)
        if not claim:
            continue
        modes = ((pvcs.get(claim) or {}).get("spec") or {}).get("accessModes") or []
        if READ_WRITE_MANY not in modes:
            return ("False", REASON_DISKS_NOT_MIGRATABLE,
                    f"cannot migrate VMI: PVC {claim} is not shared, live migration requires "
                    "that all PVCs must be shared (using ReadWriteMany access mode)")
    return "True", "", ""


def is_migrating(vmi: Mapping[str, Any]) -> bool:
    """migrations.IsMigrating: migrationState has a start and no end timestamp."""
    state = (vmi.get("status") or {}).get("migrationState") or {}
    return bool(state.get("startTimestamp")) and not state.get("endTimestamp")


# -- printable status -----------------------------------------------------------------------


def data_volume_error(volumes: Iterable[Mapping[str, Any]],
                      dvs: Mapping[str, Mapping[str, Any]]) -> bool:
    """HasDataVolumeErrors: a DV is Failed, or its Running condition is False because of an
    error or an image pull failure."""
    for volume in volumes:
        dv = dvs.get((volume.get("dataVolume") or {}).get("name", ""))
        if dv is None:
            continue
        if (dv.get("status") or {}).get("phase") == "Failed":
            return True
        running = find_condition(dv, "Running")
        if running and running.get("status") == "False" and running.get("reason") in (
                "Error", "ImagePullFailed"):
            return True
    return False


def data_volume_provisioning(volumes: Iterable[Mapping[str, Any]],
                             dvs: Mapping[str, Mapping[str, Any]]) -> bool:
    """HasDataVolumeProvisioning: a DV is neither done, failed nor waiting for a consumer."""
    done = {"Succeeded", "Failed", "WaitForFirstConsumer", "PendingPopulation"}
    for volume in volumes:
        dv = dvs.get((volume.get("dataVolume") or {}).get("name", ""))
        if dv is not None and (dv.get("status") or {}).get("phase") not in done:
            return True
    return False


def unbound_pvc(volumes: Iterable[Mapping[str, Any]],
                pvcs: Mapping[str, Mapping[str, Any]]) -> bool:
    """HasUnboundPVC: an existing claim of the volumes is still Pending."""
    for volume in volumes:
        pvc = pvcs.get(claim_of(volume))
        if pvc is not None and (pvc.get("status") or {}).get("phase") == "Pending":
            return True
    return False


def printable_status(
    vm: Mapping[str, Any],
    vmi: Mapping[str, Any] | None,
    *,
    dvs: Mapping[str, Mapping[str, Any]],
    pvcs: Mapping[str, Mapping[str, Any]],
    stop_expected: bool,
) -> str:
    """setPrintableStatus: the first matching status in upstream precedence order."""
    volumes = template_volumes(vm)
    final = vmi is not None and is_final_vmi(vmi)
    phase = vmi_phase(vmi) if vmi is not None else ""
    paused = vmi is not None and condition_is(vmi, "Paused", "True")
    sync = find_condition(vmi, "Synchronized") if vmi is not None else None
    checks: list[tuple[str, bool]] = [
        ("Terminating", is_deleting_obj(vm)),
        ("Stopping", vmi is not None and not final and (is_deleting_obj(vmi) or stop_expected)),
        ("Migrating", vmi is not None and is_migrating(vmi)),
        ("Paused", phase == VMIPhase.RUNNING and paused),
        ("Running", phase == VMIPhase.RUNNING and not paused),
        ("ErrorPvcNotFound", sync is not None and sync.get("status") == "False"
         and sync.get("reason") == REASON_PVC_NOT_FOUND),
        ("DataVolumeError", data_volume_error(volumes, dvs)),
        ("Provisioning", data_volume_provisioning(volumes, dvs)),
        ("WaitingForVolumeBinding", is_set_to_start(vm, vmi) and unbound_pvc(volumes, pvcs)),
        ("Starting", vmi is not None and phase in ("", VMIPhase.PENDING, VMIPhase.SCHEDULING,
                                                   VMIPhase.SCHEDULED)),
        ("Stopped", vmi is None or final),
    ]
    for name, matches in checks:
        if matches:
            return name
    return "Unknown"


# -- migration retries ----------------------------------------------------------------------


@dataclass(frozen=True)
class MigrationRecord:
    """What the back-off rule needs to know about one migration of a VMI."""

    uid: str
    order: tuple[str, int, str]  # (creationTimestamp, creation sequence, name): sorts by age
    phase: str
    deleting: bool
    failed_at: float | None  # monotonic time the migration failed, if known


def backoff_deadline(current_uid: str, history: Iterable[MigrationRecord],
                     base: float) -> float | None:
    """handleMigrationBackoff: the monotonic time before which the newest migration must
    not start, or None. The back-off is `base` after one failure, doubling per consecutive
    failure (a Succeeded migration resets it), counted from the latest failure."""
    newest_first = sorted(history, key=lambda r: r.order, reverse=True)
    if len(newest_first) < 2 or newest_first[0].uid != current_uid:
        return None
    backoff = 0.0
    for record in newest_first[1:]:
        if record.phase == MigrationPhase.SUCCEEDED:
            break
        if record.deleting:
            continue
        if record.phase == MigrationPhase.FAILED:
            backoff = base if backoff == 0 else backoff * 2
    failed_at = newest_first[1].failed_at
    if backoff == 0 or failed_at is None:
        return None
    return failed_at + backoff


def copy_seconds(sizes: Iterable[int], seconds_per_gib: float) -> float:
    """How long copying disks of these byte sizes takes."""
    return sum(sizes) / GI * seconds_per_gib
