"""Session-wide fixtures: a bare control plane (etcd + kube-apiserver + the KubeVirt/CDI
CRDs, no controller) and the real engine (the same with upstream KubeVirt, CDI and
Kubernetes controllers and our node side; tests/cluster/conftest.py makes it the cluster
tier's ``control_plane``).

Each starts lazily, on the first test that asks for it, and serves the whole session (of
its pytest-xdist worker). If one cannot start, every test that needs it FAILS with the
reason (missing Go, build error, a process's log tail); it is never skipped. ``eventually``
polls with a deadline.
"""

from __future__ import annotations

import contextlib
import os
import time
from collections import Counter
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pykube
import pytest

from testenv.controlplane import ControlPlane
from testenv.real.engine import RealEngine
from tests.support import durations
from tests.support.engines import running_engine
from tests.support.faultproxy import FaultProxy

# The `flux` and `flux_sync` fixtures (a real Flux, started only for the tests that use it).
pytest_plugins = ("tests.support.flux",)


@pytest.fixture(scope="session")
def control_plane() -> Iterator[ControlPlane]:
    """The running control plane; stopped (no processes, no temp dir) after the session."""
    plane = ControlPlane()
    try:
        plane.start()
    except Exception as error:  # any start failure must fail the suite, with its reason
        pytest.fail(f"the test control plane could not start: {error}", pytrace=False)
    yield plane
    plane.stop()


@pytest.fixture(scope="session")
def real_engine() -> Iterator[RealEngine]:
    """The real engine (upstream virt-controller, virt-api, cdi-controller, kube-scheduler,
    kube-controller-manager, KWOK; our node side), started once per session by the first
    test that asks for it (the cluster tier, tests/env/test_real_*.py). A start failure fails the
    test with the process that failed and its log; it is never skipped. At the end: stopped,
    and no process may have died."""
    with running_engine("the real engine") as engine:
        yield engine


@pytest.fixture
def proxy(control_plane: ControlPlane) -> Iterator[FaultProxy]:
    """A fault-injecting, request-counting proxy in front of this directory's API server
    (``tests.support.faultproxy``), for one test."""
    with FaultProxy(control_plane.server, control_plane.ca_file) as running:
        yield running


@pytest.fixture(scope="session")
def api(control_plane: ControlPlane) -> pykube.HTTPClient:
    """Admin client (user ``admin`` in ``system:masters``)."""
    return control_plane.api()


@pytest.fixture
def namespace(control_plane: ControlPlane, request: pytest.FixtureRequest) -> Iterator[str]:
    """A fresh namespace per test, named after the test; deleted (best effort) afterwards.

    Without a namespace controller the deleted namespace stays Terminating with its
    objects, which is harmless: names are unique.
    """
    name = control_plane.create_namespace(_prefix(request.node.name))
    yield name
    with contextlib.suppress(Exception):
        control_plane.api().delete(url=f"namespaces/{name}")


@pytest.fixture(autouse=True)
def _no_journal_outlives_its_test(request: pytest.FixtureRequest) -> Iterator[None]:
    """After a test that used the control plane, delete the VMs of every namespace it created
    (what the namespace controller, not run here, would do when it deletes them): `apply`
    finishes every open move in every namespace it may act in, whatever its plans say, so a
    move a test left journaled must not be resumed (or a hand-made journal refused) by a
    later test's run."""
    if "control_plane" not in request.fixturenames:
        yield
        return
    plane: ControlPlane = request.getfixturevalue("control_plane")
    before = len(plane.namespaces_created)
    yield
    api = plane.api()
    for name in plane.namespaces_created[before:]:
        with contextlib.suppress(Exception):
            api.delete(version="kubevirt.io/v1", namespace=name, url="virtualmachines")


def _prefix(test_name: str) -> str:
    """A DNS-label-safe prefix (<= 40 chars) derived from the test name."""
    cleaned = "".join(c if c.isalnum() else "-" for c in test_name.lower().removeprefix("test_"))
    return "-".join(filter(None, cleaned.split("-")))[:40].strip("-") or "test"


TESTS = Path(__file__).resolve().parent
TIERS = {
    "unit": pytest.mark.unit,
    "env": pytest.mark.env,
    "apiserver": pytest.mark.cluster,
    "cluster": pytest.mark.cluster,
    "deploy": pytest.mark.cluster,
}
"""The tier of each test directory (``pytest -m unit`` runs only tests that start nothing)."""

REAL_ENGINE_GROUP = "real-engine"
"""The pytest-xdist groups of the tests on the real engine (``make test`` runs ``--dist
loadgroup``): ``real-engine-1`` .. ``-N``, a worker each, so N engines serve them side by side;
each module stays in one group (its module fixtures seed its engine once)."""

REAL_ENGINES = max(1, int(os.environ.get("VMSR_REAL_ENGINES", "3")))
"""How many real engines a run starts at most (one per group; ``make test`` runs 3 workers):
the machine is CPU-bound either way, and a group per worker spreads the engines' waits."""


def real_engine_groups(modules: dict[str, int]) -> dict[str, str]:
    """Module -> its group: the modules (with their selected test counts) dealt out greedily,
    heaviest first, to the group with the least expected time so far (each test weighed by
    its module's measured mean, ``tests.support.durations``), so the engines end close
    together."""
    known = durations.load()
    weights = {m: durations.weight(_relative(m), n, known) for m, n in modules.items()}
    load = dict.fromkeys(range(1, REAL_ENGINES + 1), 0.0)
    groups: dict[str, str] = {}
    for module, seconds in sorted(weights.items(), key=lambda item: (-item[1], item[0])):
        least = min(load, key=lambda group: (load[group], group))
        load[least] += seconds
        groups[module] = f"{REAL_ENGINE_GROUP}-{least}"
    return groups


def _relative(module: str) -> str:
    path = Path(module)
    return str(path.relative_to(TESTS.parent)) if path.is_absolute() else module


@pytest.hookimpl(tryfirst=True)  # before pytest-xdist reads the groups
def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Every test of a module with a test on the real engine joins that module's xdist group
    (unless it names its own), so its module fixtures run once, on one worker; every test
    gets its tier's marker."""
    modules = {str(i.path) for i in items if "real_engine" in getattr(i, "fixturenames", ())}
    grouped = [
        item
        for item in items
        if str(item.path) in modules and item.get_closest_marker("xdist_group") is None
    ]
    groups = real_engine_groups(Counter(str(item.path) for item in grouped))
    for item in grouped:
        item.add_marker(pytest.mark.xdist_group(groups[str(item.path)]))
    for item in items:
        tier = TIERS.get(item.path.relative_to(TESTS).parts[0])
        if tier:
            item.add_marker(tier)


def _eventually(probe: Callable[[], Any], timeout: float = 30.0, what: str = "condition") -> Any:
    """Call `probe` until it returns a truthy value (returned) or `timeout` passes (fail).

    The deadline is generous because it is a ceiling, not a wait: on the real engine with the
    machine's two cores shared by three workers a chain of controllers (KubeVirt, CDI, the
    scheduler, the node side) can take well over 10 s. The pause grows from 20 ms to 100 ms
    so a long wait does not keep the API server (the suite's bottleneck) busy with probes."""
    deadline = time.monotonic() + timeout
    last: Any = None
    pause = 0.02
    while time.monotonic() < deadline:
        last = probe()
        if last:
            return last
        time.sleep(pause)
        pause = min(pause * 1.5, 0.1)
    pytest.fail(f"timed out after {timeout}s waiting for {what} (last: {last!r})")


@pytest.fixture
def eventually() -> Callable[..., Any]:
    """The polling helper, as a fixture so every test module shares one implementation."""
    return _eventually
