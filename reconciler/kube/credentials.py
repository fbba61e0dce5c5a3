"""Exec credential plugins (``users[].user.exec``), run with a timeout. The one place in
``kube`` that starts a process.

pykube runs the plugin on every request, with no timeout, and turns every failure into a
traceback. Here it runs once, non-interactively (stdin closed, ``KUBERNETES_EXEC_INFO`` set
as kubectl sets it), in its own process group that is killed after ``EXEC_TIMEOUT`` seconds;
the ExecCredential is cached until its ``expirationTimestamp`` (or until the API server
answers 401, when it is fetched again). A plugin that fails (an expired SSO session), hangs
or prints something else than an ExecCredential raises ``CredentialError``: a
``ClusterError`` with code 401 (exit 6), carrying the plugin's own last words in short.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import threading
import time
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from reconciler.kube.pemfiles import private_pem_file
from reconciler.model.errors import ClusterError
from reconciler.model.text import shown

EXEC_TIMEOUT = 30.0
"""Seconds an exec credential plugin may take (kubectl has none; a CronJob must not hang)."""

_MAX_OUTPUT = 1 << 20


class CredentialError(ClusterError):
    """The exec credential plugin failed, timed out or printed no credential."""

    def __init__(self, command: str, message: str) -> None:
        super().__init__(f"exec credential plugin {shown(command, 200)}", message, code=401)


@dataclass(frozen=True)
class Credential:
    """What a plugin returned: a bearer token, or a client certificate and key (PEM)."""

    token: str | None = None
    cert_file: str | None = None
    key_file: str | None = None


class ExecPlugin:
    """One kubeconfig user's exec plugin, its cached credential and a lock (list_many and
    the watches send from several threads; the plugin runs once for all of them)."""

    def __init__(self, exec_config: Mapping[str, Any]) -> None:
        self.config = exec_config
        self.command = str(exec_config["command"])
        self._lock = threading.Lock()
        self._credential: Credential | None = None
        self._expires: float | None = None
        self._files: list[Any] = []

    def credential(self) -> Credential:
        with self._lock:
            now = time.time()
            if self._credential is None or (self._expires is not None and now >= self._expires):
                self._credential, self._expires = self._run()
            return self._credential

    def invalidate(self) -> None:
        with self._lock:
            self._credential = None

    def _run(self) -> tuple[Credential, float | None]:
        args = [self.command, *[str(a) for a in self.config.get("args") or []]]
        env = dict(os.environ)
        env.update({str(e["name"]): str(e["value"]) for e in self.config.get("env") or []})
        env["KUBERNETES_EXEC_INFO"] = json.dumps(
            {
                "apiVersion": self.config.get("apiVersion"),
                "kind": "ExecCredential",
                "spec": {"interactive": False},
            }
        )
        try:
            process = subprocess.Popen(
                args,
                stdin=subprocess.DEVNULL,
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                env=env,
                start_new_session=True,  # its own process group: a timeout kills its children
            )
        except OSError as exc:
            raise CredentialError(self.command, f"cannot start: {exc.strerror or exc}") from exc
        try:
            out, err = process.communicate(timeout=EXEC_TIMEOUT)
        except subprocess.TimeoutExpired:
            _kill(process)
            raise CredentialError(
                self.command,
                f"no answer within {EXEC_TIMEOUT:g}s (killed); is it waiting for a login?",
            ) from None
        if process.returncode != 0:
            said = shown(err.decode("utf-8", "replace").strip()[-500:], 300) or "(nothing)"
            raise CredentialError(self.command, f"failed (exit {process.returncode}): {said}")
        return self._parse(out[:_MAX_OUTPUT])

    def _parse(self, out: bytes) -> tuple[Credential, float | None]:
        try:
            doc = json.loads(out)
            status = doc["status"]
            if not isinstance(status, dict):
                raise TypeError(status)
        except (ValueError, KeyError, TypeError, RecursionError):
            raise CredentialError(
                self.command,
                f"did not print an ExecCredential with a status: {shown(out[:200])}",
            ) from None
        expires = _expiry(status.get("expirationTimestamp"))
        token = status.get("token")
        if isinstance(token, str) and token:
            return Credential(token=token), expires
        cert, key = status.get("clientCertificateData"), status.get("clientKeyData")
        if isinstance(cert, str) and isinstance(key, str) and cert and key:
            return Credential(cert_file=self._file(cert), key_file=self._file(key)), expires
        raise CredentialError(self.command, "returned neither a token nor a client certificate")

    def _file(self, pem: str) -> str:
        file = private_pem_file(pem.encode())  # lives as long as the credential
        self._files.append(file)
        return file.name


def _expiry(value: Any) -> float | None:
    if not isinstance(value, str):
        return None
    try:
        moment = datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        return None
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    return moment.timestamp() - 10  # renew a little early


def _kill(process: subprocess.Popen[bytes]) -> None:
    try:
        os.killpg(process.pid, signal.SIGKILL)
    except OSError:
        process.kill()
    process.communicate()
