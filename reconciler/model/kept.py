"""Kept sources: the source disks moves left in place, and what `sources` and `prune` make of
them. Pure: objects in, values and patch operations out.

**The mark.** When a move keeps a source (retention Keep, or a Delete that had to keep one),
`apply` marks the source object itself in its ``delete-sources`` step: the DataVolume of a
DataVolume source, else the PVC, gets the label ``vmstorage.dev/kept-source=<move id>`` (so
one LIST with a selector finds them all) and the annotation ``vmstorage.dev/kept-source``, a
compact ``KeptRecord`` (VM, move, plan, when, why, volume, destination, class, size). The mark
travels with the object, so every move's kept sources are found, not only the last move's
(the VM's ``vmstorage.dev/last-migration`` record holds only its last move).

**Ours, proven.** Anyone who may patch a PVC may write a mark, and a manifest copied with
``kubectl get -o yaml`` carries one to a new object, so the text alone is no proof. A kept
source is *recorded by us* when the API server says our field manager wrote its mark
(``metadata.managedFields``: ``vm-storage-reconciler`` owns the kept-source label and
annotation; a copy, or a mark edited by anyone else, is owned by them), or when a destination
DataVolume of ours corroborates it: one labelled ``vmstorage.dev/migration=<that move id>``
whose ``vmstorage.dev/source-claim`` annotation names the source (what `apply` checks before
deleting a source too). Destinations also record the sources of moves made before marks
existed: those are listed without a mark, their time the destination's creation (and once that
destination is gone, nothing records them: they are left for a human). `prune` deletes only
kept sources recorded by us.

**Prune's journal.** Before deleting a kept source, `prune` writes
``vmstorage.dev/pruning`` (``PruneMark``: its run id, when, by whom) on it. A prune killed
between that write and the delete leaves the mark; `sources` shows it, and the next `prune`
finishes it (after the same checks) or, when the source is in use by then, removes the mark.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from reconciler.model.names import (
    FIELD_MANAGER,
    IN_FLIGHT_ANNOTATION,
    KEPT_SOURCE_ANNOTATION,
    KEPT_SOURCE_LABEL,
    MIGRATION_LABEL,
    PRUNING_ANNOTATION,
    SOURCE_CLAIM_ANNOTATION,
    VM_LABEL,
)
from reconciler.model.quantity import parse_quantity

Obj = Mapping[str, Any]
DATA_VOLUME = "DataVolume"
PVC = "PersistentVolumeClaim"


@dataclass(frozen=True)
class KeptRecord:
    """What a kept source's mark says: the move that kept it and why. ``kept``: ISO 8601,
    when the move kept it."""

    vm: str
    move: str
    plan: str
    kept: str
    why: str
    volume: str = ""
    target: str = ""
    from_class: str | None = None
    size_bytes: int = 0


def encode_record(record: KeptRecord) -> str:
    doc = {
        "vm": record.vm,
        "move": record.move,
        "plan": record.plan,
        "kept": record.kept,
        "why": record.why[:500],
        "volume": record.volume,
        "target": record.target,
        "fromClass": record.from_class,
        "sizeBytes": record.size_bytes,
    }
    return json.dumps(doc, sort_keys=True, separators=(",", ":"))


def decode_record(text: object) -> KeptRecord | None:
    """The record in ``text``; None when it is none (a mark is informational: ``prune``
    trusts only what a destination corroborates)."""
    try:
        doc = json.loads(str(text))
        return KeptRecord(
            vm=str(doc["vm"]),
            move=str(doc["move"]),
            plan=str(doc.get("plan") or ""),
            kept=str(doc["kept"]),
            why=str(doc.get("why") or ""),
            volume=str(doc.get("volume") or ""),
            target=str(doc.get("target") or ""),
            from_class=doc.get("fromClass") if isinstance(doc.get("fromClass"), str) else None,
            size_bytes=max(0, int(doc.get("sizeBytes") or 0)),
        )
    except (ValueError, KeyError, TypeError, AttributeError, OverflowError):
        return None


@dataclass(frozen=True)
class PruneMark:
    """Prune's journal on a kept source it is about to delete."""

    id: str
    at: str
    by: str


def encode_prune(mark: PruneMark) -> str:
    return json.dumps({"id": mark.id, "at": mark.at, "by": mark.by}, sort_keys=True)


def decode_prune(text: object) -> PruneMark | None:
    try:
        doc = json.loads(str(text))
        return PruneMark(id=str(doc["id"]), at=str(doc["at"]), by=str(doc.get("by") or ""))
    except (ValueError, KeyError, TypeError, AttributeError):
        return None


# --------------------------------------------------------------------------------------------
# Patches
# --------------------------------------------------------------------------------------------


def mark_ops(obj: Obj, record: KeptRecord) -> list[dict[str, Any]]:
    """The JSON patch that marks ``obj`` as kept by ``record``'s move, testing its uid first
    (the object, not one re-created under its name); [] when this move marked it already
    (a resumed step keeps the first time)."""
    meta = _meta(obj)
    if _labels(obj).get(KEPT_SOURCE_LABEL) == record.move:
        marked = decode_record(_annotations(obj).get(KEPT_SOURCE_ANNOTATION))
        if marked is not None and marked.move == record.move:
            return []
    ops: list[dict[str, Any]] = [{"op": "test", "path": "/metadata/uid", "value": meta.get("uid")}]
    ops += _set(meta, "labels", KEPT_SOURCE_LABEL, record.move)
    ops += _set(meta, "annotations", KEPT_SOURCE_ANNOTATION, encode_record(record))
    return ops


def prune_ops(obj: Obj, mark: PruneMark | None) -> list[dict[str, Any]]:
    """Write (``mark``) or remove (None) prune's journal on ``obj``, testing its uid and its
    kept-source label first (still the kept source of the same move)."""
    meta = _meta(obj)
    ops: list[dict[str, Any]] = [
        {"op": "test", "path": "/metadata/uid", "value": meta.get("uid")},
        {
            "op": "test",
            "path": _pointer("labels", KEPT_SOURCE_LABEL),
            "value": _labels(obj).get(KEPT_SOURCE_LABEL),
        },
    ]
    if mark is not None:
        return ops + _set(meta, "annotations", PRUNING_ANNOTATION, encode_prune(mark))
    if PRUNING_ANNOTATION not in _annotations(obj):
        return []
    return [*ops, {"op": "remove", "path": _pointer("annotations", PRUNING_ANNOTATION)}]


def _set(meta: Obj, where: str, key: str, value: str) -> list[dict[str, Any]]:
    if isinstance(meta.get(where), dict):
        return [{"op": "add", "path": _pointer(where, key), "value": value}]
    return [{"op": "add", "path": f"/metadata/{where}", "value": {key: value}}]


def _pointer(where: str, key: str) -> str:
    return f"/metadata/{where}/" + key.replace("~", "~0").replace("/", "~1")


# --------------------------------------------------------------------------------------------
# What is kept, and what may be pruned
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class KeptSource:
    """One kept source. ``record``: its mark (None: only a destination records it, a move
    made before marks). ``recorded_by``: the destination that proves it ours ("" none:
    ``prune`` refuses it). ``users``: who refers to it now ("" nobody). ``since``: when it
    was kept (None unknown). ``move``: the move that kept it ("" unknown)."""

    namespace: str
    name: str
    kind: str
    uid: str
    vm: str
    move: str
    since: datetime | None
    storage_class: str | None
    size_bytes: int | None
    why: str
    record: KeptRecord | None
    recorded_by: str
    users: str = ""
    pruning: PruneMark | None = None
    deleting: bool = False
    held_by: str = ""  # completed pods that keep a deleting claim (pvc-protection counts them)

    @property
    def refused(self) -> str:
        """Why ``prune`` must leave it ("" when it may delete it, age aside)."""
        if not self.recorded_by:
            return (
                f"not recorded as a source by us: its {KEPT_SOURCE_LABEL} mark was not written "
                f"by {FIELD_MANAGER} (metadata.managedFields), and no destination DataVolume of "
                f"move {self.move or '?'} records copying it (label {MIGRATION_LABEL}, "
                f"annotation {SOURCE_CLAIM_ANNOTATION})"
            )
        if self.deleting and self.held_by:
            return (
                f"being deleted already, held by completed pod {self.held_by} until it is "
                "removed (a virt-launcher pod: when its VM stops)"
            )
        if self.deleting:
            return "being deleted already"
        if self.users:
            return f"in use: {self.users}"
        return ""

    def age(self, now: datetime) -> float | None:
        """Seconds since it was kept (None: unknown)."""
        return None if self.since is None else max(0.0, (now - self.since).total_seconds())


def candidates(dvs: Iterable[Obj], pvcs: Iterable[Obj]) -> list[tuple[str, str, str]]:
    """(namespace, name, kind) of every kept source: the marked objects, and the sources
    that our settled destinations record and that still exist. A PVC owned by a DataVolume
    of its name is the DataVolume's (CDI may copy a DataVolume's labels to its PVC)."""
    dv_names = {(_ns(d), _name(d)) for d in dvs}
    pvc_names = {(_ns(p), _name(p)) for p in pvcs}
    found: dict[tuple[str, str], str] = {}
    for dv in dvs:
        if KEPT_SOURCE_LABEL in _labels(dv):
            found[(_ns(dv), _name(dv))] = DATA_VOLUME
    for pvc in pvcs:
        key = (_ns(pvc), _name(pvc))
        if KEPT_SOURCE_LABEL in _labels(pvc) and key not in dv_names:
            found.setdefault(key, PVC)
    for dv in dvs:
        source = _destination_of(dv)
        if source is None:
            continue
        key = (_ns(dv), source)
        if key in dv_names:
            found.setdefault(key, DATA_VOLUME)
        elif key in pvc_names:
            found.setdefault(key, PVC)
    return sorted((ns, name, kind) for (ns, name), kind in found.items())


def marked_totals(dvs: Iterable[Obj], pvcs: Iterable[Obj]) -> dict[str, tuple[int, int]]:
    """namespace -> (kept sources, their bytes) of the objects carrying the kept-source label
    (the metrics' count: one LIST per resource with the label's selector, no proof asked).
    A PVC of the name of a marked DataVolume is that DataVolume's; a source's size is its
    claim's (when the claim is listed too), else its mark's ``sizeBytes``."""
    marked_dvs = [d for d in dvs if KEPT_SOURCE_LABEL in _labels(d)]
    marked_pvcs = [p for p in pvcs if KEPT_SOURCE_LABEL in _labels(p)]
    claims = {(_ns(p), _name(p)): p for p in marked_pvcs}
    seen: set[tuple[str, str]] = set()
    totals: dict[str, tuple[int, int]] = {}
    for obj in [*marked_dvs, *marked_pvcs]:
        key = (_ns(obj), _name(obj))
        if key in seen:
            continue
        seen.add(key)
        record = decode_record(_annotations(obj).get(KEPT_SOURCE_ANNOTATION))
        size = _size_of(claims.get(key, {})) or (record.size_bytes if record else 0)
        count, total = totals.get(key[0], (0, 0))
        totals[key[0]] = (count + 1, total + size)
    return totals


def kept_sources(
    dvs: Sequence[Obj],
    pvcs: Sequence[Obj],
    users: Mapping[tuple[str, str], str],
    held: Mapping[tuple[str, str], str] | None = None,
) -> list[KeptSource]:
    """Every kept source (``candidates``) with what `sources` shows and `prune` decides on.
    ``users``: (namespace, claim) -> who refers to it now (VMs, VMIs, pods); DataVolumes
    still cloning from a claim are added here. ``held``: (namespace, claim) -> the completed
    pods that keep it from going once deleted."""
    by_key = {(DATA_VOLUME, _ns(d), _name(d)): d for d in dvs}
    by_key |= {(PVC, _ns(p), _name(p)): p for p in pvcs}
    claims = {(_ns(p), _name(p)): p for p in pvcs}
    proofs: dict[tuple[str, str], list[Obj]] = {}
    for dv in dvs:
        source = _destination_of(dv)
        if source is not None:
            proofs.setdefault((_ns(dv), source), []).append(dv)
    cloning = _cloning(dvs)
    found = []
    for namespace, name, kind in candidates(dvs, pvcs):
        obj = by_key[(kind, namespace, name)]
        claim = claims.get((namespace, name), {})
        record = decode_record(_annotations(obj).get(KEPT_SOURCE_ANNOTATION))
        move = _labels(obj).get(KEPT_SOURCE_LABEL) or ""
        destinations = proofs.get((namespace, name), [])
        if move:
            proof = next((d for d in destinations if _move_of(d) == move), None)
        else:  # no mark: the latest destination recording it is its move
            proof = max(destinations, key=lambda d: str(_meta(d).get("creationTimestamp")))
            move = _move_of(proof)
        if record is not None and record.move != move:
            record = None  # a mark that contradicts its own label is no record
        if record is not None and _marked_by_us(obj):
            recorded_by = f"its mark, written by {FIELD_MANAGER}"
        elif proof is not None:
            recorded_by = f"DataVolume {namespace}/{_name(proof)}"
        else:
            recorded_by = ""
        since = _time(record.kept) if record else None
        if since is None and proof is not None:
            since = _time(_meta(proof).get("creationTimestamp"))
        vm = record.vm if record else str(_labels(proof or {}).get(VM_LABEL) or "")
        why = record.why if record else "kept by a move before kept sources were marked"
        who = [u for u in (users.get((namespace, name)), cloning.get((namespace, name))) if u]
        found.append(
            KeptSource(
                namespace=namespace,
                name=name,
                kind=kind,
                uid=str(_meta(obj).get("uid") or ""),
                vm=vm,
                move=move,
                since=since,
                storage_class=_class_of(claim, obj) or (record.from_class if record else None),
                size_bytes=_size_of(claim) or (record.size_bytes if record else None) or None,
                why=why,
                record=record,
                recorded_by=recorded_by,
                users="; ".join(who),
                pruning=decode_prune(_annotations(obj)[PRUNING_ANNOTATION])
                if PRUNING_ANNOTATION in _annotations(obj)
                else None,
                deleting=bool(_meta(obj).get("deletionTimestamp")),
                held_by=(held or {}).get((namespace, name), ""),
            )
        )
    return found


def _marked_by_us(obj: Obj) -> bool:
    """The API server records our field manager as the writer of the kept-source label and
    annotation (``metadata.managedFields``): a mark copied with a manifest, or written or
    rewritten by anyone else, is owned by them."""
    for entry in _meta(obj).get("managedFields") or ():
        if not isinstance(entry, dict) or entry.get("manager") != FIELD_MANAGER:
            continue
        if entry.get("subresource"):
            continue
        meta = (entry.get("fieldsV1") or {}).get("f:metadata") or {}
        labels = meta.get("f:labels") or {}
        notes = meta.get("f:annotations") or {}
        if f"f:{KEPT_SOURCE_LABEL}" in labels and f"f:{KEPT_SOURCE_ANNOTATION}" in notes:
            return True
    return False


def _destination_of(dv: Obj) -> str | None:
    """The claim a settled destination of ours copied (None: not one)."""
    notes = _annotations(dv)
    if not _move_of(dv) or IN_FLIGHT_ANNOTATION in notes:
        return None
    source = notes.get(SOURCE_CLAIM_ANNOTATION)
    return str(source) if source else None


def _cloning(dvs: Iterable[Obj]) -> dict[tuple[str, str], str]:
    """(namespace, claim) -> the DataVolumes still cloning from it."""
    found: dict[tuple[str, str], list[str]] = {}
    for dv in dvs:
        source = ((dv.get("spec") or {}).get("source") or {}).get("pvc") or {}
        phase = (dv.get("status") or {}).get("phase")
        if not isinstance(source, dict) or not source.get("name") or phase == "Succeeded":
            continue
        key = (str(source.get("namespace") or _ns(dv)), str(source["name"]))
        found.setdefault(key, []).append(f"{_ns(dv)}/{_name(dv)}")
    return {k: "cloned by DataVolume " + ", ".join(sorted(v)) for k, v in found.items()}


def _class_of(claim: Obj, obj: Obj) -> str | None:
    value = (claim.get("spec") or {}).get("storageClassName")
    if not value:
        spec = obj.get("spec") or {}
        value = (spec.get("storage") or spec.get("pvc") or {}).get("storageClassName")
    return str(value) if value else None


def _size_of(claim: Obj) -> int | None:
    status = (claim.get("status") or {}).get("capacity") or {}
    spec = ((claim.get("spec") or {}).get("resources") or {}).get("requests") or {}
    for value in (status.get("storage"), spec.get("storage")):
        if value is not None:
            try:
                return int(parse_quantity(value))
            except ValueError:
                continue
    return None


def _time(text: object) -> datetime | None:
    try:
        moment = datetime.fromisoformat(str(text).replace("Z", "+00:00"))
    except ValueError:
        return None
    return moment if moment.tzinfo else moment.replace(tzinfo=UTC)


def age_text(seconds: float | None) -> str:
    """kubectl's AGE: ``45s``, ``12m``, ``5h``, ``3d`` (``-`` unknown)."""
    if seconds is None:
        return "-"
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if seconds >= size * (2 if unit != "m" else 1):
            return f"{int(seconds // size)}{unit}"
    return f"{int(seconds)}s"


def _meta(obj: Obj) -> Mapping[str, Any]:
    meta = obj.get("metadata")
    return meta if isinstance(meta, dict) else {}


def _labels(obj: Obj) -> Mapping[str, str]:
    labels = _meta(obj).get("labels")
    return labels if isinstance(labels, dict) else {}


def _annotations(obj: Obj) -> Mapping[str, str]:
    notes = _meta(obj).get("annotations")
    return notes if isinstance(notes, dict) else {}


def _ns(obj: Obj) -> str:
    return str(_meta(obj).get("namespace") or "")


def _name(obj: Obj) -> str:
    return str(_meta(obj).get("name") or "")


def _move_of(dv: Obj) -> str:
    return str(_labels(dv).get(MIGRATION_LABEL) or "")
