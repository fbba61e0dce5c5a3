"""The scope of a move: one allow-list for everything a move creates and changes. Pure.

A move may create its destination DataVolumes and patch the VM's claim names, and nothing
else. ``scope_problems`` checks that of a move's manifests and patch operations, whoever
produced them: ``render.move.render_vm`` runs it on every rendering (so a ``--templates``
override that adds a VM patch operation or a DataVolume field fails ``plan`` and ``apply``
before anything is written), and ``apply`` runs it on a journal read back from a VM before it
resumes the move (the journal annotation can be written by anyone who may patch the VM, so it
is untrusted input). Standard library only: no I/O, no template engine, no cluster.

What is allowed is exactly what the shipped templates (``templates/*.j2``) can render, and no
broader:

- **The moves** (volume, source claim, target claim, target class): volumes, sources and
  targets each distinct, a target never a source, every claim name a valid object name (they
  end up in API paths), ``flow`` "live" or "offline".
- **The VM**: every moved volume exists, is a claim (``dataVolume`` or
  ``persistentVolumeClaim``) and uses its source claim now (``swapped``: its source or its
  target); no other volume of the VM uses a target, and no dataVolumeTemplate is named after a
  target except (``swapped``) the moved volume's own, renamed.
- **DataVolumes**: one per target, named exactly the target; ``cdi.kubevirt.io/v1beta1``
  ``DataVolume``; ``metadata`` only ``name``, ``namespace`` (absent or the VM's), ``labels``
  and ``annotations`` (so no ``ownerReferences``, ``finalizers``, ``generateName``); labels
  and annotations string to string, none of KubeVirt's or CDI's (``*kubevirt.io/*`` keys,
  CDI's app/component markers: ``datavolume.copied_labels`` never copies them) except the
  three annotations the templates set, with the values they set; ``vmstorage.dev/source-claim``
  naming the move's source; ``spec`` only ``source`` and one of ``storage``/``pvc``;
  ``source`` exactly one kind: live ``{blank: {}}``, offline ``{pvc: {name: <the move's
  source claim>, namespace: <absent or the VM's>}}`` (no ``sourceRef``, no
  ``dataSourceRef``: the templates never render them); ``storage``/``pvc`` only
  ``storageClassName`` (the move's target class), ``resources.requests.storage``,
  ``volumeMode`` and ``accessModes`` (no ``dataSource``/``dataSourceRef``, ``selector``,
  ``volumeName``).
- **Forward operations** (the swap, without its leading resourceVersion ``test``): ``test``
  anywhere (a test can only make the patch fail); ``add``/``replace`` of a moved volume's
  claim field (``/spec/template/spec/volumes/<i>/dataVolume/name`` or
  ``.../persistentVolumeClaim/claimName``, whichever the volume has, ``<i>`` its index in the
  VM) to its target; of the dataVolumeTemplate creating its source
  (``/spec/dataVolumeTemplates/<j>/metadata/name`` to the target,
  ``.../spec/storage/storageClassName`` or ``.../spec/pvc/storageClassName``, whichever the
  template has, to the target class); and, live only, of ``/spec/updateVolumesStrategy`` to
  ``Migration``. Every moved volume's claim is set. Nothing else: not another volume (a
  cloud-init disk), not ``runStrategy``, not metadata, not a template's ``source``.
- **Revert operations**: ``test`` anywhere; on the paths the forward operations change (never
  the strategy, which is the cleanup's), the original values: the source claim for claim and
  template names, the template's original class (or its removal when it had none).
- **Cleanup operations**: ``test`` anywhere; live only, ``remove`` of
  ``/spec/updateVolumesStrategy``, or putting back the value the VM had (``Replacement``).

What it proves about the sources: with ``swapped=False``, each move's source is the claim the
VM's named volume uses *now*, so a clone reads, and a revert restores, only a disk this VM
uses, in its namespace. With ``swapped=True`` a volume that already uses its target proves
nothing about its source beyond the namespace (every clone and restore stays in the VM's
namespace, and the source is not a claim another volume of the VM uses): the caller must
prove it otherwise (the journal written before the swap, the target DataVolume's
``vmstorage.dev/source-claim``), and must not delete a source on this function's word alone.
It does not look at the cluster: whether a target name is free, or a source used by another
VM, is for the caller (``render.targets`` at render time).
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from reconciler.model.names import MANAGED_BY, MANAGED_BY_LABEL, SOURCE_CLAIM_ANNOTATION
from reconciler.model.text import shown

Move = tuple[str, str, str, str]
"""(volume name, source claim, target claim, target storage class)."""

LIVE, OFFLINE = "live", "offline"
DV_API_VERSION = "cdi.kubevirt.io/v1beta1"
STRATEGY_PATH = "/spec/updateVolumesStrategy"
MIGRATION = "Migration"
STRATEGIES = frozenset({"Replacement", MIGRATION})
"""KubeVirt's spec.updateVolumesStrategy values."""

# Where each problem comes from (``ScopeProblem.part``): render maps them to template files.
MOVES, VM, DATA_VOLUMES, FORWARD, REVERT, CLEANUP = (
    "moves",
    "vm",
    "dataVolumes",
    "forward",
    "revert",
    "cleanup",
)

_DV_KEYS = frozenset({"apiVersion", "kind", "metadata", "spec"})
_META_KEYS = frozenset({"name", "namespace", "labels", "annotations"})
_SPEC_KEYS = frozenset({"source", "storage", "pvc"})
_STORAGE_KEYS = frozenset({"storageClassName", "resources", "volumeMode", "accessModes"})
_VOLUME_MODES = frozenset({"Block", "Filesystem"})
_ACCESS_MODES = frozenset({"ReadWriteOnce", "ReadOnlyMany", "ReadWriteMany", "ReadWriteOncePod"})
# The KubeVirt/CDI annotations the shipped DataVolume templates set, with their values.
_CDI_ANNOTATIONS = {
    "cdi.kubevirt.io/allowClaimAdoption": "true",
    "cdi.kubevirt.io/storage.bind.immediate.requested": "true",
    "cdi.kubevirt.io/storage.deleteAfterCompletion": "false",
}
# CDI's markers on the PVCs it creates (``datavolume.copied_labels`` never copies them).
_CDI_LABEL_VALUES = {
    ("app", "containerized-data-importer"),
    ("app.kubernetes.io/component", "storage"),
}
_OP_KEYS = frozenset({"op", "path", "value"})
_SETTERS = frozenset({"add", "replace"})
# A DNS-1123 subdomain: what the API server accepts as a PVC (and DataVolume) name.
_NAME = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$")
_MAX_SOURCE = 253
_MAX_TARGET = 63  # CDI's limit for a DataVolume (render.targets.valid_name)


@dataclass(frozen=True)
class ScopeProblem:
    """One thing out of scope: ``part`` (``MOVES``, ``VM``, ``DATA_VOLUMES``, ``FORWARD``,
    ``REVERT``, ``CLEANUP``), the message, and ``near``: a key or path to look for in the
    template that produced it (for error locations)."""

    part: str
    message: str
    near: str = ""


def scope_problems(
    *,
    namespace: str,
    vm: Mapping[str, Any],
    moves: Sequence[tuple[str, str, str, str]],
    flow: str,
    data_volumes: Sequence[Mapping[str, Any]],
    forward_ops: Sequence[Mapping[str, Any]],
    revert_ops: Sequence[Mapping[str, Any]],
    cleanup_ops: Sequence[Mapping[str, Any]],
    swapped: bool = False,
) -> list[str]:
    """Everything in a move's manifests and operations outside its scope, one plain message
    per problem (empty: in scope). See the module docstring for the rules and what they prove.

    ``namespace``: the VM's. ``vm``: its raw object as it is now (before the swap for a
    render). ``moves``: (volume, source claim, target claim, target class). ``flow``: "live"
    or "offline". ``data_volumes``: the DataVolumes to create. ``forward_ops``: the swap
    patch without its leading resourceVersion test; ``revert_ops``, ``cleanup_ops``: the
    rollback and the strategy cleanup. ``swapped``: the VM may already use the targets (a
    resume after the swap).
    """
    return [
        p.message
        for p in scope_check(
            namespace=namespace,
            vm=vm,
            moves=moves,
            flow=flow,
            data_volumes=data_volumes,
            forward_ops=forward_ops,
            revert_ops=revert_ops,
            cleanup_ops=cleanup_ops,
            swapped=swapped,
        )
    ]


def scope_check(
    *,
    namespace: str,
    vm: Mapping[str, Any],
    moves: Sequence[tuple[str, str, str, str]],
    flow: str,
    data_volumes: Sequence[Mapping[str, Any]],
    forward_ops: Sequence[Mapping[str, Any]],
    revert_ops: Sequence[Mapping[str, Any]],
    cleanup_ops: Sequence[Mapping[str, Any]],
    swapped: bool = False,
) -> list[ScopeProblem]:
    """``scope_problems`` with each problem's part and location (what render reports)."""
    scope = _Scope(namespace, vm, tuple(moves), flow, swapped)
    problems = scope.check_moves()
    if any(p.part == MOVES for p in problems):
        return problems  # the moves themselves are out of shape: nothing to compare with
    problems += scope.check_vm()
    problems += scope.check_data_volumes(data_volumes)
    problems += scope.check_forward(forward_ops)
    problems += scope.check_revert(revert_ops, forward_ops)
    problems += scope.check_cleanup(cleanup_ops)
    return problems


# --------------------------------------------------------------------------------------------
# The scope of one move
# --------------------------------------------------------------------------------------------


def _map(value: object) -> Mapping[str, Any]:
    return value if isinstance(value, Mapping) else {}


def _list(value: object) -> Sequence[Any]:
    return value if isinstance(value, list | tuple) else ()


def _claim_field(volume: Mapping[str, Any]) -> tuple[str, str] | None:
    """(kind, key) of a volume's claim reference, as vm-patch.j2 is given it."""
    if "dataVolume" in volume:
        return "dataVolume", "name"
    if "persistentVolumeClaim" in volume:
        return "persistentVolumeClaim", "claimName"
    return None


def _claim_of(volume: Mapping[str, Any]) -> object:
    where = _claim_field(volume)
    return None if where is None else _map(volume.get(where[0])).get(where[1])


def _op_text(op: object) -> str:
    try:
        text = json.dumps(op, sort_keys=True, default=repr)
    except (TypeError, ValueError):  # circular, or keys json cannot write
        text = repr(op)
    return shown(text, 200)


@dataclass(frozen=True)
class _Slot:
    """A path a forward op may set, the value it must set, and what a revert puts back."""

    what: str
    forward: object
    revert: tuple[object, ...] | None  # the values a revert may restore (None: any name)
    removable: bool = False  # a revert may remove it (a class the template did not have)


class _Scope:
    def __init__(
        self,
        namespace: str,
        vm: Mapping[str, Any],
        moves: tuple[Move, ...],
        flow: str,
        swapped: bool,
    ) -> None:
        self.namespace, self.vm, self.moves = namespace, vm, moves
        self.flow, self.swapped = flow, swapped
        spec = _map(vm.get("spec"))
        self.spec = spec
        self.volumes = [
            _map(v) for v in _list(_map(_map(spec.get("template")).get("spec")).get("volumes"))
        ]
        self.templates = [_map(t) for t in _list(spec.get("dataVolumeTemplates"))]
        self.slots: dict[str, _Slot] = {}
        self.outside: set[str] = set()  # forward paths reported out of scope

    # -- the moves and the VM ----------------------------------------------------------------

    def check_moves(self) -> list[ScopeProblem]:
        problems: list[ScopeProblem] = []

        def bad(message: str) -> None:
            problems.append(ScopeProblem(MOVES, message))

        if self.flow not in (LIVE, OFFLINE):
            bad(f"flow is {shown(self.flow, 40)!r}, expected 'live' or 'offline'")
        if not isinstance(self.namespace, str) or not _NAME.match(self.namespace):
            bad(f"namespace {shown(self.namespace, 80)!r} is not a valid namespace name")
        seen: dict[str, set[str]] = {"volume": set(), "source": set(), "target": set()}
        for number, move in enumerate(self.moves, start=1):
            if not (isinstance(move, tuple | list) and len(move) == 4):
                bad(f"move {number} is not (volume, source, target, class): {_op_text(move)}")
                continue
            if not all(isinstance(part, str) and part for part in move):
                bad(f"move {number} has an empty or non-string field: {_op_text(list(move))}")
                continue
            volume, source, target, _ = move
            where = f"move {number} (volume {shown(volume, 80)!r})"
            if len(source) > _MAX_SOURCE or not _NAME.match(source):
                bad(f"{where}: source {shown(source, 80)!r} is not a valid claim name")
            if len(target) > _MAX_TARGET or not _NAME.match(target):
                bad(f"{where}: target {shown(target, 80)!r} is not a valid DataVolume name")
            if target == source:
                bad(f"{where}: the target is the source {shown(source, 80)!r}")
            for kind, value in (("volume", volume), ("source", source), ("target", target)):
                if value in seen[kind]:
                    bad(f"{where}: {kind} {shown(value, 80)!r} appears in two moves")
                seen[kind].add(value)
        for move in self.moves:
            target = move[2] if isinstance(move, tuple | list) and len(move) == 4 else None
            if isinstance(target, str) and target in seen["source"]:
                bad(f"target {shown(target, 80)!r} is also a move's source")
        return problems

    def check_vm(self) -> list[ScopeProblem]:
        problems: list[ScopeProblem] = []
        names = [v.get("name") for v in self.volumes]
        moved = {m[0] for m in self.moves}
        for volume, source, target, to_class in self.moves:
            where = f"volume {shown(volume, 80)!r}"
            if volume not in names:
                problems.append(ScopeProblem(VM, f"{where}: the VM has no such volume"))
                continue
            index = names.index(volume)
            entry = self.volumes[index]
            field = _claim_field(entry)
            if field is None:
                problems.append(ScopeProblem(VM, f"{where}: not a dataVolume or claim volume"))
                continue
            claim = _claim_of(entry)
            allowed = (source, target) if self.swapped else (source,)
            if claim not in allowed:
                expected = " or ".join(repr(c) for c in allowed)
                problems.append(
                    ScopeProblem(
                        VM,
                        f"{where} uses claim {shown(claim, 80)!r}, not {expected}: the move's "
                        "source must be the claim the VM uses",
                    )
                )
            self._add_slots(index, field, (volume, source, target, to_class))
        targets = {m[2] for m in self.moves}
        for entry in self.volumes:
            claim, name = _claim_of(entry), entry.get("name")
            if (
                isinstance(claim, str)
                and claim in targets
                and not (isinstance(name, str) and name in moved)
            ):
                problems.append(
                    ScopeProblem(
                        VM,
                        f"target {shown(claim, 80)!r} is the claim of volume "
                        f"{shown(name, 80)!r}, which does not move",
                    )
                )
        own = {self._template_index(m[1], m[2]) for m in self.moves} if self.swapped else set()
        for j, template in enumerate(self.templates):
            name = _map(template.get("metadata")).get("name")
            if isinstance(name, str) and name in targets and j not in own:
                problems.append(
                    ScopeProblem(
                        VM, f"dataVolumeTemplate {j} is already named after target {name!r}"
                    )
                )
        return problems

    def _template_index(self, source: str, target: str) -> int | None:
        """The dataVolumeTemplate creating ``source`` (``target`` once swapped), if any."""
        wanted = (source, target) if self.swapped else (source,)
        for name in wanted:
            for j, template in enumerate(self.templates):
                if _map(template.get("metadata")).get("name") == name:
                    return j
        return None

    def _add_slots(self, index: int, field: tuple[str, str], move: Move) -> None:
        volume, source, target, to_class = move
        claim_path = f"/spec/template/spec/volumes/{index}/{field[0]}/{field[1]}"
        self.slots[claim_path] = _Slot(f"volume {volume}'s claim", target, (source,))
        j = self._template_index(source, target)
        if j is None:
            return
        template = self.templates[j]
        base = f"/spec/dataVolumeTemplates/{j}"
        self.slots[f"{base}/metadata/name"] = _Slot(
            f"the name of dataVolumeTemplate {j}", target, (source,)
        )
        dv_spec = _map(template.get("spec"))
        key = "storage" if "storage" in dv_spec else "pvc" if "pvc" in dv_spec else None
        if key is None:
            return
        old = _map(dv_spec.get(key)).get("storageClassName")
        what = f"the class of dataVolumeTemplate {j}"
        if _map(template.get("metadata")).get("name") == source:
            # Before the swap the original class is in the VM: a revert restores exactly it, or
            # removes the class the template did not have.
            restore = (old,) if old is not None else ()
            slot = _Slot(what, to_class, restore, removable=old is None)
        else:  # after it, the VM holds ours and the original is unknown: any name, or none
            slot = _Slot(what, to_class, None, removable=True)
        self.slots[f"{base}/spec/{key}/storageClassName"] = slot

    # -- DataVolumes -------------------------------------------------------------------------

    def check_data_volumes(self, data_volumes: Sequence[Mapping[str, Any]]) -> list[ScopeProblem]:
        problems: list[ScopeProblem] = []
        by_target = {m[2]: m for m in self.moves}
        seen: set[str] = set()
        for number, dv in enumerate(data_volumes, start=1):
            if not isinstance(dv, Mapping):
                problems.append(ScopeProblem(DATA_VOLUMES, f"DataVolume {number} is not a mapping"))
                continue
            name = _map(dv.get("metadata")).get("name")
            where = f"DataVolume {number} ({shown(name, 80)!r})"
            move = by_target.get(name) if isinstance(name, str) else None
            if move is None:
                problems.append(
                    ScopeProblem(
                        DATA_VOLUMES,
                        f"{where}: not a target of the move (targets: "
                        f"{', '.join(sorted(by_target)) or 'none'})",
                        "name:",
                    )
                )
            elif move[2] in seen:
                problems.append(ScopeProblem(DATA_VOLUMES, f"{where}: a second DataVolume for it"))
            else:
                seen.add(move[2])
            problems += [
                ScopeProblem(DATA_VOLUMES, f"{where}: {message}", f"{near}:")
                for message, near in self._dv_problems(dv, move)
            ]
        for target in sorted(set(by_target) - seen):
            problems.append(ScopeProblem(DATA_VOLUMES, f"no DataVolume for target {target!r}"))
        return problems

    def _dv_problems(self, dv: Mapping[str, Any], move: Move | None) -> Iterable[tuple[str, str]]:
        for key in sorted(set(dv) - _DV_KEYS, key=str):
            yield f"field {shown(key, 60)} is not allowed", str(key)
        if dv.get("apiVersion") != DV_API_VERSION or dv.get("kind") != "DataVolume":
            yield (
                f"is {shown(dv.get('apiVersion'), 60)}/{shown(dv.get('kind'), 60)}, expected "
                f"{DV_API_VERSION}/DataVolume",
                "kind",
            )
        meta = dv.get("metadata")
        if not isinstance(meta, Mapping):
            yield "metadata is not a mapping", "metadata"
            meta = {}
        for key in sorted(set(meta) - _META_KEYS, key=str):
            yield f"metadata.{shown(key, 60)} is not allowed", str(key)
        if meta.get("namespace", self.namespace) != self.namespace:
            yield (
                f"metadata.namespace is {shown(meta.get('namespace'), 80)!r}, not the VM's "
                f"{self.namespace!r}",
                "namespace",
            )
        yield from self._labels(meta.get("labels"))
        yield from self._annotations(meta.get("annotations"), move)
        spec = dv.get("spec")
        if not isinstance(spec, Mapping):
            yield "spec is not a mapping", "spec"
            return
        for key in sorted(set(spec) - _SPEC_KEYS, key=str):
            yield f"spec.{shown(key, 60)} is not allowed", str(key)
        yield from self._source(spec.get("source"), move)
        keys = [k for k in ("storage", "pvc") if k in spec]
        if len(keys) != 1:
            yield "spec must have exactly one of storage and pvc", "storage"
        for key in keys:
            yield from self._storage(key, spec.get(key), move)

    def _string_map(self, what: str, values: object) -> Iterable[tuple[str, str]]:
        if values is None:
            return
        if not isinstance(values, Mapping):
            yield f"metadata.{what} is not a mapping", what
            return
        for key, value in values.items():
            if not isinstance(key, str) or not isinstance(value, str):
                yield f"metadata.{what}[{shown(key, 60)!r}] is not a string", str(key)

    def _labels(self, labels: object) -> Iterable[tuple[str, str]]:
        yield from self._string_map("labels", labels)
        for key, value in _map(labels).items():
            if _kubevirt_key(key) or (isinstance(value, str) and (key, value) in _CDI_LABEL_VALUES):
                yield f"label {shown(key, 80)}={shown(value, 80)!r} is KubeVirt's or CDI's", key
            if key == MANAGED_BY_LABEL and value != MANAGED_BY:
                yield f"label {key}={shown(value, 80)!r} is not {MANAGED_BY!r}", key

    def _annotations(self, annotations: object, move: Move | None) -> Iterable[tuple[str, str]]:
        yield from self._string_map("annotations", annotations)
        values = _map(annotations)
        for key, value in values.items():
            if key in _CDI_ANNOTATIONS:
                if value != _CDI_ANNOTATIONS[key]:
                    yield (
                        f"annotation {key} is {shown(value, 80)!r}, not {_CDI_ANNOTATIONS[key]!r}",
                        key,
                    )
            elif _kubevirt_key(key):
                yield f"annotation {shown(key, 80)} is KubeVirt's or CDI's", key
        if move is not None and values.get(SOURCE_CLAIM_ANNOTATION) != move[1]:
            yield (
                f"annotation {SOURCE_CLAIM_ANNOTATION} is "
                f"{shown(values.get(SOURCE_CLAIM_ANNOTATION), 80)!r}, not the source {move[1]!r}",
                SOURCE_CLAIM_ANNOTATION,
            )

    def _source(self, source: object, move: Move | None) -> Iterable[tuple[str, str]]:
        if not isinstance(source, Mapping) or len(source) != 1:
            yield (
                f"spec.source must name exactly one source, got {_op_text(source)}",
                "source",
            )
            return
        ((kind, value),) = source.items()
        if self.flow == LIVE:
            if kind != "blank" or value != {}:
                yield (
                    f"a live move's target must be blank (spec.source {{blank: {{}}}}), got "
                    f"{_op_text(source)}",
                    str(kind),
                )
            return
        pvc = _map(value)
        clone = move[1] if move is not None else None
        if (
            kind != "pvc"
            or not isinstance(value, Mapping)
            or set(pvc) - {"name", "namespace"}
            or pvc.get("name") != clone
            or pvc.get("namespace", self.namespace) != self.namespace
        ):
            yield (
                f"an offline move's target must clone its source {self.namespace}/{clone} "
                f"(spec.source.pvc), got {_op_text(source)}",
                str(kind),
            )

    def _storage(self, key: str, storage: object, move: Move | None) -> Iterable[tuple[str, str]]:
        if not isinstance(storage, Mapping):
            yield f"spec.{key} is not a mapping", key
            return
        for extra in sorted(set(storage) - _STORAGE_KEYS, key=str):
            yield f"spec.{key}.{shown(extra, 60)} is not allowed", str(extra)
        if move is not None and storage.get("storageClassName") != move[3]:
            yield (
                f"spec.{key}.storageClassName is {shown(storage.get('storageClassName'), 80)!r}, "
                f"not the target class {move[3]!r}",
                "storageClassName",
            )
        resources = storage.get("resources")
        if resources is not None:
            requests = _map(resources).get("requests")
            if (
                not isinstance(resources, Mapping)
                or set(resources) - {"requests"}
                or not isinstance(requests, Mapping)
                or set(requests) - {"storage"}
            ):
                yield f"spec.{key}.resources may only hold requests.storage", "resources"
        mode = storage.get("volumeMode", "Filesystem")
        if not (isinstance(mode, str) and mode in _VOLUME_MODES):
            yield (
                f"spec.{key}.volumeMode {shown(storage['volumeMode'], 60)!r} is not allowed",
                "volumeMode",
            )
        modes = storage.get("accessModes", [])
        if not isinstance(modes, list) or not all(
            isinstance(m, str) and m in _ACCESS_MODES for m in modes
        ):
            yield f"spec.{key}.accessModes {_op_text(modes)} is not allowed", "accessModes"

    # -- patch operations --------------------------------------------------------------------

    def _ops(
        self, part: str, ops: Sequence[Mapping[str, Any]]
    ) -> Iterable[tuple[str, str, str, object, str]]:
        """(where, op, path, value, shape problem) of each op that is not a harmless test."""
        for number, op in enumerate(ops, start=1):
            where = f"{part} op {number} {_op_text(op)}"
            if not isinstance(op, Mapping):
                yield where, "", "", None, "not an operation"
                continue
            kind, path = op.get("op"), op.get("path")
            extra = set(op) - _OP_KEYS
            if not isinstance(path, str) or kind not in ("add", "replace", "remove", "test"):
                yield where, str(kind), str(path), None, "only add, replace, remove and test"
            elif extra:
                yield where, kind, path, None, f"unexpected keys {sorted(map(str, extra))}"
            elif kind != "remove" and "value" not in op:
                yield where, kind, path, None, "no value"
            elif kind != "test":
                yield where, kind, path, op.get("value"), ""

    def check_forward(self, ops: Sequence[Mapping[str, Any]]) -> list[ScopeProblem]:
        problems: list[ScopeProblem] = []
        set_claims: set[str] = set()
        for where, kind, path, value, shape in self._ops(FORWARD, ops):
            if shape:
                problems.append(ScopeProblem(FORWARD, f"{where}: {shape}", path))
                continue
            if path == STRATEGY_PATH:
                if self.flow != LIVE or kind not in _SETTERS or value != MIGRATION:
                    problems.append(
                        ScopeProblem(
                            FORWARD,
                            f"{where}: only a live move sets {STRATEGY_PATH}, and only to "
                            f"{MIGRATION!r}",
                            path,
                        )
                    )
                    self.outside.add(path)
                continue
            slot = self.slots.get(path)
            if slot is None:
                self.outside.add(path)
                problems.append(ScopeProblem(FORWARD, f"{where}: {path_outside(path)}", path))
            elif kind not in _SETTERS or value != slot.forward:
                problems.append(
                    ScopeProblem(
                        FORWARD,
                        f"{where}: {slot.what} may only be set to {slot.forward!r}",
                        path,
                    )
                )
            elif path.startswith("/spec/template/"):
                set_claims.add(path)
        for path, slot in self.slots.items():
            if path.startswith("/spec/template/") and path not in set_claims:
                problems.append(
                    ScopeProblem(FORWARD, f"the forward operations do not set {slot.what}", path)
                )
        return problems

    def check_revert(
        self, ops: Sequence[Mapping[str, Any]], forward: Sequence[Mapping[str, Any]]
    ) -> list[ScopeProblem]:
        problems: list[ScopeProblem] = []
        changed = {p for _, _, p, _, shape in self._ops(FORWARD, forward) if not shape}
        for where, kind, path, value, shape in self._ops(REVERT, ops):
            if shape:
                problems.append(ScopeProblem(REVERT, f"{where}: {shape}", path))
                continue
            if path in self.outside:
                continue  # undoes a forward op already reported: once is enough
            slot = self.slots.get(path)
            if slot is None or path not in changed:
                why = (
                    f"{STRATEGY_PATH} is the cleanup's, not the revert's"
                    if path == STRATEGY_PATH
                    else "the revert may only restore what the forward operations change"
                )
                problems.append(ScopeProblem(REVERT, f"{where}: {why}", path))
            elif kind == "remove":
                if not slot.removable:
                    problems.append(
                        ScopeProblem(REVERT, f"{where}: {slot.what} may not be removed", path)
                    )
            elif slot.revert is not None and value not in slot.revert:
                wanted = " or ".join(repr(v) for v in slot.revert) or "nothing (it is removed)"
                problems.append(
                    ScopeProblem(
                        REVERT, f"{where}: {slot.what} may only be restored to {wanted}", path
                    )
                )
            elif slot.revert is None and not (isinstance(value, str) and _NAME.match(value)):
                problems.append(
                    ScopeProblem(REVERT, f"{where}: {slot.what} restored to a non-name", path)
                )
        return problems

    def check_cleanup(self, ops: Sequence[Mapping[str, Any]]) -> list[ScopeProblem]:
        problems: list[ScopeProblem] = []
        current = self.spec.get("updateVolumesStrategy")
        for where, kind, path, value, shape in self._ops(CLEANUP, ops):
            if shape:
                problems.append(ScopeProblem(CLEANUP, f"{where}: {shape}", path))
            elif path in self.outside:
                continue  # undoes a forward op already reported: once is enough
            elif path != STRATEGY_PATH or self.flow != LIVE:
                problems.append(
                    ScopeProblem(
                        CLEANUP,
                        f"{where}: the cleanup may only remove the {STRATEGY_PATH} a live move set",
                        path,
                    )
                )
            elif kind != "remove" and (
                not isinstance(value, str)
                or value not in STRATEGIES
                or value == MIGRATION
                or (not self.swapped and value != current)
            ):
                problems.append(
                    ScopeProblem(
                        CLEANUP,
                        f"{where}: the cleanup may only put back the VM's own strategy "
                        f"({shown(current, 40)!r})",
                        path,
                    )
                )
        return problems


def _kubevirt_key(key: object) -> bool:
    """A label or annotation key of KubeVirt's or CDI's (``kubevirt.io/``, ``*.kubevirt.io/``)."""
    if not isinstance(key, str) or "/" not in key:
        return False
    prefix = key.split("/", 1)[0]
    return prefix == "kubevirt.io" or prefix.endswith(".kubevirt.io")


def path_outside(path: str) -> str:
    """Why ``path`` is out of scope, in words."""
    return (
        f"{shown(path, 120)} is not part of a move (only the moved volumes' claim names, "
        "their dataVolumeTemplates' names and classes, and updateVolumesStrategy)"
    )
