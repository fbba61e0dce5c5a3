"""The journal of one VM's move: what `apply` writes on the VM before each step. Pure.

A move is a fixed sequence of steps (``FORWARD[flow]``), and a rollback another
(``ROLLBACK[flow]``). Before a step is taken, the journal naming it is written to the VM's
``vmstorage.dev/journal`` annotation; every step is idempotent (it first looks whether its work
is already done), so a run that dies anywhere is resumed by running the journaled step again.
Everything a resume or a rollback needs is in the journal itself (the DataVolumes to create,
the forward and revert patches, the original run strategy), because after the first write the
diff no longer proposes this move: it sees our journal and says "in progress".

When the move ends (succeeded or rolled back) the journal is removed and a compact
``LastMigration`` record stays on the VM (``vmstorage.dev/last-migration``).

Encoding is compact JSON with sorted keys; ``decode`` refuses anything it does not understand
with ``JournalError`` (a journal from a newer version, or hand-edited), so `apply` never guesses.
"""

from __future__ import annotations

import enum
import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime, timedelta
from typing import Any

from reconciler.model.names import JOURNAL_ANNOTATION, LAST_MIGRATION_ANNOTATION

JOURNAL_VERSION = 1
MAX_JOURNAL_BYTES = 200_000  # annotations total at most 256 KiB on a real API server


class Flow(enum.StrEnum):
    """How the disks move: live (KubeVirt volume migration) or offline (stop, clone, swap)."""

    LIVE = "live"
    OFFLINE = "offline"


class Step(enum.StrEnum):
    """One action of a move or of its rollback. The value is what the journal says."""

    # forward
    STOP = "stop"  # offline: runStrategy -> Halted
    WAIT_STOPPED = "wait-stopped"  # offline: the VMI and its pods are gone
    CREATE_TARGETS = "create-targets"  # the destination DataVolumes (blank, or clones)
    WAIT_TARGETS = "wait-targets"  # Succeeded (or a populator PVC pending population)
    SWAP = "swap"  # one test-guarded JSON patch: volumes + templates renamed
    WAIT_MIGRATION = "wait-migration"  # live: KubeVirt's migration finished
    START = "start"  # offline: the original runStrategy restored
    WAIT_RUNNING = "wait-running"  # offline: the VMI runs again (if it ran before)
    VERIFY = "verify"  # the VM uses the targets, bound on the wanted class, content intact
    DELETE_SOURCES = "delete-sources"  # retention Delete: once nothing mounts them
    # rollback
    REVERT = "revert"  # the exact inverse of the swap (KubeVirt's cancel, for live moves)
    WAIT_REVERTED = "wait-reverted"  # live: KubeVirt confirmed the cancellation
    REMOVE_STRATEGY = "remove-strategy"  # live: drop the updateVolumesStrategy we added
    DELETE_TARGETS = "delete-targets"  # the DataVolumes this move created, and nothing else


FORWARD: Mapping[Flow, tuple[Step, ...]] = {
    Flow.LIVE: (
        Step.CREATE_TARGETS,
        Step.WAIT_TARGETS,
        Step.SWAP,
        Step.WAIT_MIGRATION,
        Step.VERIFY,
        Step.DELETE_SOURCES,
    ),
    Flow.OFFLINE: (
        Step.STOP,
        Step.WAIT_STOPPED,
        Step.CREATE_TARGETS,
        Step.WAIT_TARGETS,
        Step.SWAP,
        Step.START,
        Step.WAIT_RUNNING,
        Step.VERIFY,
        Step.DELETE_SOURCES,
    ),
}
ROLLBACK: Mapping[Flow, tuple[Step, ...]] = {
    Flow.LIVE: (Step.REVERT, Step.WAIT_REVERTED, Step.REMOVE_STRATEGY, Step.DELETE_TARGETS),
    Flow.OFFLINE: (Step.REVERT, Step.START, Step.WAIT_RUNNING, Step.DELETE_TARGETS),
}


class JournalError(ValueError):
    """The annotation is not a journal this version can act on."""


@dataclass(frozen=True)
class VolumeMove:
    """One moved volume: ``source`` and ``target`` claim names; ``source_is_data_volume``
    says whether retention Delete removes a DataVolume (which owns the PVC) or the PVC."""

    volume: str
    source: str
    target: str
    source_is_data_volume: bool
    from_class: str | None
    to_class: str
    size_bytes: int


@dataclass(frozen=True)
class Journal:
    """An open move of one VM. ``step`` is the step about to be taken (or being taken).

    ``rollback_reason`` is set once the move is being rolled back (``rollback_rule`` names the
    cause: a rule id, or ``timeout``/``migration-failed``/...); from then on ``step`` is one of
    ``ROLLBACK[flow]``. ``data_volumes`` are the manifests to create, ``forward_ops`` the swap
    patch without its resourceVersion test (added fresh at send time), ``revert_ops`` its exact
    inverse and ``cleanup_ops`` the removal of the updateVolumesStrategy we added.
    ``deadline`` (ISO 8601, UTC) is when a move still going forward is rolled back.
    """

    id: str
    plan: str
    flow: Flow
    step: Step
    volumes: tuple[VolumeMove, ...]
    run_strategy: str
    was_running: bool
    started: str
    deadline: str
    retention: str
    vmi_uid: str = ""
    attempts: int = 1
    commit: str | None = None
    data_volumes: tuple[Mapping[str, Any], ...] = ()
    forward_ops: tuple[Mapping[str, Any], ...] = ()
    revert_ops: tuple[Mapping[str, Any], ...] = ()
    cleanup_ops: tuple[Mapping[str, Any], ...] = ()
    rollback_reason: str = ""
    rollback_rule: str = ""
    swapped: bool = False  # the swap patch was accepted (known for sure once observed)
    live_migratable: str = ""  # the VMI's LiveMigratable status before the move ("" unknown)
    sources_kept: Mapping[str, str] = field(default_factory=dict)  # claim -> why not deleted
    # The fencing token of the runner that wrote this journal (``Lease.token``).
    fence: str = ""
    # Offline: the VM's metadata.generation once it was stopped for the copy. The copy is
    # used only if the VM's spec is unchanged since (not started, not edited) and no VMI
    # exists: otherwise the source may hold writes the copy does not (0: not recorded yet).
    source_generation: int = 0

    @property
    def rolling_back(self) -> bool:
        return bool(self.rollback_reason)

    @property
    def steps(self) -> tuple[Step, ...]:
        """The sequence ``step`` belongs to."""
        return (ROLLBACK if self.rolling_back else FORWARD)[self.flow]

    def next_step(self) -> Step | None:
        """The step after ``step`` in its sequence; None when the sequence is done."""
        steps = self.steps
        index = steps.index(self.step)
        return steps[index + 1] if index + 1 < len(steps) else None

    def at(self, step: Step) -> Journal:
        if step not in self.steps:
            raise ValueError(f"{step.value} is not a step of this {self.flow.value} sequence")
        return replace(self, step=step)

    def rolled_back_because(self, rule: str, reason: str) -> Journal:
        """This journal switched to its rollback, at the rollback's first step."""
        return replace(
            self,
            rollback_rule=rule,
            rollback_reason=reason or rule,
            step=ROLLBACK[self.flow][0],
        )

    @property
    def targets(self) -> Mapping[str, str]:
        return {v.volume: v.target for v in self.volumes}

    @property
    def sources(self) -> Mapping[str, str]:
        return {v.volume: v.source for v in self.volumes}


def encode(journal: Journal) -> str:
    """Compact JSON (sorted keys). Raises JournalError when it would not fit an annotation."""
    doc: dict[str, Any] = {
        "v": JOURNAL_VERSION,
        "id": journal.id,
        "plan": journal.plan,
        "flow": journal.flow.value,
        "step": journal.step.value,
        "volumes": [_volume_doc(v) for v in journal.volumes],
        "runStrategy": journal.run_strategy,
        "wasRunning": journal.was_running,
        "started": journal.started,
        "deadline": journal.deadline,
        "retention": journal.retention,
        "vmiUID": journal.vmi_uid,
        "attempts": journal.attempts,
        "commit": journal.commit,
        "dataVolumes": [dict(dv) for dv in journal.data_volumes],
        "forwardOps": [dict(op) for op in journal.forward_ops],
        "revertOps": [dict(op) for op in journal.revert_ops],
        "cleanupOps": [dict(op) for op in journal.cleanup_ops],
        "swapped": journal.swapped,
        "liveMigratable": journal.live_migratable,
        "sourcesKept": dict(journal.sources_kept),
        "fence": journal.fence,
        "sourceGeneration": journal.source_generation,
    }
    if journal.rolling_back:
        doc["rollback"] = {"rule": journal.rollback_rule, "reason": journal.rollback_reason}
    text = json.dumps(doc, sort_keys=True, separators=(",", ":"))
    if len(text.encode()) > MAX_JOURNAL_BYTES:
        raise JournalError(f"the journal would be {len(text)} bytes, over {MAX_JOURNAL_BYTES}")
    return text


def _volume_doc(v: VolumeMove) -> dict[str, Any]:
    return {
        "volume": v.volume,
        "source": v.source,
        "target": v.target,
        "sourceIsDataVolume": v.source_is_data_volume,
        "fromClass": v.from_class,
        "toClass": v.to_class,
        "sizeBytes": v.size_bytes,
    }


def decode(text: str) -> Journal:
    """The journal in ``text``; JournalError (saying what is wrong) when it is not one."""
    try:
        doc = json.loads(text)
    except ValueError as exc:
        raise JournalError(f"not JSON: {exc}") from exc
    if not isinstance(doc, dict):
        raise JournalError("not a JSON object")
    if doc.get("v") != JOURNAL_VERSION:
        raise JournalError(
            f"journal version {doc.get('v')!r}, this reconciler reads {JOURNAL_VERSION}"
        )
    try:
        flow = Flow(doc["flow"])
        rollback = doc.get("rollback") or {}
        journal = Journal(
            id=_str(doc, "id"),
            plan=_str(doc, "plan"),
            flow=flow,
            step=Step(doc["step"]),
            volumes=tuple(_volume(v) for v in _list(doc, "volumes")),
            run_strategy=_str(doc, "runStrategy"),
            was_running=bool(doc["wasRunning"]),
            started=_str(doc, "started"),
            deadline=_str(doc, "deadline"),
            retention=_str(doc, "retention"),
            vmi_uid=str(doc.get("vmiUID") or ""),
            attempts=int(doc.get("attempts") or 1),
            commit=doc.get("commit") if isinstance(doc.get("commit"), str) else None,
            data_volumes=tuple(_objects(doc, "dataVolumes")),
            forward_ops=tuple(_objects(doc, "forwardOps")),
            revert_ops=tuple(_objects(doc, "revertOps")),
            cleanup_ops=tuple(_objects(doc, "cleanupOps")),
            rollback_reason=str(rollback.get("reason") or ""),
            rollback_rule=str(rollback.get("rule") or ""),
            swapped=bool(doc.get("swapped")),
            live_migratable=str(doc.get("liveMigratable") or ""),
            sources_kept={str(k): str(v) for k, v in (doc.get("sourcesKept") or {}).items()},
            fence=str(doc.get("fence") or ""),
            source_generation=int(doc.get("sourceGeneration") or 0),
        )
    except (KeyError, TypeError, ValueError, AttributeError) as exc:
        raise JournalError(f"missing or invalid field: {exc}") from exc
    if journal.step not in journal.steps:
        raise JournalError(f"step {journal.step.value!r} does not belong to this sequence")
    return journal


def read_journal(annotations: Mapping[str, str]) -> Journal | None:
    """The journal in a VM's annotations (``JOURNAL_ANNOTATION``): None when there is none,
    ``JournalError`` when there is one this version cannot act on. Every reader of the
    annotation goes through here (apply, cancel, status)."""
    text = annotations.get(JOURNAL_ANNOTATION)
    return None if text is None else decode(text)


def _str(doc: Mapping[str, Any], key: str) -> str:
    value = doc[key]
    if not isinstance(value, str):
        raise TypeError(f"{key} is not a string")
    return value


def _list(doc: Mapping[str, Any], key: str) -> Sequence[Any]:
    value = doc.get(key) or []
    if not isinstance(value, list):
        raise TypeError(f"{key} is not a list")
    return value


def _objects(doc: Mapping[str, Any], key: str) -> list[Mapping[str, Any]]:
    items = _list(doc, key)
    if not all(isinstance(item, dict) for item in items):
        raise TypeError(f"{key} holds something that is not an object")
    return list(items)


def _volume(doc: Any) -> VolumeMove:
    if not isinstance(doc, dict):
        raise TypeError("a volume is not an object")
    return VolumeMove(
        volume=_str(doc, "volume"),
        source=_str(doc, "source"),
        target=_str(doc, "target"),
        source_is_data_volume=bool(doc["sourceIsDataVolume"]),
        from_class=doc.get("fromClass") if isinstance(doc.get("fromClass"), str) else None,
        to_class=_str(doc, "toClass"),
        size_bytes=int(doc["sizeBytes"]),
    )


@dataclass(frozen=True)
class LastMigration:
    """What stays on the VM after a move: ``result`` is Succeeded or RolledBack."""

    id: str
    plan: str
    flow: Flow
    result: str
    finished: str
    started: str
    volumes: Mapping[str, str] = field(default_factory=dict)  # volume -> claim now in use
    rule: str = ""
    reason: str = ""
    commit: str | None = None
    sources_deleted: tuple[str, ...] = ()
    sources_kept: Mapping[str, str] = field(default_factory=dict)  # claim -> why it was kept
    failures: int = 0  # moves of this VM that failed in a row, this one included (backoff)

    def retry_after(self, base_seconds: float, cap_seconds: float) -> datetime | None:
        """When the next move of this VM may start, after ``failures`` failed moves in a
        row: ``base * 2^(failures-1)`` after this one finished, at most ``cap``. None: no
        backoff (the last move did not fail, or failed for a cause that is not the VM's)."""
        if self.result != "RolledBack" or self.failures < 1 or self.rule in NO_BACKOFF:
            return None
        try:
            finished = datetime.fromisoformat(self.finished)
        except ValueError:
            return None
        if finished.tzinfo is None:
            finished = finished.replace(tzinfo=UTC)
        wait = min(base_seconds * 2 ** min(self.failures - 1, 30), cap_seconds)
        return finished + timedelta(seconds=wait)


NO_BACKOFF = frozenset({"source-changed"})
"""Rollback causes that say nothing about the VM's next move (the copy was merely stale)."""


def encode_last(last: LastMigration) -> str:
    doc: dict[str, Any] = {
        "id": last.id,
        "plan": last.plan,
        "flow": last.flow.value,
        "result": last.result,
        "started": last.started,
        "finished": last.finished,
        "volumes": dict(last.volumes),
    }
    for key, value in (
        ("rule", last.rule),
        ("reason", last.reason[:1000]),
        ("commit", last.commit),
        ("sourcesDeleted", list(last.sources_deleted)),
        ("sourcesKept", dict(last.sources_kept)),
        ("failures", last.failures),
    ):
        if value:
            doc[key] = value
    return json.dumps(doc, sort_keys=True, separators=(",", ":"))


def decode_last(text: str) -> LastMigration | None:
    """The record in ``text``, or None when it is not one (it is informational only)."""
    try:
        doc = json.loads(text)
        return LastMigration(
            id=str(doc["id"]),
            plan=str(doc["plan"]),
            flow=Flow(doc["flow"]),
            result=str(doc["result"]),
            started=str(doc.get("started") or ""),
            finished=str(doc["finished"]),
            volumes={str(k): str(v) for k, v in (doc.get("volumes") or {}).items()},
            rule=str(doc.get("rule") or ""),
            reason=str(doc.get("reason") or ""),
            commit=doc.get("commit") if isinstance(doc.get("commit"), str) else None,
            sources_deleted=tuple(str(s) for s in doc.get("sourcesDeleted") or ()),
            sources_kept={str(k): str(v) for k, v in (doc.get("sourcesKept") or {}).items()},
            failures=max(0, int(doc.get("failures") or 0)),
        )
    except (ValueError, KeyError, TypeError, AttributeError, OverflowError):
        return None


def read_last(annotations: Mapping[str, str]) -> LastMigration | None:
    """The last-migration record in a VM's annotations (``LAST_MIGRATION_ANNOTATION``), None
    when there is none or it cannot be read (it is informational only)."""
    text = annotations.get(LAST_MIGRATION_ANNOTATION)
    return decode_last(text) if text else None
