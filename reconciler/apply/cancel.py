"""`cancel`: roll one VM's open move back through its journal, fenced like `apply`.

The move's journal is switched to its rollback (``Journal.rolled_back_because("cancelled",
"cancelled by <who>")``) and driven by ``machine.drive``, exactly as `apply` rolls back a
failed move: for a live move the revert of the swap, which is KubeVirt's cancellation of the
volume migration (the guest stays on its source disks, the same VMI), then the wait for
KubeVirt to confirm it, the removal of the strategy we added, and the destinations deleted;
for an offline move the revert, the original run strategy restored (the VM runs again if it
ran), the destinations deleted.

The same fence as `apply` (``apply.lease``): the engine (``engine.cancel``) takes the Lease
first (held by another run: ``LockHeld``, exit 4, nothing changed), every write passes
``Cluster.write_guard``, and the
journal is compare-and-swapped against the annotation's text as read, so a cancel never acts
on a journal someone else rewrote meanwhile. The journal is untrusted input (``apply.trust``):
one that asks for what a move never does is refused and left for a human.

A move is cancelled only while its rollback cannot lose data (``CANCELLABLE``): a live move
until its migration finished; an offline move until the VM may have started on its new disks
(``start``): after that the destination has writes the source lacks, and the move is finished
by the next `apply` (to move the VM back, change the plan). A move already rolling back is
finished.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import datetime

from reconciler.apply.context import MoveRun, Settings
from reconciler.apply.read import vm_state
from reconciler.apply.seam import Checks
from reconciler.apply.stopped import drive_until_stopped
from reconciler.apply.trust import journal_problems
from reconciler.kube.client import Cluster
from reconciler.kube.resources import VIRTUAL_MACHINES
from reconciler.model import journal as journals
from reconciler.model.errors import ExitCode, Problem, UserError
from reconciler.model.failures import Failure
from reconciler.model.journal import Flow, Step
from reconciler.model.outcome import FAILED, Outcome

CANCELLED = Failure.CANCELLED
"""The rollback rule of a cancelled move (in the journal, the outcome and the record)."""

CANCELLABLE: Mapping[Flow, frozenset[Step]] = {
    Flow.LIVE: frozenset({Step.CREATE_TARGETS, Step.WAIT_TARGETS, Step.SWAP, Step.WAIT_MIGRATION}),
    Flow.OFFLINE: frozenset(
        {Step.STOP, Step.WAIT_STOPPED, Step.CREATE_TARGETS, Step.WAIT_TARGETS, Step.SWAP}
    ),
}
"""The forward steps a move may be cancelled at: its rollback can put back everything."""


class NothingToCancel(Exception):
    """The VM has no open move (exit 0: what a cancel wants, no move in flight, holds)."""

    exit_code = ExitCode.OK


def too_late(namespace: str, vm: str, journal: journals.Journal) -> UserError:
    """A move past the point where a rollback could lose no data (exit 2, nothing changed)."""
    why = (
        "its migration has finished: the VM runs on its new disks"
        if journal.flow is Flow.LIVE
        else "the VM may have run on its new disks, which the sources lack"
    )
    return UserError(
        [
            Problem(
                None,
                f"move {journal.id} of {namespace}/{vm} cannot be cancelled at step "
                f"{journal.step.value}: {why}",
                "the next `apply` finishes it; to move the VM back, change its plan's "
                "storageClass (or remove the VM from the plan) and apply again",
            )
        ]
    )


def no_such_vm(namespace: str, vm: str) -> UserError:
    return UserError(
        [
            Problem(
                None,
                f"VirtualMachine {namespace}/{vm} does not exist",
                "check the name and the namespace (NAMESPACE/VM, or -n NAMESPACE VM)",
            )
        ]
    )


def nothing_to_cancel(namespace: str, vm: str, raw: Mapping[str, object]) -> NothingToCancel:
    """The message for a VM without a journal, naming its last move when it has one."""
    last = journals.read_last(vm_state(raw).annotations)
    said = f"nothing to cancel: VirtualMachine {namespace}/{vm} has no move in flight"
    if last is not None:
        said += (
            f"; its last move {last.id} ({last.flow.value}) ended {last.result} at "
            f"{last.finished}" + (f" ({last.rule})" if last.rule else "")
        )
    return NothingToCancel(said)


def cancel_move(
    cluster: Cluster,
    namespace: str,
    vm: str,
    *,
    who: str,
    settings: Settings,
    progress: Callable[[str], None],
    stop: threading.Event,
    now: Callable[[], datetime],
    guard: Callable[[], None],
    token: str,
    health: Callable[[], str | None],
    checks: Checks,
) -> Outcome:
    """Roll back the open move of ``namespace/vm``, with the Lease already held (``guard``,
    ``token``); ``checks`` are the engine's (the journal's scope). The outcome:
    ``RolledBack`` (cancelled), ``Failed`` (the rollback could not finish, or the journal was
    refused), ``Interrupted`` (SIGTERM, a lost Lease). Raises
    ``NothingToCancel``, ``UserError`` (no such VM, or too late) and ``ClusterError``."""
    found = cluster.get(VIRTUAL_MACHINES, namespace, vm)
    if found is None:
        raise no_such_vm(namespace, vm)
    state = vm_state(found)
    text = state.journal_text
    if text is None:
        raise nothing_to_cancel(namespace, vm, found)
    run = MoveRun(
        cluster,
        namespace,
        vm,
        settings=settings,
        progress=progress,
        stop=stop,
        now=now,
        guard=guard,
        token=token,
        health=health,
        volumes_writer=checks.volumes_writer,
    )
    try:
        journal = journals.read_journal(state.annotations)
    except journals.JournalError as exc:
        return _refused(run, None, Failure.JOURNAL_UNREADABLE, f"the journal cannot be read: {exc}")
    if journal is None:
        raise nothing_to_cancel(namespace, vm, found)
    problems = journal_problems(namespace, found, journal, checks.scope)
    if problems:
        reason = "the journal asks for what a move of this VM never does: " + "; ".join(
            problems[:5]
        )
        return _refused(run, journal, Failure.JOURNAL_REFUSED, reason)
    run.journal_text = text  # the compare-and-swap of the first write is against it
    run.migration_id, run.commit = journal.id, journal.commit
    if journal.rolling_back:  # finish it ("resuming move ... (rolling back: ...)")
        return drive_until_stopped(run, journal, resumed=True)
    if journal.step not in CANCELLABLE[journal.flow]:
        raise too_late(namespace, vm, journal)
    how = (
        "reverting the volumes, which makes KubeVirt cancel the migration"
        if journal.flow is Flow.LIVE
        else "back to the sources and the original run strategy"
    )
    run.say(
        f"cancelling move {journal.id} ({journal.flow.value}, at step {journal.step.value}): "
        f"rolling back, {how}"
    )
    return drive_until_stopped(
        run, journal.rolled_back_because(CANCELLED, f"cancelled by {who}"), resumed=False
    )


def moves_again_after(
    cluster: Cluster, namespace: str, vm: str, base: float, cap: float
) -> datetime | None:
    """When `apply` may start a move of the VM again after its cancelled (rolled back) move:
    its last-migration record's backoff (``LastMigration.retry_after``); None: at once."""
    found = cluster.get(VIRTUAL_MACHINES, namespace, vm)
    last = journals.read_last(vm_state(found).annotations) if found is not None else None
    return last.retry_after(base, cap) if last is not None else None


def _refused(run: MoveRun, journal: journals.Journal | None, rule: Failure, reason: str) -> Outcome:
    run.say(f"{reason}; left as it is: fix or remove the journal")
    return Outcome(
        migration_id=journal.id if journal else "",
        plan=journal.plan if journal else "",
        flow=journal.flow if journal else None,
        result=FAILED,
        rule=rule,
        reason=reason,
        namespace=run.namespace,
        vm=run.vm,
    )


@dataclass(frozen=True)
class Cancelled:
    """What ``cancel`` did; ``moves_again_after``: when `apply` may start a move of the VM
    again (its backoff after a rolled-back move), if a plan still asks for one."""

    outcome: Outcome
    moves_again_after: datetime | None = None
