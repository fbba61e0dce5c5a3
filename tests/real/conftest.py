"""tests/real: cluster tests of ``apply`` run on the real engine. Each module here imports
test functions from tests/cluster (the same code runs on both engines) and these fixtures
replace the simulator's: ``control_plane`` and ``api`` are the real engine's, and ``sim`` is
its node side (``tests.support.node_faults``: faults through the API, no in-process
registry). Everything but the node side is upstream code: virt-api's admission,
virt-controller's migrations, cdi-controller's clones."""

from __future__ import annotations

from collections.abc import Iterator

import pykube
import pytest

from testenv.controlplane import ControlPlane
from testenv.real.engine import RealEngine
from tests.support.flux import FluxEnv, running_flux
from tests.support.node_faults import NodeSide


@pytest.fixture(scope="session")
def control_plane(real_engine: RealEngine) -> ControlPlane:
    """The real engine's control plane (started and stopped with it)."""
    return real_engine.control_plane


@pytest.fixture(scope="session")
def api(real_engine: RealEngine) -> pykube.HTTPClient:
    """Admin client of the real engine."""
    return real_engine.api()


@pytest.fixture(scope="session")
def sim(real_engine: RealEngine) -> NodeSide:
    """The node side: where a test on the simulator reaches the simulator's faults."""
    return NodeSide(real_engine.api(), real_engine.nodes)


@pytest.fixture(scope="session")
def flux(real_engine: RealEngine) -> Iterator[FluxEnv]:
    """Flux on the real engine: its own fixture, so never the simulator's cached one."""
    with running_flux(real_engine.control_plane) as env:
        yield env
