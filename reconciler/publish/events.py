"""Kubernetes Events on each VM (``events.k8s.io/v1``), where ``kubectl describe vm`` and
``kubectl events`` show what the reconciler did to it.

Every Event names the VM (``regarding``, with its uid: ``kubectl describe`` matches on it),
``reportingController: vm-storage-reconciler``, ``reportingInstance`` = the run's holder
(the Lease identity: pod name and pid), a CamelCase ``reason`` (``MoveStarted``,
``MoveSucceeded``, ``MoveRolledBack``, ``MoveBlocked``, ...; docs/cluster.md), an ``action``
(``Move``, ``Rollback``, ``Judge``, ``WriteBack``) and a ``note`` of at most 1024 bytes that
ends in the rule id when there is one. Labels carry the same as data, so consumers select
instead of parsing notes: ``vmstorage.dev/rule``, ``vmstorage.dev/migration`` (the move's id),
``vmstorage.dev/run`` (the run's id); the plans' commit is the annotation
``vmstorage.dev/commit``.

A blocked VM is reported by every run until it is unblocked; those Events are deduplicated the
way client-go's recorder does: the same VM, reason and note is one Event whose
``series.count`` grows (a name derived from the note, a 409 on create turns into an update),
instead of a new object every 15 minutes. Counting needs ``get`` and ``update`` on Events;
with ``create`` only, the repeat is dropped (the Event stands until the API server expires it,
an hour by default, and the next run creates it again).
"""

from __future__ import annotations

import hashlib
import logging
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from reconciler.kube.client import Cluster
from reconciler.kube.resources import EVENTS, VIRTUAL_MACHINES
from reconciler.model.errors import ClusterError
from reconciler.model.names import (
    COMMIT_ANNOTATION,
    FIELD_MANAGER,
    MIGRATION_LABEL,
    RULE_LABEL,
    RULES_ANNOTATION,
    RUN_LABEL,
)
from reconciler.model.text import clean
from reconciler.report.writeback import cut

log = logging.getLogger(__name__)

REPORTING_CONTROLLER = FIELD_MANAGER
NOTE_LIMIT = 1024  # bytes (the API server refuses more)

NORMAL = "Normal"
WARNING = "Warning"


@dataclass(frozen=True)
class Notice:
    """What one Event says. ``rule``: the rule id behind it (a blocking rule, the cause of a
    rollback). ``dedupe``: repeats of the same VM, reason and note count up one Event's
    series instead of creating new ones."""

    reason: str
    note: str
    type: str = NORMAL
    action: str = "Move"
    rule: str = ""
    rules: tuple[str, ...] = ()
    migration_id: str = ""
    commit: str | None = None
    dedupe: bool = False


def micro_time(moment: datetime) -> str:
    """A Kubernetes MicroTime: ``2026-01-31T12:00:00.123456Z``."""
    return moment.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def event_name(vm: str, notice: Notice, nanos: int) -> str:
    """Unique per emission (``<vm>.<hex nanoseconds>``, as client-go names them), or, for a
    deduplicated notice, stable per (VM, reason, rule, note)."""
    if notice.dedupe:
        digest = hashlib.sha256(f"{notice.reason}\0{notice.rule}\0{notice.note}".encode())
        return f"{vm}.{notice.reason.lower()}-{digest.hexdigest()[:10]}"
    return f"{vm}.{nanos:x}"


def event_body(
    notice: Notice,
    *,
    namespace: str,
    vm: str,
    uid: str | None,
    holder: str,
    run_id: str,
    now: datetime,
    name: str,
) -> dict[str, Any]:
    """The ``events.k8s.io/v1`` Event for ``notice`` about VM ``namespace/vm``. Pure."""
    labels = {RUN_LABEL: run_id} if run_id else {}
    if notice.rule:
        labels[RULE_LABEL] = notice.rule
    if notice.migration_id:
        labels[MIGRATION_LABEL] = notice.migration_id
    annotations = {COMMIT_ANNOTATION: notice.commit} if notice.commit else {}
    if notice.rules:
        annotations[RULES_ANNOTATION] = ",".join(notice.rules)
    regarding: dict[str, str] = {
        "apiVersion": VIRTUAL_MACHINES.api_version,
        "kind": VIRTUAL_MACHINES.kind,
        "namespace": namespace,
        "name": vm,
    }
    if uid:
        regarding["uid"] = uid
    meta: dict[str, Any] = {"name": name, "namespace": namespace, "labels": labels}
    if annotations:
        meta["annotations"] = annotations
    return {
        "apiVersion": EVENTS.api_version,
        "kind": EVENTS.kind,
        "metadata": meta,
        "eventTime": micro_time(now),
        "reportingController": REPORTING_CONTROLLER,
        "reportingInstance": cut(holder, 128),
        "action": notice.action,
        "reason": notice.reason,
        "type": notice.type,
        "note": cut(clean(notice.note, NOTE_LIMIT), NOTE_LIMIT),
        "regarding": regarding,
    }


class Events:
    """Sends Events for one run. Never raises: a failure is logged (the first refusal in a
    namespace also said on ``warn``) and, when the API refuses Events in a namespace outright
    (403: RBAC is granted per namespace; 404: no such namespace, say a plan's typo), Events
    are off in that namespace for the rest of the run, and still sent everywhere else."""

    def __init__(
        self,
        cluster: Cluster,
        *,
        holder: str,
        run_id: str,
        now: Callable[[], datetime] = lambda: datetime.now(UTC),
        warn: Callable[[str], None] = lambda _message: None,
    ) -> None:
        self.cluster = cluster
        self.holder = holder
        self.run_id = run_id
        self.now = now
        self.warn = warn
        self.sent = 0
        self.off: set[str] = set()  # namespaces where Events were refused outright
        self._uids: dict[tuple[str, str], str | None] = {}

    def uid(self, namespace: str, vm: str) -> str | None:
        """The VM's uid (one GET per VM and run; None when the VM is gone)."""
        key = (namespace, vm)
        if key not in self._uids:
            obj = self.cluster.get(VIRTUAL_MACHINES, namespace, vm)
            self._uids[key] = str((obj or {}).get("metadata", {}).get("uid") or "") or None
        return self._uids[key]

    def emit(self, namespace: str, vm: str, notice: Notice) -> None:
        if namespace in self.off:
            return
        try:
            self._emit(namespace, vm, notice)
        except ClusterError as exc:
            log.warning("Event %s on %s/%s not sent: %s", notice.reason, namespace, vm, exc)
            if exc.code in (403, 404):
                self.off.add(namespace)
                self.warn(f"warning: Events are off in namespace {namespace} for this run: {exc}")
        except Exception as exc:  # e.g. the run lost its Lease: no write is allowed any more
            log.warning("Event %s on %s/%s not sent: %s", notice.reason, namespace, vm, exc)

    def _emit(self, namespace: str, vm: str, notice: Notice) -> None:
        now = self.now()
        name = event_name(vm, notice, time.time_ns())
        body = event_body(
            notice,
            namespace=namespace,
            vm=vm,
            uid=self.uid(namespace, vm),
            holder=self.holder,
            run_id=self.run_id,
            now=now,
            name=name,
        )
        try:
            self.cluster.create(EVENTS, namespace, body)
        except ClusterError as exc:
            if exc.code != 409 or not notice.dedupe:
                raise
            try:
                self._repeat(namespace, name, now)
            except ClusterError as again:
                if again.code != 403:
                    raise
                # Allowed to create Events but not to count repeats: the Event stands.
                log.debug("Event %s/%s not counted again: %s", namespace, name, again)
        self.sent += 1

    def _repeat(self, namespace: str, name: str, now: datetime) -> None:
        """The same notice again: count it in the existing Event's series."""
        existing = self.cluster.get(EVENTS, namespace, name)
        if existing is None:  # expired between our create and our read
            raise ClusterError(f"Event/{namespace}/{name}", "vanished while being counted")
        series: Mapping[str, Any] = existing.get("series") or {}
        existing["series"] = {
            "count": int(series.get("count") or 1) + 1,
            "lastObservedTime": micro_time(now),
        }
        self.cluster.replace(EVENTS, namespace, name, existing)
