"""Live state: what one observation of the cluster saw, keyed for O(1) joins. Stdlib only.

Every value is a frozen dataclass built by ``observe.parse`` from the API's JSON. Sizes are
bytes (int); keys are (namespace, name), cluster-scoped maps are keyed by name. The values
have ``__slots__`` (a fleet is tens of thousands of them) and a VM's object as read is kept
packed (``PackedObject``).
"""

from __future__ import annotations

import json
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from functools import cached_property
from typing import Any


class PackedObject(Mapping[str, object]):
    """A JSON object kept as compact JSON text per top-level key, decoded on every access.

    A VM as read is some 80 Python objects (6 KiB); packed it is one dict of a few ``bytes``
    (about a fifth of that), and ten thousand VMs fit where two thousand did. Every access
    returns a fresh copy of that key's value: what a caller does to it never changes the
    snapshot. Equal to any mapping with the same content.
    """

    __slots__ = ("_parts",)

    def __init__(self, obj: Mapping[str, Any]) -> None:
        # Scalars are kept as they are; containers as JSON text (bytes: no JSON value is).
        self._parts: dict[str, object] = {
            key: (
                json.dumps(value, separators=(",", ":"), ensure_ascii=False).encode()
                if isinstance(value, dict | list)
                else value
            )
            for key, value in obj.items()
        }

    def __getitem__(self, key: str) -> object:
        value = self._parts[key]
        return json.loads(value) if isinstance(value, bytes) else value

    def __iter__(self) -> Iterator[str]:
        return iter(self._parts)

    def __len__(self) -> int:
        return len(self._parts)

    def __repr__(self) -> str:
        return f"PackedObject({dict(self)!r})"

    def __reduce__(self) -> tuple[Any, ...]:
        return (PackedObject, (dict(self),))


@dataclass(frozen=True, slots=True)
class StorageClassInfo:
    name: str
    provisioner: str
    is_default: bool = False
    is_default_virt: bool = False
    volume_binding_mode: str = "Immediate"
    allow_volume_expansion: bool = False


@dataclass(frozen=True, slots=True)
class StorageProfileInfo:
    """CDI's view of a StorageClass: the access/volume modes it recommends, in order."""

    name: str
    claim_property_sets: tuple[tuple[tuple[str, ...], str], ...] = ()  # ((accessModes), mode)
    clone_strategy: str | None = None


@dataclass(frozen=True, slots=True)
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


@dataclass(frozen=True, slots=True)
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


@dataclass(frozen=True, slots=True)
class KubeVirtInfo:
    """The parts of the KubeVirt CR that decide whether storage live migration can work."""

    version: str  # status.observedKubeVirtVersion, e.g. "v1.9.0"; "" when unknown
    feature_gates: frozenset[str] = frozenset()
    vm_rollout_strategy: str | None = None  # None = the version's default
    workload_update_methods: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True)
class Condition:
    type: str
    status: str
    reason: str = ""
    message: str = ""


@dataclass(frozen=True, slots=True)
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


@dataclass(frozen=True, slots=True)
class VMInfo:
    """A VirtualMachine. ``run_strategy`` is resolved from ``spec.running`` when that is used.

    ``raw`` is the object as read (JSON-compatible), slimmed by ``observe.parse.slim_vm`` (no
    status, no managedFields but the paths the diff reads) and, from a LIST, packed
    (``PackedObject``): renderers take what they need from it.
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


@dataclass(frozen=True, slots=True)
class VMIInfo:
    namespace: str
    name: str
    phase: str
    node: str = ""
    conditions: tuple[Condition, ...] = ()
    volume_claims: Mapping[str, str] = field(default_factory=dict)  # volume name -> claim
    migrated_volumes: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True)
class MigrationInfo:
    """A VirtualMachineInstanceMigration (only in-flight or recent ones matter)."""

    namespace: str
    name: str
    vmi_name: str
    phase: str
    volume_update: bool = False  # labelled kubevirt.io/volume-update-migration
    failure_reason: str = ""


@dataclass(frozen=True)  # no slots: claim_references is cached on the instance
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
