"""tests/cluster: `apply`, `plan`, `status` and the loop on the real engine. Everything but the
node side is upstream code: virt-api's admission, virt-controller's VMIs and migrations,
cdi-controller's imports and clones, kube-controller-manager's binder and garbage collector,
kube-scheduler; the node side (``testenv.node``: virt-handler's part, the kubelet, CSI, CDI's
worker pods) is ours, and ``node_side`` reaches its fault knobs.

These fixtures override the session's bare kube-apiserver (tests/conftest.py, which the
apiserver, env and deploy tiers use): ``control_plane`` and ``api`` are the real engine's."""

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
def node_side(real_engine: RealEngine) -> NodeSide:
    """The real engine's node side: its fault knobs (``NodeSide.faults``, through ConfigMap
    kube-system/testenv-faults) and its node names."""
    return NodeSide(real_engine.api(), real_engine.nodes)


@pytest.fixture(scope="session")
def flux(real_engine: RealEngine) -> Iterator[FluxEnv]:
    """Flux on the real engine: its own fixture, so never one cached for the bare API server
    (a session fixture is cached by name)."""
    with running_flux(real_engine.control_plane) as env:
        yield env
