"""Kubeconfig files -> one checked document pykube can use. No HTTP, no processes.

Where the configuration comes from, as kubectl does it: ``--kubeconfig PATH`` (that file
only); else ``$KUBECONFIG``, a list of paths separated by ``os.pathsep`` that is *merged*
(for clusters, users and contexts the first file to define a name wins, and so does the first
non-empty ``current-context``; files that do not exist are skipped); else ``~/.kube/config``;
else the in-cluster ServiceAccount (pykube). Relative file references (CA, client certificate
and key, an exec plugin's command with a ``/``) are relative to the file that names them.

Everything pykube or requests would otherwise trip over later, with a traceback, is checked
here and raised as ``UserError`` (exit 2) naming the file and what to fix: a file that is not
YAML or not a mapping, an unknown ``--context``, a context naming a missing cluster, a server
that is not an http(s) URL, CA / client-certificate files that do not exist, ``*-data`` that is
not base64 (or not PEM), and an exec credential plugin that is not installed.
"""

from __future__ import annotations

import base64
import binascii
import os
import shutil
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import yaml

from reconciler.model.errors import Problem, UserError

MAX_KUBECONFIG_BYTES = 16 << 20
SUPPORTED_EXEC_VERSIONS = (
    "client.authentication.k8s.io/v1",
    "client.authentication.k8s.io/v1beta1",
    "client.authentication.k8s.io/v1alpha1",
)
_NAMED = {"clusters": "cluster", "users": "user", "contexts": "context"}
_FILE_FIELDS = {
    "clusters": ("certificate-authority",),
    "users": ("client-certificate", "client-key"),
}
_HINT = "pass --kubeconfig PATH, set KUBECONFIG, or run inside a pod with a ServiceAccount"
SERVICE_ACCOUNT_NAMESPACE = Path("/var/run/secrets/kubernetes.io/serviceaccount/namespace")


@dataclass(frozen=True)
class Loaded:
    """A merged, checked kubeconfig document, the context to use and where it came from."""

    doc: dict[str, Any]
    context: str
    origin: str


def config_paths(kubeconfig: str | None) -> tuple[list[Path], str] | None:
    """The files to read and how to name them in messages; None: use the ServiceAccount."""
    if kubeconfig:
        path = Path(kubeconfig).expanduser()
        if not path.is_file():
            raise _error(f"--kubeconfig {kubeconfig}: no such file")
        return [path], str(path)
    env = os.environ.get("KUBECONFIG")
    if env is not None and env.strip():
        listed = [Path(p).expanduser() for p in env.split(os.pathsep) if p.strip()]
        existing = [p for p in listed if p.is_file()]
        if not existing:
            raise _error(
                f"KUBECONFIG={env}: none of these files exist",
                "point KUBECONFIG at existing kubeconfig files (separated by "
                f"'{os.pathsep}'), or pass --kubeconfig PATH",
            )
        return existing, "KUBECONFIG " + os.pathsep.join(str(p) for p in existing)
    default = Path.home() / ".kube" / "config"
    if default.is_file():
        return [default], str(default)
    return None


def context_namespace(kubeconfig: str | None, context: str | None) -> str | None:
    """The namespace kubectl would use when neither ``-n`` nor a document names one: the
    selected context's ``namespace``, in-cluster the ServiceAccount's namespace. None when
    the context sets none, or when there is no usable kubeconfig (the client reports that
    when it is made). Reads files only; no request."""
    try:
        found = config_paths(kubeconfig)
        if found is None:
            if not SERVICE_ACCOUNT_NAMESPACE.is_file():
                return None
            namespace = SERVICE_ACCOUNT_NAMESPACE.read_text(encoding="utf-8").strip()
        else:
            loaded = load(*found, context)
            contexts = {e["name"]: e["context"] for e in loaded.doc["contexts"]}
            namespace = contexts[loaded.context].get("namespace")
    except (UserError, OSError, UnicodeDecodeError):
        return None
    return namespace if isinstance(namespace, str) and namespace else None


def load(paths: Sequence[Path], origin: str, context: str | None) -> Loaded:
    """Read, merge and check ``paths``; select ``context`` (else the current context)."""
    merged: dict[str, Any] = {"clusters": [], "users": [], "contexts": []}
    names: dict[str, set[str]] = {key: set() for key in _NAMED}
    current = ""
    for path in paths:
        doc = _read(path)
        for key, inner in _NAMED.items():
            for entry in _entries(doc, key, inner, path):
                if entry["name"] not in names[key]:
                    names[key].add(entry["name"])
                    merged[key].append(_absolute(entry, key, inner, path))
        value = doc.get("current-context")
        if value is not None and not isinstance(value, str):
            raise _error(f"{path}: current-context must be a string, got {_kind(value)}")
        current = current or (value or "")
    chosen = context if context is not None else current
    contexts = {e["name"]: e["context"] for e in merged["contexts"]}
    if not chosen:
        raise _error(
            f"{origin}: no current-context is set and --context was not given",
            _available("contexts", contexts),
        )
    if chosen not in contexts:
        what = f"--context {chosen}" if context is not None else f"current-context {chosen}"
        raise _error(f"{origin}: {what}: no such context", _available("contexts", contexts))
    ctx = contexts[chosen]
    clusters = {e["name"]: e["cluster"] for e in merged["clusters"]}
    users = {e["name"]: e["user"] for e in merged["users"]}
    cluster_name = ctx.get("cluster")
    if not isinstance(cluster_name, str) or cluster_name not in clusters:
        raise _error(
            f"{origin}: context {chosen} names cluster {cluster_name!r}, which is not defined",
            _available("clusters", clusters),
        )
    _check_cluster(clusters[cluster_name], f"{origin}: cluster {cluster_name}")
    user_name = ctx.get("user")
    if user_name not in (None, ""):
        if not isinstance(user_name, str) or user_name not in users:
            raise _error(
                f"{origin}: context {chosen} names user {user_name!r}, which is not defined",
                _available("users", users),
            )
        _check_user(users[user_name], f"{origin}: user {user_name}")
    return Loaded(doc=merged | {"current-context": chosen}, context=chosen, origin=origin)


def _read(path: Path) -> dict[str, Any]:
    try:
        with path.open("rb") as file:
            data = file.read(MAX_KUBECONFIG_BYTES + 1)
    except OSError as exc:
        raise _error(f"{path}: cannot read: {exc.strerror or exc}") from exc
    if len(data) > MAX_KUBECONFIG_BYTES:
        raise _error(f"{path}: larger than {MAX_KUBECONFIG_BYTES >> 20} MiB; not a kubeconfig")
    try:
        doc = yaml.safe_load(data)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        line = f" (line {mark.line + 1})" if mark is not None else ""
        raise _error(f"{path}: not a valid kubeconfig: invalid YAML{line}") from exc
    except RecursionError as exc:
        raise _error(f"{path}: not a valid kubeconfig: nested too deeply") from exc
    if doc is None:
        return {}  # an empty file is an empty config, as for kubectl
    if not isinstance(doc, dict):
        raise _error(
            f"{path}: not a valid kubeconfig: expected a mapping (kind: Config), got {_kind(doc)}"
        )
    return doc


def _entries(doc: Mapping[str, Any], key: str, inner: str, path: Path) -> list[dict[str, Any]]:
    items = doc.get(key)
    if items is None:
        return []
    if not isinstance(items, list):
        raise _error(f"{path}: {key} must be a list, got {_kind(items)}")
    entries = []
    for index, item in enumerate(items):
        if (
            not isinstance(item, dict)
            or not isinstance(item.get("name"), str)
            or not isinstance(item.get(inner) or {}, dict)
        ):
            raise _error(
                f"{path}: {key}[{index}] must be a mapping with a name and a {inner} mapping"
            )
        entries.append({"name": item["name"], inner: dict(item.get(inner) or {})})
    return entries


def _absolute(entry: dict[str, Any], key: str, inner: str, path: Path) -> dict[str, Any]:
    """``entry`` with its relative file references made relative to ``path``'s directory."""
    body = entry[inner]
    for name in _FILE_FIELDS.get(key, ()):
        value = body.get(name)
        if isinstance(value, str) and value and not Path(value).expanduser().is_absolute():
            body[name] = str(path.parent / value)
        elif isinstance(value, str):
            body[name] = str(Path(value).expanduser())
    exec_ = body.get("exec")
    if isinstance(exec_, dict):
        command = exec_.get("command")
        if isinstance(command, str) and "/" in command and not Path(command).is_absolute():
            exec_["command"] = str(path.parent / command)
    return entry


def _check_cluster(cluster: Mapping[str, Any], where: str) -> None:
    server = cluster.get("server")
    if not isinstance(server, str) or not server:
        raise _error(f"{where}: no server URL", "set clusters[].cluster.server: https://HOST:PORT")
    parts = urlsplit(server)
    try:
        port_ok = parts.port is None or 0 < parts.port < 65536
    except ValueError:
        port_ok = False
    if parts.scheme not in ("https", "http") or not parts.hostname or not port_ok:
        raise _error(
            f"{where}: server {server!r} is not an http(s) URL",
            "write it as https://HOST[:PORT], as kubectl config view shows it",
        )
    _check_file_or_data(cluster, "certificate-authority", where, pem="CERTIFICATE")


def _check_user(user: Mapping[str, Any], where: str) -> None:
    _check_file_or_data(user, "client-certificate", where, pem="CERTIFICATE")
    _check_file_or_data(user, "client-key", where, pem="PRIVATE KEY")
    has_cert = any(k in user for k in ("client-certificate", "client-certificate-data"))
    has_key = any(k in user for k in ("client-key", "client-key-data"))
    if has_cert != has_key:
        raise _error(f"{where}: a client certificate needs its key, and a key its certificate")
    token = user.get("token")
    if token is not None and not isinstance(token, str):
        raise _error(f"{where}: token must be a string")
    exec_ = user.get("exec")
    if exec_ is not None:
        _check_exec(exec_, where)


def _check_exec(exec_: Any, where: str) -> None:
    if not isinstance(exec_, dict):
        raise _error(f"{where}: exec must be a mapping (apiVersion, command, args, env)")
    version = exec_.get("apiVersion")
    if version not in SUPPORTED_EXEC_VERSIONS:
        raise _error(
            f"{where}: exec apiVersion {version!r} is not supported",
            "one of: " + ", ".join(SUPPORTED_EXEC_VERSIONS),
        )
    command = exec_.get("command")
    args = exec_.get("args") or []
    env = exec_.get("env") or []
    if not isinstance(command, str) or not command:
        raise _error(f"{where}: exec needs a command")
    if not isinstance(args, list) or not all(isinstance(a, str) for a in args):
        raise _error(f"{where}: exec args must be a list of strings")
    if not isinstance(env, list) or not all(
        isinstance(e, dict) and isinstance(e.get("name"), str) and isinstance(e.get("value"), str)
        for e in env
    ):
        raise _error(f"{where}: exec env must be a list of {{name, value}} strings")
    if shutil.which(command) is None:
        install = exec_.get("installHint")
        raise _error(
            f"{where}: the exec credential plugin {command!r} is not installed (or not executable)",
            str(install).strip()
            if isinstance(install, str) and install.strip()
            else "install it, or put it on PATH",
        )


def _check_file_or_data(body: Mapping[str, Any], key: str, where: str, *, pem: str) -> None:
    data_key = f"{key}-data"
    if data_key in body:
        value = body[data_key]
        try:
            if not isinstance(value, str):
                raise ValueError(value)
            decoded = base64.b64decode("".join(value.split()), validate=True)
        except (ValueError, binascii.Error) as exc:
            raise _error(f"{where}: {data_key} is not base64") from exc
        if b"-----BEGIN" not in decoded or pem.rsplit(maxsplit=1)[-1].encode() not in decoded:
            raise _error(
                f"{where}: {data_key} does not hold a PEM {pem.lower()}",
                "it is the base64 of the PEM file (base64 -w0 < file)",
            )
        return
    if key in body:
        value = body[key]
        if not isinstance(value, str) or not Path(value).is_file():
            raise _error(
                f"{where}: {key} {value!r}: no such file",
                "fix the path (a relative path is relative to the kubeconfig's directory)",
            )


def _available(what: str, names: Mapping[str, Any]) -> str:
    return f"{what} defined: {', '.join(sorted(names))}" if names else f"no {what} are defined"


def _kind(value: Any) -> str:
    return {list: "a list", str: "a string", int: "a number", bool: "a boolean"}.get(
        type(value), type(value).__name__
    )


def _error(message: str, hint: str = _HINT) -> UserError:
    return UserError([Problem(None, f"cannot load a kubeconfig: {message}", hint)])
