"""The ``sim`` fixture's stand-in on the real engine: upstream virt-controller, virt-api and
cdi-controller decide everything but the node side, whose faults a test sets through
ConfigMap ``kube-system/testenv-faults`` (``testenv.node.faults``). ``NodeFaults`` has the
simulator's ``faults.add``/``clear`` signature, so a test written against the simulator's
fault registry runs unchanged; each call returns once the node side has armed it.

``EngineLab``: ``tests.support.lab.Lab`` (runner identities, the audit log) on the real
engine instead of a control plane and simulator of its own: the engine's API server audits
its runners' ServiceAccounts, and the node side's copy rate is set for as long as the lab
runs."""

from __future__ import annotations

import json
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Self

import pykube

from testenv import seed
from testenv.node.faults import COPY_SECONDS_PER_GIB, FAULTS, NAMESPACE, SEEN, fault_key
from testenv.node.runtime import ControllerCrash, Fault, FaultAction, SimConfig
from testenv.real.engine import AUDITED_NAMESPACE, RealEngine
from tests.support.lab import RUNNERS_NS, Lab

ACK_TIMEOUT = 30.0


class NodeFaults:
    """``add``/``clear`` faults of the real engine's node side (see the module docstring)."""

    def __init__(self, api: pykube.HTTPClient) -> None:
        self.api = api

    def add(self, kind: str, namespace: str, name: str, fault: Fault) -> None:
        """Arm ``fault`` for the object's next operations (it need not exist yet)."""
        value = fault.action.value
        if fault.action is FaultAction.FAIL_TIMES:
            value += f":{fault.times}"
        self._write({fault_key(kind, namespace, name): value})

    def clear(self, kind: str, namespace: str, name: str) -> None:
        """Remove the object's fault (a stall resumes)."""
        self._write({fault_key(kind, namespace, name): None})

    def copy_seconds_per_gib(self, seconds: float | None) -> None:
        """How long the node side's copies and migrations take per GiB from now on (None: as
        the node side started)."""
        self._write({COPY_SECONDS_PER_GIB: None if seconds is None else str(seconds)})

    def _write(self, data: dict[str, str | None]) -> None:
        body = {
            "apiVersion": "v1",
            "kind": "ConfigMap",
            "metadata": {"name": FAULTS, "namespace": NAMESPACE},
            "data": data,
        }
        response = self.api.patch(
            version="v1",
            namespace=NAMESPACE,
            url=f"configmaps/{FAULTS}",
            data=json.dumps(body),
            headers={"Content-Type": "application/merge-patch+json"},
        )
        if response.status_code == 404:
            body["data"] = {k: v for k, v in data.items() if v is not None}
            response = self.api.post(
                version="v1", namespace=NAMESPACE, url="configmaps", data=json.dumps(body)
            )
        self.api.raise_for_status(response)
        written = str(response.json()["metadata"]["resourceVersion"])
        self._wait_seen(written)

    def _wait_seen(self, written: str) -> None:
        """Until the node side has synced this write (or a later one)."""
        deadline = time.monotonic() + ACK_TIMEOUT
        while time.monotonic() < deadline:
            current = self._version(FAULTS)
            if self._version(SEEN) in (written, current) and current:
                return
            time.sleep(0.05)
        raise AssertionError(
            f"the node side did not arm the faults of {FAULTS} "
            f"(resourceVersion {written}) within {ACK_TIMEOUT:.0f}s"
        )

    def _version(self, name: str) -> str:
        response = self.api.get(version="v1", namespace=NAMESPACE, url=f"configmaps/{name}")
        if response.status_code == 404:
            return ""
        self.api.raise_for_status(response)
        if name == SEEN:
            return str((response.json().get("data") or {}).get("resourceVersion") or "")
        return str(response.json()["metadata"]["resourceVersion"])


@dataclass(frozen=True)
class NodeConfig:
    """The part of the simulator's ``SimConfig`` tests read: the (KWOK) node names."""

    nodes: tuple[str, ...]


class NodeSide:
    """What a test sees of the real engine's node side where it would see the simulator."""

    def __init__(self, api: pykube.HTTPClient, nodes: Sequence[str]) -> None:
        self.faults = NodeFaults(api)
        self.config = NodeConfig(tuple(nodes))

    def take_crashes(self) -> list[ControllerCrash]:
        """The node side runs in its own process; the engine fixture fails the session if it
        dies, and its log carries any controller crash."""
        return []


class EngineLab(Lab):
    """A ``Lab`` on the real engine (see the module docstring): ``start``/``stop`` (or
    ``with``) set and restore the node side's copy rate; runners and the audit log are
    ``Lab``'s."""

    def __init__(self, engine: RealEngine, workdir: Path, *, copy_seconds_per_gib: float) -> None:
        # Not Lab.__init__: the control plane is the engine's, not one of the lab's own.
        assert AUDITED_NAMESPACE == RUNNERS_NS, "the engine audits another namespace"
        assert engine.audit_log is not None, "the real engine is not running"
        self.workdir = workdir
        self.sim_config = SimConfig(copy_seconds_per_gib=copy_seconds_per_gib)
        self.audit_log = engine.audit_log
        self.cp = engine.control_plane
        self._sim = None
        self._api = engine.api()
        self._kubeconfigs = {}
        self.node = NodeSide(self._api, engine.nodes)

    def start(self) -> Self:
        seed.seed_cluster(self.api)  # what Lab.start seeds (an existing object is kept)
        seed.create(self.api, seed.namespace(RUNNERS_NS))
        self.node.faults.copy_seconds_per_gib(self.sim_config.copy_seconds_per_gib)
        return self

    def stop(self) -> None:
        self.node.faults.copy_seconds_per_gib(None)

    def take_crashes(self) -> list[Any]:
        """The node side runs in its own process (see ``NodeSide.take_crashes``)."""
        return self.node.take_crashes()
