"""A small fake API server on 127.0.0.1 (a real socket server in a thread), for what the real
control plane will not do: redirect, answer HTML with 200, send lists where objects belong,
absurdly deep JSON, or a 5xx on the one request a test is about.

``FakeAPI`` answers by (method, path) from ``routes`` (``Answer`` values; the path without the
query string), else from ``default``; every request is recorded with its headers. A minimal
cluster (``cluster_lists``) lets ``plan`` get to the point where the answer under test is used.
"""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import yaml


@dataclass(frozen=True)
class Answer:
    status: int = 200
    body: bytes = b"{}"
    headers: Mapping[str, str] = field(default_factory=lambda: {"Content-Type": "application/json"})

    @classmethod
    def json(cls, doc: Any, status: int = 200) -> Answer:
        return cls(status, json.dumps(doc).encode())


@dataclass(frozen=True)
class Seen:
    method: str
    path: str
    headers: Mapping[str, str]


class FakeAPI:
    """Use as a context manager; ``url`` is ``http://127.0.0.1:PORT``."""

    def __init__(
        self, routes: Mapping[tuple[str, str], Answer] | None = None, default: Answer | None = None
    ) -> None:
        self.routes = dict(routes or {})
        self.default = default or Answer(404, b'{"kind":"Status","message":"not found","code":404}')
        self.seen: list[Seen] = []
        fake = self

        class Handler(BaseHTTPRequestHandler):
            def _answer(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                if length:
                    self.rfile.read(length)
                path = self.path.split("?", 1)[0]
                fake.seen.append(Seen(self.command, path, dict(self.headers.items())))
                answer = fake.routes.get((self.command, path), fake.default)
                self.send_response(answer.status)
                for key, value in answer.headers.items():
                    self.send_header(key, value)
                self.send_header("Content-Length", str(len(answer.body)))
                self.end_headers()
                self.wfile.write(answer.body)

            do_GET = do_POST = do_PATCH = do_PUT = do_DELETE = _answer

            def log_message(self, format: str, *args: Any) -> None:
                pass

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self._server.server_address[1]}"
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)

    def __enter__(self) -> FakeAPI:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(timeout=10)


def kubeconfig(path: Path, server: str, user: Mapping[str, Any] | None = None) -> Path:
    """A kubeconfig for ``server`` (plain http, no CA) with ``user`` (default: a token)."""
    doc = {
        "apiVersion": "v1",
        "kind": "Config",
        "clusters": [{"name": "fake", "cluster": {"server": server}}],
        "users": [{"name": "fake", "user": dict(user or {"token": "fake-secret-token"})}],
        "contexts": [{"name": "fake", "context": {"cluster": "fake", "user": "fake"}}],
        "current-context": "fake",
    }
    path.write_text(yaml.safe_dump(doc))
    return path


NS = "ns"
PLAN = f"""\
apiVersion: vmstorage.dev/v1alpha1
kind: StoragePlan
metadata: {{name: fake}}
spec:
  namespace: {NS}
  storageClass: new
  virtualMachines: [{{name: vm1}}]
"""


def plan_file(directory: Path, text: str = PLAN) -> Path:
    path = directory / "plan.yaml"
    path.write_text(text)
    return path


def vm(name: str = "vm1", claim: str = "disk1", **spec: Any) -> dict[str, Any]:
    """A stopped VM with one PVC disk (moves offline when its claim is on class ``old``)."""
    return {
        "metadata": {"name": name, "namespace": NS, "uid": f"uid-{name}", "resourceVersion": "1"},
        "spec": {
            "runStrategy": "Halted",
            "template": {
                "spec": {
                    "domain": {"devices": {"disks": [{"name": "rootdisk", "disk": {}}]}},
                    "volumes": [
                        {"name": "rootdisk", "persistentVolumeClaim": {"claimName": claim}}
                    ],
                }
            },
            **spec,
        },
    }


def pvc(name: str = "disk1", size: str = "10Gi") -> dict[str, Any]:
    return {
        "metadata": {"name": name, "namespace": NS},
        "spec": {
            "storageClassName": "old",
            "accessModes": ["ReadWriteOnce"],
            "volumeMode": "Filesystem",
            "resources": {"requests": {"storage": size}},
        },
        "status": {"phase": "Bound", "capacity": {"storage": size}},
    }


def cluster_lists(
    vms: list[Any] | None = None, pvcs: list[Any] | None = None
) -> dict[tuple[str, str], Answer]:
    """The 8 LISTs of ``plan`` for one namespace: VMs, their PVCs, classes old and new."""

    def items(objects: list[Any]) -> Answer:
        return Answer.json({"kind": "List", "metadata": {"resourceVersion": "1"}, "items": objects})

    classes = [{"metadata": {"name": n}, "provisioner": "csi.example.com"} for n in ("old", "new")]
    return {
        ("GET", f"/apis/kubevirt.io/v1/namespaces/{NS}/virtualmachines"): items(
            [vm()] if vms is None else vms
        ),
        ("GET", f"/apis/kubevirt.io/v1/namespaces/{NS}/virtualmachineinstances"): items([]),
        ("GET", f"/api/v1/namespaces/{NS}/persistentvolumeclaims"): items(
            [pvc()] if pvcs is None else pvcs
        ),
        ("GET", f"/apis/cdi.kubevirt.io/v1beta1/namespaces/{NS}/datavolumes"): items([]),
        ("GET", "/apis/storage.k8s.io/v1/storageclasses"): items(classes),
        ("GET", "/apis/cdi.kubevirt.io/v1beta1/storageprofiles"): items([]),
        ("GET", "/apis/kubevirt.io/v1/kubevirts"): items([]),
        (
            "GET",
            f"/apis/kubevirt.io/v1/namespaces/{NS}/virtualmachineinstancemigrations",
        ): items([]),
    }


def list_path(plural: str) -> tuple[str, str]:
    """The route key of one of ``cluster_lists``' LISTs, by plural."""
    for key in cluster_lists():
        if key[1].endswith("/" + plural):
            return key
    raise KeyError(plural)


def requests_to(seen: list[Seen], prefix: str = "") -> Iterator[Seen]:
    return (s for s in seen if s.path.startswith(prefix))
