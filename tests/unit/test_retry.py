"""``kube.retry`` and ``Cluster._send``: which failed requests are sent again (issue 18 item 10).

Against ``FakeAPI`` (a local HTTP server) and a closed port; the backoff is shrunk so the
tests take milliseconds. The cluster-level proof (a proxy injecting faults into a real
`apply`) is tests/cluster/test_transient_errors.py.
"""

from __future__ import annotations

import socket
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import requests

from reconciler.kube import retry
from reconciler.kube.client import Cluster
from reconciler.kube.connect import load_client
from reconciler.kube.resources import DATA_VOLUMES, LEASES, VIRTUAL_MACHINES
from reconciler.model.errors import ClusterError
from tests.support.fakeapi import Answer, FakeAPI, kubeconfig

VM_PATH = "/apis/kubevirt.io/v1/namespaces/ns/virtualmachines/vm1"
DV_PATH = "/apis/cdi.kubevirt.io/v1beta1/namespaces/ns/datavolumes"
BUSY = Answer.json({"kind": "Status", "code": 503, "message": "busy"}, status=503)


@pytest.fixture(autouse=True)
def quick(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(retry, "BASE", 0.001)
    monkeypatch.setattr(retry, "CAP", 0.005)


@pytest.fixture
def fake(tmp_path: Path) -> Iterator[tuple[FakeAPI, Cluster]]:
    with FakeAPI() as api:
        yield api, Cluster(load_client(str(kubeconfig(tmp_path / "kc", api.url))))


def sent(api: FakeAPI, method: str, path: str) -> int:
    return sum(1 for s in api.seen if (s.method, s.path) == (method, path))


def test_kinds() -> None:
    assert retry.patch_kind([{"op": "test", "path": "/a", "value": 1}]) is retry.Kind.PRECONDITIONED
    assert retry.patch_kind([{"op": "replace", "path": "/a", "value": 1}]) is retry.Kind.UNGUARDED
    assert retry.patch_kind([{"op": "replace"}], dry_run=True) is retry.Kind.READ
    assert retry.put_kind({"metadata": {"resourceVersion": "7"}}) is retry.Kind.PRECONDITIONED
    assert retry.put_kind({"metadata": {}}) is retry.Kind.UNGUARDED


@pytest.mark.parametrize(
    ("kind", "status", "headers", "expected"),
    [
        (retry.Kind.READ, 503, {}, 0.0),
        (retry.Kind.READ, 503, {"Retry-After": "2"}, 2.0),
        (retry.Kind.READ, 504, {}, 0.0),
        (retry.Kind.READ, 500, {}, None),  # an internal error does not heal by itself
        (retry.Kind.READ, 500, {"Retry-After": "1"}, 1.0),  # unless the server says when
        (retry.Kind.READ, 404, {}, None),
        (retry.Kind.PRECONDITIONED, 503, {}, 0.0),
        (retry.Kind.UNGUARDED, 503, {"Retry-After": "1"}, None),  # may have been applied
        (retry.Kind.UNGUARDED, 429, {"Retry-After": "3"}, 3.0),  # rejected before executed
        (retry.Kind.READ, 429, {"Retry-After": "3600"}, retry.MAX_RETRY_AFTER),
        (retry.Kind.READ, 429, {"Retry-After": "Wed, 21 Oct 2015 07:28:00 GMT"}, 0.0),
    ],
)
def test_which_answers_are_retried(
    kind: retry.Kind, status: int, headers: dict[str, str], expected: float | None
) -> None:
    assert retry.answer_retry(kind, status, headers) == expected


def test_backoff_grows_is_capped_and_jittered() -> None:
    firsts = {retry.backoff(1) for _ in range(50)}
    assert all(0.0005 <= d <= 0.001 for d in firsts) and len(firsts) > 1
    assert all(retry.backoff(30) <= retry.CAP for _ in range(50))


def test_a_read_is_sent_again_after_a_503(fake: tuple[FakeAPI, Cluster]) -> None:
    api, cluster = fake
    api.routes[("GET", VM_PATH)] = BUSY
    with pytest.raises(ClusterError, match=r"busy \(HTTP 503\)"):
        cluster.get(VIRTUAL_MACHINES, "ns", "vm1")
    assert sent(api, "GET", VM_PATH) == retry.ATTEMPTS


def test_a_create_that_got_a_503_is_sent_once(fake: tuple[FakeAPI, Cluster]) -> None:
    api, cluster = fake
    api.routes[("POST", DV_PATH)] = BUSY
    with pytest.raises(ClusterError, match="HTTP 503"):
        cluster.create(DATA_VOLUMES, "ns", {"metadata": {"name": "d"}})
    assert sent(api, "POST", DV_PATH) == 1


def test_a_delete_is_sent_again_only_with_preconditions(fake: tuple[FakeAPI, Cluster]) -> None:
    api, cluster = fake
    api.routes[("DELETE", f"{DV_PATH}/d")] = BUSY
    with pytest.raises(ClusterError):
        cluster.delete(DATA_VOLUMES, "ns", "d")
    assert sent(api, "DELETE", f"{DV_PATH}/d") == 1
    with pytest.raises(ClusterError):
        cluster.delete(DATA_VOLUMES, "ns", "d", uid="u-1")
    assert sent(api, "DELETE", f"{DV_PATH}/d") == 1 + retry.ATTEMPTS


def test_a_patch_is_sent_again_only_with_a_test(fake: tuple[FakeAPI, Cluster]) -> None:
    api, cluster = fake
    api.routes[("PATCH", VM_PATH)] = BUSY
    with pytest.raises(ClusterError):
        cluster.json_patch(VIRTUAL_MACHINES, "ns", "vm1", [{"op": "add", "path": "/a", "value": 1}])
    assert sent(api, "PATCH", VM_PATH) == 1
    with pytest.raises(ClusterError):
        cluster.json_patch(
            VIRTUAL_MACHINES,
            "ns",
            "vm1",
            [{"op": "test", "path": "/a", "value": 1}, {"op": "add", "path": "/b", "value": 2}],
        )
    assert sent(api, "PATCH", VM_PATH) == 1 + retry.ATTEMPTS


def test_retry_after_is_honoured_within_the_budget(fake: tuple[FakeAPI, Cluster]) -> None:
    api, cluster = fake
    path = "/apis/coordination.k8s.io/v1/namespaces/ns/leases/l"
    api.routes[("GET", path)] = Answer(
        503, b'{"message": "later"}', {"Content-Type": "application/json", "Retry-After": "0.3"}
    )
    began = time.monotonic()
    with pytest.raises(ClusterError):
        cluster.get(LEASES, "ns", "l", timeout=1.0)  # a request's timeout is its budget
    took = time.monotonic() - began
    # 0.3 s apart, the fourth send ends the 1 s budget; on a loaded machine each send takes
    # longer, so fewer fit (a pause that would end past the budget is not taken), but never
    # more and never just one; every pause between two sends is the 0.3 s asked for
    sends = sent(api, "GET", path)
    assert 2 <= sends <= 4, "0.3 s apart within the 1 s budget"
    assert 0.3 * (sends - 1) <= took < 2.0, f"{sends} sends in {took:.2f}s"


def test_a_write_that_never_left_is_sent_again(tmp_path: Path) -> None:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]  # closed once the block ends: connections are refused
    cluster = Cluster(load_client(str(kubeconfig(tmp_path / "kc", f"http://127.0.0.1:{port}"))))
    with pytest.raises(ClusterError, match=rf"cannot reach the API server \({retry.ATTEMPTS} att"):
        cluster.create(DATA_VOLUMES, "ns", {"metadata": {"name": "d"}})


def test_a_dropped_connection_is_not_a_refused_one() -> None:
    refused = requests.ConnectionError("Max retries exceeded (Caused by NewConnectionError(...))")
    dropped = requests.ConnectionError(
        "('Connection aborted.', RemoteDisconnected('closed without response'))"
    )
    assert not retry.never_sent(refused), "a message is not a type: only the chain decides"
    assert not retry.never_sent(dropped)
    assert retry.never_sent(requests.exceptions.ConnectTimeout("connect timed out"))
    assert not retry.error_retry(retry.Kind.UNGUARDED, dropped)
    assert retry.error_retry(retry.Kind.READ, dropped)
    assert retry.error_retry(retry.Kind.PRECONDITIONED, dropped)
    assert not retry.error_retry(retry.Kind.READ, requests.exceptions.SSLError("bad cert"))
