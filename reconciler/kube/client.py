"""The cluster edge: every HTTP request the reconciler makes goes through ``Cluster``.

pykube-ng provides the transport (kubeconfig, auth, TLS). Requests are raw (``api.get`` with a
version and a URL) because pykube's object classes would add a discovery round-trip per CRD kind
and send merge patches where we need JSON patches and dry-runs. ``Cluster.requests`` counts
every request sent (thread-safe), which the benchmark and the "one LIST per kind" contract rely on.

**Transient errors** (``kube.retry`` has the rule and its numbers): idempotent reads (GET,
LIST, dry runs) are sent again after a dropped connection, HTTP 429, 502, 503, 504 (or any 5xx
with ``Retry-After``), with exponential backoff and jitter, honouring ``Retry-After``, within a
budget. A write is sent again on those only when it carries a precondition that makes a second
delivery harmless (a JSON patch with a ``test`` op, a PUT with its resourceVersion, a DELETE
with preconditions); any other write (a POST create, a DELETE without preconditions) only when
the connection could not even be opened, or on a 429. Never a write that may have landed.
"""

from __future__ import annotations

import json
import logging
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any, TypeVar
from urllib.parse import urlsplit

import pykube
import pykube.http
import requests
from requests import Response

from reconciler.kube import kubeconfig as kubeconfigs
from reconciler.kube import retry
from reconciler.kube.credentials import ExecPlugin
from reconciler.kube.resources import Resource, subject
from reconciler.model.errors import ClusterError, Problem, UserError
from reconciler.model.names import FIELD_MANAGER
from reconciler.model.text import shown

T = TypeVar("T")
log = logging.getLogger(__name__)


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
    """

    def __init__(self, kube_config: pykube.KubeConfig, **kwargs: Any) -> None:
        super().__init__(kube_config, **kwargs)
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


class Cluster:
    """Thin I/O wrapper over a pykube client. Every method is one HTTP request.

    Errors become ``ClusterError`` whose message opens with ``Kind/ns/name`` and carries the
    API server's own message and HTTP code.
    """

    def __init__(self, api: pykube.HTTPClient) -> None:
        self.api = api
        # Called before every write (POST, PUT, PATCH, DELETE) that is not sent with
        # ``fenced=False``: `apply` sets it to ``Lease.ensure``, so a runner that lost its
        # Lease cannot write anything but the Lease itself, whatever code path tries.
        self.write_guard: Callable[[], None] | None = None
        self._requests = 0  # read through the ``requests`` property
        # list_many sends from up to 8 threads: ``+= 1`` is a read-modify-write, not atomic.
        self._lock = threading.Lock()
        api.session.hooks["response"].append(self._count)

    def identify(self, who: str) -> None:
        """Send ``User-Agent: vm-storage-reconciler/<version> (<who>)`` from now on, so an
        audit log attributes every request to this runner."""
        from reconciler import __version__

        agent = f"vm-storage-reconciler/{__version__} ({shown(who, 100)})"
        self.api.session.headers["User-Agent"] = agent

    @property
    def requests(self) -> int:
        """HTTP requests sent so far (every response counted once, retries included)."""
        with self._lock:
            return self._requests

    def _count(self, response: Response, *args: Any, **kwargs: Any) -> None:
        with self._lock:
            self._requests += 1
        log.debug(
            "%s %s -> %s (%.3fs)",
            response.request.method,
            response.request.url,
            response.status_code,
            response.elapsed.total_seconds(),
        )

    def list_objects(
        self,
        resource: Resource,
        namespace: str | None = None,
        *,
        missing_ok: bool = False,
        label_selector: str | None = None,
    ) -> list[dict[str, Any]]:
        """All objects of ``resource`` in ``namespace`` (None: every namespace) in one LIST,
        optionally only those matching ``label_selector``.

        ``missing_ok``: a resource the server does not serve (CRD not installed) or does not
        let us list in that scope (404) gives [] instead of an error.
        """
        kwargs: dict[str, Any] = {"version": resource.api_version, "url": resource.plural}
        if namespace is not None and resource.namespaced:
            kwargs["namespace"] = namespace
        if label_selector:
            kwargs["params"] = {"labelSelector": label_selector}
        response = self._send("get", _scope(resource, namespace), **kwargs)
        if response.status_code == 404 and missing_ok:
            return []
        body = self._check(response, resource, namespace, "")
        return checked_items(body, _scope(resource, namespace))

    def list_many(
        self,
        requests_: Sequence[tuple[Resource, str | None, bool]],
        then: Callable[[Resource, list[dict[str, Any]]], T],
    ) -> list[T]:
        """Several LISTs at once (threads); ``then(resource, items)`` runs in the thread that
        fetched them. Results in request order.

        The API server does the heavy lifting (serialising thousands of objects); issuing the
        lists concurrently, and decoding and parsing each answer as soon as it arrives, overlaps
        our work with the server's work on the lists still in flight.
        """

        def one(resource: Resource, namespace: str | None, missing_ok: bool) -> T:
            return then(resource, self.list_objects(resource, namespace, missing_ok=missing_ok))

        with ThreadPoolExecutor(max_workers=min(8, len(requests_) or 1)) as pool:
            futures = [pool.submit(one, *request) for request in requests_]
            return [future.result() for future in futures]

    def create(
        self,
        resource: Resource,
        namespace: str,
        body: Mapping[str, Any],
        *,
        dry_run: bool = False,
        fenced: bool = True,
    ) -> dict[str, Any]:
        """POST ``body``; with ``dry_run`` the server validates and admits but stores nothing.
        ``fenced=False`` skips ``write_guard`` (the Lease's own writes)."""
        name = str(body.get("metadata", {}).get("name", ""))
        response = self._send(
            "post",
            subject(resource, namespace, name),
            fenced=fenced and not dry_run,
            kind=retry.Kind.READ if dry_run else retry.Kind.UNGUARDED,
            version=resource.api_version,
            namespace=namespace,
            url=resource.plural,
            data=json.dumps(body),
            headers={"Content-Type": "application/json"},
            params=self._params(dry_run),
        )
        return self._check(response, resource, namespace, name)

    def get(
        self,
        resource: Resource,
        namespace: str | None,
        name: str,
        *,
        timeout: float | None = None,
    ) -> dict[str, Any] | None:
        """The object, or None when it does not exist (404). ``timeout`` (seconds) bounds
        this request (default: the client's)."""
        kwargs: dict[str, Any] = {
            "version": resource.api_version,
            "url": f"{resource.plural}/{name}",
        }
        if timeout is not None:
            kwargs["timeout"] = timeout
        if namespace is not None and resource.namespaced:
            kwargs["namespace"] = namespace
        response = self._send("get", subject(resource, namespace, name), **kwargs)
        if response.status_code == 404:
            return None
        return self._check(response, resource, namespace, name)

    def replace(
        self,
        resource: Resource,
        namespace: str,
        name: str,
        body: Mapping[str, Any],
        *,
        fenced: bool = True,
        timeout: float | None = None,
    ) -> dict[str, Any]:
        """PUT ``body`` (its metadata.resourceVersion makes it a compare-and-swap: 409 when
        the object changed since it was read)."""
        extra: dict[str, Any] = {} if timeout is None else {"timeout": timeout}
        response = self._send(
            "put",
            subject(resource, namespace, name),
            fenced=fenced,
            kind=retry.put_kind(body),
            **extra,
            version=resource.api_version,
            namespace=namespace,
            url=f"{resource.plural}/{name}",
            data=json.dumps(body),
            headers={"Content-Type": "application/json"},
            params=self._params(False),
        )
        return self._check(response, resource, namespace, name)

    def delete(
        self, resource: Resource, namespace: str, name: str, *, uid: str | None = None
    ) -> bool:
        """DELETE the object (background propagation, as kubectl does); False when it was
        already gone. With ``uid`` only that object (``preconditions``: 409 when the name
        now belongs to another), which also makes the DELETE safe to send again."""
        options: dict[str, Any] = {
            "kind": "DeleteOptions",
            "apiVersion": "v1",
            "propagationPolicy": "Background",
        }
        if uid:
            options["preconditions"] = {"uid": uid}
        response = self._send(
            "delete",
            subject(resource, namespace, name),
            kind=retry.Kind.PRECONDITIONED if uid else retry.Kind.UNGUARDED,
            version=resource.api_version,
            namespace=namespace,
            url=f"{resource.plural}/{name}",
            data=json.dumps(options),
            headers={"Content-Type": "application/json"},
        )
        if response.status_code == 404:
            return False
        self._check(response, resource, namespace, name)
        return True

    def json_patch(
        self,
        resource: Resource,
        namespace: str,
        name: str,
        ops: Sequence[Mapping[str, Any]],
        *,
        dry_run: bool = False,
    ) -> dict[str, Any]:
        """Apply RFC 6902 ``ops``; a failed ``test`` op is a 422 and changes nothing."""
        response = self._send(
            "patch",
            subject(resource, namespace, name),
            fenced=not dry_run,
            kind=retry.patch_kind(list(ops), dry_run=dry_run),
            version=resource.api_version,
            namespace=namespace,
            url=f"{resource.plural}/{name}",
            data=json.dumps(list(ops)),
            headers={"Content-Type": "application/json-patch+json"},
            params=self._params(dry_run),
        )
        return self._check(response, resource, namespace, name)

    @staticmethod
    def _params(dry_run: bool) -> dict[str, str]:
        params = {"fieldManager": FIELD_MANAGER, "fieldValidation": "Strict"}
        if dry_run:
            params["dryRun"] = "All"
        return params

    def _send(
        self,
        method: str,
        who: str,
        *,
        fenced: bool = True,
        kind: retry.Kind = retry.Kind.READ,
        **kwargs: Any,
    ) -> Response:
        """One request, sent again after a transient failure when ``kind`` allows it
        (``kube.retry``: reads and preconditioned writes after a dropped connection or a
        429/502/503/504, every request after a 429 or a connection that never opened); the
        last answer is returned, the last connection error raised as ``ClusterError``. A write
        passes ``write_guard`` before every send (unless ``fenced`` is False)."""
        guarded = fenced and method != "get" and self.write_guard is not None
        budget = float(kwargs.get("timeout") or retry.BUDGET)
        give_up = time.monotonic() + budget
        attempt = 0
        while True:
            attempt += 1
            if guarded:
                assert self.write_guard is not None
                self.write_guard()  # the Lease may have lapsed during a backoff
            try:
                response: Response = getattr(self.api, method)(**kwargs)
            except RedirectRefused as exc:
                raise ClusterError(who, str(exc), code=exc.status or None) from exc
            except requests.RequestException as exc:
                pause = retry.backoff(attempt) if retry.error_retry(kind, exc) else None
                if not self._again(who, attempt, pause, give_up, f"{type(exc).__name__}"):
                    tries = f" ({attempt} attempts)" if attempt > 1 else ""
                    raise ClusterError(
                        who, f"cannot reach the API server{tries}: {shown(exc)}"
                    ) from exc
                assert pause is not None
                time.sleep(pause)
                continue
            after = retry.answer_retry(kind, response.status_code, response.headers)
            # the server's Retry-After when it gave one, else our backoff
            pause = None if after is None else (after or retry.backoff(attempt))
            if not self._again(who, attempt, pause, give_up, f"HTTP {response.status_code}"):
                return response
            assert pause is not None
            response.close()
            time.sleep(pause)

    @staticmethod
    def _again(who: str, attempt: int, pause: float | None, give_up: float, why: str) -> bool:
        """Whether to send once more after ``why``: allowed (``pause`` is not None), attempts
        left, and the pause ends within the request's budget."""
        if pause is None or attempt >= retry.ATTEMPTS:
            return False
        if time.monotonic() + pause > give_up:
            return False
        log.info("%s: %s, sending again in %.2fs (attempt %d)", who, why, pause, attempt + 1)
        return True

    @staticmethod
    def _check(
        response: Response, resource: Resource, namespace: str | None, name: str
    ) -> dict[str, Any]:
        what = subject(resource, namespace, name) if name else _scope(resource, namespace)
        code = response.status_code
        if 200 <= code < 300:
            return decode_object(response, what)
        message = response.text.strip()
        try:
            payload = response.json()
            if isinstance(payload, dict) and payload.get("message"):
                message = str(payload["message"])
        except (ValueError, RecursionError):
            pass
        raise ClusterError(what, f"{shown(message, 500)} (HTTP {code})", code=code)


def decode_object(response: Response, what: str) -> dict[str, Any]:
    """The JSON object of a good answer; anything else (a proxy's HTML login page, a list, a
    body nested beyond reason) is a ``ClusterError`` saying, in short, what came instead."""
    kind = response.headers.get("Content-Type", "").split(";")[0].strip() or "no content type"
    try:
        body = json.loads(response.content)
    except RecursionError:
        raise ClusterError(
            what, f"the API server's answer is JSON nested too deeply to read ({kind})"
        ) from None
    except ValueError:
        raise ClusterError(
            what,
            f"the API server's answer is not JSON ({kind}): {shown(response.content, 120)}; "
            "is a proxy or login page in front of the API server?",
        ) from None
    if not isinstance(body, dict):
        raise ClusterError(
            what,
            "the API server's answer is not an object: expected a JSON object, got "
            + _json_kind(body),
        )
    return body


def checked_items(body: dict[str, Any], what: str) -> list[dict[str, Any]]:
    """A LIST answer's ``items``: a list of objects, or a ``ClusterError``."""
    items = body.get("items")
    if items is None:
        return []
    if not isinstance(items, list):
        raise ClusterError(
            what,
            f"the API server's answer is not a list: items is not a list, got {_json_kind(items)}",
        )
    for index, item in enumerate(items):
        if not isinstance(item, dict) or not isinstance(item.get("metadata") or {}, dict):
            raise ClusterError(
                what,
                f"the API server's answer is malformed: items[{index}] is not an object "
                f"({_json_kind(item)})",
            )
    return items


def _json_kind(value: Any) -> str:
    if isinstance(value, dict):
        return "an object without metadata"
    return {list: "a list", str: "a string", bool: "a boolean", type(None): "null"}.get(
        type(value), "a number"
    )


def _scope(resource: Resource, namespace: str | None) -> str:
    where = f" in namespace {namespace}" if namespace else " (all namespaces)"
    return f"{resource.plural}{where}"
