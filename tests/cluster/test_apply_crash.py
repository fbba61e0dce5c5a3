"""`apply` killed, stopped, raced and cut off from its API server: it never loses a disk.

Every test runs `apply` as a real subprocess (``python -m reconciler apply``) against the real
engine, each in its own namespace (which also holds the Lease). What the next run finds after a
kill is what upstream virt-controller, virt-api and cdi-controller (with kube-scheduler,
kube-controller-manager's binder and garbage collector, and KWOK) made of the half-done move;
the node side (``testenv.node``) plays only the node: it copies, migrates and writes the
content marker ``CONTENT_HASH_ANNOTATION`` on the claims it fills, and fails or stalls what a
test asks through the ``node_side`` fixture (ConfigMap kube-system/testenv-faults).

- **Crash at every step.** The boundaries come from the code: every step of
  ``journal.FORWARD[flow]`` and ``journal.ROLLBACK[flow]``, before and after, for both flows, so
  a new step is a new test case, and every one runs (46 today). ``VMSR_FAILPOINT`` SIGKILLs the
  run there; the next run (without it) must converge: the VM on its targets (or, for a
  rollback, back on its sources), content hashes equal, no DataVolume or claim left that the
  VM does not use, the source never deleted before verification (retention Delete
  throughout), the journal gone and the last-migration record written. Rollbacks are forced
  by a migration that always fails (live, ``--max-migration-attempts 1``) or by the deadline
  passing after the swap (offline: every rollback step then has something to undo). A
  rollback's rerun runs with the plan's window shut: open moves are always finished
  (docs/plans.md), and no fresh attempt starts, so the state the test sees is the rollback it
  resumed. A case's VM takes a CDI import and a start through virt-controller, the scheduler
  and KWOK (over a third of a case's time when each made its own, measured); so the cases'
  VMs are created together before the first case (``ready_vms``: a namespace each, imported and
  started side by side, waited for together), and each case deletes its own at its end.
- **SIGTERM mid-VM**: a prompt, documented exit, the journal consistent, the next run finishes.
- **Two runs at once** and Leases held, expired and taken over.
- **The API server restarted** while `apply` waits: its watches reconnect and it finishes.
  These run on an engine of their own (``restart_engine``, xdist group
  ``real-engine-restart``), so the session's engine never waits out their outage. Upstream's
  leader-elected controllers exit when they cannot renew their Lease in time: cdi-controller
  after 10 s (controller-runtime's default; CDI sets none), virt-controller after 20 s (as the
  engine starts it), and a restart can outlast that (measured: 16-35 s on 2 cores at load
  10-13); the engine then starts them again once the API server is ready, as the kubelet
  would (``testenv.real.engine.RESTARTED``).

Every test fails if a process of its engine died during it (any other exit).

A killed run leaves its Lease held (nobody releases it); the next run may take it only once it
expired (60 s). The tests expire it by moving its ``renewTime`` into the past, which is what
waiting would do.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass, replace
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pykube
import pytest

from reconciler.apply import failpoint
from reconciler.model import journal as journals
from reconciler.model.journal import FORWARD, ROLLBACK, Flow, Step
from reconciler.model.names import JOURNAL_ANNOTATION, LAST_MIGRATION_ANNOTATION, MIGRATION_LABEL
from testenv import seed
from testenv.controlplane import ControlPlane
from testenv.node.runtime import CONTENT_HASH_ANNOTATION, FAULT_ANNOTATION, Fault, FaultAction
from testenv.real.engine import RealEngine
from tests.cluster.test_plan import SETTLE, _merge, create, fedora, plan_file, settle
from tests.support.engines import running_engine
from tests.support.kube import Eventually, annotation, get_json, stays
from tests.support.node_faults import NodeSide

ROOT = Path(__file__).resolve().parents[2]
KV = "kubevirt.io/v1"
CDI = "cdi.kubevirt.io/v1beta1"
COORDINATION = "coordination.k8s.io/v1"
LEASE = "vm-storage-reconciler"
VM = "vm-fedora"
VOLUME = "datavolumedisk1"
SOURCE = "vm-fedora-disk"
FAULT = FAULT_ANNOTATION  # the node side's fault annotation on an object
RUN_TIMEOUT = 120.0  # one subprocess; a hang fails the test instead of the session


@pytest.fixture(scope="module", autouse=True)
def cluster_objects(api: pykube.HTTPClient) -> None:
    """The StorageClasses and the KubeVirt CR (idempotent: the CR the engine made, with its
    status, is kept)."""
    seed.seed_cluster(api)


def _assert_alive(engine: RealEngine) -> None:
    dead = engine.dead()
    tails = "\n".join(engine.log_tail(name) for name in dead)
    assert not dead, (
        f"processes of the real engine died during this test: {dead} (a leader-elected "
        f"controller exits when the API server was away longer than its renew deadline)\n{tails}"
    )


@pytest.fixture(autouse=True)
def _engine_survives(request: pytest.FixtureRequest) -> Iterator[None]:
    """Fail the test during which a process of the session's engine died (the restart tests
    check their own engine: they do not start the session's)."""
    yield
    if "real_engine" in request.fixturenames:
        _assert_alive(request.getfixturevalue("real_engine"))


# --------------------------------------------------------------------------------------------
# the harness
# --------------------------------------------------------------------------------------------


def plan_body(flow: Flow, *, window_shut: bool = False) -> str:
    """Retention Delete (so a source deleted too early would show); offline moves stop the
    running VM. ``window_shut``: a maintenance window that is closed now (new moves wait for
    it; a move already open is always finished: docs/plans.md)."""
    body = "storageClass: ceph-rbd\nretention: Delete\n"
    if flow is Flow.OFFLINE:
        body += "mode: Offline\nallowStop: true\n"
    if window_shut:
        opens = (datetime.now(UTC) + timedelta(hours=6)).strftime("%H:%M")
        body += f'window: {{start: "{opens}", duration: 1h, timeZone: UTC}}\n'
    return body + f"virtualMachines:\n  - name: {VM}\n"


@dataclass
class Run:
    """One finished `apply` subprocess."""

    returncode: int
    stdout: str
    stderr: str
    seconds: float

    @property
    def report(self) -> dict[str, Any]:
        return json.loads(self.stdout) if self.stdout.strip().startswith("{") else {}

    def __str__(self) -> str:
        return f"exit {self.returncode} after {self.seconds:.1f}s\n{self.stderr[-3000:]}"


class Cluster:
    """One test's namespace, its VM, and `apply` run on it as a subprocess."""

    def __init__(
        self,
        api: pykube.HTTPClient,
        control_plane: ControlPlane,
        namespace: str,
        tmp_path: Path,
        eventually: Eventually,
        node_side: NodeSide,
    ) -> None:
        self.api, self.control_plane, self.ns = api, control_plane, namespace
        self.tmp_path, self.eventually, self.node_side = tmp_path, eventually, node_side
        self.background: list[subprocess.Popen[str]] = []
        self.faulted: set[tuple[str, str]] = set()

    # -- faults (the engine's node side; cleared after the test)

    def fault(self, kind: str, name: str, fault: Fault) -> None:
        """Arm ``fault`` on this namespace's object (which need not exist yet)."""
        self.faulted.add((kind, name))
        self.node_side.faults.add(kind, self.ns, name, fault)

    def clear_fault(self, kind: str, name: str) -> None:
        self.node_side.faults.clear(kind, self.ns, name)
        self.faulted.discard((kind, name))

    def close(self) -> None:
        """After the test: its background runs killed, its faults cleared."""
        for proc in self.background:
            if proc.poll() is None:
                proc.kill()
            proc.communicate()
        for kind, name in sorted(self.faulted):
            self.clear_fault(kind, name)

    def annotate_vm(self, key: str, value: str | None) -> None:
        _merge(
            self.api,
            KV,
            self.ns,
            f"virtualmachines/{VM}",
            {"metadata": {"annotations": {key: value}}},
        )

    # -- the VM and its disks

    def create_vm(self) -> None:
        settle(self.api, self.eventually, fedora(self.ns))

    def vm(self) -> dict[str, Any]:
        return get_json(self.api, KV, self.ns, f"virtualmachines/{VM}")

    def vmi(self) -> dict[str, Any]:
        return get_json(self.api, KV, self.ns, f"virtualmachineinstances/{VM}")

    def pvc(self, name: str) -> dict[str, Any]:
        return get_json(self.api, "v1", self.ns, f"persistentvolumeclaims/{name}")

    def dvs(self) -> dict[str, dict[str, Any]]:
        """DataVolumes that exist and are not being deleted, by name."""
        items = get_json(self.api, CDI, self.ns, "datavolumes")["items"]
        return {
            d["metadata"]["name"]: d for d in items if not d["metadata"].get("deletionTimestamp")
        }

    def content(self, claim: str) -> str | None:
        return annotation(self.pvc(claim), CONTENT_HASH_ANNOTATION)

    def journal(self) -> journals.Journal | None:
        text = annotation(self.vm(), JOURNAL_ANNOTATION)
        return None if text is None else journals.decode(text)

    def last(self) -> dict[str, Any]:
        return dict(json.loads(annotation(self.vm(), LAST_MIGRATION_ANNOTATION) or "{}"))

    def source_exists(self) -> bool:
        pvc = self.pvc(SOURCE)
        return SOURCE in self.dvs() and bool(pvc) and not pvc["metadata"].get("deletionTimestamp")

    def target_name(self, flow: Flow) -> str:
        """The destination `plan` names (names are deterministic)."""
        done = self.run_cli(
            "plan", plan_file(self.tmp_path, self.ns, plan_body(flow)), "-o", "json"
        )
        (vm,) = json.loads(done.stdout)["vms"]
        (volume,) = [v for v in vm["volumes"] if v.get("target")]
        return str(volume["target"])

    # -- the Lease

    def lease(self) -> dict[str, Any]:
        return get_json(self.api, COORDINATION, self.ns, f"leases/{LEASE}")

    def put_lease(self, holder: str, renewed: datetime, seconds: int = 60) -> None:
        """The Lease as another runner would have left it."""
        stamp = renewed.strftime("%Y-%m-%dT%H:%M:%S.%fZ")
        body = {
            "apiVersion": COORDINATION,
            "kind": "Lease",
            "metadata": {"name": LEASE, "namespace": self.ns},
            "spec": {
                "holderIdentity": holder,
                "leaseDurationSeconds": seconds,
                "acquireTime": stamp,
                "renewTime": stamp,
                "leaseTransitions": 0,
            },
        }
        response = self.api.post(
            version=COORDINATION, namespace=self.ns, url="leases", data=json.dumps(body)
        )
        self.api.raise_for_status(response)

    def expire_lease(self) -> None:
        """What waiting out a killed run's Lease does: its renewTime an hour ago."""
        if not self.lease():
            return
        stamp = (datetime.now(UTC) - timedelta(hours=1)).strftime("%Y-%m-%dT%H:%M:%S.%fZ")
        _merge(self.api, COORDINATION, self.ns, f"leases/{LEASE}", {"spec": {"renewTime": stamp}})

    # -- running the CLI

    def argv(self, body: str, *extra: str) -> list[str]:
        path = plan_file(self.tmp_path, self.ns, body)
        return [
            sys.executable,
            "-m",
            "reconciler",
            "apply",
            str(path),
            "-o",
            "json",
            "--kubeconfig",
            str(self.control_plane.kubeconfig),
            "--lease-namespace",
            self.ns,
            *extra,
        ]

    @staticmethod
    def env(fail_at: str | None = None) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if k != failpoint.ENV}
        if fail_at:
            env[failpoint.ENV] = fail_at
        return env

    def apply(self, body: str, *extra: str, fail_at: str | None = None) -> Run:
        began = time.monotonic()
        done = subprocess.run(
            self.argv(body, *extra),
            env=self.env(fail_at),
            cwd=ROOT,
            capture_output=True,
            text=True,
            timeout=RUN_TIMEOUT,
            check=False,
        )
        return Run(done.returncode, done.stdout, done.stderr, time.monotonic() - began)

    def start(self, body: str, *extra: str) -> subprocess.Popen[str]:
        """`apply` in the background (stdout and stderr to pipes; killed after the test)."""
        proc = subprocess.Popen(
            self.argv(body, *extra),
            env=self.env(),
            cwd=ROOT,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        self.background.append(proc)
        return proc

    def run_cli(self, *args: str | Path) -> subprocess.CompletedProcess[str]:
        argv = [
            sys.executable,
            "-m",
            "reconciler",
            *map(str, args),
            "--kubeconfig",
            str(self.control_plane.kubeconfig),
        ]
        return subprocess.run(
            argv,
            env=self.env(),
            cwd=ROOT,
            capture_output=True,
            text=True,
            timeout=RUN_TIMEOUT,
            check=False,
        )


@pytest.fixture
def cluster(
    api: pykube.HTTPClient,
    control_plane: ControlPlane,
    namespace: str,
    tmp_path: Path,
    eventually: Eventually,
    node_side: NodeSide,
) -> Iterator[Cluster]:
    cluster = Cluster(api, control_plane, namespace, tmp_path, eventually, node_side)
    yield cluster
    cluster.close()


def volume_claim(vm: dict[str, Any], volume: str = VOLUME) -> str:
    for v in vm["spec"]["template"]["spec"]["volumes"]:
        if v["name"] == volume:
            return str(
                (v.get("dataVolume") or {}).get("name") or v["persistentVolumeClaim"]["claimName"]
            )
    raise AssertionError(f"no volume {volume}")


def vmi_volume_claims(vmi: dict[str, Any]) -> dict[str, str]:
    return {
        str(v["name"]): str(v["persistentVolumeClaimInfo"]["claimName"])
        for v in (vmi.get("status") or {}).get("volumeStatus") or ()
        if v.get("persistentVolumeClaimInfo")
    }


def ours(cluster: Cluster) -> dict[str, str]:
    """DataVolumes labelled with a move id (not being deleted): name -> move id."""
    return {
        name: dv["metadata"]["labels"][MIGRATION_LABEL]
        for name, dv in cluster.dvs().items()
        if MIGRATION_LABEL in (dv["metadata"].get("labels") or {})
    }


def claims(cluster: Cluster) -> set[str]:
    """The namespace's PersistentVolumeClaims that stay: not being deleted (a claim a pod still
    uses stays Terminating: pvc-protection, e.g. a target held by the completed launcher pod
    of a failed migration), nor owned by a claim that is. The latter is CDI's prime claim of a
    populated DataVolume: cdi-controller deletes it once the binder marked it Lost, but only
    while its claim is not being deleted (populator-base.go reconcileCommon/reconcileCleanup),
    so a target deleted before the binder marked its prime Lost (up to its 15 s resync) leaves
    the prime to the garbage collector, which deletes it with the claim that owns it."""
    items = get_json(cluster.api, "v1", cluster.ns, "persistentvolumeclaims")["items"]
    deleting = {c["metadata"]["uid"] for c in items if c["metadata"].get("deletionTimestamp")}
    return {
        c["metadata"]["name"]
        for c in items
        if c["metadata"]["uid"] not in deleting
        and not any(o.get("uid") in deleting for o in c["metadata"].get("ownerReferences") or ())
    }


ORPHAN_TIMEOUT = 30.0
"""How long a deleted DataVolume's claim and the copy's scratch claims may take to go: the
garbage collector deletes them by ownerReference, asynchronously (kube-controller-manager's
on the real engine). A bound, not a measured wait: in the cases measured on the real engine
they were gone by the time the rerun ended."""


def assert_no_orphans(cluster: Cluster, expected: set[str]) -> None:
    """Eventually no DataVolume and no claim in the namespace but ``expected`` (the disks the
    VM uses; the copy's own temporary claims included)."""
    deadline = time.monotonic() + ORPHAN_TIMEOUT
    while True:
        seen = {"DataVolumes": set(cluster.dvs()), "claims": claims(cluster)}
        if all(names == expected for names in seen.values()):
            return
        if time.monotonic() > deadline:
            raise AssertionError(f"orphans left {ORPHAN_TIMEOUT:.0f}s later: {seen} != {expected}")
        time.sleep(0.2)


# --------------------------------------------------------------------------------------------
# 1. crash at every step boundary
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Boundary:
    flow: Flow
    when: str  # before | after
    step: Step
    rollback: bool

    @property
    def failpoint(self) -> str:
        return f"{self.flow.value}/{self.when}:{self.step.value}"

    @property
    def id(self) -> str:
        return (
            f"{self.flow.value}-{'rollback-' if self.rollback else ''}{self.when}-{self.step.value}"
        )

    def before_verified(self) -> bool:
        """A forward crash before verification completed (the rerun must verify first)."""
        steps = FORWARD[self.flow]
        at, verify = steps.index(self.step), steps.index(Step.VERIFY)
        return not self.rollback and (at < verify or (at == verify and self.when == "before"))

    def source_may_be_gone(self) -> bool:
        """Only a crash after the sources were deleted (which follows verification)."""
        return not self.rollback and (self.when, self.step) == ("after", Step.DELETE_SOURCES)


BOUNDARIES = [
    Boundary(flow, when, step, rollback)
    for flow in Flow
    for rollback in (False, True)
    for step in (ROLLBACK if rollback else FORWARD)[flow]
    for when in ("before", "after")
]


def test_every_step_of_both_flows_is_a_crash_case() -> None:
    """Every step the machine knows is in a sequence, so the table below reaches it: a step
    taken outside FORWARD/ROLLBACK would escape these tests."""
    assert {b.step for b in BOUNDARIES} == set(Step)
    assert (
        len({b.id for b in BOUNDARIES})
        == len(BOUNDARIES)
        == 2 * sum(len(FORWARD[f]) + len(ROLLBACK[f]) for f in Flow)
    )


def crash(cluster: Cluster, boundary: Boundary) -> tuple[str, list[str]]:
    """Drive the VM to ``boundary`` and die there; the crashed move's id and the extra flags
    every run of this case passes."""
    flow = boundary.flow
    extra: list[str] = []
    if boundary.rollback and flow is Flow.LIVE:
        # every migration fails; the first failure rolls the move back
        cluster.fault("virtualmachines", VM, Fault(FaultAction.FAIL))
        extra = ["--max-migration-attempts", "1"]
    if boundary.rollback and flow is Flow.OFFLINE:
        # swapped and stopped, then past its deadline: the rollback has everything to undo
        killed = cluster.apply(plan_body(flow), fail_at="offline/after:swap")
        assert killed.returncode == -signal.SIGKILL, killed
        fast_forward_past_deadline(cluster)
        cluster.expire_lease()
    killed = cluster.apply(plan_body(flow), *extra, fail_at=boundary.failpoint)
    assert killed.returncode == -signal.SIGKILL, f"{boundary.failpoint} never hit: {killed}"
    journal = cluster.journal()
    assert journal is not None, "a crash mid-move leaves the journal"
    assert (journal.step, journal.rolling_back) == (boundary.step, boundary.rollback), (
        f"the journal names the step the run died at: {journal}"
    )
    if not boundary.source_may_be_gone():
        assert cluster.source_exists(), (
            f"the source was deleted by a run that died at {boundary.failpoint}"
        )
    return journal.id, extra


def fast_forward_past_deadline(cluster: Cluster) -> None:
    """The move's deadline an hour ago: what waiting out the plan's timeout would do."""
    text = annotation(cluster.vm(), JOURNAL_ANNOTATION)
    assert text is not None
    late = replace(journals.decode(text), deadline=_ago(timedelta(hours=1)).isoformat())
    path = "/metadata/annotations/" + JOURNAL_ANNOTATION.replace("/", "~1")
    ops = [
        {"op": "test", "path": path, "value": text},
        {"op": "replace", "path": path, "value": journals.encode(late)},
    ]
    response = cluster.api.patch(
        version=KV,
        namespace=cluster.ns,
        url=f"virtualmachines/{VM}",
        data=json.dumps(ops),
        headers={"Content-Type": "application/json-patch+json"},
    )
    cluster.api.raise_for_status(response)


def _ago(delta: timedelta) -> datetime:
    return datetime.now(UTC).replace(microsecond=0) - delta


POOL_SECONDS_PER_VM = 10.0
"""Seconds ``ready_vms`` allows per VM, beyond ``SETTLE`` (one VM's bound), for all of them to
import their disks and run: a bound, not a measured wait (46 took 34 s on 2 cores at load 8,
214 s at load 20)."""


@pytest.fixture(scope="module")
def ready_vms(
    request: pytest.FixtureRequest,
    api: pykube.HTTPClient,
    control_plane: ControlPlane,
    cluster_objects: None,
) -> Iterator[dict[str, str]]:
    """Boundary id -> a namespace of its own holding the VM ``create_vm`` would make, for every
    case of this session, created at once (cdi-controller imports them and virt-controller
    starts them side by side) and returned once every one has its disk imported and its VMI
    Running, so each case's runs meet an engine at rest; the VMs and namespaces left are
    deleted after the module."""
    wanted = [
        item.callspec.params["boundary"]
        for item in request.session.items
        if item.path == request.path
        and hasattr(item, "callspec")
        and isinstance(item.callspec.params.get("boundary"), Boundary)
    ]
    namespaces: dict[str, str] = {}
    try:
        for boundary in wanted:
            namespace = control_plane.create_namespace(boundary.id)
            namespaces[boundary.id] = namespace
            create(api, fedora(namespace))
        allowed = SETTLE + POOL_SECONDS_PER_VM * len(namespaces)
        deadline = time.monotonic() + allowed
        while waiting := _not_ready(api, set(namespaces.values())):
            assert time.monotonic() < deadline, (
                f"{len(waiting)} of {len(namespaces)} VMs not imported and Running "
                f"{allowed:.0f}s later: {sorted(waiting)}"
            )
            time.sleep(0.5)
        yield namespaces
    finally:
        for namespace in namespaces.values():
            _delete_namespace(api, namespace)


def _not_ready(api: pykube.HTTPClient, namespaces: set[str]) -> set[str]:
    """Those of ``namespaces`` whose VM has not both its DataVolume Succeeded and its VMI
    Running (two cluster-wide lists)."""

    def where(version: str, url: str, name: str, phase: str) -> set[str]:
        response = api.get(version=version, url=url)
        api.raise_for_status(response)
        return {
            str(o["metadata"]["namespace"])
            for o in response.json()["items"]
            if o["metadata"]["name"] == name and (o.get("status") or {}).get("phase") == phase
        }

    imported = where(CDI, "datavolumes", SOURCE, "Succeeded")
    running = where(KV, "virtualmachineinstances", VM, "Running")
    return namespaces - (imported & running)


def _delete_namespace(api: pykube.HTTPClient, namespace: str) -> None:
    """Its VMs first (what the namespace controller would do: a VM left journaled by a failed
    case must not be resumed by a later case's run), then the namespace; best effort."""
    with contextlib.suppress(Exception):
        api.delete(version=KV, namespace=namespace, url="virtualmachines")
    with contextlib.suppress(Exception):
        api.delete(url=f"namespaces/{namespace}")


@pytest.fixture
def prepared(
    boundary: Boundary,
    ready_vms: dict[str, str],
    api: pykube.HTTPClient,
    control_plane: ControlPlane,
    tmp_path: Path,
    eventually: Eventually,
    node_side: NodeSide,
) -> Iterator[Cluster]:
    """``cluster`` on the boundary's namespace of ``ready_vms``; the VM and the namespace
    deleted after the case."""
    namespace = ready_vms[boundary.id]
    cluster = Cluster(api, control_plane, namespace, tmp_path, eventually, node_side)
    try:
        yield cluster
    finally:
        cluster.close()
        _delete_namespace(api, namespace)


@pytest.mark.parametrize("boundary", BOUNDARIES, ids=lambda b: b.id)
def test_killed_at_a_step_boundary_the_next_run_converges(
    prepared: Cluster, boundary: Boundary
) -> None:
    cluster = prepared
    assert cluster.journal() is None and not cluster.last(), "the VM was never moved"
    source_hash = cluster.content(SOURCE)
    vmi_uid = cluster.vmi()["metadata"]["uid"]
    assert source_hash

    move, extra = crash(cluster, boundary)
    cluster.expire_lease()
    rerun = cluster.apply(plan_body(boundary.flow, window_shut=boundary.rollback), *extra)

    outcome = (rerun.report.get("outcomes") or [{}])[0]
    assert (outcome.get("migrationId"), outcome.get("resumed")) == (move, True), rerun
    vm = cluster.vm()
    assert annotation(vm, JOURNAL_ANNOTATION) is None, "the journal is removed at the end"
    last = cluster.last()
    assert last["id"] == move
    assert vm["spec"]["runStrategy"] == "Always", "the run strategy is restored"
    vmi = cluster.eventually(
        lambda: (
            cluster.vmi() if (cluster.vmi().get("status") or {}).get("phase") == "Running" else None
        ),
        what="the VMI Running",
    )
    if boundary.rollback:
        assert rerun.returncode == 3, rerun
        assert (outcome["result"], last["result"]) == ("RolledBack", "RolledBack"), rerun
        assert volume_claim(vm) == SOURCE, "back on the source"
        assert [t["metadata"]["name"] for t in vm["spec"]["dataVolumeTemplates"]] == [SOURCE]
        assert "updateVolumesStrategy" not in vm["spec"]
        assert vmi_volume_claims(vmi).get(VOLUME) == SOURCE
        assert ours(cluster) == {}, "the move's DataVolumes are deleted"
        assert cluster.source_exists(), "a failed move never deletes its source"
        assert cluster.content(SOURCE) == source_hash
        assert_no_orphans(cluster, {SOURCE})
    else:
        assert rerun.returncode == 0, rerun
        assert (outcome["result"], last["result"]) == ("Succeeded", "Succeeded"), rerun
        target = volume_claim(vm)
        assert target != SOURCE and last["volumes"] == {VOLUME: target}
        assert [t["metadata"]["name"] for t in vm["spec"]["dataVolumeTemplates"]] == [target]
        assert cluster.pvc(target)["spec"]["storageClassName"] == "ceph-rbd"
        assert cluster.content(target) == source_hash, "the content moved intact"
        assert vmi_volume_claims(vmi).get(VOLUME) == target
        assert ours(cluster) == {target: move}, "no DataVolume of ours the VM does not use"
        assert not cluster.source_exists(), "retention Delete removed the source"
        assert last.get("sourcesDeleted") == [SOURCE]
        assert_no_orphans(cluster, {target})
        if boundary.before_verified():
            deleted = rerun.stderr.find(f"deleted source DataVolume {SOURCE}")
            assert 0 <= rerun.stderr.find("verified:") < deleted, (
                f"the source was deleted before verification:\n{rerun.stderr}"
            )
    if boundary.flow is Flow.LIVE:
        assert vmi["metadata"]["uid"] == vmi_uid, "a live move never restarts the guest"


# --------------------------------------------------------------------------------------------
# 2. SIGTERM while a VM is moving
# --------------------------------------------------------------------------------------------


def stalled_move(cluster: Cluster) -> tuple[subprocess.Popen[str], str]:
    """A running VM whose live move waits on a destination copy that does not progress:
    `apply` started on it in the background, returned once it waits there."""
    cluster.create_vm()
    target = cluster.target_name(Flow.LIVE)
    cluster.fault("datavolumes", target, Fault(FaultAction.STALL))
    proc = cluster.start(plan_body(Flow.LIVE))

    def waiting() -> bool:
        assert proc.poll() is None, f"apply ended early: {proc.communicate()}"
        journal = cluster.journal()
        return journal is not None and journal.step is Step.WAIT_TARGETS

    cluster.eventually(waiting, timeout=30, what="apply waiting for its stalled copy")
    return proc, target


def finish(proc: subprocess.Popen[str], timeout: float = 10) -> Run:
    """Wait for ``proc`` to end (SIGKILLed, and the test failed, after ``timeout``)."""
    began = time.monotonic()
    try:
        out, err = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        out, err = proc.communicate()
        pytest.fail(f"apply still ran {timeout:.0f}s later:\n{err[-3000:]}")
    return Run(proc.returncode, out, err, time.monotonic() - began)


def assert_moved(cluster: Cluster, run: Run, source_hash: str | None) -> None:
    assert run.returncode == 0, run
    vm = cluster.vm()
    target = volume_claim(vm)
    assert target != SOURCE
    assert annotation(vm, JOURNAL_ANNOTATION) is None
    assert cluster.last()["result"] == "Succeeded"
    assert cluster.content(target) == source_hash
    assert set(ours(cluster)) == {target}


def test_sigterm_while_waiting_stops_promptly_and_the_next_run_finishes(cluster: Cluster) -> None:
    proc, target = stalled_move(cluster)
    source_hash = cluster.content(SOURCE)
    before = cluster.journal()

    proc.send_signal(signal.SIGTERM)
    stopped = finish(proc)

    assert stopped.seconds < 5, f"SIGTERM took {stopped.seconds:.1f}s: {stopped}"
    assert stopped.returncode == 1, f"interrupted is 'changes pending' (exit 1): {stopped}"
    (outcome,) = stopped.report["outcomes"]
    assert outcome["result"] == "Interrupted", stopped
    journal = cluster.journal()  # decodes: consistent
    assert journal == before, "the journal is left as it was, naming the step it stopped in"
    assert journal is not None and journal.step is Step.WAIT_TARGETS
    assert target in ours(cluster), "nothing is undone by a SIGTERM"
    assert cluster.source_exists()
    assert not (cluster.lease().get("spec") or {}).get("holderIdentity"), (
        "the Lease is released on the way out: the next run need not wait for it"
    )

    cluster.clear_fault("datavolumes", target)
    rerun = cluster.apply(plan_body(Flow.LIVE))
    assert rerun.report["outcomes"][0]["resumed"], rerun
    assert_moved(cluster, rerun, source_hash)


# --------------------------------------------------------------------------------------------
# 3. one runner at a time
# --------------------------------------------------------------------------------------------


def state_of(cluster: Cluster) -> dict[str, Any]:
    """What a second run must not change: the VM (version, spec, annotations), the set of
    DataVolumes and what a run writes of each (spec, labels, deletion; not their version:
    upstream cdi-controller keeps writing a stalled clone's status), and the Lease's version."""
    vm = cluster.vm()
    dvs = get_json(cluster.api, CDI, cluster.ns, "datavolumes")["items"]
    return {
        "vm": (vm["metadata"]["resourceVersion"], vm["spec"], vm["metadata"].get("annotations")),
        "dvs": {
            d["metadata"]["name"]: (
                d["spec"],
                d["metadata"].get("labels"),
                d["metadata"].get("deletionTimestamp"),
            )
            for d in dvs
        },
        "lease": cluster.lease().get("metadata", {}).get("resourceVersion"),
    }


def settled_state(cluster: Cluster) -> dict[str, Any]:
    """``state_of`` once it holds still (the controllers are done reacting to the last
    change)."""

    def settled() -> dict[str, Any] | None:
        seen = state_of(cluster)
        return seen if stays(lambda: state_of(cluster) == seen, 0.5) else None

    return dict(cluster.eventually(settled, timeout=20, what="the namespace to settle"))


def test_a_second_apply_while_one_runs_skips_and_changes_nothing(cluster: Cluster) -> None:
    first, target = stalled_move(cluster)
    try:
        before = settled_state(cluster)

        second = cluster.apply(plan_body(Flow.LIVE))

        assert second.returncode == 0, f"a held Lease is a state, not a failure: {second}"
        assert "holds the lock" in second.stderr and "nothing was changed" in second.stderr
        assert state_of(cluster) == before, "the second run changed something"
        assert first.poll() is None, "the first run goes on"
    finally:
        first.send_signal(signal.SIGTERM)
        finish(first)
    cluster.clear_fault("datavolumes", target)


def test_a_lease_held_by_another_runner_exits_4_until_it_expires(cluster: Cluster) -> None:
    cluster.create_vm()
    source_hash = cluster.content(SOURCE)
    cluster.put_lease("other-runner-7", datetime.now(UTC))
    before = settled_state(cluster)

    held = cluster.apply(plan_body(Flow.LIVE), "--detailed-exitcode")

    assert held.returncode == 4, held
    assert "other-runner-7" in held.stderr
    assert state_of(cluster) == before
    assert annotation(cluster.vm(), JOURNAL_ANNOTATION) is None

    cluster.expire_lease()
    taken = cluster.apply(plan_body(Flow.LIVE))

    assert_moved(cluster, taken, source_hash)
    spec = cluster.lease()["spec"]
    assert spec["leaseTransitions"] == 1, "taken over from the other runner"
    assert not spec.get("holderIdentity"), "and released at the end"


# --------------------------------------------------------------------------------------------
# 4. the API server restarts mid-run, on an engine of its own
# --------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def restart_engine() -> Iterator[RealEngine]:
    """A real engine for the restart tests only (seeded); stopped after them."""
    with running_engine("the restart tests' real engine") as engine:
        seed.seed_cluster(engine.api())
        yield engine


@pytest.fixture
def restart_cluster(
    restart_engine: RealEngine, tmp_path: Path, eventually: Eventually
) -> Iterator[Cluster]:
    """``cluster`` on ``restart_engine``: a fresh namespace, deleted with its VMs afterwards;
    the test fails if a process of that engine died meanwhile."""
    plane = restart_engine.control_plane
    api = restart_engine.api()
    namespace = plane.create_namespace("api-server-restart")
    side = NodeSide(api, restart_engine.nodes)
    cluster = Cluster(api, plane, namespace, tmp_path, eventually, side)
    try:
        yield cluster
    finally:
        cluster.close()
        _delete_namespace(api, namespace)
    _assert_alive(restart_engine)


@pytest.mark.xdist_group("real-engine-restart")
class TestOnAnEngineOfTheirOwn:
    """Neither the session's engine nor its seed (``restart_engine`` is seeded), so these do not
    join the session engine's worker."""

    @pytest.fixture(autouse=True)
    def cluster_objects(self) -> None:
        """Overrides the module's autouse seed of the session's engine."""

    def test_api_server_restart_mid_migration_the_run_reconnects_and_finishes(
        self, restart_cluster: Cluster
    ) -> None:
        cluster = restart_cluster
        cluster.create_vm()
        source_hash = cluster.content(SOURCE)
        vmi_uid = cluster.vmi()["metadata"]["uid"]
        cluster.fault("virtualmachines", VM, Fault(FaultAction.STALL))
        try:
            proc = cluster.start(plan_body(Flow.LIVE))

            def migrating() -> bool:
                assert proc.poll() is None, f"apply ended early: {proc.communicate()}"
                journal = cluster.journal()
                vmims = get_json(cluster.api, KV, cluster.ns, "virtualmachineinstancemigrations")
                running = [
                    m for m in vmims["items"] if (m.get("status") or {}).get("phase") == "Running"
                ]
                return bool(running) and journal is not None and journal.step is Step.WAIT_MIGRATION

            cluster.eventually(migrating, timeout=30, what="apply waiting on a stalled migration")

            restart_apiserver(cluster.control_plane, proc)
        finally:
            cluster.clear_fault("virtualmachines", VM)
        done = finish(proc, timeout=60)

        assert_moved(cluster, done, source_hash)
        assert cluster.vmi()["metadata"]["uid"] == vmi_uid

    def test_api_server_restart_mid_copy_the_run_reconnects_and_finishes(
        self, restart_cluster: Cluster
    ) -> None:
        """The restart while the destination copy waits, which is released only after it: the
        copy finishing (cdi-controller and the node side's workers), the volume swap admitted,
        the migration and its hand-off are all done by clients that had to reconnect."""
        cluster = restart_cluster
        proc, target = stalled_move(cluster)
        source_hash = cluster.content(SOURCE)
        vmi_uid = cluster.vmi()["metadata"]["uid"]
        try:
            restart_apiserver(cluster.control_plane, proc)
        finally:
            cluster.clear_fault("datavolumes", target)
        done = finish(proc, timeout=60)

        assert_moved(cluster, done, source_hash)
        assert cluster.vmi()["metadata"]["uid"] == vmi_uid


def restart_apiserver(control_plane: ControlPlane, proc: subprocess.Popen[str]) -> None:
    """Restart kube-apiserver under the waiting ``proc``, which must outlive it."""
    old_pid = control_plane.pids["kube-apiserver"]
    began = time.monotonic()

    control_plane.restart_apiserver()

    # printed because the engine's leader-elected controllers exit when they cannot renew
    # their Lease for long enough (cdi-controller: 10 s): a slow restart shows here
    print(f"kube-apiserver restarted in {time.monotonic() - began:.1f}s", flush=True)
    assert control_plane.pids["kube-apiserver"] != old_pid
    assert proc.poll() is None, f"apply gave up on the restart: {proc.communicate()}"
