"""A kubeconfig's ``*-data`` against the real API server: read from private files of our own.

pykube would write ``certificate-authority-data`` to ``$TMPDIR/pykube-ng.<md5>.crt`` on the
first request and trust whatever is already there; two threads making their first request at
once could also read it half-written (the image smoke test once failed so:
``X509: NO_CERTIFICATE_OR_CRL_FOUND``). ``kube.pemfiles`` writes each one once, 0600, under a
random name, before any request.
"""

from __future__ import annotations

import base64
import gc
import hashlib
import stat
import tempfile
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pykube
import pytest
import yaml

from reconciler.kube import pemfiles
from reconciler.kube.connect import load_client
from testenv.controlplane import ControlPlane


def inline_kubeconfig(control_plane: ControlPlane, where: Path) -> tuple[Path, bytes]:
    """The admin kubeconfig with its CA inline (``certificate-authority-data``)."""
    config: dict[str, Any] = yaml.safe_load(control_plane.kubeconfig.read_text())
    ca = control_plane.ca_file.read_bytes()
    for cluster in config["clusters"]:
        cluster["cluster"].pop("certificate-authority", None)
        cluster["cluster"]["certificate-authority-data"] = base64.b64encode(ca).decode()
    path = where / "kubeconfig"
    path.write_text(yaml.safe_dump(config))
    return path, ca


@pytest.fixture
def private_tmp(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """``tempfile``'s directory, for this test only: where pykube (and we) write PEM files."""
    where = tmp_path / "tmp"
    where.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(where))
    return where


def test_a_ca_planted_at_pykubes_shared_path_is_not_trusted(
    control_plane: ControlPlane, tmp_path: Path, private_tmp: Path
) -> None:
    path, ca = inline_kubeconfig(control_plane, tmp_path)
    planted = private_tmp / f"pykube-ng.{hashlib.md5(ca).hexdigest()}.crt"  # pykube's name
    planted.write_bytes(b"not the API server's CA\n")  # pykube would pass this to requests

    api = load_client(str(path))
    answer = api.get(version="v1", url="namespaces/default")

    assert answer.status_code == 200
    assert planted.read_bytes() == b"not the API server's CA\n"  # neither used nor rewritten
    (ours,) = [p for p in private_tmp.iterdir() if p != planted]
    assert ours.read_bytes() == ca
    assert stat.S_IMODE(ours.stat().st_mode) == 0o600
    assert ours.name.startswith("vmsr-") and ours.name != planted.name


def test_first_requests_from_many_threads_at_once_all_verify_the_server(
    control_plane: ControlPlane, tmp_path: Path, private_tmp: Path
) -> None:
    path, _ = inline_kubeconfig(control_plane, tmp_path)
    for _ in range(5):  # each a fresh client whose first requests race
        api = load_client(str(path))
        with ThreadPoolExecutor(8) as pool:
            codes = list(
                pool.map(
                    lambda _, api=api: api.get(version="v1", url="namespaces").status_code, range(8)
                )
            )
        assert codes == [200] * 8
    assert not list(private_tmp.glob("pykube-ng.*"))  # pykube's shared file never written


def test_a_dropped_client_leaves_no_pem_file(
    control_plane: ControlPlane, tmp_path: Path, private_tmp: Path
) -> None:
    path, _ = inline_kubeconfig(control_plane, tmp_path)
    api = load_client(str(path))
    assert api.get(version="v1", url="namespaces/default").status_code == 200
    assert len(list(private_tmp.iterdir())) == 1
    api.session.close()
    del api
    gc.collect()
    assert list(private_tmp.iterdir()) == []


def test_client_certificate_and_key_data_get_private_files_too(private_tmp: Path) -> None:
    doc = {
        "clusters": [{"name": "c", "cluster": {"server": "https://127.0.0.1:1"}}],
        "users": [
            {
                "name": "u",
                "user": {
                    "client-certificate-data": base64.b64encode(b"CERT").decode(),
                    "client-key-data": base64.b64encode(b"KEY").decode(),
                },
            }
        ],
        "contexts": [{"name": "x", "context": {"cluster": "c", "user": "u"}}],
    }
    config = pykube.KubeConfig(doc, current_context="x")
    handles = pemfiles.materialize(config)
    files = {
        Path(config.user[k].filename()).read_bytes(): Path(config.user[k].filename())
        for k in ("client-certificate", "client-key")
    }
    assert set(files) == {b"CERT", b"KEY"}
    assert all(stat.S_IMODE(f.stat().st_mode) == 0o600 for f in files.values())
    assert not list(private_tmp.glob("pykube-ng.*"))
    for handle in handles:
        handle.close()
    assert list(private_tmp.iterdir()) == []
