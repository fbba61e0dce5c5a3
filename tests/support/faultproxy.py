"""An HTTP proxy in front of the test API server that injects transient faults, for the retry
tests (issue 18 item 10).

``FaultProxy(server, ca_file)`` listens on plain ``http://127.0.0.1:<free port>`` and forwards
every request to the real API server over TLS (checking its certificate against ``ca_file``),
headers and body unchanged, the answer streamed back (watches included: a chunked answer is
re-chunked as it arrives). ``kubeconfig(path, token)`` writes a kubeconfig pointing at it.

``add(Fault(...))`` makes the next ``times`` requests that match (method, a regex on the path,
watch or not; after ``skip`` of them) fail instead:

- ``answer``: answered at once with ``status`` (and ``Retry-After`` when given); never
  forwarded: the API server saw nothing.
- ``drop``: the connection is closed without an answer; never forwarded.
- ``answer-after``: forwarded (the API server acted on it), then the real answer is thrown
  away and ``status`` sent instead: the ambiguous write of a proxy that timed out.

Every request is recorded in ``seen`` (method, path, query, body, what happened), for the
"was it sent again?" checks. Standard library only.
"""

from __future__ import annotations

import http.client
import json
import re
import ssl
import threading
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from types import TracebackType
from typing import Any, Self
from urllib.parse import urlsplit

import yaml

_HOP = {"connection", "keep-alive", "proxy-connection", "transfer-encoding", "te", "upgrade"}


@dataclass
class Fault:
    method: str
    path: str  # a regex, searched in the path (without the query)
    action: str = "answer"  # answer | drop | answer-after
    status: int = 503
    retry_after: str | None = None
    times: int = 1
    watch: bool | None = False  # only WATCH requests (True), only others (False), any (None)
    skip: int = 0  # let this many matching requests through first

    def matches(self, method: str, path: str, query: str) -> bool:
        if self.times <= 0 or method != self.method or not re.search(self.path, path):
            return False
        watching = "watch=1" in query or "watch=true" in query
        return self.watch is None or self.watch == watching


@dataclass(frozen=True)
class Seen:
    method: str
    path: str
    query: str
    body: bytes
    outcome: str  # forwarded | answered <status> | dropped | forwarded, answered <status>


class FaultProxy:
    def __init__(self, server: str, ca_file: Path) -> None:
        parts = urlsplit(server)
        self.upstream = (parts.hostname or "127.0.0.1", parts.port or 443)
        self.context = ssl.create_default_context(cafile=str(ca_file))
        self.faults: list[Fault] = []
        self.seen: list[Seen] = []
        self._lock = threading.Lock()
        proxy = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def _handle(self) -> None:
                proxy._serve(self)

            do_GET = do_POST = do_PATCH = do_PUT = do_DELETE = _handle

            def log_message(self, format: str, *args: Any) -> None:
                pass

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self._server.server_address[1]}"
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)
        self._thread.start()

    # -- control

    def add(self, fault: Fault) -> Fault:
        with self._lock:
            self.faults.append(fault)
        return fault

    def requests(self, method: str, path: str) -> list[Seen]:
        """What was seen of ``method`` on paths matching the regex ``path``."""
        with self._lock:
            return [s for s in self.seen if s.method == method and re.search(path, s.path)]

    def kubeconfig(self, path: Path, token: str) -> Path:
        """A kubeconfig for the proxy (plain http) with bearer ``token``."""
        doc = {
            "apiVersion": "v1",
            "kind": "Config",
            "clusters": [{"name": "proxy", "cluster": {"server": self.url}}],
            "users": [{"name": "proxy", "user": {"token": token}}],
            "contexts": [{"name": "proxy", "context": {"cluster": "proxy", "user": "proxy"}}],
            "current-context": "proxy",
        }
        path.write_text(yaml.safe_dump(doc))
        path.chmod(0o600)
        return path

    def close(self) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(timeout=10)

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    # -- serving

    def _take(self, method: str, path: str, query: str) -> Fault | None:
        with self._lock:
            for fault in self.faults:
                if fault.matches(method, path, query):
                    if fault.skip > 0:
                        fault.skip -= 1
                        continue
                    fault.times -= 1
                    return fault
        return None

    def _record(self, handler: BaseHTTPRequestHandler, body: bytes, outcome: str) -> None:
        path, _, query = handler.path.partition("?")
        with self._lock:
            self.seen.append(Seen(handler.command, path, query, body, outcome))

    def _serve(self, handler: BaseHTTPRequestHandler) -> None:
        length = int(handler.headers.get("Content-Length") or 0)
        body = handler.rfile.read(length) if length else b""
        path, _, query = handler.path.partition("?")
        fault = self._take(handler.command, path, query)
        if fault is not None and fault.action == "drop":
            self._record(handler, body, "dropped")
            handler.close_connection = True
            return
        if fault is not None and fault.action == "answer":
            self._record(handler, body, f"answered {fault.status}")
            _answer(handler, fault)
            return
        upstream = http.client.HTTPSConnection(*self.upstream, context=self.context, timeout=90)
        try:
            headers = {k: v for k, v in handler.headers.items() if k.lower() not in _HOP}
            headers.pop("Host", None)
            upstream.request(handler.command, handler.path, body=body or None, headers=headers)
            response = upstream.getresponse()
            if fault is not None:  # answer-after: the server acted; the client never hears
                response.read()
                self._record(handler, body, f"forwarded, answered {fault.status}")
                _answer(handler, fault)
                return
            self._record(handler, body, "forwarded")
            _relay(handler, response)
        except (OSError, http.client.HTTPException):  # either side went away (a watch closed)
            handler.close_connection = True
        finally:
            upstream.close()


def _answer(handler: BaseHTTPRequestHandler, fault: Fault) -> None:
    text = json.dumps(
        {
            "kind": "Status",
            "apiVersion": "v1",
            "status": "Failure",
            "message": f"injected by the test proxy: HTTP {fault.status}",
            "code": fault.status,
        }
    ).encode()
    handler.send_response(fault.status)
    handler.send_header("Content-Type", "application/json")
    if fault.retry_after is not None:
        handler.send_header("Retry-After", fault.retry_after)
    handler.send_header("Content-Length", str(len(text)))
    handler.end_headers()
    handler.wfile.write(text)
    handler.wfile.flush()


def _relay(handler: BaseHTTPRequestHandler, response: http.client.HTTPResponse) -> None:
    """The upstream answer to the client: with its length, or re-chunked as it arrives."""
    handler.send_response(response.status, response.reason)
    sized = response.getheader("Content-Length") is not None
    for key, value in response.getheaders():
        if key.lower() not in _HOP:
            handler.send_header(key, value)
    if not sized:
        handler.send_header("Transfer-Encoding", "chunked")
    handler.end_headers()
    if sized:
        handler.wfile.write(response.read())
        handler.wfile.flush()
        return
    while True:
        data = response.read1(65536)
        if not data:
            break
        handler.wfile.write(f"{len(data):x}\r\n".encode() + data + b"\r\n")
        handler.wfile.flush()
    handler.wfile.write(b"0\r\n\r\n")
    handler.wfile.flush()
