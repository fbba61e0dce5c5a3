"""Split brain (issue 14, case 1): a runner that lost its Lease makes no further write.

Runner A moves a running VM offline with retention Delete (stop, clone, swap, start, verify,
delete the source) and, while the clone copies, is taken out of the world past its Lease's
expiry: **frozen** (SIGSTOP) in one test, **cut off** from the API server (a blackholing TCP
proxy between A and the server, tests/support/tcpproxy.py) in the other. Runner B then takes the
Lease, finishes A's move (the VM on the target, the source deleted) and A comes back (SIGCONT,
or the partition heals). Before the fencing, A then acted on what it remembered: its "rollback"
pointed the VM back at the deleted source and a later run deleted the target, the only copy.

What must hold, asserted together (one failure message lists every broken promise):

- **A made no mutating request after B acquired the Lease**, by the API server's audit log:
  every runner talks as a ServiceAccount of its own, so the log attributes each request to A
  or B whatever A sends (the reconciler also names its process in its User-Agent, ``(<hostname>-
  <pid>)``, which is checked on A's requests). B's acquisition is the first successful write
  of the Lease by B; any create/update/patch/delete of A received after it, on any resource
  (the Lease, the VM, a DataVolume, an Event, the status ConfigMap), fails the test (after a
  partition TCP rode out, any the server accepted: see below).
- A stops: a non-zero exit (4) saying it lost the Lease; it does not hang.
- B finished A's move (same move id, resumed) and exited 0; the VM uses the target, which
  exists (DataVolume and Bound PVC on ceph-rbd) with the source's content hash; the source is
  deleted (retention Delete); no DataVolume of ours other than the target; no journal left;
  the VMI runs on the target.
- A further run converges at once: exit 0, the VM and the DataVolumes unchanged, and no write
  of that run but its Lease, Events and status ConfigMap.

The tests run on the session's real engine (``lab``: ``tests.support.lab.Lab``): upstream
virt-controller stops and starts the VM, cdi-controller clones its disk; the engine's API
server audits the runners' requests (``testenv.real.engine.AUDIT_POLICY``: the ServiceAccounts
of ``tests.support.lab.RUNNERS_NS``), and the node side's copies take ``COPY_SECONDS_PER_GIB``
per GiB while the module runs, so the clone of the ``DISK_SIZE`` disk takes seconds and A is
always isolated mid-copy.

The Lease lasts ``LEASE_SECONDS`` (``apply --lease-duration``), and the tests wait for it to
expire for real: a runner's own clock must run out too (it acts only until its last renewal
plus two thirds of the duration). A product without ``--lease-duration`` is run with the
default 60 s and the expiry forced by moving the Lease's renewTime back (what
test_apply_crash.py does), so these tests show the missing fence there, not only the missing
flag.

The partition test runs twice: ``reset`` (the partition outlived TCP: A's connections are
reset when it heals and what A sent during it is never delivered, so every request of A the
server sees afterwards was sent afterwards, and none may be a write) and ``deliver`` (a short
outage TCP rode out: what A sent during the cut arrives late, so a write A sent while it still
held the Lease may arrive after B took it; the server must refuse it, and no write of A may be
accepted once B holds the Lease).

**Random timings, seeded.** When A is frozen or cut after its copy started, how long past the
expiry B starts, and whether A comes back after B finished or while B is still at work.
``VMSR_SPLIT_SEED`` (default 1414) seeds them; each trial prints its timings and the failure
message names the seed and the test to replay. ``VMSR_SPLIT_RUNS=N`` runs N trials of each
test with the seeds ``SEED .. SEED+N-1`` in one session (one engine). The
100-in-a-row check of the issue (not in CI; about 21 s per trial of each of the three tests,
so ~1.75 h on 2 cores)::

    VMSR_SPLIT_RUNS=100 VMSR_SPLIT_SEED=$RANDOM .venv/bin/pytest -x -q \\
        tests/cluster/test_split_brain.py

A failing trial is replayed alone with ``VMSR_SPLIT_SEED=<seed from its message>``.
"""

from __future__ import annotations

import contextlib
import functools
import json
import os
import random
import re
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pykube
import pytest

from testenv import seed
from testenv.node.runtime import CONTENT_HASH_ANNOTATION
from testenv.real.engine import RealEngine
from tests.cluster.test_plan import _merge, plan_file
from tests.support.kube import annotation, get_json
from tests.support.lab import ROOT, AuditEvent, Lab, Runner
from tests.support.tcpproxy import TcpProxy, kubeconfig_via

SEED = int(os.environ.get("VMSR_SPLIT_SEED", "1414"))
RUNS = int(os.environ.get("VMSR_SPLIT_RUNS", "1"))
TRIALS = [SEED + i for i in range(RUNS)]

LEASE_SECONDS = 10  # apply --lease-duration (the product's minimum is 6)
COPY_SECONDS_PER_GIB = 2.0
DISK_SIZE = "4Gi"  # the clone takes 8 s: A is always frozen or cut mid-copy (0.2-3 s in)
KV = "kubevirt.io/v1"
CDI = "cdi.kubevirt.io/v1beta1"
COORDINATION = "coordination.k8s.io/v1"
LEASE = "vm-storage-reconciler"
VM = "vm-fedora"
VOLUME = "datavolumedisk1"
SOURCE = "vm-fedora-disk"
TARGET_CLASS = "ceph-rbd"
JOURNAL = "vmstorage.dev/journal"
LAST = "vmstorage.dev/last-migration"
MIGRATION_LABEL = "vmstorage.dev/migration"
COPY_SECONDS = "sim.vmstorage.dev/copy-seconds"
PLAN = (
    f"storageClass: {TARGET_CLASS}\nmode: Offline\nallowStop: true\nretention: Delete\n"
    f"virtualMachines:\n  - name: {VM}\n"
)
LOST_LEASE = re.compile(r"lost the lease", re.IGNORECASE)
# What a run that changes nothing may still write: its Lease, its Events, its status ConfigMap.
BOOKKEEPING = frozenset({"leases", "events", "configmaps"})


# --------------------------------------------------------------------------------------------
# the proxy on its own (no cluster)
# --------------------------------------------------------------------------------------------


class _Echo:
    """A TCP echo server on 127.0.0.1 (one thread per connection)."""

    def __init__(self) -> None:
        self.sock = socket.create_server(("127.0.0.1", 0))
        self.address: tuple[str, int] = self.sock.getsockname()[:2]
        threading.Thread(target=self._serve, daemon=True).start()

    def _serve(self) -> None:
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            threading.Thread(target=self._echo, args=(conn,), daemon=True).start()

    @staticmethod
    def _echo(conn: socket.socket) -> None:
        with conn, contextlib.suppress(OSError):  # a reset from the proxy ends it
            while data := conn.recv(4096):
                conn.sendall(data)

    def close(self) -> None:
        self.sock.close()


def _exchange(sock: socket.socket, data: bytes, timeout: float = 2.0) -> bytes:
    sock.settimeout(timeout)
    sock.sendall(data)
    try:
        return sock.recv(4096)
    except TimeoutError:
        return b""


def test_the_proxy_blackholes_until_healed_then_resets_what_lived_through_the_cut() -> None:
    echo = _Echo()
    try:
        with TcpProxy(echo.address) as proxy:
            before = socket.create_connection(proxy.address)
            assert _exchange(before, b"one") == b"one"

            proxy.cut()
            assert _exchange(before, b"two", timeout=0.5) == b"", "nothing crosses a cut"
            held = socket.create_connection(proxy.address, timeout=2)  # accepted, not refused
            assert _exchange(held, b"three", timeout=0.5) == b""
            assert (proxy.accepted, proxy.held) == (2, 1)

            proxy.heal()
            for sock in (before, held):  # both lived through the cut: reset, "two" never sent
                sock.settimeout(2)
                with pytest.raises((ConnectionResetError, BrokenPipeError)):
                    sock.sendall(b"x")
                    if not sock.recv(16):
                        raise ConnectionResetError("closed")
                sock.close()
            after = socket.create_connection(proxy.address)
            assert _exchange(after, b"four") == b"four"
            after.close()
            assert proxy.reset == 2
    finally:
        echo.close()


def test_the_proxy_heal_without_reset_delivers_what_was_held() -> None:
    echo = _Echo()
    try:
        with TcpProxy(echo.address) as proxy:
            before = socket.create_connection(proxy.address)
            assert _exchange(before, b"one") == b"one"
            proxy.cut()
            held = socket.create_connection(proxy.address, timeout=2)
            assert _exchange(before, b"two", timeout=0.5) == b""
            assert _exchange(held, b"three", timeout=0.5) == b""

            proxy.heal(reset=False)

            before.settimeout(2)
            held.settimeout(2)
            assert before.recv(16) == b"two", "a short outage: the bytes arrive late"
            assert held.recv(16) == b"three", "the held connection is connected on heal"
            before.close()
            held.close()
    finally:
        echo.close()


# --------------------------------------------------------------------------------------------
# the cluster, the VM and the runners
# --------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def lab(real_engine: RealEngine, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Lab]:
    """The session's real engine, its node side copying at ``COPY_SECONDS_PER_GIB`` while the
    module runs."""
    workdir = tmp_path_factory.mktemp("split-brain-lab")
    with Lab(real_engine, workdir, copy_seconds_per_gib=COPY_SECONDS_PER_GIB) as started:
        yield started


@functools.cache
def lease_flag() -> bool:
    """Whether this product has ``apply --lease-duration``."""
    done = subprocess.run(
        [sys.executable, "-m", "reconciler", "apply", "--help"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    return "--lease-duration" in done.stdout


def holder_of(runner: Runner) -> str:
    """The Lease holder identity of a runner (reconciler/cli/apply.py: hostname-pid)."""
    return f"{socket.gethostname()}-{runner.pid}"


@dataclass
class Trial:
    """One split-brain trial: its namespace, VM, runners and findings."""

    lab: Lab
    ns: str
    tmp_path: Path
    seed: int
    kind: str  # sigstop | partition-reset | partition-deliver
    nodeid: str
    rng: random.Random = field(init=False)
    runners: list[Runner] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    audit_from: int = 0
    # False when A's requests may arrive late (a partition TCP rode out): then only those the
    # server accepted count against A
    strict_audit: bool = True

    @property
    def ids(self) -> dict[str, str]:
        """The ServiceAccount of each runner (A, B, and C for the last run): the audit log's
        user, unique per trial."""
        abbreviation = "".join(word[:2] for word in self.kind.split("-"))
        return {who: f"{abbreviation}-{self.seed % 100000}-{who}" for who in "abc"}

    def __post_init__(self) -> None:
        self.rng = random.Random(f"{self.seed}:{self.kind}")
        self.plan = plan_file(self.tmp_path, self.ns, PLAN)
        self.audit_from = self.lab.audit_mark()

    @property
    def api(self) -> pykube.HTTPClient:
        return self.lab.api

    def note(self, text: str) -> None:
        self.notes.append(text)
        print(f"[{self.kind} seed {self.seed}] {text}", flush=True)

    def check(self, ok: object, problem: str) -> None:
        if not ok:
            self.problems.append(problem)

    # -- reading the cluster

    def vm(self) -> dict[str, Any]:
        return get_json(self.api, KV, self.ns, f"virtualmachines/{VM}")

    def vmi(self) -> dict[str, Any]:
        return get_json(self.api, KV, self.ns, f"virtualmachineinstances/{VM}")

    def pvc(self, name: str) -> dict[str, Any]:
        return get_json(self.api, "v1", self.ns, f"persistentvolumeclaims/{name}")

    def dv(self, name: str) -> dict[str, Any]:
        return get_json(self.api, CDI, self.ns, f"datavolumes/{name}")

    def dvs(self) -> dict[str, dict[str, Any]]:
        items = get_json(self.api, CDI, self.ns, "datavolumes")["items"]
        return {d["metadata"]["name"]: d for d in items}

    def ours(self) -> set[str]:
        """Our DataVolumes (labelled with a move id), not being deleted."""
        return {
            name
            for name, d in self.dvs().items()
            if MIGRATION_LABEL in (d["metadata"].get("labels") or {})
            and not d["metadata"].get("deletionTimestamp")
        }

    def journal(self) -> dict[str, Any] | None:
        text = annotation(self.vm(), JOURNAL)
        return None if text is None else dict(json.loads(text))

    def lease(self) -> dict[str, Any]:
        return dict(get_json(self.api, COORDINATION, self.ns, f"leases/{LEASE}").get("spec") or {})

    def content(self, claim: str) -> str | None:
        return annotation(self.pvc(claim), CONTENT_HASH_ANNOTATION)

    def wait(self, probe: Callable[[], Any], timeout: float, what: str) -> Any:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            seen = probe()
            if seen:
                return seen
            time.sleep(0.05)
        self.fail(f"timed out after {timeout:.0f}s waiting for {what}")
        return None

    def fail(self, why: str) -> None:
        self.problems.append(why)
        pytest.fail(self.summary(), pytrace=False)

    # -- acting

    def create_vm(self) -> str:
        """The running VM, its disk imported at once (only the move's clone is slow); returns
        the source's content hash."""
        vm = seed.fedora_vm(self.ns, VM, SOURCE, size=DISK_SIZE)
        vm["spec"]["dataVolumeTemplates"][0]["metadata"]["annotations"] = {COPY_SECONDS: "0"}
        response = self.api.post(
            version=KV, namespace=self.ns, url="virtualmachines", data=json.dumps(vm)
        )
        self.api.raise_for_status(response)
        self.wait(
            lambda: (self.dv(SOURCE).get("status") or {}).get("phase") == "Succeeded",
            60,
            "the source DataVolume imported",
        )
        self.wait(
            lambda: (self.vmi().get("status") or {}).get("phase") == "Running",
            60,
            "the VM running",
        )
        source_hash = self.content(SOURCE)
        assert source_hash, "the node side gives every imported disk a content hash"
        return source_hash

    def apply(self, name: str, identity: str, kubeconfig: Path | None = None) -> Runner:
        lease = ["--lease-duration", str(LEASE_SECONDS)] if lease_flag() else []
        argv = [
            "apply",
            str(self.plan),
            "-o",
            "json",
            "--kubeconfig",
            str(kubeconfig or self.lab.kubeconfig(identity)),
            "--lease-namespace",
            self.ns,
            *lease,
        ]
        runner = Runner(name, argv, self.tmp_path / "runs").start()
        self.runners.append(runner)
        self.note(f"{name} started as {identity}, pid {runner.pid}")
        return runner

    def wait_lease_expired(self) -> None:
        """Until the Lease (A's, frozen or cut off) expired, by its own renewTime and duration:
        then B may take it, and A's own clock ran out too. Without --lease-duration: its
        renewTime moved an hour back instead (the default 60 s is too long to wait)."""
        if not lease_flag():
            stamp = (datetime.now(UTC) - timedelta(hours=1)).strftime("%Y-%m-%dT%H:%M:%S.%fZ")
            url = f"leases/{LEASE}"
            _merge(self.api, COORDINATION, self.ns, url, {"spec": {"renewTime": stamp}})
            self.note("no --lease-duration: the Lease's renewTime moved an hour back")
            return

        def expired() -> bool:
            spec = self.lease()
            renewed = datetime.fromisoformat(str(spec["renewTime"]).replace("Z", "+00:00"))
            until = renewed + timedelta(seconds=int(spec["leaseDurationSeconds"]))
            return datetime.now(UTC) > until + timedelta(seconds=0.2)

        self.wait(expired, 3 * LEASE_SECONDS + 30, "A's Lease to expire")

    def summary(self) -> str:
        lines = [
            f"split brain ({self.kind}), VMSR_SPLIT_SEED={self.seed} "
            f"(replay: VMSR_SPLIT_SEED={self.seed} .venv/bin/pytest -q '{self.nodeid}')",
            *(f"  - {p}" for p in self.problems),
            "timeline:",
            *(f"  {n}" for n in self.notes),
        ]
        for runner in self.runners:
            lines.append(str(runner))
        return "\n".join(lines)

    def kill_all(self) -> None:
        for runner in self.runners:
            runner.kill()


def new_trial(
    request: pytest.FixtureRequest, tmp_path: Path, seed_: int, kind: str, trials: list[Trial]
) -> Trial:
    lab: Lab = request.getfixturevalue("lab")
    ns = lab.cp.create_namespace(f"split-{kind}")
    trial = Trial(lab, ns, tmp_path, seed_, kind, request.node.nodeid)
    trials.append(trial)
    return trial


# --------------------------------------------------------------------------------------------
# the scenario
# --------------------------------------------------------------------------------------------


@dataclass
class Isolation:
    """How A is taken out of the world and brought back."""

    take: Callable[[Runner], None]
    restore: Callable[[Runner], None]


@dataclass
class Played:
    """What the scenario left to check."""

    a: Runner
    b: Runner
    holder_a: str
    move: str
    target: str
    source_hash: str


def split_brain(trial: Trial, a_kubeconfig: Path | None, isolation: Isolation) -> None:
    """The whole scenario and every check; fails the test with all findings at once."""
    played = play(trial, a_kubeconfig, isolation)
    check_runners(trial, played)
    check_disks(trial, played)
    check_audit(trial, trial.lab.audit(since=trial.audit_from), played)
    check_converges(trial)
    if trial.problems:
        pytest.fail(trial.summary(), pytrace=False)


def play(trial: Trial, a_kubeconfig: Path | None, isolation: Isolation) -> Played:
    """A moves the VM; isolated mid-copy past its Lease's expiry; B takes over and finishes;
    A comes back (after B, or while B works) and must stop."""
    source_hash = trial.create_vm()
    a = trial.apply("A", trial.ids["a"], a_kubeconfig)

    def at_wait_targets() -> bool:
        if a.poll() is not None:
            trial.fail(f"A ended (exit {a.returncode}) before it reached wait-targets")
        return (trial.journal() or {}).get("step") == "wait-targets"

    trial.wait(at_wait_targets, 60, "A at wait-targets")
    journal = trial.journal() or {}
    move = str(journal.get("id"))
    (target,) = [str(v["target"]) for v in journal.get("volumes") or []]
    trial.note(f"A's move {move} at wait-targets, target {target}")
    time.sleep(trial.rng.uniform(0.2, 3.0))
    progress = (trial.dv(target).get("status") or {}).get("progress")
    if a.poll() is not None:
        trial.fail(f"A ended before it could be isolated: exit {a.returncode}")
    holder_a = holder_of(a)
    trial.check(trial.lease().get("holderIdentity") == holder_a, f"A ({holder_a}) holds the Lease")
    isolation.take(a)
    trial.note(f"A isolated ({trial.kind}) with its copy at {progress}")

    trial.wait_lease_expired()
    extra = trial.rng.uniform(0.0, 2.0)
    time.sleep(extra)
    while_b_works = trial.rng.random() < 0.4
    trial.note(
        f"A's Lease expired; B starts {extra:.1f}s later; A comes back "
        + ("while B is at work" if while_b_works else "after B finished")
    )
    b = trial.apply("B", trial.ids["b"])
    if while_b_works:
        trial.wait(
            lambda: trial.lease().get("holderIdentity") == holder_of(b) or b.poll() is not None,
            60,
            "B to take the Lease",
        )
        # B needs ~2-4 s from here (the copy is done: swap, start, verify, delete the source)
        time.sleep(trial.rng.uniform(0.0, 1.0))
        trial.note(f"A comes back; B's journal step: {(trial.journal() or {}).get('step')}")
        isolation.restore(a)
    if b.wait(120) is None:
        trial.check(False, "B did not finish within 120 s")
        b.kill()
    if not while_b_works:
        time.sleep(trial.rng.uniform(0.0, 1.5))
        trial.note("B finished; A comes back")
        isolation.restore(a)
    if a.wait(90) is None:
        trial.check(False, "A did not stop within 90 s of coming back (it must stop at once)")
        a.kill()
    trial.note(f"A exit {a.returncode} after {a.seconds:.1f}s; B exit {b.returncode}")
    return Played(a, b, holder_a, move, target, source_hash)


def check_runners(trial: Trial, played: Played) -> None:
    """A stopped saying it lost the Lease; B finished A's move."""
    a, b = played.a, played.b
    trial.check(
        a.returncode is not None and a.returncode > 0,
        f"A must exit non-zero (4) after losing the Lease; it exited {a.returncode}",
    )
    trial.check(
        LOST_LEASE.search(a.stderr), "A must say it lost the Lease (no 'lost the Lease' on stderr)"
    )
    outcome: dict[str, Any] = next(
        (o for o in b.report.get("outcomes") or [] if o.get("name") == VM), {}
    )
    trial.check(b.returncode == 0, f"B must finish the move with exit 0, not {b.returncode}")
    trial.check(
        (outcome.get("migrationId"), outcome.get("resumed"), outcome.get("result"))
        == (played.move, True, "Succeeded"),
        f"B resumed and finished A's move {played.move}: its outcome was {outcome}",
    )


def check_disks(trial: Trial, played: Played) -> None:
    """The VM on the target, the target intact with the source's content, the source deleted,
    nothing else of ours, no journal, the VMI running on the target."""
    target = played.target
    vm = trial.vm()
    claims = [
        (v.get("dataVolume") or {}).get("name")
        or (v.get("persistentVolumeClaim") or {}).get("claimName")
        for v in vm["spec"]["template"]["spec"]["volumes"]
        if v["name"] == VOLUME
    ]
    templates = [t["metadata"]["name"] for t in vm["spec"].get("dataVolumeTemplates") or []]
    trial.check(claims == [target], f"the VM must use the target {target}, it uses {claims}")
    trial.check(templates == [target], f"the VM's dataVolumeTemplates name {templates}")
    target_dv, target_pvc = trial.dv(target), trial.pvc(target)
    trial.check(
        target_dv and not target_dv["metadata"].get("deletionTimestamp"),
        f"the target DataVolume {target} must exist (it is the only copy)",
    )
    trial.check(
        target_pvc
        and not target_pvc["metadata"].get("deletionTimestamp")
        and (target_pvc.get("status") or {}).get("phase") == "Bound"
        and target_pvc["spec"].get("storageClassName") == TARGET_CLASS,
        f"the target PVC {target} must be Bound on {TARGET_CLASS}",
    )
    content = trial.content(target)
    trial.check(
        content == played.source_hash,
        f"the target holds the source's content ({played.source_hash}), not {content}",
    )
    source_dv, source_pvc = trial.dv(SOURCE), trial.pvc(SOURCE)
    trial.check(
        not source_dv or source_dv["metadata"].get("deletionTimestamp"),
        "retention Delete: the source DataVolume is deleted once the move is verified",
    )
    trial.check(
        not source_pvc or source_pvc["metadata"].get("deletionTimestamp"),
        "the source PVC is deleted with its DataVolume",
    )
    trial.check(trial.ours() == {target}, f"no DataVolume of ours but the target: {trial.ours()}")
    trial.check(trial.journal() is None, f"no journal is left: {trial.journal()}")
    last = dict(json.loads(annotation(vm, LAST) or "{}"))
    trial.check(
        (last.get("id"), last.get("result")) == (played.move, "Succeeded"),
        f"the last-migration record is the finished move: {last}",
    )

    def running() -> dict[str, Any] | None:
        vmi = trial.vmi()
        return vmi if (vmi.get("status") or {}).get("phase") == "Running" else None

    vmi = trial.wait(running, 30, "the VMI running")
    on = {
        v["name"]: v["persistentVolumeClaimInfo"]["claimName"]
        for v in (vmi.get("status") or {}).get("volumeStatus") or ()
        if v.get("persistentVolumeClaimInfo")
    }
    trial.check(on.get(VOLUME) == target, f"the VMI runs on the target: {on}")


def check_converges(trial: Trial) -> None:
    """A further run: exit 0, nothing changed, no write but its own bookkeeping."""
    before = state_of(trial)
    mark = trial.lab.audit_mark()
    c = trial.apply("C", trial.ids["c"])
    code = c.wait(120)
    trial.check(code == 0, f"a further run converges with exit 0, not {code}")
    trial.check(state_of(trial) == before, "a further run changes nothing (VM, DataVolumes)")
    writes = [
        e
        for e in trial.lab.audit(since=mark)
        if e.user == trial.ids["c"] and e.mutating and e.resource not in BOOKKEEPING
    ]
    trial.check(not writes, "the further run wrote:\n" + "\n".join(map(str, writes)))


def check_audit(trial: Trial, events: list[AuditEvent], played: Played) -> None:
    """No mutating request of A once B held the Lease; every request names its runner."""
    ids, holder_a, b = trial.ids, played.holder_a, played.b
    acquired = [
        e
        for e in events
        if e.user == ids["b"]
        and e.resource == "leases"
        and e.name == LEASE
        and e.namespace == trial.ns
        and e.verb in ("create", "update", "patch")
        and e.code in (200, 201)
    ]
    if not acquired:
        trial.check(False, "the audit log has no successful write of the Lease by B")
        return
    taken = acquired[0].received
    trial.note(f"B acquired the Lease at {taken.isoformat(timespec='microseconds')}")
    mine = [e for e in events if e.user == ids["a"]]
    late = [e for e in mine if e.mutating and e.received >= taken]
    if not trial.strict_audit:
        # Requests A sent during the outage arrive late; the server must refuse each one
        # (a stale resourceVersion, the journal's compare-and-swap): none may land.
        refused = [e for e in late if e.code >= 400]
        if refused:
            trial.note(
                f"{len(refused)} late write(s) of A refused: " + "; ".join(map(str, refused))
            )
        late = [e for e in late if e.code < 400]
    trial.check(
        not late,
        f"A made {len(late)} mutating request(s) after B acquired the Lease"
        + ("" if trial.strict_audit else " that the server accepted")
        + ":\n"
        + "\n".join(f"      {e}" for e in late[:20]),
    )
    trial.check(mine, "the audit log has no request of A at all")
    wrong = [e for e in mine if not _names(e.user_agent, holder_a)]
    trial.check(
        not wrong,
        f"{len(wrong)} of A's {len(mine)} requests do not name A in their User-Agent "
        f"('vm-storage-reconciler/<version> ({holder_a})'), e.g. {wrong[0].user_agent!r}"
        if wrong
        else "",
    )
    wrong_b = [e for e in events if e.user == ids["b"] and not _names(e.user_agent, holder_of(b))]
    trial.check(not wrong_b, f"{len(wrong_b)} of B's requests do not name B in their User-Agent")


def _names(user_agent: str, holder: str) -> bool:
    return user_agent.startswith("vm-storage-reconciler/") and f"({holder})" in user_agent


def state_of(trial: Trial) -> dict[str, Any]:
    """What a run that has nothing to do must leave alone: the VM's spec and annotations, and
    every DataVolume (by uid and spec)."""
    vm = trial.vm()
    return {
        "spec": vm["spec"],
        "annotations": vm["metadata"].get("annotations"),
        "dvs": {
            n: (d["metadata"]["uid"], d["spec"], d["metadata"].get("deletionTimestamp"))
            for n, d in trial.dvs().items()
        },
    }


# --------------------------------------------------------------------------------------------
# the tests
# --------------------------------------------------------------------------------------------


@pytest.fixture
def trials(lab: Lab) -> Iterator[list[Trial]]:
    """The trials a test ran; afterwards their runners killed and their VMs deleted, so no
    move a failed trial left open is resumed by a later test's run."""
    made: list[Trial] = []
    yield made
    for trial in made:
        trial.kill_all()
    for trial in made:
        response = lab.api.delete(version=KV, namespace=trial.ns, url="virtualmachines")
        lab.api.raise_for_status(response)


@pytest.mark.parametrize("seed_", TRIALS, ids=[f"seed{s}" for s in TRIALS])
def test_sigstopped_runner_makes_no_write_after_the_lease_moved_on(
    request: pytest.FixtureRequest, trials: list[Trial], tmp_path: Path, seed_: int
) -> None:
    trial = new_trial(request, tmp_path, seed_, "sigstop", trials)

    def freeze(a: Runner) -> None:
        a.signal(signal.SIGSTOP)

    def thaw(a: Runner) -> None:
        a.signal(signal.SIGCONT)

    split_brain(trial, None, Isolation(freeze, thaw))


@pytest.mark.parametrize("seed_", TRIALS, ids=[f"seed{s}" for s in TRIALS])
@pytest.mark.parametrize("heal", ["reset", "deliver"])
def test_partitioned_runner_makes_no_write_after_the_lease_moved_on(
    request: pytest.FixtureRequest, trials: list[Trial], tmp_path: Path, seed_: int, heal: str
) -> None:
    """``reset``: the partition outlived TCP; A's connections are reset when it heals and what
    A sent meanwhile is lost, so any write of A the server sees afterwards, A sent afterwards:
    none at all may come. ``deliver``: a partition TCP rode out; what A sent during it arrives
    late (a write A sent while it still held the Lease, or one it should not have sent), so
    none of A's writes may be accepted once B holds the Lease."""
    trial = new_trial(request, tmp_path, seed_, f"partition-{heal}", trials)
    trial.strict_audit = heal == "reset"
    lab = trial.lab
    server = urlsplit(lab.cp.server)
    assert server.hostname and server.port
    with TcpProxy((server.hostname, server.port)) as proxy:
        via = kubeconfig_via(
            proxy, lab.kubeconfig(trial.ids["a"]), tmp_path / "a-via-proxy.kubeconfig"
        )

        def cut(_: Runner) -> None:
            proxy.cut()

        def restore(_: Runner) -> None:
            proxy.heal(reset=heal == "reset")
            trial.note(f"partition healed ({heal}): {proxy!r}")

        split_brain(trial, via, Isolation(cut, restore))
