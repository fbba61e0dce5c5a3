"""Progress while `apply` waits (issue 18 item 7): changes, not repeats.

A live migration held at Running for ~40 s (the node side's ``sim.vmstorage.dev/fault: stall``
on the VM, removed after that) used to print the same ``migration ... Running`` line every
2 s. Now: phase transitions with elapsed times, what is being copied, and while nothing
changes at most one heartbeat per 30 s; no two consecutive progress lines are the same. An
offline clone slowed down (``sim.vmstorage.dev/copy-seconds`` on the destination, through
``--templates``) tells its progress when it changes by a step of 10%, not every tick.
"""

from __future__ import annotations

import itertools
import json
import re
import shutil
import time
from collections.abc import Iterator
from datetime import datetime
from pathlib import Path
from typing import Any

import pykube
import pytest

from reconciler.apply.narration import HEARTBEAT, HEARTBEAT_MARK
from testenv.controlplane import ControlPlane
from tests.cluster.test_apply import cluster_objects
from tests.support.kube import Eventually
from tests.support.moves import FAULT_ANNOTATION, TARGET_CLASS, Disk, Moves, moves_ctx
from tests.support.node_faults import NodeSide

__all__ = ["cluster_objects"]

ROOT = Path(__file__).resolve().parents[2]
STALL_SECONDS = 40.0


@pytest.fixture
def ctx(
    api: pykube.HTTPClient,
    control_plane: ControlPlane,
    namespace: str,
    tmp_path: Path,
    eventually: Eventually,
    capsys: pytest.CaptureFixture[str],
    node_side: NodeSide,
) -> Iterator[Moves]:
    with moves_ctx(api, control_plane, namespace, tmp_path, eventually, capsys, node_side) as moves:
        yield moves


def lines(err: str) -> list[dict[str, Any]]:
    """The run's progress lines (``--log-format json``), in order."""
    return [json.loads(line) for line in err.splitlines() if line.startswith("{")]


def at(line: dict[str, Any]) -> float:
    return datetime.fromisoformat(str(line["time"]).replace("Z", "+00:00")).timestamp()


def assert_no_repeats(said: list[dict[str, Any]]) -> None:
    texts = [line["msg"] for line in said]
    repeats = [a for a, b in itertools.pairwise(texts) if a == b]
    assert repeats == [], "\n".join(texts)


def assert_heartbeats_spaced(said: list[dict[str, Any]]) -> list[dict[str, Any]]:
    beats = [line for line in said if HEARTBEAT_MARK in line["msg"]]
    times = [at(line) for line in beats]
    gaps = [b - a for a, b in itertools.pairwise(times)]
    assert all(gap >= HEARTBEAT - 0.5 for gap in gaps), gaps
    return beats


def test_a_slow_migration_prints_changes_and_a_heartbeat_not_repeats(ctx: Moves) -> None:
    ctx.make("vm1", [Disk("root", "template", "vm1-root")])
    ctx.merge("virtualmachines/vm1", {"metadata": {"annotations": {FAULT_ANNOTATION: "stall"}}})

    def running() -> bool:
        return any((m.get("status") or {}).get("phase") == "Running" for m in ctx.migrations("vm1"))

    def release(_: object) -> None:
        time.sleep(STALL_SECONDS)
        ctx.merge("virtualmachines/vm1", {"metadata": {"annotations": {FAULT_ANNOTATION: None}}})

    meddler = ctx.during(running, release, timeout=60)
    body = f"storageClass: {TARGET_CLASS}\nvirtualMachines:\n  - name: vm1\n"
    rc, report, err = ctx.apply("--log-format", "json", body=body)
    meddler.check()

    assert rc == 0, err
    assert report["outcomes"][0]["result"] == "Succeeded"
    said = lines(err)
    assert_no_repeats(said)
    beats = assert_heartbeats_spaced(said)
    assert len(beats) == 1, "one heartbeat in a ~40 s stall"
    assert "migration " in beats[0]["msg"] and "Running" in beats[0]["msg"]
    migration = [line["msg"] for line in said if "migration kubevirt-" in line["msg"]]
    # the path to Running through TargetReady, told at once ("Pending -> ... -> TargetReady ->
    # Running in 3s", the migration first seen Running) or from the phase told before
    # ("Scheduled -> ... -> Running after 2s", or "TargetReady -> Running after 2s" when a
    # loaded machine first saw it at TargetReady)
    assert any(re.search(r"TargetReady -> Running (in|after) ", m) for m in migration), migration
    assert any("copying root (" in m for m in migration), migration
    assert len(migration) <= 8, "a line per change, not one per tick (~20 ticks in 40 s)"


def test_clone_progress_is_told_in_steps(ctx: Moves, tmp_path: Path) -> None:
    templates = tmp_path / "templates"
    shutil.copytree(ROOT / "templates", templates)
    offline = templates / "datavolume-offline.j2"
    text = offline.read_text()
    marker = "    vmstorage.dev/source-claim:"
    assert marker in text
    slow = '    sim.vmstorage.dev/copy-seconds: "12"\n'
    offline.write_text(text.replace(marker, slow + marker, 1))
    ctx.make("vm1", [Disk("root", "template", "vm1-root")], running=False)
    body = f"storageClass: {TARGET_CLASS}\nvirtualMachines:\n  - name: vm1\n"

    rc, _, err = ctx.apply("--log-format", "json", "--templates", str(templates), body=body)

    assert rc == 0, err
    said = lines(err)
    assert_no_repeats(said)
    copying = [line["msg"] for line in said if "copying:" in line["msg"]]
    percents = [m.rsplit(" ", 1)[-1] for m in copying if m.endswith("%")]
    assert len(percents) >= 3, copying
    tens = [int(float(p.rstrip("%")) // 10) for p in percents]
    assert tens == sorted(set(tens)), f"one line per step of 10%: {copying}"
