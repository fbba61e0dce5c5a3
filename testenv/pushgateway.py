"""A real Prometheus Pushgateway on 127.0.0.1, for the metrics tests.

The upstream binary (built from the Go module proxy by ``testenv.binaries.ensure_pushgateway``)
runs as a process with a free loopback port, no persistence, and the admin API on (so a test
can wipe what earlier tests pushed). ``metrics()`` reads what was pushed through the gateway's
own HTTP API (``GET /api/v1/metrics``), the way a user would check a push.

Usage::

    with Pushgateway() as gateway:
        ...  # push to gateway.url
        groups = gateway.metrics()
"""

from __future__ import annotations

import shutil
import subprocess
import tempfile
import time
from pathlib import Path
from types import TracebackType
from typing import Any, Self

import requests

from testenv.binaries import ensure_pushgateway
from testenv.controlplane import _die_with_parent_prefix, _free_ports, _terminate

_START_TIMEOUT = 30.0
_STOP_TIMEOUT = 5.0
_POLL = 0.05


class PushgatewayError(RuntimeError):
    """The Pushgateway could not start; the message carries its log tail."""


class Pushgateway:
    """One Pushgateway process; a context manager. ``url`` while it runs."""

    def __init__(self, binary: Path | None = None, *, log: Any = print) -> None:
        self._binary = binary
        self._log = log
        self._proc: subprocess.Popen[bytes] | None = None
        self.workdir: Path | None = None
        self.url = ""

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

    def start(self) -> None:
        if self._proc is not None:
            raise PushgatewayError("already started")
        binary = self._binary or ensure_pushgateway(log=self._log)
        (port,) = _free_ports(1)
        self.url = f"http://127.0.0.1:{port}"
        self.workdir = Path(tempfile.mkdtemp(prefix="pushgateway-"))
        with (self.workdir / "pushgateway.log").open("wb") as log_file:
            self._proc = subprocess.Popen(
                [
                    *_die_with_parent_prefix(),
                    str(binary),
                    f"--web.listen-address=127.0.0.1:{port}",
                    "--web.enable-admin-api",
                    "--log.level=warn",
                ],
                cwd=self.workdir,
                stdin=subprocess.DEVNULL,
                stdout=log_file,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        deadline = time.monotonic() + _START_TIMEOUT
        while not self._ready():
            if self._proc.poll() is not None or time.monotonic() > deadline:
                tail = self.log_tail()
                self.stop()
                raise PushgatewayError(f"the Pushgateway did not start:\n{tail}")
            time.sleep(_POLL)

    def _ready(self) -> bool:
        try:
            return requests.get(f"{self.url}/-/ready", timeout=1).status_code == 200
        except requests.RequestException:
            return False

    def stop(self) -> None:
        if self._proc is not None:
            _terminate(self._proc, _STOP_TIMEOUT)
            self._proc = None
        if self.workdir is not None:
            shutil.rmtree(self.workdir, ignore_errors=True)
            self.workdir = None

    def log_tail(self, lines: int = 30) -> str:
        if self.workdir is None:
            return ""
        try:
            text = (self.workdir / "pushgateway.log").read_text(errors="replace")
        except FileNotFoundError:
            return ""
        return "\n".join(text.splitlines()[-lines:])

    def wipe(self) -> None:
        """Delete every pushed group (admin API)."""
        requests.put(f"{self.url}/api/v1/admin/wipe", timeout=5).raise_for_status()

    def metrics(self) -> list[dict[str, Any]]:
        """The pushed groups as the gateway's API lists them (``data`` of
        ``GET /api/v1/metrics``): each with ``labels`` (the grouping key) and one entry per
        metric family name."""
        response = requests.get(f"{self.url}/api/v1/metrics", timeout=5)
        response.raise_for_status()
        data = response.json().get("data") or []
        return list(data)

    def samples(self, job: str) -> dict[str, list[tuple[dict[str, str], float]]]:
        """Metric name -> [(labels, value)] of group ``job`` (empty when nothing was pushed)."""
        found: dict[str, list[tuple[dict[str, str], float]]] = {}
        for group in self.metrics():
            if (group.get("labels") or {}).get("job") != job:
                continue
            for name, family in group.items():
                if name in ("labels", "last_push_successful") or not isinstance(family, dict):
                    continue
                for metric in family.get("metrics") or ():
                    labels = {
                        k: v
                        for k, v in (metric.get("labels") or {}).items()
                        if k not in ("job", "instance")
                    }
                    found.setdefault(name, []).append((labels, float(metric["value"])))
        return found
