"""`apply` killed, stopped, raced and cut off from its API server (tests/cluster/
test_apply_crash.py) on the real engine: SIGKILL at step boundaries of both flows and both
rollbacks, SIGTERM mid-VM, two runs at once, Leases held and expired, and the API server
restarted mid-copy and mid-migration. What the next run finds after a kill is what upstream
virt-controller, virt-api and cdi-controller made of the half-done move; the node side plays
only the node (and fails or stalls what a test asks it to).

Every boundary passes here (46 of 46, measured), but one takes ~15 s on the real engine (a VM
imported and started through CDI, the scheduler and KWOK, then two runs) against ~5 s on the
simulator: all of them add ~13 minutes to the one worker that runs the real-engine tests. So by
default only ``REPRESENTATIVE`` run here and the simulator keeps running every boundary (the
original is then not mirrored, so not deselected); ``VMSR_CRASH_MATRIX=all`` runs every boundary
here instead.

The API server restarts run on an engine of their own (``restart_engine``, xdist group
``real-engine-restart``), so the session's engine never waits out their outage. Upstream's
leader-elected controllers exit when they cannot renew their Lease in time: cdi-controller
after 10 s (controller-runtime's default; CDI sets none), virt-controller after 20 s (as the
engine starts it), and a restart can outlast that (measured: 16-35 s on 2 cores at load
10-13); the engine then starts them again once the API server is ready, as the kubelet would
(``testenv.real.engine.RESTARTED``). Every test here fails if a process of its engine died
during it (any other exit)."""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from testenv import seed
from testenv.real.engine import RealEngine
from tests.cluster import test_apply_crash
from tests.cluster.test_apply_crash import BOUNDARIES, KV, Boundary, Cluster
from tests.support.kube import Eventually
from tests.support.mirror import MIRRORED, mirror
from tests.support.node_faults import NodeSide

LEAVE_OUT: dict[str, str] = {}
"""Nothing: every test of the module runs on upstream."""

FULL = os.environ.get("VMSR_CRASH_MATRIX") == "all"

REPRESENTATIVE = (
    # a kill while upstream reacts to the step's request
    "live-after-create-targets",  # cdi-controller cloning
    "live-after-swap",  # virt-controller starting the volume migration
    "live-after-delete-sources",  # the GC and pvc-protection (the completed launcher pod)
    "live-rollback-after-revert",  # virt-controller cancelling the volume update
    "offline-after-stop",  # the VMI being torn down
    "offline-after-start",  # the VMI being created on the targets
    "offline-rollback-after-start",  # the VMI being created back on the sources
    # the rerun must verify before it deletes a source
    "live-before-verify",
)
"""The boundaries run here by default (see the module docstring)."""

BOUNDARY_TEST = "test_killed_at_a_step_boundary_the_next_run_converges"
RESTARTS = (
    "test_api_server_restart_mid_migration_the_run_reconnects_and_finishes",
    "test_api_server_restart_mid_copy_the_run_reconnects_and_finishes",
)
ELSEWHERE = dict.fromkeys(
    RESTARTS, "runs below, on an engine of its own (see the module docstring)"
)
if not FULL:
    ELSEWHERE[BOUNDARY_TEST] = (
        "time, not upstream: every boundary passes here (VMSR_CRASH_MATRIX=all), by default "
        "only REPRESENTATIVE do (below) and the simulator runs them all"
    )

globals().update(mirror(test_apply_crash, {**LEAVE_OUT, **ELSEWHERE}))
# they run here instead of on the simulator, as mirrored tests do
MIRRORED.update((Path(str(test_apply_crash.__file__)).resolve(), name) for name in RESTARTS)

if not FULL:
    _CHOSEN = [b for b in BOUNDARIES if b.id in REPRESENTATIVE]
    assert len(_CHOSEN) == len(REPRESENTATIVE), "a representative boundary no longer exists"

    @pytest.mark.parametrize("boundary", _CHOSEN, ids=lambda b: b.id)
    def test_killed_at_a_representative_step_boundary_the_next_run_converges(
        cluster: Cluster, boundary: Boundary
    ) -> None:
        test_apply_crash.test_killed_at_a_step_boundary_the_next_run_converges(cluster, boundary)


def _assert_alive(engine: RealEngine) -> None:
    dead = engine.dead()
    tails = "\n".join(engine.log_tail(name) for name in dead)
    assert not dead, (
        f"processes of the real engine died during this test: {dead} (a leader-elected "
        f"controller exits when the API server was away longer than its renew deadline)\n{tails}"
    )


@pytest.fixture(autouse=True)
def _engine_survives(request: pytest.FixtureRequest) -> Iterator[None]:
    """Fail the test during which a process of the session's engine died (the restart tests
    check their own engine: they do not start the session's)."""
    yield
    if "real_engine" in request.fixturenames:
        _assert_alive(request.getfixturevalue("real_engine"))


# --------------------------------------------------------------------------------------------
# the API server restarts, on an engine of their own
# --------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def restart_engine() -> Iterator[RealEngine]:
    """A real engine for the restart tests only (seeded); stopped after them."""
    engine = RealEngine(log=print)
    try:
        engine.start()
    except Exception as error:  # a start failure must fail, with its reason
        pytest.fail(f"the restart tests' real engine could not start: {error}", pytrace=False)
    try:
        seed.seed_cluster(engine.api())
        yield engine
    finally:
        engine.stop()


@pytest.fixture
def restart_cluster(
    restart_engine: RealEngine, tmp_path: Path, eventually: Eventually
) -> Iterator[Cluster]:
    """``cluster`` on ``restart_engine``: a fresh namespace, its VMs deleted afterwards."""
    plane = restart_engine.control_plane
    api = restart_engine.api()
    namespace = plane.create_namespace("api-server-restart")
    side = NodeSide(api, restart_engine.nodes)
    cluster = Cluster(api, plane, namespace, tmp_path, eventually, side)
    yield cluster
    cluster.close()
    with contextlib.suppress(Exception):
        api.delete(version=KV, namespace=namespace, url="virtualmachines")
    _assert_alive(restart_engine)


@pytest.mark.xdist_group("real-engine-restart")
class TestOnAnEngineOfTheirOwn:
    """The restart tests: neither the session's engine nor its seed (``restart_engine`` is
    seeded), so they do not join the session engine's worker."""

    @pytest.fixture(autouse=True)
    def cluster_objects(self) -> None:
        """Overrides the module's autouse seed of the session's engine."""

    def test_api_server_restart_mid_migration_the_run_reconnects_and_finishes(
        self, restart_cluster: Cluster
    ) -> None:
        test_apply_crash.test_api_server_restart_mid_migration_the_run_reconnects_and_finishes(
            restart_cluster, restart_cluster.control_plane
        )

    def test_api_server_restart_mid_copy_the_run_reconnects_and_finishes(
        self, restart_cluster: Cluster
    ) -> None:
        test_apply_crash.test_api_server_restart_mid_copy_the_run_reconnects_and_finishes(
            restart_cluster, restart_cluster.control_plane
        )
