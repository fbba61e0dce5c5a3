"""The node side's controller framework: resource table, informer-style store, REST client,
work queue.

The node side (``testenv.node``) plays what runs on a node next to upstream's controllers
(virt-handler, the kubelet, CSI, CDI's worker pods). Its controllers are built like a small
controller-runtime:

- one watch thread per resource (all namespaces) lists, then watches, and fills a `Store`;
- every watched change is mapped by each interested `Controller` to keys (`keys_for`);
- one worker thread runs `Controller.reconcile(key)` for due keys, one at a time, so
  controllers never race each other and need no locks of their own;
- timers (`Simulator.enqueue(..., delay=...)`) drive progress ticks and back-off.

Reactions come from watch events, never from polling, so a state change is answered within
the time it takes the API server to send the event (tens of milliseconds).

Writes go through `Client`, which also feeds each written object back into the store, so a
reconcile that runs right after a write sees its own write (read-your-writes), as a real
informer eventually would.
"""

from __future__ import annotations

import builtins
import copy
import enum
import heapq
import itertools
import json
import logging
import marshal
import socket
import threading
import time
import traceback
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, ClassVar

import requests

log = logging.getLogger("testenv.node")

Key = tuple[str, str, str]
"""(resource plural, namespace ("" for cluster-scoped), name)."""

FAULT_ANNOTATION = "sim.vmstorage.dev/fault"
CONTENT_HASH_ANNOTATION = "sim.vmstorage.dev/content-hash"

WATCH_TIMEOUT_SECONDS = 30
"""Server-side watch timeout; a stream that ends is re-opened from the last resourceVersion."""


@dataclass(frozen=True)
class ResourceInfo:
    """Where a resource lives in the API: its group/version, kind and scope."""

    api_version: str
    kind: str
    namespaced: bool

    def url(self, plural: str, namespace: str = "", name: str = "", sub: str = "") -> str:
        """Absolute API path; an empty namespace on a namespaced resource means all namespaces."""
        base = "/api/v1" if self.api_version == "v1" else f"/apis/{self.api_version}"
        parts = [base]
        if self.namespaced and namespace:
            parts += ["namespaces", namespace]
        parts.append(plural)
        if name:
            parts.append(name)
        if sub:
            parts.append(sub)
        return "/".join(parts)


RESOURCES: dict[str, ResourceInfo] = {
    "namespaces": ResourceInfo("v1", "Namespace", False),
    "storageclasses": ResourceInfo("storage.k8s.io/v1", "StorageClass", False),
    "persistentvolumeclaims": ResourceInfo("v1", "PersistentVolumeClaim", True),
    "persistentvolumes": ResourceInfo("v1", "PersistentVolume", False),
    "events": ResourceInfo("v1", "Event", True),
    "datavolumes": ResourceInfo("cdi.kubevirt.io/v1beta1", "DataVolume", True),
    "storageprofiles": ResourceInfo("cdi.kubevirt.io/v1beta1", "StorageProfile", False),
    "virtualmachines": ResourceInfo("kubevirt.io/v1", "VirtualMachine", True),
    "virtualmachineinstances": ResourceInfo("kubevirt.io/v1", "VirtualMachineInstance", True),
    "virtualmachineinstancemigrations": ResourceInfo(
        "kubevirt.io/v1", "VirtualMachineInstanceMigration", True
    ),
    "kubevirts": ResourceInfo("kubevirt.io/v1", "KubeVirt", True),
    "pods": ResourceInfo("v1", "Pod", True),
    "csidrivers": ResourceInfo("storage.k8s.io/v1", "CSIDriver", False),
    "controllerrevisions": ResourceInfo("apps/v1", "ControllerRevision", True),
}
"""Every resource the simulator knows, by plural. Other modules may add entries before start."""

UNWATCHED: frozenset[str] = frozenset({"events"})
"""Resources not cached unless a controller lists them in `watches` (events are write-mostly)."""


def plural_for(kind_or_plural: str) -> str:
    """Normalise "DataVolume", "datavolume" or "datavolumes" to the plural key of RESOURCES."""
    if kind_or_plural in RESOURCES:
        return kind_or_plural
    for plural, info in RESOURCES.items():
        if info.kind.lower() == kind_or_plural.lower():
            return plural
    raise KeyError(f"unknown resource or kind: {kind_or_plural}")


def key_of(resource: str, obj: Mapping[str, Any]) -> Key:
    """The store key of an object of the given resource."""
    meta = obj.get("metadata", {})
    namespace = meta.get("namespace", "") if RESOURCES[resource].namespaced else ""
    return (resource, namespace, meta["name"])


def now_rfc3339() -> str:
    """Current UTC time in the RFC 3339 form the API server uses (second precision)."""
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def annotations_of(obj: Mapping[str, Any]) -> dict[str, str]:
    """The object's annotations (empty dict when it has none)."""
    return dict(obj.get("metadata", {}).get("annotations") or {})


def content_hash(obj: Mapping[str, Any]) -> str | None:
    """The simulated disk content hash of a PVC ("" = blank disk, None = never written)."""
    return annotations_of(obj).get(CONTENT_HASH_ANNOTATION)


GI = 2**30


def set_condition(
    conditions: Sequence[Mapping[str, Any]] | None,
    type_: str,
    status: str,
    reason: str = "",
    message: str = "",
) -> list[dict[str, Any]]:
    """A new condition list with `type_` set. Timestamps change only when status, reason or
    message change, so an unchanged condition never causes a needless write (and watch loop)."""
    result = [dict(c) for c in conditions or []]
    for cond in result:
        if cond.get("type") != type_:
            continue
        if (cond.get("status"), cond.get("reason", ""), cond.get("message", "")) == (
            status, reason, message,
        ):
            return result
        if cond.get("status") != status:
            cond["lastTransitionTime"] = now_rfc3339()
        cond.update(status=status, reason=reason, message=message,
                    lastHeartbeatTime=now_rfc3339())
        return result
    stamp = now_rfc3339()
    result.append({"type": type_, "status": status, "reason": reason, "message": message,
                   "lastTransitionTime": stamp, "lastHeartbeatTime": stamp})
    return result


def get_condition(obj: Mapping[str, Any], type_: str) -> dict[str, Any] | None:
    """The status condition of `type_`, or None."""
    for cond in obj.get("status", {}).get("conditions") or []:
        if cond.get("type") == type_:
            return dict(cond)
    return None


def owner_reference(owner: Mapping[str, Any], *, controller: bool = True) -> dict[str, Any]:
    """An ownerReference entry pointing at `owner` (which must carry apiVersion and kind)."""
    meta = owner["metadata"]
    return {
        "apiVersion": owner["apiVersion"],
        "kind": owner["kind"],
        "name": meta["name"],
        "uid": meta["uid"],
        "controller": controller,
        "blockOwnerDeletion": True,
    }


def is_owned_by(obj: Mapping[str, Any], owner: Mapping[str, Any]) -> bool:
    """Whether `obj` lists `owner` (by uid) among its ownerReferences."""
    uid = owner.get("metadata", {}).get("uid")
    refs = obj.get("metadata", {}).get("ownerReferences") or []
    return any(ref.get("uid") == uid for ref in refs)


def is_deleting(obj: Mapping[str, Any]) -> bool:
    """Whether the object has a deletionTimestamp (is being deleted)."""
    return bool(obj.get("metadata", {}).get("deletionTimestamp"))


def _rv(obj: Mapping[str, Any]) -> int | None:
    """resourceVersion as an int (etcd revisions are numeric), None when absent or opaque."""
    value = obj.get("metadata", {}).get("resourceVersion")
    try:
        return int(value) if value is not None else None
    except ValueError:
        return None


def _newer_or_equal(candidate: Mapping[str, Any], current: Mapping[str, Any] | None) -> bool:
    """Whether `candidate` is not older than `current` (unknown versions count as newer)."""
    if current is None:
        return True
    new, old = _rv(candidate), _rv(current)
    return new is None or old is None or new >= old


# --------------------------------------------------------------------------------------------
# Store


class Store:
    """Informer-style cache of API objects, filled by watches and by the client's writes.

    Thread-safe. Every read returns deep copies, so callers may mutate what they get.
    Stale updates (a lower resourceVersion than the cached one, or an event for an object
    already deleted at a later version) are ignored, which makes feeding in write
    responses safe while watch events are still in flight.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._objects: dict[Key, dict[str, Any]] = {}
        self._tombstones: dict[Key, int] = {}

    def get(self, resource: str, namespace: str, name: str) -> dict[str, Any] | None:
        """A copy of the cached object, or None."""
        ns = namespace if RESOURCES[resource].namespaced else ""
        with self._lock:
            obj = self._objects.get((resource, ns, name))
            return _copied(obj) if obj is not None else None

    def list(
        self,
        resource: str,
        namespace: str | None = None,
        selector: Mapping[str, str] | None = None,
    ) -> list[dict[str, Any]]:
        """Copies of cached objects of a resource, optionally in one namespace and matching
        every label in `selector` (equality only), sorted by (namespace, name)."""
        with self._lock:
            found = [
                obj
                for (res, ns, _), obj in self._objects.items()
                if res == resource
                and (namespace is None or ns == namespace)
                and _labels_match(obj, selector)
            ]
            found.sort(key=lambda o: (o["metadata"].get("namespace", ""), o["metadata"]["name"]))
            copied: builtins.list[dict[str, Any]] = _copied(found)
            return copied

    def keys(self, resource: str, namespace: str | None = None) -> builtins.list[Key]:
        """The keys of the cached objects of a resource, optionally in one namespace, sorted
        by (namespace, name) like `list`, without copying the objects (for `keys_for`)."""
        with self._lock:
            return sorted(
                key
                for key in self._objects
                if key[0] == resource and (namespace is None or key[1] == namespace)
            )

    def keys_where(
        self, resource: str, namespace: str, predicate: Callable[[Mapping[str, Any]], bool]
    ) -> builtins.list[Key]:
        """The sorted keys of a resource's cached objects in `namespace` for which
        `predicate(obj)` holds. The predicate sees the cached object itself, under the store's
        lock: it must only read, and must not call the store."""
        with self._lock:
            return sorted(
                key
                for key, obj in self._objects.items()
                if key[0] == resource and key[1] == namespace and predicate(obj)
            )

    def observe(self, resource: str, obj: Mapping[str, Any]) -> bool:
        """Record an added/modified object unless it is stale; returns whether it was taken."""
        key = key_of(resource, obj)
        with self._lock:
            tomb = self._tombstones.get(key)
            rv = _rv(obj)
            if tomb is not None and rv is not None and rv <= tomb:
                return False
            if not _newer_or_equal(obj, self._objects.get(key)):
                return False
            self._objects[key] = _copied(dict(obj))
            return True

    def forget(self, resource: str, obj: Mapping[str, Any]) -> None:
        """Record a deletion; later events at or below its resourceVersion are ignored."""
        key = key_of(resource, obj)
        with self._lock:
            self._objects.pop(key, None)
            rv = _rv(obj)
            if rv is not None:
                self._tombstones[key] = max(rv, self._tombstones.get(key, 0))

    def replace(
        self, resource: str, objs: Iterable[Mapping[str, Any]], list_version: str = ""
    ) -> builtins.list[dict[str, Any]]:
        """Sync a resource with a fresh LIST taken at `list_version`.

        Listed objects replace cached ones unless the cache is newer (a write response seen
        after the LIST); cached objects missing from the list are dropped unless they are
        newer than the list. Returns the dropped objects, so their controllers can be told."""
        fresh = {key_of(resource, o): dict(o) for o in objs}
        try:
            listed_at: int | None = int(list_version)
        except ValueError:
            listed_at = None
        gone: builtins.list[dict[str, Any]] = []
        with self._lock:
            for key, obj in builtins.list(self._objects.items()):
                if key[0] != resource or key in fresh:
                    continue
                rv = _rv(obj)
                if listed_at is None or rv is None or rv <= listed_at:
                    gone.append(self._objects.pop(key))
        for obj in fresh.values():
            self.observe(resource, obj)
        copied: builtins.list[dict[str, Any]] = _copied(gone)
        return copied


def _copied(obj: Any) -> Any:
    """A deep copy of an API object (JSON types: dicts, lists, strings, numbers, booleans,
    None). marshal copies these about 5x faster than `copy.deepcopy`, which dominated the
    simulator's time once a namespace held dozens of VMs (every VM and VMI reconcile reads
    all the namespace's PVCs and DataVolumes); anything else falls back to deepcopy."""
    try:
        return marshal.loads(marshal.dumps(obj))
    except ValueError:
        return copy.deepcopy(obj)


def _labels_match(obj: Mapping[str, Any], selector: Mapping[str, str] | None) -> bool:
    if not selector:
        return True
    labels = obj.get("metadata", {}).get("labels") or {}
    return all(labels.get(k) == v for k, v in selector.items())


# --------------------------------------------------------------------------------------------
# Client


class ApiError(Exception):
    """A non-2xx answer from the API server: HTTP code, Status reason and message."""

    def __init__(self, code: int, reason: str, message: str) -> None:
        super().__init__(f"{code} {reason}: {message}")
        self.code = code
        self.reason = reason
        self.message = message


class Client:
    """Thin REST helper over a pykube `HTTPClient` (raw calls, JSON in and out).

    Every successful write is fed into `store` (when given), so the simulator reads its own
    writes before the watch event arrives. Raises `ApiError` on any non-2xx answer.
    """

    def __init__(self, api: Any, store: Store | None = None, component: str = "sim") -> None:
        self.api = api
        # No proxy or netrc look-up from the environment (the API server is on loopback):
        # requests iterates os.environ on every request, which races with pytest setting
        # PYTEST_CURRENT_TEST in the main thread ("KeyError: 'PYTEST_CURRENT_TEST'" from a
        # controller thread).
        api.session.trust_env = False
        self.store = store
        self.component = component
        self._status_cache: dict[str, frozenset[str]] = {}
        self._events: dict[tuple[str, str, str, str], tuple[str, str, int]] = {}
        self._lock = threading.Lock()

    # -- plumbing

    def request(
        self,
        method: str,
        path: str,
        *,
        body: Any = None,
        content_type: str = "application/json",
        params: Mapping[str, str] | None = None,
    ) -> dict[str, Any]:
        """Send one request to an absolute API path and return the decoded JSON body."""
        kwargs: dict[str, Any] = {"timeout": 30}
        if body is not None:
            kwargs["data"] = json.dumps(body)
            kwargs["headers"] = {"Content-Type": content_type}
        if params:
            kwargs["params"] = dict(params)
        url = str(self.api.url).rstrip("/") + path
        resp = self.api.session.request(method, url, **kwargs)
        if resp.status_code >= 300:
            raise _api_error(resp)
        result: dict[str, Any] = resp.json() if resp.content else {}
        return result

    def has_status_subresource(self, resource: str) -> bool:
        """Whether the API server serves `<resource>/status` (discovery, cached per group)."""
        info = RESOURCES[resource]
        with self._lock:
            names = self._status_cache.get(info.api_version)
        if names is None:
            base = "/api/v1" if info.api_version == "v1" else f"/apis/{info.api_version}"
            try:
                listing = self.request("GET", base)
            except ApiError as err:
                if err.code == 404:
                    return False
                raise
            names = frozenset(r["name"] for r in listing.get("resources", []))
            with self._lock:
                self._status_cache[info.api_version] = names
        return f"{resource}/status" in names

    def _remember(self, resource: str, obj: dict[str, Any]) -> dict[str, Any]:
        if self.store is not None and obj.get("metadata", {}).get("name"):
            self.store.observe(resource, obj)
        return obj

    # -- verbs

    def create(self, resource: str, obj: Mapping[str, Any]) -> dict[str, Any]:
        """POST an object (namespace taken from its metadata) and return the created object."""
        info = RESOURCES[resource]
        body = {"apiVersion": info.api_version, "kind": info.kind, **obj}
        namespace = body.get("metadata", {}).get("namespace", "")
        created = self.request("POST", info.url(resource, namespace), body=body)
        return self._remember(resource, created)

    def get(self, resource: str, namespace: str, name: str) -> dict[str, Any] | None:
        """A live GET (bypassing the store); None on 404."""
        try:
            return self.request("GET", RESOURCES[resource].url(resource, namespace, name))
        except ApiError as err:
            if err.code == 404:
                return None
            raise

    def replace(self, resource: str, obj: Mapping[str, Any]) -> dict[str, Any]:
        """PUT the whole object (optimistic concurrency on its resourceVersion)."""
        meta = obj["metadata"]
        path = RESOURCES[resource].url(resource, meta.get("namespace", ""), meta["name"])
        return self._remember(resource, self.request("PUT", path, body=obj))

    def merge_patch(
        self, resource: str, namespace: str, name: str, patch: Mapping[str, Any]
    ) -> dict[str, Any]:
        """JSON merge patch (RFC 7386) of the main resource."""
        path = RESOURCES[resource].url(resource, namespace, name)
        updated = self.request(
            "PATCH", path, body=patch, content_type="application/merge-patch+json"
        )
        return self._remember(resource, updated)

    def json_patch(
        self, resource: str, namespace: str, name: str, ops: Sequence[Mapping[str, Any]]
    ) -> dict[str, Any]:
        """JSON patch (RFC 6902) of the main resource; a failed `test` op gives ApiError 422."""
        path = RESOURCES[resource].url(resource, namespace, name)
        updated = self.request(
            "PATCH", path, body=list(ops), content_type="application/json-patch+json"
        )
        return self._remember(resource, updated)

    def patch_status(
        self, resource: str, namespace: str, name: str, patch: Mapping[str, Any]
    ) -> dict[str, Any]:
        """Merge patch through the status subresource when the resource has one, else the
        main resource (then the patch may touch more than status, as the caller wishes)."""
        sub = "status" if self.has_status_subresource(resource) else ""
        path = RESOURCES[resource].url(resource, namespace, name, sub)
        updated = self.request(
            "PATCH", path, body=patch, content_type="application/merge-patch+json"
        )
        return self._remember(resource, updated)

    def delete(
        self, resource: str, namespace: str, name: str, *, propagation: str = "Background",
        grace_period: int | None = None,
    ) -> None:
        """DELETE an object; a missing object is not an error. `grace_period=0` removes a
        scheduled pod at once (what the kubelet does once its containers stopped)."""
        path = RESOURCES[resource].url(resource, namespace, name)
        body: dict[str, Any] = {"propagationPolicy": propagation}
        if grace_period is not None:
            body["gracePeriodSeconds"] = grace_period
        try:
            result = self.request("DELETE", path, body=body)
        except ApiError as err:
            if err.code == 404:
                return
            raise
        if self.store is None:
            return
        deleted = result if result.get("kind") == RESOURCES[resource].kind else None
        if deleted is None:
            return
        if deleted.get("metadata", {}).get("finalizers"):
            self.store.observe(resource, deleted)
        else:
            self.store.forget(resource, deleted)

    def event(self, involved: Mapping[str, Any], type_: str, reason: str, message: str) -> None:
        """Record a core/v1 Event about `involved`, aggregating repeats (count + 1) as the
        kubelet/controller event recorders do. Never raises: events are best effort."""
        meta = involved.get("metadata", {})
        namespace = meta.get("namespace") or "default"
        cache_key = (meta.get("uid", ""), type_, reason, message)
        try:
            with self._lock:
                seen = self._events.get(cache_key)
            if seen is not None:
                ev_ns, ev_name, count = seen
                self.merge_patch(
                    "events", ev_ns, ev_name, {"count": count + 1, "lastTimestamp": now_rfc3339()}
                )
                with self._lock:
                    self._events[cache_key] = (ev_ns, ev_name, count + 1)
                return
            body = _event_body(involved, namespace=namespace, type_=type_, reason=reason,
                               message=message, component=self.component)
            created = self.create("events", body)
            with self._lock:
                self._events[cache_key] = (namespace, created["metadata"]["name"], 1)
        except (ApiError, requests.RequestException) as err:
            log.warning("event %s on %s/%s not recorded: %s", reason, namespace,
                        meta.get("name"), err)
            with self._lock:
                self._events.pop(cache_key, None)


def _event_body(
    involved: Mapping[str, Any],
    *,
    namespace: str,
    type_: str,
    reason: str,
    message: str,
    component: str,
) -> dict[str, Any]:
    meta = involved.get("metadata", {})
    stamp = now_rfc3339()
    return {
        "metadata": {"generateName": f"{meta.get('name', 'object')}.", "namespace": namespace},
        "involvedObject": {
            "apiVersion": involved.get("apiVersion", ""),
            "kind": involved.get("kind", ""),
            "name": meta.get("name", ""),
            "namespace": meta.get("namespace", ""),
            "uid": meta.get("uid", ""),
            "resourceVersion": meta.get("resourceVersion", ""),
        },
        "type": type_,
        "reason": reason,
        "message": message,
        "source": {"component": component},
        "reportingComponent": component,
        "reportingInstance": component,
        "firstTimestamp": stamp,
        "lastTimestamp": stamp,
        "count": 1,
    }


def _api_error(resp: requests.Response) -> ApiError:
    try:
        payload = resp.json()
    except ValueError:
        return ApiError(resp.status_code, resp.reason or "", resp.text)
    if isinstance(payload, dict) and payload.get("kind") == "Status":
        return ApiError(resp.status_code, payload.get("reason", ""), payload.get("message", ""))
    return ApiError(resp.status_code, resp.reason or "", resp.text)


# --------------------------------------------------------------------------------------------
# Faults


class FaultAction(enum.StrEnum):
    """What an injected fault does to the operation that takes it."""

    FAIL = "fail"  # every attempt fails (retried, as upstream) until the fault is cleared
    FAIL_TIMES = "fail-times"  # fail `times` attempts, then succeed
    FATAL = "fatal"  # the operation fails for good (e.g. a DataVolume goes Failed)
    STALL = "stall"  # never progress until the fault is cleared


@dataclass(frozen=True)
class Fault:
    """One injected fault. `times` counts the occurrences of FAIL_TIMES; FAIL, FATAL and
    STALL last until cleared (removed from `Faults`, or their annotation removed)."""

    action: FaultAction
    times: int = 1
    message: str = "injected fault"

    @classmethod
    def parse(cls, text: str) -> Fault:
        """Parse the annotation form `<action>[:N]`: "fail", "fail-times:3", "fatal",
        "stall"."""
        action_text, _, count = text.strip().partition(":")
        action = FaultAction(action_text.strip())
        times = int(count) if count.strip() else 1
        if times < 1:
            raise ValueError(f"fault count must be >= 1: {text!r}")
        return cls(action, times, f"injected fault {text.strip()!r}")


@dataclass
class _Armed:
    fault: Fault
    left: int
    source: str = "api"  # "api" (added by a test) or the annotation "<uid>=<value>"


class Faults:
    """Fault injection per object; thread-safe.

    Faults come from tests (`add`) or from the annotation `sim.vmstorage.dev/fault:
    "<action>[:N]"` on an object, which a controller reports by passing the object to `take`
    (so cluster tests can inject faults with plain API calls). An annotation fault is armed
    once per (object uid, annotation value): changing the value re-arms it, removing the
    annotation disarms it (which is how a stall is cleared).

    `kind` is a resource plural or a Kind ("datavolumes" and "DataVolume" are the same).
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._armed: dict[Key, list[_Armed]] = {}

    def add(self, kind: str, namespace: str, name: str, fault: Fault) -> None:
        """Inject a fault for the object's next operations."""
        with self._lock:
            self._armed.setdefault(self._key(kind, namespace, name), []).append(
                _Armed(fault, fault.times)
            )

    def clear(self, kind: str, namespace: str, name: str) -> None:
        """Remove every fault (test-added and annotation-armed) of the object."""
        with self._lock:
            self._armed.pop(self._key(kind, namespace, name), None)

    def take(
        self,
        kind: str,
        namespace: str,
        name: str,
        action: str,
        obj: Mapping[str, Any] | None = None,
    ) -> Fault | None:
        """Consume one occurrence of a fault of `action` and return it, or None.

        Asking for "fail" also matches "fail-times" and "fatal" (all fail the attempt). Only
        "fail-times" is consumed; the others are returned every time until cleared. Pass the
        current object as `obj` so its fault annotation is honoured.
        """
        wanted = FaultAction(action)
        key = self._key(kind, namespace, name)
        with self._lock:
            if obj is not None:
                self._sync_annotation(key, obj)
            for armed in self._armed.get(key, []):
                if not _matches(armed.fault.action, wanted):
                    continue
                if armed.fault.action is not FaultAction.FAIL_TIMES:
                    return armed.fault
                if armed.left > 0:
                    armed.left -= 1
                    return armed.fault
        return None

    def pending(self, kind: str, namespace: str, name: str) -> list[Fault]:
        """Faults of the object that still have occurrences left (for tests and logs)."""
        with self._lock:
            return [
                a.fault
                for a in self._armed.get(self._key(kind, namespace, name), [])
                if a.left > 0 or a.fault.action is not FaultAction.FAIL_TIMES
            ]

    @staticmethod
    def _key(kind: str, namespace: str, name: str) -> Key:
        return (plural_for(kind), namespace, name)

    def _sync_annotation(self, key: Key, obj: Mapping[str, Any]) -> None:
        """Arm, re-arm or disarm the annotation fault of `obj` (caller holds the lock)."""
        value = annotations_of(obj).get(FAULT_ANNOTATION)
        source = f"{obj.get('metadata', {}).get('uid', '')}={value}"
        current = self._armed.setdefault(key, [])
        kept = [a for a in current if a.source in ("api", source)]
        if value and not any(a.source == source for a in kept):
            try:
                fault = Fault.parse(value)
            except ValueError:
                log.warning("ignoring malformed %s=%r on %s", FAULT_ANNOTATION, value, key)
            else:
                kept.append(_Armed(fault, fault.times, source))
        self._armed[key] = kept


def _matches(have: FaultAction, wanted: FaultAction) -> bool:
    if wanted is FaultAction.FAIL:
        return have in (FaultAction.FAIL, FaultAction.FAIL_TIMES, FaultAction.FATAL)
    return have is wanted


# --------------------------------------------------------------------------------------------
# Controllers and the simulator


@dataclass(frozen=True)
class SimConfig:
    """Simulator settings. Objects (StorageClasses, KubeVirt CR) carry the rest."""

    copy_seconds_per_gib: float = 0.0  # 0 = copies and imports finish at once
    nodes: tuple[str, ...] = ("node-1", "node-2", "node-3")
    progress_tick: float = 0.05  # seconds between progress updates of a running copy
    kubevirt_version: str = "v1.9.0"
    migration_backoff_base: float = 20.0  # KubeVirt's first retry delay after a failed VMIM
    retry_base: float = 0.2  # back-off after a reconcile error, doubled up to retry_max
    retry_max: float = 5.0


class Controller:
    """Base class of a simulated controller.

    Subclasses set `watches` and implement `reconcile`. `reconcile(key)` must be idempotent:
    it reads `self.sim.store`, writes through `self.sim.client`, and may schedule itself
    again with `self.sim.enqueue(self, key, delay)`. It runs on the single worker thread.
    An exception requeues the key with back-off (a 409 Conflict retries at once).

    `keys_for` runs on the watch threads, concurrently with `reconcile`: it may read the
    store (thread-safe) but must not write to the API or touch controller state.
    """

    watches: ClassVar[tuple[str, ...]] = ()

    def __init__(self, sim: Simulator) -> None:
        self.sim = sim

    @property
    def name(self) -> str:
        """Name used in logs and as the event source component."""
        return type(self).__name__

    def keys_for(self, resource: str, obj: dict[str, Any]) -> Iterable[Key]:
        """Keys to reconcile when `obj` of `resource` changed (default: the object itself)."""
        return [key_of(resource, obj)]

    def reconcile(self, key: Key) -> None:
        """Drive the object named by `key` one step towards its desired state."""
        raise NotImplementedError


@dataclass(frozen=True)
class ControllerCrash:
    """An exception a controller raised (a simulator bug): who, on what, and the traceback."""

    controller: str
    where: str
    traceback: str

    def __str__(self) -> str:
        return f"{self.controller}.{self.where} raised:\n{self.traceback}"


@dataclass(order=True)
class _Item:
    due: float
    seq: int
    controller: Controller = field(compare=False)
    key: Key = field(compare=False)


class _WorkQueue:
    """Delaying, de-duplicating queue: one pending entry per (controller, key), earliest wins."""

    def __init__(self) -> None:
        self._cond = threading.Condition()
        self._heap: list[_Item] = []
        self._pending: dict[tuple[int, Key], float] = {}
        self._seq = itertools.count()
        self._busy = False
        self._closed = False

    def put(self, controller: Controller, key: Key, delay: float) -> None:
        due = time.monotonic() + max(delay, 0.0)
        ident = (id(controller), key)
        with self._cond:
            current = self._pending.get(ident)
            if current is not None and current <= due:
                return
            self._pending[ident] = due
            heapq.heappush(self._heap, _Item(due, next(self._seq), controller, key))
            self._cond.notify_all()

    def get(self) -> _Item | None:
        """Block until an item is due (None once closed); marks the queue busy."""
        with self._cond:
            while not self._closed:
                self._drop_stale()
                if self._heap and self._heap[0].due <= time.monotonic():
                    item = heapq.heappop(self._heap)
                    del self._pending[(id(item.controller), item.key)]
                    self._busy = True
                    return item
                wait = self._heap[0].due - time.monotonic() if self._heap else None
                self._cond.wait(timeout=wait)
            return None

    def done(self) -> None:
        with self._cond:
            self._busy = False
            self._cond.notify_all()

    def close(self) -> None:
        with self._cond:
            self._closed = True
            self._cond.notify_all()

    def idle(self, horizon: float) -> bool:
        """No reconcile running and nothing due within `horizon` seconds."""
        with self._cond:
            self._drop_stale()
            limit = time.monotonic() + horizon
            return not self._busy and not any(i.due <= limit for i in self._heap)

    def _drop_stale(self) -> None:
        """Pop heap entries superseded by an earlier due time for the same key."""
        while self._heap:
            top = self._heap[0]
            if self._pending.get((id(top.controller), top.key)) == top.due:
                return
            heapq.heappop(self._heap)


class Simulator:
    """Runs controllers against an API server: watch threads fill `store`, one worker
    thread reconciles. Use as a context manager or call `start()` / `stop()`; an instance
    runs once (build a new one to restart). Run one simulator per API server: two would
    both act on every object."""

    def __init__(
        self,
        api: Any,
        config: SimConfig | None = None,
        controllers: Sequence[type[Controller]] = (),
    ) -> None:
        self.api = api
        self.config = config or SimConfig()
        self.store = Store()
        self.client = Client(api, self.store)
        self.faults = Faults()
        self.controllers: list[Controller] = [cls(self) for cls in controllers]
        self._queue = _WorkQueue()
        self._stop = threading.Event()
        self._threads: list[threading.Thread] = []
        self._watchers: list[_Watcher] = []
        self._failures: dict[tuple[int, Key], int] = {}
        self._crashes: list[ControllerCrash] = []
        self._crash_lock = threading.Lock()

    # -- lifecycle

    def start(self, sync_timeout: float = 15.0) -> None:
        """Start one watch thread per resource, wait for their first LIST, start the worker.
        A second start is refused: two workers would race each other on every object."""
        if self._threads:
            raise RuntimeError("the simulator is already running (start() was called twice)")
        watched = {r for r in RESOURCES if r not in UNWATCHED}
        for ctrl in self.controllers:
            watched.update(ctrl.watches)
        for resource in sorted(watched):
            watcher = _Watcher(self, resource)
            self._watchers.append(watcher)
            self._spawn(watcher.run, f"watch-{resource}")
        deadline = time.monotonic() + sync_timeout
        for watcher in self._watchers:
            if not watcher.synced.wait(max(deadline - time.monotonic(), 0.0)):
                self.stop()
                raise TimeoutError(f"initial list of {watcher.resource} did not finish")
        self._spawn(self._work, "sim-worker")

    def stop(self) -> None:
        """Stop every thread; open watch streams are shut down so this returns quickly."""
        self._stop.set()
        self._queue.close()
        for watcher in self._watchers:
            watcher.interrupt()
        for thread in self._threads:
            thread.join(timeout=5)
        self._threads.clear()
        self._watchers.clear()

    def __enter__(self) -> Simulator:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # -- controller crashes (simulator bugs)

    def take_crashes(self) -> list[ControllerCrash]:
        """The controller exceptions recorded since the last call (and forget them).

        A crash is an exception other than an API or transport error raised by a
        controller's `reconcile` or `keys_for`: a simulator bug. The `sim` test fixture
        fails the running test with these tracebacks instead of letting it time out."""
        with self._crash_lock:
            crashes, self._crashes = self._crashes, []
        return crashes

    def _record_crash(self, controller: str, where: str) -> None:
        with self._crash_lock:
            self._crashes.append(ControllerCrash(controller, where, traceback.format_exc()))

    # -- scheduling

    def enqueue(self, controller: Controller, key: Key, delay: float = 0.0) -> None:
        """Reconcile `key` with `controller` after `delay` seconds (earliest request wins)."""
        self._queue.put(controller, key, delay)

    def wait_idle(self, timeout: float = 5.0) -> None:
        """Return once no reconcile runs and none is due within 50 ms; TimeoutError after
        `timeout`. Watch events still on the wire are not seen: give writes ~100 ms first."""
        deadline = time.monotonic() + timeout
        while not self._queue.idle(0.05):
            if time.monotonic() > deadline:
                raise TimeoutError("simulator did not become idle")
            time.sleep(0.01)

    def notify(self, resource: str, obj: dict[str, Any]) -> None:
        """Tell every controller watching `resource` that `obj` changed."""
        for ctrl in self.controllers:
            if resource not in ctrl.watches:
                continue
            try:
                keys = list(ctrl.keys_for(resource, obj))
            except Exception:
                log.exception("%s.keys_for(%s) failed", ctrl.name, resource)
                self._record_crash(ctrl.name, f"keys_for({resource})")
                continue
            for key in keys:
                self.enqueue(ctrl, key)

    # -- threads

    def _spawn(self, target: Any, name: str) -> None:
        thread = threading.Thread(target=target, name=name, daemon=True)
        thread.start()
        self._threads.append(thread)

    def _work(self) -> None:
        while (item := self._queue.get()) is not None:
            try:
                self._run(item)
            finally:
                self._queue.done()

    def _run(self, item: _Item) -> None:
        ident = (id(item.controller), item.key)
        started = time.monotonic()
        try:
            item.controller.reconcile(item.key)
            log.debug("%s: reconciled %s in %.3fs", item.controller.name, item.key,
                      time.monotonic() - started)
        except ApiError as err:
            if err.code == 409:
                self.enqueue(item.controller, item.key, 0.02)
                return
            self._backoff(item, ident, err)
        except requests.RequestException as err:
            if not self._stop.is_set():
                self._backoff(item, ident, err)
        except Exception as err:
            log.exception("%s: reconcile %s crashed", item.controller.name, item.key)
            self._record_crash(item.controller.name, f"reconcile{item.key}")
            self._backoff(item, ident, err)
        else:
            self._failures.pop(ident, None)

    def _backoff(self, item: _Item, ident: tuple[int, Key], err: Exception) -> None:
        count = self._failures.get(ident, 0) + 1
        self._failures[ident] = count
        delay = min(self.config.retry_base * 2 ** (count - 1), self.config.retry_max)
        log.warning("%s: reconcile %s failed (%s); retry in %.2fs",
                    item.controller.name, item.key, err, delay)
        self.enqueue(item.controller, item.key, delay)


class _Watcher:
    """LIST then WATCH one resource across all namespaces, feeding store and controllers.

    On a stream end it re-watches from the last resourceVersion; on 410 Gone (or any error)
    it re-lists. A missing resource (CRD not installed) is retried every second.
    """

    def __init__(self, sim: Simulator, resource: str) -> None:
        self.sim = sim
        self.resource = resource
        self.info = RESOURCES[resource]
        self.synced = threading.Event()
        self._lock = threading.Lock()
        self._response: requests.Response | None = None
        # A private HTTP client per watcher: a watch holds its connection for a long time
        # and must not starve the shared connection pool of `sim.client`.
        self._api = type(sim.api)(sim.api.config)
        self._session: requests.Session = self._api.session
        self._session.trust_env = False  # as Client's: no os.environ look-up per request

    def run(self) -> None:
        while not self.sim._stop.is_set():
            try:
                version = self._list()
                self.synced.set()
                while version and not self.sim._stop.is_set():
                    version = self._watch(version)
            except ApiError as err:
                if err.code == 404:
                    self.synced.set()  # a missing CRD must not block start()
                    self.sim._stop.wait(1.0)
                    continue
                if err.code != 429:  # 429: a CRD's storage is still initialising
                    log.warning("watch %s: %s", self.resource, err)
                self.sim._stop.wait(0.1)
            except (requests.RequestException, ValueError, OSError) as err:
                if not self.sim._stop.is_set():
                    log.warning("watch %s interrupted: %s", self.resource, err)
                    self.sim._stop.wait(0.2)
            except Exception:
                # interrupt() closing the stream under a blocked read can surface as any
                # error from urllib3/http.client; while running, log it and re-list.
                if self.sim._stop.is_set():
                    return
                log.exception("watch %s failed; re-listing", self.resource)
                self.sim._stop.wait(0.5)

    def interrupt(self) -> None:
        """Shut the open watch socket down so the blocked read returns now."""
        with self._lock:
            resp = self._response
        if resp is None:
            return
        try:
            sock = resp.raw.connection.sock if resp.raw.connection else None
            if sock is not None:
                sock.shutdown(socket.SHUT_RDWR)
        except (AttributeError, OSError):
            pass
        resp.close()

    def _url(self) -> str:
        return str(self._api.url).rstrip("/") + self.info.url(self.resource)

    def _list(self) -> str:
        """LIST into the store; notify controllers of every object (and of vanished ones)."""
        resp = self._session.get(self._url(), timeout=30)
        if resp.status_code >= 300:
            raise _api_error(resp)
        body = resp.json()
        items = [self._typed(o) for o in body.get("items", [])]
        version = str(body.get("metadata", {}).get("resourceVersion", ""))
        gone = self.sim.store.replace(self.resource, items, version)
        for obj in [*items, *gone]:
            self.sim.notify(self.resource, obj)
        return version

    def _typed(self, obj: dict[str, Any]) -> dict[str, Any]:
        # LIST items carry no apiVersion/kind; add them so controllers can build references.
        obj.setdefault("apiVersion", self.info.api_version)
        obj.setdefault("kind", self.info.kind)
        return obj

    def _watch(self, version: str) -> str:
        """Follow one watch stream; returns the version to resume from, "" to re-list."""
        params = {
            "watch": "1",
            "allowWatchBookmarks": "true",
            "resourceVersion": version,
            "timeoutSeconds": str(WATCH_TIMEOUT_SECONDS),
        }
        resp = self._session.get(
            self._url(), params=params, stream=True, timeout=(10, WATCH_TIMEOUT_SECONDS + 10)
        )
        if resp.status_code == 410:
            return ""
        if resp.status_code >= 300:
            raise _api_error(resp)
        with self._lock:
            self._response = resp
        try:
            for line in _lines(resp):
                event = json.loads(line)
                kind, obj = event.get("type"), event.get("object", {})
                if kind == "ERROR":
                    return ""  # typically 410 Expired: re-list
                version = obj.get("metadata", {}).get("resourceVersion", version)
                if kind == "BOOKMARK":
                    continue
                self._apply(kind, self._typed(obj))
        finally:
            with self._lock:
                self._response = None
            resp.close()
        return version

    def _apply(self, kind: str | None, obj: dict[str, Any]) -> None:
        store = self.sim.store
        if kind == "DELETED":
            store.forget(self.resource, obj)
        else:
            store.observe(self.resource, obj)
        self.sim.notify(self.resource, obj)


def _lines(resp: requests.Response) -> Iterator[bytes]:
    for line in resp.iter_lines(chunk_size=None):
        if line:
            yield line
