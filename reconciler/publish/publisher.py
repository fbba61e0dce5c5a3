"""The run's ``Listener`` (``apply.runner``): turns what the runner says into Events on the VMs.

Started (or resumed), the milestones of a move (the VM stopped, targets ready, volumes
swapped, KubeVirt's migration succeeded, the VM running again, verified, sources deleted; on a
rollback: volumes reverted), then succeeded, rolled back, failed or interrupted; a blocked VM
once per run (deduplicated across runs). A moved VM that a GitOps tool applies from Git also
gets a ``GitOpsWriteBack`` Warning naming the change to commit. Metrics and the status
ConfigMap are written from the whole report at the end of the run instead (``metrics``,
``status``): they need totals, not a stream.

It tells, never decides: every method returns quickly and never raises.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from functools import partial
from typing import Protocol

from reconciler.model.journal import Flow, Journal, Step, VolumeMove
from reconciler.model.outcome import FAILED, INTERRUPTED, ROLLED_BACK, SUCCEEDED, Outcome
from reconciler.model.verdict import Effect, Finding, VMVerdict
from reconciler.publish.events import WARNING, Notice
from reconciler.report.writeback import write_back_note

log = logging.getLogger(__name__)

# Forward milestones: step -> (reason, note). Steps not listed here are progress lines only.
MILESTONES: dict[Step, tuple[str, str]] = {
    Step.WAIT_STOPPED: ("VMStopped", "the VM is stopped for the offline move"),
    Step.WAIT_TARGETS: ("TargetsReady", "the target DataVolumes are ready"),
    Step.SWAP: ("VolumesSwapped", "the VM's volumes now name the targets"),
    Step.WAIT_MIGRATION: ("MigrationSucceeded", "KubeVirt's volume migration succeeded"),
    Step.WAIT_RUNNING: ("VMRunning", "the VM runs again, on the targets"),
    Step.VERIFY: ("MoveVerified", "verified"),
}


def _volumes(volumes: Sequence[VolumeMove]) -> str:
    return ", ".join(
        f"{v.volume} {v.source} -> {v.target} ({v.from_class or '?'} -> {v.to_class})"
        for v in volumes
    )


def _pairs(volumes: Sequence[tuple[str, str, str]]) -> str:
    return ", ".join(f"{volume} {source} -> {target}" for volume, source, target in volumes)


def _blocking(findings: Sequence[Finding]) -> list[Finding]:
    """The findings that explain a block: blocking ones first, notes left out."""
    order = {Effect.BLOCK: 0}
    kept = [f for f in findings if f.effect is not Effect.NOTE]
    return sorted(kept, key=lambda f: order.get(f.effect, 1))


class EventSink(Protocol):
    """Where notices go: ``events.Events`` (the API), or a list in tests."""

    def emit(self, namespace: str, vm: str, notice: Notice) -> None: ...


class Publisher:
    """Events for one run (``events``); ``status_where`` names the status ConfigMap, where the
    full write-back is when an Event note cannot hold it."""

    def __init__(self, events: EventSink, *, status_where: str = "") -> None:
        self.events = events
        self.status_where = status_where

    def _emit(self, namespace: str, vm: str, notice: Notice) -> None:
        try:
            self.events.emit(namespace, vm, notice)
        except Exception:  # never stop a move over a report
            log.exception("Event %s on %s/%s failed", notice.reason, namespace, vm)

    # -- Listener ------------------------------------------------------------------------------

    def move_started(self, namespace: str, vm: str, journal: Journal, resumed: bool) -> None:
        where = f"plan {journal.plan}" + (
            f", commit {journal.commit[:12]}" if journal.commit else ""
        )
        if resumed:
            rolling = (
                f" (rolling back [{journal.rollback_rule}]: {journal.rollback_reason})"
                if journal.rolling_back
                else ""
            )
            note = (
                f"resuming {journal.flow.value} move {journal.id} at step "
                f"{journal.step.value}{rolling} ({where}): {_volumes(journal.volumes)}"
            )
            reason = "MoveResumed"
        else:
            note = f"moving {journal.flow.value} (move {journal.id}, {where}): " + _volumes(
                journal.volumes
            )
            reason = "MoveStarted"
        self._emit(
            namespace,
            vm,
            Notice(
                reason,
                note,
                rule=journal.rollback_rule,
                migration_id=journal.id,
                commit=journal.commit,
            ),
        )

    def step_done(self, namespace: str, vm: str, journal: Journal, step: Step) -> None:
        notice = self._milestone(journal, step)
        if notice is not None:
            self._emit(namespace, vm, notice)

    def _milestone(self, journal: Journal, step: Step) -> Notice | None:
        make = partial(Notice, migration_id=journal.id, commit=journal.commit)
        if journal.rolling_back:
            if step is not Step.REVERT:
                return None
            return make(
                "VolumesReverted",
                f"rolling back move {journal.id}: {journal.rollback_reason} "
                f"[{journal.rollback_rule}]; the VM's volumes name the sources again",
                type=WARNING,
                action="Rollback",
                rule=journal.rollback_rule,
            )
        if step is Step.DELETE_SOURCES:
            deleted = [v.source for v in journal.volumes if v.source not in journal.sources_kept]
            if journal.retention != "Delete" or not deleted:
                return None
            return make(
                "SourcesDeleted",
                f"retention Delete: deleted the sources {', '.join(deleted)} (move {journal.id})",
            )
        if step not in MILESTONES:
            return None
        if step is Step.WAIT_RUNNING and not journal.was_running:
            return None
        reason, text = MILESTONES[step]
        if step is Step.SWAP and journal.flow is Flow.LIVE:
            text += "; KubeVirt migrates the storage live"
        return make(
            reason,
            f"{text} (move {journal.id}): {_volumes(journal.volumes)}",
        )

    def move_finished(self, outcome: Outcome) -> None:
        move = f"move {outcome.migration_id}" if outcome.migration_id else "the move"
        make = partial(Notice, migration_id=outcome.migration_id, commit=outcome.commit)
        if outcome.result == SUCCEEDED:
            notice = make(
                "MoveSucceeded",
                f"moved {outcome.flow} and verified in {outcome.seconds:.1f}s ({move}): "
                + _pairs(outcome.volumes),
            )
        elif outcome.result == ROLLED_BACK:
            notice = make(
                "MoveRolledBack",
                f"rolled back ({move}): {outcome.reason} [{outcome.rule}]; the VM is back on its "
                "sources and its run state, the targets this move created are deleted",
                type=WARNING,
                action="Rollback",
                rule=outcome.rule,
            )
        elif outcome.result == FAILED:
            notice = make(
                "MoveFailed",
                f"failed ({move}): {outcome.reason} [{outcome.rule}]; see "
                "`vm-storage-reconciler status`",
                type=WARNING,
                action="Rollback" if outcome.reason.startswith("rollback") else "Move",
                rule=outcome.rule,
            )
        elif outcome.result == INTERRUPTED:
            notice = make(
                "MoveInterrupted",
                f"stopped ({move}): {outcome.reason} [{outcome.rule}]",
                type=WARNING,
                rule=outcome.rule,
            )
        else:
            return
        self._emit(outcome.namespace, outcome.vm, notice)
        if outcome.write_back is not None:
            more = f"all of it in ConfigMap {self.status_where}" if self.status_where else ""
            self._emit(
                outcome.namespace,
                outcome.vm,
                make(
                    "GitOpsWriteBack",
                    write_back_note(outcome.write_back, more=more),
                    type=WARNING,
                    action="WriteBack",
                    rule="gitops-managed",
                ),
            )

    def vm_blocked(self, verdict: VMVerdict) -> None:
        findings = _blocking(verdict.findings)
        rules = tuple(dict.fromkeys(f.rule for f in findings))
        text = "; ".join(
            f"{'volume ' + f.volume + ': ' if f.volume else ''}{f.message} [{f.rule}]"
            for f in findings
        )
        self._emit(
            verdict.namespace,
            verdict.name,
            Notice(
                "MoveBlocked",
                f"blocked (plan {verdict.plan}): {text or 'no reason recorded'}",
                type=WARNING,
                action="Judge",
                rule=rules[0] if rules else "",
                rules=rules,
                dedupe=True,
            ),
        )
