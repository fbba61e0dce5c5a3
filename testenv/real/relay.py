"""A byte relay between a TCP port and a Unix socket: how a process in its own network
namespace (cdi-controller, whose metrics port 8443 is hard-coded) reaches the API server.

A Unix socket is a file, so it crosses network namespaces: on the host side
``listen unix:<path> connect tcp:127.0.0.1:<api port>``; inside the namespace
``listen tcp:127.0.0.1:<api port> connect unix:<path>``. TLS passes through untouched, so
the API server's certificate (SAN 127.0.0.1) still matches.

Usage: ``python -m testenv.real.relay LISTEN CONNECT [READY_FILE]`` with ``tcp:HOST:PORT``
or ``unix:PATH`` for each. Prints ``ready`` (and creates READY_FILE) once listening; runs
until killed.
"""

from __future__ import annotations

import contextlib
import os
import socket
import sys
import threading


def _parse(spec: str) -> tuple[int, object]:
    kind, _, rest = spec.partition(":")
    if kind == "unix":
        return socket.AF_UNIX, rest
    if kind == "tcp":
        host, _, port = rest.rpartition(":")
        return socket.AF_INET, (host, int(port))
    raise SystemExit(f"relay: bad address {spec!r} (tcp:HOST:PORT or unix:PATH)")


def _pump(source: socket.socket, sink: socket.socket) -> None:
    try:
        while data := source.recv(65536):
            sink.sendall(data)
    except OSError:
        pass
    finally:
        with contextlib.suppress(OSError):
            sink.shutdown(socket.SHUT_WR)


def _serve(client: socket.socket, family: int, address: object) -> None:
    upstream = socket.socket(family, socket.SOCK_STREAM)
    try:
        upstream.connect(address)  # type: ignore[arg-type]
    except OSError as error:
        print(f"relay: connect {address}: {error}", file=sys.stderr, flush=True)
        client.close()
        upstream.close()
        return
    back = threading.Thread(target=_pump, args=(upstream, client), daemon=True)
    back.start()
    _pump(client, upstream)
    back.join()
    client.close()
    upstream.close()


def main(argv: list[str]) -> int:
    """Relay every connection accepted on ``argv[0]`` to ``argv[1]``."""
    if len(argv) not in (2, 3):
        print(__doc__, file=sys.stderr)
        return 2
    listen_family, listen_address = _parse(argv[0])
    connect_family, connect_address = _parse(argv[1])
    server = socket.socket(listen_family, socket.SOCK_STREAM)
    if listen_family == socket.AF_UNIX:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(str(listen_address))
    else:
        server.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    server.bind(listen_address)  # type: ignore[arg-type]
    server.listen(64)
    print("ready", flush=True)
    if len(argv) == 3:
        with open(argv[2], "w") as ready:
            ready.write("ready\n")
    while True:
        client, _ = server.accept()
        threading.Thread(target=_serve, args=(client, connect_family, connect_address),
                         daemon=True).start()


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
