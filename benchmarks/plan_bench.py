"""Benchmark `plan` against a raw LIST of the same kinds, on the local control plane.

    .venv/bin/python benchmarks/plan_bench.py [--sizes 2000 10000 20000] [--repeat 3]
        [--page-size N]

For each N it loads N VMs (2 disks each: one from a dataVolumeTemplate, one plain DataVolume;
every PVC Bound; half the VMs running with a VMI) into a fresh namespace, then measures in the
same run, each in a fresh process:

- `plan` (the real CLI, `-o json`) wall time and peak RSS; its LISTs are paginated
  (``limit``/``continue``, 500 objects a page, ``--page-size`` sets ``$VMSR_LIST_PAGE_SIZE``);
- the baseline: the same 8 LISTs `plan` makes, each as one unpaginated raw HTTP GET with JSON
  decoding and nothing else (what `kubectl get -o json` of those kinds costs, minus kubectl's
  own startup);
- API requests made by `plan`, counted by the API server (apiserver_request_total on /metrics),
  not by the client: every request to the kinds plan reads is counted, and of them the LIST
  requests, one per page; any other request the server answered meanwhile (its own loopback
  traffic) is printed, not counted.

Figures are medians of --repeat runs (peak RSS: the largest), and ratios are against the
baseline measured in the same run. From the peak RSS of `plan` at the sizes measured (a least
squares line through them), the largest fleet whose `plan` fits the CronJob's memory limit
(512 MiB, deploy/components/cronjob/cronjob.yaml) is printed.

Goals (issue 19): at N = 10,000 (20,000 PVCs) plan <= 1.2x the baseline and peak RSS <= 200 MB.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import statistics
import subprocess
import sys
import tempfile
import textwrap
from collections.abc import Callable, Iterable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pykube

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

# Runs a command and prints its wall time and the peak RSS of the child, as JSON.
TIMER = textwrap.dedent(
    """
    import json, resource, subprocess, sys, time
    t = time.perf_counter()
    p = subprocess.run(sys.argv[1:], stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    wall = time.perf_counter() - t
    rss = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss * 1024
    print(json.dumps({"wall": wall, "rss": rss, "rc": p.returncode,
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
    args = parser.parse_args()

    rows = []
    with ControlPlane(log=lambda m: print(m, file=sys.stderr)) as cp:
        api = cp.api()
        setup_cluster(api)
        for n in args.sizes:
            namespace = cp.create_namespace(f"bench-{n}")
            print(f"loading {n} VMs into {namespace} ...", file=sys.stderr, flush=True)
            load(cp, namespace, n)
            rows.append(measure(cp, api, namespace, n, args.repeat, page_size=args.page_size))
            print_table(rows[-1:], file=sys.stderr)  # as it goes: a large run takes a while
    print_table(rows)
    print_fit(rows)
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


def _label(labels: str, name: str) -> str:
    found = re.search(rf'{name}="([^"]*)"', labels)
    return found.group(1) if found else ""


def timed(argv: list[str]) -> dict[str, Any]:
    out = subprocess.run(
        [sys.executable, "-c", TIMER, *argv], capture_output=True, text=True, check=True, cwd=ROOT
    )
    result: dict[str, Any] = json.loads(out.stdout)
    return result


def counted(
    api: pykube.HTTPClient, run: Callable[[], dict[str, Any]]
) -> tuple[dict[str, Any], int, int]:
    """Run ``run`` and return its result with the number of API requests it caused, and how
    many of them were LISTs (one per page).

    The API server's own loopback traffic (its Lease heartbeat and the controllers it runs)
    ticks on while we measure; requests by the `system:apiserver` machinery are told apart by
    the kinds they touch, and anything outside the kinds `plan` reads is printed to stderr so
    nothing is hidden.
    """
    before = request_counts(api)
    result = run()
    after = request_counts(api)
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
    return result, sum(ours.values()), lists


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
    if page_size is not None:
        os.environ["VMSR_LIST_PAGE_SIZE"] = str(page_size)  # inherited by plan's process
    base_argv = [sys.executable, "-c", BASELINE, str(cp.kubeconfig), namespace]
    plans, bases, requests_seen, lists_seen, base_requests = [], [], [], [], []
    for _ in range(repeat):
        base, base_reqs, _ = counted(api, lambda: timed(base_argv))
        if base["rc"] != 0 or int(base["stdout"].strip() or 0) < 5 * n:
            raise SystemExit(f"baseline failed (rc {base['rc']}):\n{base['stderr']}")
        plan, reqs, lists = counted(api, lambda: timed(plan_argv))
        if plan["rc"] not in (0, 1):
            raise SystemExit(f"plan failed (rc {plan['rc']}):\n{plan['stderr']}")
        bases.append(base)
        plans.append(plan)
        requests_seen.append(reqs)
        lists_seen.append(lists)
        base_requests.append(base_reqs)
    wall = statistics.median(p["wall"] for p in plans)
    base_wall = statistics.median(b["wall"] for b in bases)
    plan_rss = max(p["rss"] for p in plans)
    base_rss = max(b["rss"] for b in bases)
    return {
        "n": n,
        "plan_s": wall,
        "baseline_s": base_wall,
        "ratio": wall / base_wall,
        "plan_rss_mb": plan_rss / MI,
        "baseline_rss_mb": base_rss / MI,
        "rss_ratio": plan_rss / base_rss,
        "plan_rss": plan_rss,
        "requests": max(requests_seen),
        "pages": max(lists_seen),
        "baseline_requests": max(base_requests),
    }


def print_table(rows: list[dict[str, Any]], file: Any = None) -> None:
    out = file or sys.stdout
    header = (
        "| VMs | plan (s) | raw LIST baseline (s) | plan / baseline | plan peak RSS (MB) "
        "| baseline peak RSS (MB) | RSS plan / baseline | API requests by plan (LIST pages) "
        "| baseline requests |"
    )
    print(header, file=out)
    print("|" + "---|" * 9, file=out)
    for r in rows:
        print(
            f"| {r['n']:,} | {r['plan_s']:.2f} | {r['baseline_s']:.2f} | {r['ratio']:.2f}x "
            f"| {r['plan_rss_mb']:.0f} | {r['baseline_rss_mb']:.0f} | {r['rss_ratio']:.2f}x "
            f"| {r['requests']} ({r['pages']}) | {r['baseline_requests']} |",
            file=out,
        )
    page = os.environ.get("VMSR_LIST_PAGE_SIZE") or "500 (default)"
    print(
        f"\n(python {sys.version.split()[0]}, {os.cpu_count()} cores; medians; page size {page})",
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
