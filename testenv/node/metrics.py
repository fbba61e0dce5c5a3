"""The metrics endpoint of CDI's worker containers, which cdi-controller scrapes for a copy's
progress (``https://<podIP>:8443/metrics``, CDI v1.65 ``pkg/controller/common/util.go``
``GetMetricsURL``/``GetProgressReportFromURL``).

One HTTPS server on a Unix socket answers for every worker pod: the engine's pod network
(``testenv.real.engine``) hands each connection to any pod IP's port 8443 to this socket,
and the request's ``Host`` header (``<podIP>:8443``, what Go's client sends) says which pod
is asked. ``render(pod_ip)`` gives the body of that pod's ``/metrics`` in Prometheus' text
format, or None when no worker container serves at that address (answered 404 with an empty
body, which cdi-controller reads as "no progress yet", as it reads a refused connection).

The certificate is any: cdi-controller's metrics client skips verification
(``BuildHTTPClient``: ``InsecureSkipVerify: true``), as the worker's own certificate is a
self-signed one made at its start.
"""

from __future__ import annotations

import contextlib
import logging
import os
import socketserver
import ssl
import threading
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)

Render = Callable[[str], "str | None"]
"""The ``/metrics`` body of the worker container at a pod IP, or None if none serves."""

_TIMEOUT = 5.0  # seconds a connection may idle (cdi-controller gives up after 2 s)


class _Server(socketserver.ThreadingMixIn, socketserver.UnixStreamServer):
    daemon_threads = True
    context: ssl.SSLContext
    render: Render

    def handle_error(self, request: Any, client_address: Any) -> None:
        # a client gone mid-handshake or mid-request (cdi-controller's 2 s timeout)
        log.debug("worker metrics: a connection failed", exc_info=True)


class _Handler(BaseHTTPRequestHandler):
    server: _Server

    def setup(self) -> None:
        # the TLS handshake in the connection's own thread, not the accepting one
        self.request.settimeout(_TIMEOUT)
        self.request = self.server.context.wrap_socket(self.request, server_side=True)
        super().setup()

    def do_GET(self) -> None:
        host = (self.headers.get("Host") or "").strip()
        pod_ip = host.rsplit(":", 1)[0].strip("[]") if host else ""
        body = self.server.render(pod_ip) if self.path.split("?", 1)[0] == "/metrics" else None
        data = (body or "").encode()
        self.send_response(200 if body is not None else 404)
        self.send_header("Content-Type", "text/plain; version=0.0.4; charset=utf-8")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, format: str, *args: Any) -> None:
        return  # a scrape every 2-3 s per copy: not worth a log line


class MetricsServer:
    """The HTTPS server on ``socket_path`` (see the module docstring); ``close()`` stops it
    and removes the socket."""

    def __init__(self, socket_path: Path, cert: Path, key: Path, render: Render) -> None:
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        context.load_cert_chain(str(cert), str(key))
        with contextlib.suppress(FileNotFoundError):
            os.unlink(socket_path)
        self.socket_path = socket_path
        self._server = _Server(str(socket_path), _Handler)
        self._server.context = context
        self._server.render = render
        self._thread = threading.Thread(target=self._serve, name="worker-metrics", daemon=True)
        self._thread.start()

    def _serve(self) -> None:
        try:
            self._server.serve_forever(poll_interval=0.5)
        except (OSError, ValueError) as error:  # closed under it
            log.warning("worker metrics server stopped: %s", error)

    def close(self) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._thread.join()
        with contextlib.suppress(FileNotFoundError):
            os.unlink(self.socket_path)
