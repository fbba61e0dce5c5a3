"""A simulator runs once: a second start (start() and then `with`, as the demo once did) would
run every controller twice, racing itself (a DataVolume seen going Succeeded -> ImportInProgress
-> Succeeded)."""

from __future__ import annotations

import pykube
import pytest

from testenv.node.runtime import SimConfig, Simulator


def test_a_running_simulator_refuses_a_second_start(api: pykube.HTTPClient) -> None:
    sim = Simulator(api, SimConfig(), [])
    sim.start()
    try:
        with pytest.raises(RuntimeError, match="already running"):
            sim.start()
        with pytest.raises(RuntimeError, match="already running"), sim:
            pass
    finally:
        sim.stop()
