"""The real engine's node side as a test sees it (``NodeSide``, the ``node_side`` fixture):
upstream virt-controller, virt-api and cdi-controller decide everything but the node side,
whose faults a test sets through ConfigMap ``kube-system/testenv-faults``
(``testenv.node.faults``) with ``NodeFaults.add``/``clear``; each call returns once the node
side has armed it."""

from __future__ import annotations

import json
import time
from collections.abc import Sequence
from dataclasses import dataclass

import pykube

from testenv.node.faults import COPY_SECONDS_PER_GIB, FAULTS, NAMESPACE, SEEN, fault_key
from testenv.node.runtime import Fault, FaultAction

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
    """The node side's configuration tests read: the (KWOK) node names."""

    nodes: tuple[str, ...]


class NodeSide:
    """What a test reaches of the real engine's node side: its fault knobs (``faults``) and
    its configuration (``config``)."""

    def __init__(self, api: pykube.HTTPClient, nodes: Sequence[str]) -> None:
        self.faults = NodeFaults(api)
        self.config = NodeConfig(tuple(nodes))
