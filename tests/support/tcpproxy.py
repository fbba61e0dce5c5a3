"""A small threaded TCP proxy that can partition its clients from the server, for tests.

``TcpProxy(("127.0.0.1", port))`` listens on 127.0.0.1 (a free port, ``address``) and forwards
every connection to the upstream address, bytes unchanged (TLS passes through: the client still
talks to the API server's certificate). ``kubeconfig_via`` writes a copy of a kubeconfig whose
clusters point at the proxy, so a process under test can be cut off while everything else
(the test itself, the controllers, another runner) still reaches the API server directly.

- ``cut()`` is a blackhole, not a refusal: from then on no byte is forwarded either way, the
  open sockets stay open (a client waiting for an answer just waits, as behind a dead switch),
  bytes the client sends stay unread, and a new connection is accepted but held: nothing is
  forwarded and no upstream connection is made, so its TLS handshake hangs.
- ``heal()`` ends the partition. By default (``reset=True``) every connection that lived through
  the cut, held ones included, is reset (RST to the client, the upstream side closed), and
  whatever the client sent meanwhile is never delivered: a partition longer than TCP's and the
  client's patience. So every request the server sees after ``heal`` was sent after it, which
  is what makes "the runner sent no write after X" checkable in an audit log.
  ``heal(reset=False)`` lets the held bytes flow instead (a short outage TCP rode out: requests
  sent during the cut arrive late) and connects the held connections upstream.
- ``close()`` stops listening and closes every connection.

Counters (``accepted``, ``held``, ``reset``, ``bytes_up``, ``bytes_down``) say what went
through, for a test's failure message. No dependency beyond the standard library.
"""

from __future__ import annotations

import contextlib
import select
import socket
import struct
import threading
from pathlib import Path
from types import TracebackType
from typing import Any, Self
from urllib.parse import urlsplit, urlunsplit

import yaml

_POLL = 0.05  # seconds a pump waits on its socket before looking at the proxy's state again
_CHUNK = 65536


class _Link:
    """One client connection and (once connected) its upstream connection."""

    def __init__(self, client: socket.socket) -> None:
        self.client = client
        self.upstream: socket.socket | None = None
        self.closed = False
        self.through_cut = False  # open (or held) while the proxy was cut
        self.half_closed = 0  # directions whose sender reached EOF

    def close(self, *, rst: bool = False) -> None:
        self.closed = True
        for sock in (self.client, self.upstream):
            if sock is None:
                continue
            if rst:
                # SO_LINGER 0: close() sends RST instead of FIN (the client sees a reset)
                with contextlib.suppress(OSError):
                    sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            with contextlib.suppress(OSError):
                sock.close()


class TcpProxy:
    """Forward 127.0.0.1:<free port> to ``upstream``; ``cut``/``heal`` a partition."""

    def __init__(self, upstream: tuple[str, int], *, host: str = "127.0.0.1") -> None:
        self.upstream = upstream
        self._lock = threading.Condition()
        self._cut = False
        self._links: list[_Link] = []
        self._closed = False
        self.accepted = 0
        self.held = 0  # connections accepted while cut
        self.reset = 0  # connections reset by heal(reset=True)
        self.bytes_up = 0  # client -> server
        self.bytes_down = 0  # server -> client
        self._listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self._listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self._listener.bind((host, 0))
        self._listener.listen(128)
        self._listener.settimeout(_POLL)
        self.address: tuple[str, int] = (host, int(self._listener.getsockname()[1]))
        self._acceptor = threading.Thread(target=self._accept, name="tcpproxy-accept", daemon=True)
        self._acceptor.start()

    # -- control

    @property
    def is_cut(self) -> bool:
        return self._cut

    def cut(self) -> None:
        """Blackhole: forward nothing either way from now on; hold new connections."""
        with self._lock:
            self._cut = True
            for link in self._links:
                link.through_cut = True
            self._lock.notify_all()

    def heal(self, *, reset: bool = True) -> None:
        """End the partition: reset every connection that lived through it (default), or let
        the held bytes flow and connect the held connections (``reset=False``)."""
        with self._lock:
            self._cut = False
            survivors = []
            for link in self._links:
                if link.through_cut and reset:
                    link.close(rst=True)
                    self.reset += 1
                    continue
                link.through_cut = False
                survivors.append(link)
            self._links = survivors
            held = [link for link in survivors if link.upstream is None]
            self._lock.notify_all()
        for link in held:
            self._connect(link)

    def close(self) -> None:
        """Stop listening and close every connection (idempotent)."""
        with self._lock:
            self._closed = True
            links, self._links = self._links, []
            self._lock.notify_all()
        with contextlib.suppress(OSError):
            self._listener.close()
        for link in links:
            link.close()
        self._acceptor.join(timeout=5)

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def __repr__(self) -> str:
        host, port = self.address
        return (
            f"TcpProxy({host}:{port} -> {self.upstream[0]}:{self.upstream[1]}, "
            f"{'cut' if self._cut else 'forwarding'}, accepted {self.accepted}, held {self.held}, "
            f"reset {self.reset}, up {self.bytes_up} B, down {self.bytes_down} B)"
        )

    # -- the threads

    def _accept(self) -> None:
        while not self._closed:
            try:
                client, _ = self._listener.accept()
            except TimeoutError:
                continue  # look at _closed again (close() cannot wake a blocked accept)
            except OSError:
                return  # closed
            client.settimeout(None)
            link = _Link(client)
            with self._lock:
                if self._closed:
                    link.close()
                    return
                self.accepted += 1
                self._links.append(link)
                if self._cut:
                    link.through_cut = True
                    self.held += 1
                    continue  # held: connected upstream only if heal(reset=False)
            self._connect(link)

    def _connect(self, link: _Link) -> None:
        try:
            upstream = socket.create_connection(self.upstream, timeout=10)
            upstream.settimeout(None)
        except OSError:
            link.close(rst=True)
            return
        with self._lock:
            if link.closed:
                upstream.close()
                return
            link.upstream = upstream
        for src, dst, up in ((link.client, upstream, True), (upstream, link.client, False)):
            threading.Thread(
                target=self._pump, args=(link, src, dst, up), name="tcpproxy-pump", daemon=True
            ).start()

    def _gate(self, link: _Link) -> bool:
        """Wait while the proxy is cut; False once the link is closed."""
        with self._lock:
            while self._cut and not link.closed:
                self._lock.wait(_POLL)
            return not link.closed

    def _pump(self, link: _Link, src: socket.socket, dst: socket.socket, up: bool) -> None:
        try:
            while self._gate(link):
                try:
                    ready, _, _ = select.select([src], [], [], _POLL)
                except (OSError, ValueError):
                    break
                if not ready or not self._gate(link):
                    continue  # a cut that began meanwhile leaves the bytes unread
                data = src.recv(_CHUNK)
                if not data:
                    with contextlib.suppress(OSError):
                        dst.shutdown(socket.SHUT_WR)
                    with self._lock:
                        link.half_closed += 1
                        done = link.half_closed >= 2
                    if done:
                        break
                    return
                # read just as a cut began: hold the chunk until the partition ends
                if not self._gate(link):
                    break
                dst.sendall(data)
                with self._lock:
                    if up:
                        self.bytes_up += len(data)
                    else:
                        self.bytes_down += len(data)
        except OSError:
            pass
        with self._lock:
            if link in self._links:
                self._links.remove(link)
        link.close()


def kubeconfig_via(proxy: TcpProxy, source: Path, dest: Path) -> Path:
    """Copy the kubeconfig ``source`` to ``dest`` with every cluster's server pointing at
    ``proxy`` (same scheme and path; credentials and CA unchanged). Returns ``dest``.

    TLS stays valid: the proxy passes the bytes through, so the client still checks the API
    server's certificate. Its name check is against the host in the server URL; the proxy
    listens on 127.0.0.1, which the test control plane's self-signed certificate covers (its
    SAN is 127.0.0.1, testenv/controlplane.py). For a server known by another name,
    ``tls-server-name`` is set to that name so the check still passes.
    """
    config: dict[str, Any] = yaml.safe_load(source.read_text())
    host, port = proxy.address
    for entry in config.get("clusters") or []:
        cluster = entry["cluster"]
        parts = urlsplit(str(cluster["server"]))
        if parts.hostname and parts.hostname != host:
            cluster.setdefault("tls-server-name", parts.hostname)
        cluster["server"] = urlunsplit(
            (parts.scheme, f"{host}:{port}", parts.path, parts.query, parts.fragment)
        )
    dest.parent.mkdir(parents=True, exist_ok=True)
    dest.write_text(yaml.safe_dump(config, sort_keys=False))
    dest.chmod(0o600)
    return dest
