"""Split brain (tests/cluster/test_split_brain.py) on the real engine: a runner frozen
(SIGSTOP) or cut off from the API server past its Lease while another run takes over and
finishes its move through upstream virt-controller and cdi-controller; the engine's API server
audits every runner's requests (``testenv.real.engine.AUDIT_POLICY``), and the node side's
copies take seconds for as long as the module runs (``EngineLab``), so the runner is always
isolated mid-copy. ``LEAVE_OUT`` names the tests that stay in tests/cluster, each with why."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from testenv.real.engine import RealEngine
from tests.cluster import test_split_brain
from tests.support.lab import Lab
from tests.support.mirror import mirror
from tests.support.node_faults import EngineLab

LEAVE_OUT = {
    "test_the_proxy_blackholes_until_healed_then_resets_what_lived_through_the_cut": (
        "the TCP proxy on its own, against an echo server: no cluster, nothing of the engine"
    ),
    "test_the_proxy_heal_without_reset_delivers_what_was_held": (
        "the TCP proxy on its own (as above)"
    ),
}

globals().update(mirror(test_split_brain, LEAVE_OUT))


@pytest.fixture(scope="module")
def lab(real_engine: RealEngine, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Lab]:
    """The real engine as the split-brain tests' lab; replaces the simulator's."""
    rate = test_split_brain.COPY_SECONDS_PER_GIB
    workdir = tmp_path_factory.mktemp("split-brain-real")
    with EngineLab(real_engine, workdir, copy_seconds_per_gib=rate) as started:
        yield started
