"""Plain data passed between the pipeline stages.

plans (desired) x snapshot (live) -> diff -> verdicts -> render -> report.

Everything here is a frozen dataclass or an enum: no I/O, no pykube, no mutation. Sizes are
bytes (int). Names are Kubernetes names (str). A ``Source`` records where a value came from in a
plan file so that every error can name ``file:line`` and the field path.
"""

from __future__ import annotations

import enum
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import time, timedelta
from functools import cached_property

# --------------------------------------------------------------------------------------------
# Closed vocabularies
# --------------------------------------------------------------------------------------------


class Mode(enum.Enum):
    """How a plan may move a VM's disks."""

    AUTO = "Auto"  # live when possible, else offline (if the VM is stopped or allowStop)
    LIVE = "Live"  # live only; a VM that cannot move live is Blocked
    OFFLINE = "Offline"  # always stop (if allowed), clone, swap, restore run state


class VolumeMode(enum.Enum):
    """Target volumeMode. AUTO keeps the source's mode."""

    AUTO = "Auto"
    BLOCK = "Block"
    FILESYSTEM = "Filesystem"


class Retention(enum.Enum):
    """What happens to the source disk after the target is verified."""

    KEEP = "Keep"
    DELETE = "Delete"


class Action(enum.Enum):
    """The verdict for one volume (and, aggregated, for one VM)."""

    IN_SYNC = "InSync"
    MOVE_LIVE = "MoveLive"
    MOVE_OFFLINE = "MoveOffline"
    BLOCKED = "Blocked"
    IN_PROGRESS = "InProgress"


# --------------------------------------------------------------------------------------------
# Desired state: plans
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Source:
    """Where a value was written: a plan file, a 1-based line, and the field path in it."""

    file: str
    line: int
    path: str = ""

    def __str__(self) -> str:
        where = f"{self.file}:{self.line}"
        return f"{where}: {self.path}" if self.path else where


@dataclass(frozen=True)
class Window:
    """A maintenance window: new moves may start only inside it.

    ``days`` holds ISO weekdays (1 = Monday .. 7 = Sunday); empty means every day. The window
    opens at ``start`` local time in ``time_zone`` and stays open for ``duration``.
    """

    start: time
    duration: timedelta
    time_zone: str = "UTC"
    days: frozenset[int] = frozenset()


@dataclass(frozen=True)
class LabelSelector:
    """A Kubernetes label selector (matchLabels and matchExpressions)."""

    match_labels: tuple[tuple[str, str], ...] = ()
    # (key, operator In|NotIn|Exists|DoesNotExist, values)
    match_expressions: tuple[tuple[str, str, tuple[str, ...]], ...] = ()


@dataclass(frozen=True)
class VolumeTarget:
    """A per-volume override inside a plan.

    ``name`` is the VM's volume name (``spec.template.spec.volumes[].name``). ``None`` fields
    inherit from the plan. ``target_name`` is an explicit destination claim name.
    """

    name: str
    source: Source
    storage_class: str | None = None
    volume_mode: VolumeMode | None = None
    access_modes: tuple[str, ...] | None = None
    target_name: str | None = None


@dataclass(frozen=True)
class VMSelection:
    """A VM named explicitly in a plan, with optional per-volume overrides."""

    name: str
    source: Source
    volumes: tuple[VolumeTarget, ...] = ()


@dataclass(frozen=True)
class Plan:
    """One validated plan document.

    ``storage_class`` is the default target for every PVC/DataVolume disk of the selected VMs;
    ``None`` means only the volumes listed with an explicit class are moved.
    The selected VMs are ``virtual_machines`` united with those matching ``selector``.
    """

    name: str
    namespace: str
    source: Source
    storage_class: str | None = None
    volume_mode: VolumeMode = VolumeMode.AUTO
    access_modes: tuple[str, ...] | None = None
    virtual_machines: tuple[VMSelection, ...] = ()
    selector: LabelSelector | None = None
    mode: Mode = Mode.AUTO
    allow_stop: bool = False
    retention: Retention = Retention.KEEP
    window: Window | None = None
    timeout: timedelta = timedelta(hours=2)
    allow_gitops_managed: bool = False
    origin_kind: str = "StoragePlan"


# --------------------------------------------------------------------------------------------
# Live state: the snapshot observed from the cluster
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class StorageClassInfo:
    name: str
    provisioner: str
    is_default: bool = False
    is_default_virt: bool = False
    volume_binding_mode: str = "Immediate"
    allow_volume_expansion: bool = False


@dataclass(frozen=True)
class StorageProfileInfo:
    """CDI's view of a StorageClass: the access/volume modes it recommends, in order."""

    name: str
    claim_property_sets: tuple[tuple[tuple[str, ...], str], ...] = ()  # ((accessModes), mode)
    clone_strategy: str | None = None


@dataclass(frozen=True)
class PVCInfo:
    """A PersistentVolumeClaim. ``storage_class`` is resolved (the default class when unset)."""

    namespace: str
    name: str
    storage_class: str | None
    request_bytes: int
    capacity_bytes: int | None
    volume_mode: str  # Filesystem | Block
    access_modes: tuple[str, ...]
    phase: str
    labels: Mapping[str, str] = field(default_factory=dict)
    annotations: Mapping[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class DataVolumeInfo:
    namespace: str
    name: str
    phase: str
    progress: str
    source_kind: str  # blank | pvc | http | registry | ... | "" when unknown
    storage_class: str | None
    request_bytes: int | None
    labels: Mapping[str, str] = field(default_factory=dict)
    annotations: Mapping[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class KubeVirtInfo:
    """The parts of the KubeVirt CR that decide whether storage live migration can work."""

    version: str  # status.observedKubeVirtVersion, e.g. "v1.9.0"; "" when unknown
    feature_gates: frozenset[str] = frozenset()
    vm_rollout_strategy: str | None = None  # None = the version's default
    workload_update_methods: tuple[str, ...] = ()


@dataclass(frozen=True)
class Condition:
    type: str
    status: str
    reason: str = ""
    message: str = ""


@dataclass(frozen=True)
class VMVolume:
    """One entry of ``spec.template.spec.volumes`` joined with its disk/filesystem device.

    ``kind`` is the volume source key (dataVolume, persistentVolumeClaim, containerDisk, ...).
    ``claim`` is the DataVolume or PVC name for dataVolume/persistentVolumeClaim volumes.
    ``disk_type`` is the device kind under domain.devices.disks (disk | lun | cdrom) or None.
    """

    name: str
    kind: str
    claim: str | None = None
    hotpluggable: bool = False
    disk_type: str | None = None
    shareable: bool = False
    persistent_reservation: bool = False
    filesystem: bool = False  # exposed as a virtiofs filesystem, not a disk
    from_template: bool = False  # the claim is one of spec.dataVolumeTemplates


@dataclass(frozen=True)
class VMInfo:
    """A VirtualMachine. ``run_strategy`` is resolved from ``spec.running`` when that is used.

    ``raw`` is the object as read (JSON-compatible); renderers take what they need from it.
    """

    namespace: str
    name: str
    uid: str
    resource_version: str
    run_strategy: str
    volumes: tuple[VMVolume, ...]
    labels: Mapping[str, str] = field(default_factory=dict)
    annotations: Mapping[str, str] = field(default_factory=dict)
    update_volumes_strategy: str | None = None
    printable_status: str = ""
    conditions: tuple[Condition, ...] = ()
    uses_running_field: bool = False
    raw: Mapping[str, object] = field(default_factory=dict)


@dataclass(frozen=True)
class VMIInfo:
    namespace: str
    name: str
    phase: str
    node: str = ""
    conditions: tuple[Condition, ...] = ()
    volume_claims: Mapping[str, str] = field(default_factory=dict)  # volume name -> claim
    migrated_volumes: tuple[str, ...] = ()


@dataclass(frozen=True)
class MigrationInfo:
    """A VirtualMachineInstanceMigration (only in-flight or recent ones matter)."""

    namespace: str
    name: str
    vmi_name: str
    phase: str
    volume_update: bool = False  # labelled kubevirt.io/volume-update-migration
    failure_reason: str = ""


@dataclass(frozen=True)
class Snapshot:
    """Everything observed in one pass, keyed for O(1) joins. Keys are (namespace, name);
    cluster-scoped maps are keyed by name."""

    vms: Mapping[tuple[str, str], VMInfo] = field(default_factory=dict)
    vmis: Mapping[tuple[str, str], VMIInfo] = field(default_factory=dict)
    pvcs: Mapping[tuple[str, str], PVCInfo] = field(default_factory=dict)
    data_volumes: Mapping[tuple[str, str], DataVolumeInfo] = field(default_factory=dict)
    storage_classes: Mapping[str, StorageClassInfo] = field(default_factory=dict)
    storage_profiles: Mapping[str, StorageProfileInfo] = field(default_factory=dict)
    kubevirt: KubeVirtInfo | None = None
    migrations: tuple[MigrationInfo, ...] = ()

    @cached_property
    def claim_references(self) -> Mapping[tuple[str, str], str]:
        """(namespace, claim) -> "VirtualMachine ns/name" of the first VM (by name) that refers
        to the claim by a volume or a dataVolumeTemplate. Built once per snapshot: renderers
        check every destination name against it, and a scan per VM would be O(VMs²)."""
        refs: dict[tuple[str, str], str] = {}
        for (namespace, name), vm in sorted(self.vms.items()):
            spec = vm.raw.get("spec")
            templates = spec.get("dataVolumeTemplates") if isinstance(spec, Mapping) else None
            claims = [v.claim for v in vm.volumes]
            claims += [(t.get("metadata") or {}).get("name") for t in templates or ()]
            for claim in claims:
                if claim:
                    refs.setdefault((namespace, str(claim)), f"VirtualMachine {namespace}/{name}")
        return refs

    @property
    def default_storage_class(self) -> str | None:
        """The class a PVC without storageClassName gets (first default by name, if any)."""
        return default_class_of(self.storage_classes)


def default_class_of(classes: Mapping[str, StorageClassInfo]) -> str | None:
    """The cluster's default StorageClass: the first (by name) annotated as default."""
    defaults = sorted(name for name, sc in classes.items() if sc.is_default)
    return defaults[0] if defaults else None


# --------------------------------------------------------------------------------------------
# Verdicts
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class DesiredVolume:
    """What the plans want for one VM volume, after selectors and overrides are resolved."""

    namespace: str
    vm: str
    volume: str
    storage_class: str
    volume_mode: VolumeMode
    access_modes: tuple[str, ...] | None
    target_name: str | None
    plan: Plan


@dataclass(frozen=True)
class VolumeVerdict:
    """The decision for one volume. ``reason`` explains Blocked/InProgress verdicts; ``rule``
    is the stable identifier of the rule that decided (for tests, JSON output and metrics)."""

    volume: str
    claim: str
    from_class: str | None
    to_class: str
    action: Action
    reason: str = ""
    rule: str = ""
    target_name: str = ""
    size_bytes: int = 0
    volume_mode: str = ""
    access_modes: tuple[str, ...] = ()


@dataclass(frozen=True)
class VMVerdict:
    """The decision for one VM: the aggregate action and its volumes' verdicts.

    A VM moves only as a whole: if any wanted volume is Blocked, the VM is Blocked (and every
    move is withheld), because live migration must move all RWO volumes in one update.
    """

    namespace: str
    name: str
    plan: str
    action: Action
    volumes: tuple[VolumeVerdict, ...]
    reasons: tuple[str, ...] = ()
    running: bool = False
    stop_required: bool = False
