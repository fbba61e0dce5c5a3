"""The fault matrix (tests/cluster/test_apply_faults.py) with ``apply --parallel 3``: each
fault strikes one VM (``vm1``) while two healthy VMs move in the other lanes, one live
(``vm2``, running) and one offline (``vm3``, stopped), from a plan of their own.

What each test proves: the faulted move ends exactly as it does alone (rolled back with its
rule, the VM as before, its sources untouched, its own DataVolumes deleted and nobody else's),
and the healthy moves beside it are untouched by it: they succeed, are verified and keep their
destinations. The overlap is shown, not timed: the healthy destinations are stalled (a
node-side fault) until the test has seen both healthy lanes wait at ``wait-targets`` while the
faulted move is at the point the case names (most often: already rolling back, or rolled
back), and only then released; one VM at a time could never show that. The breaker case runs a
fleet that fails in every lane: failures count across lanes, and once three are counted no
new move starts.

Faults: a migration failing every time, failing once then succeeding, stalled past the plan's
timeout; a clone failing (retried by CDI); the target StorageClass deleted mid-copy; the VM
edited, stopped and deleted by someone else mid-move; the breaker. All on the real engine: the
failed migrations, cancellations and clone retries are upstream virt-controller's and
cdi-controller's, the faults the node side's.

Deleted: a clone failing for good in one lane. Upstream CDI never sets a clone DataVolume
``Failed`` (clone-controller-base.go ``updateStatusPhaseForPopulator``), it restarts the
cloner: ``test_clone_failing_and_retried_rolls_back_its_lane_only``.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pykube
import pytest

from testenv.controlplane import ControlPlane
from testenv.node.runtime import FaultAction
from tests.cluster.test_apply import KV, cluster_objects
from tests.cluster.test_apply_faults import (
    FLEET,
    OFFLINE,
    annotate_vm,
    fast_backoff,
    fleet,
)
from tests.cluster.test_plan import create
from tests.support.kube import Eventually
from tests.support.moves import (
    FAULT_ANNOTATION,
    MIGRATION_LABEL,
    TARGET_CLASS,
    Disk,
    Meddler,
    Moves,
    create_class,
    disks_of,
    moves_ctx,
    storage_class,
    storage_shape,
)
from tests.support.node_faults import NodeSide

__all__ = ["cluster_objects", "fast_backoff"]  # module fixtures

DV_KIND = "DataVolume"
LANES = ("--parallel", "3")
FAULTED = "vm1"
HEALTHY = {"vm2": True, "vm3": False}  # name -> running (moved live, or offline)
HEALTHY_FLOW = {"vm2": "live", "vm3": "offline"}
ONE = [Disk("data", "dv", "vm1-data")]
TWO = [Disk("data", "dv", "vm1-data"), Disk("scratch", "pvc", "vm1-scratch")]
BOUNDED = "timeout: 2m\n"
"""The faulted plan's deadline: a meddler that misses fails the move in two minutes, not at
the default. The healthy plan has none of its own: its lanes wait, stalled, for the fault."""
RELEASE_TIMEOUT = 90.0
"""How long the healthy lanes may stay stalled waiting for the faulted move to reach the
case's point (then they are released anyway, so apply ends, and the test says why)."""


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


def body(*vms: str, extra: str = "", cls: str = TARGET_CLASS) -> str:
    names = "".join(f"  - name: {vm}\n" for vm in vms)
    return f"storageClass: {cls}\n{extra}virtualMachines:\n{names}"


@dataclass
class Lanes:
    """The faulted VM and its two healthy neighbours, built; what the test checks them
    against: each VM's spec and content hashes before, the healthy destinations."""

    ctx: Moves
    faulted_body: str
    before: dict[str, dict[str, Any]]
    hashes: dict[str, dict[str, str | None]]
    destinations: dict[str, str]  # healthy VM -> its (stalled) destination DataVolume

    def release_when(self, point: Callable[[], Any]) -> Meddler:
        """Release the healthy destinations once both healthy lanes wait at
        ``wait-targets`` and ``point()`` holds for the faulted move (the meddler: its
        ``check()`` fails if that never happened together)."""
        ctx = self.ctx

        def together() -> bool:
            try:
                return all(ctx.at_step(n, "wait-targets")() for n in HEALTHY) and bool(point())
            except BaseException:
                self.release()  # so apply ends, and check() raises this
                raise

        return ctx.during(
            together, lambda _: self.release(), RELEASE_TIMEOUT, otherwise=self.release
        )

    def release(self) -> None:
        for destination in self.destinations.values():
            self.ctx.clear_fault(DV_KIND, destination)

    def apply(self) -> tuple[int, dict[str, Any], str]:
        return self.ctx.apply_files(
            ("faulted", self.faulted_body),
            ("healthy", body(*HEALTHY)),
            args=LANES,
        )


def lanes(
    ctx: Moves, faulted: list[Disk], *, running: bool = True, extra: str = "", cls: str = ""
) -> Lanes:
    """Build ``vm1`` with ``faulted``'s disks and the two healthy VMs (one disk each); stall
    the healthy destinations."""
    ctx.make(FAULTED, faulted, running=running)
    for name, up in HEALTHY.items():
        ctx.make(name, [Disk("data", "dv", f"{name}-data")], running=up)
    targets = ctx.targets(body(*HEALTHY))
    destinations = {name: targets[name]["data"] for name in HEALTHY}
    for destination in destinations.values():
        ctx.fault(DV_KIND, destination, FaultAction.STALL)
    names = (FAULTED, *HEALTHY)
    before = {n: ctx.vm(n) for n in names}
    hashes = {n: ctx.hashes(before[n]) for n in names}
    assert all(h for v in hashes.values() for h in v.values()), hashes
    faulted_body = body(FAULTED, extra=extra, cls=cls or TARGET_CLASS)
    return Lanes(ctx, faulted_body, before, hashes, destinations)


def outcome(report: dict[str, Any], name: str) -> dict[str, Any]:
    (found,) = [o for o in report["outcomes"] if o["name"] == name]
    return dict(found)


def rolling_back(ctx: Moves, name: str = FAULTED) -> bool:
    """The move is rolling back or has been rolled back (failed)."""
    journal = ctx.journal(name)
    if journal is not None:
        return bool(journal.get("rollback"))
    return ctx.last(name).get("result") in ("RolledBack", "Failed")


def assert_healthy(lanes: Lanes, report: dict[str, Any]) -> None:
    """Both healthy VMs moved, verified, on their destinations with their content, and in
    the run state they had."""
    ctx = lanes.ctx
    for name, destination in lanes.destinations.items():
        done = outcome(report, name)
        assert (done["result"], done["flow"]) == ("Succeeded", HEALTHY_FLOW[name]), done
        assert "verify" in [s["step"] for s in done["steps"]], done
        assert ctx.journal(name) is None
        vm = ctx.vm(name)
        assert disks_of(vm) == {"data": destination}
        assert ctx.hashes(vm) == lanes.hashes[name], "the content moved intact"
        assert ctx.pvc(destination)["spec"]["storageClassName"] == TARGET_CLASS
        last = ctx.last(name)
        assert (last["result"], last["volumes"]) == ("Succeeded", {"data": destination})
        assert vm["spec"]["runStrategy"] == lanes.before[name]["spec"]["runStrategy"]
        assert ctx.dv(destination), "a healthy destination is kept"


def assert_rolled_back_alone(
    lanes: Lanes, report: dict[str, Any], rule: str, *, result: str = "RolledBack"
) -> dict[str, Any]:
    """The faulted VM exactly as before, its sources untouched, its own move's DataVolumes
    deleted (the healthy lanes' kept), the journal closed with a record naming ``rule``."""
    ctx = lanes.ctx
    done = outcome(report, FAULTED)
    assert (done["result"], done["rule"]) == (result, rule), done
    before = lanes.before[FAULTED]
    vm = ctx.vm(FAULTED)
    assert storage_shape(vm) == storage_shape(before), "the VM is exactly as it was"
    assert ctx.hashes(vm) == lanes.hashes[FAULTED], "the sources are untouched"
    for claim in disks_of(before).values():
        pvc = ctx.pvc(claim)
        assert pvc and not pvc["metadata"].get("deletionTimestamp"), claim
    assert_own_datavolumes_gone(ctx, done["migrationId"])
    assert ctx.journal(FAULTED) is None, "the journal is closed"
    last = ctx.last(FAULTED)
    assert (last["result"], last["rule"]) == (result, rule)
    assert last["volumes"] == disks_of(before)
    return done


def assert_own_datavolumes_gone(ctx: Moves, migration_id: str) -> None:
    """Every DataVolume labelled with ``migration_id`` deleted (being deleted counts)."""

    def left() -> list[str]:
        return [
            n
            for n, d in ctx.ours().items()
            if d["metadata"]["labels"].get(MIGRATION_LABEL) == migration_id
            and not d["metadata"].get("deletionTimestamp")
        ]

    ctx.eventually(lambda: not left(), what=f"the DataVolumes of move {migration_id} deleted")


# --------------------------------------------------------------------------------------------
# live migration faults


@pytest.mark.usefixtures("fast_backoff")
def test_migration_failing_every_time_rolls_back_its_lane_only(ctx: Moves) -> None:
    run = lanes(ctx, ONE)
    annotate_vm(ctx, FAULTED, FAULT_ANNOTATION, "fail")  # every migration fails at Running
    released = run.release_when(lambda: rolling_back(ctx))

    rc, report, err = run.apply()

    released.check()
    assert rc == 3, err
    done = assert_rolled_back_alone(run, report, "migration-failed")
    assert "3 migration attempts failed" in done["reason"]
    assert [m["status"]["phase"] for m in ctx.migrations(FAULTED)].count("Failed") >= 3
    assert_healthy(run, report)


@pytest.mark.usefixtures("fast_backoff")
def test_migration_failing_once_is_retried_beside_the_other_lanes(ctx: Moves) -> None:
    run = lanes(ctx, ONE)
    annotate_vm(ctx, FAULTED, FAULT_ANNOTATION, "fail-times:1")

    def failed_once() -> bool:
        return any(
            (m.get("status") or {}).get("phase") == "Failed" for m in ctx.migrations(FAULTED)
        )

    released = run.release_when(failed_once)

    rc, report, err = run.apply()

    released.check()
    assert rc == 0, err
    done = outcome(report, FAULTED)
    assert (done["result"], done["flow"]) == ("Succeeded", "live"), done
    phases = sorted(m["status"]["phase"] for m in ctx.migrations(FAULTED))
    assert phases == ["Failed", "Succeeded"], "KubeVirt retried once"
    vm = ctx.vm(FAULTED)
    assert ctx.hashes(vm) == run.hashes[FAULTED]
    assert all("-mig-" in claim for claim in disks_of(vm).values())
    assert_healthy(run, report)


def test_migration_stalled_past_its_plan_s_timeout_rolls_back_alone(ctx: Moves) -> None:
    """The faulted plan's 15 s timeout; the healthy plan has none of its own, and its lanes,
    stalled until vm1 rolls back, outlast vm1's deadline unharmed."""
    run = lanes(ctx, ONE, extra="timeout: 15s\n")
    annotate_vm(ctx, FAULTED, FAULT_ANNOTATION, "stall")  # the copy makes no progress
    uid = ctx.vmi(FAULTED)["metadata"]["uid"]
    released = run.release_when(lambda: rolling_back(ctx))

    rc, report, err = run.apply()

    released.check()
    assert rc == 3, err
    done = assert_rolled_back_alone(run, report, "timeout")
    assert "timed out waiting for KubeVirt's volume migration" in done["reason"]
    assert ctx.vmi(FAULTED)["metadata"]["uid"] == uid, "the guest kept running on its sources"
    assert_healthy(run, report)


# --------------------------------------------------------------------------------------------
# clone faults (offline)


def test_clone_failing_and_retried_rolls_back_its_lane_only(ctx: Moves) -> None:
    run = lanes(ctx, ONE, extra=OFFLINE + BOUNDED)
    target = ctx.targets(run.faulted_body)[FAULTED]["data"]
    ctx.fault(DV_KIND, target, FaultAction.FAIL)  # every cloner pod attempt fails
    released = run.release_when(lambda: rolling_back(ctx))

    rc, report, err = run.apply()

    released.check()
    assert rc == 3, err
    done = assert_rolled_back_alone(run, report, "copy-failed")
    assert f"DataVolume {target} copy restarted 3 times" in done["reason"]
    ctx.eventually(lambda: ctx.vmi_phase(FAULTED) == "Running", what="vm1 runs again")
    assert_healthy(run, report)


def test_target_class_deleted_mid_copy_rolls_back_its_lane_only(ctx: Moves) -> None:
    doomed = f"doomed-{ctx.ns}"[:63]
    create_class(ctx.api, storage_class(doomed, "doomed.csi.example.com"))
    run = lanes(ctx, ONE, cls=doomed, extra=BOUNDED)
    target = ctx.targets(run.faulted_body)[FAULTED]["data"]
    ctx.fault(DV_KIND, target, FaultAction.STALL)
    deleted = ctx.during(
        lambda: (
            ctx.dv(target).get("status", {}).get("phase") and ctx.at_step(FAULTED, "wait-targets")()
        ),
        lambda _: ctx.delete("storage.k8s.io/v1", f"storageclasses/{doomed}", namespaced=False),
        timeout=60,
    )
    released = run.release_when(lambda: rolling_back(ctx))

    rc, report, err = run.apply()

    deleted.check()
    released.check()
    assert rc == 3, err
    done = assert_rolled_back_alone(run, report, "storage-class-deleted")
    assert f"StorageClass {doomed} was deleted" in done["reason"]
    assert not ctx.migrations(FAULTED), "never swapped"
    assert_healthy(run, report)


# --------------------------------------------------------------------------------------------
# someone else acts on the faulted VM mid-move


def test_vm_edited_mid_copy_rolls_back_its_lane_only(ctx: Moves) -> None:
    """Someone renames vm1's scratch volume while its copy runs: their edit stays, the move
    rolls back (``vm-changed``), the other lanes finish."""
    create(ctx.api, Disk("scratch", "pvc", "their-scratch").standalone(ctx.ns) or {})
    run = lanes(ctx, TWO, running=False, extra=BOUNDED)
    target = ctx.targets(run.faulted_body)[FAULTED]["scratch"]
    ctx.fault(DV_KIND, target, FaultAction.STALL)
    volumes = run.before[FAULTED]["spec"]["template"]["spec"]["volumes"]
    index = [v["name"] for v in volumes].index("scratch")
    path = f"/spec/template/spec/volumes/{index}/persistentVolumeClaim/claimName"

    def edit(_: object) -> None:  # their edit, then the copy may finish
        ctx.json_patch(
            f"virtualmachines/{FAULTED}",
            [
                {"op": "test", "path": path, "value": "vm1-scratch"},
                {"op": "replace", "path": path, "value": "their-scratch"},
            ],
        )
        ctx.clear_fault(DV_KIND, target)

    edited = ctx.during(ctx.at_step(FAULTED, "wait-targets"), edit, timeout=60)
    released = run.release_when(lambda: rolling_back(ctx))

    rc, report, err = run.apply()

    edited.check()
    released.check()
    assert rc == 3, err
    done = outcome(report, FAULTED)
    assert (done["result"], done["rule"]) == ("RolledBack", "vm-changed"), done
    assert "volume scratch now uses 'their-scratch'" in done["reason"]
    vm = ctx.vm(FAULTED)
    before = disks_of(run.before[FAULTED])
    assert disks_of(vm) == {**before, "scratch": "their-scratch"}, "their edit stays"
    assert ctx.content("vm1-scratch") == run.hashes[FAULTED]["scratch"]
    assert ctx.content("vm1-data") == run.hashes[FAULTED]["data"]
    assert_own_datavolumes_gone(ctx, done["migrationId"])
    assert ctx.journal(FAULTED) is None
    assert_healthy(run, report)


def test_vm_stopped_mid_migration_rolls_back_its_lane_only(ctx: Moves) -> None:
    run = lanes(ctx, ONE, extra=BOUNDED)
    annotate_vm(ctx, FAULTED, FAULT_ANNOTATION, "stall")

    def running_migration() -> bool:
        return any(
            (m.get("status") or {}).get("phase") == "Running" for m in ctx.migrations(FAULTED)
        )

    stopped = ctx.during(running_migration, lambda _: ctx.set_running(FAULTED, False), timeout=90)
    released = run.release_when(lambda: rolling_back(ctx))

    rc, report, err = run.apply()

    stopped.check()
    released.check()
    assert rc == 3, err
    done = outcome(report, FAULTED)
    assert (done["result"], done["rule"]) == ("RolledBack", "manual-recovery-required"), done
    vm = ctx.vm(FAULTED)
    assert disks_of(vm) == disks_of(run.before[FAULTED]), "volumes reverted"
    assert "updateVolumesStrategy" not in vm["spec"]
    assert vm["spec"]["runStrategy"] == "Halted", "who stopped it decides when it starts"
    assert ctx.hashes(vm) == run.hashes[FAULTED]
    assert_own_datavolumes_gone(ctx, done["migrationId"])
    assert_healthy(run, report)


def test_vm_deleted_mid_copy_fails_its_lane_only(ctx: Moves) -> None:
    run = lanes(ctx, TWO, running=False, extra=BOUNDED)
    target = ctx.targets(run.faulted_body)[FAULTED]["data"]
    ctx.fault(DV_KIND, target, FaultAction.STALL)
    gone = ctx.during(
        ctx.at_step(FAULTED, "wait-targets"),
        lambda _: ctx.delete(KV, f"virtualmachines/{FAULTED}"),
        timeout=60,
    )
    released = run.release_when(lambda: not ctx.vm(FAULTED))

    rc, report, err = run.apply()

    gone.check()
    released.check()
    assert rc == 3, err
    done = outcome(report, FAULTED)
    assert (done["result"], done["rule"]) == ("Failed", "vm-deleted"), done
    assert_own_datavolumes_gone(ctx, done["migrationId"])
    for claim, volume in (("vm1-data", "data"), ("vm1-scratch", "scratch")):
        pvc = ctx.pvc(claim)
        assert pvc and not pvc["metadata"].get("deletionTimestamp"), claim
        assert ctx.content(claim) == run.hashes[FAULTED][volume]
    assert_healthy(run, report)


# --------------------------------------------------------------------------------------------
# the breaker across lanes


BREAKER_FLEET = 6
"""Every VM fails. Three lanes start three; each failure frees a lane, and only the first two
failures leave the count under the breaker's three, so at most five ever start: the sixth
is never started whatever order the lanes end in (without the breaker it would be)."""


def test_failures_in_every_lane_trip_the_breaker_and_stop_new_starts(ctx: Moves) -> None:
    names = fleet(ctx, BREAKER_FLEET)
    before = {n: ctx.vm(n) for n in names}
    targets = ctx.targets(FLEET)
    for name in names:  # every cloner pod attempt fails: CDI retries, apply gives up
        ctx.fault(DV_KIND, targets[name]["root"], FaultAction.FAIL)
    open_journals = ctx.sample(lambda: sum(ctx.journal(n) is not None for n in names))

    rc, report, err = ctx.apply(*LANES, body=FLEET)

    assert rc == 3, err
    assert max(open_journals.stop()) >= 2, "the failing moves ran in several lanes at once"
    started = [o["name"] for o in report["outcomes"]]
    assert 3 <= len(started) <= 5, (started, err)
    assert all(
        (o["result"], o["rule"]) == ("RolledBack", "copy-failed") for o in report["outcomes"]
    )
    assert "3 VMs failed in a row" in report["stoppedEarly"]
    never = [n for n in names if n not in started]
    assert names[-1] in never, "the last VM is never started"
    assert report["pending"] == [f"{ctx.ns}/{n}" for n in never], report["pending"]
    for name in never:
        assert storage_shape(ctx.vm(name)) == storage_shape(before[name])
        assert ctx.journal(name) is None and not ctx.last(name), "never started"
        assert targets[name]["root"] not in ctx.dvs()
    for name in started:
        assert storage_shape(ctx.vm(name)) == storage_shape(before[name])
    ctx.eventually(lambda: not ctx.ours(), what="every move's DataVolumes deleted")
