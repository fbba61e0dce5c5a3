"""Kept sources as text and documents: the `sources` table and the `prune` report."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime
from typing import Any

from reconciler.model.kept import KeptSource, age_text
from reconciler.model.quantity import human_size
from reconciler.report.documents import API_VERSION


def state(source: KeptSource) -> str:
    """What `sources` says of one: what prune would make of it, age aside."""
    if source.pruning is not None:
        return (
            f"pruning since {source.pruning.at} (prune {source.pruning.id} was interrupted; "
            "the next prune finishes it)"
        )
    return source.refused or f"kept: {source.why}"


def sources_rows(found: Sequence[KeptSource], now: datetime) -> list[list[str]]:
    rows = [["SOURCE", "KIND", "VM", "MOVE", "AGE", "CLASS", "SIZE", "STATE"]]
    for s in found:
        rows.append(
            [
                f"{s.namespace}/{s.name}",
                "PVC" if s.kind == "PersistentVolumeClaim" else s.kind,
                s.vm or "-",
                s.move or "-",
                age_text(s.age(now)),
                s.storage_class or "-",
                human_size(s.size_bytes),
                state(s),
            ]
        )
    return rows


def sources_summary(found: Sequence[KeptSource]) -> str:
    free = [s for s in found if not s.refused]
    total = sum(s.size_bytes or 0 for s in free)
    return (
        f"{len(found)} kept source(s); {len(free)} that nothing uses ({human_size(total)}): "
        "`prune --older-than AGE` deletes those older than AGE."
    )


def source_doc(source: KeptSource, now: datetime) -> dict[str, Any]:
    record = source.record
    return {
        "namespace": source.namespace,
        "name": source.name,
        "kind": source.kind,
        "vm": source.vm or None,
        "migrationId": source.move or None,
        "plan": record.plan if record else None,
        "kept": source.since.isoformat(timespec="seconds") if source.since else None,
        "ageSeconds": None if source.since is None else int(source.age(now) or 0),
        "why": source.why,
        "volume": record.volume if record else None,
        "destination": record.target if record else None,
        "storageClass": source.storage_class,
        "sizeBytes": source.size_bytes,
        "marked": record is not None,
        "recordedBy": source.recorded_by or None,
        "usedBy": source.users or None,
        "deleting": source.deleting,
        "pruning": None
        if source.pruning is None
        else {"id": source.pruning.id, "at": source.pruning.at, "by": source.pruning.by},
        "prunable": not source.refused,
        "refused": source.refused or None,
    }


def sources_document(found: Sequence[KeptSource], now: datetime) -> dict[str, Any]:
    return {
        "apiVersion": API_VERSION,
        "kind": "KeptSources",
        "sources": [source_doc(s, now) for s in found],
    }


def _line(source: KeptSource, now: datetime) -> str:
    return (
        f"{source.kind} {source.namespace}/{source.name} (VM {source.vm or '?'}, move "
        f"{source.move or '?'}, kept {age_text(source.age(now))} ago, "
        f"{human_size(source.size_bytes)} on {source.storage_class or '?'})"
    )


def prune_text(
    *,
    dry_run: bool,
    deleted: Sequence[KeptSource],
    resumed: Sequence[KeptSource],
    left: Sequence[tuple[KeptSource, str]],
    now: datetime,
) -> str:
    verb = "would delete" if dry_run else "deleted"
    lines = [f"{verb} {_line(s, now)}" for s in deleted]
    lines += [f"{verb} {_line(s, now)}: an interrupted prune's" for s in resumed]
    lines += [f"left {s.kind} {s.namespace}/{s.name}: {why}" for s, why in left]
    done = [*deleted, *resumed]
    freed = human_size(sum(s.size_bytes or 0 for s in done))
    if dry_run:
        lines.append(
            f"Prune (dry run): {len(done)} kept source(s) would be deleted ({freed}), "
            f"{len(left)} left; nothing was changed."
        )
    else:
        lines.append(f"Prune: {len(done)} kept source(s) deleted ({freed}), {len(left)} left.")
    return "\n".join(lines) + "\n"


def prune_document(
    *,
    dry_run: bool,
    older_than: float,
    deleted: Sequence[KeptSource],
    resumed: Sequence[KeptSource],
    left: Sequence[tuple[KeptSource, str]],
    now: datetime,
) -> dict[str, Any]:
    return {
        "apiVersion": API_VERSION,
        "kind": "PruneReport",
        "dryRun": dry_run,
        "olderThanSeconds": older_than,
        "deleted": [source_doc(s, now) for s in deleted],
        "resumed": [source_doc(s, now) for s in resumed],
        "left": [source_doc(s, now) | {"reason": why} for s, why in left],
    }
