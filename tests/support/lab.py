"""A test module's lab on the real engine: runner identities, the API server's audit log read
back, the node side's copy rate; `apply` as a subprocess (``Runner``).

The split-brain and kill-storm tests need copies that take seconds (so a runner can be frozen
or cut off mid-copy, and kills land mid-step), and the split-brain tests an audit log that
attributes every request to a runner: each runner talks as a ServiceAccount of its own in
``RUNNERS_NS`` (the namespace the engine's API server audits, ``testenv.real.engine``), and
the reconciler names its process in the User-Agent.

``Lab(engine, workdir, copy_seconds_per_gib=x)``: ``start()``/``stop()`` (or ``with``) set the
node side's copy rate to ``x`` seconds per GiB and put back the rate the node side started
with; between them ``api`` (admin), ``cp`` (the engine's control plane), ``node`` (the node
side's fault knobs), ``kubeconfig(identity)`` (a cluster-admin ServiceAccount per name, created
on first use), ``audit()``/``audit_mark()`` (the events so far, or since a mark). ``Runner``:
one ``python -m reconciler ...`` process with its output in files (a frozen or chatty process
can never block on a full pipe).
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from types import TracebackType
from typing import Any, Self

import pykube

from testenv import seed
from testenv.controlplane import ControlPlane
from testenv.real.engine import AUDITED_NAMESPACE, RealEngine
from tests.support.node_faults import NodeSide

ROOT = Path(__file__).resolve().parents[2]
RUNNERS_NS = AUDITED_NAMESPACE  # where the runners' ServiceAccounts live
MUTATING = frozenset({"create", "update", "patch", "delete", "deletecollection"})


@dataclass(frozen=True)
class AuditEvent:
    """One answered request, as the API server's audit log has it."""

    audit_id: str
    user: str  # the ServiceAccount's name for a runner ("runner-a"), else the full username
    user_agent: str
    verb: str
    resource: str
    subresource: str
    namespace: str
    name: str
    code: int  # the HTTP status of the answer (0 when the log has none)
    received: datetime
    request: Any = None  # the request body (writes of runners only)

    @property
    def mutating(self) -> bool:
        return self.verb in MUTATING

    def __str__(self) -> str:
        where = "/".join(
            p for p in (self.namespace, self.resource, self.name, self.subresource) if p
        )
        body = ""
        if self.request is not None:
            body = " " + json.dumps(self.request, separators=(",", ":"))[:400]
        return (
            f"{self.received.isoformat(timespec='microseconds')} {self.user} {self.verb} "
            f"{where} -> {self.code} [{self.user_agent}]{body}"
        )


def _stamp(text: str) -> datetime:
    return datetime.fromisoformat(text.replace("Z", "+00:00"))


def read_audit(path: Path, since: int = 0) -> list[AuditEvent]:
    """The events of the JSON audit log at ``path`` from byte offset ``since`` on (an offset
    ``audit_mark`` returned), in the order they were logged."""
    events = []
    prefix = f"system:serviceaccount:{RUNNERS_NS}:"
    with contextlib.suppress(FileNotFoundError), path.open("rb") as log:
        log.seek(since)
        for raw in log.read().decode(errors="replace").splitlines():
            line = raw.strip()
            if not line:
                continue
            try:
                doc = json.loads(line)
            except json.JSONDecodeError:
                continue  # the line being written as we read

            ref = doc.get("objectRef") or {}
            user = str((doc.get("user") or {}).get("username") or "")
            events.append(
                AuditEvent(
                    audit_id=str(doc.get("auditID")),
                    user=user.removeprefix(prefix),
                    user_agent=str(doc.get("userAgent") or ""),
                    verb=str(doc.get("verb")),
                    resource=str(ref.get("resource") or ""),
                    subresource=str(ref.get("subresource") or ""),
                    namespace=str(ref.get("namespace") or ""),
                    name=str(ref.get("name") or ""),
                    code=int((doc.get("responseStatus") or {}).get("code") or 0),
                    received=_stamp(str(doc["requestReceivedTimestamp"])),
                    request=doc.get("requestObject"),
                )
            )
    return events


class Lab:
    """The real engine as a test module's lab (see the module docstring)."""

    def __init__(self, engine: RealEngine, workdir: Path, *, copy_seconds_per_gib: float) -> None:
        assert engine.audit_log is not None, "the real engine is not running"
        self.workdir = workdir
        self.copy_seconds_per_gib = copy_seconds_per_gib
        self.audit_log: Path = engine.audit_log
        self.cp: ControlPlane = engine.control_plane
        self.api: pykube.HTTPClient = engine.api()
        self.node = NodeSide(self.api, engine.nodes)
        self._kubeconfigs: dict[str, Path] = {}

    def start(self) -> Self:
        """Seed what the tests expect of any cluster (an existing object is kept), the runners'
        namespace, and the copy rate (once the node side has armed it)."""
        self.workdir.mkdir(parents=True, exist_ok=True)
        seed.seed_cluster(self.api)
        seed.create(self.api, seed.namespace(RUNNERS_NS))
        self.node.faults.copy_seconds_per_gib(self.copy_seconds_per_gib)
        return self

    def stop(self) -> None:
        """The node side's copy rate back to the one it started with."""
        self.node.faults.copy_seconds_per_gib(None)

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    def kubeconfig(self, identity: str) -> Path:
        """A kubeconfig for ServiceAccount ``vmsr-runners/<identity>`` bound to cluster-admin
        (what the audit log calls ``identity``), created on first use."""
        if identity in self._kubeconfigs:
            return self._kubeconfigs[identity]
        token = self.cp.service_account_token(RUNNERS_NS, identity)
        binding = {
            "apiVersion": "rbac.authorization.k8s.io/v1",
            "kind": "ClusterRoleBinding",
            "metadata": {"name": f"vmsr-runner-{identity}"},
            "roleRef": {
                "apiGroup": "rbac.authorization.k8s.io",
                "kind": "ClusterRole",
                "name": "cluster-admin",
            },
            "subjects": [{"kind": "ServiceAccount", "name": identity, "namespace": RUNNERS_NS}],
        }
        response = self.api.post(
            version="rbac.authorization.k8s.io/v1",
            url="clusterrolebindings",
            data=json.dumps(binding),
        )
        if response.status_code != 409:
            self.api.raise_for_status(response)
        path = self.cp.write_kubeconfig(self.workdir / f"{identity}.kubeconfig", token)
        self._kubeconfigs[identity] = path
        return path

    def audit(self, since: int = 0) -> list[AuditEvent]:
        """The audit events logged since the offset ``since`` (``audit_mark``)."""
        return read_audit(self.audit_log, since)

    def audit_mark(self) -> int:
        """Where the audit log ends now: ``audit(since=mark)`` reads what came after."""
        try:
            return self.audit_log.stat().st_size
        except FileNotFoundError:
            return 0


@dataclass
class Runner:
    """One ``python -m reconciler <argv>`` process; stdout and stderr go to files."""

    name: str
    argv: list[str]
    out_dir: Path
    env: dict[str, str] = field(default_factory=dict)
    proc: subprocess.Popen[bytes] | None = None
    began: float = 0.0
    ended: float | None = None

    def start(self) -> Self:
        self.out_dir.mkdir(parents=True, exist_ok=True)
        env = {k: v for k, v in os.environ.items() if not k.startswith("VMSR_FAILPOINT")}
        env.update(self.env)
        with self.stdout_path.open("wb") as out, self.stderr_path.open("wb") as err:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "reconciler", *self.argv],
                cwd=ROOT,
                env=env,
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=err,
            )
        self.began = time.monotonic()
        return self

    @property
    def stdout_path(self) -> Path:
        return self.out_dir / f"{self.name}.stdout"

    @property
    def stderr_path(self) -> Path:
        return self.out_dir / f"{self.name}.stderr"

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def poll(self) -> int | None:
        assert self.proc is not None
        code = self.proc.poll()
        if code is not None and self.ended is None:
            self.ended = time.monotonic()
        return code

    def wait(self, timeout: float) -> int | None:
        """The exit code, or None if it still runs after ``timeout`` seconds."""
        assert self.proc is not None
        try:
            code = self.proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            return None
        if self.ended is None:
            self.ended = time.monotonic()
        return code

    def signal(self, sig: signal.Signals) -> None:
        assert self.proc is not None
        if self.proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                self.proc.send_signal(sig)

    def kill(self) -> None:
        """SIGKILL (a stopped process too) and reap it."""
        if self.proc is None:
            return
        if self.proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                self.proc.kill()
                self.proc.send_signal(signal.SIGCONT)
        self.proc.wait(timeout=10)
        if self.ended is None:
            self.ended = time.monotonic()

    @property
    def returncode(self) -> int | None:
        return None if self.proc is None else self.proc.returncode

    @property
    def stdout(self) -> str:
        return self.stdout_path.read_text(errors="replace") if self.stdout_path.exists() else ""

    @property
    def stderr(self) -> str:
        return self.stderr_path.read_text(errors="replace") if self.stderr_path.exists() else ""

    @property
    def report(self) -> dict[str, Any]:
        text = self.stdout.strip()
        if not text.startswith("{"):
            return {}
        try:
            return dict(json.loads(text))
        except json.JSONDecodeError:
            return {}

    @property
    def seconds(self) -> float:
        return (self.ended or time.monotonic()) - self.began

    def __str__(self) -> str:
        return (
            f"{self.name} (pid {self.proc.pid if self.proc else '-'}): exit {self.returncode} "
            f"after {self.seconds:.1f}s\n--- stderr (tail) ---\n{self.stderr[-3000:]}"
        )
