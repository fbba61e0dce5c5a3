"""``run --every``: ``apply`` again and again, for a Deployment. The layer between cli and engine.

Each cycle is one ``engine.apply``: the plans are read again (and fetched again from Git with
``--git-repo``; a git-sync sidecar's checkout link is re-read with its new HEAD), the Lease is
taken for the cycle and released at its end. A cycle that finds the Lease held is *skipped*
(another runner is at work), one that fails (bad plans in the latest commit, the API server
away, an internal error) is *reported* and the loop goes on: the next cycle may find things
fixed. Cycles are scheduled with the ``schedule`` package: the first at once, then each
``every`` after the previous one *ended* (a long cycle is never overlapped by the next).

``stop()`` (SIGTERM, SIGINT: the CLI wires them) ends the loop cleanly: during the pause at
once; during a cycle, that cycle's stop event is set, so the move in flight stops at its next
step boundary (or within a second of a wait) with its journal kept, and the next runner
resumes it. A Lease lost during a cycle stops that cycle only (its own stop event), not the
loop. Nothing here prints: the CLI gets every cycle's outcome through callbacks.
"""

from __future__ import annotations

import gc
import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass

import schedule

from reconciler.apply.lease import LeaseLost, LockHeld
from reconciler.model.errors import ClusterError, UserError
from reconciler.model.outcome import ApplyReport

log = logging.getLogger(__name__)

ApplyOnce = Callable[[threading.Event], ApplyReport]
"""One cycle's work: ``engine.apply`` with the given stop event (set by ``Loop.stop``)."""


@dataclass(frozen=True)
class Cycle:
    """How one cycle ended: with a ``report``, ``skipped`` (the Lease was held: why), or
    ``error`` (the exception, which the loop survived). ``seconds`` it took."""

    number: int
    seconds: float
    report: ApplyReport | None = None
    skipped: str = ""
    error: BaseException | None = None


class Loop:
    def __init__(
        self,
        every: float,
        apply_once: ApplyOnce,
        on_cycle: Callable[[Cycle, float | None], None],
    ) -> None:
        """``every``: whole seconds from the end of one cycle to the start of the next.
        ``on_cycle(cycle, seconds_to_next)`` hears each cycle (None: the loop is stopping);
        it must not raise (what it raises is logged)."""
        if every < 1:
            raise ValueError("every must be at least a second")
        self.every = every
        self.apply_once = apply_once
        self.on_cycle = on_cycle
        self.cycles = 0
        self._stopping = threading.Event()
        self._lock = threading.Lock()
        self._current: threading.Event | None = None
        self._scheduler = schedule.Scheduler()

    @property
    def stopping(self) -> bool:
        return self._stopping.is_set()

    def stop(self) -> None:
        """End the loop: now if idle, else at the running cycle's next step boundary. Safe
        from a signal handler (it only sets events)."""
        self._stopping.set()
        with self._lock:
            if self._current is not None:
                self._current.set()

    def run(self) -> int:
        """Run cycles until ``stop()``; the number of cycles run."""
        self._cycle()
        # Scheduled after the first cycle ended: the next starts `every` after that.
        self._scheduler.every(int(self.every)).seconds.do(self._cycle)
        while not self._stopping.is_set():
            idle = self._scheduler.idle_seconds
            if self._stopping.wait(max(idle or 0.0, 0.0)):
                break
            self._scheduler.run_pending()
        self._scheduler.clear()
        return self.cycles

    def _cycle(self) -> None:
        if self._stopping.is_set():
            return
        self.cycles += 1
        stop = threading.Event()
        with self._lock:
            self._current = stop
        started = time.monotonic()
        try:
            cycle = self._attempt(stop, started)
        finally:
            with self._lock:
                self._current = None
        # gc is paused for a command (cli.main); a loop that never ends must collect, or the
        # reference cycles of every cycle's clients and threads would pile up.
        gc.collect()
        following = None if self._stopping.is_set() else self.every
        try:
            self.on_cycle(cycle, following)
        except Exception:
            log.exception("reporting cycle %d failed", cycle.number)

    def _attempt(self, stop: threading.Event, started: float) -> Cycle:
        number = self.cycles

        def took() -> float:
            return time.monotonic() - started

        try:
            report = self.apply_once(stop)
        except LockHeld as exc:
            return Cycle(number, took(), skipped=str(exc))
        except (UserError, ClusterError, LeaseLost) as exc:
            return Cycle(number, took(), error=exc)
        except Exception as exc:  # a bug: reported, and the next cycle runs
            log.exception("cycle %d: internal error", number)
            return Cycle(number, took(), error=exc)
        return Cycle(number, took(), report=report)
