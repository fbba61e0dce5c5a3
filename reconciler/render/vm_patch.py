"""The VM's JSON patch: rendered from ``vm-patch.j2``, applied offline to a copy of the VM
and checked (every destination used in place of its source, the strategy right). Pure."""

from __future__ import annotations

import copy
import json
from collections.abc import Mapping, Sequence
from typing import cast

import jsonpatch

from reconciler.model.live import VMInfo
from reconciler.model.manifests import PatchOp, VMObject
from reconciler.model.verdict import VolumeVerdict
from reconciler.render.bounds import Unchecked
from reconciler.render.sandbox import VM_PATCH, Rendered, TemplateSet, render_yaml

RESOURCE_VERSION_PATH = "/metadata/resourceVersion"


def patch_context(
    moves: Sequence[VolumeVerdict],
    names: Mapping[str, str],
    vm: VMInfo,
    raw: Unchecked,
    *,
    plan_name: str,
    live: bool,
) -> dict[str, Unchecked]:
    spec = raw.get("spec") or {}
    return {
        "namespace": vm.namespace,
        "vm": vm.name,
        "plan": plan_name,
        "resource_version": vm.resource_version,
        "live": live,
        "update_volumes_strategy": spec.get("updateVolumesStrategy"),
        "moves": [_move_context(m, names[m.volume], vm, spec) for m in moves],
    }


def _move_context(
    move: VolumeVerdict, target: str, vm: VMInfo, spec: Unchecked
) -> dict[str, Unchecked]:
    """Where ``move`` lives in the VM object, as JSON pointers (see vm-patch.j2)."""
    volumes = ((spec.get("template") or {}).get("spec") or {}).get("volumes") or []
    index = next((i for i, v in enumerate(volumes) if v.get("name") == move.volume), None)
    if index is None:
        raise ValueError(f"VM {vm.namespace}/{vm.name} has no volume {move.volume!r}")
    volume = volumes[index]
    kind, key = (
        ("dataVolume", "name") if "dataVolume" in volume else ("persistentVolumeClaim", "claimName")
    )
    if (volume.get(kind) or {}).get(key) != move.claim:
        raise ValueError(
            f"VM {vm.namespace}/{vm.name} volume {move.volume!r} does not use "
            f"claim {move.claim!r} (verdict and VM disagree)"
        )
    volume_path = f"/spec/template/spec/volumes/{index}"
    return {
        "volume": move.volume,
        "claim": move.claim,
        "target": target,
        "storage_class": move.to_class,
        "from_class": move.from_class,
        "volume_path": volume_path,
        "claim_path": f"{volume_path}/{kind}/{key}",
        "template": _template_context(move.claim, spec, vm),
    }


def _template_context(claim: str, spec: Unchecked, vm: VMInfo) -> dict[str, Unchecked] | None:
    """The dataVolumeTemplate that creates ``claim``, if any: its pointers and old class."""
    templates = spec.get("dataVolumeTemplates") or []
    index = next(
        (j for j, t in enumerate(templates) if (t.get("metadata") or {}).get("name") == claim), None
    )
    if index is None:
        return None
    dv_spec = templates[index].get("spec") or {}
    storage_key = "storage" if "storage" in dv_spec else "pvc" if "pvc" in dv_spec else None
    if storage_key is None:
        raise ValueError(
            f"VM {vm.namespace}/{vm.name} dataVolumeTemplate {claim!r} has "
            "neither spec.storage nor spec.pvc"
        )
    path = f"/spec/dataVolumeTemplates/{index}"
    return {
        "index": index,
        "name_path": f"{path}/metadata/name",
        "class_path": f"{path}/spec/{storage_key}/storageClassName",
        "old_class": (dv_spec[storage_key] or {}).get("storageClassName"),
    }


def ops_of(out: Rendered) -> list[PatchOp]:
    """The rendered output as a JSON patch (a list of operations), or a TemplateError."""
    data = [] if out.data is None else out.data
    if not isinstance(data, list) or not all(isinstance(op, dict) for op in data):
        raise out.error(
            "expected a list of JSON patch operations",
            hint='render one `- {"op": ..., "path": ..., ...}` per line',
        )
    try:
        jsonpatch.JsonPatch(data)
    except (jsonpatch.JsonPatchException, jsonpatch.JsonPointerException) as exc:
        raise out.error(f"not a valid JSON patch: {exc}", hint="RFC 6902 operations") from exc
    return cast(list[PatchOp], data)  # jsonpatch accepted every operation


def render_forward_patch(
    templates: TemplateSet, context: Mapping[str, Unchecked], vm: VMInfo
) -> Rendered:
    out = render_yaml(templates, VM_PATCH, context)
    ops = ops_of(out)
    expected: PatchOp = {"op": "test", "path": RESOURCE_VERSION_PATH, "value": vm.resource_version}
    if not ops or ops[0] != expected:
        raise out.error(
            "the first operation must test /metadata/resourceVersion against "
            f"{vm.resource_version!r}",
            near="resourceVersion",
            hint="it makes a concurrent edit of the VM fail the patch instead of being overwritten",
        )
    return Rendered(out.name, out.template, ops)


def apply_ops(out: Rendered, document: Unchecked) -> VMObject:
    """Apply ``out``'s ops one by one to a copy of ``document``; a failing op is named."""
    doc = copy.deepcopy(document)
    for number, op in enumerate(out.data, start=1):
        try:
            # in place: ``doc`` is already our own copy, and a copy per op costs O(VM size)
            doc = jsonpatch.apply_patch(doc, [op], in_place=True)
        except (
            jsonpatch.JsonPatchException,
            jsonpatch.JsonPointerException,
            KeyError,
            IndexError,
            TypeError,
            ValueError,
        ) as exc:
            raise out.error(
                f"operation {number} {json.dumps(op, sort_keys=True)} does not "
                f"apply to the VM: {exc}",
                near=str(op.get("path", "")),
                hint="paths are JSON pointers into the VM object as observed",
            ) from exc
    result: VMObject = doc
    return result


def _claim_at(volume: Mapping[str, Unchecked]) -> Unchecked:
    for kind, key in (("dataVolume", "name"), ("persistentVolumeClaim", "claimName")):
        if kind in volume:
            return (volume[kind] or {}).get(key)
    return None


def check_patched(
    out: Rendered,
    patched: Unchecked,
    raw: Unchecked,
    moves: Sequence[VolumeVerdict],
    names: Mapping[str, str],
    *,
    live: bool,
) -> None:
    """The patched VM uses every destination, in place of the source, and the strategy is
    ``Migration`` exactly for live moves."""
    spec = patched.get("spec") or {}
    volumes = {
        v.get("name"): v
        for v in ((spec.get("template") or {}).get("spec") or {}).get("volumes") or []
    }
    templates = {
        (t.get("metadata") or {}).get("name"): t for t in spec.get("dataVolumeTemplates") or []
    }
    original = {
        (t.get("metadata") or {}).get("name")
        for t in (raw.get("spec") or {}).get("dataVolumeTemplates") or []
    }
    for move in moves:
        target = names[move.volume]
        if _claim_at(volumes.get(move.volume) or {}) != target:
            raise out.error(
                f"after the patch, volume {move.volume} does not use {target!r}", near="claim_path"
            )
        if move.claim in original:
            template = templates.get(target)
            storage = (template or {}).get("spec") or {}
            storage = storage.get("storage") or storage.get("pvc") or {}
            if move.claim in templates or storage.get("storageClassName") != move.to_class:
                raise out.error(
                    f"after the patch, dataVolumeTemplate {move.claim!r} is not "
                    f"renamed to {target!r} with class {move.to_class!r}",
                    near="template",
                    hint="KubeVirt needs the template renamed along with the volume",
                )
    wanted = "Migration" if live else (raw.get("spec") or {}).get("updateVolumesStrategy")
    if spec.get("updateVolumesStrategy") != wanted:
        raise out.error(
            f"after the patch, spec.updateVolumesStrategy is "
            f"{spec.get('updateVolumesStrategy')!r}, expected {wanted!r}",
            near="updateVolumesStrategy",
            hint="live moves set Migration; offline moves leave it alone",
        )
