"""The loop over VMs: first finish (or roll back) every move a journal says is open, then start
new ones, in (namespace, name) order: one VM at a time, or up to ``--parallel`` N at once
(``apply.parallel``), resumed moves too.

The runner judges nothing itself: the engine's ``Stages`` (``apply.seam``) judge the plans at
the start of the run and each VM again right before its move (the cluster moved on while
earlier VMs were moving), with what render made for it; the runner journals the move and
drives it with ``machine.drive``. ``--max-vms`` bounds the new moves of one run; a maintenance
window that is shut leaves its VMs for a later run; after ``breaker`` consecutive failures the
run stops (the cause is probably not the VMs). The per-VM state machine knows nothing of this
loop.
"""

from __future__ import annotations

import threading
import uuid
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import Future
from dataclasses import replace
from functools import partial
from typing import Any

from reconciler.apply.begin import MOVES, first_journal
from reconciler.apply.context import MoveRun
from reconciler.apply.lanes import kubevirt_limits, source_node, unfinished_migrations
from reconciler.apply.parallel import LaneLoop, in_lanes
from reconciler.apply.read import vm_state, vmi_state
from reconciler.apply.seam import Options, Serialized, Stages, safely, serialized
from reconciler.apply.slots import Candidate, Migrating, MigrationLimits, next_to_start
from reconciler.apply.stopped import STOPPED, drive_until_stopped
from reconciler.apply.target_steps import remove_leftovers
from reconciler.apply.trust import journal_problems
from reconciler.kube.client import Cluster
from reconciler.kube.resources import VIRTUAL_MACHINES, VMIS
from reconciler.model import journal as journals
from reconciler.model.errors import ClusterError
from reconciler.model.failures import Failure
from reconciler.model.journal import Flow, Journal, LastMigration
from reconciler.model.judged import Judgement
from reconciler.model.outcome import (
    FAILED,
    ROLLED_BACK,
    SUCCEEDED,
    ApplyReport,
    Outcome,
)
from reconciler.model.plan import Plan, Retention
from reconciler.model.verdict import Action, VMVerdict
from reconciler.model.windows import window_open

Obj = Mapping[str, Any]


def _new_id() -> str:
    return uuid.uuid4().hex[:12]


class Runner:
    def __init__(
        self,
        cluster: Cluster,
        plans: Sequence[Plan],
        stages: Stages,
        options: Options,
        *,
        progress: Callable[[str], None],
        stop: threading.Event,
        allowed_namespaces: frozenset[str] | None = None,
    ) -> None:
        if options.parallel > 1:  # lanes share these: one at a time
            options = replace(options, listener=Serialized(options.listener))
            progress = serialized(progress)
        self.cluster = cluster
        self.plans = tuple(plans)
        self.stages = stages
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
            on_step=lambda journal, step: safely(
                self.options.listener.step_done, namespace, vm, journal, step
            ),
            guard=self.options.guard,
            token=self.options.token,
            health=self.options.health,
            plan_retention=self._retention_now(namespace, plan),
            volumes_writer=self.stages.checks.volumes_writer,
        )

    def _retention_now(self, namespace: str, plan: str) -> Retention | None:
        """The retention the plans now give this VM's move: its plan's (by name), else None
        (no such plan any more: the conservative reading, Keep)."""
        for p in self.plans:
            if f"{p.namespace}/{p.name}" == plan and p.namespace == namespace:
                return p.retention
        return None

    def _record(self, outcome: Outcome) -> None:
        if outcome.result == SUCCEEDED:
            written = self.stages.write_back(outcome.namespace, outcome.vm, outcome.volumes)
            if written is not None:
                outcome = replace(outcome, write_back=written)
        self.outcomes.append(outcome)
        safely(self.options.listener.move_finished, outcome)
        failed = outcome.result in (FAILED, ROLLED_BACK)
        self._consecutive_failures = self._consecutive_failures + 1 if failed else 0

    def _tripped(self) -> bool:
        return self._consecutive_failures >= self.options.breaker

    def run(self) -> ApplyReport:
        self._resume_open_moves()
        judged = self.stages.judge_all()
        pending: list[str] = []
        outside: list[str] = []
        if self.options.parallel > 1:
            stopped_early = self._start_in_lanes(judged, pending, outside)
        else:
            stopped_early = self._start_one_by_one(judged, pending, outside)
        return ApplyReport(
            outcomes=tuple(self.outcomes),
            verdicts=judged.verdicts,
            pending=tuple(pending),
            outside_window=tuple(outside),
            stopped_early=stopped_early,
            commit=self.options.commit,
            requests=self.cluster.requests,
            backing_off=tuple(self._backing_off),
            notes=tuple(self._notes),
            empty_plans=judged.empty_plans,
        )

    def _admit(
        self,
        verdict: VMVerdict,
        judged: Judgement,
        started: int,
        pending: list[str],
        outside: list[str],
    ) -> tuple[bool, str]:
        """Whether ``verdict``'s VM may start now (``started`` moves started or in flight),
        and, when the run is stopping, why. A VM that may not is put where the report says
        why (``pending``, ``outside``, backing off); one that needs no move is dropped."""
        if verdict.action is Action.BLOCKED:
            safely(self.options.listener.vm_blocked, verdict)
        if verdict.action not in MOVES:
            return False, ""
        key = f"{verdict.namespace}/{verdict.name}"
        if self.stop.is_set():
            pending.append(key)
            return False, STOPPED
        if self._tripped():
            pending.append(key)
            return False, f"{self.options.breaker} VMs failed in a row: stopping before the rest"
        if self.options.max_vms is not None and started >= self.options.max_vms:
            pending.append(key)
            return False, ""
        if (verdict.namespace, verdict.name) in self._touched:
            # One move of a VM per run: a VM whose move was just finished or rolled back
            # is not moved again at once (its rollback is the failure backoff counts).
            pending.append(key)
            return False, ""
        plan = self._plan(verdict)
        if plan.window is not None and not window_open(plan.window, self.options.now()):
            outside.append(key)
            return False, ""
        if self._backs_off(key, judged.last_moves.get((verdict.namespace, verdict.name))):
            pending.append(key)
            return False, ""
        return True, ""

    def _start_one_by_one(self, judged: Judgement, pending: list[str], outside: list[str]) -> str:
        """The default: each VM moved, verified and recorded before the next starts."""
        started = 0
        stopped_early = ""
        for verdict in judged.verdicts:
            go, why = self._admit(verdict, judged, started, pending, outside)
            stopped_early = stopped_early or why
            if not go:
                continue
            outcome = self._move(verdict.namespace, verdict.name)
            if outcome is not None:
                started += 1
                self._record(outcome)
        return stopped_early

    def _start_in_lanes(self, judged: Judgement, pending: list[str], outside: list[str]) -> str:
        """``--parallel N`` (``apply.parallel``): up to N moves in flight, started in the
        plans' order as lanes and KubeVirt's migration slots allow (``apply.slots``). A live
        move held only by migrations that are not ours, with no lane of ours in flight, is
        left for a later run rather than waited for without end."""
        held: set[str] = set()  # VMs whose wait for a slot was said
        limits = kubevirt_limits(self.cluster)
        why: list[str] = []

        def admit(verdict: VMVerdict, started: int) -> bool:
            go, reason = self._admit(verdict, judged, started, pending, outside)
            why.append(reason)
            return go

        def leave(verdict: VMVerdict) -> None:
            key = f"{verdict.namespace}/{verdict.name}"
            pending.append(key)
            self._notes.append(
                f"VM {key}: left for a later run: KubeVirt's migration slots are taken by "
                "migrations that are not this run's"
            )

        LaneLoop(
            lanes=self.options.parallel,
            stop=self.stop,
            admit=admit,
            choose=lambda waiting, flying: self._choose(waiting, flying, limits, held),
            move=self._move,
            record=self._record,
            stopping=lambda: self.stop.is_set() or self._tripped(),
            leave=leave,
        ).run(judged.verdicts)
        return next((reason for reason in why if reason), "")

    def _choose(
        self,
        waiting: Sequence[VMVerdict],
        flying: Mapping[Future[Outcome | None], Candidate],
        limits: MigrationLimits,
        held: set[str],
    ) -> Candidate | None:
        """The waiting VM that may start now (``slots.next_to_start``); a VM held for a slot is
        said once."""
        candidates = [self._candidate(v) for v in waiting]
        migrating: list[Migrating] = []
        if any(c.flow is Flow.LIVE for c in candidates):
            migrating, _ = unfinished_migrations(self.cluster, self.namespaces)
            migrating += [
                Migrating(c.namespace, c.name, c.node)
                for c in flying.values()
                if c.flow is Flow.LIVE
            ]
        chosen, waits = next_to_start(
            candidates,
            lanes=self.options.parallel,
            busy=len(flying),
            migrating=migrating,
            limits=limits,
        )
        for held_back in waits:
            key = f"{held_back.candidate.namespace}/{held_back.candidate.name}"
            if key not in held:
                held.add(key)
                self.progress(f"{key}: waits for a migration slot: {held_back.reason}")
        return chosen

    def _candidate(self, verdict: VMVerdict) -> Candidate:
        if verdict.action is not Action.MOVE_LIVE:
            return Candidate(verdict.namespace, verdict.name, Flow.OFFLINE)
        vmi = self.cluster.get(VMIS, verdict.namespace, verdict.name)
        return Candidate(verdict.namespace, verdict.name, Flow.LIVE, node=source_node(vmi))

    def _backs_off(self, key: str, last: LastMigration | None) -> bool:
        """The VM's last move failed recently: wait (backoff grows with each failure)."""
        if last is None:
            return False
        until = last.retry_after(self.options.backoff_base, self.options.backoff_cap)
        if until is None or until <= self.options.now():
            return False
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

    def _journal_namespaces(self) -> list[tuple[str, list[dict[str, Any]]]]:
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
        by_namespace: dict[str, list[dict[str, Any]]] = {n: [] for n in self.namespaces}
        for vm in everything:
            by_namespace.setdefault(str(vm["metadata"].get("namespace")), []).append(vm)
        return sorted(by_namespace.items())

    def _resume_open_moves(self) -> None:
        """Every VM with a journal, in order: finish or roll back its move first (whatever
        commit of the plans started it, and whether or not a plan still selects it), up to
        ``--parallel`` of a namespace at once (the lanes they were started in). The journal is
        untrusted input (anyone who may patch the VM may write it): it is acted on only if it
        passes the same scope checks as a fresh render (``apply.trust``). Then the
        destinations no journal claims any more are cleaned up."""
        for namespace, vms in self._journal_namespaces():
            open_moves: set[str] = set()
            unreadable = False
            resumes: list[Callable[[], Outcome | None]] = []
            for vm in sorted(vms, key=lambda o: vm_state(o).name):
                state = vm_state(vm)
                name = state.name
                try:
                    journal = journals.read_journal(state.annotations)
                except journals.JournalError as exc:
                    unreadable = True
                    self._refuse(
                        namespace,
                        name,
                        None,
                        Failure.JOURNAL_UNREADABLE,
                        f"the journal annotation cannot be read: {exc}",
                    )
                    continue
                if journal is None:
                    continue
                open_moves.add(journal.id)
                problems = journal_problems(namespace, vm, journal, self.stages.checks.scope)
                if problems:
                    self._refuse(
                        namespace,
                        name,
                        journal,
                        Failure.JOURNAL_REFUSED,
                        "the journal asks for what a move of this VM never does: "
                        + "; ".join(problems[:5]),
                    )
                    continue
                self._touched.add((namespace, name))
                resumes.append(partial(self._resume, namespace, name, journal, state.journal_text))
            in_lanes(resumes, lanes=self.options.parallel, stop=self.stop, record=self._record)
            if self.stop.is_set():
                return
            if not unreadable:
                self.options.guard()
                remove_leftovers(
                    self.cluster,
                    namespace,
                    open_moves,
                    self.progress,
                    settle=self.options.settings.settle_timeout,
                )

    def _resume(
        self, namespace: str, name: str, journal: Journal, journal_text: str | None
    ) -> Outcome:
        """Drive the open move ``journal`` of ``namespace/name`` to its end (one lane)."""
        run = self._run_for(namespace, name, journal.plan)
        run.journal_text = journal_text
        if journal.commit and journal.commit != self.options.commit:
            run.say(
                f"move {journal.id} was started at commit {journal.commit[:12]} of the "
                f"plans (this run: {(self.options.commit or 'unknown')[:12]}): "
                "finishing it first"
            )
        if namespace not in self.namespaces:
            run.say("no plan selects this namespace any more: finishing its open move")
        safely(self.options.listener.move_started, namespace, name, journal, True)
        return drive_until_stopped(run, journal, resumed=True)

    def _refuse(
        self, namespace: str, name: str, journal: Journal | None, rule: Failure, reason: str
    ) -> None:
        """A journal that is not acted on: left as it is, for a human (status shows it)."""
        self.progress(f"{namespace}/{name}: {reason}; left as it is: fix or remove the journal")
        self._touched.add((namespace, name))
        self._record(
            Outcome(
                migration_id=journal.id if journal else "",
                plan=journal.plan if journal else "",
                flow=journal.flow if journal else None,
                result=FAILED,
                rule=rule,
                reason=reason,
                namespace=namespace,
                vm=name,
            )
        )

    def _move(self, namespace: str, name: str) -> Outcome | None:
        """Judge ``namespace/name`` again right before its move (``Stages.judge``) and, if it
        still moves, journal and drive the move. None when it no longer needs to move."""
        judged = self.stages.judge(namespace, name)
        fresh = judged.verdict
        if fresh is None or fresh.action not in MOVES or judged.plan is None:
            self.progress(
                f"{namespace}/{name}: no longer needs a move "
                f"({fresh.action.value if fresh else 'not selected'})"
            )
            return None
        plan = judged.plan
        migration_id = _new_id()
        if judged.rendering is None:
            return Outcome(
                migration_id=migration_id,
                plan=f"{namespace}/{plan.name}",
                flow=None,
                result=FAILED,
                rule=Failure.RENDER_FAILED,
                reason=judged.render_error,
                namespace=namespace,
                vm=name,
            )
        vmi = self.cluster.get(VMIS, namespace, name)
        journal = first_journal(
            judged=judged,
            vmi=vmi_state(vmi) if vmi is not None else None,
            migration_id=migration_id,
            now=self.options.now(),
            commit=self.options.commit,
        )
        run = self._run_for(namespace, name, journal.plan)
        self._touched.add((namespace, name))
        run.say(
            f"moving {journal.flow.value} (move {migration_id}, plan {plan.name}): "
            + ", ".join(f"{v.volume} {v.from_class} -> {v.to_class}" for v in journal.volumes)
        )
        safely(self.options.listener.move_started, namespace, name, journal, False)
        return drive_until_stopped(run, journal)
