"""Render one VM's move (DataVolumes + VM JSON patches) from Jinja templates. Pure.

Input is plain data (a ``VMVerdict``, the ``VMInfo`` with its raw object, the ``Snapshot``);
output is plain data (``RenderedVM``: dicts and lists ready to send). No I/O besides reading the
template files, no pykube.

Templates (``templates/`` in a checkout, ``reconciler/_templates`` in a wheel; ``--templates
DIR`` overrides them one file at a time; each documents its variables in a comment at its top):

- ``target-name.j2``        -> the destination claim name (bare text)
- ``datavolume-live.j2``    -> the blank destination DataVolume of a live move
- ``datavolume-offline.j2`` -> the clone DataVolume of an offline move
- ``vm-patch.j2``           -> the RFC 6902 patch that swaps the VM onto the destinations
- ``vm-revert-patch.j2``    -> the patch that swaps it back (rollback)

They run in the sandbox of ``templating`` (StrictUndefined, documented variables and filters
only). Every rendering is parsed and checked (kind, apiVersion, namespace, names, sizes,
ownership annotation, patch shape); the forward patch is applied with ``jsonpatch`` to a copy
of the VM, so ``plan --show-manifests`` can show a real before/after, and the rollback is
proven to restore the VM exactly. Any failure is a ``TemplateError`` naming the template file
and line.

Design choices:

- **The rollback is computed in Python, the template only shapes it.** ``_invert`` derives the
  inverse of whatever the forward patch does (``test`` the value we wrote, then put back the
  old value or remove what we added), by walking the forward ops over the VM. So an overridden
  ``vm-patch.j2`` (say, one that also sets an annotation) gets a correct rollback for free; a
  hand-written inverse template would silently drift from it. ``vm-revert-patch.j2`` receives
  the computed ``ops`` and may reorder or extend them, but the result must still restore the
  VM, which render checks by applying forward, revert and cleanup to the VM's raw object.
- **The rollback does not remove ``spec.updateVolumesStrategy``.** KubeVirt treats a revert of
  the volumes as a *cancellation* only while the strategy is still ``Migration`` (the upstream
  migration controller cancels the same way). Dropping the strategy in the same update would
  turn the revert into a plain volume change of a running VM. Removing the strategy we added is
  therefore a separate patch, ``strategy_cleanup_patch``, to send once the cancellation is
  observed (or after a successful move). It is empty for offline moves and for VMs that already
  had ``Migration``.
- **The default target name hashes the source claim too** (namespace/vm/volume/claim/class),
  not only namespace/vm/volume/class: with ``retention: Keep``, a move A->B->A->B would
  otherwise give the third move the first move's name, which is still held by the kept disk.
  The name stays deterministic and its length bounded (the previous ``-mig-xxxxx`` is stripped).
"""

from __future__ import annotations

import copy
import json
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field

import jsonpatch

from reconciler.errors import Problem, TemplateError
from reconciler.model import Action, PVCInfo, Snapshot, VMInfo, VMVerdict, VolumeVerdict
from reconciler.quantity import parse_quantity
from reconciler.templating import (
    DV_LIVE,
    DV_OFFLINE,
    MAX_NAME,
    TARGET_NAME,
    VM_PATCH,
    VM_REVERT,
    Json,
    Rendered,
    TemplateSet,
    plain,
    render_text,
    render_yaml,
)

DV_API_VERSION = "cdi.kubevirt.io/v1beta1"
MANAGED_BY_LABEL = "app.kubernetes.io/managed-by"
MANAGED_BY = "vm-storage-reconciler"
VM_LABEL = "vmstorage.dev/vm"
PLAN_LABEL = "vmstorage.dev/plan"
SOURCE_CLAIM_ANNOTATION = "vmstorage.dev/source-claim"
STRATEGY_PATH = "/spec/updateVolumesStrategy"
RESOURCE_VERSION_PATH = "/metadata/resourceVersion"

_DNS1123 = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$")
_LABEL_VALUE = re.compile(r"^(([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9])?$")
# Labels CDI/KubeVirt put on the PVCs they create; copying them would misattribute our DV.
_INTERNAL_LABEL_VALUES = {
    ("app", "containerized-data-importer"),
    ("app.kubernetes.io/component", "storage"),
}

Op = dict[str, Json]


# --------------------------------------------------------------------------------------------
# Target names
# --------------------------------------------------------------------------------------------


def valid_name(name: object) -> bool:
    """A DNS-1123 name of at most 63 characters (what CDI accepts for a DataVolume)."""
    return isinstance(name, str) and len(name) <= MAX_NAME and bool(_DNS1123.match(name))


def target_name(
    templates: TemplateSet, *, namespace: str, vm: str, volume: str, claim: str,
    storage_class: str,
) -> str:
    """The destination claim name for moving ``claim`` to ``storage_class``, rendered from
    ``target-name.j2``: deterministic, DNS-1123, at most 63 characters."""
    context = {"namespace": namespace, "vm": vm, "volume": volume, "claim": claim,
               "storage_class": storage_class}
    # The output is the bare name (no YAML to parse: this runs once per moved volume, and
    # thousands of YAML parses were the bulk of a large `plan`).
    template, _, text = render_text(templates, TARGET_NAME, context)
    name = text.strip()
    if not valid_name(name):
        out = Rendered(TARGET_NAME, template, name)
        raise out.error(f"{name!r} (for volume {volume} of VM {namespace}/{vm}) is not a "
                        "DNS-1123 name of at most 63 characters", near="dns_label",
                        hint="render only the name: lowercase letters, digits, '-' and '.', "
                        "starting and ending alphanumeric; cut the base with the dns_label "
                        "filter")
    return name


# --------------------------------------------------------------------------------------------
# The result
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class RenderedVM:
    """Everything to send for one VM's move.

    ``data_volumes``: the DataVolumes to create, in the verdict's volume order.
    ``vm_patch``: the JSON patch that swaps the VM onto them (fails if the VM changed since it
    was observed: its first op tests ``metadata.resourceVersion``).
    ``revert_patch``: the rollback (restores the original claims, template names and classes;
    keeps ``updateVolumesStrategy`` so KubeVirt sees a cancellation).
    ``patched_vm``: the VM as ``vm_patch`` leaves it (for previews and diffs).
    ``target_names``: volume name -> destination claim name.
    ``strategy_cleanup_patch``: removes the ``updateVolumesStrategy`` we added; send it after
    the cancellation (or the move) completed. Empty when there is nothing to remove.
    ``reused_targets``: destinations that already exist and are ours (an earlier attempt left
    them); creating their DataVolume again answers 409, which is expected.
    """

    data_volumes: tuple[dict[str, Json], ...]
    vm_patch: tuple[Op, ...]
    revert_patch: tuple[Op, ...]
    patched_vm: dict[str, Json]
    target_names: Mapping[str, str]
    strategy_cleanup_patch: tuple[Op, ...] = ()
    reused_targets: frozenset[str] = field(default_factory=frozenset)


# --------------------------------------------------------------------------------------------
# render_vm
# --------------------------------------------------------------------------------------------


def render_vm(
    verdict: VMVerdict, vm: VMInfo, snapshot: Snapshot, templates: TemplateSet, *, plan_name: str
) -> RenderedVM:
    """Render the DataVolumes and patches that move ``verdict``'s MoveLive/MoveOffline volumes.

    Raises TemplateError when a template fails, renders something unsafe, or a destination name
    is taken by an object that is not ours. Raises ValueError when the verdict contradicts the
    VM object (a bug upstream, not a user error).
    """
    moves = [v for v in verdict.volumes if v.action in (Action.MOVE_LIVE, Action.MOVE_OFFLINE)]
    raw = plain(vm.raw)
    if not moves:
        return RenderedVM((), (), (), raw, {})
    actions = {v.action for v in moves}
    if len(actions) > 1:
        raise ValueError(f"VM {vm.namespace}/{vm.name}: live and offline moves mixed in one VM")
    live = actions == {Action.MOVE_LIVE}

    names = _target_names(moves, vm, templates)
    reused = _check_targets(moves, names, vm, snapshot)
    data_volumes = tuple(
        _render_data_volume(move, names[move.volume], vm, snapshot, templates,
                            plan_name=plan_name, live=live)
        for move in moves
    )
    context = _patch_context(moves, names, vm, raw, plan_name=plan_name, live=live)
    forward = _render_forward_patch(templates, context, vm)
    patched = _apply(forward, raw)
    _check_patched(forward, patched, raw, moves, names, live=live)
    revert, cleanup = _revert_patches(templates, context, forward, raw, patched)
    return RenderedVM(
        data_volumes=data_volumes,
        vm_patch=tuple(forward.data),
        revert_patch=tuple(revert),
        patched_vm=patched,
        target_names={m.volume: names[m.volume] for m in moves},
        strategy_cleanup_patch=tuple(cleanup),
        reused_targets=frozenset(reused),
    )


@dataclass(frozen=True)
class Targets:
    """The destinations of one VM's moves, decided and checked, without the manifests."""

    target_names: Mapping[str, str]  # volume -> destination claim name (as in RenderedVM)
    reused_targets: frozenset[str] = frozenset()  # destinations that exist and are ours


def plan_targets(
    verdict: VMVerdict, vm: VMInfo, snapshot: Snapshot, templates: TemplateSet
) -> Targets:
    """Name and collision-check the destinations of ``verdict``'s moves (target-name.j2 only).

    What a preview needs, at a fraction of ``render_vm``'s cost; ``render_vm`` decides the same
    names with the same checks. Raises TemplateError like ``render_vm``.
    """
    moves = [v for v in verdict.volumes if v.action in (Action.MOVE_LIVE, Action.MOVE_OFFLINE)]
    names = _target_names(moves, vm, templates)
    reused = _check_targets(moves, names, vm, snapshot)
    return Targets({m.volume: names[m.volume] for m in moves}, frozenset(reused))


def check_distinct_targets(
    rendered: Mapping[tuple[str, str], RenderedVM | Targets],
) -> None:
    """Raise TemplateError when two VMs of one run would create the same destination.

    ``render_vm`` checks one VM against the cluster; this checks VMs against each other.
    """
    seen: dict[tuple[str, str], str] = {}
    problems = []
    for (namespace, vm_name), rendered_vm in sorted(rendered.items()):
        for volume, name in sorted(rendered_vm.target_names.items()):
            owner = seen.setdefault((namespace, name), f"{vm_name}/{volume}")
            if owner != f"{vm_name}/{volume}":
                problems.append(Problem(
                    None, f"destination {namespace}/{name} is wanted by both {owner} and "
                    f"{vm_name}/{volume}", hint="set volumes[].targetName in the plan for one "
                    "of them, or change target-name.j2 so names differ"))
    if problems:
        raise TemplateError(problems)


# -- names ------------------------------------------------------------------------------------


def _target_names(
    moves: Sequence[VolumeVerdict], vm: VMInfo, templates: TemplateSet
) -> dict[str, str]:
    """volume -> destination: the plan's explicit name, else target-name.j2's."""
    names = {}
    for move in moves:
        if move.target_name:
            if not valid_name(move.target_name):
                raise TemplateError([Problem(
                    None, f"VM {vm.namespace}/{vm.name} volume {move.volume}: targetName "
                    f"{move.target_name!r} is not a DNS-1123 name of at most 63 characters",
                    hint="fix volumes[].targetName in the plan")])
            names[move.volume] = move.target_name
        else:
            names[move.volume] = target_name(
                templates, namespace=vm.namespace, vm=vm.name, volume=move.volume,
                claim=move.claim, storage_class=move.to_class)
    return names


def _check_targets(
    moves: Sequence[VolumeVerdict], names: Mapping[str, str], vm: VMInfo, snapshot: Snapshot
) -> set[str]:
    """Raise TemplateError for destinations that collide; return those that are our leftovers.

    A destination collides with: another destination of this VM; a claim or dataVolumeTemplate
    any VM of the namespace refers to; a DataVolume or PVC that is not ours for this source
    (ours = annotated ``vmstorage.dev/source-claim: <this claim>``; a PVC also counts as ours
    when the same-name DataVolume is, since CDI made it).
    """
    problems: list[Problem] = []
    reused: set[str] = set()
    referenced = snapshot.claim_references
    seen: dict[str, str] = {}
    for move in moves:
        name = names[move.volume]
        where = f"VM {vm.namespace}/{vm.name} volume {move.volume}: destination {name!r}"
        hint = ("delete or rename that object, or set volumes[].targetName in the plan "
                "(or override target-name.j2) to choose another name")
        if seen.setdefault(name, move.volume) != move.volume:
            problems.append(Problem(None, f"{where} is also the destination of volume "
                                    f"{seen[name]}", hint=hint))
            continue
        if (vm.namespace, name) in referenced:
            problems.append(Problem(None, f"{where} is already used by "
                                    f"{referenced[(vm.namespace, name)]}", hint=hint))
            continue
        holder = _foreign_holder(snapshot, vm.namespace, name, move.claim)
        if holder:
            problems.append(Problem(None, f"{where} collides with the existing {holder}, which "
                                    "this tool did not create for this disk", hint=hint))
        elif (vm.namespace, name) in snapshot.pvcs or (vm.namespace, name) in snapshot.data_volumes:
            reused.add(name)
    if problems:
        raise TemplateError(problems)
    return reused


def _foreign_holder(snapshot: Snapshot, namespace: str, name: str, claim: str) -> str:
    """'' when ``name`` is free or holds our leftover for ``claim``; else what holds it."""
    dv = snapshot.data_volumes.get((namespace, name))
    pvc = snapshot.pvcs.get((namespace, name))
    dv_ours = dv is not None and dv.annotations.get(SOURCE_CLAIM_ANNOTATION) == claim
    if dv is not None and not dv_ours:
        return f"DataVolume {namespace}/{name}"
    if pvc is not None and not dv_ours and pvc.annotations.get(SOURCE_CLAIM_ANNOTATION) != claim:
        return f"PersistentVolumeClaim {namespace}/{name}"
    return ""


# -- DataVolumes ------------------------------------------------------------------------------


def copied_labels(labels: Mapping[str, str]) -> dict[str, str]:
    """The source's labels worth keeping on the destination: without CDI/KubeVirt-internal
    ones (``*kubevirt.io/*`` keys, CDI's app/component markers) and without ours, which the
    templates set afresh."""
    kept = {}
    for key, value in labels.items():
        prefix = key.split("/", 1)[0] if "/" in key else ""
        internal = prefix == "kubevirt.io" or prefix.endswith(".kubevirt.io")
        ours = prefix == "vmstorage.dev" or key == MANAGED_BY_LABEL
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
) -> dict[str, Json]:
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


def _render_data_volume(
    move: VolumeVerdict, name: str, vm: VMInfo, snapshot: Snapshot, templates: TemplateSet,
    *, plan_name: str, live: bool,
) -> dict[str, Json]:
    if live and move.size_bytes <= 0:
        raise TemplateError([Problem(
            None, f"VM {vm.namespace}/{vm.name} volume {move.volume}: the size of {move.claim} "
            "is unknown, so the blank destination cannot be sized",
            hint="the source PVC must have spec.resources.requests.storage")])
    context = _dv_context(move, name, vm, snapshot, plan_name=plan_name)
    out = render_yaml(templates, DV_LIVE if live else DV_OFFLINE, context)
    _check_data_volume(out, move, name, vm.namespace, live=live)
    return dict(out.data)


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
        raise out.error(f"metadata.name is {meta.get('name')!r}, expected the destination "
                        f"{name!r}", near="name:", hint="use the `name` variable")
    if meta.get("namespace") != namespace:
        raise out.error(f"metadata.namespace is {meta.get('namespace')!r}, expected "
                        f"{namespace!r}", near="namespace")
    _check_string_map(out, meta, "labels", label_values=True)
    annotations = _check_string_map(out, meta, "annotations", label_values=False)
    if annotations.get(SOURCE_CLAIM_ANNOTATION) != move.claim:
        raise out.error(f"annotation {SOURCE_CLAIM_ANNOTATION} must be {move.claim!r}",
                        near=SOURCE_CLAIM_ANNOTATION, hint="it marks the destination as ours "
                        "so an interrupted run can resume with it")
    _check_dv_source(out, spec, move, namespace, live=live)
    _check_dv_storage(out, spec, move, live=live)


def _mapping(out: Rendered, obj: Mapping[str, Json], key: str) -> Mapping[str, Json]:
    value = obj.get(key)
    if not isinstance(value, dict):
        raise out.error(f"{key} must be a mapping, got {value!r}", near=f"{key}:")
    return value


def _check_string_map(
    out: Rendered, meta: Mapping[str, Json], key: str, *, label_values: bool
) -> Mapping[str, str]:
    values = meta.get(key) or {}
    if not isinstance(values, dict):
        raise out.error(f"metadata.{key} must be a mapping", near=f"{key}:")
    for k, v in values.items():
        if not isinstance(v, str):
            raise out.error(f"metadata.{key}[{k!r}] is {v!r}, not a string", near=str(k),
                            hint='quote it ("true") or use the to_json filter')
        if label_values and (len(v) > 63 or not _LABEL_VALUE.match(v)):
            raise out.error(f"label {k}={v!r} is not a valid label value", near=str(k),
                            hint="at most 63 characters: alphanumerics, '-', '_' and '.'; "
                            "the dns_label filter cuts long names")
    return values


def _check_dv_source(
    out: Rendered, spec: Mapping[str, Json], move: VolumeVerdict, namespace: str, *, live: bool
) -> None:
    source = _mapping(out, spec, "source")
    if live:
        if "blank" not in source:
            raise out.error("a live move's destination must be blank (spec.source.blank), "
                            "KubeVirt copies the data", near="source")
        return
    pvc = source.get("pvc")
    if not isinstance(pvc, dict) or pvc.get("name") != move.claim or \
            pvc.get("namespace", namespace) != namespace:
        raise out.error(f"spec.source.pvc must clone {namespace}/{move.claim}, got {pvc!r}",
                        near="pvc", hint="cloning another disk would lose data")


def _check_dv_storage(
    out: Rendered, spec: Mapping[str, Json], move: VolumeVerdict, *, live: bool
) -> None:
    storage = spec.get("storage") if "storage" in spec else spec.get("pvc")
    if not isinstance(storage, dict):
        raise out.error("spec.storage (or spec.pvc) must be a mapping", near="storage")
    if storage.get("storageClassName") != move.to_class:
        raise out.error(f"storageClassName is {storage.get('storageClassName')!r}, expected "
                        f"{move.to_class!r}", near="storageClassName")
    requested = ((storage.get("resources") or {}).get("requests") or {}).get("storage")
    if requested is None and (move.size_bytes <= 0 or not live):
        return  # a clone without a size: CDI sizes it exactly from its source
    try:
        if not isinstance(requested, str | int):
            raise ValueError(f"not a quantity: {requested!r}")
        size = parse_quantity(requested)
    except ValueError as exc:
        raise out.error(f"resources.requests.storage {requested!r} is not a quantity",
                        near="storage:") from exc
    if size < move.size_bytes:
        raise out.error(f"resources.requests.storage {requested!r} is smaller than the source "
                        f"({move.size_bytes} bytes)", near="storage:",
                        hint="a smaller destination fails the copy; use size_bytes | quantity")


# -- VM patch ---------------------------------------------------------------------------------


def _patch_context(
    moves: Sequence[VolumeVerdict], names: Mapping[str, str], vm: VMInfo, raw: Json,
    *, plan_name: str, live: bool,
) -> dict[str, Json]:
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


def _move_context(move: VolumeVerdict, target: str, vm: VMInfo, spec: Json) -> dict[str, Json]:
    """Where ``move`` lives in the VM object, as JSON pointers (see vm-patch.j2)."""
    volumes = ((spec.get("template") or {}).get("spec") or {}).get("volumes") or []
    index = next((i for i, v in enumerate(volumes) if v.get("name") == move.volume), None)
    if index is None:
        raise ValueError(f"VM {vm.namespace}/{vm.name} has no volume {move.volume!r}")
    volume = volumes[index]
    kind, key = (("dataVolume", "name") if "dataVolume" in volume
                 else ("persistentVolumeClaim", "claimName"))
    if (volume.get(kind) or {}).get(key) != move.claim:
        raise ValueError(f"VM {vm.namespace}/{vm.name} volume {move.volume!r} does not use "
                         f"claim {move.claim!r} (verdict and VM disagree)")
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


def _template_context(claim: str, spec: Json, vm: VMInfo) -> dict[str, Json] | None:
    """The dataVolumeTemplate that creates ``claim``, if any: its pointers and old class."""
    templates = spec.get("dataVolumeTemplates") or []
    index = next((j for j, t in enumerate(templates)
                  if (t.get("metadata") or {}).get("name") == claim), None)
    if index is None:
        return None
    dv_spec = templates[index].get("spec") or {}
    storage_key = "storage" if "storage" in dv_spec else "pvc" if "pvc" in dv_spec else None
    if storage_key is None:
        raise ValueError(f"VM {vm.namespace}/{vm.name} dataVolumeTemplate {claim!r} has "
                         "neither spec.storage nor spec.pvc")
    path = f"/spec/dataVolumeTemplates/{index}"
    return {
        "index": index,
        "name_path": f"{path}/metadata/name",
        "class_path": f"{path}/spec/{storage_key}/storageClassName",
        "old_class": (dv_spec[storage_key] or {}).get("storageClassName"),
    }


def _ops(out: Rendered) -> list[Op]:
    """The rendered output as a JSON patch (a list of operations), or a TemplateError."""
    data = [] if out.data is None else out.data
    if not isinstance(data, list) or not all(isinstance(op, dict) for op in data):
        raise out.error("expected a list of JSON patch operations",
                        hint='render one `- {"op": ..., "path": ..., ...}` per line')
    try:
        jsonpatch.JsonPatch(data)
    except (jsonpatch.JsonPatchException, jsonpatch.JsonPointerException) as exc:
        raise out.error(f"not a valid JSON patch: {exc}", hint="RFC 6902 operations") from exc
    return data


def _render_forward_patch(
    templates: TemplateSet, context: Mapping[str, Json], vm: VMInfo
) -> Rendered:
    out = render_yaml(templates, VM_PATCH, context)
    ops = _ops(out)
    first = ops[0] if ops else {}
    if first != {"op": "test", "path": RESOURCE_VERSION_PATH, "value": vm.resource_version}:
        raise out.error("the first operation must test /metadata/resourceVersion against "
                        f"{vm.resource_version!r}", near="resourceVersion",
                        hint="it makes a concurrent edit of the VM fail the patch instead of "
                        "being overwritten")
    return Rendered(out.name, out.template, ops)


def _apply(out: Rendered, document: Json) -> dict[str, Json]:
    """Apply ``out``'s ops one by one to a copy of ``document``; a failing op is named."""
    doc = copy.deepcopy(document)
    for number, op in enumerate(out.data, start=1):
        try:
            # in place: ``doc`` is already our own copy, and a copy per op costs O(VM size)
            doc = jsonpatch.apply_patch(doc, [op], in_place=True)
        except (jsonpatch.JsonPatchException, jsonpatch.JsonPointerException, KeyError,
                IndexError, TypeError, ValueError) as exc:
            raise out.error(f"operation {number} {json.dumps(op, sort_keys=True)} does not "
                            f"apply to the VM: {exc}", near=str(op.get("path", "")),
                            hint="paths are JSON pointers into the VM object as observed") \
                from exc
    result: dict[str, Json] = doc
    return result


def _claim_at(volume: Mapping[str, Json]) -> Json:
    for kind, key in (("dataVolume", "name"), ("persistentVolumeClaim", "claimName")):
        if kind in volume:
            return (volume[kind] or {}).get(key)
    return None


def _check_patched(
    out: Rendered, patched: Json, raw: Json, moves: Sequence[VolumeVerdict],
    names: Mapping[str, str], *, live: bool,
) -> None:
    """The patched VM uses every destination, in place of the source, and the strategy is
    ``Migration`` exactly for live moves."""
    spec = patched.get("spec") or {}
    volumes = {v.get("name"): v for v in
               ((spec.get("template") or {}).get("spec") or {}).get("volumes") or []}
    templates = {(t.get("metadata") or {}).get("name"): t
                 for t in spec.get("dataVolumeTemplates") or []}
    original = {(t.get("metadata") or {}).get("name")
                for t in (raw.get("spec") or {}).get("dataVolumeTemplates") or []}
    for move in moves:
        target = names[move.volume]
        if _claim_at(volumes.get(move.volume) or {}) != target:
            raise out.error(f"after the patch, volume {move.volume} does not use {target!r}",
                            near="claim_path")
        if move.claim in original:
            template = templates.get(target)
            storage = ((template or {}).get("spec") or {})
            storage = storage.get("storage") or storage.get("pvc") or {}
            if move.claim in templates or storage.get("storageClassName") != move.to_class:
                raise out.error(f"after the patch, dataVolumeTemplate {move.claim!r} is not "
                                f"renamed to {target!r} with class {move.to_class!r}",
                                near="template",
                                hint="KubeVirt needs the template renamed along with the volume")
    wanted = "Migration" if live else (raw.get("spec") or {}).get("updateVolumesStrategy")
    if spec.get("updateVolumesStrategy") != wanted:
        raise out.error(f"after the patch, spec.updateVolumesStrategy is "
                        f"{spec.get('updateVolumesStrategy')!r}, expected {wanted!r}",
                        near="updateVolumesStrategy",
                        hint="live moves set Migration; offline moves leave it alone")


# -- rollback ---------------------------------------------------------------------------------


def _pointer(path: str) -> list[str]:
    if path == "":
        return []
    if not path.startswith("/"):
        raise ValueError(f"not a JSON pointer: {path!r}")
    return [p.replace("~1", "/").replace("~0", "~") for p in path[1:].split("/")]


def _parent(doc: Json, path: str) -> tuple[Json, str]:
    """The container holding ``path``'s last member, and that member's key."""
    parts = _pointer(path)
    if not parts:
        raise ValueError("an operation on the whole document cannot be inverted")
    node = doc
    for part in parts[:-1]:
        node = node[int(part)] if isinstance(node, list) else node[part]
    return node, parts[-1]


def _invert(ops: Iterable[Op], document: Json) -> tuple[list[Op], list[Op]]:
    """The inverse of ``ops`` applied to ``document``: (revert ops, strategy cleanup ops).

    Each change becomes "test the value we wrote, then restore the old value (or remove what we
    added)", in reverse order; ``test`` ops vanish (the resourceVersion will have moved on).
    Changes of ``/spec/updateVolumesStrategy`` go to the cleanup list (see the module doc).
    Supported: add/replace/remove of object members, replace of array items. Raises ValueError
    for anything else (an insertion into an array, move, copy).
    """
    doc = copy.deepcopy(document)
    revert: list[Op] = []
    cleanup: list[Op] = []
    for op in ops:
        kind, path = op["op"], op.get("path", "")
        if kind == "test":
            continue
        if kind not in ("add", "replace", "remove"):
            raise ValueError(f"{kind!r} operations cannot be rolled back automatically")
        parent, key = _parent(doc, path)
        if isinstance(parent, list) and kind != "replace":
            raise ValueError(f"{kind} into an array ({path}) cannot be rolled back automatically")
        existed = (0 <= int(key) < len(parent)) if isinstance(parent, list) else key in parent
        old = copy.deepcopy(parent[int(key)] if isinstance(parent, list) else parent.get(key))
        doc = jsonpatch.apply_patch(doc, [op], in_place=True)
        if kind != "remove" and existed and old == op.get("value"):
            continue  # writes what was there already: nothing to undo
        inverse: list[Op] = []
        if kind != "remove":
            inverse.append({"op": "test", "path": path, "value": copy.deepcopy(op["value"])})
        if not existed:
            inverse.append({"op": "remove", "path": path})
        else:
            inverse.append({"op": "add" if kind == "remove" else "replace", "path": path,
                            "value": old})
        target = cleanup if path == STRATEGY_PATH else revert
        target[:0] = inverse
    return revert, cleanup


def _revert_patches(
    templates: TemplateSet, context: Mapping[str, Json], forward: Rendered, raw: Json,
    patched: Json,
) -> tuple[list[Op], list[Op]]:
    """Compute the inverse, shape it with vm-revert-patch.j2, and prove it restores the VM."""
    try:
        inverse, cleanup = _invert(forward.data, raw)
    except (ValueError, KeyError, IndexError, TypeError) as exc:
        raise forward.error(f"the patch cannot be rolled back: {exc}",
                            hint="use add/replace/remove on object fields only") from exc
    out = render_yaml(templates, VM_REVERT, {**context, "ops": inverse})
    revert = _ops(out)
    restored = _apply(Rendered(out.name, out.template, revert), patched)
    cleaned = _apply(Rendered(forward.name, forward.template, cleanup), restored)
    if cleaned != raw:
        raise out.error("the rollback does not restore the VM as it was observed",
                        hint="keep the computed `ops`; extra operations must be undone too")
    return revert, cleanup
