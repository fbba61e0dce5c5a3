"""A dedicated cluster for one test module: control plane (with an audit log), seed, simulator;
runner identities; `apply` as a subprocess; the audit log read back.

The session's control plane (tests/conftest.py) has no audit log and its simulator copies
instantly. The split-brain and kill-storm tests need both: an audit log that attributes every
request to a runner (each runner has a ServiceAccount of its own, and the reconciler names its
process in the User-Agent), and copies that take seconds, so a runner can be frozen or cut off
mid-copy and kills land mid-step. A second control plane costs ~5 s to start (the binaries are
built once per machine) and a few hundred MB while the module runs; it is stopped, with its
simulator, at the end of the module.

``Lab(workdir, sim_config, audit=True)``: ``start()``/``stop()`` (or ``with``), then ``api``
(admin), ``sim``, ``kubeconfig(identity)`` (a cluster-admin ServiceAccount per name, created on
first use), ``audit()`` (the events so far). ``Runner``: one ``python -m reconciler ...``
process with its output in files (a frozen or chatty process can never block on a full pipe).
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from types import TracebackType
from typing import Any, Self

import pykube

from testenv import seed
from testenv.controlplane import ControlPlane
from testenv.node.runtime import SimConfig, Simulator
from testenv.simulator import start as start_simulator

ROOT = Path(__file__).resolve().parents[2]
RUNNERS_NS = "vmsr-runners"  # where the runners' ServiceAccounts live
MUTATING = frozenset({"create", "update", "patch", "delete", "deletecollection"})

AUDIT_POLICY = textwrap.dedent(
    """\
    apiVersion: audit.k8s.io/v1
    kind: Policy
    # one event per request, once it is answered (a WATCH logs when it ends)
    omitStages: [RequestReceived, ResponseStarted]
    rules:
      # the runners' writes keep their body: a failure can show what a fenced-off runner wrote
      - level: Request
        userGroups: ["system:serviceaccounts:vmsr-runners"]
        verbs: [create, update, patch, delete, deletecollection]
      - level: Metadata
    """
)


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
    """A control plane of its own (optionally audited), seeded, with a simulator."""

    def __init__(self, workdir: Path, sim_config: SimConfig, *, audit: bool = True) -> None:
        self.workdir = workdir
        self.sim_config = sim_config
        self.audit_log: Path | None = workdir / "audit.log" if audit else None
        args: list[str] = []
        if self.audit_log is not None:
            policy = workdir / "audit-policy.yaml"
            workdir.mkdir(parents=True, exist_ok=True)
            policy.write_text(AUDIT_POLICY)
            args = [
                f"--audit-policy-file={policy}",
                f"--audit-log-path={self.audit_log}",
                "--audit-log-format=json",
                # each event is written before its answer is sent: read after a request, the
                # log has it
                "--audit-log-mode=blocking",
            ]
        self.cp = ControlPlane(log=lambda _: None, apiserver_args=args)
        self._sim: Simulator | None = None
        self._api: pykube.HTTPClient | None = None
        self._kubeconfigs: dict[str, Path] = {}

    def start(self) -> Self:
        self.cp.start()
        try:
            self._api = self.cp.api()
            seed.seed_cluster(self._api)
            seed.create(self._api, seed.namespace(RUNNERS_NS))
            self._sim = start_simulator(self.cp.api(), self.sim_config)
        except BaseException:
            self.stop()
            raise
        return self

    def stop(self) -> None:
        if self._sim is not None:
            self._sim.stop()
            self._sim = None
        self.cp.stop()

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    @property
    def api(self) -> pykube.HTTPClient:
        assert self._api is not None, "the lab is not started"
        return self._api

    @property
    def sim(self) -> Simulator:
        assert self._sim is not None, "the lab is not started"
        return self._sim

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
        assert self.audit_log is not None, "this lab has no audit log"
        return read_audit(self.audit_log, since)

    def audit_mark(self) -> int:
        """Where the audit log ends now: ``audit(since=mark)`` reads what came after."""
        assert self.audit_log is not None, "this lab has no audit log"
        try:
            return self.audit_log.stat().st_size
        except FileNotFoundError:
            return 0

    def take_crashes(self) -> list[Any]:
        """What the simulator's controllers raised since the last call (a simulator bug must
        fail the test, not show up as a timeout)."""
        return list(self.sim.take_crashes())


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
