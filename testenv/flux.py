"""A real Flux against the local control plane: source-controller + kustomize-controller.

Both controllers are the upstream binaries (built from the Go module proxy by
``testenv.binaries.ensure_flux``), run as processes against a ``ControlPlane`` with an
admin kubeconfig, like a cluster-admin Flux install. Everything listens on 127.0.0.1 only:
metrics, health probes, and source-controller's artifact server, which kustomize-controller
downloads from (``--storage-addr`` and ``--storage-adv-addr`` are the same loopback
address). Leader election is off (one replica each) and no notification-controller runs
(``--events-addr`` empty: events go to the API only).

Files (kubeconfig, artifact storage, logs, temp files) live in ``<control plane
workdir>/flux-<random>``, so a control plane that is stopped, or swept after a crash, takes them
along. Stop Flux before its control plane.

Usage::

    with ControlPlane() as cp, Flux(cp) as flux:
        ...  # create GitRepository / Kustomization objects; see tests/support/flux.py
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import tempfile
import time
from collections.abc import Callable, Sequence
from functools import partial
from pathlib import Path
from types import TracebackType
from typing import Self

import requests

from testenv import fastyaml
from testenv.binaries import FluxBinaries, ensure_flux
from testenv.controlplane import (
    ControlPlane,
    _crd_served,
    _die_with_parent_prefix,
    _free_ports,
    _terminate,
)

Log = Callable[[str], None]

SOURCE_API = "source.toolkit.fluxcd.io/v1"
KUSTOMIZE_API = "kustomize.toolkit.fluxcd.io/v1"
REQUESTED_AT = "reconcile.fluxcd.io/requestedAt"
"""Annotation that makes a Flux controller reconcile the object now (``flux reconcile``)."""

_START_TIMEOUT = 60.0
_STOP_TIMEOUT = 10.0
_POLL = 0.1
# kustomize-controller last: it stops first, so no apply is cut off by a vanished source.
_COMPONENTS = ("source-controller", "kustomize-controller")


class FluxError(RuntimeError):
    """Flux could not start; the message carries the failing controller's log tail."""


class Flux:
    """source-controller and kustomize-controller for one ``ControlPlane``; a context manager.

    ``start()`` installs the Flux CRDs, starts both controllers and returns once their
    health endpoints and the artifact server answer. ``stop()`` is idempotent: SIGTERM to
    each process group (SIGKILL after 10 s) and the files removed.
    Attributes (valid between start and stop): ``workdir``, ``storage_url``.
    """

    def __init__(
        self,
        control_plane: ControlPlane,
        binaries: FluxBinaries | None = None,
        *,
        log: Log = print,
    ) -> None:
        self._control_plane = control_plane
        self._binaries = binaries
        self._log = log
        self._procs: dict[str, subprocess.Popen[bytes]] = {}
        self._health: dict[str, str] = {}
        self.workdir: Path | None = None
        self.storage_url = ""
        self.started_in: float | None = None

    def __enter__(self) -> Self:
        self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    @property
    def pids(self) -> dict[str, int]:
        """Process ids of the running controllers, by name."""
        return {name: proc.pid for name, proc in self._procs.items()}

    def start(self) -> None:
        """Install the CRDs, start both controllers, wait until they serve.

        On failure everything started is stopped and ``FluxError`` is raised with the
        tail of the failing controller's log.
        """
        if self.workdir is not None:
            raise FluxError("Flux already started")
        if self._control_plane.workdir is None:
            raise FluxError("the control plane is not running; start it before Flux")
        binaries = self._binaries or ensure_flux(log=self._log)
        begun = time.monotonic()
        self.workdir = Path(tempfile.mkdtemp(prefix="flux-", dir=self._control_plane.workdir))
        try:
            self._start(binaries)
        except Exception as error:
            tails = "\n".join(self.log_tail(name) for name in self._procs)
            self.stop()
            raise FluxError(f"Flux failed to start: {error}\n{tails}") from error
        except BaseException:
            self.stop()
            raise
        self.started_in = time.monotonic() - begun
        self._log(f"Flux ready (artifacts at {self.storage_url}) in {self.started_in:.1f}s")

    def stop(self) -> None:
        """Terminate both controllers and remove Flux's files (idempotent)."""
        for name in reversed(_COMPONENTS):
            proc = self._procs.pop(name, None)
            if proc is not None:
                _terminate(proc, _STOP_TIMEOUT)
        if self.workdir is not None:
            shutil.rmtree(self.workdir, ignore_errors=True)
            self.workdir = None
        self._health.clear()

    def log_tail(self, name: str, lines: int = 40) -> str:
        """The last ``lines`` lines of a controller's log (``source-controller`` etc.)."""
        if self.workdir is None:
            return ""
        path = self.workdir / f"{name}.log"
        try:
            tail = path.read_text(errors="replace").splitlines()[-lines:]
        except FileNotFoundError:
            return f"(no {path})"
        return f"--- last {len(tail)} lines of {path} ---\n" + "\n".join(tail)

    def _start(self, binaries: FluxBinaries) -> None:
        assert self.workdir is not None
        plane = self._control_plane
        kubeconfig = plane.write_kubeconfig(self.workdir / "kubeconfig", plane.admin_token)
        (self.workdir / "tmp").mkdir()
        (self.workdir / "storage").mkdir()  # source-controller requires it to exist
        _install_crds(plane, binaries.crd_dirs)

        src_metrics, src_health, storage, ks_metrics, ks_health = _free_ports(5)
        self.storage_url = f"http://127.0.0.1:{storage}"
        common = ["--enable-leader-election=false", "--log-encoding=console"]
        self._spawn(
            "source-controller",
            [
                str(binaries.source_controller),
                f"--metrics-addr=127.0.0.1:{src_metrics}",
                f"--health-addr=127.0.0.1:{src_health}",
                f"--storage-addr=127.0.0.1:{storage}",
                f"--storage-adv-addr=127.0.0.1:{storage}",
                f"--storage-path={self.workdir / 'storage'}",
                *common,
            ],
            kubeconfig,
            health=f"http://127.0.0.1:{src_health}/readyz",
        )
        self._spawn(
            "kustomize-controller",
            [
                str(binaries.kustomize_controller),
                f"--metrics-addr=127.0.0.1:{ks_metrics}",
                f"--health-addr=127.0.0.1:{ks_health}",
                *common,
            ],
            kubeconfig,
            health=f"http://127.0.0.1:{ks_health}/readyz",
        )
        self._wait("source-controller", partial(_answers, self.storage_url + "/"))
        for name, url in self._health.items():
            self._wait(name, partial(_answers, url, ok_only=True))

    def _spawn(self, name: str, args: Sequence[str], kubeconfig: Path, *, health: str) -> None:
        assert self.workdir is not None
        env = {
            "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
            "HOME": str(self.workdir),
            "TMPDIR": str(self.workdir / "tmp"),
            "KUBECONFIG": str(kubeconfig),
            # Loopback only; a proxy from the environment must not see these requests.
            "NO_PROXY": "127.0.0.1,localhost",
        }
        with (self.workdir / f"{name}.log").open("wb") as log_file:
            self._procs[name] = subprocess.Popen(
                [*_die_with_parent_prefix(), *args],
                cwd=self.workdir,
                env=env,
                stdin=subprocess.DEVNULL,
                stdout=log_file,
                stderr=subprocess.STDOUT,
                start_new_session=True,  # own process group: stop() signals the group
            )
        self._health[name] = health

    def _wait(self, name: str, ready: Callable[[], bool]) -> None:
        deadline = time.monotonic() + _START_TIMEOUT
        proc = self._procs[name]
        while not ready():
            if proc.poll() is not None:
                raise FluxError(f"{name} exited with code {proc.returncode} during start-up")
            if time.monotonic() > deadline:
                raise FluxError(f"{name} not ready after {_START_TIMEOUT:.0f}s")
            time.sleep(_POLL)


def _install_crds(plane: ControlPlane, crd_dirs: Sequence[Path]) -> None:
    """Create every CRD in ``crd_dirs`` (one already there is left as is) and wait until
    all are Established and served."""
    api = plane.api()
    documents = [
        doc
        for crd_dir in crd_dirs
        for path in sorted(crd_dir.glob("*.yaml"))
        for doc in fastyaml.load_all(path.read_text())
    ]
    if not documents:
        raise FluxError(f"no CRDs found in {', '.join(map(str, crd_dirs))}")
    for crd in documents:
        response = api.post(
            url="customresourcedefinitions",
            version="apiextensions.k8s.io/v1",
            data=json.dumps(crd),
        )
        if not response.ok and response.status_code != 409:
            raise FluxError(
                f"CRD {crd['metadata']['name']} rejected ({response.status_code}): "
                f"{response.text[:2000]}"
            )
    deadline = time.monotonic() + _START_TIMEOUT
    pending = documents
    while pending:
        pending = [crd for crd in pending if not _crd_served(api, crd)]
        if pending and time.monotonic() > deadline:
            names = ", ".join(crd["metadata"]["name"] for crd in pending)
            raise FluxError(f"Flux CRDs not established/served: {names}")
        if pending:
            time.sleep(_POLL)


def _answers(url: str, *, ok_only: bool = False) -> bool:
    try:
        response = requests.get(url, timeout=2, proxies={"http": "", "https": ""})
    except requests.RequestException:
        return False
    return response.ok if ok_only else True
