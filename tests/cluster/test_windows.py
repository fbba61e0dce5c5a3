"""Maintenance windows enforced by `apply`, with an injected clock (engine.apply ``now=``).

The rule (docs/plans.md "window"): the window gates *starts*; a move that started inside it
runs to its end, bounded by its own timeout. Durations are elapsed time, in the window's time
zone, so across a daylight-saving change a window is exactly as long as written: the window
``Sun 01:00 for 2h`` in Europe/Berlin

- on 2025-03-30 (02:00 CET -> 03:00 CEST) opens at 00:00Z and closes at 02:00Z, i.e. 04:00
  on the wall clock (a wall-clock reading, 01:00-03:00, would close it an hour early);
- on 2025-10-26 (03:00 CEST -> 02:00 CET) opens at 23:00Z the day before and closes at 01:00Z,
  i.e. 02:00 on the wall clock (a wall-clock reading would keep it open an hour too long).
"""

from __future__ import annotations

import threading
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pykube
import pytest

from reconciler import engine
from reconciler.cli.apply import exit_code
from reconciler.model.errors import ExitCode
from reconciler.model.journal import Journal, Step
from reconciler.model.names import JOURNAL_ANNOTATION
from reconciler.model.outcome import ApplyReport, Outcome
from reconciler.model.verdict import VMVerdict
from testenv import seed
from testenv.controlplane import ControlPlane
from tests.cluster.test_git_plans import create_stopped
from tests.cluster.test_plan import plan_file
from tests.support.kube import Eventually, annotation, get_json

WINDOW = 'window: {start: "Sun 01:00", duration: 2h, timeZone: Europe/Berlin}\n'


@pytest.fixture(scope="module", autouse=True)
def cluster_objects(api: pykube.HTTPClient) -> None:
    seed.seed_cluster(api)


class Clock:
    """The injected clock: a fixed instant, moved by the test."""

    def __init__(self, now: datetime) -> None:
        self.now = now
        self.lock = threading.Lock()

    def __call__(self) -> datetime:
        with self.lock:
            return self.now

    def move_to(self, moment: datetime) -> None:
        with self.lock:
            self.now = moment


class CloseTheWindowOnStart:
    """A Listener that moves the clock past the window's end as soon as a move starts."""

    def __init__(self, clock: Clock, after: datetime) -> None:
        self.clock, self.after = clock, after
        self.started: list[str] = []

    def move_started(self, namespace: str, vm: str, journal: Journal, resumed: bool) -> None:
        self.started.append(vm)
        self.clock.move_to(self.after)

    def step_done(self, namespace: str, vm: str, journal: Journal, step: Step) -> None:
        return None

    def move_finished(self, outcome: Outcome) -> None:
        return None

    def vm_blocked(self, verdict: VMVerdict) -> None:
        return None


def utc(text: str) -> datetime:
    return datetime.fromisoformat(text).replace(tzinfo=UTC)


def body(*vms: str) -> str:
    listed = "".join(f"  - name: {vm}\n" for vm in vms)
    head = "storageClass: ceph-rbd\nmode: Offline\nallowStop: true\n"
    return f"{head}{WINDOW}virtualMachines:\n{listed}"


def run(
    control_plane: ControlPlane, path: Path, clock: Clock, listener: object = None
) -> ApplyReport:
    return engine.apply(
        [path],
        kubeconfig=str(control_plane.kubeconfig),
        lease_namespace=control_plane.create_namespace("lease"),
        now=clock,
        listener=listener,  # type: ignore[arg-type]
    )


@pytest.mark.parametrize(
    ("now", "opened"),
    [
        ("2025-03-30T01:30:00", True),  # 03:30 CEST: 1h30 after 01:00 CET
        ("2025-03-30T02:00:00", False),  # 04:00 CEST: 2h after the start, closed
        ("2025-10-26T00:59:00", True),  # 01:59 CET: 1h59 after 01:00 CEST
        ("2025-10-26T01:30:00", False),  # 02:30 CET, the second one: 2h30 after the start
    ],
)
def test_the_window_is_elapsed_time_in_its_zone_across_dst(
    api: pykube.HTTPClient,
    control_plane: ControlPlane,
    namespace: str,
    tmp_path: Path,
    eventually: Eventually,
    now: str,
    opened: bool,
) -> None:
    create_stopped(api, eventually, namespace, "vm-a")
    path = plan_file(tmp_path, namespace, body("vm-a"))

    report = run(control_plane, path, Clock(utc(now)))

    if opened:
        assert [(o.vm, o.result) for o in report.outcomes] == [("vm-a", "Succeeded")]
        assert exit_code(report) is ExitCode.OK
    else:
        assert report.outcomes == ()
        assert report.outside_window == (f"{namespace}/vm-a",)
        assert exit_code(report, detailed=True) is ExitCode.OUTSIDE_WINDOW
        assert exit_code(report) is ExitCode.OK, "a scheduled run: a state, not a failure"
        vm = get_json(api, "kubevirt.io/v1", namespace, "virtualmachines/vm-a")
        assert annotation(vm, JOURNAL_ANNOTATION) is None, "nothing was started"
        assert vm["spec"]["runStrategy"] == "Halted"


def test_a_move_in_flight_when_the_window_closes_is_finished_and_no_other_starts(
    api: pykube.HTTPClient,
    control_plane: ControlPlane,
    namespace: str,
    tmp_path: Path,
    eventually: Eventually,
) -> None:
    create_stopped(api, eventually, namespace, "vm-a")
    create_stopped(api, eventually, namespace, "vm-b")
    path = plan_file(tmp_path, namespace, body("vm-a", "vm-b"))
    closes = utc("2025-03-30T02:00:00")
    clock = Clock(closes - timedelta(seconds=30))
    listener = CloseTheWindowOnStart(clock, closes + timedelta(minutes=1))

    report = run(control_plane, path, clock, listener)

    assert listener.started == ["vm-a"]
    assert [(o.vm, o.result) for o in report.outcomes] == [("vm-a", "Succeeded")], (
        "started inside the window: finished after it closed"
    )
    assert report.outside_window == (f"{namespace}/vm-b",), "no start after the window closed"
    assert exit_code(report, detailed=True) is ExitCode.PENDING

    preview = engine.plan([path], kubeconfig=str(control_plane.kubeconfig), now=clock())
    (state,) = preview.windows.values()
    assert state["open"] is False
    assert state["opensAt"] == "2025-04-06T01:00:00+02:00", "next Sunday, in summer time"
