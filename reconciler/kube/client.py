"""The cluster edge: every HTTP request the reconciler makes goes through ``Cluster``.

pykube-ng provides the transport (kubeconfig, auth, TLS; ``kube.connect`` makes the client).
Requests are raw (``api.get`` with a version and a URL) because pykube's object classes would
add a discovery round-trip per CRD kind and send merge patches where we need JSON patches and
dry-runs. ``Cluster.requests`` counts every request sent (thread-safe), which the benchmark and
the "one LIST per kind" contract rely on.

**Transient errors** (``kube.retry`` has the rule and its numbers): idempotent reads (GET,
LIST, dry runs) are sent again after a dropped connection, HTTP 429, 502, 503, 504 (or any 5xx
with ``Retry-After``), with exponential backoff and jitter, honouring ``Retry-After``, within a
budget. A write is sent again on those only when it carries a precondition that makes a second
delivery harmless (a JSON patch with a ``test`` op, a PUT with its resourceVersion, a DELETE
with preconditions); any other write (a POST create, a DELETE without preconditions) only when
the connection could not even be opened, or on a 429. Never a write that may have landed.

**Every LIST is paginated** (``limit``/``continue``, ``page_size`` objects a page, 500 by
default as client-go's pager, ``$VMSR_LIST_PAGE_SIZE`` to change it), and each page is handed
to the caller's parser as soon as it is decoded, then dropped: memory is bounded by one page
per list in flight plus what the parser keeps, whatever the cluster's size. A continue token
that expired mid-list (HTTP 410: etcd compacted the revision the list is pinned to) restarts the
list from its first page (a consistent list again, what was parsed of the old one is dropped);
after ``LIST_RESTARTS`` restarts the list continues from the token the 410 carries (the API
server's "inconsistent continue": the remaining objects at the latest revision), as the only
way left to finish a list that takes longer than the compaction window. client-go's pager
instead falls back to one unpaginated LIST, which is exactly the unbounded answer paging avoids.

**A list can be streamed instead** (``list_pages(..., stream=True)``: observation's large
kinds): one WATCH with ``sendInitialEvents=true`` (a *watch-list*, KEP-3157, on by default since
Kubernetes 1.34) whose initial ADDED events are the kind's objects, read line by line and handed
to the parser ``page_size`` objects at a time, until the bookmark annotated
``k8s.io/initial-events-end``. Why: the API server serves a first LIST page from its watch cache,
but a continue page from a snapshot of that cache only while one exists for the list's revision,
and the cache drops a kind's snapshots once etcd is compacted past its last write (kube-apiserver
compacts every 5 minutes): a kind not written for 5-10 minutes, which is most of a quiet fleet,
has every continue page read from etcd, which for a custom resource costs the server several
times the cached LIST (10,000 DataVolumes: 11-14 s paginated against 2.3-3.5 s in one LIST on
this project's machine). A watch-list is always served from the cache, streamed, so neither side
holds the whole list. Its consistency is a LIST's: with no resourceVersion the initial events
are the state at a revision at least as new as etcd's when the request arrived. A stream that
ends before its end bookmark (the server closed it, the connection broke, an ERROR event 410)
starts again from scratch, dropping what was parsed, ``LIST_RESTARTS`` times, then the list is
read paginated; a server that refuses the request (400/422: no watch-list; 403: RBAC grants
``list`` but not ``watch``; 405, 501) or answers with any other ERROR event is read paginated
too, and a refusal is remembered for that kind and scope. ``$VMSR_WATCH_LIST=0`` turns streaming
off (every list paginated).
"""

from __future__ import annotations

import json
import logging
import os
import threading
import time
from collections.abc import Callable, Collection, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any, NoReturn, TypeVar

import pykube
import requests
from requests import Response

from reconciler.kube import retry
from reconciler.kube.answers import (
    ADDED,
    StreamEnded,
    added_objects,
    checked_items,
    complete_lines,
    continue_of,
    decode_object,
    expired_continue,
    watch_event,
)
from reconciler.kube.connect import RedirectRefused
from reconciler.kube.resources import Resource, subject
from reconciler.model.errors import ClusterError, Problem, UserError
from reconciler.model.names import FIELD_MANAGER
from reconciler.model.text import shown

T = TypeVar("T")
log = logging.getLogger(__name__)

PAGE_SIZE_ENV = "VMSR_LIST_PAGE_SIZE"
DEFAULT_PAGE_SIZE = 500
"""Objects per LIST page (client-go's pager default): at 500 VMs a page is about 2 MB of JSON,
and the number of requests grows by one per 500 objects of a kind."""
LIST_RESTARTS = 2
"""How many times a list whose continue token expired starts again from its first page before
it continues inconsistently from the token the 410 carries; and how many times a watch-list
stream that ended early starts again before the list is read paginated."""
WATCH_LIST_ENV = "VMSR_WATCH_LIST"
STREAM_SECONDS = 600
"""Server-side ``timeoutSeconds`` of a watch-list: its initial events of 20,000 objects take
about 5 s here; a stream cut by the timeout starts again, then falls back to pages."""
INITIAL_EVENTS_END = "k8s.io/initial-events-end"
"""The annotation of the bookmark that ends a watch-list's initial events."""
_NO_STREAM = frozenset({400, 403, 405, 422, 501})
"""Answers to a watch-list request after which the list is read paginated: 400/422 a server
without watch-lists (the WatchList gate off, or older than 1.27: ``resourceVersionMatch`` on a
watch is invalid), 403 RBAC granting ``list`` but not ``watch``, 405/501 a proxy or an
aggregated API that cannot watch."""


def watch_list_from_env() -> bool:
    """``$VMSR_WATCH_LIST``: unset, ``1``, ``true``, ``on`` or ``yes`` stream the lists that
    may be streamed (the default); ``0``, ``false``, ``off`` or ``no`` read every list
    paginated."""
    text = os.environ.get(WATCH_LIST_ENV, "").strip().lower()
    if text in ("", "1", "true", "on", "yes"):
        return True
    if text in ("0", "false", "off", "no"):
        return False
    raise UserError(
        [
            Problem(
                None,
                f"{WATCH_LIST_ENV}={shown(text, 40)} is neither on nor off",
                "unset it (streamed lists, the default) or set it to 0 (paginated lists only)",
            )
        ]
    )


def page_size_from_env() -> int:
    """``$VMSR_LIST_PAGE_SIZE`` when it is a positive integer, else ``DEFAULT_PAGE_SIZE``."""
    text = os.environ.get(PAGE_SIZE_ENV, "").strip()
    if not text:
        return DEFAULT_PAGE_SIZE
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value <= 0:
        raise UserError(
            [
                Problem(
                    None,
                    f"{PAGE_SIZE_ENV}={shown(text, 40)} is not a positive integer",
                    f"unset it (default {DEFAULT_PAGE_SIZE}) or set a page size such as 500",
                )
            ]
        )
    return value


class Cluster:
    """Thin I/O wrapper over a pykube client. Every method is one HTTP request, but the
    LISTs: one per page (``list_pages``).

    Errors become ``ClusterError`` whose message opens with ``Kind/ns/name`` and carries the
    API server's own message and HTTP code.
    """

    def __init__(
        self,
        api: pykube.HTTPClient,
        *,
        page_size: int | None = None,
        watch_list: bool | None = None,
    ) -> None:
        self.api = api
        # Objects per LIST page (``list_pages``); None: $VMSR_LIST_PAGE_SIZE or 500.
        self.page_size = page_size or page_size_from_env()
        # Whether ``list_pages(stream=True)`` streams (a watch-list); None: $VMSR_WATCH_LIST.
        self.watch_list = watch_list_from_env() if watch_list is None else watch_list
        # (plural, namespace) whose watch-list the server refused: read paginated from then on.
        self._paged_only: set[tuple[str, str | None]] = set()
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
        """All objects of ``resource`` in ``namespace`` (None: every namespace), optionally
        only those matching ``label_selector``: ``list_pages`` keeping the objects as read.

        ``missing_ok``: a resource the server does not serve (CRD not installed) or does not
        let us list in that scope (404) gives [] instead of an error.
        """
        return self.list_pages(
            resource,
            namespace,
            _as_read,
            missing_ok=missing_ok,
            label_selector=label_selector,
        )

    def list_pages(
        self,
        resource: Resource,
        namespace: str | None,
        parse: Callable[[list[dict[str, Any]]], list[T]],
        *,
        missing_ok: bool = False,
        label_selector: str | None = None,
        stream: bool = False,
    ) -> list[T]:
        """LIST ``resource`` page by page (``limit=page_size``, then ``continue``); each page's
        objects go to ``parse`` as soon as they are decoded and are then dropped; the result is
        what ``parse`` returned for every page, in order.

        A 410 on a continue request (the token expired) starts the list again from its first
        page, dropping what was parsed of it; after ``LIST_RESTARTS`` such restarts the list
        continues from the token the 410 carries, if any (the rest at the latest revision;
        the objects already read are not read again), else the 410 is the error.
        ``missing_ok``: a 404 on the first page gives [] (CRD not installed, or not listable
        in that scope).

        ``stream`` (and ``watch_list`` on): the objects come from a watch-list instead, handed
        to ``parse`` ``page_size`` at a time, as the module docstring says (same consistency,
        same memory bound, one request); the paginated LIST is its fallback.
        """
        if stream and self.watch_list:
            with self._lock:
                refused = (resource.plural, namespace) in self._paged_only
            if not refused:
                streamed = self._stream(
                    resource, namespace, parse, missing_ok=missing_ok, label_selector=label_selector
                )
                if streamed is not None:
                    return streamed
        return self._paginate(
            resource, namespace, parse, missing_ok=missing_ok, label_selector=label_selector
        )

    def _paginate(
        self,
        resource: Resource,
        namespace: str | None,
        parse: Callable[[list[dict[str, Any]]], list[T]],
        *,
        missing_ok: bool,
        label_selector: str | None,
    ) -> list[T]:
        """``list_pages`` by ``limit``/``continue``."""
        scope = _scope(resource, namespace)
        kwargs: dict[str, Any] = {"version": resource.api_version, "url": resource.plural}
        if namespace is not None and resource.namespaced:
            kwargs["namespace"] = namespace
        restarts = 0
        parsed: list[T] = []
        token = ""
        while True:
            params = {"limit": str(self.page_size)}
            if label_selector:
                params["labelSelector"] = label_selector
            if token:
                params["continue"] = token
            response = self._send("get", scope, params=params, **kwargs)
            if response.status_code == 404 and missing_ok and not token and not parsed:
                response.close()
                return []
            if response.status_code == 410 and token:
                fresh = expired_continue(response)
                response.close()
                if restarts < LIST_RESTARTS:
                    restarts += 1
                    log.info(
                        "%s: the continue token expired (HTTP 410); listing again from the "
                        "first page (restart %d)",
                        scope,
                        restarts,
                    )
                    parsed, token = [], ""
                    continue
                if not fresh:
                    raise ClusterError(
                        scope,
                        f"the list's continue token expired (HTTP 410) {restarts + 1} times "
                        "and the API server gave no token to continue from: the list takes "
                        "longer than etcd keeps its revision (an overloaded API server?); "
                        "run again",
                        code=410,
                    )
                log.warning(
                    "%s: the continue token expired again (HTTP 410); continuing from the "
                    "token the API server gave (the rest of the list at its latest revision)",
                    scope,
                )
                token = fresh
                continue
            body = self._check(response, resource, namespace, "")
            items = checked_items(body, scope)
            following = continue_of(body, scope)
            del body  # the page's objects live on in ``items`` only until parsed
            parsed.extend(parse(items))
            del items
            if not following:
                return parsed
            if following == token:
                raise ClusterError(
                    scope,
                    "the API server's answer is malformed: it gave the same continue token "
                    "twice (the list would never end)",
                )
            token = following

    def _stream(
        self,
        resource: Resource,
        namespace: str | None,
        parse: Callable[[list[dict[str, Any]]], list[T]],
        *,
        missing_ok: bool,
        label_selector: str | None,
    ) -> list[T] | None:
        """``list_pages`` by a watch-list; None: read it paginated instead (the server refused
        the request, sent an ERROR event other than 410, or the stream ended early
        ``LIST_RESTARTS`` + 1 times)."""
        scope = _scope(resource, namespace)
        kwargs: dict[str, Any] = {"version": resource.api_version, "url": resource.plural}
        if namespace is not None and resource.namespaced:
            kwargs["namespace"] = namespace
        params = {
            "watch": "1",
            "sendInitialEvents": "true",
            # with no resourceVersion: the state at etcd's current revision or newer, as a
            # LIST without one (a consistent read, served from the watch cache)
            "resourceVersionMatch": "NotOlderThan",
            "allowWatchBookmarks": "true",
            "timeoutSeconds": str(STREAM_SECONDS),
        }
        if label_selector:
            params["labelSelector"] = label_selector
        for attempt in range(LIST_RESTARTS + 1):
            response = self._send(
                "get",
                scope,
                params=params,
                stream=True,
                # identity: gzip costs the server CPU for nothing on a cluster network, and a
                # compressor may hold the end bookmark back (kube.watch measured seconds)
                headers={"Accept-Encoding": "identity"},
                **kwargs,
            )
            code = response.status_code
            try:
                if code == 404 and missing_ok:
                    return []
                if code in _NO_STREAM:
                    with self._lock:
                        self._paged_only.add((resource.plural, namespace))
                    log.info(
                        "%s: the API server refused a watch-list (HTTP %d); reading it paginated",
                        scope,
                        code,
                    )
                    return None
                if code != 410:
                    self._check_status(response, resource, namespace)
                    return self._initial_events(response, scope, parse)
                why = "the watch-list was refused as expired (HTTP 410)"
            except StreamEnded as ended:
                if ended.fallback:
                    log.info("%s: %s; reading it paginated", scope, ended)
                    return None
                why = str(ended)
            finally:
                response.close()
            log.info("%s: %s; streaming it again (attempt %d)", scope, why, attempt + 2)
        log.warning(
            "%s: the watch-list ended early %d times; reading it paginated",
            scope,
            LIST_RESTARTS + 1,
        )
        return None

    def _initial_events(
        self,
        response: Response,
        scope: str,
        parse: Callable[[list[dict[str, Any]]], list[T]],
    ) -> list[T]:
        """The objects of a watch-list's initial events, through ``parse`` ``page_size`` at a
        time; ``StreamEnded`` when the stream ends (or breaks) before the end bookmark or
        carries an ERROR event; ``ClusterError`` when it is malformed.

        The events of a page are decoded together (one JSON array of their lines: a quarter
        less decoding time than line by line): a line that opens as an ADDED event waits in
        the page; any other line (the end bookmark, an ERROR) first has the page decoded and
        parsed, then is decoded alone. Every event's type is checked once decoded."""
        parsed: list[T] = []
        page: list[bytes] = []
        try:
            for line in complete_lines(response, scope):
                if line.startswith(ADDED):
                    page.append(line)
                    if len(page) >= self.page_size:
                        parsed.extend(parse(added_objects(page, scope)))
                        page = []
                    continue
                if page:
                    parsed.extend(parse(added_objects(page, scope)))
                    page = []
                kind, obj = watch_event(line, scope)
                if kind == "ADDED":  # written another way than the server's own encoder
                    parsed.extend(parse(checked_items({"items": [obj]}, scope)))
                elif kind == "BOOKMARK":
                    meta = obj.get("metadata")
                    notes = meta.get("annotations") if isinstance(meta, dict) else None
                    if isinstance(notes, dict) and notes.get(INITIAL_EVENTS_END) == "true":
                        return parsed
                elif kind == "ERROR":
                    code = obj.get("code")
                    message = shown(obj.get("message") or "", 300)
                    raise StreamEnded(
                        f"the watch-list stream carried an error: {message} (code {code})",
                        fallback=code != 410,
                    )
                else:
                    raise ClusterError(
                        scope,
                        f"the API server's watch-list stream is malformed: a {shown(kind, 40)} "
                        "event before the end of the initial events",
                    )
        except requests.RequestException as exc:
            raise StreamEnded(f"the watch-list stream broke: {shown(exc, 200)}") from exc
        raise StreamEnded("the watch-list stream ended before its initial-events-end bookmark")

    def list_many(
        self,
        requests_: Sequence[tuple[Resource, str | None, bool]],
        parse: Callable[[Resource, list[dict[str, Any]]], list[T]],
        *,
        streamed: Collection[Resource] = (),
    ) -> list[list[T]]:
        """Several lists at once (threads): for each (resource, namespace, missing_ok), what
        ``parse(resource, page)`` returned for its pages, in request order. ``parse`` runs in
        the thread that fetched the page, as soon as it arrives. The kinds in ``streamed`` are
        read by watch-list (``list_pages(stream=True)``), the others paginated.

        The API server does the heavy lifting (reading and serialising each page); issuing
        the lists concurrently, and decoding and parsing each page as soon as it arrives,
        overlaps our work with the server's work on the lists still in flight. Each list is
        sequential by nature (a continue token, or one stream), so at most one request per
        list is in flight: ``len(requests_)`` requests at most, and 8 threads.
        """

        def one(resource: Resource, namespace: str | None, missing_ok: bool) -> list[T]:
            return self.list_pages(
                resource,
                namespace,
                lambda page: parse(resource, page),
                missing_ok=missing_ok,
                stream=resource in streamed,
            )

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
        timeout = kwargs.get("timeout")
        budget = float(timeout) if isinstance(timeout, (int, float)) and timeout else retry.BUDGET
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
        Cluster._raise_for(response, what)

    @staticmethod
    def _check_status(response: Response, resource: Resource, namespace: str | None) -> None:
        """Nothing for a 2xx answer (its body, a stream, left unread), else ``_check``'s
        ``ClusterError``."""
        if not 200 <= response.status_code < 300:
            Cluster._raise_for(response, _scope(resource, namespace))

    @staticmethod
    def _raise_for(response: Response, what: str) -> NoReturn:
        code = response.status_code
        message = response.text.strip()
        try:
            payload = response.json()
            if isinstance(payload, dict) and payload.get("message"):
                message = str(payload["message"])
        except (ValueError, RecursionError):
            pass
        raise ClusterError(what, f"{shown(message, 500)} (HTTP {code})", code=code)


def _as_read(items: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return items


def _scope(resource: Resource, namespace: str | None) -> str:
    where = f" in namespace {namespace}" if namespace else " (all namespaces)"
    return f"{resource.plural}{where}"
