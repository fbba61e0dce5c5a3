"""The watch-fed view `apply` judges on (``reconciler.observe.view``), against the real API
server (issue 19 item 1).

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
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler
from pathlib import Path
from urllib.parse import parse_qs

import pykube
import pytest

from reconciler.cli.main import main
from reconciler.kube import resources as kube
from reconciler.kube.client import Cluster, load_client
from reconciler.model.live import Snapshot
from reconciler.observe.fetch import fetch
from reconciler.observe.view import View
from testenv import seed
from testenv.controlplane import ControlPlane
from tests.cluster.test_paginated_observe import objects_for
from tests.cluster.test_plan import _merge, create, dv_succeeded, fedora, plan_file
from tests.support import faultproxy
from tests.support.faultproxy import Fault, FaultProxy
from tests.support.kube import Eventually, get_json

VM_PATH = r"/namespaces/[^/]+/virtualmachines$"


@pytest.fixture(scope="module", autouse=True)
def cluster_objects(api: pykube.HTTPClient) -> None:
    seed.seed_cluster(api)


@pytest.fixture
def proxy(control_plane: ControlPlane) -> Iterator[FaultProxy]:
    with FaultProxy(control_plane.server, control_plane.ca_file) as running:
        yield running


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
    """(view's snapshot, fresh fetch) once they agree (the simulator may still be acting)."""
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


def running_fleet(
    eventually: Eventually, api: pykube.HTTPClient, namespace: str, vms: int
) -> list[str]:
    """``vms`` running Fedora VMs (the seed's shape) whose disks the simulator imported (a VM
    created stopped on a WaitForFirstConsumer class never gets its disk bound)."""
    names = [f"vm-{i:02d}" for i in range(vms)]
    for name in names:
        create(api, fedora(namespace, name))
    for name in names:
        eventually(
            timeout=120,
            probe=lambda name=name: dv_succeeded(api, namespace, f"{name}-disk"),
            what=f"{name}'s disk",
        )
        eventually(
            timeout=120,
            probe=lambda name=name: vmi_phase(api, namespace, name) == "Running",
            what=f"{name}'s VMI Running",
        )
    return names


def vmi_phase(api: pykube.HTTPClient, namespace: str, name: str) -> str:
    found = get_json(api, "kubevirt.io/v1", namespace, f"virtualmachineinstances/{name}")
    return str((found.get("status") or {}).get("phase") or "")


def whole_namespace_lists(proxy: FaultProxy, namespace: str) -> int:
    """LISTs and watch-lists of a whole kind in ``namespace`` (no selector): what a fresh
    observation sends; `apply`'s waits select their objects by name or label."""
    count = 0
    for request in proxy.requests("GET", rf"/namespaces/{namespace}/[a-z]+$"):
        query = parse_qs(request.query)
        selected = "fieldSelector" in query or "labelSelector" in query
        resumed = "resourceVersion" in query and "sendInitialEvents" not in query
        if not selected and not resumed:
            count += 1
    return count


@pytest.mark.usefixtures("sim")
def test_apply_lists_each_kind_once_whatever_the_namespace_size(
    control_plane: ControlPlane,
    eventually: Eventually,
    api: pykube.HTTPClient,
    proxy: FaultProxy,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """``MOVED`` VMs moved out of 10, then out of 40: each kind of the namespace is listed once
    for the whole run (before the view: 8 LISTs of the whole namespace per VM moved, 5 of them
    namespaced), and the requests per moved VM do not grow with the namespace (within a few
    Lease renewals and retries)."""
    kubeconfig = proxy.kubeconfig(tmp_path / "via-proxy", control_plane.admin_token)
    per_vm: dict[int, float] = {}
    said: list[str] = []  # printed at the end: apply's report is read from captured stdout
    for vms in (10, 40):
        namespace = control_plane.create_namespace(f"view-{vms}")
        names = running_fleet(eventually, api, namespace, vms)
        spec = "storageClass: ceph-rbd\nvirtualMachines:\n" + "".join(
            f"  - name: {name}\n" for name in names
        )
        path = plan_file(tmp_path, namespace, spec, name=f"move-{vms}")
        lease = control_plane.create_namespace("lease")
        argv = ["apply", str(path), "-o", "json", "--kubeconfig", str(kubeconfig)]
        code = main([*argv, "--lease-namespace", lease, "--max-vms", str(MOVED)])
        out, err = capsys.readouterr()
        assert code == 0, err
        report = json.loads(out)
        assert [o["result"] for o in report["outcomes"]] == ["Succeeded"] * MOVED, out + err

        lists = whole_namespace_lists(proxy, namespace)
        assert lists <= NAMESPACED_KINDS, f"{lists} whole-namespace lists: one a kind, not a VM"
        requests = len([s for s in proxy.seen if f"/namespaces/{namespace}/" in s.path])
        per_vm[vms] = requests / MOVED
        said.append(f"{vms} VMs: {lists} whole-namespace lists, {per_vm[vms]:.1f} requests per VM")
    print("\n".join(said))
    assert per_vm[40] <= per_vm[10] * 1.25 + 2, f"requests per VM grew with the namespace: {per_vm}"


MOVED = 3
NAMESPACED_KINDS = 5  # VMs, VMIs, PVCs, DataVolumes, migrations
