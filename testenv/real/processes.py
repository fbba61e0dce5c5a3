"""The processes of the real engine: started with their log in the environment's directory,
waited for with a health probe, stopped by process group, and named when they fail."""

from __future__ import annotations

import contextlib
import re
import ssl
import subprocess
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO

from testenv.controlplane import _die_with_parent_prefix, _terminate, process_env

STOP_TIMEOUT = 10.0

LEADERSHIP_LOST = re.compile(rb"leader ?election lost", re.IGNORECASE)
"""What a leader-elected controller logs as it exits for a Lease it could not renew in time:
virt-controller ``golog.Fatal("leaderelection lost")`` (pkg/virt-controller/watch/
application.go), cdi-controller controller-runtime's ``leader election lost``."""


class ProcessError(RuntimeError):
    """A process of the real engine did not start; ``component`` names it and the message
    carries the tail of its log."""

    def __init__(self, message: str, *, component: str) -> None:
        super().__init__(message)
        self.component = component


@dataclass
class Process:
    """One running component: its name, command, log file and ``Popen``."""

    name: str
    args: list[str]
    log: Path
    popen: subprocess.Popen[bytes]
    started: float = field(default_factory=time.monotonic)
    env: Mapping[str, str] | None = None
    cwd: Path | None = None
    log_offset: int = 0
    """Where this run's output starts in ``log`` (a restarted process appends to it)."""
    restarts: int = 0

    def tail(self, lines: int = 30) -> str:
        """The last ``lines`` lines of the log, with a header naming the file."""
        try:
            text = self.log.read_text(errors="replace").splitlines()[-lines:]
        except FileNotFoundError:
            return f"(no {self.log})"
        return f"--- last {len(text)} lines of {self.log} ---\n" + "\n".join(text)

    def alive(self) -> bool:
        """Whether the process still runs."""
        return self.popen.poll() is None

    def stop(self, timeout: float = STOP_TIMEOUT) -> None:
        """SIGTERM its process group, SIGKILL after ``timeout``."""
        _terminate(self.popen, timeout)

    def lost_leadership(self) -> bool:
        """Whether it exited because it lost its leader election (its current run's log says
        so): the one exit the kubelet's restart is for here; any other exit is a death."""
        if self.alive():
            return False
        try:
            with self.log.open("rb") as handle:
                handle.seek(self.log_offset)
                return LEADERSHIP_LOST.search(handle.read()) is not None
        except FileNotFoundError:
            return False

    def restart(self) -> None:
        """Start the same command again (same environment and directory), appending to the
        same log: what the kubelet does for a container of a pod with ``restartPolicy:
        Always``."""
        self.log_offset = self.log.stat().st_size if self.log.exists() else 0
        with self.log.open("ab") as handle:
            self.popen = _popen(self.args, handle, self.env, self.cwd)
        self.started = time.monotonic()
        self.restarts += 1


def spawn(name: str, args: Sequence[str], log_dir: Path, *, env: Mapping[str, str] | None = None,
          cwd: Path | None = None) -> Process:
    """Start ``args`` in its own session (so its whole group can be signalled), killed if
    this process dies (``setpriv --pdeathsig``), stdout and stderr in ``<log_dir>/<name>.log``."""
    log = log_dir / f"{name}.log"
    command = [*_die_with_parent_prefix(), *args]
    cwd = cwd or log_dir
    with log.open("ab") as handle:
        popen = _popen(command, handle, env, cwd)
    return Process(name, command, log, popen, env=env, cwd=cwd)


def _popen(command: list[str], log: IO[bytes], env: Mapping[str, str] | None,
           cwd: Path | None) -> subprocess.Popen[bytes]:
    return subprocess.Popen(command, cwd=cwd, env=process_env(env),
                            stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
                            start_new_session=True)


def wait_ready(process: Process, ready: Callable[[], bool], *, timeout: float = 90.0,
               what: str = "ready") -> float:
    """Poll ``ready`` until it holds; return the seconds it took. ``ProcessError`` naming the
    process (with its log tail) when it exits first or ``timeout`` passes."""
    deadline = time.monotonic() + timeout
    while True:
        with contextlib.suppress(Exception):
            if ready():
                return time.monotonic() - process.started
        if not process.alive():
            raise ProcessError(
                f"{process.name} exited with code {process.popen.returncode} before it was "
                f"{what}\n{process.tail()}", component=process.name)
        if time.monotonic() > deadline:
            raise ProcessError(f"{process.name} not {what} after {timeout:.0f}s\n"
                               f"{process.tail()}", component=process.name)
        time.sleep(0.1)


_INSECURE = ssl.create_default_context()
_INSECURE.check_hostname = False
_INSECURE.verify_mode = ssl.CERT_NONE


def http_ok(url: str, *, ca: Path | None = None) -> bool:
    """Whether GET ``url`` answers 200 (TLS verified against ``ca`` when given)."""
    context = ssl.create_default_context(cafile=str(ca)) if ca else _INSECURE
    try:
        with urllib.request.urlopen(url, timeout=2, context=context) as response:
            return bool(response.status == 200)
    except (urllib.error.URLError, OSError, ValueError):
        return False
