"""Loop mode's HTTP endpoint (``run --every --metrics-port PORT``): one port, three paths.

- ``/metrics``: the last run's Prometheus metrics (``publish.metrics``' registry, which every
  cycle records into).
- ``/healthz`` (the liveness probe): 200 while the loop runs; 503 once it stopped (SIGTERM),
  so a wedged process that still answers HTTP is not mistaken for a working one.
- ``/readyz`` (the readiness probe): 200 when the last cycle reached the API server (it ran,
  or found the Lease held by another runner: both are answers from the API server), 503 before
  the first cycle ended and after one that could not reach it or was refused (a cluster
  error), with the reason in the body.

Served from a daemon thread by the standard library's WSGI server, one thread per request.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from socketserver import ThreadingMixIn
from typing import Any
from wsgiref.simple_server import WSGIRequestHandler, WSGIServer, make_server

from prometheus_client import make_wsgi_app

from reconciler.model.errors import ClusterError
from reconciler.model.text import clean
from reconciler.publish.metrics import Metrics

StartResponse = Callable[[str, list[tuple[str, str]]], Any]


@dataclass
class Health:
    """What the probes answer; the loop's cycle callback updates it."""

    alive: bool = True
    ready: bool = False
    why: str = "no run has finished yet"
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    def heard(self, error: BaseException | None) -> None:
        """A cycle ended: with ``error`` (None: it ran or was skipped: the API server
        answered)."""
        with self._lock:
            if isinstance(error, ClusterError):
                self.ready, self.why = False, f"the last run could not use the API server: {error}"
            else:
                self.ready, self.why = True, "the last run reached the API server"

    def stopped(self) -> None:
        with self._lock:
            self.alive, self.why = False, "the loop stopped"

    def answer(self, path: str) -> tuple[bool, str]:
        with self._lock:
            if path == "/healthz":
                return self.alive, "ok" if self.alive else self.why
            return self.ready and self.alive, self.why


class _Server(ThreadingMixIn, WSGIServer):
    daemon_threads = True


class _Quiet(WSGIRequestHandler):
    def log_message(self, format: str, *args: Any) -> None:
        """Probes every few seconds would flood stderr: say nothing."""


def serve(port: int, health: Health, addr: str = "0.0.0.0") -> Metrics:
    """Serve ``/metrics``, ``/healthz`` and ``/readyz`` on ``addr:port`` from a thread; return
    the ``Metrics`` to give every cycle (``close()`` stops the server). Raises ``OSError``
    when the port cannot be bound."""
    metrics = Metrics()
    scrape = make_wsgi_app(metrics.registry)

    def app(environ: dict[str, Any], start_response: StartResponse) -> Iterable[bytes]:
        path = environ.get("PATH_INFO", "")
        if path not in ("/healthz", "/readyz"):
            result: Iterable[bytes] = scrape(environ, start_response)
            return result
        ok, text = health.answer(path)
        start_response(
            "200 OK" if ok else "503 Service Unavailable",
            [("Content-Type", "text/plain; charset=utf-8")],
        )
        return [(clean(text, 500) + "\n").encode()]

    server = make_server(addr, port, app, server_class=_Server, handler_class=_Quiet)
    thread = threading.Thread(target=server.serve_forever, name="metrics-http", daemon=True)
    thread.start()
    metrics.server = server
    return metrics
