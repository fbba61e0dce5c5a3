"""Progress during a wait: changes, not repeats (issue 18 item 7), without a cluster.

``Narration`` on a fake clock (a line per change, at most one heartbeat per 30 s, no two
consecutive lines equal), a copy's progress in steps of 10%, and the migration wait's lines
from a sequence of VMIM states (phases passed with their elapsed times, what is copied, the
mode, failed attempts), ticking every 2 s for 5 minutes.
"""

from __future__ import annotations

import itertools
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from reconciler.apply import migration
from reconciler.apply.context import MoveRun
from reconciler.apply.narration import HEARTBEAT, HEARTBEAT_MARK, Narration, coarse, elapsed
from reconciler.model.journal import Flow, Journal, Step, VolumeMove

START = datetime(2026, 12, 1, 12, 0, tzinfo=UTC)


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_elapsed() -> None:
    assert [elapsed(s) for s in (0.42, 12.4, 125, 3727)] == ["0.4s", "12s", "2m05s", "1h02m07s"]


def test_a_line_per_change_and_a_heartbeat_at_most_every_30_s() -> None:
    clock = Clock()
    narration = Narration(clock=clock)
    said: list[tuple[float, str]] = []
    for second in range(0, 300, 2):  # a tick every 2 s for 5 minutes
        clock.now = 1000.0 + second
        text = "phase A" if second < 100 else "phase B"
        shown = narration.offer(text)
        if shown is not None:
            said.append((clock.now, shown))
    texts = [text for _, text in said]
    assert texts[0] == "phase A"
    assert "phase B" in texts
    assert all(a != b for a, b in itertools.pairwise(texts))
    beats = [when for when, text in said if HEARTBEAT_MARK in text]
    assert all(b - a >= HEARTBEAT for a, b in itertools.pairwise(beats))
    assert len(beats) == 3 + 6, "A: 30, 60, 90 s; B: every 30 s of its 200 s"
    assert "phase A (still waiting after 30s)" in texts


def test_progress_counts_in_steps_of_ten() -> None:
    assert coarse("copying: dv CloneInProgress 18.06%") == "copying: dv CloneInProgress 10%"
    narration = Narration(clock=Clock())
    shown = [narration.offer(f"copying {p}%") for p in ("1.5", "8.2", "12.0", "19.9", "20.1")]
    assert shown == ["copying 1.5%", None, "copying 12.0%", None, "copying 20.1%"]


def stamp(moment: datetime) -> str:
    return moment.strftime("%Y-%m-%dT%H:%M:%SZ")


def vmim(phases: list[tuple[str, int]], **state: Any) -> dict[str, Any]:
    """A migration created at START that entered each phase at START + seconds."""
    history = [
        {"phase": p, "phaseTransitionTimestamp": stamp(START + timedelta(seconds=s))}
        for p, s in phases
    ]
    return {
        "metadata": {
            "name": "kubevirt-workload-update-abc",
            "uid": "u1",
            "creationTimestamp": stamp(START),
        },
        "status": {
            "phase": phases[-1][0],
            "phaseTransitionTimestamps": history,
            "migrationState": state,
        },
    }


def journal() -> Journal:
    return Journal(
        id="m1",
        plan="ns/p",
        flow=Flow.LIVE,
        step=Step.WAIT_MIGRATION,
        volumes=(VolumeMove("root", "a", "a-mig", True, "old", "new", 30 << 30),),
        run_strategy="Always",
        was_running=True,
        started=stamp(START - timedelta(seconds=5)).replace("Z", "+00:00"),
        deadline=stamp(START + timedelta(hours=1)).replace("Z", "+00:00"),
        retention="Keep",
    )


def test_the_migration_wait_tells_phases_once_with_their_times(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    clock = Clock()
    monkeypatch.setattr("reconciler.apply.migration.time.monotonic", clock)
    wall = [START]
    run = MoveRun(cluster=None, namespace="ns", vm="vm1", now=lambda: wall[0])  # type: ignore[arg-type]
    progress = migration._Progress(run, journal())
    running = [
        ("Pending", 0),
        ("Scheduling", 1),
        ("Scheduled", 1),
        ("PreparingTarget", 2),
        ("TargetReady", 2),
        ("Running", 3),
    ]
    nodes = {"sourceNode": "node-1", "targetNode": "node-2"}
    timeline = [
        (0, vmim([("Pending", 0)])),
        (4, vmim(running, mode="PreCopy", **nodes)),
        (60, vmim(running, mode="PostCopy", **nodes)),
        (90, vmim([*running, ("Succeeded", 89)], mode="PostCopy", **nodes)),
    ]
    narration = Narration(clock=clock)
    said = []
    for second in range(0, 100, 2):
        clock.now = 1000.0 + second
        wall[0] = START + timedelta(seconds=second)
        current = [m for at, m in timeline if at <= second][-1]
        text, key = progress.line({"migrations": {"m": current}, "vmi": {}})
        shown = narration.offer(text, key)
        if shown is not None:
            said.append(shown)
    assert said[0] == (
        "migration kubevirt-workload-update-abc pending (KubeVirt has not scheduled it yet), "
        "0.0s since it was created"
    )
    assert said[1] == (
        "migration kubevirt-workload-update-abc Pending -> Scheduling -> Scheduled -> "
        "PreparingTarget -> TargetReady -> Running after 4.0s (4.0s since it was created): "
        "copying root (30Gi) from node-1 to node-2, PreCopy"
    )
    assert "(still waiting after 30s)" in said[2]
    assert said[3] == (
        "migration kubevirt-workload-update-abc Running (1m00s since it was created): "
        "copying root (30Gi) from node-1 to node-2, PostCopy"
    )
    assert said[-1] == (
        "migration kubevirt-workload-update-abc Running -> Succeeded after 1m26s "
        "(1m30s since it was created)"
    )
    assert all(a != b for a, b in itertools.pairwise(said))
