"""A watch-fed view of what ``fetch`` observes, kept current for a whole `apply` run.

``View`` follows each kind ``fetch`` reads (``observe.fetch._KINDS``) with one background thread
per kind: a watch-list (``sendInitialEvents``: the kind's objects, then the initial-events-end
bookmark, then the changes, all on one request, served from the API server's watch cache), or,
when the server refuses watch-lists or ``Cluster.watch_list`` is off, a paginated LIST
(``limit``/``continue``, ``Cluster.page_size`` a page) and then a WATCH from the list's
resourceVersion. Every object is parsed on arrival into the slim model (``observe.parse``: the
same parsers, the same memory as a fetch) and the raw JSON dropped; the view keeps, per kind,
the parsed objects by namespace and name and the resourceVersion of the last event or bookmark.

What a watch meets in real life:

- a 410 Gone (the resourceVersion fell out of the watch cache's window, on the WATCH's answer
  or as an ERROR event) lists again (``relists``); the new list is swapped in whole, so a
  reader never sees half of it;
- a stream that ends or breaks (the server's ``timeoutSeconds``, a proxy, a restart, a read
  timeout: bookmarks arrive about once a minute, so a silent minute means a dead connection)
  resumes from the last resourceVersion (``resumes``): nothing is listed again;
- a refused or failed connection backs off (``BACKOFF``, capped, jittered, or the server's
  ``Retry-After``: the only sleep here) and tries again; 401/403/404 (and an object of a
  shape no API server sends) are fatal for the view: ``snapshot`` then raises ``Stale`` and
  the caller observes afresh (``pipeline``).

**Freshness** (``snapshot``): a judge must not read a view older than the run's own last write
nor older than the moment it asks about its VM. A response hook on the cluster's session
records the resourceVersion of every successful write (POST, PUT, PATCH, DELETE: a delete's
answer carries the deletion's revision) to a kind the view follows, per kind and namespace;
``snapshot`` waits (on the view's condition, notified by every event, with a deadline) until
each kind's stream has passed the latest such revision in the namespaces asked about. With
``vm=(namespace, name)`` it also GETs that VM (one request) and waits until the VM's stream
has passed the VM's resourceVersion (or, for a VM gone, until the view has seen it go): the
object a move starts from is then at least as new as the moment the judge asked. A stream
delivers every event in revision order, so having passed a revision means having applied
every change of that kind up to it. resourceVersions are compared as integers, as the API
server's own watch cache does (they are etcd revisions, one counter across kinds); one that is
not an integer proves nothing, and neither does a deadline passed: ``Stale``.

Other clients' changes to objects other than the judged VM reach the view with a watch's
latency (milliseconds), as they reach any informer; that is safe because the view only decides
whether and how a move starts: every step of a move re-reads the object it acts on, and writes
it with a resourceVersion or ``test`` precondition (``apply``).
"""

from __future__ import annotations

import contextlib
import functools
import json
import logging
import random
import socket
import threading
import time
from collections.abc import Collection, Iterable
from dataclasses import dataclass, replace
from typing import Any
from urllib.parse import urlsplit

from reconciler.kube import resources as kube
from reconciler.kube import retry
from reconciler.kube.answers import checked_items, event_lines
from reconciler.kube.client import INITIAL_EVENTS_END, Cluster
from reconciler.model.errors import ClusterError
from reconciler.model.live import Snapshot
from reconciler.model.text import shown
from reconciler.observe.fetch import _KINDS, _listed_per_namespace, _parse
from reconciler.observe.parse import RawObjects, assemble

log = logging.getLogger(__name__)

WATCH_SECONDS = 300
"""Server-side ``timeoutSeconds`` of one watch; it is then resumed from its resourceVersion."""
READ_TIMEOUT = 75.0
"""Seconds without a byte after which a stream is taken for dead and resumed. The API server
sends a bookmark to a watch that allows them about once a minute (and ``timeoutSeconds`` - 2 s)."""
BACKOFF = (0.1, 0.2, 0.5, 1.0, 2.0, 5.0)
"""Reconnect backoff (seconds), the last one repeated: a documented retry, not a wait."""
FRESH_SECONDS = 10.0
"""How long ``snapshot`` waits for the view to pass a revision before it gives up (``Stale``)."""
_FATAL = frozenset({401, 403, 404})
_NO_STREAM = frozenset({400, 403, 405, 422, 501})
"""A watch-list refused with these: list paginated instead (as ``kube.client`` does)."""
_WRITES = frozenset({"POST", "PUT", "PATCH", "DELETE"})


class Stale(Exception):
    """The view cannot prove it is current enough (not synced yet, a stream failed for good,
    a revision not reached by the deadline): observe afresh instead."""


class _Gone(Exception):
    """410: the resourceVersion is too old; list again."""


class _Ended(Exception):
    """A stream ended before its initial events did; list again."""


class _Fatal(Exception):
    """An answer that retrying will not change (``code``: its HTTP status, if any)."""

    def __init__(self, message: str, code: int | None = None) -> None:
        super().__init__(message)
        self.code = code


@dataclass
class _Follow:
    """What one follower knows; read and written under ``View._changed``."""

    objects: dict[str, dict[str, Any]]  # namespace ("" cluster-scoped) -> name -> parsed
    version: str = ""
    synced: bool = False
    fatal: str = ""
    listed_only: bool = False  # RBAC grants list, not watch: listed afresh by each snapshot


class _Follower(threading.Thread):
    """Follows one kind: list (or watch-list), then watch, resumed and relisted as needed."""

    def __init__(
        self,
        view: View,
        resource: kube.Resource,
        namespace: str | None,
        keep: frozenset[str] | None,
        missing_ok: bool,
    ) -> None:
        super().__init__(name=f"view-{resource.plural}", daemon=True)
        self.view = view
        self.resource = resource
        self.namespace = namespace
        self.keep = keep
        self.missing_ok = missing_ok
        self.state = _Follow(objects={})
        self.stopping = False
        self._response: Any = None
        self._paged = not view.cluster.watch_list

    # -- lifecycle -------------------------------------------------------------------------

    def stop(self) -> None:
        """Return at once: shut the stream's socket down, which fails a blocked read (closing
        the response from here would wait for the reader, as ``kube.watch`` explains)."""
        self.stopping = True
        response = self._response
        if response is None:
            return
        connection = getattr(response.raw, "connection", None) or getattr(
            response.raw, "_connection", None
        )
        sock = getattr(connection, "sock", None)
        if sock is not None:
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)

    def run(self) -> None:
        try:
            self._follow()
        except Exception as exc:  # a bug here must make the view stale, not hang a judge
            if not self.stopping:
                log.exception("view %s crashed", self.resource.plural)
                self._publish(fatal=f"the view's watch failed: {exc!r}")

    def _follow(self) -> None:
        version = ""
        failures = 0
        while not self.stopping:
            began = time.monotonic()
            try:
                if not version:
                    version = self._sync()
                else:
                    version = self._watch(version, initial=False)
                    with self.view._changed:
                        self.view.resumes += 1
                # a stream the server (or a proxy) ends at once is a failure too: back off
                failures = 0 if time.monotonic() - began >= 1.0 else failures + 1
                if failures:
                    self._pause(failures, None)
            except _Gone:
                log.info("view %s: resourceVersion gone (410): listing again", self._scope())
                version = ""
                with self.view._changed:
                    self.view.relists += 1
            except _Fatal as exc:
                if exc.code == 403 and self.state.synced:
                    # listed, but not watched: deploy/base/rbac.yaml grants only ``list`` on
                    # StorageProfiles and the KubeVirt CR (a handful of objects each)
                    log.info("view %s: no watch (HTTP 403): listed by each snapshot", self._scope())
                    with self.view._changed:
                        self.state.listed_only = True
                        self.view._changed.notify_all()
                    return
                self._publish(fatal=str(exc))
                return
            # OSError: requests' errors too (RequestException is an IOError)
            except (_Ended, ClusterError, ValueError, OSError) as exc:
                if self.stopping:
                    return
                if isinstance(exc, ClusterError) and (
                    exc.code in _FATAL or not isinstance(exc, _Retry)
                ):  # refused for good, or an object of a shape no API server sends
                    self._publish(fatal=str(exc))
                    return
                # resume from the last revision applied (a watch-list that broke after its
                # initial events goes on from there too); none yet, or a list cut short: list
                with self.view._changed:
                    synced, reached = self.state.synced, self.state.version
                version = "" if isinstance(exc, _Ended) or not synced else reached
                log.debug("view %s: %s (retry %d)", self._scope(), exc, failures)
                failures += 1
                self._pause(failures, getattr(exc, "retry_after", None))

    def _pause(self, failures: int, after: float | None) -> None:
        """The backoff before attempt ``failures`` + 1: the server's Retry-After when it gave
        one, else ``BACKOFF`` drawn from its upper half (jitter)."""
        pause = BACKOFF[min(failures - 1, len(BACKOFF) - 1)]
        time.sleep(after if after else random.uniform(pause / 2, pause))

    # -- reading ---------------------------------------------------------------------------

    def _scope(self) -> str:
        where = f" in {self.namespace}" if self.namespace else ""
        return f"{self.resource.plural}{where}"

    def _request_where(self) -> dict[str, Any]:
        kwargs: dict[str, Any] = {"version": self.resource.api_version, "url": self.resource.plural}
        if self.namespace is not None and self.resource.namespaced:
            kwargs["namespace"] = self.namespace
        return kwargs

    def _sync(self) -> str:
        """List the kind (a watch-list, else pages) and return the resourceVersion to watch
        from; a watch-list goes on as the watch itself, and returns when it ends."""
        if not self._paged:
            try:
                return self._watch("", initial=True)
            except _Refused:
                log.info("view %s: watch-list refused: listing paginated", self._scope())
                self._paged = True
        return self._list()

    def _list(self) -> str:
        objects: dict[str, dict[str, Any]] = {}
        token, version, restarts = "", "", 0
        while True:
            params = {"limit": str(self.view.cluster.page_size)}
            if token:
                params["continue"] = token
            response = self.view.cluster.api.get(
                params=params, timeout=(10, 120), **self._request_where()
            )
            try:
                if response.status_code == 404 and self.missing_ok and not token:
                    self._swap({}, "")
                    raise _Fatal("")  # the kind is not served: empty, nothing to follow
                if response.status_code == 410 and token and restarts < 2:
                    objects, token, restarts = {}, "", restarts + 1
                    continue
                body = self._checked(response)
            finally:
                response.close()
            meta = body.get("metadata") or {}
            if not token:
                version = str(meta.get("resourceVersion") or "")
            self._add(objects, checked_items(body, self._scope()))
            token = str(meta.get("continue") or "")
            if not token:
                self._swap(objects, version)
                return version

    def _checked(self, response: Any) -> dict[str, Any]:
        if response.status_code == 410:
            raise _Gone
        if not response.ok:
            message = shown(response.text, 200)
            if response.status_code in _FATAL:
                raise _Fatal(
                    f"{self._scope()}: {message} (HTTP {response.status_code})",
                    response.status_code,
                )
            raise _Retry(
                self._scope(),
                f"{message} (HTTP {response.status_code})",
                code=response.status_code,
                retry_after=retry.retry_after(response.headers),
            )
        body = response.json()
        if not isinstance(body, dict):
            raise ValueError(f"{self._scope()}: the answer is not a JSON object")
        return body

    def _watch(self, version: str, *, initial: bool) -> str:
        """One WATCH from ``version`` (``initial``: a watch-list, its initial events gathered
        apart and swapped in at their end bookmark); the resourceVersion reached."""
        params = {"watch": "1", "allowWatchBookmarks": "true", "timeoutSeconds": str(WATCH_SECONDS)}
        if initial:
            params |= {"sendInitialEvents": "true", "resourceVersionMatch": "NotOlderThan"}
        else:
            params["resourceVersion"] = version
        response = self.view.cluster.api.get(
            params=params,
            stream=True,
            timeout=(10, READ_TIMEOUT),
            # identity: a compressed watch is buffered by the server's compressor (kube.watch)
            headers={"Accept-Encoding": "identity"},
            **self._request_where(),
        )
        self._response = response
        try:
            if initial and response.status_code in _NO_STREAM:
                raise _Refused
            if initial and response.status_code == 404 and self.missing_ok:
                self._swap({}, "")
                raise _Fatal("")
            if not response.ok:
                self._checked(response)
            gathering: dict[str, dict[str, Any]] | None = {} if initial else None
            for line in event_lines(response.iter_content(chunk_size=None)):  # at once
                if self.stopping:
                    break
                version, gathering = self._event(json.loads(line), version, gathering)
            if gathering is not None:
                raise _Ended(f"{self._scope()}: the watch-list ended before its initial events")
        finally:
            self._response = None
            response.close()
        return version

    def _event(
        self, event: Any, version: str, gathering: dict[str, dict[str, Any]] | None
    ) -> tuple[str, dict[str, dict[str, Any]] | None]:
        kind = event.get("type") if isinstance(event, dict) else None
        obj = event.get("object") if isinstance(event, dict) else None
        if not isinstance(obj, dict):
            raise ValueError(f"{self._scope()}: a watch event without an object")
        if kind == "ERROR":
            if obj.get("code") == 410:
                raise _Gone
            raise _Retry(self._scope(), shown(obj.get("message") or "", 200), code=obj.get("code"))
        meta: dict[str, Any] = obj["metadata"] if isinstance(obj.get("metadata"), dict) else {}
        new_version = str(meta.get("resourceVersion") or version)
        if kind == "BOOKMARK":
            notes = meta.get("annotations") or {}
            if gathering is not None and notes.get(INITIAL_EVENTS_END) == "true":
                self._swap(gathering, new_version)
                return new_version, None
            if gathering is None:
                self._publish(version=new_version)
            return new_version, gathering
        if gathering is not None:  # an initial event: into the list being gathered
            self._add(gathering, [obj])
            return version, gathering
        with self.view._changed:
            if kind == "DELETED":
                where = self.state.objects.get(str(meta.get("namespace") or ""))
                if where is not None:
                    where.pop(str(meta.get("name")), None)
            else:
                self._add(self.state.objects, [obj])
            self.state.version = new_version
            self.view._changed.notify_all()
        return new_version, gathering

    def _add(self, into: dict[str, dict[str, Any]], items: list[dict[str, Any]]) -> None:
        keep = self.keep if _listed_per_namespace(self.resource) else None
        for parsed, item in zip(
            _parse(self.resource, items, keep), _kept(items, keep), strict=True
        ):
            meta = item.get("metadata") or {}
            into.setdefault(str(meta.get("namespace") or ""), {})[str(meta.get("name"))] = parsed

    def _swap(self, objects: dict[str, dict[str, Any]], version: str) -> None:
        with self.view._changed:
            self.state.objects = objects
            self.state.version = version
            self.state.synced = True
            self.view._changed.notify_all()

    def _publish(self, *, version: str = "", fatal: str = "") -> None:
        with self.view._changed:
            if version:
                self.state.version = version
            if fatal:
                self.state.fatal = fatal
            self.view._changed.notify_all()


class _Refused(Exception):
    """The server refused the watch-list: list paginated."""


class _Retry(ClusterError):
    def __init__(
        self, subject: str, message: str, *, code: Any = None, retry_after: float | None = None
    ) -> None:
        super().__init__(subject, message, code=code)
        self.retry_after = retry_after


def _kept(items: list[dict[str, Any]], keep: Collection[str] | None) -> list[dict[str, Any]]:
    """``items`` as ``parse_page`` keeps them (same filter, same order)."""
    if keep is None:
        return items
    return [o for o in items if (o.get("metadata") or {}).get("namespace") in keep]


def _revision(version: str) -> int | None:
    try:
        return int(version)
    except ValueError:
        return None


class View:
    """The current state of the kinds ``fetch`` reads in ``namespaces``, from watches.

    ``start`` starts the followers (it does not wait for them); ``close`` stops them, shuts
    their sockets and joins them (a context manager does both). ``snapshot`` is safe to call
    from several threads at once. ``relists``/``resumes`` count 410s and resumed streams."""

    def __init__(
        self, cluster: Cluster, namespaces: Iterable[str], *, fresh_seconds: float = FRESH_SECONDS
    ) -> None:
        self.cluster = cluster
        self.namespaces = frozenset(namespaces)
        self.fresh_seconds = fresh_seconds
        self.relists = 0
        self.resumes = 0
        self._changed = threading.Condition()
        # (plural, namespace) -> the highest revision of this process's writes to it
        self._writes: dict[tuple[str, str], int] = {}
        # (plural, namespace, name) of objects this process deleted outright: a DELETE answers
        # with the object at its last revision, not the deletion's, so a revision barrier
        # could pass before the DELETED event arrives; the view must see them gone instead
        self._deleted: set[tuple[str, str, str]] = set()
        wanted = sorted(self.namespaces)
        scope = wanted[0] if len(wanted) == 1 else None
        keep = frozenset(wanted) if scope is None else None
        self._followers = {
            resource.plural: _Follower(
                self,
                resource,
                scope if _listed_per_namespace(resource) else None,
                keep,
                missing_ok,
            )
            for resource, missing_ok in _KINDS
        }

    def __enter__(self) -> View:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.close()

    def start(self) -> View:
        if not self.namespaces:
            return self  # nothing to follow: every snapshot is Stale (observed afresh)
        self.cluster.api.session.hooks["response"].append(self._on_response)
        for follower in self._followers.values():
            follower.start()
        return self

    def close(self, timeout: float = 5.0) -> None:
        """Stop following: every stream's socket shut, every thread joined (up to ``timeout``
        in all: a thread in a connect or a backoff ends at its next step on its own)."""
        with contextlib.suppress(ValueError):
            self.cluster.api.session.hooks["response"].remove(self._on_response)
        for follower in self._followers.values():
            follower.stop()
        end = time.monotonic() + timeout
        for follower in self._followers.values():
            if follower.is_alive():
                follower.join(max(0.0, end - time.monotonic()))

    def alive(self) -> int:
        """Follower threads still running (0 after ``close``, but for a kind not served)."""
        return sum(f.is_alive() for f in self._followers.values())

    def _on_response(self, response: Any, *args: Any, **kwargs: Any) -> None:
        """Record the revision of a successful write to a kind the view follows (a response
        hook: it runs in the writer's thread and must never raise)."""
        try:
            request = response.request
            if request.method not in _WRITES or not response.ok:
                return
            parts = urlsplit(str(request.url))
            if "dryRun" in parts.query:
                return
            where = _target(parts.path)
            if where is None or where[0] not in self._followers:
                return
            body = response.json()
            meta = body.get("metadata") if isinstance(body, dict) else None
            meta = meta if isinstance(meta, dict) else {}
            name = str(meta.get("name") or "")
            if request.method == "DELETE" and not meta.get("deletionTimestamp"):
                # Gone at once (no finalizer): the answer is a Status or the object at its
                # last revision, neither the deletion's: wait until the view sees it go.
                gone = name or parts.path.rstrip("/").rsplit("/", 1)[-1]
                with self._changed:
                    self._deleted.add((*where, gone))
                return
            revision = _revision(str(meta.get("resourceVersion") or ""))
            if revision is None or body.get("kind") == "Status":
                return
            with self._changed:
                if revision > self._writes.get(where, 0):
                    self._writes[where] = revision
                if request.method == "POST":  # created (again): no longer gone
                    self._deleted.discard((*where, name))
        except Exception:  # a hook must never fail the write it watched
            log.debug("view: write not recorded", exc_info=True)

    def snapshot(self, namespaces: Iterable[str], *, vm: tuple[str, str] | None = None) -> Snapshot:
        """The ``Snapshot`` ``fetch(cluster, namespaces)`` would read, from the view, once it
        has passed this process's latest write to each followed kind in ``namespaces`` (and,
        with ``vm``, that VM's state at the moment of the call: one GET). Raises ``Stale``
        when it cannot prove that within ``fresh_seconds``: observe afresh then."""
        wanted = frozenset(namespaces)
        if not wanted or not wanted <= self.namespaces:
            raise Stale(f"the view does not follow {sorted(wanted - self.namespaces)}")
        barrier: tuple[str, int | None] | None = None
        if vm is not None:
            found = self.cluster.get(kube.VIRTUAL_MACHINES, vm[0], vm[1])
            if found is None:
                barrier = (vm[1], None)  # wait until the view has seen it go
            else:
                version = _revision(str(found["metadata"].get("resourceVersion") or ""))
                if version is None:
                    raise Stale(f"{vm[0]}/{vm[1]}: a resourceVersion that is not a revision")
                barrier = (vm[1], version)
        deadline = time.monotonic() + self.fresh_seconds
        with self._changed:
            while True:
                why = self._behind(wanted, vm[0] if vm else "", barrier)
                if not why:
                    raw = self._raw(wanted)
                    unwatched = [f for f in self._followers.values() if f.state.listed_only]
                    break
                now = time.monotonic()
                if now >= deadline:
                    raise Stale(why)
                self._changed.wait(deadline - now)
        for follower in unwatched:  # kinds the view may list but not watch: listed now,
            resource = follower.resource  # per namespace when namespaced, as fetch does
            scopes: list[str | None] = (
                [*sorted(wanted)] if _listed_per_namespace(resource) else [None]
            )
            listed = [
                item
                for scope in scopes
                for item in self.cluster.list_pages(
                    resource,
                    scope,
                    functools.partial(_parse, resource),
                    missing_ok=follower.missing_ok,
                )
            ]
            raw = replace(raw, **{_FIELD_OF[follower.resource.plural]: listed})
        return assemble(raw)

    def _behind(
        self, wanted: frozenset[str], namespace: str, barrier: tuple[str, int | None] | None
    ) -> str:
        """Why the view cannot serve ``wanted`` yet ("" when it can); under the lock."""
        for plural, follower in self._followers.items():
            state = follower.state
            if state.fatal:
                return f"{plural}: {state.fatal}"
            if not state.synced:
                return f"{plural}: not listed yet"
        for (plural, ns), revision in self._writes.items():
            if ns in wanted or ns == "":
                reached = _revision(self._followers[plural].state.version)
                if reached is None or reached < revision:
                    return f"{plural} in {ns}: our write at {revision} not seen yet"
        for plural, ns, name in sorted(self._deleted):
            if name not in self._followers[plural].state.objects.get(ns, {}):
                self._deleted.discard((plural, ns, name))  # the view has seen it go
            elif ns in wanted or ns == "":
                return f"{plural} {ns}/{name}: deleted by us, still in the view"
        if barrier is not None:
            name, at = barrier
            vms = self._followers[kube.VIRTUAL_MACHINES.plural].state
            if at is None and name in vms.objects.get(namespace, {}):
                return f"VirtualMachine {namespace}/{name}: deleted, still in the view"
            reached = _revision(vms.version)
            if at is not None and (reached is None or reached < at):
                return f"VirtualMachine {namespace}/{name}: revision {at} not seen yet"
        return ""

    def _raw(self, wanted: frozenset[str]) -> RawObjects:
        """The parsed objects of ``wanted``, copied (the followers go on changing theirs)."""

        def of(resource: kube.Resource) -> list[Any]:
            objects = self._followers[resource.plural].state.objects
            if not _listed_per_namespace(resource):
                return [o for by_name in objects.values() for o in by_name.values()]
            return [o for ns in sorted(wanted) for o in objects.get(ns, {}).values()]

        return RawObjects(
            vms=of(kube.VIRTUAL_MACHINES),
            vmis=of(kube.VMIS),
            pvcs=of(kube.PVCS),
            data_volumes=of(kube.DATA_VOLUMES),
            storage_classes=of(kube.STORAGE_CLASSES),
            storage_profiles=of(kube.STORAGE_PROFILES),
            kubevirts=of(kube.KUBEVIRTS),
            migrations=of(kube.MIGRATIONS),
        )


_FIELD_OF = {
    kube.VIRTUAL_MACHINES.plural: "vms",
    kube.VMIS.plural: "vmis",
    kube.PVCS.plural: "pvcs",
    kube.DATA_VOLUMES.plural: "data_volumes",
    kube.STORAGE_CLASSES.plural: "storage_classes",
    kube.STORAGE_PROFILES.plural: "storage_profiles",
    kube.KUBEVIRTS.plural: "kubevirts",
    kube.MIGRATIONS.plural: "migrations",
}
"""Resource plural -> its ``RawObjects`` field."""


def _target(path: str) -> tuple[str, str] | None:
    """(plural, namespace) of an object URL path (``/api/v1/namespaces/ns/pvcs/x``,
    ``/apis/g/v/storageclasses/x``; namespace "" when cluster-scoped)."""
    parts = [p for p in path.split("/") if p]
    if len(parts) < 3:
        return None
    rest = parts[2:] if parts[0] == "api" else parts[3:]
    if len(rest) >= 3 and rest[0] == "namespaces":
        return rest[2], rest[1]
    if rest and rest[0] != "namespaces":
        return rest[0], ""
    return None
