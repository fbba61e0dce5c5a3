"""One runner at a time: a ``coordination.k8s.io/v1`` Lease, held for the whole `apply`.

Taken when free, released (holder cleared) at the end, and taken over from another holder only
once its lease expired (renewTime + leaseDurationSeconds in the past), like client-go's leader
election. Every write is a PUT with the resourceVersion just read, so two runners racing for it
cannot both win. While held it is renewed in the background every third of its duration; if a
renewal finds someone else holding it, ``lost`` is set and the run stops at the next step
boundary with its journal consistent.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import Any

from reconciler.kube.client import Cluster
from reconciler.kube.resources import LEASES
from reconciler.model.errors import ClusterError, ExitCode

log = logging.getLogger(__name__)
LEASE_NAME = "vm-storage-reconciler"


class LockHeld(Exception):
    """Another runner holds the Lease."""

    exit_code = ExitCode.LOCKED

    def __init__(self, holder: str, until: datetime | None, where: str) -> None:
        expires = ""
        if until is not None:
            expires = f" (expires {until.isoformat(timespec='seconds')} unless renewed)"
        super().__init__(f"another run holds the lock: Lease {where} is held by {holder}{expires}")
        self.holder = holder


def _micro(moment: datetime) -> str:
    return moment.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def _parse(stamp: Any) -> datetime | None:
    try:
        return datetime.fromisoformat(str(stamp).replace("Z", "+00:00"))
    except ValueError:
        return None


class Lease:
    def __init__(
        self,
        cluster: Cluster,
        namespace: str,
        holder: str,
        *,
        duration: int = 60,
        name: str = LEASE_NAME,
        now: Callable[[], datetime] = lambda: datetime.now(UTC),
        lost: threading.Event | None = None,
    ) -> None:
        """``lost`` is set when the Lease is taken over (pass the run's stop event)."""
        self.cluster = cluster
        self.namespace = namespace
        self.name = name
        self.holder = holder
        self.duration = duration
        self.now = now
        self.lost = lost or threading.Event()
        self._version = ""
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    @property
    def where(self) -> str:
        return f"{self.namespace}/{self.name}"

    def _body(self, acquired: str | None, transitions: int, holder: str) -> dict[str, Any]:
        spec: dict[str, Any] = {
            "holderIdentity": holder,
            "leaseDurationSeconds": self.duration,
            "renewTime": _micro(self.now()),
            "leaseTransitions": transitions,
        }
        if acquired:
            spec["acquireTime"] = acquired
        meta: dict[str, Any] = {"name": self.name, "namespace": self.namespace}
        if self._version:
            meta["resourceVersion"] = self._version
        return {"apiVersion": LEASES.api_version, "kind": "Lease", "metadata": meta, "spec": spec}

    def acquire(self) -> None:
        """Take the Lease or raise LockHeld. ClusterError when it cannot be read or written."""
        current = self.cluster.get(LEASES, self.namespace, self.name)
        if current is None:
            try:
                created = self.cluster.create(
                    LEASES, self.namespace, self._body(_micro(self.now()), 0, self.holder)
                )
            except ClusterError as exc:
                if exc.code == 409:
                    return self.acquire()  # someone created it between our read and write
                raise
            self._version = str(created["metadata"]["resourceVersion"])
            self._start_renewing()
            return None
        spec = current.get("spec") or {}
        holder = str(spec.get("holderIdentity") or "")
        renewed = _parse(spec.get("renewTime"))
        until = (
            renewed + timedelta(seconds=int(spec.get("leaseDurationSeconds") or 0))
            if renewed
            else None
        )
        if holder and holder != self.holder and until is not None and until > self.now():
            raise LockHeld(holder, until, self.where)
        self._version = str(current["metadata"]["resourceVersion"])
        transitions = int(spec.get("leaseTransitions") or 0) + (holder != self.holder)
        try:
            updated = self.cluster.replace(
                LEASES,
                self.namespace,
                self.name,
                self._body(_micro(self.now()), transitions, self.holder),
            )
        except ClusterError as exc:
            if exc.code == 409:
                raise LockHeld(
                    "another runner (it took the Lease just now)", None, self.where
                ) from exc
            raise
        self._version = str(updated["metadata"]["resourceVersion"])
        self._start_renewing()
        return None

    def renew(self) -> bool:
        """Renew once; False (and ``lost`` set) when the Lease is no longer ours."""
        try:
            current = self.cluster.get(LEASES, self.namespace, self.name)
            spec = (current or {}).get("spec") or {}
            if current is None or spec.get("holderIdentity") != self.holder:
                self.lost.set()
                return False
            self._version = str(current["metadata"]["resourceVersion"])
            updated = self.cluster.replace(
                LEASES,
                self.namespace,
                self.name,
                self._body(
                    spec.get("acquireTime"), int(spec.get("leaseTransitions") or 0), self.holder
                ),
            )
            self._version = str(updated["metadata"]["resourceVersion"])
            return True
        except ClusterError as exc:
            # An API server that is briefly away is not a lost Lease: it stays ours until it
            # expires, and the next renewal tries again.
            log.warning("could not renew Lease %s: %s", self.where, exc)
            return True

    def _start_renewing(self) -> None:
        def loop() -> None:
            while not self._stop.wait(self.duration / 3):
                if not self.renew():
                    log.error("Lease %s was taken over: stopping at the next step", self.where)
                    return

        self._thread = threading.Thread(target=loop, name="lease-renewal", daemon=True)
        self._thread.start()

    def release(self) -> None:
        """Stop renewing and clear the holder (if it is still us), so the next run need not
        wait for the Lease to expire."""
        self._stop.set()
        try:
            current = self.cluster.get(LEASES, self.namespace, self.name)
            if current is None or (current.get("spec") or {}).get("holderIdentity") != self.holder:
                return
            self._version = str(current["metadata"]["resourceVersion"])
            body = self._body(None, int(current["spec"].get("leaseTransitions") or 0), "")
            self.cluster.replace(LEASES, self.namespace, self.name, body)
        except ClusterError as exc:
            log.warning("could not release Lease %s (it expires by itself): %s", self.where, exc)
