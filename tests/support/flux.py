"""A real Flux for the tests that need one: fixtures and the GitOps objects they create.

``flux`` (session) starts source-controller and kustomize-controller (``testenv.flux``)
and a local Git server (``testenv.gitserver``) next to the session's control plane, on the
first test that asks for it; a test that never asks pays nothing. If Flux cannot start
(not built, Go missing, a controller exits), the test FAILS with the reason and the log
tail, like the control plane.

``flux_sync`` (per test) makes GitOps pairs: a Git repository, a ``GitRepository`` for it
and a ``Kustomization`` applying it to the test's namespace. Their interval is long (10 min)
so nothing syncs unless the test asks with ``reconcile()`` (Flux's
``reconcile.fluxcd.io/requestedAt``, what ``flux reconcile`` sets); a test that wants
interval syncs passes ``interval=``. The pairs are deleted after the test, so their
controllers stop working for it (no namespace controller would otherwise remove them).

Registered for every suite by ``pytest_plugins`` in tests/conftest.py.
"""

from __future__ import annotations

import contextlib
import itertools
import json
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import pykube
import pytest

from testenv.controlplane import ControlPlane
from testenv.flux import KUSTOMIZE_API, REQUESTED_AT, SOURCE_API, Flux
from testenv.gitserver import GitServer, Repository
from tests.support.kube import Eventually, condition, get_json


@dataclass(frozen=True)
class FluxEnv:
    """The running controllers and the Git server their GitRepositories point at."""

    controllers: Flux
    git: GitServer


@pytest.fixture(scope="session")
def flux(control_plane: ControlPlane) -> Iterator[FluxEnv]:
    """Flux + Git server for the session; stopped (processes, files) before the control plane."""
    with running_flux(control_plane) as env:
        yield env


@contextlib.contextmanager
def running_flux(control_plane: ControlPlane) -> Iterator[FluxEnv]:
    """Flux + Git server on ``control_plane`` until the block ends.

    A session fixture is cached by name, not by the control plane it was given: a directory
    that overrides ``control_plane`` (tests/cluster: the real engine's) must override
    ``flux`` with this too, or a worker that ran a Flux test on the bare control plane first
    hands the engine's tests that Flux (its CRDs missing on the engine's server: 404)."""
    assert control_plane.workdir is not None
    git = GitServer(control_plane.workdir / "git")
    controllers = Flux(control_plane)
    try:
        git.start()
        controllers.start()
    except Exception as error:  # any start failure must fail the tests, with its reason
        git.stop()
        pytest.fail(f"Flux could not start in the test environment: {error}", pytrace=False)
    try:
        yield FluxEnv(controllers=controllers, git=git)
    finally:
        controllers.stop()
        git.stop()


_SEQUENCE = itertools.count()


@dataclass(frozen=True)
class FluxSync:
    """A Git repository synced into ``namespace`` by a GitRepository + Kustomization."""

    api: pykube.HTTPClient
    namespace: str
    name: str
    """Name of both the GitRepository and the Kustomization."""
    repo: Repository

    def source(self) -> dict[str, Any]:
        return get_json(self.api, SOURCE_API, self.namespace, f"gitrepositories/{self.name}")

    def kustomization(self) -> dict[str, Any]:
        return get_json(self.api, KUSTOMIZE_API, self.namespace, f"kustomizations/{self.name}")

    def reconcile(self, kind: str = "Kustomization") -> str:
        """Ask the controller of ``kind`` (``GitRepository`` or ``Kustomization``) to sync now;
        return the token it reports in ``status.lastHandledReconcileAt`` once done."""
        token = str(time.time_ns())
        version, plural = _RESOURCES[kind]
        patch = {"metadata": {"annotations": {REQUESTED_AT: token}}}
        response = self.api.patch(
            version=version,
            namespace=self.namespace,
            url=f"{plural}/{self.name}",
            headers={"Content-Type": "application/merge-patch+json"},
            data=json.dumps(patch),
        )
        self.api.raise_for_status(response)
        return token

    def applied(self, revision: str, token: str | None = None) -> dict[str, Any] | None:
        """The Kustomization once Ready=True at ``revision`` for its current generation
        (and, with ``token``, after handling that reconcile request); else None."""
        ks = self.kustomization()
        status = ks.get("status") or {}
        ready = condition(ks, "Ready").get("status") == "True"
        current = status.get("observedGeneration") == ks.get("metadata", {}).get("generation")
        handled = token is None or status.get("lastHandledReconcileAt") == token
        if ready and current and handled and status.get("lastAppliedRevision") == revision:
            return ks
        return None

    def wait_applied(
        self,
        eventually: Eventually,
        revision: str | None = None,
        *,
        token: str | None = None,
        timeout: float = 60.0,
    ) -> dict[str, Any]:
        """Wait until ``applied(revision, token)`` (default: the repository's head)."""
        wanted = revision or self.repo.flux_revision()
        ks: dict[str, Any] = eventually(
            lambda: self.applied(wanted, token),
            timeout=timeout,
            what=f"Kustomization {self.namespace}/{self.name} Ready at {wanted}"
            f" ({self._status_summary()})",
        )
        return ks

    def sync_now(self, eventually: Eventually, *, timeout: float = 60.0) -> dict[str, Any]:
        """Fetch the repository head and apply it: GitRepository, then Kustomization, each
        asked with ``reconcile()`` and waited for; return the applied Kustomization."""
        token = self.reconcile("GitRepository")
        revision = self.repo.flux_revision()
        eventually(
            lambda: _artifact_revision(self.source(), token) == revision,
            timeout=timeout,
            what=f"GitRepository {self.namespace}/{self.name} at {revision}",
        )
        return self.wait_applied(eventually, revision, token=self.reconcile(), timeout=timeout)

    def _status_summary(self) -> str:
        ready = condition(self.kustomization(), "Ready")
        return f"Ready={ready.get('status')} {ready.get('reason')}: {ready.get('message')}"


_RESOURCES = {
    "GitRepository": (SOURCE_API, "gitrepositories"),
    "Kustomization": (KUSTOMIZE_API, "kustomizations"),
}


def _artifact_revision(source: dict[str, Any], token: str) -> str | None:
    status = source.get("status") or {}
    if status.get("lastHandledReconcileAt") != token:
        return None
    return (status.get("artifact") or {}).get("revision")


MakeSync = Callable[..., FluxSync]


@pytest.fixture
def flux_sync(flux: FluxEnv, api: pykube.HTTPClient, namespace: str) -> Iterator[MakeSync]:
    """A factory for ``FluxSync`` pairs in the test's namespace; all deleted after the test.

    ``flux_sync(files, *, interval="10m", prune=True, spec=None)`` commits ``files`` (path
    -> text) as the first commit, creates the GitRepository and the Kustomization (path
    ``./``, applied to the test's namespace; ``spec`` is merged into the Kustomization's
    spec) and returns at once; call ``wait_applied`` for the first sync.
    """
    created: list[FluxSync] = []

    def make(
        files: dict[str, str],
        *,
        interval: str = "10m",
        prune: bool = True,
        spec: dict[str, Any] | None = None,
    ) -> FluxSync:
        name = f"sync-{next(_SEQUENCE)}"
        repo = flux.git.create_repository(f"{namespace}-{name}")
        repo.commit(dict(files), "initial")
        source = {
            "apiVersion": SOURCE_API,
            "kind": "GitRepository",
            "metadata": {"name": name, "namespace": namespace},
            "spec": {
                "url": repo.url,
                "interval": interval,
                "timeout": "20s",
                "ref": {"branch": repo.branch},
            },
        }
        kustomization = {
            "apiVersion": KUSTOMIZE_API,
            "kind": "Kustomization",
            "metadata": {"name": name, "namespace": namespace},
            "spec": {
                "interval": interval,
                "path": "./",
                "prune": prune,
                "timeout": "30s",
                "targetNamespace": namespace,
                "sourceRef": {"kind": "GitRepository", "name": name},
                **(spec or {}),
            },
        }
        for body, (version, plural) in (
            (source, _RESOURCES["GitRepository"]),
            (kustomization, _RESOURCES["Kustomization"]),
        ):
            response = api.post(
                version=version, namespace=namespace, url=plural, data=json.dumps(body)
            )
            api.raise_for_status(response)
        pair = FluxSync(api=api, namespace=namespace, name=name, repo=repo)
        created.append(pair)
        return pair

    yield make
    for pair in created:
        for version, plural in (_RESOURCES["Kustomization"], _RESOURCES["GitRepository"]):
            with contextlib.suppress(Exception):
                api.delete(version=version, namespace=namespace, url=f"{plural}/{pair.name}")
