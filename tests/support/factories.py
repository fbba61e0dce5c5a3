"""Small, typed constructors for model values, so a test states only what it is about.

Defaults describe the common healthy case: a running VM in namespace ``ns`` with one RWO
Filesystem DataVolume disk on StorageClass ``old``, a ``new`` class to move to, and a KubeVirt
v1.9.0 CR configured for storage live migration. Shared read-only with other unit tests.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import replace
from typing import Any

from reconciler.model.live import (
    Condition,
    DataVolumeInfo,
    KubeVirtInfo,
    MigrationInfo,
    PVCInfo,
    Snapshot,
    StorageClassInfo,
    StorageProfileInfo,
    VMIInfo,
    VMInfo,
    VMVolume,
)
from reconciler.model.plan import (
    LabelSelector,
    Mode,
    Plan,
    Source,
    VMSelection,
    VolumeMode,
    VolumeTarget,
)
from reconciler.model.verdict import DesiredVolume, VMVerdict
from reconciler.report.text import finding_line

GiB = 1024**3
NS = "ns"
RWO = ("ReadWriteOnce",)
RWX = ("ReadWriteMany",)

SnapshotPart = (
    VMInfo
    | VMIInfo
    | PVCInfo
    | DataVolumeInfo
    | StorageClassInfo
    | StorageProfileInfo
    | KubeVirtInfo
    | MigrationInfo
)


def src(path: str = "", line: int = 1, file: str = "plans/p.yaml") -> Source:
    return Source(file=file, line=line, path=path)


def volume(name: str = "rootdisk", claim: str | None = None, **flags: Any) -> VMVolume:
    """A dataVolume volume whose claim defaults to ``<name>-dv``; ``kind=...`` overrides."""
    kind = flags.pop("kind", "dataVolume")
    flags.setdefault("disk_type", "disk")
    is_claim = kind in ("dataVolume", "persistentVolumeClaim")
    claim = claim or (f"{name}-dv" if is_claim else None)
    return VMVolume(name=name, kind=kind, claim=claim, **flags)


def vm(
    name: str = "vm1",
    volumes: Iterable[VMVolume] | None = None,
    *,
    namespace: str = NS,
    labels: Mapping[str, str] | None = None,
    annotations: Mapping[str, str] | None = None,
    run_strategy: str = "Always",
    conditions: Iterable[Condition] = (),
    **extra: Any,
) -> VMInfo:
    return VMInfo(
        namespace=namespace,
        name=name,
        uid=f"uid-{name}",
        resource_version="1",
        run_strategy=run_strategy,
        volumes=tuple(volumes if volumes is not None else (volume(),)),
        labels=dict(labels or {}),
        annotations=dict(annotations or {}),
        conditions=tuple(conditions),
        **extra,
    )


def vmi(
    name: str = "vm1",
    phase: str = "Running",
    *,
    namespace: str = NS,
    conditions: Iterable[Condition] = (),
) -> VMIInfo:
    return VMIInfo(namespace=namespace, name=name, phase=phase, conditions=tuple(conditions))


def cond(type_: str, status: str = "True", reason: str = "", message: str = "") -> Condition:
    return Condition(type=type_, status=status, reason=reason, message=message)


def pvc(
    name: str = "rootdisk-dv",
    *,
    namespace: str = NS,
    storage_class: str | None = "old",
    size: int = 10 * GiB,
    capacity: int | None = None,
    volume_mode: str = "Filesystem",
    access_modes: tuple[str, ...] = RWO,
    phase: str = "Bound",
    annotations: Mapping[str, str] | None = None,
) -> PVCInfo:
    return PVCInfo(
        namespace=namespace,
        name=name,
        storage_class=storage_class,
        request_bytes=size,
        capacity_bytes=size if capacity is None and phase == "Bound" else capacity,
        volume_mode=volume_mode,
        access_modes=access_modes,
        phase=phase,
        annotations=dict(annotations or {}),
    )


def dv(
    name: str = "rootdisk-dv",
    phase: str = "Succeeded",
    *,
    namespace: str = NS,
    storage_class: str | None = "old",
    progress: str = "100.0%",
    size: int = 10 * GiB,
) -> DataVolumeInfo:
    return DataVolumeInfo(
        namespace=namespace,
        name=name,
        phase=phase,
        progress=progress,
        source_kind="http",
        storage_class=storage_class,
        request_bytes=size,
    )


def storage_class(
    name: str = "new", *, default: bool = False, default_virt: bool = False
) -> StorageClassInfo:
    return StorageClassInfo(
        name=name,
        provisioner=f"{name}.csi.example.com",
        is_default=default,
        is_default_virt=default_virt,
    )


def profile(name: str = "new", *sets: tuple[tuple[str, ...], str]) -> StorageProfileInfo:
    return StorageProfileInfo(name=name, claim_property_sets=tuple(sets))


def kubevirt(
    version: str = "v1.9.0",
    *,
    gates: Iterable[str] = (),
    rollout: str | None = None,
    methods: tuple[str, ...] = ("LiveMigrate",),
) -> KubeVirtInfo:
    return KubeVirtInfo(
        version=version,
        feature_gates=frozenset(gates),
        vm_rollout_strategy=rollout,
        workload_update_methods=methods,
    )


def migration(
    vmi_name: str = "vm1", phase: str = "Running", *, volume_update: bool = True
) -> MigrationInfo:
    return MigrationInfo(
        namespace=NS,
        name=f"kubevirt-workload-update-{vmi_name}",
        vmi_name=vmi_name,
        phase=phase,
        volume_update=volume_update,
    )


def snapshot(*parts: SnapshotPart) -> Snapshot:
    """A Snapshot holding exactly ``parts`` (of any model kind), keyed as observe keys them."""
    vms, vmis, pvcs, dvs, classes, profiles, migrations = {}, {}, {}, {}, {}, {}, []
    kv: KubeVirtInfo | None = None
    for part in parts:
        match part:
            case VMInfo():
                vms[(part.namespace, part.name)] = part
            case VMIInfo():
                vmis[(part.namespace, part.name)] = part
            case PVCInfo():
                pvcs[(part.namespace, part.name)] = part
            case DataVolumeInfo():
                dvs[(part.namespace, part.name)] = part
            case StorageClassInfo():
                classes[part.name] = part
            case StorageProfileInfo():
                profiles[part.name] = part
            case KubeVirtInfo():
                kv = part
            case MigrationInfo():
                migrations.append(part)
    return Snapshot(
        vms=vms,
        vmis=vmis,
        pvcs=pvcs,
        data_volumes=dvs,
        storage_classes=classes,
        storage_profiles=profiles,
        kubevirt=kv,
        migrations=tuple(migrations),
    )


def healthy(*extra: SnapshotPart, running: bool = True) -> Snapshot:
    """The default scene: vm1 (running unless ``running=False``) with rootdisk on ``old``,
    classes ``old`` (default) and ``new``, a live-migration-ready KubeVirt; ``extra`` parts are
    added (or replace the part with the same key)."""
    return snapshot(
        vm(),
        *((vmi(),) if running else ()),
        pvc(),
        dv(),
        storage_class("old", default=True),
        storage_class("new"),
        kubevirt(),
        *extra,
    )


def plan(
    name: str = "p",
    *,
    namespace: str = NS,
    storage_class: str | None = "new",
    vms: Iterable[str | VMSelection] = ("vm1",),
    selector: LabelSelector | None = None,
    mode: Mode = Mode.AUTO,
    allow_stop: bool = False,
    **extra: Any,
) -> Plan:
    selections = tuple(
        VMSelection(name=v, source=src(f"spec.virtualMachines[{i}]")) if isinstance(v, str) else v
        for i, v in enumerate(vms)
    )
    return Plan(
        name=name,
        namespace=namespace,
        source=src(file=f"plans/{name}.yaml"),
        storage_class=storage_class,
        virtual_machines=selections,
        selector=selector,
        mode=mode,
        allow_stop=allow_stop,
        **extra,
    )


def select(name: str, *overrides: VolumeTarget) -> VMSelection:
    return VMSelection(name=name, source=src("spec.virtualMachines[0]"), volumes=overrides)


def override(
    name: str,
    storage_class: str | None = None,
    *,
    volume_mode: VolumeMode | None = None,
    access_modes: tuple[str, ...] | None = None,
    target_name: str | None = None,
) -> VolumeTarget:
    return VolumeTarget(
        name=name,
        source=src("spec.virtualMachines[0].volumes[0]", line=7),
        storage_class=storage_class,
        volume_mode=volume_mode,
        access_modes=access_modes,
        target_name=target_name,
    )


def labels(**pairs: str) -> LabelSelector:
    return LabelSelector(match_labels=tuple(sorted(pairs.items())))


def with_vm(snap: Snapshot, **changes: Any) -> Snapshot:
    """``snap`` with vm1 changed (dataclasses.replace on the VMInfo)."""
    key = (NS, "vm1")
    return replace(snap, vms={**snap.vms, key: replace(snap.vms[key], **changes)})


def desired(
    volume_name: str = "rootdisk",
    storage_class: str = "new",
    *,
    vm_name: str = "vm1",
    volume_mode: VolumeMode = VolumeMode.AUTO,
    access_modes: tuple[str, ...] | None = None,
    target_name: str | None = None,
    of: Plan | None = None,
) -> DesiredVolume:
    """A resolved desired volume (as diff.resolve_desired makes them) of ``of`` (default plan)."""
    return DesiredVolume(
        namespace=NS,
        vm=vm_name,
        volume=volume_name,
        storage_class=storage_class,
        volume_mode=volume_mode,
        access_modes=access_modes,
        target_name=target_name,
        plan=of or plan(),
    )


def reason_lines(verdict: VMVerdict) -> tuple[str, ...]:
    """The verdict's findings as ``plan`` prints them (``report.text.finding_line``)."""
    return tuple(finding_line(f) for f in verdict.findings)
