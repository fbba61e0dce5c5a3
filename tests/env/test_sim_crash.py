"""A simulated controller that raises is recorded with its traceback (a simulator bug), so
the `sim` fixture can fail the running test instead of letting it time out."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any, ClassVar

import pykube
import pytest

from testenv.node.runtime import Controller, Key, SimConfig, Simulator
from tests.support.kube import Eventually


class _Buggy(Controller):
    """Raises on the namespace named `target` (and nothing else)."""

    watches: ClassVar[tuple[str, ...]] = ("namespaces",)
    target: ClassVar[str] = ""

    def keys_for(self, resource: str, obj: dict[str, Any]) -> Iterable[Key]:
        name = obj["metadata"]["name"]
        return [("namespaces", "", name)] if name == self.target else []

    def reconcile(self, key: Key) -> None:
        raise RuntimeError(f"simulated bug on {key[2]}")


@pytest.mark.cluster
def test_a_controller_exception_is_recorded_with_its_traceback(
        api: pykube.HTTPClient, namespace: str, eventually: Eventually) -> None:
    _Buggy.target = namespace
    # Only the buggy controller runs here, so this second simulator acts on nothing else.
    with Simulator(api, SimConfig(retry_base=0.05), [_Buggy]) as buggy:
        crashes = eventually(buggy.take_crashes, what="a recorded crash")
    assert crashes[0].controller == "_Buggy"
    assert crashes[0].where == f"reconcile('namespaces', '', '{namespace}')"
    assert f"RuntimeError: simulated bug on {namespace}" in crashes[0].traceback
    assert "Traceback (most recent call last)" in str(crashes[0])
