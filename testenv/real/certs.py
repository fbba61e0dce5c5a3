"""Throw-away PKI for the real engine, made with the openssl CLI (no Python dependency).

One CA signs every serving and client certificate (virt-api's webhooks and its handler
client pair, virt-controller's metrics endpoint, the API server's front proxy); CDI's two
upload signers are CAs of their own, as cdi-operator makes them; CDI's clone tokens are
signed with an RSA key pair. Keys are RSA 2048: CDI parses its signer and token keys as RSA.
"""

from __future__ import annotations

import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path


class CertError(RuntimeError):
    """openssl is missing or failed."""


@dataclass(frozen=True)
class Pair:
    """A certificate and its key, as PEM files."""

    cert: Path
    key: Path


def _openssl(*args: str, cwd: Path) -> None:
    openssl = shutil.which("openssl")
    if openssl is None:
        raise CertError("the real engine needs the openssl CLI for its certificates")
    run = subprocess.run([openssl, *args], cwd=cwd, capture_output=True, text=True, check=False)
    if run.returncode != 0:
        raise CertError(f"openssl {' '.join(args[:2])} failed: {run.stderr[-2000:]}")


def ca(directory: Path, name: str) -> Pair:
    """A self-signed CA ``<name>.crt``/``<name>.key`` valid for ten years."""
    pair = Pair(directory / f"{name}.crt", directory / f"{name}.key")
    _openssl("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-sha256", "-days", "3650",
             "-keyout", str(pair.key), "-out", str(pair.cert), "-subj", f"/CN={name}",
             "-addext", "basicConstraints=critical,CA:TRUE",
             "-addext", "keyUsage=critical,keyCertSign,cRLSign,digitalSignature",
             cwd=directory)
    return pair


def leaf(directory: Path, name: str, issuer: Pair, *, common_name: str = "",
         ips: tuple[str, ...] = ("127.0.0.1",), dns: tuple[str, ...] = ("localhost",)) -> Pair:
    """A serving and client certificate for ``ips``/``dns`` signed by ``issuer``."""
    pair = Pair(directory / f"{name}.crt", directory / f"{name}.key")
    csr = directory / f"{name}.csr"
    ext = directory / f"{name}.ext"
    sans = ",".join([*(f"IP:{ip}" for ip in ips), *(f"DNS:{d}" for d in dns)])
    ext.write_text(
        f"subjectAltName={sans}\nbasicConstraints=CA:FALSE\n"
        "keyUsage=critical,digitalSignature,keyEncipherment\n"
        "extendedKeyUsage=serverAuth,clientAuth\n"
    )
    _openssl("req", "-new", "-newkey", "rsa:2048", "-nodes", "-keyout", str(pair.key),
             "-out", str(csr), "-subj", f"/CN={common_name or name}", cwd=directory)
    _openssl("x509", "-req", "-sha256", "-days", "365", "-in", str(csr),
             "-CA", str(issuer.cert), "-CAkey", str(issuer.key), "-CAcreateserial",
             "-out", str(pair.cert), "-extfile", str(ext), cwd=directory)
    csr.unlink()
    ext.unlink()
    return pair


def rsa_pair(directory: Path, name: str) -> Pair:
    """An RSA key ``<name>`` (PEM) and its public key ``<name>.pub`` (PEM, PKIX), the form
    of CDI's clone-token keys (``/var/run/cdi/token/keys/id_rsa{,.pub}``)."""
    pair = Pair(directory / f"{name}.pub", directory / name)
    _openssl("genrsa", "-out", str(pair.key), "2048", cwd=directory)
    _openssl("rsa", "-in", str(pair.key), "-pubout", "-out", str(pair.cert), cwd=directory)
    return pair
