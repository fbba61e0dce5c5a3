"""``apply --parallel N``'s loop: up to N moves in flight, started in the plans' order as the
runner admits them and ``choose`` (KubeVirt's migration slots, ``apply.slots``) allows.

Every lane is one move driven to its end in a worker thread (journaled, verified, rolled back
on its own, exactly as one at a time); everything else happens in the calling thread: the
admission of the next VM, the choice, and the recording of each outcome as its lane ends, so
the runner's bookkeeping (the breaker's count, ``--max-vms``) needs no lock. A stop (SIGTERM,
a lost Lease, a tripped breaker, a lane that raised) starts nothing more and lets every lane
end at its next step boundary; a lane's exception is raised once every lane has ended."""

from __future__ import annotations

import threading
from collections import deque
from collections.abc import Callable, Iterable, Sequence
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, as_completed, wait
from dataclasses import dataclass, field

from reconciler.apply.slots import Candidate
from reconciler.model.outcome import Outcome
from reconciler.model.verdict import VMVerdict

Flying = dict[Future[Outcome | None], Candidate]


@dataclass
class LaneLoop:
    """The callbacks are the runner's: ``admit(verdict, started)`` (may it start, counting
    ``started`` moves started or in flight; it files the VMs that may not), ``choose(waiting,
    flying)`` (which waiting VM may start now, if any), ``move(namespace, name)`` (one whole
    move; None when the VM no longer needs one), ``record(outcome)``, ``stopping()`` (no new
    starts), ``leave(verdict)`` (a VM nothing of ours will free a slot for)."""

    lanes: int
    stop: threading.Event
    admit: Callable[[VMVerdict, int], bool]
    choose: Callable[[Sequence[VMVerdict], Flying], Candidate | None]
    move: Callable[[str, str], Outcome | None]
    record: Callable[[Outcome], None]
    stopping: Callable[[], bool]
    leave: Callable[[VMVerdict], None]
    started: int = 0
    error: BaseException | None = None
    _flying: Flying = field(default_factory=dict)

    def run(self, verdicts: Iterable[VMVerdict]) -> None:
        todo = deque(verdicts)
        waiting: list[VMVerdict] = []
        pool = ThreadPoolExecutor(max_workers=self.lanes, thread_name_prefix="apply-lane")
        try:
            while todo or waiting or self._flying:
                while todo and len(waiting) < self.lanes:
                    verdict = todo.popleft()
                    if self.admit(verdict, self.started + len(self._flying) + len(waiting)):
                        waiting.append(verdict)
                if waiting and (self.stopping() or self.error is not None):
                    todo.extendleft(reversed(waiting))  # admitted, never started: re-filed
                    waiting.clear()
                    continue
                if waiting and len(self._flying) < self.lanes and self._start(pool, waiting):
                    continue
                if not self._flying:
                    for verdict in waiting:
                        self.leave(verdict)
                    waiting.clear()
                    continue
                done, _ = wait(self._flying, return_when=FIRST_COMPLETED)
                self._collect(done)
        except BaseException:
            self.stop.set()  # e.g. a second Ctrl-C: every lane ends at its next step boundary
            raise
        finally:
            pool.shutdown(wait=True, cancel_futures=True)
        if self.error is not None:
            raise self.error

    def _start(self, pool: ThreadPoolExecutor, waiting: list[VMVerdict]) -> bool:
        chosen = self.choose(waiting, self._flying)
        if chosen is None:
            return False
        verdict = next(
            v for v in waiting if (v.namespace, v.name) == (chosen.namespace, chosen.name)
        )
        waiting.remove(verdict)
        self._flying[pool.submit(self.move, verdict.namespace, verdict.name)] = chosen
        return True

    def _collect(self, done: Iterable[Future[Outcome | None]]) -> None:
        for future in done:
            self._flying.pop(future)
            try:
                outcome = future.result()
            except BaseException as exc:  # raised once every lane has ended
                self.error = self.error or exc
                self.stop.set()
                continue
            if outcome is not None:
                self.started += 1
                self.record(outcome)


def in_lanes(
    jobs: Sequence[Callable[[], Outcome | None]],
    *,
    lanes: int,
    stop: threading.Event,
    record: Callable[[Outcome], None],
) -> None:
    """Run ``jobs`` (each one whole move, e.g. an open move resumed) up to ``lanes`` at a time,
    in order, recording each outcome in the calling thread as its job ends. Once ``stop`` is
    set no further job starts; a job's exception sets it (the others end at their next step
    boundary) and is raised once every job has ended. ``lanes`` 1 runs them here, in turn."""

    def unless_stopped(job: Callable[[], Outcome | None]) -> Outcome | None:
        return None if stop.is_set() else job()

    if lanes <= 1:
        for job in jobs:
            outcome = unless_stopped(job)
            if outcome is not None:
                record(outcome)
        return
    error: BaseException | None = None
    with ThreadPoolExecutor(max_workers=lanes, thread_name_prefix="apply-resume") as pool:
        futures = [pool.submit(unless_stopped, job) for job in jobs]
        for future in as_completed(futures):
            try:
                outcome = future.result()
            except BaseException as exc:  # raised once every job has ended
                error = error or exc
                stop.set()
                continue
            if outcome is not None:
                record(outcome)
    if error is not None:
        raise error
