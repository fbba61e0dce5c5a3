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
from reconciler.apply.context import Fenced, Interrupted, MoveRun, Settings
from reconciler.apply.lease import LeaseLost
from reconciler.apply.machine import drive
from reconciler.apply.store import annotations_of
from reconciler.apply.target_steps import remove_leftovers
from reconciler.apply.trust import journal_problems
from reconciler.apply.vm_steps import run_strategy_of
from reconciler.diff.git_owners import git_owners
from reconciler.diff.judge import diff
from reconciler.kube.client import Cluster
from reconciler.kube.resources import VIRTUAL_MACHINES, VMIS
from reconciler.model import journal as journals
from reconciler.model.errors import ClusterError, PlanError, TemplateError
from reconciler.model.journal import Flow, Journal, Step
from reconciler.model.live import VMInfo
from reconciler.model.names import JOURNAL_ANNOTATION, LAST_MIGRATION_ANNOTATION
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
    # The fence (``apply.lease``): raises once the Lease is not provably ours; the token
    # every journal this run writes carries.
    guard: Callable[[], None] = lambda: None
    token: str = ""
    health: Callable[[], str | None] = lambda: None  # ``Lease.overdue``
    # Backoff after a failed (rolled back) move of a VM: base * 2^(failures-1), capped.
    backoff_base: float = 300.0
    backoff_cap: float = 6 * 3600.0


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
        self._touched: set[tuple[str, str]] = set()  # VMs a move of was driven this run
        self._backing_off: list[str] = []
        self._notes: list[str] = []

    def _run_for(self, namespace: str, vm: str, plan: str = "") -> MoveRun:
        """``plan`` (namespace/name) is the plan the move is of: its retention now decides,
        with the journal's, whether sources are deleted."""
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
            guard=self.options.guard,
            token=self.options.token,
            health=self.options.health,
            plan_retention=self._retention_now(namespace, vm, plan),
        )

    def _retention_now(self, namespace: str, vm: str, plan: str) -> str:
        """The retention the plans now give this VM's move: its plan's (by name), else ""
        (no such plan any more: the conservative reading, Keep)."""
        for p in self.plans:
            if f"{p.namespace}/{p.name}" == plan and p.namespace == namespace:
                return p.retention.value
        return ""

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
            if (verdict.namespace, verdict.name) in self._touched:
                # One move of a VM per run: a VM whose move was just finished or rolled back
                # is not moved again at once (its rollback is the failure backoff counts).
                pending.append(key)
                continue
            plan = self._plan(verdict)
            if plan.window is not None and not window_open(plan.window, self.options.now()):
                outside.append(key)
                continue
            if self._backs_off(snapshot.vms.get((verdict.namespace, verdict.name))):
                pending.append(key)
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
            backing_off=tuple(self._backing_off),
            notes=tuple(self._notes),
            empty_plans=judged.empty_plans,
        )

    def _backs_off(self, vm: VMInfo | None) -> bool:
        """The VM's last move failed recently: wait (backoff grows with each failure)."""
        if vm is None:
            return False
        text = vm.annotations.get(LAST_MIGRATION_ANNOTATION)
        last = journals.decode_last(text) if text else None
        until = (
            last.retry_after(self.options.backoff_base, self.options.backoff_cap) if last else None
        )
        if until is None or until <= self.options.now():
            return False
        key = f"{vm.namespace}/{vm.name}"
        assert last is not None
        self._backing_off.append(key)
        self._notes.append(
            f"VM {key}: backing off until {until.isoformat(timespec='seconds')} after "
            f"{last.failures} failed move(s) in a row (last: {last.rule or 'failed'})"
        )
        self.progress(
            f"{key}: not moved before {until.isoformat(timespec='seconds')}: its last "
            f"{last.failures} move(s) failed ({last.rule or 'rolled back'})"
        )
        return True

    def _plan(self, verdict: VMVerdict) -> Plan:
        return next(
            p for p in self.plans if p.namespace == verdict.namespace and p.name == verdict.plan
        )

    def _journal_namespaces(self) -> list[tuple[str, list[dict[str, object]]]]:
        """(namespace, its VMs) for every namespace a journal of ours may be in: every
        allowed namespace, whatever the current plans say (a move whose namespace left the
        plans must still be finished); with no allow-list, every namespace the run may list
        (cluster-wide, else the plans' when RBAC refuses that)."""
        if self.allowed is not None:
            names = sorted(set(self.allowed) | set(self.namespaces))
            return [(n, self.cluster.list_objects(VIRTUAL_MACHINES, n)) for n in names]
        try:
            everything = self.cluster.list_objects(VIRTUAL_MACHINES, None)
        except ClusterError as exc:
            if exc.code not in (401, 403):
                raise
            return [(n, self.cluster.list_objects(VIRTUAL_MACHINES, n)) for n in self.namespaces]
        by_namespace: dict[str, list[dict[str, object]]] = {n: [] for n in self.namespaces}
        for vm in everything:
            by_namespace.setdefault(str(vm["metadata"].get("namespace")), []).append(vm)
        return sorted(by_namespace.items())

    def _resume_open_moves(self) -> None:
        """Every VM with a journal, in order: finish or roll back its move first (whatever
        commit of the plans started it, and whether or not a plan still selects it). The
        journal is untrusted input (anyone who may patch the VM may write it): it is acted
        on only if it passes the same scope checks as a fresh render (``apply.trust``).
        Then the destinations no journal claims any more are cleaned up."""
        for namespace, vms in self._journal_namespaces():
            open_moves: set[str] = set()
            unreadable = False
            for vm in sorted(vms, key=lambda o: str(o["metadata"]["name"])):  # type: ignore[index]
                text = annotations_of(vm).get(JOURNAL_ANNOTATION)
                if text is None:
                    continue
                name = str(vm["metadata"]["name"])  # type: ignore[index]
                try:
                    journal = journals.decode(text)
                except journals.JournalError as exc:
                    unreadable = True
                    self._refuse(
                        namespace,
                        name,
                        None,
                        "journal-unreadable",
                        f"the journal annotation cannot be read: {exc}",
                    )
                    continue
                open_moves.add(journal.id)
                problems = journal_problems(namespace, vm, journal)
                if problems:
                    self._refuse(
                        namespace,
                        name,
                        journal,
                        "journal-refused",
                        "the journal asks for what a move of this VM never does: "
                        + "; ".join(problems[:5]),
                    )
                    continue
                if self.stop.is_set():
                    return
                run = self._run_for(namespace, name, journal.plan)
                run.journal_text = text
                if journal.commit and journal.commit != self.options.commit:
                    run.say(
                        f"move {journal.id} was started at commit {journal.commit[:12]} of the "
                        f"plans (this run: {(self.options.commit or 'unknown')[:12]}): "
                        "finishing it first"
                    )
                if namespace not in self.namespaces:
                    run.say("no plan selects this namespace any more: finishing its open move")
                self._touched.add((namespace, name))
                _safely(self.options.listener.move_started, namespace, name, journal, True)
                self._record(drive_until_stopped(run, journal, resumed=True))
            if not unreadable and not self.stop.is_set():
                self.options.guard()
                remove_leftovers(self.cluster, namespace, open_moves, self.progress)

    def _refuse(
        self, namespace: str, name: str, journal: Journal | None, rule: str, reason: str
    ) -> None:
        """A journal that is not acted on: left as it is, for a human (status shows it)."""
        self.progress(f"{namespace}/{name}: {reason}; left as it is: fix or remove the journal")
        self._touched.add((namespace, name))
        self._record(
            Outcome(
                migration_id=journal.id if journal else "",
                plan=journal.plan if journal else "",
                flow=journal.flow.value if journal else "",
                result=FAILED,
                rule=rule,
                reason=reason,
                namespace=namespace,
                vm=name,
            )
        )

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
        run = self._run_for(namespace, name, journal.plan)
        self._touched.add((namespace, name))
        run.say(
            f"moving {journal.flow.value} (move {migration_id}, plan {plan.name}): "
            + ", ".join(f"{v.volume} {v.from_class} -> {v.to_class}" for v in journal.volumes)
        )
        _safely(self.options.listener.move_started, namespace, name, journal, False)
        return drive_until_stopped(run, journal)


_STOPPED = "stopped (SIGTERM or Ctrl-C, or the Lease was lost): the rest is left for the next run"


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
