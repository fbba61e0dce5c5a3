"""Fixtures for control-plane and simulator tests.

`sim` starts the whole simulator (storage + KubeVirt controllers) once per session on the
session's control plane and stops it at the end. `eventually` polls the API with a
deadline (polling is fine in tests; the simulator itself reacts to watches).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from typing import Any

import pykube
import pytest

from testenv.simulator import SimConfig, Simulator, start

SIM_CONFIG = SimConfig(copy_seconds_per_gib=0.0, progress_tick=0.05)
"""Instant copies by default; a test that wants progress sets the DataVolume annotation
`sim.vmstorage.dev/copy-seconds`."""


@pytest.fixture(scope="session")
def sim(api: pykube.HTTPClient) -> Iterator[Simulator]:
    """The running simulator, shared by the session; stopped at the end."""
    simulator = start(api, SIM_CONFIG)
    yield simulator
    simulator.stop()


def _eventually(probe: Callable[[], Any], timeout: float = 10.0, what: str = "condition") -> Any:
    """Call `probe` until it returns a truthy value (returned) or `timeout` passes (fail)."""
    deadline = time.monotonic() + timeout
    last: Any = None
    while time.monotonic() < deadline:
        last = probe()
        if last:
            return last
        time.sleep(0.02)
    pytest.fail(f"timed out after {timeout}s waiting for {what} (last: {last!r})")


@pytest.fixture
def eventually() -> Callable[..., Any]:
    """The polling helper, as a fixture so every test module shares one implementation."""
    return _eventually
