"""The random-kill storm (tests/cluster/test_kill_storm.py) on the real engine: `apply`
SIGKILLed at random moments (mid-request, mid-wait, mid-copy, mid-migration) over a mixed fleet,
then one run without kills; what the runs find after each kill is what upstream virt-controller,
virt-api and cdi-controller made of the half-done moves.

The storm needs copies that take seconds (so kills land inside them), and the session's engine
copies instantly: ``storm_engine`` starts a real engine of its own whose node side copies at
``COPY_SECONDS_PER_GIB``, as the simulator's storm does. Its own engine also keeps the storm off
the session engine's worker (tests/conftest.py groups the tests that use ``real_engine``), so
under ``--dist loadgroup`` it runs beside them. The seed is printed first
(``VMSR_STORM_SEED`` replays it). Only the ``--parallel 3`` variant runs here (``LEAVE_OUT``
says why); tests/cluster/test_kill_storm.py runs both on the simulator."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from testenv import seed
from testenv.real.engine import RealEngine
from tests.cluster import test_kill_storm
from tests.cluster.test_kill_storm import COPY_SECONDS_PER_GIB, StormEngine
from tests.support.mirror import mirror
from tests.support.node_faults import NodeFaults

LEAVE_OUT = {
    "test_random_kills_over_a_mixed_fleet_lose_nothing_and_leak_nothing": (
        "parametrized one VM at a time and --parallel 3; each variant is several minutes on "
        "the real engine, so here it runs once, with --parallel 3 (below): the same kills, "
        "resumes and rollbacks, with up to three moves open at each kill; the serial variant "
        "stays on the simulator"
    ),
}

globals().update(mirror(test_kill_storm, LEAVE_OUT))


def test_random_kills_over_a_parallel_fleet_lose_nothing_and_leak_nothing(
    storm: test_kill_storm.Storm,
) -> None:
    """The storm with ``--parallel 3`` (``test_kill_storm.LANES``) on the real engine."""
    test_kill_storm.test_random_kills_over_a_mixed_fleet_lose_nothing_and_leak_nothing(
        storm, test_kill_storm.LANES
    )


DELAY = (0.5, 12.0)
"""Each run's random lifetime before its SIGKILL, three times the simulator's: upstream reacts
more slowly (measured: the uninterrupted final run took 75 s for the fleet's last 4.5 VMs,
about 15 s a VM on 2 busy cores, five times the simulator's), and with the simulator's delays
every kill landed in the same two or three waits."""

FINAL_TIMEOUT = 240.0
"""The final run's deadline: it may have the whole fleet left (6 VMs at the ~15 s measured
above is 90 s), with room for a machine busier than the one measured on."""

START_AND_STORM_TIMEOUT = 900
"""pytest-timeout for the test with its engine's start (measured 44-140 s, load-dependent),
the fleet's build, the storm (18 runs of at most 12 s) and the final run."""

pytestmark = pytest.mark.timeout(START_AND_STORM_TIMEOUT)


@pytest.fixture(scope="module")
def storm_engine() -> Iterator[StormEngine]:
    """A real engine of the storm's own, copying at ``COPY_SECONDS_PER_GIB``, seeded; stopped
    at the end, when none of its processes may have died."""
    engine = RealEngine(log=print, copy_seconds_per_gib=COPY_SECONDS_PER_GIB)
    try:
        engine.start()
    except Exception as error:  # a start failure must fail, with its reason
        pytest.fail(f"the storm's real engine could not start: {error}", pytrace=False)
    try:
        api = engine.api()
        seed.seed_cluster(api)
        yield StormEngine(
            api=api,
            kubeconfig=engine.control_plane.kubeconfig,
            faults=NodeFaults(api),
            create_namespace=engine.control_plane.create_namespace,
            take_crashes=lambda: [],  # the node side logs its own (a process of its own)
            final_timeout=FINAL_TIMEOUT,
            test_file="tests/real/test_real_kill_storm.py",
            delay=DELAY,
        )
        dead = engine.dead()
        tails = "\n".join(engine.log_tail(name) for name in dead)
        assert not dead, f"processes of the storm's real engine died: {dead}\n{tails}"
    finally:
        engine.stop()
