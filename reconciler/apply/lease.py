"""One runner at a time: a ``coordination.k8s.io/v1`` Lease, held for the whole `apply`, and the
fence that keeps a runner that lost it from acting.

Taken when free, released (holder cleared) at the end, and taken over from another holder only
once its lease expired (renewTime + leaseDurationSeconds in the past), like client-go's leader
election. Every write of the Lease is a PUT with the resourceVersion just read, so two runners
racing for it cannot both win.

**Fencing.** Holding the Lease is not a fact a runner can observe, only a promise that expires:
a runner frozen (SIGSTOP, a long GC pause, a VM migration of the node) or cut off from the API
server keeps believing it holds a Lease that another runner has taken meanwhile. So a runner acts
only while it *provably* holds it: until ``renew_deadline`` seconds (two thirds of the duration,
client-go's renewDeadline ratio) after the moment it *sent* its last successful renewal. Another
runner may take the Lease only ``duration`` seconds after that renewal's ``renewTime``, so the
last third is the margin for clock skew and a request delayed in flight. ``ensure()`` is called
before every write the run makes (``kube.client.Cluster.write_guard``) and at every step
boundary and wait tick; past the deadline it sets ``lost`` and raises ``LeaseLost``. The journal
adds the second half of the fence (``apply.store``): each journal write is a compare-and-swap
against the journal this runner last wrote, which carries this runner's token (holder and
Lease transitions), so a stale runner's next write fails even if its clock lied.

Renewal runs in a background thread every third of the duration (every ``retry`` seconds after
a failure), each request bounded by a short timeout so an unreachable API server cannot hold
the thread past the deadline. A renewal that finds someone else holding the Lease, or a deadline
passed without a successful renewal, sets ``lost`` (the run's stop event): the run stops at the
next step boundary or wait tick with its journal consistent, and exits 4.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from reconciler.apply.context import Interrupted
from reconciler.kube.client import Cluster
from reconciler.kube.resources import LEASES
from reconciler.model.errors import ClusterError, ExitCode

log = logging.getLogger(__name__)
LEASE_NAME = "vm-storage-reconciler"
DEFAULT_DURATION = 60
MIN_DURATION = 6
RENEW_DEADLINE = 2 / 3
"""The share of the duration a runner may act for after its last successful renewal."""


class LockHeld(Exception):
    """Another runner holds the Lease."""

    exit_code = ExitCode.LOCKED

    def __init__(self, holder: str, until: datetime | None, where: str) -> None:
        expires = ""
        if until is not None:
            expires = f" (expires {until.isoformat(timespec='seconds')} unless renewed)"
        super().__init__(f"another run holds the lock: Lease {where} is held by {holder}{expires}")
        self.holder = holder


class LeaseLost(Interrupted):
    """This runner can no longer prove it holds the Lease (taken over, or not renewed in
    time): it must not write anything more. A move stops as ``Interrupted`` (its journal is
    the new holder's now); the run ends with exit 4."""

    exit_code = ExitCode.LOCKED

    def __init__(self, where: str, why: str) -> None:
        super().__init__(
            f"lost the Lease {where} ({why}): stopped without another write; every open move "
            "stays journaled for the runner that holds the Lease now"
        )


def _micro(moment: datetime) -> str:
    return moment.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def _parse(stamp: Any) -> datetime | None:
    try:
        return datetime.fromisoformat(str(stamp).replace("Z", "+00:00"))
    except ValueError:
        return None


def _count(value: object) -> int:
    if isinstance(value, bool) or not isinstance(value, int | float | str):
        return 0
    try:
        return int(value or 0)
    except ValueError:
        return 0


@dataclass(frozen=True)
class Holding:
    """A Lease's ``spec`` as the rules read it: who holds it, until when (``renewTime +
    leaseDurationSeconds``; None when it was never renewed) and its ``leaseTransitions``."""

    holder: str
    until: datetime | None
    transitions: int


def holding_of(spec: Mapping[str, Any] | None) -> Holding:
    """The ``Holding`` of a Lease's spec (None, or fields of another type, read as unset)."""
    spec = spec if isinstance(spec, Mapping) else {}
    renewed = _parse(spec.get("renewTime")) if spec.get("renewTime") else None
    until = (
        renewed + timedelta(seconds=_count(spec.get("leaseDurationSeconds"))) if renewed else None
    )
    return Holding(
        holder=str(spec.get("holderIdentity") or ""),
        until=until,
        transitions=_count(spec.get("leaseTransitions")),
    )


def held_by_another(holding: Holding, me: str, now: datetime) -> bool:
    """The takeover rule (client-go's leader election): a Lease that another holder renewed
    and that has not expired yet is theirs; a released one (no holder), our own (a restart of
    this runner), an expired one or one never renewed may be taken."""
    return (
        bool(holding.holder)
        and holding.holder != me
        and holding.until is not None
        and holding.until > now
    )


def lost_because(holding: Holding, me: str, transitions: int) -> str | None:
    """Why a Lease this runner acquired (at ``transitions``) is not its own any more; None
    while it is."""
    if holding.holder != me:
        return f"it is held by {holding.holder or 'nobody (deleted or released)'}"
    if holding.transitions != transitions:
        # our name, but another acquisition (a runner with the same identity)
        return "it was taken again since we acquired it"
    return None


class Lease:
    def __init__(
        self,
        cluster: Cluster,
        namespace: str,
        holder: str,
        *,
        duration: int = DEFAULT_DURATION,
        name: str = LEASE_NAME,
        now: Callable[[], datetime] = lambda: datetime.now(UTC),
        lost: threading.Event | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        """``lost`` is set when the Lease is lost (pass the run's stop event); ``now`` is the
        wall clock written into the Lease, ``clock`` the monotonic one the deadline uses."""
        self.cluster = cluster
        self.namespace = namespace
        self.name = name
        self.holder = holder
        self.duration = max(int(duration), MIN_DURATION)
        self.now = now
        self.clock = clock
        self.lost = lost or threading.Event()
        self.transitions = 0
        self._version = ""
        self._valid_until = float("-inf")
        self._renewed_at = float("-inf")
        self._last_error = ""
        self._why_lost = ""
        self._state = threading.Lock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    @property
    def where(self) -> str:
        return f"{self.namespace}/{self.name}"

    @property
    def token(self) -> str:
        """This runner's fencing token: who holds the Lease, and since which takeover."""
        return f"{self.holder}#{self.transitions}"

    @property
    def renew_deadline(self) -> float:
        return self.duration * RENEW_DEADLINE

    @property
    def request_timeout(self) -> float:
        """Seconds one Lease request may take (so a hung request cannot outlive the deadline)."""
        return max(1.0, self.duration / 6)

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

    def _held_since(self, sent: float, written: dict[str, Any]) -> None:
        """A write of ours that made us the holder was accepted; it was sent at ``sent``."""
        with self._state:
            self._version = str(written["metadata"]["resourceVersion"])
            self.transitions = holding_of(written.get("spec")).transitions
            self._valid_until = max(self._valid_until, sent + self.renew_deadline)
            self._renewed_at = max(self._renewed_at, sent)
            self._last_error = ""

    def acquire(self) -> None:
        """Take the Lease or raise LockHeld. ClusterError when it cannot be read or written."""
        current = self.cluster.get(LEASES, self.namespace, self.name)
        sent = self.clock()
        if current is None:
            try:
                created = self.cluster.create(
                    LEASES,
                    self.namespace,
                    self._body(_micro(self.now()), 0, self.holder),
                    fenced=False,
                )
            except ClusterError as exc:
                if exc.code == 409:
                    return self.acquire()  # someone created it between our read and write
                raise
            self._held_since(sent, created)
            self._start_renewing()
            return None
        holding = holding_of(current.get("spec"))
        if held_by_another(holding, self.holder, self.now()):
            raise LockHeld(holding.holder, holding.until, self.where)
        self._version = str(current["metadata"]["resourceVersion"])
        # Every acquisition is a transition (also a holder's own restart after a crash: the
        # token of the previous process must not match ours).
        transitions = holding.transitions + 1
        try:
            updated = self.cluster.replace(
                LEASES,
                self.namespace,
                self.name,
                self._body(_micro(self.now()), transitions, self.holder),
                fenced=False,
            )
        except ClusterError as exc:
            if exc.code != 409:
                raise
            # Refused: another runner took it first, or this very write landed and its
            # answer was lost (the client sent it again, and the resourceVersion no longer
            # matched). Ours only if the Lease now says exactly what we wrote.
            now = self.cluster.get(LEASES, self.namespace, self.name)
            if (
                now is None
                or lost_because(holding_of(now.get("spec")), self.holder, transitions) is not None
            ):
                raise LockHeld(
                    "another runner (it took the Lease just now)", None, self.where
                ) from exc
            updated = now
        self._held_since(sent, updated)
        self._start_renewing()
        return None

    def ensure(self) -> None:
        """Raise ``LeaseLost`` (and set ``lost``) unless this runner provably holds the Lease
        now. Cheap (no request): call it before every write."""
        with self._state:
            why = self._why_lost
            if not why and self.clock() >= self._valid_until:
                why = self._why_lost = (
                    f"not renewed within {self.renew_deadline:.0f}s of the last renewal"
                )
        if why:
            self.lost.set()
            raise LeaseLost(self.where, why)

    def overdue(self) -> str | None:
        """Why the run may be looking at a stale cluster: the Lease has not been renewed when
        it should have been (the API server does not answer), with when the run stops
        writing; None while renewals succeed. For progress lines, not for decisions."""
        now = self.clock()
        late = now - self._renewed_at
        if late <= self.duration / 3 + max(2.0, self.duration / 15) or late == float("inf"):
            return None
        left = max(0.0, self._valid_until - now)
        error = f" ({self._last_error[:200]})" if self._last_error else ""
        return (
            f"the Lease was last renewed {late:.0f}s ago{error}: no answer from the API "
            f"server; this run stops writing in {left:.0f}s unless a renewal succeeds"
        )

    def holds(self) -> bool:
        try:
            self.ensure()
        except LeaseLost:
            return False
        return True

    def _lose(self, why: str) -> None:
        with self._state:
            self._why_lost = self._why_lost or why
        self.lost.set()

    def renew(self) -> bool:
        """Renew once. False (and ``lost`` set) when the Lease is no longer ours; True when
        renewed, or when the API server could not be reached (``ensure`` judges the deadline)."""
        if not self.holds():
            return False
        sent = self.clock()
        try:
            current = self.cluster.get(
                LEASES, self.namespace, self.name, timeout=self.request_timeout
            )
            spec = current.get("spec") if current is not None else None
            spec = spec if isinstance(spec, Mapping) else {}
            why = lost_because(holding_of(spec), self.holder, self.transitions)
            if current is None or why is not None:
                self._lose(why or "it is held by nobody (deleted or released)")
                return False
            with self._state:
                self._version = str(current["metadata"]["resourceVersion"])
            if not self.holds():
                return False  # the deadline passed while we waited for the answer
            updated = self.cluster.replace(
                LEASES,
                self.namespace,
                self.name,
                self._body(spec.get("acquireTime"), self.transitions, self.holder),
                fenced=False,
                timeout=self.request_timeout,
            )
            self._held_since(sent, updated)
            return True
        except ClusterError as exc:
            if exc.code == 409:  # written by someone else between our read and write
                return self.renew()
            # An API server that is briefly away is not yet a lost Lease: ``ensure`` decides
            # by the deadline, and the next renewal tries again soon.
            log.warning("could not renew Lease %s: %s", self.where, exc)
            self._last_error = str(exc)
            return True

    def _start_renewing(self) -> None:
        interval = self.duration / 3
        retry = max(0.5, min(2.0, self.duration / 15))

        def loop() -> None:
            pause = interval
            while not self._stop.wait(pause):
                before = self._valid_until
                if not self.renew():
                    log.error(
                        "Lease %s lost (%s): stopping at the next step",
                        self.where,
                        self._why_lost,
                    )
                    return
                pause = interval if self._valid_until > before else retry
                # Never sleep past the deadline: wake to declare the Lease lost on time.
                left = self._valid_until - self.clock()
                pause = max(0.05, min(pause, left)) if left > 0 else 0.05

        self._thread = threading.Thread(target=loop, name="lease-renewal", daemon=True)
        self._thread.start()

    def release(self) -> None:
        """Stop renewing and clear the holder (if it is still ours, and provably so), so the
        next run need not wait for the Lease to expire."""
        self._stop.set()
        if not self.holds():
            return  # not ours to release: whatever we write now could be another's Lease
        try:
            current = self.cluster.get(
                LEASES, self.namespace, self.name, timeout=self.request_timeout
            )
            if (
                current is None
                or lost_because(holding_of(current.get("spec")), self.holder, self.transitions)
                is not None
            ):
                return
            self._version = str(current["metadata"]["resourceVersion"])
            body = self._body(None, self.transitions, "")
            self.cluster.replace(
                LEASES, self.namespace, self.name, body, fenced=False, timeout=self.request_timeout
            )
        except ClusterError as exc:
            log.warning("could not release Lease %s (it expires by itself): %s", self.where, exc)
