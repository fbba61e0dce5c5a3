"""Private files for PEM data (a kubeconfig's ``*-data``, an exec plugin's certificate).

requests reads CAs and client certificates from files only. pykube writes ``*-data`` to
``/tmp/pykube-ng.<md5>.crt`` on first use: a predictable name (anyone on the machine can plant
a CA there first, and it is trusted), created with the umask (a client key readable by all),
and rewritten in place when empty, so two threads making their first request at once can hand
one of them a truncated file (``X509: NO_CERTIFICATE_OR_CRL_FOUND``). Here each is written
once, whole, before any request, to a file of its own that only this user can read
(``tempfile`` makes it 0600 with a random name, ``O_EXCL``) and that is deleted when its
handle is closed or collected, or when the process exits.
"""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import IO, Any

import pykube


def private_pem_file(pem: bytes) -> IO[bytes]:
    """``pem`` in a new 0600 temporary file, flushed; its ``.name`` is the path. Keep the
    handle as long as the path is used: closing it deletes the file."""
    file = tempfile.NamedTemporaryFile(prefix="vmsr-", suffix=".pem")  # noqa: SIM115 - the caller owns it
    file.write(pem)
    file.flush()
    return file


def materialize(config: pykube.KubeConfig) -> list[IO[bytes]]:
    """Point every ``*-data`` entry of ``config``'s current cluster and user at a private
    file of its own (``private_pem_file``) instead of pykube's shared one. Returns the handles,
    which must live as long as the client. Entries that name a file are left alone."""
    handles: list[IO[bytes]] = []
    entries: list[tuple[dict[str, Any], str]] = [
        (config.cluster, "certificate-authority"),
        (config.user, "client-certificate"),
        (config.user, "client-key"),
    ]
    for section, key in entries:
        value = section.get(key)
        if isinstance(value, pykube.config.BytesOrFile) and value._path is None:
            file = private_pem_file(value.bytes())
            handles.append(file)
            value._path = Path(file.name)  # what BytesOrFile.filename() returns from now on
    return handles
