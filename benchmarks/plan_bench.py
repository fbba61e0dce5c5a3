"""Benchmark `plan` against a raw LIST of the same kinds, on the local control plane.

    .venv/bin/python benchmarks/plan_bench.py [--sizes 2000 10000 20000] [--repeat 3]
        [--page-size N] [--fresh]

For each N it loads N VMs (2 disks each: one from a dataVolumeTemplate, one plain DataVolume;
every PVC Bound; half the VMs running with a VMI) into a fresh namespace, then measures in the
same run, each in a fresh process, interleaved within each repeat:

- the **baseline**: the same 8 LISTs `plan` makes, each as one unpaginated raw HTTP GET with
  JSON decoding and nothing else (what `kubectl get -o json` of those kinds costs, minus
  kubectl's own startup);
- the **floor**: the same 8 LISTs fetched concurrently, read but not decoded (what the API
  server and the wire cost);
- `plan` (the real CLI, `-o json`) as it ships: the kinds that grow with the fleet streamed by
  watch-list, the others in LIST pages of 500 objects (``--page-size`` sets
  ``$VMSR_LIST_PAGE_SIZE``: also the objects handed to the parser at a time);
- `plan` with watch-lists off (``$VMSR_WATCH_LIST=0``: every kind in LIST pages, as before
  watch-lists), for comparison in the same conditions.

Wall time, peak RSS and CPU time of each, and of kube-apiserver meanwhile (on a loaded machine
the wall-time ratios follow the CPU each side needs more than on an idle one); API requests made
by each `plan`, counted by the API server (apiserver_request_total on /metrics), not by the
client: every request to the kinds plan reads, and of them the LIST requests (one per page);
and where the API server served its LISTs from: its watch cache or etcd
(apiserver_cache_list_total, apiserver_storage_list_total; a consistent read also asks etcd for
its current revision, one storage "list" each). Any other request the server answered meanwhile
(its own loopback traffic) is printed, not counted. The load average is printed with each
repeat: the machine may be shared.

**The state measured.** The API server serves a continue page from a snapshot of its watch
cache, which it keeps for a kind only until etcd is compacted past the kind's last write:
kube-apiserver compacts every 5 minutes (``--etcd-compaction-interval``) to the revision of 5
minutes before, so a kind not written for 5-10 minutes (most of a quiet fleet) has its continue
pages read from etcd. After loading, the benchmark brings the cluster to that steady state at
once: it compacts etcd to its current revision the way a kube-apiserver does (``compact_rev_key``
bumped in a transaction, then the compaction), which every kube-apiserver watches, and waits
until a probe's continue page is read from etcd. ``--fresh`` skips this and measures right after
loading (continue pages from the cache, until the next compaction).

Figures are medians of --repeat runs (peak RSS: the largest), and ratios are against the
baseline and the floor measured in the same run. From the peak RSS of `plan` at the sizes
measured (a least squares line through them), the largest fleet whose `plan` fits the CronJob's
memory limit (512 MiB, deploy/components/cronjob/cronjob.yaml) is printed.

Goals (issue 19): at N = 10,000 (20,000 PVCs) plan <= 1.2x the baseline and peak RSS <= 200 MB.
"""

from __future__ import annotations

import argparse
import base64
import functools
import json
import os
import re
import statistics
import subprocess
import sys
import tempfile
import textwrap
import time
from collections.abc import Callable, Iterable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pykube
import requests

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from testenv.controlplane import ControlPlane  # noqa: E402

GI = 2**30
MI = 2**20
CRONJOB_MEMORY_LIMIT = 512 * MI  # deploy/components/cronjob/cronjob.yaml: limits.memory
# The kinds `plan` lists (reconciler/observe/fetch.py); requests to anything else are not its own.
OBSERVED = {
    "virtualmachines",
    "virtualmachineinstances",
    "virtualmachineinstancemigrations",
    "kubevirts",
    "persistentvolumeclaims",
    "datavolumes",
    "storageprofiles",
    "storageclasses",
}
SOURCE_CLASS, TARGET_CLASS = "bench-standard", "bench-fast"

# The baseline: exactly the LISTs `plan` issues, decoded, in a fresh interpreter.
BASELINE = textwrap.dedent(
    """
    import json, sys, requests, yaml
    cfg = yaml.safe_load(open(sys.argv[1]))
    server = cfg["clusters"][0]["cluster"]["server"]
    ca = cfg["clusters"][0]["cluster"]["certificate-authority"]
    token = cfg["users"][0]["user"]["token"]
    ns = sys.argv[2]
    s = requests.Session(); s.headers["Authorization"] = "Bearer " + token
    paths = [f"/apis/kubevirt.io/v1/namespaces/{ns}/virtualmachines",
             f"/apis/kubevirt.io/v1/namespaces/{ns}/virtualmachineinstances",
             f"/api/v1/namespaces/{ns}/persistentvolumeclaims",
             f"/apis/cdi.kubevirt.io/v1beta1/namespaces/{ns}/datavolumes",
             "/apis/storage.k8s.io/v1/storageclasses",
             "/apis/cdi.kubevirt.io/v1beta1/storageprofiles",
             "/apis/kubevirt.io/v1/kubevirts",
             f"/apis/kubevirt.io/v1/namespaces/{ns}/virtualmachineinstancemigrations"]
    # verify per request: a session-level CA loses to $REQUESTS_CA_BUNDLE in requests
    n = sum(len(s.get(server + p, verify=ca).json()["items"]) for p in paths)
    print(n)
    """
)

# The floor: the same LISTs, concurrently, read but not decoded.
FLOOR = BASELINE.replace(
    'n = sum(len(s.get(server + p, verify=ca).json()["items"]) for p in paths)\nprint(n)',
    "from concurrent.futures import ThreadPoolExecutor\n"
    "with ThreadPoolExecutor(len(paths)) as pool:\n"
    "    sizes = list(pool.map(lambda p: len(s.get(server + p, verify=ca).content), paths))\n"
    "print(sum(sizes))",
)
assert FLOOR != BASELINE

# Runs a command and prints its wall time, peak RSS and CPU time (user + system) of the child,
# as JSON.
TIMER = textwrap.dedent(
    """
    import json, resource, subprocess, sys, time
    t = time.perf_counter()
    p = subprocess.run(sys.argv[1:], stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    wall = time.perf_counter() - t
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    rss, cpu = usage.ru_maxrss * 1024, usage.ru_utime + usage.ru_stime
    print(json.dumps({"wall": wall, "rss": rss, "cpu": cpu, "rc": p.returncode,
                      "stdout": p.stdout.decode()[-400:], "stderr": p.stderr.decode()[-2000:]}))
    """
)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[2000, 10000, 20000])
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument(
        "--page-size", type=int, default=None, help="objects per LIST page of plan (default 500)"
    )
    parser.add_argument(
        "--fresh",
        action="store_true",
        help="measure right after loading (the watch cache still has the kinds' snapshots)",
    )
    args = parser.parse_args()

    rows = []
    with ControlPlane(log=lambda m: print(m, file=sys.stderr)) as cp:
        api = cp.api()
        setup_cluster(api)
        for n in args.sizes:
            namespace = cp.create_namespace(f"bench-{n}")
            print(f"loading {n} VMs into {namespace} ...", file=sys.stderr, flush=True)
            load(cp, namespace, n)
            if not args.fresh:
                settle_compacted(cp, api, namespace)
            rows.append(measure(cp, api, namespace, n, args.repeat, page_size=args.page_size))
            print_table(rows[-1:], file=sys.stderr)  # as it goes: a large run takes a while
    print_table(rows)
    print_fit(rows)
    state = (
        "fresh (continue pages from the watch cache)"
        if args.fresh
        else ("idle (etcd compacted past every kind's last write: continue pages from etcd)")
    )
    print(f"state measured: {state}")
    return 0


# ------------------------------------------------------------------------------------------
# Loading
# ------------------------------------------------------------------------------------------


def setup_cluster(api: pykube.HTTPClient) -> None:
    for name, default in ((SOURCE_CLASS, True), (TARGET_CLASS, False)):
        annotations = {"storageclass.kubernetes.io/is-default-class": "true"} if default else {}
        post(
            api,
            "storage.k8s.io/v1",
            None,
            "storageclasses",
            {
                "apiVersion": "storage.k8s.io/v1",
                "kind": "StorageClass",
                "metadata": {"name": name, "annotations": annotations},
                "provisioner": f"{name}.csi.example.com",
            },
        )
    post(
        api,
        "v1",
        None,
        "namespaces",
        {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "kubevirt"}},
    )
    post(
        api,
        "kubevirt.io/v1",
        "kubevirt",
        "kubevirts",
        {
            "apiVersion": "kubevirt.io/v1",
            "kind": "KubeVirt",
            "metadata": {"name": "kubevirt", "namespace": "kubevirt"},
            "spec": {
                "configuration": {"vmRolloutStrategy": "LiveUpdate"},
                "workloadUpdateStrategy": {"workloadUpdateMethods": ["LiveMigrate"]},
            },
        },
    )
    status(
        api,
        "kubevirt.io/v1",
        "kubevirt",
        "kubevirts",
        "kubevirt",
        body={"status": {"phase": "Deployed", "observedKubeVirtVersion": "v1.9.0"}},
    )


def load(cp: ControlPlane, namespace: str, n: int) -> None:
    """Create the N VMs with their DataVolumes, PVCs (Bound) and, for even i, a Running VMI."""
    apis = [cp.api() for _ in range(8)]

    def one(i: int) -> None:
        api = apis[i % len(apis)]
        for manifest, status_body, plural in objects_for(namespace, i):
            version = manifest["apiVersion"]
            post(api, version, namespace, plural, manifest)
            if status_body:
                status(
                    api, version, namespace, plural, manifest["metadata"]["name"], body=status_body
                )

    with ThreadPoolExecutor(max_workers=8) as pool:
        list(pool.map(one, range(n)))


def objects_for(namespace: str, i: int) -> Iterable[tuple[dict[str, Any], dict[str, Any], str]]:
    vm = f"vm-{i:05d}"
    root, data = f"{vm}-root", f"{vm}-data"
    for claim, size in ((root, 30 * GI), (data, 10 * GI)):
        storage = {
            "storageClassName": SOURCE_CLASS,
            "accessModes": ["ReadWriteOnce"],
            "resources": {"requests": {"storage": str(size)}},
        }
        yield (
            {
                "apiVersion": "cdi.kubevirt.io/v1beta1",
                "kind": "DataVolume",
                "metadata": {"name": claim, "namespace": namespace},
                "spec": {"source": {"blank": {}}, "storage": storage},
            },
            {"status": {"phase": "Succeeded", "progress": "100.0%", "claimName": claim}},
            "datavolumes",
        )
        yield (
            {
                "apiVersion": "v1",
                "kind": "PersistentVolumeClaim",
                "metadata": {"name": claim, "namespace": namespace},
                "spec": {**storage, "volumeMode": "Filesystem"},
            },
            {
                "status": {
                    "phase": "Bound",
                    "accessModes": ["ReadWriteOnce"],
                    "capacity": {"storage": str(size)},
                }
            },
            "persistentvolumeclaims",
        )
    running = i % 2 == 0
    volumes = [
        {"name": "rootdisk", "dataVolume": {"name": root}},
        {"name": "datadisk", "dataVolume": {"name": data}},
    ]
    spec = {
        "domain": {
            "devices": {
                "disks": [
                    {"name": "rootdisk", "disk": {"bus": "virtio"}},
                    {"name": "datadisk", "disk": {"bus": "virtio"}},
                ]
            },
            "resources": {"requests": {"memory": "1Gi"}},
        },
        "volumes": volumes,
    }
    yield (
        {
            "apiVersion": "kubevirt.io/v1",
            "kind": "VirtualMachine",
            "metadata": {"name": vm, "namespace": namespace, "labels": {"bench": "true"}},
            "spec": {
                "runStrategy": "Always" if running else "Halted",
                "dataVolumeTemplates": [
                    {
                        "metadata": {"name": root},
                        "spec": {
                            "source": {"blank": {}},
                            "storage": {"resources": {"requests": {"storage": str(30 * GI)}}},
                        },
                    }
                ],
                "template": {"metadata": {"labels": {"kubevirt.io/vm": vm}}, "spec": spec},
            },
        },
        {"status": {"printableStatus": "Running" if running else "Stopped", "ready": running}},
        "virtualmachines",
    )
    if running:
        yield (
            {
                "apiVersion": "kubevirt.io/v1",
                "kind": "VirtualMachineInstance",
                "metadata": {"name": vm, "namespace": namespace},
                "spec": spec,
            },
            {
                "status": {
                    "phase": "Running",
                    "nodeName": f"node-{i % 3 + 1}",
                    "conditions": [
                        {"type": "Ready", "status": "True"},
                        {"type": "LiveMigratable", "status": "True"},
                        {"type": "StorageLiveMigratable", "status": "True"},
                    ],
                }
            },
            "virtualmachineinstances",
        )


def post(
    api: pykube.HTTPClient, version: str, namespace: str | None, plural: str, body: dict[str, Any]
) -> None:
    kwargs: dict[str, Any] = {"version": version, "url": plural, "data": json.dumps(body)}
    if namespace:
        kwargs["namespace"] = namespace
    response = api.post(**kwargs)
    if response.status_code != 409:
        api.raise_for_status(response)


def status(
    api: pykube.HTTPClient,
    version: str,
    namespace: str | None,
    plural: str,
    name: str,
    *,
    body: dict[str, Any],
) -> None:
    kwargs: dict[str, Any] = {
        "version": version,
        "url": f"{plural}/{name}/status",
        "data": json.dumps(body),
        "headers": {"Content-Type": "application/merge-patch+json"},
    }
    if namespace:
        kwargs["namespace"] = namespace
    response = api.patch(**kwargs)
    if response.status_code == 404:  # kinds without a status subresource: patch the object
        kwargs["url"] = f"{plural}/{name}"
        response = api.patch(**kwargs)
    api.raise_for_status(response)


# ------------------------------------------------------------------------------------------
# The idle state: etcd compacted past the kinds' last writes
# ------------------------------------------------------------------------------------------


def etcd_url(cp: ControlPlane) -> str:
    """The etcd client URL kube-apiserver was started with (its command line)."""
    pid = cp.pids["kube-apiserver"]
    args = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
    for arg in args:
        if arg.startswith(b"--etcd-servers="):
            return arg.split(b"=", 1)[1].decode().split(",")[0]
    raise SystemExit("kube-apiserver runs without --etcd-servers?")


def compact_etcd(url: str) -> int:
    """Compact etcd to its current revision as kube-apiserver's compactor does
    (k8s.io/apiserver/pkg/storage/etcd3/compact.go): ``compact_rev_key`` set to the revision
    (every kube-apiserver watches that key and hands the revision to its watch caches, which
    drop their older snapshots), then the compaction itself. Through etcd's JSON gateway."""
    key = base64.b64encode(b"compact_rev_key").decode()
    session = requests.Session()
    session.trust_env = False
    got = session.post(f"{url}/v3/kv/range", json={"key": key}, timeout=10)
    got.raise_for_status()
    revision = int(got.json()["header"]["revision"])
    value = base64.b64encode(str(revision).encode()).decode()
    put = session.post(
        f"{url}/v3/kv/txn",
        json={"success": [{"request_put": {"key": key, "value": value}}]},
        timeout=10,
    )
    put.raise_for_status()
    session.post(
        f"{url}/v3/kv/compaction", json={"revision": revision}, timeout=60
    ).raise_for_status()
    return revision


def list_sources(api: pykube.HTTPClient) -> dict[str, dict[str, int]]:
    """resource -> {"cache": LISTs the watch cache served, "etcd": LISTs read from etcd}."""
    text = api.get(url="/metrics", version="/").text
    found: dict[str, dict[str, int]] = {}
    for metric, source in (
        ("apiserver_cache_list_total", "cache"),
        ("apiserver_storage_list_total", "etcd"),
    ):
        for m in re.finditer(rf"^{metric}\{{([^}}]*)\}} (\S+)$", text, re.MULTILINE):
            resource = _label(m.group(1), "resource")
            bucket = found.setdefault(resource, {"cache": 0, "etcd": 0})
            bucket[source] += int(float(m.group(2)))
    return found


def settle_compacted(cp: ControlPlane, api: pykube.HTTPClient, namespace: str) -> None:
    """Compact etcd past every write so far, then wait until the watch caches have dropped
    the loaded kinds' snapshots (they read the compaction every 15 s): a probe's continue
    page of DataVolumes (the slowest kind to read from etcd) is then read from etcd."""
    revision = compact_etcd(etcd_url(cp))
    print(f"etcd compacted at revision {revision}; waiting for the watch caches", file=sys.stderr)
    deadline = time.monotonic() + 90
    path = "datavolumes?limit=1"
    while True:
        before = list_sources(api).get("datavolumes", {}).get("etcd", 0)
        first = api.get(version="cdi.kubevirt.io/v1beta1", namespace=namespace, url=path)
        api.raise_for_status(first)
        token = first.json()["metadata"]["continue"]
        again = api.get(
            version="cdi.kubevirt.io/v1beta1",
            namespace=namespace,
            url=f"{path}&continue={token}",
        )
        api.raise_for_status(again)
        # the first page's consistent read asks etcd for its revision: one storage "list"
        if list_sources(api).get("datavolumes", {}).get("etcd", 0) - before >= 2:
            return
        if time.monotonic() > deadline:
            raise SystemExit("the watch cache kept serving continue pages 90 s after compaction")
        time.sleep(1)  # the watch caches poll the compaction every 15 s: a poll, not a wait


# ------------------------------------------------------------------------------------------
# Measuring
# ------------------------------------------------------------------------------------------


def request_counts(api: pykube.HTTPClient) -> dict[str, int]:
    """apiserver_request_total by label set: every request the API server has answered
    (/metrics scrapes themselves are not counted by the server)."""
    text = api.get(url="/metrics", version="/").text
    return {
        m.group(1): int(float(m.group(2)))
        for m in re.finditer(r"^apiserver_request_total\{([^}]*)\} (\S+)$", text, re.MULTILINE)
    }


def watches_open(api: pykube.HTTPClient) -> int:
    """WATCH requests in flight on the kinds plan reads (apiserver_longrunning_requests)."""
    text = api.get(url="/metrics", version="/").text
    return sum(
        int(float(m.group(2)))
        for m in re.finditer(
            r"^apiserver_longrunning_requests\{([^}]*)\} (\S+)$", text, re.MULTILINE
        )
        if _label(m.group(1), "verb") == "WATCH" and _label(m.group(1), "resource") in OBSERVED
    )


def _label(labels: str, name: str) -> str:
    found = re.search(rf'{name}="([^"]*)"', labels)
    return found.group(1) if found else ""


def server_cpu(cp: ControlPlane) -> float:
    """CPU seconds (user + system) kube-apiserver has used so far (/proc/<pid>/stat)."""
    fields = Path(f"/proc/{cp.pids['kube-apiserver']}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def timed(cp: ControlPlane, argv: list[str], env: dict[str, str] | None = None) -> dict[str, Any]:
    """``argv`` run in a fresh process: its wall time, peak RSS and CPU, and the CPU
    kube-apiserver used meanwhile (``server_cpu``: all of it serving this command, the
    benchmark's control plane having no other client)."""
    before = server_cpu(cp)
    out = subprocess.run(
        [sys.executable, "-c", TIMER, *argv],
        capture_output=True,
        text=True,
        check=True,
        cwd=ROOT,
        env=env,
    )
    result: dict[str, Any] = json.loads(out.stdout)
    result["server_cpu"] = server_cpu(cp) - before
    return result


def counted(
    api: pykube.HTTPClient, run: Callable[[], dict[str, Any]]
) -> tuple[dict[str, Any], int, int, dict[str, int]]:
    """Run ``run`` and return its result with the number of API requests it caused, how many
    of them were LISTs (one per page), and where the API server served LISTs of the kinds
    plan reads ({"cache": n, "etcd": n}).

    The API server's own loopback traffic (its Lease heartbeat and the controllers it runs)
    ticks on while we measure; requests by the `system:apiserver` machinery are told apart by
    the kinds they touch, and anything outside the kinds `plan` reads is printed to stderr so
    nothing is hidden. A WATCH is counted when it ends, which the server notices a moment
    after the client closed it: the count waits (up to 10 s) until no WATCH on those kinds is
    open.
    """
    open_before = watches_open(api)
    before, sources_before = request_counts(api), list_sources(api)
    result = run()
    deadline = time.monotonic() + 10
    while watches_open(api) > open_before and time.monotonic() < deadline:
        time.sleep(0.05)  # a poll of the server's own gauge, with a deadline
    after, sources_after = request_counts(api), list_sources(api)
    delta = {k: v - before.get(k, 0) for k, v in after.items() if v != before.get(k, 0)}
    ours = {k: v for k, v in delta.items() if _label(k, "resource") in OBSERVED}
    for labels, count in sorted(delta.items()):
        if labels not in ours:
            print(
                f"  (not counted, server-internal: {count} x {_label(labels, 'verb')} "
                f"{_label(labels, 'resource')})",
                file=sys.stderr,
            )
    lists = sum(v for k, v in ours.items() if _label(k, "verb") == "LIST")
    served = {"cache": 0, "etcd": 0}
    for resource, counts in sources_after.items():
        if resource in OBSERVED:
            for source in served:
                served[source] += counts[source] - sources_before.get(resource, {}).get(source, 0)
    return result, sum(ours.values()), lists, served


def measure(
    cp: ControlPlane,
    api: pykube.HTTPClient,
    namespace: str,
    n: int,
    repeat: int,
    *,
    page_size: int | None = None,
) -> dict[str, Any]:
    workdir = Path(tempfile.mkdtemp(prefix="vmsr-bench-"))
    plan_file = workdir / "bench.yaml"
    plan_file.write_text(
        textwrap.dedent(f"""\
        apiVersion: vmstorage.dev/v1alpha1
        kind: StoragePlan
        metadata: {{name: bench}}
        spec:
          namespace: {namespace}
          storageClass: {TARGET_CLASS}
          selector: {{matchLabels: {{bench: "true"}}}}
        """)
    )
    plan_argv = [
        sys.executable,
        "-m",
        "reconciler",
        "plan",
        str(plan_file),
        "--kubeconfig",
        str(cp.kubeconfig),
        "-o",
        "json",
        "--compact",  # what a pipe wants; indenting 2,000 VMs' JSON is pure-Python slow
    ]
    env = dict(os.environ)
    if page_size is not None:
        env["VMSR_LIST_PAGE_SIZE"] = str(page_size)
    streamed_env = {**env, "VMSR_WATCH_LIST": "1"}
    paged_env = {**env, "VMSR_WATCH_LIST": "0"}
    base_argv = [sys.executable, "-c", BASELINE, str(cp.kubeconfig), namespace]
    floor_argv = [sys.executable, "-c", FLOOR, str(cp.kubeconfig), namespace]
    runs: dict[str, list[dict[str, Any]]] = {"base": [], "floor": [], "plan": [], "paged": []}
    for i in range(repeat):
        load_average = os.getloadavg()[0]
        for name, argv, run_env in (
            ("base", base_argv, None),
            ("floor", floor_argv, None),
            ("plan", plan_argv, streamed_env),
            ("paged", plan_argv, paged_env),
        ):
            result, reqs, lists, where = counted(api, functools.partial(timed, cp, argv, run_env))
            ok = (0, 1) if name in ("plan", "paged") else (0,)
            if result["rc"] not in ok:
                raise SystemExit(f"{name} failed (rc {result['rc']}):\n{result['stderr']}")
            if name == "base" and int(result["stdout"].strip() or 0) < 5 * n:
                raise SystemExit(f"the baseline listed too little:\n{result['stdout']}")
            runs[name].append({**result, "requests": reqs, "lists": lists, "served": where})
        print(
            f"  N={n:,} repeat {i + 1}: load {load_average:.1f}; "
            + ", ".join(
                f"{name} {runs[name][-1]['wall']:.2f}s {runs[name][-1]['rss'] / MI:.0f}MB "
                f"(cpu {runs[name][-1]['cpu']:.2f}s + server {runs[name][-1]['server_cpu']:.2f}s)"
                for name in runs
            ),
            file=sys.stderr,
            flush=True,
        )

    def wall(name: str) -> float:
        return statistics.median(float(r["wall"]) for r in runs[name])

    def rss(name: str) -> int:
        return max(int(r["rss"]) for r in runs[name])

    def served(name: str, source: str) -> int:
        return max(int(r["served"][source]) for r in runs[name])

    def cpu(name: str, key: str) -> float:
        return statistics.median(float(r[key]) for r in runs[name])

    return {
        "n": n,
        "load": os.getloadavg()[0],
        "plan_s": wall("plan"),
        "paged_s": wall("paged"),
        "baseline_s": wall("base"),
        "floor_s": wall("floor"),
        "ratio": wall("plan") / wall("base"),
        "floor_ratio": wall("plan") / wall("floor"),
        "paged_ratio": wall("paged") / wall("base"),
        "plan_rss_mb": rss("plan") / MI,
        "paged_rss_mb": rss("paged") / MI,
        "baseline_rss_mb": rss("base") / MI,
        "rss_ratio": rss("plan") / rss("base"),
        "plan_rss": rss("plan"),
        "requests": max(r["requests"] for r in runs["plan"]),
        "pages": max(r["lists"] for r in runs["plan"]),
        "paged_requests": max(r["requests"] for r in runs["paged"]),
        "paged_from": (served("paged", "cache"), served("paged", "etcd")),
        "plan_from": (served("plan", "cache"), served("plan", "etcd")),
        "baseline_requests": max(r["requests"] for r in runs["base"]),
        "cpu": {name: (cpu(name, "cpu"), cpu(name, "server_cpu")) for name in runs},
    }


def print_table(rows: list[dict[str, Any]], file: Any = None) -> None:
    out = file or sys.stdout
    print(
        "| VMs | plan (s) | raw LIST baseline (s) | floor (s) | plan / baseline | plan / floor "
        "| plan, watch-lists off (s) | off / baseline | plan peak RSS (MB) "
        "| off peak RSS (MB) | baseline peak RSS (MB) | requests by plan (LISTs) "
        "| requests, off (LISTs from cache / etcd) | load |",
        file=out,
    )
    print("|" + "---|" * 14, file=out)
    for r in rows:
        cache, etcd = r["paged_from"]
        print(
            f"| {r['n']:,} | {r['plan_s']:.2f} | {r['baseline_s']:.2f} | {r['floor_s']:.2f} "
            f"| {r['ratio']:.2f}x | {r['floor_ratio']:.2f}x | {r['paged_s']:.2f} "
            f"| {r['paged_ratio']:.2f}x | {r['plan_rss_mb']:.0f} | {r['paged_rss_mb']:.0f} "
            f"| {r['baseline_rss_mb']:.0f} | {r['requests']} ({r['pages']}) "
            f"| {r['paged_requests']} ({cache} / {etcd}) | {r['load']:.1f} |",
            file=out,
        )
    print(
        "\nCPU seconds, medians (client: the command's process; server: kube-apiserver "
        "meanwhile):\n\n| VMs | baseline client / server | floor client / server "
        "| plan client / server | plan, watch-lists off, client / server |\n|---|---|---|---|---|",
        file=out,
    )
    for r in rows:
        cells = " | ".join(
            f"{r['cpu'][name][0]:.2f} / {r['cpu'][name][1]:.2f}"
            for name in ("base", "floor", "plan", "paged")
        )
        print(f"| {r['n']:,} | {cells} |", file=out)
    page = os.environ.get("VMSR_LIST_PAGE_SIZE") or "500 (default)"
    print(
        f"\n(python {sys.version.split()[0]}, {os.cpu_count()} cores; medians; page size {page}; "
        "a consistent read also counts one etcd 'list' for the current revision)",
        file=out,
    )


def largest_fleet(rows: list[dict[str, Any]], limit: int = CRONJOB_MEMORY_LIMIT) -> int | None:
    """The largest N whose `plan` peak RSS stays under ``limit``, from the least squares line
    through the measured (N, peak RSS); None with fewer than two sizes or no growth."""
    points = [(float(r["n"]), float(r["plan_rss"])) for r in rows]
    if len({n for n, _ in points}) < 2:
        return None
    mean_n = statistics.fmean(n for n, _ in points)
    mean_rss = statistics.fmean(rss for _, rss in points)
    slope = sum((n - mean_n) * (rss - mean_rss) for n, rss in points) / sum(
        (n - mean_n) ** 2 for n, _ in points
    )
    if slope <= 0:
        return None
    return int((limit - (mean_rss - slope * mean_n)) / slope)


def print_fit(rows: list[dict[str, Any]]) -> None:
    fleet = largest_fleet(rows)
    if fleet is None:
        print("(measure two sizes or more for the largest fleet within the memory limit)")
        return
    points = sorted((r["n"], r["plan_rss"]) for r in rows)
    (n0, r0), (n1, r1) = points[0], points[-1]
    per_vm = (r1 - r0) / (n1 - n0)
    print(
        f"plan peak RSS grows by {per_vm / 1024:.1f} KiB per VM (with its 2 PVCs, 2 DataVolumes "
        f"and half a VMI); the largest fleet within the CronJob's {CRONJOB_MEMORY_LIMIT // MI} "
        f"MiB limit: about {fleet:,} VMs ({2 * fleet:,} PVCs) in one namespace"
    )


if __name__ == "__main__":
    sys.exit(main())
