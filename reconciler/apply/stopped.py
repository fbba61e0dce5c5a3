"""A move stopped before its end (SIGTERM, Ctrl-C, a lost Lease): an ``Interrupted`` outcome,
the journal kept as written, and a line saying what goes on meanwhile."""

from __future__ import annotations

from reconciler.apply.context import Fenced, Interrupted, MoveRun
from reconciler.apply.lease import LeaseLost
from reconciler.apply.machine import drive
from reconciler.model import journal as journals
from reconciler.model.failures import Failure
from reconciler.model.journal import Flow, Journal, Step
from reconciler.model.outcome import INTERRUPTED, Outcome

STOPPED = "stopped (SIGTERM or Ctrl-C, or the Lease was lost): the rest is left for the next run"
"""Why a run stopped before the end, when it was stopped."""


def stopped_note(namespace: str, vm: str, journal: Journal) -> str:
    """What a stop leaves going on, and what comes next: stopping `apply` stops only the
    reconciler, not what KubeVirt or CDI are doing for the step it was in."""
    step, live = journal.step, journal.flow is Flow.LIVE
    cancel = f"`vm-storage-reconciler cancel {namespace}/{vm}`"
    if journal.rolling_back:
        going = (
            "KubeVirt goes on cancelling the migration"
            if live and step is Step.WAIT_REVERTED
            else "the rollback is not finished"
        )
        return (
            f"move {journal.id} stays journaled, rolling back ({journal.rollback_reason}): "
            f"{going}; the next `apply` (or {cancel}) finishes the rollback from step "
            f"{step.value}"
        )
    if live and step in (Step.SWAP, Step.WAIT_MIGRATION):
        going = "KubeVirt keeps migrating the disks: stopping apply does not cancel the migration"
    elif step in (Step.CREATE_TARGETS, Step.WAIT_TARGETS):
        going = "CDI keeps " + ("preparing the destinations" if live else "copying the disks")
        going += "" if live or not journal.was_running else "; the VM stays stopped"
    elif not live and step in (Step.STOP, Step.WAIT_STOPPED, Step.SWAP, Step.START):
        going = "the VM stays stopped" if journal.was_running else "the VM stays as it is"
    else:
        going = "the disks have moved; what is left is checking (and cleaning up)"
    return (
        f"move {journal.id} stays journaled at step {step.value}; {going}; the next `apply` "
        f"resumes it there, or {cancel} rolls it back"
    )


def _last_written(run: MoveRun, journal: Journal) -> Journal:
    """The journal as this runner last wrote it (where the move stands now), else ``journal``."""
    if run.journal_text is None:
        return journal
    try:
        return journals.decode(run.journal_text)
    except journals.JournalError:
        return journal


def drive_until_stopped(run: MoveRun, journal: Journal, *, resumed: bool = False) -> Outcome:
    """``machine.drive``; a stop (SIGTERM, Ctrl-C, a lost Lease) is an ``Interrupted`` outcome
    with the journal kept as written, for the next run to resume (or a `cancel` to roll
    back), and a line saying what goes on meanwhile (``stopped_note``)."""
    try:
        return drive(run, journal, resumed=resumed)
    except Interrupted as stopped:
        if isinstance(stopped, Fenced | LeaseLost):
            run.say(f"{stopped}")
        else:
            run.say("stopped: " + stopped_note(run.namespace, run.vm, _last_written(run, journal)))
        return Outcome(
            migration_id=journal.id,
            plan=journal.plan,
            flow=journal.flow,
            result=INTERRUPTED,
            rule=Failure.INTERRUPTED,
            reason="stopped before the move ended; the journal is kept, the next run resumes it",
            resumed=resumed,
            commit=journal.commit,
            volumes=tuple((v.volume, v.source, v.target) for v in journal.volumes),
            namespace=run.namespace,
            vm=run.vm,
        )
