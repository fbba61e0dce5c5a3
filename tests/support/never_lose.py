"""Helpers for tests/cluster/test_never_lose.py (issue 14): `apply` as a subprocess killed at a
step boundary, the Lease a killed run leaves behind expired, a guest "writing" to its disk, a
journal read and forged, and a busy writer patching a VM from another process.

A guest's writes, on the node side: a disk's content is the content-hash annotation of its PV
and PVC (``testenv.node.runtime.CONTENT_HASH_ANNOTATION``); imports, clones and migrations
copy it. Nothing changes it while a VM runs, so a test "writes" by setting a new value on both
while the VMI runs: a copy taken before the write then holds the old value (it is stale), and
a copy taken after it the new one.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
import uuid
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pykube

from testenv.node.runtime import CONTENT_HASH_ANNOTATION
from tests.cluster.test_plan import _merge, plan_file
from tests.support.kube import get_json
from tests.support.moves import Moves

ROOT = Path(__file__).resolve().parents[2]
KV = "kubevirt.io/v1"
COORDINATION = "coordination.k8s.io/v1"
LEASE = "vm-storage-reconciler"
JOURNAL = "vmstorage.dev/journal"
FAILPOINT = "VMSR_FAILPOINT"
RUN_TIMEOUT = 180.0


@dataclass
class Killed:
    """One `apply` subprocess that was meant to die at a failpoint."""

    returncode: int
    stdout: str
    stderr: str

    def __str__(self) -> str:
        return f"exit {self.returncode}\n{self.stderr[-3000:]}"


def killed_apply(ctx: Moves, body: str, fail_at: str, *extra: str) -> Killed:
    """`python -m reconciler apply` on ``body`` (plan ``move`` of the test's namespace, the
    name ``ctx.apply`` uses too) with ``VMSR_FAILPOINT=fail_at``; asserts it was SIGKILLed
    there. Its Lease stays held (``expire_lease``)."""
    path = plan_file(ctx.tmp_path, ctx.ns, body)
    argv = [
        sys.executable,
        "-m",
        "reconciler",
        "apply",
        str(path),
        "-o",
        "json",
        "--kubeconfig",
        str(ctx.control_plane.kubeconfig),
        "--lease-namespace",
        ctx.lease_ns,
        *extra,
    ]
    env = {k: v for k, v in os.environ.items() if k != FAILPOINT}
    env[FAILPOINT] = fail_at
    done = subprocess.run(
        argv,
        env=env,
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=RUN_TIMEOUT,
        check=False,
    )
    killed = Killed(done.returncode, done.stdout, done.stderr)
    assert killed.returncode == -signal.SIGKILL, f"the failpoint {fail_at} was never hit: {killed}"
    return killed


def expire_lease(ctx: Moves) -> None:
    """What waiting out a killed run's Lease does: its renewTime an hour ago."""
    if not get_json(ctx.api, COORDINATION, ctx.lease_ns, f"leases/{LEASE}"):
        return
    stamp = (datetime.now(UTC) - timedelta(hours=1)).strftime("%Y-%m-%dT%H:%M:%S.%fZ")
    _merge(ctx.api, COORDINATION, ctx.lease_ns, f"leases/{LEASE}", {"spec": {"renewTime": stamp}})


def write_disk(ctx: Moves, claim: str, namespace: str | None = None) -> str:
    """The guest writes to ``claim``: its content becomes a new, unique value (returned). The
    value is set on the claim's PV too, where the disk is: the real engine's node side
    (``testenv.node.csi``) gives a bound claim its PV's content, as the volume's."""
    content = f"guest-write:{uuid.uuid4().hex}"
    annotations = {"metadata": {"annotations": {CONTENT_HASH_ANNOTATION: content}}}
    pvc = get_json(ctx.api, "v1", namespace or ctx.ns, f"persistentvolumeclaims/{claim}")
    volume = (pvc.get("spec") or {}).get("volumeName")
    if volume:
        response = ctx.api.patch(
            version="v1",
            url=f"persistentvolumes/{volume}",
            data=json.dumps(annotations),
            headers={"Content-Type": "application/merge-patch+json"},
        )
        ctx.api.raise_for_status(response)
    _merge(ctx.api, "v1", namespace or ctx.ns, f"persistentvolumeclaims/{claim}", annotations)
    return content


def use_vm(ctx: Moves, name: str, claim: str) -> str:
    """The owner starts the VM, its guest writes to ``claim``, and the owner stops it again;
    the content written."""
    ctx.set_running(name, True)
    ctx.eventually(lambda: ctx.vmi_phase(name) == "Running", timeout=30, what=f"{name} running")
    content = write_disk(ctx, claim)
    ctx.set_running(name, False)
    ctx.eventually(lambda: not ctx.vmi(name), timeout=30, what=f"{name} stopped")
    ctx.eventually(lambda: not ctx.pods(name), timeout=30, what=f"{name}'s launcher gone")
    return content


def journal_text(ctx: Moves, name: str) -> str:
    text = ((ctx.vm(name).get("metadata") or {}).get("annotations") or {}).get(JOURNAL)
    assert text, f"{name} has no journal"
    return str(text)


def put_journal(ctx: Moves, name: str, text: str | None) -> None:
    """Set (None: remove) the VM's journal annotation, as anyone who may patch it can."""
    ctx.merge(f"virtualmachines/{name}", {"metadata": {"annotations": {JOURNAL: text}}})


def replace_strings(doc: Any, old: str, new: str) -> Any:
    """``doc`` with every string value equal to ``old`` (not merely containing it) ``new``."""
    if isinstance(doc, dict):
        return {k: replace_strings(v, old, new) for k, v in doc.items()}
    if isinstance(doc, list):
        return [replace_strings(v, old, new) for v in doc]
    return new if doc == old else doc


def forged(text: str, edit: Any) -> str:
    """The journal ``text`` edited by ``edit(doc) -> doc``, encoded as the reconciler does."""
    return json.dumps(edit(json.loads(text)), sort_keys=True, separators=(",", ":"))


@dataclass
class BusyWriter:
    """Patches an unrelated label of VM ``name`` about ``rate`` times a second from
    ``release()`` until ``stop()``, from another process (``python -m
    tests.support.never_lose``: the test process, which also runs `apply`, would slow it
    down), with ``threads`` threads and a client each. Each patch bumps the VM's
    resourceVersion, never its generation."""

    kubeconfig: Path
    namespace: str
    name: str
    rate: float = 80.0
    threads: int = 3
    writes: int = 0
    errors: list[str] = field(default_factory=list)
    seconds: float = 0.0
    released: bool = False
    stopped: bool = False
    _process: subprocess.Popen[str] | None = None

    def start(self) -> BusyWriter:
        """Start the process, paused (its clients connected); returns once it is ready."""
        argv = [sys.executable, "-m", "tests.support.never_lose", str(self.kubeconfig)]
        argv += [self.namespace, self.name, str(self.rate), str(self.threads)]
        self._process = subprocess.Popen(
            argv, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
        )
        self._expect("ready")
        return self

    def release(self) -> None:
        """Start writing; returns once the first write landed."""
        assert self._process is not None
        self.released = True
        self._process.send_signal(signal.SIGUSR1)
        self._expect("writing")

    def _expect(self, line: str) -> None:
        assert self._process is not None and self._process.stdout is not None
        said = self._process.stdout.readline().strip()
        if said != line:
            self._process.kill()
            _, err = self._process.communicate()
            raise AssertionError(f"the busy writer said {said!r}, not {line!r}: {err[-2000:]}")

    def stop(self) -> float:
        """Stop (again: a no-op); the rate achieved while released (writes a second)."""
        assert self._process is not None
        self.stopped = True
        if self._process.returncode is not None:
            return self.writes / self.seconds if self.seconds else 0.0
        if self._process.poll() is None:
            self._process.send_signal(signal.SIGTERM)
        out, err = self._process.communicate(timeout=20)
        lines = out.strip().splitlines()
        assert lines, f"the busy writer said nothing: {err[-2000:]}"
        done = json.loads(lines[-1])
        self.writes, self.errors, self.seconds = done["writes"], done["errors"], done["seconds"]
        return self.writes / self.seconds if self.seconds else 0.0


def _busy_writer(kubeconfig: str, namespace: str, name: str, rate: float, threads: int) -> None:
    """The busy writer's process: connect, say "ready"; on SIGUSR1 patch (saying "writing"
    after the first write) until SIGTERM; then print what was done (JSON)."""
    go, stopping, first = threading.Event(), threading.Event(), threading.Event()
    signal.signal(signal.SIGUSR1, lambda _signum, _frame: go.set())

    def terminate(_signum: int, _frame: object) -> None:
        stopping.set()
        go.set()

    signal.signal(signal.SIGTERM, terminate)
    lock = threading.Lock()
    tally: dict[str, Any] = {"writes": 0, "errors": [], "seconds": 0.0}
    period = threads / rate
    clients = [pykube.HTTPClient(pykube.KubeConfig.from_file(kubeconfig)) for _ in range(threads)]

    def write(number: int) -> None:
        api = clients[number]
        go.wait()
        due = time.monotonic() + number * period / threads
        while not stopping.is_set():
            stopping.wait(max(0.0, due - time.monotonic()))
            label = f"{number}-{time.monotonic_ns()}"
            response = api.patch(
                version=KV,
                namespace=namespace,
                url=f"virtualmachines/{name}",
                data=json.dumps({"metadata": {"labels": {"busy-writer": label}}}),
                headers={"Content-Type": "application/merge-patch+json"},
            )
            with lock:
                if response.status_code >= 400:
                    tally["errors"].append(f"{response.status_code} {response.text[:200]}")
                else:
                    tally["writes"] += 1
                    first.set()
            due = max(due + period, time.monotonic() - period)

    workers = [threading.Thread(target=write, args=(n,), daemon=True) for n in range(threads)]
    for worker in workers:
        worker.start()
    print("ready", flush=True)
    go.wait()
    began = time.monotonic()
    if not stopping.is_set():
        first.wait(30)
        print("writing", flush=True)
    stopping.wait()
    for worker in workers:
        worker.join(timeout=10)
    tally["seconds"] = time.monotonic() - began
    print(json.dumps(tally), flush=True)


if __name__ == "__main__":
    _busy_writer(sys.argv[1], sys.argv[2], sys.argv[3], float(sys.argv[4]), int(sys.argv[5]))
