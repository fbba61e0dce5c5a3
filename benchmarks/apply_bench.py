"""Benchmark `apply`: N VMs moved with instant (or ``--copy-seconds-per-gib``) copies, in
namespaces of F VMs, on a local control plane this script starts with the real engine
(upstream virt-controller, virt-api and cdi-controller, kube-scheduler,
kube-controller-manager, KWOK and our node side).

    .venv/bin/python benchmarks/apply_bench.py [--vms 50] [--fleet F] [--parallel P]
        [--copy-seconds-per-gib S] [--profile FILE]

Setup (not measured): the seed's StorageClasses and KubeVirt CR, then two namespaces (three
with ``--parallel`` P > 1) each holding N **moved** VMs (``--vms``, ``vm-000``...: the seed's
Fedora VM shape, a dataVolumeTemplate disk of 10Gi imported onto ``local-hostpath``, plus
cloud-init; every one is started and, once all run, every second one stopped again
(runStrategy Halted, VMI gone), so half move live (KubeVirt volume migration) and half
offline (a CDI clone of a stopped VM)) and F - N **bystanders** (``--fleet`` F, default N;
``vm-z0000``...): stopped VMs of the same shape and the plan's label whose disk is a plain
``persistentVolumeClaim`` on ``local-hostpath``, Bound the cheapest way
kube-controller-manager accepts (a statically provisioned volume: a PersistentVolume
pre-bound to the claim, both marked Bound; no provisioner, import or pod; ``bystander``).
The plan selects every VM of the namespace, so `apply` observes, watches and judges the
whole fleet (each bystander a MoveOffline), and ``--max-vms N`` makes it move the N moved
VMs, first in its (namespace, name) order. Copies are instant while loading;
``--copy-seconds-per-gib S`` then slows every copy (a CDI clone, a migration's copy) to S
seconds per GiB, 10 x S per disk (the node side's ConfigMap kube-system/testenv-faults).
With instant copies (the node side's ``copy_seconds_per_gib`` 0; it still spends at least
0.2 s on a live migration's copy, its floor) every second a move takes is control-plane
overhead (API round trips, watches, the controllers' reactions, our own work). The
controllers' reactions are upstream's (virt-controller's workqueues, cdi-controller's
reconciles, the scheduler), so the raw baseline below, measured in the same run, is the
yardstick: prefer ratios against it.

Measured, in the same run:

- ``apply`` (the real CLI in a fresh process, ``-o json``) on a plan selecting the N VMs of
  the first namespace, moving them to ``ceph-rbd`` one at a time. Per VM: the state machine's
  wall time (the ApplyReport outcome's ``seconds``, with its per-step ``steps``) and the VM's
  whole cycle (from the API server's audit log: the time between the end of one VM's move and
  the end of the next, which also counts the fresh observation, diff and render each VM gets
  before its move starts).
- The **raw baseline**: the bare requests of the same moves in the second namespace, sent by a
  small script in a fresh process with ``requests`` (what ``kubectl create``/``kubectl patch``/
  ``kubectl wait`` would send, minus kubectl's start-up): for each VM the DataVolume(s)
  ``plan`` rendered are POSTed, a LIST+WATCH waits until they are Succeeded, the VM is read and
  the rendered JSON patch sent (resourceVersion refreshed), and for a running VM a LIST+WATCH
  waits until KubeVirt's migration Succeeded and the VMI's volumeStatus names the targets. No
  journal, no verification, no rollback, no Lease: the minimum any client pays.
- **Requests per VM**, counted by the API server: the reconciler and the baseline run as
  ServiceAccounts of their own (bound to cluster-admin), and the audit log says who sent
  what; the cluster's writers (``WRITERS``: the ServiceAccounts ``kubevirt-controller``
  (virt-controller), ``cdi-sa`` (cdi-controller) and ``kubevirt-handler`` (the node side's
  virt-handler), and ``admin`` (kube-scheduler, kube-controller-manager, KWOK, the node
  side's CDI workers and CSI)) and the API server's loopback traffic are not counted.
- **Reaction latency**: from the cluster finishing what a step waits for to the
  reconciler's next request. Both timestamps come from the API server's audit log (one
  clock, microseconds): the cluster's write (its ``ResponseComplete`` stageTimestamp) and
  the reconciler's next request (its ``requestReceivedTimestamp``). Every wait of `apply` is
  a set of streams, each a LIST then a WATCH from the list's resourceVersion
  (``reconciler.kube.watch``); in the audit log a wait is the LISTs the reconciler sent since
  its previous request that a WATCH of the same stream followed, and it ends with the
  reconciler's next request (Lease renewals and Events aside). Each wait is named by its step:
  the one the reconciler last wrote into the VM's journal annotation before it (the audit log
  keeps the body of its VM patches). Its trigger is the last write by one of the cluster's
  ``WRITERS`` to an object one of those streams follows (same resource and namespace, the
  name of a name-selected stream, the labels of a label-selected one) that completed after
  every stream had listed (from then on only a watch event can tell the reconciler) and
  before that request; the audit log keeps the written object, so each trigger is named with
  its writer (e.g. ``DataVolume Succeeded (cdi-sa)``); a write to a watched object by a user
  outside ``WRITERS`` refuses the run. A wait whose condition already held once its streams
  had listed (no such write) has no reaction to measure: it is counted as "ready on arrival".
  Should the cluster write again to a watched object while the reconciler is already reacting, the
  later write would be taken and the figure come out smaller; so a second figure is given
  from the write that completes the step as the step defines it (``COMPLETING``: DataVolume
  Succeeded, VirtualMachineInstanceMigration Succeeded, VMI or launcher pod gone, VMI
  Running), which can only be earlier.

- With ``--parallel`` P > 1, **apply --parallel P** (its own ServiceAccount) on the third
  namespace after apply --parallel 1: its process wall time against apply --parallel 1's for
  the same load and sample, and its requests per VM.
- **KubeVirt's queue**, every run: each VirtualMachineInstanceMigration in the audit log, from
  its creation to its first write past Pending (its target pod created) and to its end
  (Succeeded, Failed or deleted). virt-controller holds a migration Pending only while
  ``parallelMigrationsPerCluster`` others run in the cluster or
  ``parallelOutboundMigrationsPerNode`` leave its source node (``handleTargetPodCreation``),
  and a running one is unfinished: so if at no instant more migrations were unfinished than
  those limits (of the KubeVirt CR), in the cluster and per source node, none could wait for
  a slot. The run is refused otherwise, or if a migration never finished, or if
  virt-controller's log has a "Waiting to schedule target pod ... limit" line. The time each
  spent Pending is printed.

Fails (non-zero exit, the reason on stderr), printing no figures, if the engine cannot start
or loses a process, a move of `apply` or of the baseline fails, a moved VM is not in sync
afterwards or a bystander was moved, or the queue check above fails. The load average is
printed with the figures: the machine may be shared.

Goals (issue 9): median overhead <= 2 s per VM, reaction <= 250 ms. Issue 19: the median
per-VM overhead at F = 1,000 within 1.2x of F = 50 (two runs); ``--parallel 5`` at least 3x
faster than ``--parallel 1`` with slow copies, none of ours in KubeVirt's queue. For scale:
kubevirt-migration-controller requeues every 20 s while it waits, MTC every 3 s.
``--profile FILE`` runs `apply` under cProfile and prints its top functions.
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import itertools
import json
import math
import os
import pstats
import shutil
import statistics
import subprocess
import sys
import tempfile
import textwrap
import time
from collections import Counter, defaultdict
from collections.abc import Callable, Iterator, Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

import pykube

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from reconciler import engine  # noqa: E402
from reconciler.apply.slots import MigrationLimits  # noqa: E402
from testenv import seed  # noqa: E402
from testenv.controlplane import ControlPlane, ControlPlaneError  # noqa: E402

KV = "kubevirt.io/v1"
BENCH_NS = "vmsr-bench"  # the identities and the Lease
RECONCILER, BASELINE = "reconciler", "baseline"
PARALLEL = "parallel"  # apply --parallel P: an identity of its own, so its requests are its own
# Who writes the objects the reconciler waits on (full user names, as the audit log has them).
# ``Event.user`` keeps the last part ("kubevirt-controller").
WRITERS: dict[str, str] = {
    "system:serviceaccount:kubevirt:kubevirt-controller": "virt-controller",
    "system:serviceaccount:cdi:cdi-sa": "cdi-controller",
    "system:serviceaccount:kubevirt:kubevirt-handler": "the node side's virt-handler",
    "admin": "kube-scheduler, kube-controller-manager, KWOK, the node side's CDI and CSI",
}
WATCHED = (
    "virtualmachines",
    "virtualmachineinstances",
    "virtualmachineinstancemigrations",
    "datavolumes",
    "persistentvolumeclaims",
    "pods",
)
WRITES = ("create", "update", "patch", "delete", "deletecollection")
JOURNAL = "vmstorage.dev/journal"
NOT_A_WAKE_UP = ("leases", "events")  # background writes of a run, not a reaction
GOAL_OVERHEAD, GOAL_REACTION = 2.0, 0.250
PODS_PER_NODE = 100  # the fake nodes allow 110 (testenv.real.objects.NODE_ALLOCATABLE)
MAX_PARALLEL = 20  # apply's --parallel limit (reconciler.cli.apply.MAX_PARALLEL)


def audit_policy(writers: list[str]) -> str:
    """The API server's audit policy: the writers' writes to the objects the reconciler
    watches keep the written object (each trigger of a wake-up is named), the reconciler's VM
    patches keep their body (the journal says which step a wait is in), everything else is
    recorded without bodies, but the writers' Events, Leases and Node heartbeats, which are
    dropped."""
    return textwrap.dedent(
        f"""\
        apiVersion: audit.k8s.io/v1
        kind: Policy
        omitStages: [RequestReceived]
        rules:
          # the cluster's own bookkeeping: never a trigger, and most of the log (the log's
          # writes slow the API server in blocking mode)
          - level: None
            users: {json.dumps(writers)}
            resources:
              - {{group: "", resources: [events, nodes, nodes/status]}}
              - {{group: coordination.k8s.io, resources: [leases]}}
              - {{group: events.k8s.io, resources: [events]}}
          - level: RequestResponse
            users: {json.dumps(writers)}
            verbs: [create, update, patch, delete]
            resources:
              - {{group: kubevirt.io, resources: [virtualmachines, virtualmachines/status,
                  virtualmachineinstances, virtualmachineinstances/status,
                  virtualmachineinstancemigrations, virtualmachineinstancemigrations/status]}}
              - {{group: cdi.kubevirt.io, resources: [datavolumes, datavolumes/status]}}
              - {{group: "", resources: [persistentvolumeclaims, persistentvolumeclaims/status,
                  pods, pods/status]}}
          - level: Request
            users: [system:serviceaccount:{BENCH_NS}:{RECONCILER}]
            verbs: [patch]
            resources:
              - {{group: kubevirt.io, resources: [virtualmachines]}}
          - level: Metadata
        """
    )


# The raw baseline: the same moves as bare requests (see the module docstring).
BASELINE_SCRIPT = textwrap.dedent(
    """
    import json, sys, time, requests, yaml
    cfg = yaml.safe_load(open(sys.argv[1]))
    work = json.load(open(sys.argv[2]))
    server = cfg["clusters"][0]["cluster"]["server"]
    ca = cfg["clusters"][0]["cluster"]["certificate-authority"]
    s = requests.Session()
    s.headers["Authorization"] = "Bearer " + cfg["users"][0]["user"]["token"]
    sent = 0

    def call(method, path, **kw):
        global sent
        sent += 1
        r = s.request(method, server + path, verify=ca, **kw)
        r.raise_for_status()
        return r

    def wait(path, params, done):
        body = call("GET", path, params=params).json()
        objs = {o["metadata"]["name"]: o for o in body["items"]}
        if done(objs):
            return
        watch = {**params, "watch": "1", "resourceVersion": body["metadata"]["resourceVersion"]}
        with call("GET", path, params=watch, stream=True,
                  headers={"Accept-Encoding": "identity"}) as r:
            buf = b""
            for chunk in r.iter_content(chunk_size=None):
                buf += chunk
                *lines, buf = buf.split(b"\\n")
                for line in lines:
                    event = json.loads(line)
                    o = event["object"]
                    if event["type"] == "DELETED":
                        objs.pop(o["metadata"]["name"], None)
                    elif event["type"] != "BOOKMARK":
                        objs[o["metadata"]["name"]] = o
                    if done(objs):
                        return
        raise SystemExit("watch ended early: " + path)

    def phase(o):
        return (o or {}).get("status", {}).get("phase")

    results = []
    for vm in work:
        ns, name, targets = vm["namespace"], vm["name"], vm["targets"]
        begun, before = time.perf_counter(), sent
        dvs = f"/apis/cdi.kubevirt.io/v1beta1/namespaces/{ns}/datavolumes"
        for dv in vm["dataVolumes"]:
            call("POST", dvs, json=dv)
        wanted = [dv["metadata"]["name"] for dv in vm["dataVolumes"]]
        wait(dvs, {}, lambda o: all(phase(o.get(n)) == "Succeeded" for n in wanted))
        path = f"/apis/kubevirt.io/v1/namespaces/{ns}/virtualmachines/{name}"
        patch = vm["patch"]
        patch[0]["value"] = call("GET", path).json()["metadata"]["resourceVersion"]
        call("PATCH", path, data=json.dumps(patch),
             headers={"Content-Type": "application/json-patch+json"})
        if vm["running"]:
            vmims = f"/apis/kubevirt.io/v1/namespaces/{ns}/virtualmachineinstancemigrations"
            label = {"labelSelector": f"kubevirt.io/volume-update-migration={name}"}
            wait(vmims, label, lambda o: any(phase(m) == "Succeeded" for m in o.values()))
            vmis = f"/apis/kubevirt.io/v1/namespaces/{ns}/virtualmachineinstances"

            def moved(o):
                statuses = (o.get(name) or {}).get("status", {}).get("volumeStatus") or []
                claims = {v["name"]: (v.get("persistentVolumeClaimInfo") or {}).get("claimName")
                          for v in statuses}
                return all(claims.get(k) == t for k, t in targets.items())

            wait(vmis, {"fieldSelector": f"metadata.name={name}"}, moved)
        results.append({"name": name, "running": vm["running"],
                        "seconds": time.perf_counter() - begun, "requests": sent - before})
    print(json.dumps(results))
    """
)


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--vms", type=int, default=50, help="VMs moved per namespace (half running; default 50)"
    )
    parser.add_argument(
        "--fleet",
        type=int,
        help="VMs per namespace in the cluster (default: --vms): the --vms moved ones and "
        "FLEET - VMS stopped bystanders the plan selects too (see the docstring)",
    )
    parser.add_argument(
        "--parallel",
        type=int,
        default=1,
        help="also move a third namespace (same load) with apply --parallel P, after apply "
        "--parallel 1, and compare their wall times (default 1: not run)",
    )
    parser.add_argument(
        "--copy-seconds-per-gib",
        type=float,
        default=0.0,
        help="copy speed set once the load is in (the VMs' disks are 10Gi); default 0: instant",
    )
    parser.add_argument("--profile", type=Path, help="run apply under cProfile, stats to FILE")
    parser.add_argument(
        "--keep", action="store_true", help="keep the work directory (audit log, kubeconfigs)"
    )
    args = parser.parse_args()
    if args.fleet is None:
        args.fleet = args.vms
    if args.vms < 4:
        parser.error("--vms must be at least 4 (two live and two offline moves)")
    if args.fleet < args.vms:
        parser.error("--fleet must be at least --vms")
    if not 1 <= args.parallel <= MAX_PARALLEL:
        parser.error(f"--parallel must be 1 to {MAX_PARALLEL} (apply's own limit)")
    if args.copy_seconds_per_gib < 0:
        parser.error("--copy-seconds-per-gib must not be negative")
    return args


def main() -> int:
    args = parse_args()
    n, fleet = args.vms, args.fleet

    workdir = Path(tempfile.mkdtemp(prefix="vmsr-apply-bench-"))
    policy, audit_log = workdir / "audit-policy.yaml", workdir / "audit.log"
    policy.write_text(audit_policy(list(WRITERS)))
    audit_args = [
        f"--audit-policy-file={policy}",
        f"--audit-log-path={audit_log}",
        "--audit-log-format=json",
        "--audit-log-mode=blocking",
        "--audit-log-maxbackup=0",  # rotated files are all kept (and read: audit_lines)
    ]
    loads: dict[str, tuple[float, float, float]] = {}
    parallel: ParallelRun | None = None
    controller_log = ""
    try:
        with start_engine(n, audit_args) as cluster:
            cp = cluster.control_plane
            api = cp.api()
            users = [RECONCILER, BASELINE] + ([PARALLEL] if args.parallel > 1 else [])
            kubeconfigs = identities(cp, api, workdir, users)
            apply_ns = cp.create_namespace("apply")
            raw_ns = cp.create_namespace("raw")
            namespaces = [apply_ns, raw_ns]
            if args.parallel > 1:
                namespaces.append(cp.create_namespace("parallel"))
            load(api, cp, namespaces, Load(n, fleet))
            cluster.check()
            limits = MigrationLimits.of_kubevirt(kubevirt_cr(api))
            if args.copy_seconds_per_gib:
                cluster.set_copy_rate(args.copy_seconds_per_gib)
            loads["baseline"] = os.getloadavg()
            raw = run_baseline(cp, kubeconfigs[BASELINE], raw_ns, workdir, n)
            loads["apply"] = os.getloadavg()
            report, wall = run_apply(
                kubeconfigs[RECONCILER], apply_ns, workdir, n, profile=args.profile
            )
            if args.parallel > 1:
                loads["parallel"] = os.getloadavg()
                p_report, p_wall = run_apply(
                    kubeconfigs[PARALLEL], namespaces[2], workdir, n, parallel=args.parallel
                )
                parallel = ParallelRun(args.parallel, namespaces[2], p_report, p_wall)
            loads["end"] = os.getloadavg()
            for ns in namespaces:
                check_in_sync(cp, ns, workdir, n)
            cluster.check()
            controller_log = cluster.controller_log()
            described = cluster.description
        events = read_audit(audit_log)
    except ControlPlaneError as error:
        raise SystemExit(f"the real engine failed: {error}") from error
    finally:
        if args.keep:
            say(f"kept {workdir} (audit log: {audit_log})")
        else:
            shutil.rmtree(workdir, ignore_errors=True)
    figures(
        args,
        events,
        Runs(described, loads, apply_ns, raw_ns, namespaces, report, wall, raw, parallel),
        limits,
        controller_log,
    )
    return 0


@dataclass
class Runs:
    """What one benchmark run measured, before the audit log is read."""

    described: str
    loads: dict[str, tuple[float, float, float]]
    apply_ns: str
    raw_ns: str
    namespaces: list[str]
    report: dict[str, Any]
    wall: float
    raw: list[Any]
    parallel: ParallelRun | None


def figures(
    args: argparse.Namespace,
    events: list[Event],
    runs: Runs,
    limits: MigrationLimits,
    controller_log: str,
) -> None:
    """Check the run is whole (``SystemExit`` otherwise) and print its figures."""
    n, fleet = args.vms, args.fleet
    apply_ns, raw_ns, parallel, loads = runs.apply_ns, runs.raw_ns, runs.parallel, runs.loads
    report, raw, wall = runs.report, runs.raw, runs.wall
    writers = {user.rsplit(":", 1)[-1] for user in WRITERS}
    check_writers(events, apply_ns, writers)
    if parallel is not None:
        check_writers(events, parallel.namespace, writers, PARALLEL)
    waits = waits_of(events, writers)
    patched = {
        user: {
            e.name
            for e in events
            if (e.user, e.namespace, e.resource, e.verb) == (user, ns, "virtualmachines", "patch")
        }
        for user, ns in ((RECONCILER, apply_ns), (BASELINE, raw_ns))
    }
    check_complete(report, raw, n, waits, patched)
    if parallel is not None:
        check_complete_parallel(parallel, n, events)
    migrations = migrations_of(events)
    check_never_queued(migrations, limits, controller_log, runs.namespaces)
    print(
        f"engine: {runs.described}; per namespace: {fleet} VMs ({n} moved: {n - n // 2} running, "
        f"{n // 2} stopped; {fleet - n} stopped bystanders); copies at "
        f"{args.copy_seconds_per_gib:g} s per GiB (10Gi disks)"
    )
    print(
        "load average (1, 5, 15 min) at the start of "
        + "; ".join(f"{k}: " + " ".join(f"{x:.2f}" for x in v) for k, v in loads.items())
    )
    print_results(n, report, wall, raw, events=events, waits=waits, ns=apply_ns)
    print_migrations(
        migrations, limits, apply_ns, raw_ns, parallel=parallel, logged=bool(controller_log)
    )
    if parallel is not None:
        print_parallel(parallel, n, wall, events)
    if args.profile:
        print(f"\ncProfile of apply (top 25 by cumulative time, stats in {args.profile}):")
        pstats.Stats(str(args.profile)).sort_stats("cumulative").print_stats(25)


@dataclass(frozen=True)
class Load:
    """What each namespace holds: ``moved`` full VMs (``vm_names``) and ``fleet - moved``
    bystanders (``bystander_names``)."""

    moved: int
    fleet: int


@dataclass
class ParallelRun:
    """The run of apply --parallel ``lanes`` in its own namespace."""

    lanes: int
    namespace: str
    report: dict[str, Any]
    wall: float


@dataclass
class Cluster:
    """A running engine: its control plane, what it is, and ``check``, which raises
    ``SystemExit`` naming what broke (a process that exited): figures from an engine that
    lost a part would not be the engine's. ``set_copy_rate(seconds_per_gib)`` changes the
    copy speed from now on (returns once the node side has it); ``controller_log()`` is
    virt-controller's log ("" if it has no process)."""

    control_plane: ControlPlane
    description: str
    broken: Callable[[], list[str]]
    set_copy_rate: Callable[[float], None]
    controller_log: Callable[[], str]

    def check(self) -> None:
        found = self.broken()
        if found:
            raise SystemExit("the engine broke during the run: " + "; ".join(found))


@contextlib.contextmanager
def start_engine(vms: int, apiserver_args: list[str]) -> Iterator[Cluster]:
    """Start the real engine with ``apiserver_args`` (the audit log), seed the cluster objects
    (StorageClasses, KubeVirt CR) and yield it; stop it on the way out. Copies start
    instant (the load's imports), ``Cluster.set_copy_rate`` slows them afterwards."""
    from testenv.real.engine import RealEngine

    # Every VM runs at first (a launcher pod each) while the disks import (an importer pod
    # each): enough fake nodes that the scheduler never runs out of pod slots.
    count = max(3, math.ceil(4 * vms / PODS_PER_NODE))
    nodes = [f"node-{i}" for i in range(1, count + 1)]
    with RealEngine(
        log=say, nodes=nodes, copy_seconds_per_gib=0.0, apiserver_args=apiserver_args
    ) as real:
        seed.seed_cluster(real.api())
        versions = real.binaries
        description = "real" + (
            f" (KubeVirt {versions.kubevirt_version}, CDI {versions.cdi_version}, "
            f"Kubernetes {versions.kube_version}; {len(nodes)} KWOK nodes)"
            if versions is not None
            else ""
        )

        def controller_log() -> str:
            proc = real.processes.get("virt-controller")
            return proc.log.read_text(errors="replace") if proc is not None else ""

        yield Cluster(
            real.control_plane,
            description,
            lambda: [
                f"{name} exited; its log ends:\n{real.log_tail(name, 20)}" for name in real.dead()
            ],
            lambda rate: node_copy_rate(real.api(), rate),
            controller_log,
        )


def node_copy_rate(api: pykube.HTTPClient, rate: float) -> None:
    """The real engine's node side copies at ``rate`` seconds per GiB from now on: key
    ``copy-seconds-per-gib`` of ConfigMap kube-system/testenv-faults (``testenv.node.faults``),
    then wait until the node side acknowledged that resourceVersion."""
    body = {
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": {"name": "testenv-faults", "namespace": "kube-system"},
        "data": {"copy-seconds-per-gib": str(rate)},
    }
    response = api.patch(
        version="v1",
        namespace="kube-system",
        url="configmaps/testenv-faults",
        data=json.dumps(body),
        headers={"Content-Type": "application/merge-patch+json"},
    )
    if response.status_code == 404:
        response = api.post(
            version="v1", namespace="kube-system", url="configmaps", data=json.dumps(body)
        )
    api.raise_for_status(response)
    written = str(response.json()["metadata"]["resourceVersion"])

    def seen() -> bool:
        got = api.get(version="v1", namespace="kube-system", url="configmaps/testenv-faults-seen")
        if got.status_code == 404:
            return False
        api.raise_for_status(got)
        return str((got.json().get("data") or {}).get("resourceVersion")) == written

    poll(seen, "the node side to take the copy speed", 60.0)


def say(message: str) -> None:
    print(f"[bench] {message}", file=sys.stderr, flush=True)


# ------------------------------------------------------------------------------------------
# Setup
# ------------------------------------------------------------------------------------------


def identities(
    cp: ControlPlane, api: pykube.HTTPClient, workdir: Path, users: list[str]
) -> dict[str, Path]:
    """A ServiceAccount (cluster-admin) each for the reconciler, the baseline and the
    parallel apply, so the audit log tells their requests apart; the Lease lives in the same
    namespace."""
    post(api, "v1", None, "namespaces", seed.namespace(BENCH_NS))
    found = {}
    for who in users:
        token = cp.service_account_token(BENCH_NS, who)
        binding = {
            "apiVersion": "rbac.authorization.k8s.io/v1",
            "kind": "ClusterRoleBinding",
            "metadata": {"name": f"vmsr-bench-{who}"},
            "roleRef": {
                "apiGroup": "rbac.authorization.k8s.io",
                "kind": "ClusterRole",
                "name": "cluster-admin",
            },
            "subjects": [{"kind": "ServiceAccount", "name": who, "namespace": BENCH_NS}],
        }
        post(api, "rbac.authorization.k8s.io/v1", None, "clusterrolebindings", binding)
        found[who] = cp.write_kubeconfig(workdir / f"{who}.kubeconfig", token)
    return found


def vm_names(n: int) -> list[str]:
    """The moved VMs of a namespace."""
    return [f"vm-{i:03d}" for i in range(n)]


def bystander_names(count: int) -> list[str]:
    """The bystanders of a namespace: "vm-z..." sorts after every "vm-<digits>", so in the
    plan's (namespace, name) order the moved VMs come first and ``--max-vms`` takes them."""
    return [f"vm-z{i:04d}" for i in range(count)]


def load(api: pykube.HTTPClient, cp: ControlPlane, namespaces: list[str], spec: Load) -> None:
    """Per namespace, ``spec.moved`` full VMs (running; once all run, every second one is
    stopped) and then ``spec.fleet - spec.moved`` bystanders (``bystander``): after the
    imports, as cdi-controller reconciles every claim of the cluster and 2,000 new ones slow
    the imports to a crawl."""
    begun = time.monotonic()
    n, extra = spec.moved, spec.fleet - spec.moved
    timeout = max(600.0, 3.0 * n * len(namespaces))  # the real engine imports ~1 disk a second
    for ns in namespaces:
        for name in vm_names(n):
            vm = seed.fedora_vm(ns, name, f"{name}-disk", size="10Gi")
            vm["metadata"]["labels"]["bench"] = "true"
            seed.create(api, vm)
    for ns in namespaces:
        poll(functools.partial(count_running, api, ns, n), f"{n} VMIs Running in {ns}", timeout)
    for ns in namespaces:
        for name in vm_names(n)[1::2]:
            merge(api, ns, name, {"spec": {"runStrategy": "Halted"}})
    for ns in namespaces:
        poll(functools.partial(count_vmis, api, ns, n - n // 2), f"half stopped in {ns}", timeout)
    if extra:
        clients = [cp.api() for _ in range(8)]
        jobs = [(ns, name) for ns in namespaces for name in bystander_names(extra)]

        def one(index: int) -> None:
            bystander(clients[index % len(clients)], *jobs[index])

        with ThreadPoolExecutor(max_workers=len(clients)) as pool:
            list(pool.map(one, range(len(jobs))))
        for ns in namespaces:
            poll(
                functools.partial(count_bound, api, ns, extra),
                f"{extra} bystander claims Bound in {ns}",
                max(900.0, 1.0 * extra),
                every=2.0,
            )
        say(f"{extra} bystanders per namespace in {time.monotonic() - begun:.0f}s")
    say(
        f"loaded {spec.fleet} VMs ({n} to move) into each of {', '.join(namespaces)} "
        f"in {time.monotonic() - begun:.0f}s"
    )


def bystander(api: pykube.HTTPClient, ns: str, name: str) -> None:
    """One bystander: a stopped VM (the Fedora shape, the plan's label) whose disk is a plain
    ``persistentVolumeClaim`` volume on the source class, already Bound, so the plan selects
    it and judges it a MoveOffline. Bound the cheapest way kube-controller-manager accepts: a
    statically provisioned volume, i.e. a PersistentVolume pre-bound to the claim
    (``claimRef``) and the claim naming it (``volumeName``), both marked Bound (what
    kube-controller-manager's binder writes for such a pair; it checks them and binds them
    again). No provisioner, import or pod: four writes. The reconciler reads no PersistentVolume."""
    claim, size = f"{name}-disk", "10Gi"
    volume = f"bench-{ns}-{claim}"
    modes = ["ReadWriteOnce"]
    post(
        api,
        "v1",
        None,
        "persistentvolumes",
        {
            "apiVersion": "v1",
            "kind": "PersistentVolume",
            "metadata": {"name": volume},
            "spec": {
                "capacity": {"storage": size},
                "accessModes": modes,
                "volumeMode": "Filesystem",
                "storageClassName": seed.SOURCE_CLASS,
                "persistentVolumeReclaimPolicy": "Retain",
                "claimRef": {
                    "apiVersion": "v1",
                    "kind": "PersistentVolumeClaim",
                    "namespace": ns,
                    "name": claim,
                },
                "csi": {"driver": "kubevirt.io.hostpath-provisioner", "volumeHandle": volume},
            },
        },
    )
    post(
        api,
        "v1",
        ns,
        "persistentvolumeclaims",
        {
            "apiVersion": "v1",
            "kind": "PersistentVolumeClaim",
            "metadata": {"name": claim, "namespace": ns},
            "spec": {
                "storageClassName": seed.SOURCE_CLASS,
                "accessModes": modes,
                "volumeMode": "Filesystem",
                "volumeName": volume,
                "resources": {"requests": {"storage": size}},
            },
        },
    )
    bound = {"phase": "Bound", "accessModes": modes, "capacity": {"storage": size}}
    status(api, "v1", ns, f"persistentvolumeclaims/{claim}", {"status": bound})
    status(api, "v1", None, f"persistentvolumes/{volume}", {"status": {"phase": "Bound"}})
    vm = seed.fedora_vm(ns, name, claim, running=False, size=size)
    vm["metadata"]["labels"]["bench"] = "true"
    del vm["spec"]["dataVolumeTemplates"]
    vm["spec"]["template"]["spec"]["volumes"][0] = {
        "name": "datavolumedisk1",
        "persistentVolumeClaim": {"claimName": claim},
    }
    post(api, KV, ns, "virtualmachines", vm)


def status(
    api: pykube.HTTPClient, version: str, namespace: str | None, path: str, body: dict[str, Any]
) -> None:
    """Merge-patch ``body`` into the status subresource of ``path`` ("<plural>/<name>")."""
    kwargs: dict[str, Any] = {
        "version": version,
        "url": f"{path}/status",
        "data": json.dumps(body),
        "headers": {"Content-Type": "application/merge-patch+json"},
    }
    if namespace:
        kwargs["namespace"] = namespace
    api.raise_for_status(api.patch(**kwargs))


BIND_COMPLETED = "pv.kubernetes.io/bind-completed"  # kube-controller-manager's mark of a bound pair


def count_bound(api: pykube.HTTPClient, ns: str, wanted: int) -> bool:
    """``wanted`` bystander claims of ``ns`` Bound and marked bind-completed by
    kube-controller-manager: it binds each static pair again (four writes) under its client's
    rate limit (20 a second), so 3,000 bystanders keep it busy for about ten minutes, and a
    claim a move creates meanwhile waits behind them."""
    response = api.get(version="v1", namespace=ns, url="persistentvolumeclaims")
    api.raise_for_status(response)
    bound = sum(
        1
        for c in response.json()["items"]
        if str(c["metadata"]["name"]).startswith("vm-z")
        and (c.get("status") or {}).get("phase") == "Bound"
        and (c["metadata"].get("annotations") or {}).get(BIND_COMPLETED) == "yes"
    )
    return bound >= wanted


def kubevirt_cr(api: pykube.HTTPClient) -> dict[str, Any] | None:
    response = api.get(version=KV, namespace="kubevirt", url="kubevirts")
    api.raise_for_status(response)
    found = response.json()["items"]
    return dict(found[0]) if found else None


def count_vmis(api: pykube.HTTPClient, ns: str, wanted: int) -> bool:
    return len(items(api, ns, "virtualmachineinstances")) == wanted


def count_running(api: pykube.HTTPClient, ns: str, wanted: int) -> bool:
    vmis = items(api, ns, "virtualmachineinstances")
    return sum(1 for v in vmis if (v.get("status") or {}).get("phase") == "Running") == wanted


def items(api: pykube.HTTPClient, ns: str, plural: str) -> list[dict[str, Any]]:
    response = api.get(version=KV, namespace=ns, url=plural)
    api.raise_for_status(response)
    found: list[dict[str, Any]] = response.json()["items"]
    return found


def poll(probe: Callable[[], bool], what: str, timeout: float, every: float = 0.2) -> None:
    """Setup only (nothing here is measured): check ``probe`` every ``every`` s until it
    holds."""
    deadline = time.monotonic() + timeout
    while not probe():
        if time.monotonic() > deadline:
            raise SystemExit(f"timed out after {timeout:.0f}s waiting for {what}")
        time.sleep(every)


def merge(api: pykube.HTTPClient, ns: str, name: str, body: dict[str, Any]) -> None:
    response = api.patch(
        version=KV,
        namespace=ns,
        url=f"virtualmachines/{name}",
        data=json.dumps(body),
        headers={"Content-Type": "application/merge-patch+json"},
    )
    api.raise_for_status(response)


def post(
    api: pykube.HTTPClient, version: str, namespace: str | None, plural: str, body: dict[str, Any]
) -> None:
    kwargs: dict[str, Any] = {"version": version, "url": plural, "data": json.dumps(body)}
    if namespace:
        kwargs["namespace"] = namespace
    response = api.post(**kwargs)
    if response.status_code != 409:
        api.raise_for_status(response)


def plan_file(workdir: Path, ns: str) -> Path:
    path = workdir / f"{ns}.yaml"
    path.write_text(
        textwrap.dedent(f"""\
        apiVersion: vmstorage.dev/v1alpha1
        kind: StoragePlan
        metadata: {{name: bench}}
        spec:
          namespace: {ns}
          storageClass: {seed.TARGET_CLASS}
          selector: {{matchLabels: {{bench: "true"}}}}
        """)
    )
    return path


# ------------------------------------------------------------------------------------------
# The runs
# ------------------------------------------------------------------------------------------


def run_baseline(cp: ControlPlane, kubeconfig: Path, ns: str, workdir: Path, n: int) -> list[Any]:
    """Render the moves with `plan` (not measured), then send those of the ``n`` moved VMs
    raw in a fresh process."""
    result = engine.plan(
        [str(plan_file(workdir, ns))], kubeconfig=str(cp.kubeconfig), manifests=True
    )
    running = {v.name for v in result.verdicts if v.action.value == "MoveLive"}
    work = [
        {
            "namespace": key[0],
            "name": key[1],
            "running": key[1] in running,
            "dataVolumes": [dict(dv) for dv in vm.data_volumes],
            "patch": [dict(op) for op in vm.vm_patch],
            "targets": dict(vm.target_names),
        }
        for key, vm in sorted(result.fully_rendered.items())
        if key[1] in set(vm_names(n))
    ]
    work_file = workdir / "baseline.json"
    work_file.write_text(json.dumps(work))
    say(f"raw baseline: {len(work)} moves in {ns} ...")
    out = subprocess.run(
        [sys.executable, "-c", BASELINE_SCRIPT, str(kubeconfig), str(work_file)],
        capture_output=True,
        text=True,
        cwd=ROOT,
        check=False,
    )
    if out.returncode != 0:
        raise SystemExit(f"baseline failed (rc {out.returncode}):\n{out.stderr[-3000:]}")
    moves: list[Any] = json.loads(out.stdout)
    return moves


def run_apply(
    kubeconfig: Path,
    ns: str,
    workdir: Path,
    n: int,
    *,
    profile: Path | None = None,
    parallel: int = 1,
) -> tuple[dict[str, Any], float]:
    """apply (the CLI, a fresh process) on the plan of ``ns``, ``--max-vms n`` (the moved VMs,
    first in the plan's order), ``--parallel``: its ApplyReport and its process wall time."""
    argv = [
        "apply",
        str(plan_file(workdir, ns)),
        "--kubeconfig",
        str(kubeconfig),
        "--lease-namespace",
        BENCH_NS,
        "-o",
        "json",
        "--compact",
        "--max-vms",
        str(n),
        "--parallel",
        str(parallel),
    ]
    prefix = ["-m", "cProfile", "-o", str(profile)] if profile else []
    say(f"apply --parallel {parallel}: {n} VMs of {ns} ...")
    begun = time.perf_counter()
    out = subprocess.run(
        [sys.executable, *prefix, "-m", "reconciler", *argv],
        capture_output=True,
        text=True,
        cwd=ROOT,
        check=False,
    )
    wall = time.perf_counter() - begun
    if out.returncode != 0:
        raise SystemExit(f"apply failed (rc {out.returncode}):\n{out.stderr[-3000:]}")
    report: dict[str, Any] = json.loads(out.stdout)
    return report, wall


def check_in_sync(cp: ControlPlane, ns: str, workdir: Path, n: int) -> None:
    """The ``n`` moved VMs of ``ns`` are in sync, and no bystander moved."""
    result = engine.plan([str(plan_file(workdir, ns))], kubeconfig=str(cp.kubeconfig))
    moved = set(vm_names(n))
    left = [v.name for v in result.verdicts if v.name in moved and v.action.value != "InSync"]
    if left:
        raise SystemExit(f"not every moved VM of {ns} is in sync: {left}")
    touched = [
        v.name for v in result.verdicts if v.name not in moved and v.action.value == "InSync"
    ]
    if touched:
        raise SystemExit(f"bystanders of {ns} were moved: {touched[:5]}")


# ------------------------------------------------------------------------------------------
# The audit log
# ------------------------------------------------------------------------------------------


@dataclass
class Event:
    """One request as the audit log records it (stage ResponseStarted or ResponseComplete)."""

    audit_id: str
    user: str  # the last part: "reconciler", "baseline", "admin", "kubevirt-controller", ...
    verb: str
    stage: str
    resource: str
    namespace: str
    name: str
    uri: str
    received: float
    completed: float
    labels: Mapping[str, str] = field(default_factory=dict)
    what: str = ""  # the written object, e.g. "DataVolume Succeeded" (the writers' writes)
    step: str = ""  # the step a journal write of the reconciler names
    phase: str = ""  # the written object's status.phase (the writers' writes)
    source_node: str = ""  # a written migration's status.migrationState.sourceNode
    code: int = 0  # the answer's HTTP status code (0 before ResponseComplete)

    @property
    def stream(self) -> tuple[str, str, str]:
        """What a LIST or WATCH follows: path, field and label selector."""
        parts = urlsplit(self.uri)
        query = parse_qs(parts.query)
        return (
            parts.path,
            query.get("fieldSelector", [""])[0],
            query.get("labelSelector", [""])[0],
        )

    @property
    def selector(self) -> dict[str, str]:
        """The labelSelector's equality terms (all the reconciler sends)."""
        text = parse_qs(urlsplit(self.uri).query).get("labelSelector", [""])[0]
        return dict(term.split("=", 1) for term in text.split(",") if "=" in term)


def _stamp(text: str) -> float:
    return datetime.fromisoformat(text.replace("Z", "+00:00")).timestamp()


def audit_lines(path: Path) -> Iterator[str]:
    """The lines of the audit log at ``path`` and of the files the API server rotated it into
    (``audit-<time>.log`` beside it, at ``--audit-log-maxsize``), oldest first."""
    rotated = sorted(path.parent.glob(f"{path.stem}-*{path.suffix}"))
    for part in [*rotated, path]:
        with part.open() as lines:
            yield from lines


def read_audit(path: Path) -> list[Event]:
    events = []
    labels_seen: dict[tuple[str, str, str], Mapping[str, str]] = {}
    for line in audit_lines(path):
        doc = json.loads(line)
        ref = doc.get("objectRef") or {}
        obj = doc.get("responseObject") or {}
        # a create by generateName (KubeVirt's migrations) names its object in the answer only
        name = ref.get("name") or (obj.get("metadata") or {}).get("name")
        key = (str(ref.get("resource", "")), str(ref.get("namespace", "")), str(name))
        if obj.get("kind") not in (None, "Status"):  # a deleted object keeps its last labels
            labels_seen[key] = (obj.get("metadata") or {}).get("labels") or {}
        # a Status answer's "status" is a string ("Success"): only objects have a phase
        found = obj.get("status") if obj.get("kind") not in (None, "Status") else None
        status: Mapping[str, Any] = found if isinstance(found, dict) else {}
        events.append(
            Event(
                audit_id=str(doc["auditID"]),
                user=str(doc["user"]["username"]).rsplit(":", 1)[-1],
                verb=str(doc["verb"]),
                stage=str(doc["stage"]),
                resource=key[0],
                namespace=key[1],
                name=str(name or ""),
                uri=str(doc.get("requestURI", "")),
                received=_stamp(doc["requestReceivedTimestamp"]),
                completed=_stamp(doc["stageTimestamp"]),
                labels=labels_seen.get(key, {}),
                what=_what(str(doc["verb"]), obj),
                step=_journal_step(doc.get("requestObject")),
                phase=str(status.get("phase") or ""),
                source_node=str((status.get("migrationState") or {}).get("sourceNode") or ""),
                code=int((doc.get("responseStatus") or {}).get("code") or 0),
            )
        )
    return events


def _what(verb: str, obj: Mapping[str, Any]) -> str:
    kind = str(obj.get("kind") or "")
    if not kind or kind == "Status":
        return ""
    if verb == "delete" or (obj.get("metadata") or {}).get("deletionTimestamp"):
        return f"{kind} deleted"
    phase = (obj.get("status") or {}).get("phase")
    return f"{kind} {phase}" if phase else f"{kind} written"


# What ends each wait, as the step itself defines it (the cluster finishing a step).
COMPLETING = {
    "wait-targets": ("DataVolume Succeeded", "DataVolume PendingPopulation"),
    "wait-migration": ("VirtualMachineInstanceMigration Succeeded",),
    "wait-stopped": ("VirtualMachineInstance deleted", "Pod deleted", "Pod Succeeded"),
    "wait-running": ("VirtualMachineInstance Running",),
}


@dataclass
class Wait:
    """One wait of the reconciler: the streams it listed and watched, when every stream had
    listed (``opened``), the request it sent next (``woke``) and the cluster's writes to
    what it followed in between."""

    step: str
    lists: list[Event]
    opened: float
    woke: float
    writes: list[Event]

    @property
    def trigger(self) -> Event | None:
        return self.writes[-1] if self.writes else None

    @property
    def reaction(self) -> float | None:
        return None if self.trigger is None else self.woke - self.trigger.completed

    @property
    def from_completing(self) -> float | None:
        wanted = COMPLETING.get(self.step, ())
        done = [w for w in self.writes if w.what in wanted]
        return None if not done else self.woke - done[-1].completed


def _journal_step(patch: Any) -> str:
    """The step a JSON patch of the VM writes into its journal annotation ("" for any other
    patch). The journal is written before each step, so a wait belongs to the step last
    journaled before it."""
    if not isinstance(patch, list):
        return ""
    for op in patch:
        if (op or {}).get("op") not in ("add", "replace"):  # a test op holds the old journal
            continue
        path, value = (op or {}).get("path", ""), (op or {}).get("value")
        if path.endswith("vmstorage.dev~1journal") and isinstance(value, str):
            return str(json.loads(value).get("step", ""))
        if path == "/metadata/annotations" and isinstance(value, dict) and JOURNAL in value:
            return str(json.loads(value[JOURNAL]).get("step", ""))
    return ""


def _follows(stream: Event, write: Event) -> bool:
    if (stream.resource, stream.namespace) != (write.resource, write.namespace):
        return False
    if stream.name and stream.name != write.name:
        return False
    return all(write.labels.get(k) == v for k, v in stream.selector.items())


def _watched_lists(events: list[Event], user: str) -> set[str]:
    """The LISTs a WATCH of the same stream follows (the first half of a wait's stream), as
    opposed to one-off LISTs (the observation before each move, ownership checks)."""
    per_stream: dict[tuple[str, str, str], list[Event]] = defaultdict(list)
    for e in events:
        if e.user == user and e.verb in ("list", "watch") and e.stage == "ResponseComplete":
            per_stream[e.stream].append(e)
    paired = set()
    for requests in per_stream.values():
        requests.sort(key=lambda e: e.received)
        for first, then in itertools.pairwise(requests):
            if first.verb == "list" and then.verb == "watch":
                paired.add(first.audit_id)
    return paired


def waits_of(events: list[Event], writers: set[str], user: str = RECONCILER) -> list[Wait]:
    """The reconciler's waits. A wait is the LISTs of its streams (each followed by a WATCH of
    the same stream) sent since the reconciler's previous request; it ends with the next
    request (Lease renewals and Events aside). Its triggers are the ``writers``' writes to the
    objects those streams follow, completed after every stream had listed (from then on only
    the watches can tell the reconciler) and before that request."""
    done = sorted(
        (e for e in events if e.user == user and e.stage == "ResponseComplete"),
        key=lambda e: e.received,
    )
    watched = _watched_lists(events, user)
    writes = sorted(
        (
            e
            for e in events
            if e.user in writers
            and e.stage == "ResponseComplete"
            and e.verb in WRITES
            and e.resource in WATCHED
        ),
        key=lambda e: e.completed,
    )
    waits: list[Wait] = []
    lists: list[Event] = []
    step = ""
    for e in done:
        step = e.step or step
        if e.verb == "watch" or e.resource in NOT_A_WAKE_UP:
            continue
        if e.verb == "list":
            if e.audit_id in watched:
                lists.append(e)
            continue
        if lists:
            opened = max(x.completed for x in lists)
            seen = [
                w
                for w in writes
                if opened < w.completed < e.received and any(_follows(x, w) for x in lists)
            ]
            waits.append(Wait(step or "?", lists, opened, e.received, seen))
            lists = []
    return waits


def check_writers(events: list[Event], ns: str, writers: set[str], user: str = RECONCILER) -> None:
    """Every write to a watched object of ``ns`` came from the reconciler or one of the
    engine's ``writers``: a writer missing from ``WRITERS`` would make its reactions
    invisible (waits counted as ready on arrival), so the run is refused instead."""
    others = Counter(
        e.user
        for e in events
        if e.namespace == ns
        and e.stage == "ResponseComplete"
        and e.verb in WRITES
        and e.resource in WATCHED
        and e.user not in writers | {user}
    )
    if others:
        raise SystemExit(f"writes to the watched objects of {ns} by users not in WRITERS: {others}")


def cycles(events: list[Event], names: list[str], ns: str) -> dict[str, float]:
    """Per VM (but the first): from the end of the previous VM's move (the patch that closes
    its journal) to the end of this one's."""
    last: dict[str, float] = {}
    for e in events:
        if (e.user, e.namespace, e.resource, e.verb) == (
            RECONCILER,
            ns,
            "virtualmachines",
            "patch",
        ) and e.name in names:
            last[e.name] = max(last.get(e.name, 0.0), e.completed)
    order = sorted(last, key=last.__getitem__)
    return {name: last[name] - last[before] for before, name in itertools.pairwise(order)}


# ------------------------------------------------------------------------------------------
# KubeVirt's migration queue
# ------------------------------------------------------------------------------------------

FINAL = ("Succeeded", "Failed")
QUEUED_LOG = "Waiting to schedule target pod"  # virt-controller's handleTargetPodCreation


@dataclass
class Migration:
    """One VirtualMachineInstanceMigration as the audit log shows it: created (its create's
    ResponseComplete), left Pending (the first write with a phase past Pending: virt-controller
    created its target pod, Scheduling), finished (the first write with a final phase, or its
    delete), its source node (``?`` if no write named one), all ``inf`` when never seen."""

    namespace: str
    name: str
    created: float
    started: float = math.inf
    finished: float = math.inf
    source_node: str = "?"

    @property
    def pending(self) -> float:
        return self.started - self.created


def migrations_of(events: list[Event]) -> list[Migration]:
    found: dict[tuple[str, str], Migration] = {}
    for e in sorted(events, key=lambda e: e.completed):
        if (
            e.resource != "virtualmachineinstancemigrations"
            or e.stage != "ResponseComplete"
            or not 200 <= e.code < 300  # a refused write (e.g. a create a webhook denied)
        ):
            continue
        key = (e.namespace, e.name)
        if e.verb == "create":
            found.setdefault(key, Migration(e.namespace, e.name, e.completed))
            continue
        m = found.get(key)
        if m is None or e.verb not in WRITES:
            continue
        if e.source_node and m.source_node == "?":
            m.source_node = e.source_node
        if e.phase not in ("", "Pending") and m.started == math.inf:
            m.started = e.completed
        if (e.phase in FINAL or e.verb == "delete") and m.finished == math.inf:
            m.finished = e.completed
    return list(found.values())


def most_at_once(migrations: list[Migration]) -> tuple[int, dict[str, int]]:
    """The most migrations unfinished at once, in the cluster and per source node (a
    migration that never named its source node counts on every node)."""
    edges = sorted(
        [(m.created, 1, m) for m in migrations] + [(m.finished, -1, m) for m in migrations],
        key=lambda x: (x[0], x[1]),  # an end before a start at the same instant
    )
    now: list[Migration] = []
    most, per_node = 0, Counter[str]()
    for _, delta, m in edges:
        if delta > 0:
            now.append(m)
        else:
            now.remove(m)
        most = max(most, len(now))
        nodes = Counter(x.source_node for x in now)
        unknown = nodes.pop("?", 0)
        for node in {*nodes, *(x.source_node for x in migrations)} - {"?"}:
            per_node[node] = max(per_node[node], nodes[node] + unknown)
    return most, dict(per_node)


def check_never_queued(
    migrations: list[Migration], limits: MigrationLimits, controller_log: str, namespaces: list[str]
) -> None:
    """Refuse the run if a migration may have waited in KubeVirt's queue. virt-controller
    starts a migration (creates its target pod) only while fewer than
    ``parallelMigrationsPerCluster`` others run in the cluster and fewer than
    ``parallelOutboundMigrationsPerNode`` leave its source node; a running one is unfinished.
    So if at no instant more migrations were unfinished (created, not yet Succeeded, Failed or
    deleted; counted from the audit log) than those limits, in the cluster and per source
    node, none of them could be held for a slot. virt-controller's log is read too: it says
    "Waiting to schedule target pod ... limit" for every one it held."""
    if not migrations:
        raise SystemExit("no VirtualMachineInstanceMigration in the audit log")
    foreign = [m for m in migrations if m.namespace not in namespaces]
    if foreign:
        raise SystemExit(f"migrations outside the benchmark's namespaces: {foreign[:3]}")
    unfinished = [m for m in migrations if m.finished == math.inf]
    if unfinished:
        raise SystemExit(f"migrations never finished: {[m.name for m in unfinished[:5]]}")
    most, per_node = most_at_once(migrations)
    busiest = max(per_node.values(), default=0)
    if most > limits.per_cluster or busiest > limits.per_node:
        raise SystemExit(
            f"up to {most} migrations unfinished at once (per source node: {per_node}), over "
            f"KubeVirt's limits ({limits.per_cluster} per cluster, {limits.per_node} per node): "
            "one may have waited in its queue"
        )
    held = [line for line in controller_log.splitlines() if QUEUED_LOG in line and "limit" in line]
    if held:
        raise SystemExit(
            f"virt-controller held {len(held)} migration(s) for a slot, e.g.: {held[0][:300]}"
        )


def print_migrations(
    migrations: list[Migration],
    limits: MigrationLimits,
    apply_ns: str,
    raw_ns: str,
    *,
    parallel: ParallelRun | None,
    logged: bool,
) -> None:
    most, per_node = most_at_once(migrations)
    print(
        f"\nKubeVirt's queue: {len(migrations)} migrations, at most {most} unfinished at once "
        f"in the cluster (limit {limits.per_cluster}) and {max(per_node.values(), default=0)} "
        f"from one node (limit {limits.per_node}): none could wait for a slot"
        + (
            "; virt-controller's log holds no 'Waiting to schedule target pod' line"
            if logged
            else ""
        )
    )
    names = [("raw baseline", raw_ns), ("apply --parallel 1", apply_ns)]
    if parallel is not None:
        names.append((f"apply --parallel {parallel.lanes}", parallel.namespace))
    for who, ns in names:
        pending = [m.pending for m in migrations if m.namespace == ns]
        if pending:
            print(
                f"  {who}: {len(pending)} migrations, Pending (creation to target pod) median "
                f"{statistics.median(pending) * 1000:.0f} ms, max {max(pending) * 1000:.0f} ms"
            )


def check_complete_parallel(run: ParallelRun, n: int, events: list[Event]) -> None:
    outcomes = run.report.get("outcomes") or []
    bad = [o for o in outcomes if o["result"] != "Succeeded"]
    if bad or len(outcomes) != n:
        raise SystemExit(
            f"apply --parallel {run.lanes} moved {len(outcomes) - len(bad)} of {n} VMs: {bad[:2]}"
        )
    live = sum(1 for o in outcomes if o["flow"] == "live")
    if live != n - n // 2:
        raise SystemExit(f"apply --parallel {run.lanes} moved {live} live, not {n - n // 2}")
    if not any(e.user == PARALLEL for e in events):
        raise SystemExit("no request of the parallel apply in the audit log")


def print_parallel(run: ParallelRun, n: int, serial_wall: float, events: list[Event]) -> None:
    outcomes = run.report["outcomes"]
    secs = [o["seconds"] for o in outcomes]
    asked = requests_by(events, PARALLEL)
    print(
        f"\napply --parallel {run.lanes}: {n} VMs in {run.wall:.1f}s (process wall) against "
        f"{serial_wall:.1f}s for apply --parallel 1 in the same run: "
        f"{serial_wall / run.wall:.2f}x faster; per VM (each lane's state machine) median "
        f"{statistics.median(secs):.2f}s, max {max(secs):.2f}s; "
        f"{sum(asked.values()) / n:.1f} requests per VM"
    )


# ------------------------------------------------------------------------------------------
# Results
# ------------------------------------------------------------------------------------------


def pct(values: list[float], q: float) -> float:
    """Nearest-rank percentile (q in 0..100) of a non-empty list."""
    ordered = sorted(values)
    return ordered[max(1, math.ceil(len(ordered) * q / 100)) - 1]


def _ms(values: list[float]) -> str:
    if not values:
        return "- | - | -"
    return (
        f"{statistics.median(values) * 1000:.0f} | {pct(values, 90) * 1000:.0f} "
        f"| {max(values) * 1000:.0f}"
    )


def requests_by(events: list[Event], user: str) -> Counter[str]:
    """Requests of ``user`` by verb, each counted once (a watch has two audit stages)."""
    seen: dict[str, str] = {}
    for e in events:
        if e.user == user:
            seen[e.audit_id] = e.verb
    return Counter(seen.values())


def check_complete(
    report: dict[str, Any],
    raw: list[Any],
    n: int,
    waits: list[Wait],
    patched: Mapping[str, set[str]],
) -> None:
    """Refuse (``SystemExit``) a partial run: every VM moved by both `apply` and the baseline,
    half of them live, and the whole run in the audit log (a VM patch of every VM by each,
    ``patched`` by user; waits found)."""
    outcomes = report.get("outcomes") or []
    bad = [o for o in outcomes if o["result"] != "Succeeded"]
    if bad or len(outcomes) != n:
        raise SystemExit(f"apply moved {len(outcomes) - len(bad)} of {n} VMs: {bad[:2]}")
    live = sum(1 for o in outcomes if o["flow"] == "live")
    raw_live = sum(1 for r in raw if r["running"])
    if len(raw) != n or live != n - n // 2 or raw_live != live:
        raise SystemExit(
            f"expected {n - n // 2} live and {n // 2} offline moves each; apply moved {live} "
            f"live, the baseline {len(raw)} VMs ({raw_live} live)"
        )
    for user in (RECONCILER, BASELINE):
        missing = set(vm_names(n)) - patched.get(user, set())
        if missing:
            raise SystemExit(f"the audit log misses the VM patches of {user} to {sorted(missing)}")
    if not waits:
        raise SystemExit("no wait of apply found in the audit log: is the audit policy on?")


def print_results(
    n: int,
    report: dict[str, Any],
    wall: float,
    raw: list[Any],
    *,
    events: list[Event],
    waits: list[Wait],
    ns: str,
) -> None:
    """Print the figures of a complete run (``check_complete`` passed)."""
    outcomes = report["outcomes"]
    cycle = cycles(events, vm_names(n), ns)
    raw_secs = {
        "live": [r["seconds"] for r in raw if r["running"]],
        "offline": [r["seconds"] for r in raw if not r["running"]],
        "all": [r["seconds"] for r in raw],
    }
    groups = {
        "live": [o for o in outcomes if o["flow"] == "live"],
        "offline": [o for o in outcomes if o["flow"] == "offline"],
        "all": outcomes,
    }
    print(
        f"apply: {n} VMs in {wall:.1f}s (process wall, start-up included): {wall / n:.2f}s per VM\n"
    )
    print(
        "| flow | VMs | apply per VM, median (s) | p90 (s) | max (s) | VM cycle, median (s) "
        "| raw baseline per VM, median (s) | apply - raw, medians (s) | apply / raw |"
    )
    print("|" + "---|" * 9)
    for flow, group in groups.items():
        secs = [o["seconds"] for o in group]
        cyc = [cycle[o["name"]] for o in group if o["name"] in cycle]
        base = statistics.median(raw_secs[flow])
        print(
            f"| {flow} | {len(group)} | {statistics.median(secs):.2f} | {pct(secs, 90):.2f} "
            f"| {max(secs):.2f} | {statistics.median(cyc):.2f} | {base:.2f} "
            f"| {statistics.median(secs) - base:.2f} | {statistics.median(secs) / base:.2f}x |"
        )

    mine, theirs = requests_by(events, RECONCILER), requests_by(events, BASELINE)
    print(
        f"\nrequests (counted by the API server, audit log): apply {sum(mine.values())}, "
        f"{sum(mine.values()) / n:.1f} per VM ("
        + ", ".join(f"{verb} {count}" for verb, count in sorted(mine.items()))
        + f"); raw baseline {sum(theirs.values()) / n:.1f} per VM"
    )

    print(
        "\n| wait | waits | ready on arrival | reacted | reaction: median (ms) | p90 | max "
        "| from the step's completing write: median (ms) | p90 | max | last write (most often) |"
    )
    print("|" + "---|" * 11)
    every, every_done = [], []
    for step in dict.fromkeys(w.step for w in waits):  # in the order first seen
        group_w = [w for w in waits if w.step == step]
        if not group_w:
            continue
        reacted = [r for w in group_w if (r := w.reaction) is not None]
        completing = [r for w in group_w if (r := w.from_completing) is not None]
        every += reacted
        every_done += completing
        common = Counter(
            f"{w.trigger.what} ({w.trigger.user})" for w in group_w if w.trigger is not None
        ).most_common(1)
        print(
            f"| {step} | {len(group_w)} | {len(group_w) - len(reacted)} | {len(reacted)} "
            f"| {_ms(reacted)} | {_ms(completing)} | {common[0][0] if common else '-'} |"
        )
    print(
        f"| all | {len(waits)} | {len(waits) - len(every)} | {len(every)} | {_ms(every)} "
        f"| {_ms(every_done)} | |"
    )

    print("\nper step, median seconds (the outcomes' steps):")
    for flow in ("live", "offline"):
        steps: dict[str, list[float]] = defaultdict(list)
        for o in groups[flow]:
            for s in o["steps"]:
                steps[s["step"]].append(s["seconds"])
        print(
            f"  {flow}: " + ", ".join(f"{k} {statistics.median(v):.3f}" for k, v in steps.items())
        )
    overhead = statistics.median(o["seconds"] for o in outcomes)
    reaction = statistics.median(every) if every else math.nan
    print(
        f"\ngoals: median overhead {overhead:.2f}s per VM (<= {GOAL_OVERHEAD:.0f}s: "
        f"{'met' if overhead <= GOAL_OVERHEAD else 'MISSED'}); median reaction "
        f"{reaction * 1000:.0f} ms (<= {GOAL_REACTION * 1000:.0f} ms: "
        f"{'met' if reaction <= GOAL_REACTION else 'MISSED'})"
    )
    print(f"(python {sys.version.split()[0]}, {os.cpu_count()} cores)")


if __name__ == "__main__":
    sys.exit(main())
