"""The per-VM state machine: drive one journal through its steps to the end.

    write journal(step) -> [failpoint before] -> step -> [failpoint after] -> next step

A ``StepFailed`` going forward switches the journal to its rollback (at the rollback's first
step) and carries on; one during a rollback stops with the journal kept ("needs attention":
the next run tries again, ``status`` shows where). The loop over VMs (``runner``) knows nothing
of steps, so running several VMs at once later is a change to the runner only.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field

from reconciler.apply import (
    failpoint,
    migration,
    source_steps,
    store,
    target_steps,
    verify,
    vm_steps,
)
from reconciler.apply.context import MoveRun, StepFailed
from reconciler.kube.resources import DATA_VOLUMES
from reconciler.model.failures import Failure
from reconciler.model.journal import Journal, LastMigration, Step
from reconciler.model.names import MIGRATION_LABEL
from reconciler.model.outcome import FAILED, ROLLED_BACK, SUCCEEDED, Outcome, Result
from reconciler.model.plan import Retention

log = logging.getLogger(__name__)
StepFn = Callable[[MoveRun, Journal], Journal]


class IncompleteSteps(RuntimeError):
    """The step tables do not implement every ``Step`` exactly once (a bug: raised at import,
    so no run ever starts with a step it cannot take)."""


def registry(tables: Iterable[Mapping[Step, StepFn]]) -> Mapping[Step, StepFn]:
    """One table of every step's function from the step modules' tables. Raises
    ``IncompleteSteps`` when a ``Step`` has no function, or two."""
    steps: dict[Step, StepFn] = {}
    twice: set[Step] = set()
    for table in tables:
        for step, fn in table.items():
            if step in steps:
                twice.add(step)
            steps[Step(step)] = fn
    missing = set(Step) - set(steps)
    if missing or twice:
        said = []
        if missing:
            said.append("no implementation: " + ", ".join(sorted(missing)))
        if twice:
            said.append("two implementations: " + ", ".join(sorted(twice)))
        raise IncompleteSteps("steps with " + "; ".join(said))
    return steps


STEPS: Mapping[Step, StepFn] = registry(
    (vm_steps.STEPS, target_steps.STEPS, source_steps.STEPS, migration.STEPS, verify.STEPS)
)


def drive(run: MoveRun, journal: Journal, *, resumed: bool = False) -> Outcome:
    """Run ``journal`` from its current step to the end; the VM's outcome.

    Raises ``Interrupted`` (journal kept, consistent) and ``ClusterError`` (likewise: every
    step is idempotent, so the next run resumes where this one stopped).
    """
    tally = _Tally(resumed)
    run.migration_id, run.commit = journal.id, journal.commit
    if resumed:
        run.say(
            f"resuming move {journal.id} at step {journal.step.value}"
            + (f" (rolling back: {journal.rollback_reason})" if journal.rolling_back else "")
        )
    while True:
        run.check_stop()
        run.step = journal.step.value
        try:
            journal = store.write(run, journal)
        except StepFailed as failure:  # the VM was deleted
            return _vm_gone(run, journal, failure, tally)
        failpoint.hit("before", journal.flow, journal.step)
        began = time.monotonic()
        try:
            if not journal.rolling_back and run.seconds_left(journal) <= 0:
                raise StepFailed(Failure.TIMEOUT, "the move ran past its deadline")
            journal = STEPS[journal.step](run, journal)
        except StepFailed as failure:
            if failure.rule is Failure.VM_DELETED:
                return _vm_gone(run, journal, failure, tally)
            if journal.rolling_back:
                run.say(
                    f"rollback failed at {journal.step.value}: {failure.reason}; the journal "
                    "is kept: fix what is named, then run again"
                )
                return tally.outcome(
                    run,
                    journal,
                    FAILED,
                    rule=failure.rule,
                    reason=f"rollback failed: {failure.reason}",
                )
            run.say(f"{journal.step.value} failed: {failure.reason} [{failure.rule}]; rolling back")
            journal = journal.rolled_back_because(failure.rule, failure.reason)
            continue
        tally.steps.append((journal.step.value, time.monotonic() - began))
        run.on_step(journal, journal.step)
        failpoint.hit("after", journal.flow, journal.step)
        following = journal.next_step()
        if following is not None:
            journal = journal.at(following)
            continue
        result = ROLLED_BACK if journal.rolling_back else SUCCEEDED
        if result == SUCCEEDED:
            target_steps.settle_targets(run, journal)
        store.close(run, journal, _last(run, journal, result))
        return tally.outcome(
            run, journal, result, rule=journal.rollback_rule, reason=journal.rollback_reason
        )


def _last(run: MoveRun, journal: Journal, result: Result) -> LastMigration:
    in_use = journal.sources if journal.rolling_back else journal.targets
    kept = dict(journal.sources_kept)
    deleted = (
        ()
        if journal.rolling_back or journal.retention != Retention.DELETE
        else tuple(v.source for v in journal.volumes if v.source not in kept)
    )
    return LastMigration(
        id=journal.id,
        plan=journal.plan,
        flow=journal.flow,
        result=result,
        started=journal.started,
        finished=run.now().isoformat(timespec="seconds"),
        volumes=dict(in_use),
        rule=journal.rollback_rule,
        reason=journal.rollback_reason,
        commit=journal.commit,
        sources_deleted=deleted,
        sources_kept=kept,
    )


def _vm_gone(run: MoveRun, journal: Journal, failure: StepFailed, tally: _Tally) -> Outcome:
    """The VM was deleted mid-move: its journal went with it. Delete what this move created;
    the sources were never touched."""
    for dv in run.cluster.list_objects(
        DATA_VOLUMES, run.namespace, label_selector=f"{MIGRATION_LABEL}={journal.id}"
    ):
        run.cluster.delete(DATA_VOLUMES, run.namespace, str(dv["metadata"]["name"]))
    run.say("the VM was deleted during the move; removed the DataVolumes this move created")
    return tally.outcome(run, journal, FAILED, rule=failure.rule, reason=failure.reason)


@dataclass
class _Tally:
    """How one drive went: since when, which steps took how long, resumed or fresh."""

    resumed: bool
    clock: float = field(default_factory=time.monotonic)
    steps: list[tuple[str, float]] = field(default_factory=list)

    def outcome(
        self, run: MoveRun, journal: Journal, result: Result, *, rule: str, reason: str
    ) -> Outcome:
        return Outcome(
            migration_id=journal.id,
            plan=journal.plan,
            flow=journal.flow,
            result=result,
            rule=rule,
            reason=reason,
            seconds=time.monotonic() - self.clock,
            steps=tuple(self.steps),
            resumed=self.resumed,
            commit=journal.commit,
            volumes=tuple((v.volume, v.source, v.target) for v in journal.volumes),
            namespace=run.namespace,
            vm=run.vm,
        )
