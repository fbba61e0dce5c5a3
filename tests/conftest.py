"""Session-wide fixtures: one real control plane (etcd + kube-apiserver + KubeVirt/CDI CRDs).

The control plane starts lazily, on the first test that asks for it, and serves the whole
session. If it cannot start, every test that needs it FAILS with the reason (missing Go,
build error, apiserver log tail); it is never skipped. Sub-directory conftest files add
their own fixtures on top of these.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import pykube
import pytest

from testenv.controlplane import ControlPlane


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


def _prefix(test_name: str) -> str:
    """A DNS-label-safe prefix (<= 40 chars) derived from the test name."""
    cleaned = "".join(c if c.isalnum() else "-" for c in test_name.lower().removeprefix("test_"))
    return "-".join(filter(None, cleaned.split("-")))[:40].strip("-") or "test"
