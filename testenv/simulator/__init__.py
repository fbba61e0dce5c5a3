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
    from testenv.simulator import pods, storage

    found: list[type[Controller]] = [*storage.CONTROLLERS, *pods.CONTROLLERS]
    for name in ("kubevirt", "kubevirt_migration"):
        if importlib.util.find_spec(f"testenv.simulator.{name}") is not None:
            found.extend(importlib.import_module(f"testenv.simulator.{name}").CONTROLLERS)
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
