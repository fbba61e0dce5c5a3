"""Simulated cluster controllers (CSI provisioner, CDI, KubeVirt) for a bare kube-apiserver.

`start(api)` builds every known controller and starts them; see `core` for the framework.
"""

from __future__ import annotations

import importlib
import importlib.util
from collections.abc import Sequence
from typing import Any

from testenv.simulator.core import (
    RESOURCES,
    ApiError,
    Client,
    Controller,
    ControllerCrash,
    Fault,
    FaultAction,
    Faults,
    Key,
    SimConfig,
    Simulator,
    Store,
    content_hash,
)

__all__ = [
    "RESOURCES",
    "ApiError",
    "Client",
    "Controller",
    "ControllerCrash",
    "Fault",
    "FaultAction",
    "Faults",
    "Key",
    "SimConfig",
    "Simulator",
    "Store",
    "all_controllers",
    "content_hash",
    "start",
]


def all_controllers() -> list[type[Controller]]:
    """The storage controllers, plus the KubeVirt ones when that module exists, and the
    VirtualMachineSnapshot controller."""
    from testenv.simulator import storage

    found: list[type[Controller]] = list(storage.CONTROLLERS)
    if importlib.util.find_spec("testenv.simulator.kubevirt") is not None:
        kubevirt = importlib.import_module("testenv.simulator.kubevirt")
        found.extend(kubevirt.CONTROLLERS)
    from testenv.simulator import snapshot

    found.extend(snapshot.CONTROLLERS)
    return found


def start(
    api: Any,
    config: SimConfig | None = None,
    controllers: Sequence[type[Controller]] | None = None,
) -> Simulator:
    """Build a simulator on a pykube `HTTPClient`, start it and return it (call `stop()`)."""
    sim = Simulator(api, config, all_controllers() if controllers is None else controllers)
    sim.start()
    return sim
