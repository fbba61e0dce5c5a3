"""Watches: the latest state of a set of objects, kept current by LIST + WATCH streams.

``Observer`` runs one background thread per ``Stream`` (resource, namespace, selectors). Each
thread LISTs, then WATCHes from the list's resourceVersion, and keeps a dict name -> object.
A waiter calls ``Observer.wait(predicate, deadline)``: the predicate runs on a consistent copy
of every stream's objects whenever any of them changes (and at least every ``tick`` seconds, for
progress and deadlines), so the reaction to a change is one event's latency, not a poll period.

Streams survive what watches do in real life: a 410 Gone (the resourceVersion expired) relists;
a dropped connection, an API server restart or a 429/5xx on the LIST or the WATCH that sets a
stream up reconnects with a short, capped, jittered backoff, or after the server's
``Retry-After`` (``kube.retry``; the only sleep here, documented). An answer that will not get
better by retrying (401, 403, 404 of the resource) is fatal: ``wait`` raises it as
``ClusterError`` at once. A server that stays unreachable raises at the deadline, saying since
when.
"""

from __future__ import annotations

import contextlib
import json
import logging
import random
import socket
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, TypeVar

import pykube
import requests

from reconciler.kube import retry
from reconciler.kube.answers import event_lines
from reconciler.kube.resources import Resource
from reconciler.model.errors import ClusterError

log = logging.getLogger(__name__)
T = TypeVar("T")
Obj = dict[str, Any]

WAKE = 0.5  # a wait re-checks its interrupt (and the clock) at least this often
WATCH_SECONDS = 50  # server-side timeoutSeconds of one WATCH; then it is reopened
_BACKOFF = (0.1, 0.2, 0.5, 1.0, 2.0)  # reconnect backoff (seconds): a documented retry, not a wait
_FATAL = (401, 403, 404)


class WaitTimeout(Exception):
    """The deadline passed before the predicate was satisfied. ``last`` is the last state."""

    def __init__(self, what: str, last: Mapping[str, Mapping[str, Obj]]) -> None:
        super().__init__(what)
        self.last = last


@dataclass(frozen=True)
class Stream:
    """What one watch follows: ``key`` names it in the state given to predicates."""

    key: str
    resource: Resource
    namespace: str | None
    name: str | None = None  # a single object (fieldSelector metadata.name=...)
    label_selector: str | None = None


class _Follower(threading.Thread):
    def __init__(self, api: pykube.HTTPClient, stream: Stream, changed: threading.Condition):
        super().__init__(name=f"watch-{stream.key}", daemon=True)
        self.api = api
        self.stream = stream
        self.changed = changed
        self.objects: dict[str, Obj] = {}
        self.synced = False
        self.fatal: ClusterError | None = None
        self.unreachable_since: float | None = None
        self.last_error = ""
        self.stopping = False
        self._response: requests.Response | None = None

    def stop(self) -> None:
        """Return at once; the thread ends within moments. Closing the response from here
        would block until the server next writes (the reader holds the TLS object's lock
        inside ``read``: up to a whole watch period), so the socket is shut down instead,
        which fails the blocked read."""
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
        except Exception as exc:  # a bug here must end the wait, not leave it hanging
            if self.stopping:  # the shut-down socket fails the read in whatever way
                return
            log.exception("watch %s crashed", self.stream.key)
            self._publish(fatal=ClusterError(self.stream.key, f"watch failed: {exc!r}"))

    def _follow(self) -> None:
        version: str | None = None
        failures = 0
        while not self.stopping:
            try:
                if version is None:
                    version = self._list()
                version = self._watch(version)
                failures = 0
            except _Gone:
                version = None
            except ClusterError as exc:
                if exc.code in _FATAL:
                    self._publish(fatal=exc)
                    return
                failures = self._failed(str(exc), failures, getattr(exc, "retry_after", None))
            except (requests.RequestException, ValueError, OSError) as exc:
                if self.stopping:
                    return
                failures = self._failed(f"cannot reach the API server: {exc}", failures)

    def _failed(self, message: str, failures: int, after: float | None = None) -> int:
        """Note the failure and sleep before the next attempt: the server's Retry-After
        when it gave one, else the backoff (drawn from its upper half: jitter)."""
        if self.unreachable_since is None:
            self.unreachable_since = time.monotonic()
        self.last_error = message
        log.debug("watch %s: %s (retry %d)", self.stream.key, message, failures)
        pause = _BACKOFF[min(failures, len(_BACKOFF) - 1)]
        time.sleep(after if after else random.uniform(pause / 2, pause))
        return failures + 1

    def _params(self) -> dict[str, str]:
        params: dict[str, str] = {}
        if self.stream.name:
            params["fieldSelector"] = f"metadata.name={self.stream.name}"
        if self.stream.label_selector:
            params["labelSelector"] = self.stream.label_selector
        return params

    def _request_kwargs(self) -> dict[str, Any]:
        kwargs: dict[str, Any] = {
            "version": self.stream.resource.api_version,
            "url": self.stream.resource.plural,
        }
        if self.stream.namespace and self.stream.resource.namespaced:
            kwargs["namespace"] = self.stream.namespace
        return kwargs

    def _list(self) -> str:
        response = self.api.get(params=self._params(), **self._request_kwargs())
        body = _checked(response, self.stream)
        items = body.get("items") or []
        objects = {
            str(item["metadata"]["name"]): item
            for item in items
            if isinstance(item, dict) and isinstance(item.get("metadata"), dict)
        }
        self._publish(objects=objects)
        return str((body.get("metadata") or {}).get("resourceVersion") or "")

    def _watch(self, version: str) -> str:
        params = {
            **self._params(),
            "watch": "1",
            "resourceVersion": version,
            "allowWatchBookmarks": "true",
            "timeoutSeconds": str(WATCH_SECONDS),
        }
        # identity: a gzip-compressed watch is buffered by the server's compressor, and events
        # then arrive in bursts, seconds late (measured: ~45 s for one ConfigMap update).
        response = self.api.get(
            params=params,
            stream=True,
            timeout=(10, WATCH_SECONDS + 15),
            headers={"Accept-Encoding": "identity"},
            **self._request_kwargs(),
        )
        self._response = response
        try:
            _checked(response, self.stream, watching=True)
            # chunk_size=None: whatever arrived, at once (``iter_lines`` reads fixed-size blocks
            # and holds an event back until the next one fills its block: seconds of latency)
            for line in event_lines(response.iter_content(chunk_size=None)):
                if self.stopping:
                    break
                version = self._event(json.loads(line), version)
        finally:
            self._response = None
            response.close()
        return version

    def _event(self, event: Any, version: str) -> str:
        kind = event.get("type") if isinstance(event, dict) else None
        obj = event.get("object") if isinstance(event, dict) else None
        if not isinstance(obj, dict):
            return version
        if kind == "ERROR":
            if obj.get("code") == 410:
                raise _Gone
            raise ClusterError(self.stream.key, str(obj.get("message")), code=obj.get("code"))
        meta = obj.get("metadata") or {}
        new_version = str(meta.get("resourceVersion") or version)
        if kind == "BOOKMARK":
            return new_version
        name = str(meta.get("name"))
        objects = dict(self.objects)
        if kind == "DELETED":
            objects.pop(name, None)
        else:
            objects[name] = obj
        self._publish(objects=objects)
        return new_version

    def _publish(
        self, *, objects: dict[str, Obj] | None = None, fatal: ClusterError | None = None
    ) -> None:
        with self.changed:
            if objects is not None:
                self.objects = objects
                self.synced = True
                self.unreachable_since = None
            if fatal is not None:
                self.fatal = fatal
            self.changed.notify_all()


class _Gone(Exception):
    """The watch's resourceVersion is too old (410): relist."""


class _Refused(ClusterError):
    """An answer that is not the objects; ``retry_after``: the server's Retry-After."""

    def __init__(self, subject: str, message: str, code: int, retry_after: float | None) -> None:
        super().__init__(subject, message, code=code)
        self.retry_after = retry_after


def _checked(response: requests.Response, stream: Stream, *, watching: bool = False) -> Obj:
    """The decoded body of a good answer ({} for a watch, whose body is the event stream);
    ClusterError with the server's message and code (and Retry-After) otherwise."""
    if response.ok:
        return {} if watching else _json(response, stream)
    message = response.text.strip()[:300]
    with contextlib.suppress(ValueError, AttributeError):
        message = str(response.json().get("message", message))[:300]
    raise _Refused(
        stream.key,
        f"{message} (HTTP {response.status_code})",
        response.status_code,
        retry.retry_after(response.headers),
    )


def _json(response: requests.Response, stream: Stream) -> Obj:
    try:
        body = response.json()
    except ValueError as exc:
        raise ClusterError(stream.key, f"not JSON: {response.text[:120]!r}") from exc
    if not isinstance(body, dict):
        raise ClusterError(stream.key, "the answer is not a JSON object")
    return body


State = Mapping[str, Mapping[str, Obj]]
"""stream key -> object name -> object, as last seen."""


class Observer:
    """Follows ``streams`` until closed (use as a context manager)."""

    def __init__(self, api: pykube.HTTPClient, streams: list[Stream]) -> None:
        self._changed = threading.Condition()
        self._followers = {s.key: _Follower(api, s, self._changed) for s in streams}

    def __enter__(self) -> Observer:
        for follower in self._followers.values():
            follower.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        for follower in self._followers.values():
            follower.stop()

    def state(self) -> State:
        with self._changed:
            return {key: f.objects for key, f in self._followers.items()}

    def wait(
        self,
        predicate: Callable[[State], T | None],
        deadline: float,
        *,
        what: str,
        tick: float = 1.0,
        on_tick: Callable[[State], None] | None = None,
        interrupt: Callable[[], None] | None = None,
        on_away: Callable[[float, str], None] | None = None,
    ) -> T:
        """The first non-None ``predicate(state)``, evaluated once every stream has listed and
        again after every change. ``on_tick`` (progress) runs at most every ``tick`` seconds.
        ``interrupt`` runs at least every ``WAKE`` seconds, synced or not, and may raise to
        end the wait (SIGTERM while the API server is away). Raises WaitTimeout at
        ``deadline`` (time.monotonic()), ClusterError when a stream hit a fatal error or the
        API server stayed unreachable until the deadline. While a stream cannot reach the API
        server, ticks go to ``on_away(seconds, last error)`` instead of ``on_tick``: the state
        is as last seen, and a progress line must not present it as current."""
        next_tick = time.monotonic() + tick
        with self._changed:
            while True:
                if interrupt is not None:
                    interrupt()
                self._raise_fatal()
                if all(f.synced for f in self._followers.values()):
                    state = {key: f.objects for key, f in self._followers.items()}
                    result = predicate(state)
                    if result is not None:
                        return result
                    now = time.monotonic()
                    if on_tick is not None and now >= next_tick:
                        away = self._away(now)
                        if away is not None and on_away is not None:
                            on_away(*away)  # not the cached state as if it were current
                        else:
                            on_tick(state)
                        next_tick = now + tick
                now = time.monotonic()
                if now >= deadline:
                    self._raise_unreachable()
                    raise WaitTimeout(what, self.state_unlocked())
                wake = next_tick - now if on_tick is not None and next_tick > now else WAKE
                self._changed.wait(timeout=min(deadline - now, wake, WAKE))

    def _away(self, now: float) -> tuple[float, str] | None:
        """(seconds, last error) of the stream that has been unreachable longest, if any."""
        away = [f for f in self._followers.values() if f.unreachable_since is not None]
        if not away:
            return None
        first = min(away, key=lambda f: f.unreachable_since or now)
        return now - (first.unreachable_since or now), first.last_error

    def state_unlocked(self) -> State:
        return {key: f.objects for key, f in self._followers.items()}

    def _raise_fatal(self) -> None:
        for follower in self._followers.values():
            if follower.fatal is not None:
                raise follower.fatal

    def _raise_unreachable(self) -> None:
        for follower in self._followers.values():
            if follower.unreachable_since is not None or not follower.synced:
                raise ClusterError(
                    follower.stream.key,
                    f"no answer from the API server until the deadline: {follower.last_error}",
                )
