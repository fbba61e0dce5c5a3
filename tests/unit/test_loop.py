"""The loop of `run --every` (reconciler.loop) with a stand-in for one apply: cycles at once
and then on schedule, a held Lease skips, failures are survived, stop() ends it cleanly and
reaches the cycle in flight. (The real thing, a process and SIGTERM:
tests/cluster/test_loop_mode.py.)
"""

from __future__ import annotations

import itertools
import threading
import time
from datetime import UTC, datetime

import pytest

from reconciler.apply.lease import LockHeld
from reconciler.loop import Cycle, Loop
from reconciler.model.errors import ClusterError, Problem, UserError
from reconciler.model.outcome import ApplyReport


def test_cycles_run_on_schedule_and_failures_do_not_end_the_loop() -> None:
    script: list[BaseException | None] = [
        None,
        UserError([Problem(None, "bad plans in the new commit")]),
        ClusterError("VirtualMachine/ns/vm", "HTTP 503"),
        LockHeld("someone-else", datetime.now(UTC), "ns/lease"),
        RuntimeError("a bug"),
        None,
    ]
    heard: list[tuple[Cycle, float | None]] = []
    started: list[float] = []

    def apply_once(stop: threading.Event) -> ApplyReport:
        started.append(time.monotonic())
        outcome = script[len(started) - 1]
        if len(started) == len(script):
            loop.stop()  # SIGTERM during the last cycle
        if outcome is not None:
            raise outcome
        return ApplyReport(commit=f"c{len(started)}")

    loop: Loop

    def on_cycle(cycle: Cycle, following: float | None) -> None:
        heard.append((cycle, following))

    loop = Loop(1, apply_once, on_cycle)
    assert loop.run() == len(script)

    kinds = [
        "report" if c.report else "skipped" if c.skipped else type(c.error).__name__
        for c, _ in heard
    ]
    assert kinds == ["report", "UserError", "ClusterError", "skipped", "RuntimeError", "report"]
    assert "someone-else" in heard[3][0].skipped
    assert [c.number for c, _ in heard] == [1, 2, 3, 4, 5, 6]
    assert [f for _, f in heard] == [1, 1, 1, 1, 1, None], "the last one was told: stopping"
    gaps = [b - a for a, b in itertools.pairwise(started)]
    assert all(0.9 <= gap < 3 for gap in gaps), gaps


def test_stop_during_a_cycle_sets_its_stop_event_and_ends_the_loop() -> None:
    entered = threading.Event()
    seen: list[bool] = []
    loop: Loop

    def apply_once(stop: threading.Event) -> ApplyReport:
        entered.set()
        seen.append(stop.wait(10))  # a move in flight, stopping at its next step boundary
        return ApplyReport()

    loop = Loop(3600, apply_once, lambda _c, _f: None)

    def stop_when_entered() -> None:
        if entered.wait(10):
            loop.stop()

    stopper = threading.Thread(target=stop_when_entered)
    stopper.start()
    started = time.monotonic()
    assert loop.run() == 1
    stopper.join()
    assert seen == [True], "the cycle's stop event was set"
    assert time.monotonic() - started < 5, "no wait for the next hour's cycle"


def test_a_lease_lost_in_one_cycle_stops_that_cycle_only() -> None:
    events: list[threading.Event] = []
    loop: Loop

    def apply_once(stop: threading.Event) -> ApplyReport:
        events.append(stop)
        if len(events) == 1:
            stop.set()  # what a Lease taken over does to the cycle's event
        else:
            loop.stop()
        return ApplyReport()

    loop = Loop(1, apply_once, lambda _c, _f: None)
    assert loop.run() == 2
    assert events[0] is not events[1]


def test_the_interval_is_at_least_a_second() -> None:
    with pytest.raises(ValueError, match="at least a second"):
        Loop(0.5, lambda _s: ApplyReport(), lambda _c, _f: None)
