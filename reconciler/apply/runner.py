"""The loop over VMs: first finish (or roll back) every move a journal says is open, then start
new ones, one VM at a time, in (namespace, name) order.

Each new move is judged again on a fresh observation of its namespace right before it starts
(the cluster moved on while earlier VMs were moving), rendered, journaled and driven by
``machine.drive``. ``--max-vms`` bounds the new moves of one run; a maintenance window that is
shut leaves its VMs for a later run; after ``breaker`` consecutive failures the run stops (the
cause is probably not the VMs). The per-VM state machine knows nothing of this loop.
"""

from __future__ import annotations

import logging
import threading
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from typing import Protocol

from reconciler.apply.begin import first_journal
from reconciler.apply.context import Interrupted, MoveRun, Settings
from reconciler.apply.machine import drive
from reconciler.apply.store import annotations_of
from reconciler.apply.vm_steps import run_strategy_of
from reconciler.diff.git_owners import git_owners
from reconciler.diff.judge import diff
from reconciler.kube.client import Cluster
from reconciler.kube.resources import VIRTUAL_MACHINES, VMIS
from reconciler.model import journal as journals
from reconciler.model.errors import ClusterError, PlanError, TemplateError
from reconciler.model.journal import Journal, Step
from reconciler.model.names import JOURNAL_ANNOTATION
from reconciler.model.outcome import (
    FAILED,
    INTERRUPTED,
    ROLLED_BACK,
    SUCCEEDED,
    ApplyReport,
    Outcome,
)
from reconciler.model.plan import Plan
from reconciler.model.verdict import Action, VMVerdict
from reconciler.model.windows import window_open
from reconciler.observe.fetch import fetch
from reconciler.observe.parse import parse_vm
from reconciler.render.move import render_vm
from reconciler.render.sandbox import TemplateSet
from reconciler.report.writeback import write_back

log = logging.getLogger(__name__)
MOVES = (Action.MOVE_LIVE, Action.MOVE_OFFLINE)


class Listener(Protocol):
    """Who hears about a run as it goes (Events, metrics, status: ``reconciler.publish``,
    wired by the engine; apply never imports it). Every method must return quickly and never
    raise: a failure to report is logged, not a reason to stop a move."""

    def move_started(self, namespace: str, vm: str, journal: Journal, resumed: bool) -> None: ...

    def step_done(self, namespace: str, vm: str, journal: Journal, step: Step) -> None:
        """``step`` of the move (or of its rollback) finished; ``journal`` as it left it."""

    def move_finished(self, outcome: Outcome) -> None: ...

    def vm_blocked(self, verdict: VMVerdict) -> None: ...


class Silent:
    """The default ``Listener``: hears nothing."""

    def move_started(self, namespace: str, vm: str, journal: Journal, resumed: bool) -> None:
        return None

    def step_done(self, namespace: str, vm: str, journal: Journal, step: Step) -> None:
        return None

    def move_finished(self, outcome: Outcome) -> None:
        return None

    def vm_blocked(self, verdict: VMVerdict) -> None:
        return None


@dataclass
class Options:
    max_vms: int | None = None
    breaker: int = 3  # consecutive failed VMs that stop the run
    commit: str | None = None
    settings: Settings = field(default_factory=Settings)
    now: Callable[[], datetime] = lambda: datetime.now(UTC)
    listener: Listener = field(default_factory=Silent)


def _new_id() -> str:
    return uuid.uuid4().hex[:12]


def _safely(hear: Callable[..., None], *args: object) -> None:
    try:
        hear(*args)
    except Exception:  # reporting must never stop a move
        log.exception("a listener failed")


class Runner:
    def __init__(
        self,
        cluster: Cluster,
        plans: Sequence[Plan],
        templates: TemplateSet,
        options: Options,
        *,
        progress: Callable[[str], None],
        stop: threading.Event,
        allowed_namespaces: frozenset[str] | None = None,
    ) -> None:
        self.cluster = cluster
        self.plans = tuple(plans)
        self.templates = templates
        self.options = options
        self.progress = progress
        self.stop = stop
        self.allowed = allowed_namespaces
        self.namespaces = sorted({p.namespace for p in plans})
        self.outcomes: list[Outcome] = []
        self._consecutive_failures = 0

    def _run_for(self, namespace: str, vm: str) -> MoveRun:
        return MoveRun(
            self.cluster,
            namespace,
            vm,
            settings=self.options.settings,
            progress=self.progress,
            stop=self.stop,
            now=self.options.now,
            on_step=lambda journal, step: _safely(
                self.options.listener.step_done, namespace, vm, journal, step
            ),
        )

    def _record(self, outcome: Outcome) -> None:
        if outcome.result == SUCCEEDED:
            outcome = self._with_write_back(outcome)
        self.outcomes.append(outcome)
        _safely(self.options.listener.move_finished, outcome)
        failed = outcome.result in (FAILED, ROLLED_BACK)
        self._consecutive_failures = self._consecutive_failures + 1 if failed else 0

    def _with_write_back(self, outcome: Outcome) -> Outcome:
        """A moved VM that Argo CD or Flux applies from Git: the outcome with the change to
        commit to its manifest (``report.writeback``). One GET; reporting never fails a move."""
        try:
            vm = self.cluster.get(VIRTUAL_MACHINES, outcome.namespace, outcome.vm)
            owners = git_owners(parse_vm(vm)) if vm is not None else ()
            if vm is None or not owners:
                return outcome
            return replace(outcome, write_back=write_back(vm, outcome.volumes, owners))
        except (ClusterError, ValueError) as exc:
            log.warning("%s/%s: no write-back: %s", outcome.namespace, outcome.vm, exc)
            return outcome

    def _tripped(self) -> bool:
        return self._consecutive_failures >= self.options.breaker

    def run(self) -> ApplyReport:
        self._resume_open_moves()
        snapshot = fetch(self.cluster, self.namespaces)
        judged = diff(self.plans, snapshot, allowed_namespaces=self.allowed)
        if judged.problems:
            raise PlanError(list(judged.problems))
        pending: list[str] = []
        outside: list[str] = []
        started = 0
        stopped_early = ""
        for verdict in judged.vms:
            if verdict.action is Action.BLOCKED:
                _safely(self.options.listener.vm_blocked, verdict)
            if verdict.action not in MOVES:
                continue
            key = f"{verdict.namespace}/{verdict.name}"
            if self.stop.is_set():
                stopped_early = stopped_early or _STOPPED
                pending.append(key)
                continue
            if self._tripped():
                stopped_early = stopped_early or (
                    f"{self.options.breaker} VMs failed in a row: stopping before the rest"
                )
                pending.append(key)
                continue
            if self.options.max_vms is not None and started >= self.options.max_vms:
                pending.append(key)
                continue
            plan = self._plan(verdict)
            if plan.window is not None and not window_open(plan.window, self.options.now()):
                outside.append(key)
                continue
            outcome = self._move(verdict.namespace, verdict.name)
            if outcome is not None:
                started += 1
                self._record(outcome)
        return ApplyReport(
            outcomes=tuple(self.outcomes),
            verdicts=judged.vms,
            pending=tuple(pending),
            outside_window=tuple(outside),
            stopped_early=stopped_early,
            commit=self.options.commit,
            requests=self.cluster.requests,
        )

    def _plan(self, verdict: VMVerdict) -> Plan:
        return next(
            p for p in self.plans if p.namespace == verdict.namespace and p.name == verdict.plan
        )

    def _resume_open_moves(self) -> None:
        """Every VM with a journal, in order: finish or roll back its move first (whatever
        commit of the plans started it: the journal holds all the move needs)."""
        for namespace in self.namespaces:
            vms = self.cluster.list_objects(VIRTUAL_MACHINES, namespace)
            for vm in sorted(vms, key=lambda o: str(o["metadata"]["name"])):
                text = annotations_of(vm).get(JOURNAL_ANNOTATION)
                if text is None:
                    continue
                name = str(vm["metadata"]["name"])
                try:
                    journal = journals.decode(text)
                except journals.JournalError as exc:
                    self._record(
                        Outcome(
                            migration_id="",
                            plan="",
                            flow="",
                            result=FAILED,
                            rule="journal-unreadable",
                            reason=f"the journal annotation cannot be read: {exc}",
                            namespace=namespace,
                            vm=name,
                        )
                    )
                    continue
                if self.stop.is_set():
                    return
                run = self._run_for(namespace, name)
                if journal.commit and journal.commit != self.options.commit:
                    run.say(
                        f"move {journal.id} was started at commit {journal.commit[:12]} of the "
                        f"plans (this run: {(self.options.commit or 'unknown')[:12]}): "
                        "finishing it first"
                    )
                _safely(self.options.listener.move_started, namespace, name, journal, True)
                self._record(_drive(run, journal, resumed=True))

    def _move(self, namespace: str, name: str) -> Outcome | None:
        """Judge ``namespace/name`` again on a fresh look at its namespace and, if it still
        moves, journal and drive the move. None when it no longer needs to move."""
        snapshot = fetch(self.cluster, [namespace])
        plans = [p for p in self.plans if p.namespace == namespace]
        fresh = next(
            (
                v
                for v in diff(plans, snapshot, allowed_namespaces=self.allowed).vms
                if v.name == name
            ),
            None,
        )
        if fresh is None or fresh.action not in MOVES:
            self.progress(
                f"{namespace}/{name}: no longer needs a move "
                f"({fresh.action.value if fresh else 'not selected'})"
            )
            return None
        vm = snapshot.vms[(namespace, name)]
        plan = self._plan(fresh)
        migration_id = _new_id()
        try:
            rendered = render_vm(fresh, vm, snapshot, self.templates, plan_name=plan.name)
        except TemplateError as exc:
            return Outcome(
                migration_id=migration_id,
                plan=f"{namespace}/{plan.name}",
                flow="",
                result=FAILED,
                rule="render-failed",
                reason=str(exc),
                namespace=namespace,
                vm=name,
            )
        vmi = self.cluster.get(VMIS, namespace, name)
        journal = first_journal(
            verdict=fresh,
            vm=vm,
            vmi=vmi,
            rendered=rendered,
            snapshot=snapshot,
            plan=plan,
            migration_id=migration_id,
            run_strategy=run_strategy_of(vm.raw),
            now=self.options.now(),
            commit=self.options.commit,
        )
        run = self._run_for(namespace, name)
        run.say(
            f"moving {journal.flow.value} (move {migration_id}, plan {plan.name}): "
            + ", ".join(f"{v.volume} {v.from_class} -> {v.to_class}" for v in journal.volumes)
        )
        _safely(self.options.listener.move_started, namespace, name, journal, False)
        return _drive(run, journal)


_STOPPED = "stopped (SIGTERM, or the Lease was lost): the rest is left for the next run"


def _drive(run: MoveRun, journal: Journal, *, resumed: bool = False) -> Outcome:
    """``machine.drive``; a stop (SIGTERM, a lost Lease) is an ``Interrupted`` outcome with the
    journal kept as written, for the next run to resume."""
    try:
        return drive(run, journal, resumed=resumed)
    except Interrupted:
        run.say(f"stopped; move {journal.id} stays journaled for the next run")
        return Outcome(
            migration_id=journal.id,
            plan=journal.plan,
            flow=journal.flow.value,
            result=INTERRUPTED,
            rule="interrupted",
            reason="stopped before the move ended; the journal is kept, the next run resumes it",
            resumed=resumed,
            commit=journal.commit,
            volumes=tuple((v.volume, v.source, v.target) for v in journal.volumes),
            namespace=run.namespace,
            vm=run.vm,
        )
