"""Streamed observation against the real API server (issue 19 item 2, the wall-time half).

Observation reads the kinds that grow with the fleet by *watch-list* (a WATCH with
``sendInitialEvents=true``: the kind's objects as ADDED events, then a bookmark annotated
``k8s.io/initial-events-end``), one request per kind whatever its size, served from the API
server's watch cache, where a continue page of a kind not written for minutes is read from etcd
(``reconciler/kube/client.py`` says why, docs/benchmarks.md measures it). These tests pin what
that must keep of the paginated LIST it replaces:

- the same snapshot as a single-page LIST, one request per kind;
- the parser is handed ``page_size`` objects at a time (memory bounded by a page);
- a stream cut short (the server ends it, the connection breaks, an ERROR event 410 as when
  the watch cache cannot serve it) starts again from scratch, nothing parsed twice; one cut
  three times in a row, or an ERROR event of another kind, is read paginated;
- a server that refuses the watch-list (422/400: no watch-lists; 403: RBAC grants ``list``
  only) is read paginated, and the refusal remembered;
- the kinds are listed concurrently, one request per kind in flight at most.

The cuts are made by the test proxy (``tests.support.faultproxy``), which here relays the real
stream for a few events and then ends it its own way.
"""

from __future__ import annotations

import http.client
import json
import math
import ssl
import threading
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs

import pykube
import pytest

from reconciler.kube import resources as kube
from reconciler.kube.client import INITIAL_EVENTS_END, LIST_RESTARTS, Cluster
from reconciler.kube.connect import load_client
from reconciler.model.errors import ClusterError
from reconciler.model.live import Snapshot
from reconciler.observe.fetch import fetch
from testenv import seed
from testenv.controlplane import ControlPlane
from tests.apiserver.test_paginated_observe import PAGE, VMS, agreeing, objects_for
from tests.support import faultproxy
from tests.support.faultproxy import Fault, FaultProxy

VM_PATH = r"/namespaces/[^/]+/virtualmachines$"
CUT_AFTER = 3  # events relayed before a cut: fewer than VMS, more than a page


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


def streamed(kubeconfig: Path, namespace: str) -> tuple[Snapshot, int]:
    """The observation as `plan` makes it (watch-lists on), ``PAGE`` objects a parse."""
    cluster = Cluster(load_client(str(kubeconfig)), page_size=PAGE, watch_list=True)
    return fetch(cluster, [namespace]), cluster.requests


def vm_requests(proxy: FaultProxy) -> list[tuple[str, str]]:
    """("watch" or "page", outcome) of every VM request the proxy saw, in order."""
    seen = []
    for request in proxy.requests("GET", VM_PATH):
        query = parse_qs(request.query)
        if query.get("watch") == ["1"]:
            assert query.get("sendInitialEvents") == ["true"], request.query
            assert query.get("resourceVersionMatch") == ["NotOlderThan"], request.query
            assert "resourceVersion" not in query and "limit" not in query, request.query
            seen.append(("watch", request.outcome))
        else:
            assert query.get("limit") == [str(PAGE)], request.query
            seen.append(("page", request.outcome))
    return seen


def vm_names(kubeconfig: Path, namespace: str) -> tuple[list[str], list[int], Cluster]:
    """The VM names ``list_pages(stream=True)`` read (every one, in order, duplicates kept),
    the size of each batch handed to the parser, and the client."""
    cluster = Cluster(load_client(str(kubeconfig)), page_size=PAGE, watch_list=True)
    batches: list[int] = []

    def parse(items: list[dict[str, Any]]) -> list[str]:
        batches.append(len(items))
        return [str(item["metadata"]["name"]) for item in items]

    names = cluster.list_pages(kube.VIRTUAL_MACHINES, namespace, parse, stream=True)
    return names, batches, cluster


EXPECTED = [f"vm-{i:02d}" for i in range(VMS)]


# ------------------------------------------------------------------------------------------
# The stream as served
# ------------------------------------------------------------------------------------------


def test_a_streamed_observation_equals_a_single_page_one_in_a_request_per_kind(
    control_plane: ControlPlane, fleet: str, proxy: FaultProxy, tmp_path: Path
) -> None:
    kubeconfig = proxy.kubeconfig(tmp_path / "via-proxy", control_plane.admin_token)

    def read() -> tuple[Snapshot, int]:
        proxy.seen.clear()
        return streamed(kubeconfig, fleet)

    whole, observed, requests = agreeing(read, control_plane.kubeconfig, fleet)
    assert observed == whole
    assert len(observed.vms) == VMS and len(observed.data_volumes) == 2 * VMS
    assert vm_requests(proxy) == [("watch", "forwarded")]
    assert requests == 8, "one request per kind, whatever the page size"
    watched = {
        request.path.rsplit("/", 1)[1]
        for request in proxy.seen
        if parse_qs(request.query).get("watch") == ["1"]
    }
    assert watched == {
        p.plural
        for p in (kube.VIRTUAL_MACHINES, kube.VMIS, kube.PVCS, kube.DATA_VOLUMES, kube.MIGRATIONS)
    }


def test_a_stream_goes_to_the_parser_a_page_at_a_time(
    control_plane: ControlPlane, fleet: str
) -> None:
    names, batches, cluster = vm_names(control_plane.kubeconfig, fleet)
    assert sorted(names) == EXPECTED
    assert batches == [PAGE] * (VMS // PAGE) + [VMS % PAGE]  # 2, 2, 2, 1: never more
    assert cluster.requests == 1


# ------------------------------------------------------------------------------------------
# Streams cut short
# ------------------------------------------------------------------------------------------


@dataclass
class CutStream(Fault):
    """Relays the real watch-list for ``CUT_AFTER`` ADDED events, then, by ``how``: ``ends``
    (the stream closes cleanly with no end bookmark, as on a server-side timeout), ``breaks``
    (the connection drops inside an event), ``expires`` (an ERROR event with a 410 Status:
    what the API server sends when the watch cache cannot serve it) or ``fails`` (an ERROR
    event with a 500 Status)."""

    how: str = "ends"
    upstream: tuple[str, int] = ("", 0)
    context: ssl.SSLContext | None = field(default=None, repr=False)


def cut_answer(handler: BaseHTTPRequestHandler, fault: Fault) -> None:
    if not isinstance(fault, CutStream):
        ORIGINAL_ANSWER(handler, fault)
        return
    upstream = http.client.HTTPSConnection(*fault.upstream, context=fault.context, timeout=30)
    try:
        headers = {k: v for k, v in handler.headers.items() if k.lower() not in faultproxy._HOP}
        headers.pop("Host", None)
        upstream.request("GET", handler.path, headers=headers)
        response = upstream.getresponse()
        assert response.status == 200, response.read()
        handler.send_response(200)
        handler.send_header("Content-Type", "application/json")
        handler.send_header("Transfer-Encoding", "chunked")
        handler.end_headers()

        def chunk(data: bytes) -> None:
            handler.wfile.write(f"{len(data):x}\r\n".encode() + data + b"\r\n")
            handler.wfile.flush()

        relayed, pending = 0, b""
        while relayed < CUT_AFTER:
            data = response.read1(65536)
            assert data, "the real stream ended before the cut"
            pending += data
            *lines, pending = pending.split(b"\n")
            for line in lines:
                if relayed < CUT_AFTER and json.loads(line)["type"] == "ADDED":
                    chunk(line + b"\n")
                    relayed += 1
    finally:
        upstream.close()
    if fault.how == "breaks":
        handler.wfile.write(b"100\r\n" + b'{"type":"ADDED","object":{"metadata"')
        handler.wfile.flush()
        handler.close_connection = True
        return
    if fault.how in ("expires", "fails"):
        code = 410 if fault.how == "expires" else 500
        status = {
            "kind": "Status",
            "apiVersion": "v1",
            "status": "Failure",
            "code": code,
            "reason": "Expired" if code == 410 else "InternalError",
            "message": f"injected by the test: {fault.how}",
        }
        chunk(json.dumps({"type": "ERROR", "object": status}).encode() + b"\n")
    handler.wfile.write(b"0\r\n\r\n")
    handler.wfile.flush()


ORIGINAL_ANSWER = faultproxy._answer


def cut(proxy: FaultProxy, how: str, times: int = 1) -> CutStream:
    return CutStream(
        "GET",
        VM_PATH,
        status=200,
        times=times,
        watch=True,
        how=how,
        upstream=proxy.upstream,
        context=proxy.context,
    )


@pytest.mark.parametrize("how", ["ends", "breaks", "expires"])
def test_a_stream_cut_short_starts_again_and_parses_nothing_twice(
    control_plane: ControlPlane,
    fleet: str,
    proxy: FaultProxy,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    how: str,
) -> None:
    monkeypatch.setattr(faultproxy, "_answer", cut_answer)
    kubeconfig = proxy.kubeconfig(tmp_path / "via-proxy", control_plane.admin_token)
    proxy.add(cut(proxy, how))

    names, batches, cluster = vm_names(kubeconfig, fleet)

    assert names == sorted(names) and names == EXPECTED, "each VM once: the cut part dropped"
    assert batches[0] == PAGE, "the cut stream had been parsed a page before it was cut"
    assert vm_requests(proxy) == [("watch", "answered 200"), ("watch", "forwarded")]
    assert cluster.requests == 2


def test_a_stream_cut_every_time_is_read_paginated(
    control_plane: ControlPlane,
    fleet: str,
    proxy: FaultProxy,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(faultproxy, "_answer", cut_answer)
    kubeconfig = proxy.kubeconfig(tmp_path / "via-proxy", control_plane.admin_token)
    proxy.add(cut(proxy, "ends", times=LIST_RESTARTS + 1))

    names, _, _ = vm_names(kubeconfig, fleet)

    assert names == EXPECTED
    pages = math.ceil(VMS / PAGE)
    assert (
        vm_requests(proxy)
        == [("watch", "answered 200")] * (LIST_RESTARTS + 1) + [("page", "forwarded")] * pages
    )


def test_an_error_event_other_than_410_is_read_paginated_at_once(
    control_plane: ControlPlane,
    fleet: str,
    proxy: FaultProxy,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(faultproxy, "_answer", cut_answer)
    kubeconfig = proxy.kubeconfig(tmp_path / "via-proxy", control_plane.admin_token)
    proxy.add(cut(proxy, "fails"))

    names, _, _ = vm_names(kubeconfig, fleet)

    assert names == EXPECTED
    pages = math.ceil(VMS / PAGE)
    assert vm_requests(proxy) == [("watch", "answered 200")] + [("page", "forwarded")] * pages


# ------------------------------------------------------------------------------------------
# Refused
# ------------------------------------------------------------------------------------------


@pytest.mark.parametrize("status", [422, 400, 403])
def test_a_refused_watch_list_is_read_paginated_and_not_asked_again(
    control_plane: ControlPlane, fleet: str, proxy: FaultProxy, tmp_path: Path, status: int
) -> None:
    """422: the answer of a server with the WatchList gate off (``sendInitialEvents`` is
    forbidden) or older than 1.27 (``resourceVersionMatch`` on a watch); 403: RBAC grants
    ``list`` but not ``watch``."""
    kubeconfig = proxy.kubeconfig(tmp_path / "via-proxy", control_plane.admin_token)
    proxy.add(Fault("GET", VM_PATH, status=status, watch=True))
    cluster = Cluster(load_client(str(kubeconfig)), page_size=PAGE, watch_list=True)

    def read() -> tuple[Snapshot, int]:
        return fetch(cluster, [fleet]), cluster.requests

    whole, observed, _ = agreeing(read, control_plane.kubeconfig, fleet)
    assert observed == whole and len(observed.vms) == VMS
    pages = math.ceil(VMS / PAGE)
    seen = vm_requests(proxy)
    assert seen[: 1 + pages] == [("watch", f"answered {status}")] + [("page", "forwarded")] * pages
    # any later observation by the same client (``agreeing`` may read more than once) goes
    # straight to pages: the refusal is remembered
    assert all(kind == "page" for kind, _ in seen[1:])
    # the other kinds still stream
    assert any(
        parse_qs(r.query).get("watch") == ["1"] and r.path.endswith("/datavolumes")
        for r in proxy.seen
    )


def test_an_error_of_the_api_server_on_a_watch_list_is_a_cluster_error(
    control_plane: ControlPlane, fleet: str, proxy: FaultProxy, tmp_path: Path
) -> None:
    """What a stream cannot heal is the error it is, as for a LIST: a 401 is not a reason to
    read paginated."""
    kubeconfig = proxy.kubeconfig(tmp_path / "via-proxy", control_plane.admin_token)
    proxy.add(Fault("GET", VM_PATH, status=401, watch=True))
    with pytest.raises(ClusterError) as caught:
        vm_names(kubeconfig, fleet)
    assert caught.value.code == 401
    assert "virtualmachines in namespace" in str(caught.value)
    assert vm_requests(proxy) == [("watch", "answered 401")]


def test_the_end_bookmark_is_what_ends_a_stream(control_plane: ControlPlane, fleet: str) -> None:
    """The protocol the reader relies on, read off the real API server: ADDED events, then a
    BOOKMARK annotated with ``INITIAL_EVENTS_END`` (a reader that stopped at anything else
    would miss objects or wait for the watch's timeout)."""
    api = control_plane.api()
    response = api.get(
        version="kubevirt.io/v1",
        namespace=fleet,
        url="virtualmachines",
        params={
            "watch": "1",
            "sendInitialEvents": "true",
            "resourceVersionMatch": "NotOlderThan",
            "allowWatchBookmarks": "true",
            "timeoutSeconds": "30",
        },
        stream=True,
    )
    api.raise_for_status(response)
    kinds = []
    for line in response.iter_lines():
        event = json.loads(line)
        kinds.append(event["type"])
        notes = event["object"]["metadata"].get("annotations") or {}
        if event["type"] == "BOOKMARK" and notes.get(INITIAL_EVENTS_END) == "true":
            break
    response.close()
    assert kinds == ["ADDED"] * VMS + ["BOOKMARK"]


# ------------------------------------------------------------------------------------------
# Concurrency
# ------------------------------------------------------------------------------------------


class CountingProxy(FaultProxy):
    """Counts requests in flight, in all and per path. The first request of each path is held
    until another request is in flight too (or ``HOLD`` seconds passed): lists sent at once
    pass at once, lists sent one after another would each wait out the hold and never
    overlap.

    A request is in flight from its arrival until the API server has answered it (``_record``,
    called before the answer is relayed): the client sends a kind's next page only once it
    has that answer, so a page cannot overlap the one before it here, whereas counting until
    the relay's thread ends did (the next page arrived first, once in a CI run)."""

    HOLD = 5.0

    def __init__(self, server: str, ca_file: Path) -> None:
        super().__init__(server, ca_file)
        self.changed = threading.Condition()
        self.in_flight: dict[str, int] = {}
        self.most = 0
        self.most_per_path: dict[str, int] = {}
        self._answered: set[int] = set()  # id() of the handlers whose request is answered

    def _serve(self, handler: BaseHTTPRequestHandler) -> None:
        path = handler.path.partition("?")[0]
        with self.changed:
            first = path not in self.most_per_path
            self.in_flight[path] = self.in_flight.get(path, 0) + 1
            self.most = max(self.most, sum(self.in_flight.values()))
            self.most_per_path[path] = max(self.most_per_path.get(path, 0), self.in_flight[path])
            self.changed.notify_all()
            if first:
                self.changed.wait_for(lambda: sum(self.in_flight.values()) > 1, self.HOLD)
        try:
            super()._serve(handler)
        finally:
            self._answer_seen(handler)
            with self.changed:
                self._answered.discard(id(handler))

    def _record(self, handler: BaseHTTPRequestHandler, body: bytes, outcome: str) -> None:
        super()._record(handler, body, outcome)
        self._answer_seen(handler)

    def _answer_seen(self, handler: BaseHTTPRequestHandler) -> None:
        """The request of ``handler`` is no longer in flight (once, however often called)."""
        with self.changed:
            if id(handler) not in self._answered:
                self._answered.add(id(handler))
                self.in_flight[handler.path.partition("?")[0]] -= 1


def test_the_kinds_are_listed_at_once_one_request_per_kind_in_flight(
    control_plane: ControlPlane, fleet: str, tmp_path: Path
) -> None:
    with CountingProxy(control_plane.server, control_plane.ca_file) as counting:
        kubeconfig = counting.kubeconfig(tmp_path / "via-proxy", control_plane.admin_token)
        cluster = Cluster(load_client(str(kubeconfig)), page_size=PAGE, watch_list=False)
        fetch(cluster, [fleet])  # paginated: up to 7 requests one after another per kind
    assert len(counting.most_per_path) == 8, counting.most_per_path
    assert all(n == 1 for n in counting.most_per_path.values()), counting.most_per_path
    assert 2 <= counting.most <= 8, "the kinds overlap, at most one request each"
