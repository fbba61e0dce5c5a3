"""The destination DataVolumes: rendered from ``datavolume-live.j2`` (blank, KubeVirt copies)
or ``datavolume-offline.j2`` (a CDI clone) and checked before they are typed. Pure."""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import cast

from reconciler.model.errors import Problem, TemplateError
from reconciler.model.live import PVCInfo, Snapshot, VMInfo
from reconciler.model.manifests import DataVolumeManifest
from reconciler.model.names import MANAGED_BY_LABEL, OUR_PREFIX, SOURCE_CLAIM_ANNOTATION
from reconciler.model.quantity import parse_quantity
from reconciler.model.text import shown
from reconciler.model.verdict import VolumeVerdict
from reconciler.render.bounds import Unchecked
from reconciler.render.sandbox import (
    DV_LIVE,
    DV_OFFLINE,
    Rendered,
    TemplateSet,
    render_yaml,
)

DV_API_VERSION = "cdi.kubevirt.io/v1beta1"
_LABEL_VALUE = re.compile(r"^(([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9])?$")
# Labels CDI/KubeVirt put on the PVCs they create; copying them would misattribute our DV.
_INTERNAL_LABEL_VALUES = {
    ("app", "containerized-data-importer"),
    ("app.kubernetes.io/component", "storage"),
}


def copied_labels(labels: Mapping[str, str]) -> dict[str, str]:
    """The source's labels worth keeping on the destination: without CDI/KubeVirt-internal
    ones (``*kubevirt.io/*`` keys, CDI's app/component markers) and without ours, which the
    templates set afresh."""
    kept = {}
    for key, value in labels.items():
        prefix = key.split("/", 1)[0] if "/" in key else ""
        internal = prefix == "kubevirt.io" or prefix.endswith(".kubevirt.io")
        ours = prefix == OUR_PREFIX or key == MANAGED_BY_LABEL
        if not (internal or ours or (key, value) in _INTERNAL_LABEL_VALUES):
            kept[key] = value
    return dict(sorted(kept.items()))


def _source_labels(snapshot: Snapshot, namespace: str, claim: str) -> Mapping[str, str]:
    pvc: PVCInfo | None = snapshot.pvcs.get((namespace, claim))
    if pvc is not None:
        return pvc.labels
    dv = snapshot.data_volumes.get((namespace, claim))
    return dv.labels if dv is not None else {}


def _dv_context(
    move: VolumeVerdict, name: str, vm: VMInfo, snapshot: Snapshot, *, plan_name: str
) -> dict[str, Unchecked]:
    mode = move.volume_mode if move.volume_mode in ("Block", "Filesystem") else ""
    return {
        "name": name,
        "namespace": vm.namespace,
        "vm": vm.name,
        "plan": plan_name,
        "volume": move.volume,
        "claim": move.claim,
        "storage_class": move.to_class,
        "from_class": move.from_class,
        "size_bytes": move.size_bytes,
        "volume_mode": mode,
        "access_modes": list(move.access_modes),
        "source_labels": copied_labels(_source_labels(snapshot, vm.namespace, move.claim)),
    }


def render_data_volume(
    move: VolumeVerdict,
    name: str,
    vm: VMInfo,
    snapshot: Snapshot,
    templates: TemplateSet,
    *,
    plan_name: str,
    live: bool,
) -> DataVolumeManifest:
    """The destination DataVolume of ``move``, named ``name``, rendered and checked."""
    if live and move.size_bytes <= 0:
        raise TemplateError(
            [
                Problem(
                    None,
                    f"VM {vm.namespace}/{vm.name} volume {move.volume}: the size of {move.claim} "
                    "is unknown, so the blank destination cannot be sized",
                    hint="the source PVC must have spec.resources.requests.storage",
                )
            ]
        )
    context = _dv_context(move, name, vm, snapshot, plan_name=plan_name)
    out = render_yaml(templates, DV_LIVE if live else DV_OFFLINE, context)
    _check_data_volume(out, move, name, vm.namespace, live=live)
    # Checked above (kind, apiVersion, metadata, source, storage): now it is a manifest.
    return cast(DataVolumeManifest, dict(out.data))


def _check_data_volume(
    out: Rendered, move: VolumeVerdict, name: str, namespace: str, *, live: bool
) -> None:
    """The rendered DataVolume is the one we mean: right kind, name, namespace, class,
    source, size and ownership annotation."""
    dv = out.data
    if not isinstance(dv, dict):
        raise out.error(f"expected a DataVolume mapping, got {type(dv).__name__}")
    meta = _mapping(out, dv, "metadata")
    spec = _mapping(out, dv, "spec")
    expect = {"apiVersion": DV_API_VERSION, "kind": "DataVolume"}
    for key, value in expect.items():
        if dv.get(key) != value:
            raise out.error(f"{key} is {dv.get(key)!r}, expected {value!r}", near=key)
    if meta.get("name") != name:
        raise out.error(
            f"metadata.name is {meta.get('name')!r}, expected the destination {name!r}",
            near="name:",
            hint="use the `name` variable",
        )
    if meta.get("namespace") != namespace:
        raise out.error(
            f"metadata.namespace is {meta.get('namespace')!r}, expected {namespace!r}",
            near="namespace",
        )
    _check_string_map(out, meta, "labels", label_values=True)
    annotations = _check_string_map(out, meta, "annotations", label_values=False)
    if annotations.get(SOURCE_CLAIM_ANNOTATION) != move.claim:
        raise out.error(
            f"annotation {SOURCE_CLAIM_ANNOTATION} must be {move.claim!r}",
            near=SOURCE_CLAIM_ANNOTATION,
            hint="it marks the destination as ours so an interrupted run can resume with it",
        )
    _check_dv_source(out, spec, move, namespace, live=live)
    _check_dv_storage(out, spec, move, live=live)


def _mapping(out: Rendered, obj: Mapping[str, Unchecked], key: str) -> Mapping[str, Unchecked]:
    value = obj.get(key)
    if not isinstance(value, dict):
        raise out.error(f"{key} must be a mapping, got {value!r}", near=f"{key}:")
    return value


def _check_string_map(
    out: Rendered, meta: Mapping[str, Unchecked], key: str, *, label_values: bool
) -> Mapping[str, str]:
    values = meta.get(key) or {}
    if not isinstance(values, dict):
        raise out.error(f"metadata.{key} must be a mapping", near=f"{key}:")
    for k, v in values.items():
        if not isinstance(v, str):
            raise out.error(
                f"metadata.{key}[{k!r}] is {v!r}, not a string",
                near=str(k),
                hint='quote it ("true") or use the to_json filter',
            )
        if label_values and (len(v) > 63 or not _LABEL_VALUE.match(v)):
            raise out.error(
                f"label {k}={v!r} is not a valid label value",
                near=str(k),
                hint="at most 63 characters: alphanumerics, '-', '_' and '.'; "
                "the dns_label filter cuts long names",
            )
    return values


def _check_dv_source(
    out: Rendered, spec: Mapping[str, Unchecked], move: VolumeVerdict, namespace: str, *, live: bool
) -> None:
    source = _mapping(out, spec, "source")
    if live:
        if source != {"blank": {}} or "sourceRef" in spec:
            got = {
                "source": source,
                **({"sourceRef": spec["sourceRef"]} if "sourceRef" in spec else {}),
            }
            raise out.error(
                "a live move's destination must be blank: spec.source must be exactly "
                f"{{blank: {{}}}} and there may be no spec.sourceRef, got {shown(got, 200)}",
                near="source",
                hint="KubeVirt copies the data into it; anything else would populate it first",
            )
        return
    pvc = source.get("pvc")
    if (
        not isinstance(pvc, dict)
        or pvc.get("name") != move.claim
        or pvc.get("namespace", namespace) != namespace
    ):
        raise out.error(
            f"spec.source.pvc must clone {namespace}/{move.claim}, got {pvc!r}",
            near="pvc",
            hint="cloning another disk would lose data",
        )


def _check_dv_storage(
    out: Rendered, spec: Mapping[str, Unchecked], move: VolumeVerdict, *, live: bool
) -> None:
    storage = spec.get("storage") if "storage" in spec else spec.get("pvc")
    if not isinstance(storage, dict):
        raise out.error("spec.storage (or spec.pvc) must be a mapping", near="storage")
    if storage.get("storageClassName") != move.to_class:
        raise out.error(
            f"storageClassName is {storage.get('storageClassName')!r}, expected {move.to_class!r}",
            near="storageClassName",
        )
    requested = ((storage.get("resources") or {}).get("requests") or {}).get("storage")
    if requested is None and move.size_bytes <= 0 and not live:
        return  # a clone of a source of unknown size: CDI detects it (detectCloneSize)
    if requested is None:
        raise out.error(
            "resources.requests.storage is missing",
            near="storage:",
            hint=(
                "request the source's size (size_bytes | quantity): without one, CDI sizes a "
                "clone from the image, smaller than the source claim, and verification refuses it"
            ),
        )
    try:
        if not isinstance(requested, str | int):
            raise ValueError(f"not a quantity: {requested!r}")
        size = parse_quantity(requested)
    except ValueError as exc:
        raise out.error(
            f"resources.requests.storage {requested!r} is not a quantity", near="storage:"
        ) from exc
    if size < move.size_bytes:
        raise out.error(
            f"resources.requests.storage {requested!r} is smaller than the source "
            f"({move.size_bytes} bytes)",
            near="storage:",
            hint="a smaller destination fails the copy; use size_bytes | quantity",
        )
