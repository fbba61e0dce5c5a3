"""Connecting to the API server: ``load_client`` makes the pykube client every request of the
reconciler goes through (``kube.client.Cluster``, the watches), from a kubeconfig checked by
``kube.kubeconfig`` or the in-cluster ServiceAccount, with ``GuardedAdapter``'s guards in its
session: no redirect followed, no credentials sent to another origin, exec credential plugins
run with a timeout (``kube.credentials``), a kubeconfig's ``*-data`` read from private files
(``kube.pemfiles``)."""

from __future__ import annotations

import json
import threading
from typing import Any
from urllib.parse import urlsplit

import pykube
import pykube.http
import requests
from requests import Response

from reconciler.kube import kubeconfig as kubeconfigs
from reconciler.kube import pemfiles
from reconciler.kube.credentials import ExecPlugin
from reconciler.model.errors import Problem, UserError
from reconciler.model.text import shown

_loaded = [0]  # one counter, mutated in place
_loaded_lock = threading.Lock()


def clients_loaded() -> int:
    """How many clients ``load_client`` has made in this process. The CLI compares it before
    and after a command: an unexpected error after the cluster was contacted is a cluster-stage
    error (exit 6), before it an input-stage one (exit 2)."""
    with _loaded_lock:
        return _loaded[0]


def load_client(kubeconfig: str | None = None, context: str | None = None) -> pykube.HTTPClient:
    """A pykube client from ``kubeconfig`` (or $KUBECONFIG merged like kubectl, then
    ~/.kube/config, then the in-cluster ServiceAccount), checked by ``kube.kubeconfig``.

    Raises UserError (exit 2) with a hint when no usable configuration exists. The client's
    session never follows a redirect and sends credentials only to the configured server
    (``GuardedAdapter``); an exec credential plugin runs with a timeout (``kube.credentials``).
    """
    found = kubeconfigs.config_paths(kubeconfig)
    try:
        if found is None:
            config = pykube.KubeConfig.from_service_account()
            if context:
                config.set_current_context(context)
            _ = config.cluster, config.user  # fail now, not on the first request
        else:
            loaded = kubeconfigs.load(*found, context)
            config = pykube.KubeConfig(loaded.doc, current_context=loaded.context)
            _ = config.cluster, config.user
    except UserError:
        raise
    except (OSError, KeyError, ValueError, TypeError, pykube.exceptions.PyKubeError) as exc:
        where = found[1] if found else "in-cluster ServiceAccount"
        raise UserError(
            [
                Problem(
                    None,
                    f"cannot load a kubeconfig ({where}): {shown(exc)}",
                    "pass --kubeconfig PATH, set KUBECONFIG, or run inside a pod with a "
                    "ServiceAccount",
                )
            ]
        ) from exc
    with _loaded_lock:
        _loaded[0] += 1
    return pykube.HTTPClient(config, timeout=60, http_adapter=GuardedAdapter(config))


class RedirectRefused(Exception):
    """The API server answered with a redirect, which is never followed (it would carry the
    credentials, and the plan would use another host's data). Its repr is its message, so it
    reads well wherever it is quoted (a watch reports ``watch failed: {exc!r}``)."""

    def __init__(self, message: str, status: int) -> None:
        super().__init__(message)
        self.status = status

    def __repr__(self) -> str:
        return str(self)


class GuardedAdapter(pykube.http.KubernetesHTTPAdapter):  # type: ignore[misc]
    """pykube's adapter (auth, client certificates, CA) with three guards, in the session so
    they cover every request: ``Cluster``'s and the watches' alike.

    - Any 3xx answer raises ``RedirectRefused`` (requests would follow it, and pykube's
      adapter would add the bearer token again on the other host).
    - A request to any other scheme/host/port than the configured server gets no credentials:
      it is refused before anything is sent.
    - An exec credential plugin runs through ``kube.credentials`` (timeout, cached result,
      a clear ``CredentialError``) instead of pykube's (no timeout, run on every request).
    - A kubeconfig's ``*-data`` (CA, client certificate and key) is read from private files
      written once, before any request (``kube.pemfiles``), not from pykube's shared ones.
    """

    def __init__(self, kube_config: pykube.KubeConfig, **kwargs: Any) -> None:
        super().__init__(kube_config, **kwargs)
        self._pem_files = pemfiles.materialize(kube_config)  # read by every request
        self._plugins: dict[str, ExecPlugin] = {}
        self._plugins_lock = threading.Lock()

    def send(self, request: requests.PreparedRequest, **kwargs: Any) -> Response:
        config: pykube.KubeConfig = kwargs.get("kube_config") or self.kube_config
        if _origin(str(request.url)) != _origin(str(config.cluster["server"])):
            raise RedirectRefused(
                f"refusing to send a request to {shown(_origin(str(request.url)))}, which is not "
                f"the configured API server {shown(_origin(str(config.cluster['server'])))}",
                0,
            )
        response: Response = super().send(request, **kwargs)
        if 300 <= response.status_code < 400:
            location = response.headers.get("Location", "")
            response.close()
            target = f" to {shown(location, 200)}" if location else ""
            raise RedirectRefused(
                f"the API server answered HTTP {response.status_code}, a redirect{target}; "
                "redirects are not followed (the credentials stay with the configured server): "
                "point the kubeconfig at the server itself",
                response.status_code,
            )
        return response

    def _setup_request_auth(
        self, config: pykube.KubeConfig, request: requests.PreparedRequest, kwargs: Any
    ) -> Any:
        user = config.user
        if "Authorization" in request.headers or user.get("token") or "exec" not in user:
            return super()._setup_request_auth(config, request, kwargs)
        plugin = self._plugin(user["exec"])
        original = request.copy()
        credential = plugin.credential()
        if credential.token:
            request.headers["Authorization"] = f"Bearer {credential.token}"
        else:
            kwargs["cert"] = (credential.cert_file, credential.key_file)

        def retry(send_kwargs: dict[str, Any]) -> Response:  # on 401: the token expired
            plugin.invalidate()
            return self.send(original, **send_kwargs)

        return retry

    def _setup_request_certificates(
        self, config: pykube.KubeConfig, request: requests.PreparedRequest, kwargs: Any
    ) -> None:
        cert = kwargs.get("cert")
        super()._setup_request_certificates(config, request, kwargs)
        if cert is not None and "client-certificate" not in config.user:
            kwargs["cert"] = cert  # the exec plugin's certificate

    def _plugin(self, exec_config: dict[str, Any]) -> ExecPlugin:
        key = json.dumps(exec_config, sort_keys=True, default=str)
        with self._plugins_lock:
            if key not in self._plugins:
                self._plugins[key] = ExecPlugin(exec_config)
            return self._plugins[key]


def _origin(url: str) -> str:
    parts = urlsplit(url)
    port = parts.port or (443 if parts.scheme == "https" else 80)
    return f"{parts.scheme}://{(parts.hostname or '').lower()}:{port}"
