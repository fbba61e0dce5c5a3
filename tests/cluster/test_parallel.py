"""``apply --parallel N``: several VMs in flight at once, each journaled, verified and rolled
back on its own, within KubeVirt's migration limits, and stopped together by a SIGTERM.

Overlap is shown, not timed: every destination is stalled (a node-side fault) until the test
has seen the moves wait at ``wait-targets`` together, then released; one VM at a time could
never have more than one journal open. Mirrored onto the real engine by
tests/real/test_real_parallel.py."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pykube
import pytest

from testenv.controlplane import ControlPlane
from testenv.node.runtime import FaultAction
from tests.cluster.test_apply import cluster_objects
from tests.cluster.test_apply_faults import KubeVirtPatch, kubevirt
from tests.cluster.test_plan import plan_file
from tests.support.kube import Eventually
from tests.support.moves import TARGET_CLASS, Disk, Moves, moves_ctx
from tests.support.node_faults import NodeSide

__all__ = ["cluster_objects", "kubevirt"]  # module fixtures: the seed, the KubeVirt CR patch

ROOT = Path(__file__).resolve().parents[2]
DV_KIND = "DataVolume"
VMS = ("vm1", "vm2", "vm3")


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


def body(*vms: str) -> str:
    names = "".join(f"  - name: {vm}\n" for vm in vms)
    return f"storageClass: {TARGET_CLASS}\nvirtualMachines:\n{names}"


def fleet(ctx: Moves, running: dict[str, bool]) -> dict[str, str]:
    """One single-disk VM per entry (running or stopped); their destinations, each stalled
    until released. VM -> destination DataVolume."""
    for name, up in running.items():
        ctx.make(name, [Disk("data", "dv", f"{name}-data")], running=up)
    targets = ctx.targets(body(*running))
    destinations = {name: targets[name]["data"] for name in running}
    for destination in destinations.values():
        ctx.fault(DV_KIND, destination, FaultAction.STALL)
    return destinations


def at_wait_targets(ctx: Moves, names: tuple[str, ...]) -> bool:
    return all(ctx.at_step(name, "wait-targets")() for name in names)


def unfinished_migrations(api: pykube.HTTPClient) -> list[str]:
    """namespace/name of every migration in the cluster not Succeeded or Failed."""
    items = api.get(version="kubevirt.io/v1", url="virtualmachineinstancemigrations").json()
    return [
        f"{m['metadata']['namespace']}/{m['metadata']['name']}"
        for m in items["items"]
        if (m.get("status") or {}).get("phase") not in ("Succeeded", "Failed")
    ]


def release(ctx: Moves, destinations: dict[str, str]) -> None:
    for destination in destinations.values():
        ctx.clear_fault(DV_KIND, destination)


def test_three_lanes_move_three_vms_at_once_each_verified(ctx: Moves) -> None:
    destinations = fleet(ctx, {"vm1": True, "vm2": True, "vm3": False})
    together = ctx.during(
        lambda: at_wait_targets(ctx, VMS), lambda _: release(ctx, destinations), timeout=120
    )

    rc, report, err = ctx.apply("--parallel", "3", body=body(*VMS))

    together.check()  # all three journals open at once: three lanes
    assert rc == 0, err
    results = {o["name"]: (o["result"], o["flow"]) for o in report["outcomes"]}
    assert results == {
        "vm1": ("Succeeded", "live"),
        "vm2": ("Succeeded", "live"),
        "vm3": ("Succeeded", "offline"),
    }, err
    for name, destination in destinations.items():
        assert ctx.journal(name) is None
        assert ctx.last(name)["volumes"] == {"data": destination}
        assert ctx.pvc(destination)["spec"]["storageClassName"] == TARGET_CLASS


def test_one_vm_at_a_time_by_default(ctx: Moves) -> None:
    """Without --parallel the second move waits for the first: never two journals open."""
    destinations = fleet(ctx, {"vm1": False, "vm2": False})
    sampler = ctx.sample(lambda: sum(ctx.journal(n) is not None for n in ("vm1", "vm2")))
    released = ctx.during(
        ctx.at_step("vm1", "wait-targets"), lambda _: release(ctx, destinations), timeout=120
    )

    rc, report, err = ctx.apply(body=body("vm1", "vm2"))

    released.check()
    assert rc == 0, err
    assert max(sampler.stop()) == 1
    assert [o["result"] for o in report["outcomes"]] == ["Succeeded", "Succeeded"]


def test_live_moves_wait_for_kubevirt_s_migration_slot(ctx: Moves, kubevirt: KubeVirtPatch) -> None:
    """KubeVirt allows one migration at a time here: the second live move starts only once
    the first is done, so no migration of ours waits in virt-controller's queue, while the
    offline move (no migration) goes beside them."""
    # The slots count every unfinished migration in the cluster, anyone's, and an earlier test
    # on this engine may have left some that never finish (their VMI deleted mid-migration):
    # the limit leaves exactly one slot free beside them.
    others = len(unfinished_migrations(ctx.api))
    limit = others + 1
    kubevirt({"spec": {"configuration": {"migrations": {"parallelMigrationsPerCluster": limit}}}})
    destinations = fleet(ctx, {"vm1": True, "vm2": True, "vm3": False})
    live = ("vm1", "vm2")

    def open_live() -> int:
        return sum((ctx.journal(n) or {}).get("flow") == "live" for n in live)

    sampler = ctx.sample(open_live)
    released = ctx.during(
        lambda: ctx.at_step("vm1", "wait-targets")() and ctx.at_step("vm3", "wait-targets")(),
        lambda _: release(ctx, destinations),
        timeout=120,
        otherwise=lambda: release(ctx, destinations),  # so apply ends and check() says why
    )

    rc, report, err = ctx.apply("--parallel", "3", body=body(*VMS))

    released.check()  # vm1 and the offline vm3 in flight together
    assert rc == 0, err
    assert max(sampler.stop()) == 1, "never two live moves at once with one slot"
    assert len(unfinished_migrations(ctx.api)) <= others, "ours all finished"
    assert f"vm2: waits for a migration slot: KubeVirt runs {limit} migration(s)" in err
    assert f"parallelMigrationsPerCluster {limit}" in err
    assert sorted(o["result"] for o in report["outcomes"]) == ["Succeeded"] * 3


def test_sigterm_stops_every_lane_and_the_next_run_resumes_them_in_lanes(ctx: Moves) -> None:
    destinations = fleet(ctx, {"vm1": True, "vm2": False, "vm3": False})
    path = plan_file(ctx.tmp_path, ctx.ns, body(*VMS))
    argv = [sys.executable, "-m", "reconciler", "apply", str(path), "--parallel", "3"]
    argv += ["--kubeconfig", str(ctx.control_plane.kubeconfig), "--lease-namespace", ctx.lease_ns]
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    with subprocess.Popen(
        argv, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    ) as run:
        ctx.eventually(lambda: at_wait_targets(ctx, VMS), 120, what="three lanes in flight")
        run.send_signal(signal.SIGTERM)
        _, err = run.communicate(timeout=60)
    assert run.returncode == 1, err  # stopped before the end: work remains
    for name in VMS:
        journal = ctx.journal(name)
        assert journal is not None and journal["step"] == "wait-targets", (name, err)
        assert f"{ctx.ns}/{name}: stopped: move" in err, err
    # Only vm3's copy may finish: it can end its resumed move only in a lane of its own, as
    # vm1's and vm2's resumed moves wait on their stalled copies until it has.
    held = {name: destinations[name] for name in ("vm1", "vm2")}
    release(ctx, {"vm3": destinations["vm3"]})
    resumed_beside = ctx.during(
        lambda: ctx.journal("vm3") is None and at_wait_targets(ctx, ("vm1", "vm2")),
        lambda _: release(ctx, held),
        timeout=120,
        otherwise=lambda: release(ctx, held),
    )

    rc, report, err = ctx.apply("--parallel", "3", body=body(*VMS))

    resumed_beside.check()
    assert rc == 0, err
    assert sorted(o["name"] for o in report["outcomes"] if o["result"] == "Succeeded") == list(VMS)
    assert all(o["resumed"] for o in report["outcomes"]), json.dumps(report["outcomes"])
