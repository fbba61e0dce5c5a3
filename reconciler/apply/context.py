"""What every step of one VM's move gets: the cluster, the VM's name, the clock, the output.

Steps are functions ``(MoveRun, Journal) -> Journal``; they raise ``StepFailed`` to roll the move
back (rule id + reason, kept as data for the report), ``Interrupted`` when the run must stop
with the journal as it is (SIGTERM, lost Lease), and let ``ClusterError`` through.
"""

from __future__ import annotations

import random
import threading
import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from reconciler.apply.narration import Narration
from reconciler.kube.client import Cluster
from reconciler.kube.watch import Observer, State, Stream, WaitTimeout
from reconciler.model.failures import Failure
from reconciler.model.journal import Journal, Step
from reconciler.model.plan import Retention
from reconciler.model.progress import Line


class StepFailed(Exception):
    """The move cannot go on: roll it back. ``rule`` is its id in the catalog
    (``model.failures``), ``reason`` says what happened."""

    def __init__(self, rule: Failure, reason: str) -> None:
        super().__init__(f"{reason} [{rule}]")
        self.rule = rule
        self.reason = reason


class Interrupted(Exception):
    """Stop now, leaving the journal as written (the next run resumes from it)."""


class Fenced(Interrupted):
    """The VM's journal is not the one this runner last wrote: another runner (which holds
    the Lease now) or a person wrote it. Nothing more is done to this VM in this run."""


@dataclass
class Settings:
    """Knobs of a run that are not in the plans (flags, or defaults)."""

    max_migration_attempts: int = 3  # failed VMIMs of one move before it is rolled back
    max_clone_restarts: int = 3  # DataVolume restartCount before a copy counts as failed
    rollback_timeout: float = 900.0  # seconds for each wait of a rollback
    settle_timeout: float = 120.0  # seconds for status to settle (verify, stop, start)
    release_timeout: float = 600.0  # seconds to wait for a source's last pod (retention Delete)
    tick: float = 2.0  # seconds between looks at a wait's progress (printed when it changed)
    heartbeat: float = 30.0  # seconds between two lines of a wait in which nothing changed
    patch_budget: float = 30.0  # seconds a forward step retries a VM patch that conflicts
    rollback_patch_budget: float = 300.0  # the same for a rollback's steps (more patient)


@dataclass
class MoveRun:
    """One VM's move in progress. ``stop`` is set by SIGTERM or a lost Lease."""

    cluster: Cluster
    namespace: str
    vm: str
    settings: Settings = field(default_factory=Settings)
    progress: Callable[[str], None] = lambda _message: None
    stop: threading.Event = field(default_factory=threading.Event)
    now: Callable[[], datetime] = lambda: datetime.now(UTC)
    # Where the move is, for structured progress (set by ``machine.drive``), and who hears
    # each finished step (the runner's Listener).
    migration_id: str = ""
    commit: str | None = None
    step: str = ""
    on_step: Callable[[Journal, Step], None] = lambda _journal, _step: None
    # The fence: ``guard`` raises (``LeaseLost``) once this runner cannot prove it holds the
    # Lease; ``token`` is written into every journal; ``journal_text`` is the journal this
    # runner last wrote (or adopted when it resumed the move): every journal write and VM
    # patch tests it, so nobody else's journal is ever acted on.
    guard: Callable[[], None] = lambda: None
    # What the plans say now of this VM's retention (None when no plan selects it): a source
    # is deleted only if both the journal and the plan say Delete.
    plan_retention: Retention | None = None
    token: str = ""
    journal_text: str | None = None
    # Why what the waits see may be stale (``Lease.overdue``): shown instead of progress.
    health: Callable[[], str | None] = lambda: None
    # Who last wrote the VM's volumes, from its managedFields ("" when they do not tell):
    # the engine's (``diff.gitops.volumes_writer``), to name who cancelled a live migration.
    volumes_writer: Callable[[Mapping[str, Any]], str] = lambda _vm: ""
    # While a wait's tick speaks: what lets its lines through (``apply.narration``).
    narration: Narration | None = field(default=None, repr=False, compare=False)

    def conflicts(self, *, patient: bool = False) -> Iterator[int]:
        """Attempts at a write that may conflict: yields 0, 1, 2, ... and, between attempts,
        waits a jittered, doubling pause (so two writers that collided do not collide again in
        lockstep), for at most ``patch_budget`` seconds (``rollback_patch_budget`` when
        ``patient``: a rollback must not give up and leave a VM stopped). The caller returns
        from inside the loop when its write lands; running out is its to report."""
        budget = self.settings.rollback_patch_budget if patient else self.settings.patch_budget
        give_up = time.monotonic() + budget
        pause = 0.05
        attempt = 0
        while True:
            yield attempt
            attempt += 1
            if time.monotonic() + pause > give_up:
                return
            self.stop.wait(random.uniform(pause / 2, pause))
            self.check_stop()
            pause = min(pause * 2, 2.0)

    def check_stop(self) -> None:
        self.guard()
        if self.stop.is_set():
            raise Interrupted(f"{self.namespace}/{self.vm}: stopped; the journal is kept")

    def say(self, message: str, *, volume: str | None = None, key: str | None = None) -> None:
        """A progress line about this VM (and ``volume``), with its fields (``Line``). Said
        from a wait's tick, only when it differs from the tick's last line (by ``key``, else
        its text: ``apply.narration``), or as a heartbeat."""
        if self.narration is not None:
            shown = self.narration.offer(message, key)
            if shown is None:
                return
            message = shown
        self.progress(
            Line(
                f"{self.namespace}/{self.vm}: {message}",
                namespace=self.namespace,
                vm=self.vm,
                volume=volume,
                step=self.step,
                migrationId=self.migration_id,
                commit=self.commit,
            )
        )

    def seconds_left(self, journal: Journal) -> float:
        """Until the move's deadline (forward steps); a rollback gets its own budget."""
        if journal.rolling_back:
            return self.settings.rollback_timeout
        deadline = datetime.fromisoformat(journal.deadline)
        return (deadline - self.now()).total_seconds()

    def wait(
        self,
        streams: list[Stream],
        predicate: Callable[[State], object | None],
        *,
        seconds: float,
        what: str,
        on_tick: Callable[[State], None] | None = None,
        timeout_rule: Failure = Failure.TIMEOUT,
    ) -> object:
        """Watch ``streams`` until ``predicate`` returns non-None (returned) or ``seconds``
        pass (StepFailed ``timeout_rule``). SIGTERM interrupts the wait within a tick."""
        deadline = time.monotonic() + max(seconds, 0.0)

        narration = Narration(self.settings.heartbeat)

        def tick(state: State) -> None:
            note = self.health()
            if note is not None:
                self.say(f"still waiting for {what}, but {note}")
            elif on_tick is not None:
                self.narration = narration  # what the tick says: changes and heartbeats
                try:
                    on_tick(state)
                finally:
                    self.narration = None

        with Observer(self.cluster.api, streams) as observer:
            try:
                return observer.wait(
                    predicate,
                    deadline,
                    what=what,
                    tick=self.settings.tick,
                    on_tick=tick if on_tick is not None else None,
                    interrupt=self.check_stop,
                    on_away=lambda seconds, error: self.say(
                        f"no answer from the API server for {seconds:.0f}s ({error[:200]}); "
                        f"still waiting for {what} (a run that cannot renew its Lease stops)"
                    ),
                )
            except WaitTimeout as exc:
                raise StepFailed(timeout_rule, f"timed out waiting for {what}") from exc
