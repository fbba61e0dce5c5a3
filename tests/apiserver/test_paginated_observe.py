"""Paginated observation against the real API server (issue 19 item 2).

With watch-lists off (``Cluster(watch_list=False)``, ``$VMSR_WATCH_LIST=0`` for the CLI; with
them on, the paginated LIST is the fallback of the kinds observation streams, and the only way
the cluster-scoped kinds are read: tests/apiserver/test_streamed_observe.py) every LIST of
`plan`'s observation goes page by page (``limit``/``continue``); a small page size
(``Cluster(page_size=...)``, or ``$VMSR_LIST_PAGE_SIZE`` for the CLI) makes a handful of
objects take several pages. The paginated snapshot must equal the one read in a single page,
and a continue token that expires mid-list (HTTP 410, answered by the test proxy on a continue
request, as the API server does once etcd compacted the list's revision) must be recovered: the
list starts again, and after two restarts it goes on from the token the 410 carries.

Nothing but kube-apiserver acts on the fleet (tests/apiserver: no KubeVirt or CDI controller
runs), yet ``stable`` reads until two single-page observations agree, and each comparison is
retried when the cluster moved meanwhile, so that a controller would not make it flaky.
"""

from __future__ import annotations

import json
import math
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs

import pykube
import pytest

from reconciler.cli.main import main
from reconciler.kube.client import PAGE_SIZE_ENV, WATCH_LIST_ENV, Cluster
from reconciler.kube.connect import load_client
from reconciler.model.errors import ClusterError
from reconciler.model.live import Snapshot
from reconciler.observe.fetch import fetch
from testenv import seed
from testenv.controlplane import ControlPlane
from tests.support import faultproxy
from tests.support.faultproxy import Fault, FaultProxy

VMS = 7  # 4 pages of 2
PAGE = 2
GI = 2**30
VM_LIST = r"/namespaces/[^/]+/virtualmachines$"
SINGLE_PAGE = 1_000_000


@pytest.fixture(scope="module", autouse=True)
def cluster_objects(api: pykube.HTTPClient) -> None:
    seed.seed_cluster(api)


@pytest.fixture
def fleet(api: pykube.HTTPClient, namespace: str) -> str:
    """``VMS`` stopped VMs in ``namespace``, each with two DataVolumes and their PVCs."""
    for i in range(VMS):
        for obj, plural in objects_for(namespace, i):
            response = api.post(
                version=obj["apiVersion"], namespace=namespace, url=plural, data=json.dumps(obj)
            )
            api.raise_for_status(response)
    return namespace


def objects_for(namespace: str, i: int) -> Iterator[tuple[dict[str, Any], str]]:
    vm = f"vm-{i:02d}"
    storage = {
        "storageClassName": "standard",
        "accessModes": ["ReadWriteOnce"],
        "resources": {"requests": {"storage": str(GI)}},
    }
    for claim in (f"{vm}-root", f"{vm}-data"):
        meta = {"name": claim, "namespace": namespace}
        yield (
            {
                "apiVersion": "cdi.kubevirt.io/v1beta1",
                "kind": "DataVolume",
                "metadata": meta,
                "spec": {"source": {"blank": {}}, "storage": storage},
            },
            "datavolumes",
        )
        yield (
            {
                "apiVersion": "v1",
                "kind": "PersistentVolumeClaim",
                "metadata": meta,
                "spec": {**storage, "volumeMode": "Filesystem"},
            },
            "persistentvolumeclaims",
        )
    disks = [{"name": n, "disk": {"bus": "virtio"}} for n in ("root", "data")]
    volumes = [
        {"name": "root", "dataVolume": {"name": f"{vm}-root"}},
        {"name": "data", "dataVolume": {"name": f"{vm}-data"}},
    ]
    yield (
        {
            "apiVersion": "kubevirt.io/v1",
            "kind": "VirtualMachine",
            "metadata": {"name": vm, "namespace": namespace, "labels": {"paged": "true"}},
            "spec": {
                "runStrategy": "Halted",
                "template": {
                    "spec": {
                        "domain": {
                            "devices": {"disks": disks},
                            "resources": {"requests": {"memory": "1Gi"}},
                        },
                        "volumes": volumes,
                    }
                },
            },
        },
        "virtualmachines",
    )


def observe(kubeconfig: Path, namespace: str, page_size: int) -> tuple[Snapshot, int]:
    """The observation, every list paginated (watch-lists off), and the requests it made."""
    cluster = Cluster(load_client(str(kubeconfig)), page_size=page_size, watch_list=False)
    snapshot = fetch(cluster, [namespace])
    return snapshot, cluster.requests


def agreeing(
    read: Callable[[], tuple[Snapshot, int]], kubeconfig: Path, namespace: str
) -> tuple[Snapshot, Snapshot, int]:
    """``read()`` between two single-page observations that agree (the cluster did not move
    meanwhile): (single-page snapshot, ``read``'s snapshot, its requests)."""
    deadline = time.monotonic() + 60
    while True:
        before, _ = observe(kubeconfig, namespace, SINGLE_PAGE)
        paged, requests = read()
        after, _ = observe(kubeconfig, namespace, SINGLE_PAGE)
        if before == after or time.monotonic() > deadline:
            assert before == after, "the fleet kept changing for a minute"
            return before, paged, requests
        time.sleep(0.5)


def vm_list_requests(proxy: FaultProxy) -> list[tuple[str, str]]:
    """(continue token or "", outcome) of every VM LIST request the proxy saw, in order."""
    seen = []
    for request in proxy.requests("GET", VM_LIST):
        query = parse_qs(request.query)
        assert query.get("limit") == [str(PAGE)], request.query
        seen.append((query.get("continue", [""])[0], request.outcome))
    return seen


def test_a_paginated_observation_equals_a_single_page_one(
    control_plane: ControlPlane, fleet: str, proxy: FaultProxy, tmp_path: Path
) -> None:
    kubeconfig = proxy.kubeconfig(tmp_path / "via-proxy", control_plane.admin_token)

    def read() -> tuple[Snapshot, int]:
        proxy.seen.clear()  # only the last attempt's requests
        return observe(kubeconfig, fleet, PAGE)

    whole, paged, requests = agreeing(read, control_plane.kubeconfig, fleet)
    assert paged == whole
    assert len(paged.vms) == VMS and len(paged.pvcs) == len(paged.data_volumes) == 2 * VMS
    # the VM list took ceil(7 / 2) = 4 pages, each after the first with the previous token
    pages = vm_list_requests(proxy)
    assert len(pages) == math.ceil(VMS / PAGE) == 4
    assert pages[0][0] == "" and all(token for token, _ in pages[1:])
    assert len({token for token, _ in pages}) == 4
    # one request per page of every kind: 4 VMs, 7 PVCs, 7 DataVolumes at least
    assert requests >= 4 + 7 + 7 + 1 + 1 + 1 + 1 + 1


def test_an_expired_continue_token_starts_the_list_again(
    control_plane: ControlPlane, fleet: str, proxy: FaultProxy, tmp_path: Path
) -> None:
    kubeconfig = proxy.kubeconfig(tmp_path / "via-proxy", control_plane.admin_token)

    def read() -> tuple[Snapshot, int]:
        proxy.seen.clear()
        # the second VM LIST request, the first continue, expires
        proxy.add(Fault("GET", VM_LIST, status=410, skip=1))
        return observe(kubeconfig, fleet, PAGE)

    whole, paged, _ = agreeing(read, control_plane.kubeconfig, fleet)
    assert paged == whole
    outcomes = [(bool(token), outcome) for token, outcome in vm_list_requests(proxy)]
    assert outcomes == [
        (False, "forwarded"),
        (True, "answered 410"),  # expired: what was read of the list is dropped
        (False, "forwarded"),  # from the first page again
        (True, "forwarded"),
        (True, "forwarded"),
        (True, "forwarded"),
    ]


class ContinueFault(Fault):
    """A fault that only continue requests meet (a first page never expires)."""

    def matches(self, method: str, path: str, query: str) -> bool:
        return "continue=" in query and super().matches(method, path, query)


def expired(handler: Any, fault: Fault) -> None:
    """The API server's 410 for an expired continue token: a Status with reason Expired and,
    in its metadata, a token to continue from (here the request's own, which is valid)."""
    token = parse_qs(handler.path.partition("?")[2]).get("continue", [""])[0]
    body = json.dumps(
        {
            "kind": "Status",
            "apiVersion": "v1",
            "metadata": {"continue": token} if token else {},
            "status": "Failure",
            "message": "The provided continue parameter is too old to display a consistent "
            "list result. You can start a new list without the continue parameter, or use "
            "the continue token in this response to retrieve the remainder of the results.",
            "reason": "Expired",
            "code": 410,
        }
    ).encode()
    handler.send_response(410)
    handler.send_header("Content-Type", "application/json")
    handler.send_header("Content-Length", str(len(body)))
    handler.end_headers()
    handler.wfile.write(body)


def test_a_list_that_keeps_expiring_goes_on_from_the_token_the_410_carries(
    control_plane: ControlPlane,
    fleet: str,
    proxy: FaultProxy,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(faultproxy, "_answer", expired)
    kubeconfig = proxy.kubeconfig(tmp_path / "via-proxy", control_plane.admin_token)

    def read() -> tuple[Snapshot, int]:
        proxy.seen.clear()
        proxy.add(ContinueFault("GET", VM_LIST, status=410, times=3))
        return observe(kubeconfig, fleet, PAGE)

    whole, paged, _ = agreeing(read, control_plane.kubeconfig, fleet)
    assert paged == whole
    outcomes = [(bool(token), outcome) for token, outcome in vm_list_requests(proxy)]
    assert outcomes == [
        (False, "forwarded"),
        (True, "answered 410"),  # restart 1
        (False, "forwarded"),
        (True, "answered 410"),  # restart 2
        (False, "forwarded"),
        (True, "answered 410"),  # then on from the token the 410 carried
        (True, "forwarded"),
        (True, "forwarded"),
        (True, "forwarded"),
    ]


def test_a_list_that_keeps_expiring_without_a_token_is_a_cluster_error(
    control_plane: ControlPlane, fleet: str, proxy: FaultProxy, tmp_path: Path
) -> None:
    kubeconfig = proxy.kubeconfig(tmp_path / "via-proxy", control_plane.admin_token)
    proxy.add(ContinueFault("GET", VM_LIST, status=410, times=10))
    with pytest.raises(ClusterError) as caught:
        observe(kubeconfig, fleet, PAGE)
    assert caught.value.code == 410
    assert "continue token expired (HTTP 410) 3 times" in str(caught.value)
    assert sum(1 for _, outcome in vm_list_requests(proxy) if outcome == "answered 410") == 3


def test_plan_with_small_pages_plans_the_same_and_reports_every_page(
    control_plane: ControlPlane,
    fleet: str,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    plan = tmp_path / "plan.yaml"
    plan.write_text(
        "apiVersion: vmstorage.dev/v1alpha1\nkind: StoragePlan\nmetadata:\n  name: paged\n"
        f"spec:\n  namespace: {fleet}\n  storageClass: ceph-rbd\n"
        "  selector:\n    matchLabels:\n      paged: 'true'\n"
    )
    argv = ["plan", str(plan), "--kubeconfig", str(control_plane.kubeconfig), "-o", "json"]

    def run(page_size: int, watch_list: str) -> tuple[dict[str, Any], str]:
        monkeypatch.setenv(PAGE_SIZE_ENV, str(page_size))
        monkeypatch.setenv(WATCH_LIST_ENV, watch_list)
        rc = main(argv)
        out, err = capsys.readouterr()
        assert rc in (0, 1), err
        report: dict[str, Any] = json.loads(out)
        return report, err

    deadline = time.monotonic() + 60
    while True:
        whole, whole_err = run(SINGLE_PAGE, "0")
        paged, paged_err = run(PAGE, "0")
        streamed, streamed_err = run(PAGE, "1")
        again, _ = run(SINGLE_PAGE, "0")
        if whole == again or time.monotonic() > deadline:
            break
    assert paged == whole == streamed
    assert len(paged["vms"]) == VMS
    assert "(8 requests)" in whole_err
    # 7 VMs in 4 pages, 14 PVCs and 14 DataVolumes in 7 each, and the cluster-wide kinds
    assert "(8 requests)" not in paged_err
    count = int(paged_err.split(" requests)")[0].rsplit("(", 1)[1])
    assert count >= 4 + 7 + 7 + 5
    # streamed: one request per kind whatever the page size
    assert "(8 requests)" in streamed_err, streamed_err


def test_a_page_size_or_a_watch_list_switch_that_makes_no_sense_is_refused(
    control_plane: ControlPlane,
    fleet: str,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    plan = tmp_path / "plan.yaml"
    plan.write_text(
        "apiVersion: vmstorage.dev/v1alpha1\nkind: StoragePlan\nmetadata:\n  name: paged\n"
        f"spec:\n  namespace: {fleet}\n  storageClass: ceph-rbd\n"
        "  selector:\n    matchLabels:\n      paged: 'true'\n"
    )
    monkeypatch.setenv(PAGE_SIZE_ENV, "0")
    rc = main(["plan", str(plan), "--kubeconfig", str(control_plane.kubeconfig)])
    _, err = capsys.readouterr()
    assert rc == 2
    assert f"{PAGE_SIZE_ENV}=0 is not a positive integer" in err

    monkeypatch.setenv(PAGE_SIZE_ENV, "500")
    monkeypatch.setenv(WATCH_LIST_ENV, "maybe")
    rc = main(["plan", str(plan), "--kubeconfig", str(control_plane.kubeconfig)])
    _, err = capsys.readouterr()
    assert rc == 2
    assert f"{WATCH_LIST_ENV}=maybe is neither on nor off" in err
