"""The API's JSON -> ``model.live.Snapshot``. Pure: plain dicts in, frozen values out, so the
parsers are tested without a cluster and reused by the benchmark. ``fetch`` does the I/O.

``parse_page`` turns one LIST page into the slim facts the diff reads, so that the page's JSON
can be dropped at once: no object is kept as read but a VM's, and that one slimmed
(``slim_vm``: what render patches and apply re-reads; no status, no managedFields but the one
path the diff asks about) and packed (``model.live.PackedObject``: compact JSON text, decoded
on access). Categorical strings repeated on every object (namespace, class, phase, modes) are
interned: one copy per distinct value, not one per object.
"""

from __future__ import annotations

import sys
from collections.abc import Callable, Collection, Iterable, Mapping, Sequence
from dataclasses import dataclass, replace
from typing import Any

from reconciler.kube import resources as kube
from reconciler.model.live import (
    Condition,
    DataVolumeInfo,
    KubeVirtInfo,
    MigrationInfo,
    PackedObject,
    PVCInfo,
    Snapshot,
    StorageClassInfo,
    StorageProfileInfo,
    VMIInfo,
    VMInfo,
    VMVolume,
    default_class_of,
)
from reconciler.model.names import (
    DEFAULT_CLASS_ANNOTATION,
    DEFAULT_VIRT_CLASS_ANNOTATION,
    FLUX_SSA_ANNOTATION,
    VOLUME_UPDATE_LABEL,
)
from reconciler.model.quantity import parse_quantity
from reconciler.model.runstrategy import run_strategy_of

Obj = Mapping[str, Any]


@dataclass(frozen=True)
class RawObjects:
    """The items of every LIST: JSON dicts as read, or (between parsing and assembly) the
    model objects parsed from them."""

    vms: Sequence[Any] = ()
    vmis: Sequence[Any] = ()
    pvcs: Sequence[Any] = ()
    data_volumes: Sequence[Any] = ()
    storage_classes: Sequence[Any] = ()
    storage_profiles: Sequence[Any] = ()
    kubevirts: Sequence[Any] = ()
    migrations: Sequence[Any] = ()


def build_snapshot(raw: RawObjects) -> Snapshot:
    """Parse every list into the model, resolving each PVC's class (default when unset)."""
    parsed = {name: parse_list(plural, getattr(raw, name)) for name, plural in _FIELDS.items()}
    return assemble(RawObjects(**parsed))


# RawObjects field -> resource plural. StorageClasses and KubeVirt CRs stay raw until
# assembly: a handful of objects, and choosing the default class / the deployed CR needs all.
_FIELDS = {
    "vms": kube.VIRTUAL_MACHINES.plural,
    "vmis": kube.VMIS.plural,
    "pvcs": kube.PVCS.plural,
    "data_volumes": kube.DATA_VOLUMES.plural,
    "storage_classes": kube.STORAGE_CLASSES.plural,
    "storage_profiles": kube.STORAGE_PROFILES.plural,
    "kubevirts": kube.KUBEVIRTS.plural,
    "migrations": kube.MIGRATIONS.plural,
}


def parse_list(plural: str, items: Sequence[Obj]) -> list[Any]:
    """The model objects of one LIST (PVC classes unresolved: see ``assemble``)."""
    parser = _PARSERS.get(plural)
    return [parser(o) for o in items] if parser else list(items)


def parse_page(
    plural: str, items: Sequence[Obj], namespaces: Collection[str] | None = None
) -> list[Any]:
    """``parse_list`` of one LIST page, keeping only the objects in ``namespaces`` (None: all)
    and skipping the others unparsed (a cluster-wide LIST made for a few namespaces)."""
    if namespaces is not None:
        items = [o for o in items if _meta(o).get("namespace") in namespaces]
    return parse_list(plural, items)


def assemble(parsed: RawObjects) -> Snapshot:
    """The Snapshot from parsed lists (storage classes and KubeVirt CRs still raw)."""
    classes = {sc.name: sc for sc in map(parse_storage_class, parsed.storage_classes)}
    default_class = default_class_of(classes)
    pvcs = (
        p if p.storage_class or default_class is None else replace(p, storage_class=default_class)
        for p in parsed.pvcs
    )
    return Snapshot(
        vms=_by_key(parsed.vms),
        vmis=_by_key(parsed.vmis),
        pvcs=_by_key(pvcs),
        data_volumes=_by_key(parsed.data_volumes),
        storage_classes=classes,
        storage_profiles={p.name: p for p in parsed.storage_profiles},
        kubevirt=_pick_kubevirt(parsed.kubevirts),
        migrations=tuple(parsed.migrations),
    )


def _by_key(items: Iterable[Any]) -> dict[tuple[str, str], Any]:
    return {(i.namespace, i.name): i for i in items}


def _meta(obj: Obj) -> Obj:
    meta: Obj = obj.get("metadata") or {}
    return meta


def _word(value: Any) -> str:
    """``str(value)`` interned: the categorical strings every object repeats (namespace,
    phase, class, mode) are kept once, not once per object."""
    return sys.intern(str(value))


def _interned(value: Any) -> Any:
    """``value`` itself, interned when it is a string (anything else is left as read)."""
    return sys.intern(value) if type(value) is str else value


KEPT_FIELD_PATHS: tuple[tuple[str, ...], ...] = (
    ("f:metadata", "f:annotations", f"f:{FLUX_SSA_ANNOTATION}"),
)
"""The ``managedFields`` paths read from a VM's raw object (``diff.gitops.flux_skips``: who
set the Flux SSA annotation). ``slim_vm`` keeps the entries that own one of them, and only
those paths of them; add a path here before asking ``field_owners`` about another."""


def slim_vm(obj: Obj) -> dict[str, Any]:
    """A VM object as render patches it and apply reads it: everything but ``status`` (parsed
    into ``VMInfo``) and ``metadata.managedFields`` (by far the largest part of a VM as read),
    of which only the entries owning a ``KEPT_FIELD_PATHS`` path are kept, reduced to those
    paths. The rest is shared with ``obj``, not copied."""
    slim = {key: value for key, value in obj.items() if key != "status"}
    meta = obj.get("metadata")
    if isinstance(meta, Mapping) and "managedFields" in meta:
        slim_meta = {key: value for key, value in meta.items() if key != "managedFields"}
        kept = _kept_managed_fields(meta.get("managedFields"))
        if kept:
            slim_meta["managedFields"] = kept
        slim["metadata"] = slim_meta
    return slim


def _kept_managed_fields(entries: Any) -> list[dict[str, Any]]:
    kept = []
    for entry in entries if isinstance(entries, list) else ():
        if not isinstance(entry, Mapping) or entry.get("subresource"):
            continue
        fields = entry.get("fieldsV1")
        pruned: dict[str, Any] = {}
        for path in KEPT_FIELD_PATHS:
            node: Any = fields
            for key in path:
                node = node.get(key) if isinstance(node, Mapping) else None
            if node is None:
                continue
            into = pruned
            for key in path[:-1]:
                into = into.setdefault(key, {})
            into[path[-1]] = node
        if pruned:
            kept.append(
                {
                    key: entry[key]
                    for key in ("manager", "operation", "apiVersion", "fieldsType")
                    if key in entry
                }
                | {"fieldsV1": pruned}
            )
    return kept


def _conditions(status: Obj) -> tuple[Condition, ...]:
    return tuple(
        Condition(
            type=_word(c.get("type", "")),
            status=_word(c.get("status", "")),
            reason=_word(c.get("reason", "") or ""),
            message=str(c.get("message", "") or ""),
        )
        for c in status.get("conditions") or ()
    )


def _size(value: Any) -> int | None:
    if value in (None, ""):
        return None
    try:
        return parse_quantity(value)
    except ValueError:
        return None


def claim_of(volume: Obj) -> tuple[str, str | None, bool]:
    """(kind, claim name, hotpluggable) of one ``spec.volumes`` entry."""
    if "dataVolume" in volume:
        source = volume["dataVolume"] or {}
        return "dataVolume", source.get("name"), bool(source.get("hotpluggable"))
    if "persistentVolumeClaim" in volume:
        source = volume["persistentVolumeClaim"] or {}
        return "persistentVolumeClaim", source.get("claimName"), bool(source.get("hotpluggable"))
    kinds = [k for k in volume if k != "name"]
    return (kinds[0] if kinds else "unknown"), None, False


def parse_vm(obj: Obj) -> VMInfo:
    meta, spec = _meta(obj), obj.get("spec") or {}
    template_spec = (spec.get("template") or {}).get("spec") or {}
    devices = (template_spec.get("domain") or {}).get("devices") or {}
    disks = {d.get("name"): d for d in devices.get("disks") or ()}
    filesystems = {f.get("name") for f in devices.get("filesystems") or ()}
    templates = {
        (t.get("metadata") or {}).get("name") for t in spec.get("dataVolumeTemplates") or ()
    }
    volumes = []
    for volume in template_spec.get("volumes") or ():
        kind, claim, hotpluggable = claim_of(volume)
        disk = disks.get(volume.get("name")) or {}
        disk_type = next((t for t in ("disk", "lun", "cdrom") if t in disk), None)
        lun = disk.get("lun") or {}
        volumes.append(
            VMVolume(
                name=_word(volume.get("name", "")),
                kind=_word(kind),
                claim=claim,
                hotpluggable=hotpluggable,
                disk_type=disk_type,
                shareable=bool(disk.get("shareable")),
                persistent_reservation=bool(lun.get("reservation")),
                filesystem=volume.get("name") in filesystems,
                from_template=kind == "dataVolume" and claim in templates,
            )
        )
    status = obj.get("status") or {}
    strategy = run_strategy_of(spec)
    return VMInfo(
        namespace=_word(meta.get("namespace", "")),
        name=str(meta.get("name", "")),
        uid=str(meta.get("uid", "")),
        resource_version=str(meta.get("resourceVersion", "")),
        run_strategy=_word(strategy.effective),
        volumes=tuple(volumes),
        labels=dict(meta.get("labels") or {}),
        annotations=dict(meta.get("annotations") or {}),
        update_volumes_strategy=_interned(spec.get("updateVolumesStrategy")),
        printable_status=_word(status.get("printableStatus", "")),
        conditions=_conditions(status),
        uses_running_field=strategy.on_running_field,
        raw=PackedObject(slim_vm(obj)),
    )


def parse_vmi(obj: Obj) -> VMIInfo:
    meta, status = _meta(obj), obj.get("status") or {}
    claims = {}
    for volume in (obj.get("spec") or {}).get("volumes") or ():
        _, claim, _ = claim_of(volume)
        if claim:
            claims[_word(volume.get("name"))] = claim
    return VMIInfo(
        namespace=_word(meta.get("namespace", "")),
        name=str(meta.get("name", "")),
        phase=_word(status.get("phase", "")),
        node=_word(status.get("nodeName", "")),
        conditions=_conditions(status),
        volume_claims=claims,
        migrated_volumes=tuple(
            _word(m.get("volumeName", "")) for m in status.get("migratedVolumes") or ()
        ),
    )


def parse_pvc(obj: Obj, default_class: str | None) -> PVCInfo:
    meta, spec, status = _meta(obj), obj.get("spec") or {}, obj.get("status") or {}
    requests = (spec.get("resources") or {}).get("requests") or {}
    return PVCInfo(
        namespace=_word(meta.get("namespace", "")),
        name=str(meta.get("name", "")),
        storage_class=_interned(spec.get("storageClassName") or default_class),
        request_bytes=_size(requests.get("storage")) or 0,
        capacity_bytes=_size((status.get("capacity") or {}).get("storage")),
        volume_mode=_word(spec.get("volumeMode") or "Filesystem"),
        access_modes=tuple(map(_word, status.get("accessModes") or spec.get("accessModes") or ())),
        phase=_word(status.get("phase", "Pending")),
        labels=dict(meta.get("labels") or {}),
        annotations=dict(meta.get("annotations") or {}),
    )


def parse_data_volume(obj: Obj) -> DataVolumeInfo:
    meta, spec, status = _meta(obj), obj.get("spec") or {}, obj.get("status") or {}
    storage = spec.get("storage") or spec.get("pvc") or {}
    source = spec.get("source") or spec.get("sourceRef") or {}
    requests = (storage.get("resources") or {}).get("requests") or {}
    return DataVolumeInfo(
        namespace=_word(meta.get("namespace", "")),
        name=str(meta.get("name", "")),
        phase=_word(status.get("phase", "")),
        progress=_word(status.get("progress", "")),
        source_kind=_word(next(iter(source), "")) if isinstance(source, Mapping) else "",
        storage_class=_interned(storage.get("storageClassName")),
        request_bytes=_size(requests.get("storage")),
        labels=dict(meta.get("labels") or {}),
        annotations=dict(meta.get("annotations") or {}),
    )


def parse_storage_class(obj: Obj) -> StorageClassInfo:
    meta = _meta(obj)
    annotations = meta.get("annotations") or {}
    return StorageClassInfo(
        name=str(meta.get("name", "")),
        provisioner=str(obj.get("provisioner", "")),
        is_default=annotations.get(DEFAULT_CLASS_ANNOTATION) == "true",
        is_default_virt=annotations.get(DEFAULT_VIRT_CLASS_ANNOTATION) == "true",
        volume_binding_mode=str(obj.get("volumeBindingMode") or "Immediate"),
        allow_volume_expansion=bool(obj.get("allowVolumeExpansion")),
    )


def parse_storage_profile(obj: Obj) -> StorageProfileInfo:
    status = obj.get("status") or {}
    sets = tuple(
        (tuple(s.get("accessModes") or ()), str(s.get("volumeMode") or "Filesystem"))
        for s in status.get("claimPropertySets") or ()
    )
    return StorageProfileInfo(
        name=str(_meta(obj).get("name", "")),
        claim_property_sets=sets,
        clone_strategy=status.get("cloneStrategy"),
    )


def parse_kubevirt(obj: Obj) -> KubeVirtInfo:
    spec, status = obj.get("spec") or {}, obj.get("status") or {}
    configuration = spec.get("configuration") or {}
    developer = configuration.get("developerConfiguration") or {}
    updates = spec.get("workloadUpdateStrategy") or {}
    return KubeVirtInfo(
        version=str(status.get("observedKubeVirtVersion") or status.get("operatorVersion") or ""),
        feature_gates=frozenset(developer.get("featureGates") or ()),
        vm_rollout_strategy=configuration.get("vmRolloutStrategy"),
        workload_update_methods=tuple(updates.get("workloadUpdateMethods") or ()),
    )


def _pick_kubevirt(items: Sequence[Obj]) -> KubeVirtInfo | None:
    """The deployed KubeVirt CR (a cluster runs one; prefer phase Deployed, then the oldest)."""
    if not items:
        return None
    ranked = sorted(
        items,
        key=lambda o: (
            (o.get("status") or {}).get("phase") != "Deployed",
            _meta(o).get("creationTimestamp", ""),
        ),
    )
    return parse_kubevirt(ranked[0])


def parse_migration(obj: Obj) -> MigrationInfo:
    meta, status = _meta(obj), obj.get("status") or {}
    labels = meta.get("labels") or {}
    return MigrationInfo(
        namespace=_word(meta.get("namespace", "")),
        name=str(meta.get("name", "")),
        vmi_name=str((obj.get("spec") or {}).get("vmiName", "")),
        phase=str(status.get("phase", "")),
        volume_update=VOLUME_UPDATE_LABEL in labels,
        failure_reason=str((status.get("migrationState") or {}).get("failureReason", "") or ""),
    )


_PARSERS: dict[str, Callable[[Obj], Any]] = {
    kube.VIRTUAL_MACHINES.plural: parse_vm,
    kube.VMIS.plural: parse_vmi,
    kube.PVCS.plural: lambda o: parse_pvc(o, None),
    kube.DATA_VOLUMES.plural: parse_data_volume,
    kube.STORAGE_PROFILES.plural: parse_storage_profile,
    kube.MIGRATIONS.plural: parse_migration,
}
