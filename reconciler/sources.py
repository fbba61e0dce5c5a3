"""`sources` and `prune`: the source disks moves kept, listed and (when nothing uses them any
more) deleted. The layer of ``engine``: it composes kube, apply's Lease and checks, and the
pure ``model.kept``.

``list_kept`` reads the DataVolumes and PVCs of the namespaces (one LIST each; ``None``: the
whole cluster), finds every kept source (``model.kept.candidates``: marked by the move that
kept it, or recorded by one of our destinations), and asks who refers to each now: the VMs
(volumes, dataVolumeTemplates), VMIs and running pods of its namespace (``apply``'s
``users_of``, three LISTs per namespace holding kept sources) and DataVolumes still cloning
from it.

``prune`` deletes the kept sources that are recorded by us, nothing refers to, and were kept
longer ago than ``older_than`` (``dry_run``: says which, changes nothing). It holds the Lease
`apply` holds, with every write fenced by it (``Cluster.write_guard``), so it never races a
move. Each source is read again right before its delete (same object, still kept by the same
move, still corroborated, still unused); then prune's journal is written on it
(``vmstorage.dev/pruning``), then it is deleted (a DataVolume as the DataVolume, which owns its
PVC). A prune killed in between leaves the journal: the next prune finishes that delete first,
whatever its age, after the same checks, or removes the journal when the source is in use by
then.
"""

from __future__ import annotations

import logging
import os
import signal
import threading
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime

from reconciler.apply.claims import held_by_completed_pods, users_of
from reconciler.apply.lease import DEFAULT_DURATION, Lease
from reconciler.kube.client import Cluster
from reconciler.kube.connect import load_client
from reconciler.kube.kubeconfig import context_namespace
from reconciler.kube.resources import DATA_VOLUMES, PVCS, Resource
from reconciler.model import kept as kepts
from reconciler.model.errors import ClusterError, Problem, UserError
from reconciler.model.kept import KeptSource, PruneMark

log = logging.getLogger(__name__)
Progress = Callable[[str], None]
FAILPOINT = "prune/before:delete"
"""``$VMSR_FAILPOINT`` value (``apply.failpoint``'s variable) that SIGKILLs `prune` after its
journal is written and before the delete: the crash test's boundary. Test-only."""


def _quiet(message: str) -> None:
    """The default ``Progress``: say nothing."""


def namespaces_for(
    namespaces: Sequence[str], all_namespaces: bool, kubeconfig: str | None, context: str | None
) -> list[str] | None:
    """kubectl get's rule: ``-n`` (repeatable), else -A (None: every namespace), else the
    kubeconfig context's namespace (``default`` when it names none)."""
    if all_namespaces:
        return None
    if namespaces:
        return sorted(set(namespaces))
    return [context_namespace(kubeconfig, context) or "default"]


def list_kept(cluster: Cluster, namespaces: Sequence[str] | None) -> list[KeptSource]:
    """Every kept source in ``namespaces`` (None: all), in (namespace, name) order."""
    scopes: Sequence[str | None] = [None] if namespaces is None else namespaces
    dvs, pvcs = [], []
    for namespace in scopes:
        dvs += cluster.list_objects(DATA_VOLUMES, namespace, missing_ok=True)
        pvcs += cluster.list_objects(PVCS, namespace)
    found = kepts.candidates(dvs, pvcs)
    users: dict[tuple[str, str], str] = {}
    held: dict[tuple[str, str], str] = {}
    deleting = {
        (str(p["metadata"].get("namespace")), str(p["metadata"].get("name")))
        for p in pvcs
        if (p.get("metadata") or {}).get("deletionTimestamp")
    }
    for namespace in sorted({ns for ns, _, _ in found}):
        claims = {name for ns, name, _ in found if ns == namespace}
        for claim, who in users_of(cluster, namespace, claims).items():
            users[(namespace, claim)] = who
        doomed = {claim for claim in claims if (namespace, claim) in deleting}
        if doomed:
            for claim, pods in held_by_completed_pods(cluster, namespace, doomed).items():
                held[(namespace, claim)] = pods
    return kepts.kept_sources(dvs, pvcs, users, held)


def sources(
    *,
    namespaces: Sequence[str] = (),
    all_namespaces: bool = False,
    kubeconfig: str | None = None,
    context: str | None = None,
) -> list[KeptSource]:
    """`sources`: the kept sources of the namespaces kubectl get would show."""
    where = namespaces_for(namespaces, all_namespaces, kubeconfig, context)
    return list_kept(Cluster(load_client(kubeconfig, context)), where)


@dataclass
class PruneReport:
    """What one `prune` did (``dry_run``: would do). ``left``: kept sources it leaves, with
    why (in use, not recorded by us, too young)."""

    dry_run: bool
    older_than: float
    deleted: list[KeptSource] = field(default_factory=list)
    resumed: list[KeptSource] = field(default_factory=list)
    left: list[tuple[KeptSource, str]] = field(default_factory=list)
    run_id: str = ""


def prune(
    *,
    older_than: float,
    dry_run: bool = False,
    namespaces: Sequence[str] = (),
    all_namespaces: bool = False,
    allowed_namespaces: frozenset[str] | None = None,
    kubeconfig: str | None = None,
    context: str | None = None,
    lease_namespace: str = "vm-storage-reconciler",
    lease_duration: int = DEFAULT_DURATION,
    holder: str = "vm-storage-reconciler-prune",
    progress: Progress = _quiet,
    stop: threading.Event | None = None,
    now: Callable[[], datetime] = lambda: datetime.now(UTC),
) -> PruneReport:
    """Delete (``dry_run``: list) the kept sources recorded by us that nothing refers to and
    that were kept more than ``older_than`` seconds ago, in the namespaces kubectl get would
    show (only ``allowed_namespaces``, when set). Raises ``LockHeld`` (another run holds the
    Lease: nothing deleted), ``LeaseLost``, ``ClusterError`` and ``UserError``. ``stop``
    (SIGTERM) ends it between two sources."""
    where = namespaces_for(namespaces, all_namespaces, kubeconfig, context)
    if where is not None and allowed_namespaces is not None:
        refused = sorted(set(where) - allowed_namespaces)
        if refused:
            raise UserError(
                [
                    Problem(
                        None,
                        f"namespace {', '.join(refused)} is not in the allow-list",
                        "prune only the allowed namespaces: "
                        + ", ".join(sorted(allowed_namespaces)),
                    )
                ]
            )
    cluster = Cluster(load_client(kubeconfig, context))
    report = PruneReport(dry_run=dry_run, older_than=older_than, run_id=uuid.uuid4().hex[:12])
    if dry_run:
        _decide(report, _allowed(list_kept(cluster, where), allowed_namespaces), now())
        return report
    cluster.identify(holder)
    stop = stop or threading.Event()
    lease = Lease(cluster, lease_namespace, holder, lost=stop, now=now, duration=lease_duration)
    cluster.write_guard = lease.ensure
    try:
        lease.acquire()
    except ClusterError as exc:
        if exc.code == 404 and "namespaces" in str(exc):  # as engine.apply says it
            raise UserError(
                [
                    Problem(
                        None,
                        f"the Lease's namespace {lease_namespace!r} does not exist ({exc})",
                        "create it, or point --lease-namespace at the namespace apply uses",
                    )
                ]
            ) from exc
        raise
    try:
        found = _allowed(list_kept(cluster, where), allowed_namespaces)
        chosen = _decide(report, found, now())
        for source, why in report.left:
            if source.pruning is not None:  # an interrupted prune's, on a source it must leave
                progress(f"left {source.kind} {source.namespace}/{source.name}: {why}")
                _roll_back(cluster, source)
        for source, resuming in chosen:
            if stop.is_set():
                break
            lease.ensure()
            _prune_one(
                cluster,
                report,
                source,
                resuming=resuming,
                holder=holder,
                progress=progress,
                now=now,
            )
        lease.ensure()
        return report
    finally:
        lease.release()


def _allowed(found: list[KeptSource], allowed: frozenset[str] | None) -> list[KeptSource]:
    return [s for s in found if allowed is None or s.namespace in allowed]


def _decide(
    report: PruneReport, found: list[KeptSource], now: datetime
) -> list[tuple[KeptSource, bool]]:
    """Which kept sources to delete (with whether a prune was interrupted on it), in
    (namespace, name) order; the others go to ``report.left`` with why. With ``dry_run``,
    those to delete go to ``report.deleted`` (what would be deleted)."""
    chosen: list[tuple[KeptSource, bool]] = []
    for source in found:
        why = source.refused
        age = source.age(now)
        if not why and source.pruning is None:
            if age is None:
                why = "kept at an unknown time"
            elif age < report.older_than:
                why = (
                    f"kept {kepts.age_text(age)} ago, not older than "
                    f"{kepts.age_text(report.older_than)}"
                )
        if why:
            report.left.append((source, why))
            continue
        chosen.append((source, source.pruning is not None))
        if report.dry_run:
            (report.resumed if source.pruning else report.deleted).append(source)
    return chosen


def _prune_one(
    cluster: Cluster,
    report: PruneReport,
    source: KeptSource,
    *,
    resuming: bool,
    holder: str,
    progress: Progress,
    now: Callable[[], datetime],
) -> None:
    """Re-check ``source`` right before its delete, journal it, delete it."""
    resource = DATA_VOLUMES if source.kind == kepts.DATA_VOLUME else PVCS
    name = f"{source.kind} {source.namespace}/{source.name}"
    if resuming and source.pruning is not None:
        progress(
            f"resuming prune {source.pruning.id} (by {source.pruning.by or '?'}, "
            f"{source.pruning.at}): {name}"
        )
    obj = cluster.get(resource, source.namespace, source.name)
    fresh = _fresh(cluster, source)
    why = _changed(obj, source, fresh)
    if why:
        if obj is not None and fresh is not None and fresh.pruning is not None:
            _roll_back(cluster, fresh)
        report.left.append((source, why))
        progress(f"left {name}: {why}")
        return
    assert obj is not None
    mark = PruneMark(id=report.run_id, at=now().isoformat(timespec="seconds"), by=holder)
    _write(cluster, resource, source, kepts.prune_ops(obj, mark))
    if os.environ.get("VMSR_FAILPOINT") == FAILPOINT:
        os.kill(os.getpid(), signal.SIGKILL)
    cluster.delete(resource, source.namespace, source.name)
    (report.resumed if resuming else report.deleted).append(source)
    progress(
        f"deleted {name} (kept by move {source.move or '?'} of VM {source.vm or '?'}, "
        f"{kepts.age_text(source.age(now()))} ago)"
    )


def _fresh(cluster: Cluster, source: KeptSource) -> KeptSource | None:
    """``source`` as its namespace shows it now (None: it is no kept source any more)."""
    for found in list_kept(cluster, [source.namespace]):
        if (found.kind, found.name) == (source.kind, source.name):
            return found
    return None


def _changed(obj: dict[str, object] | None, source: KeptSource, fresh: KeptSource | None) -> str:
    """Why ``source`` may not be deleted after all ("" when it may)."""
    if obj is None or fresh is None:
        return "gone meanwhile"
    if fresh.uid != source.uid:
        return "replaced meanwhile by another object of its name"
    if fresh.move != source.move:
        return f"now kept by another move ({fresh.move}); run prune again"
    return fresh.refused


def _roll_back(cluster: Cluster, source: KeptSource) -> None:
    """Remove an interrupted prune's journal from a source it must leave after all."""
    resource = DATA_VOLUMES if source.kind == kepts.DATA_VOLUME else PVCS
    obj = cluster.get(resource, source.namespace, source.name)
    if obj is not None and str((obj.get("metadata") or {}).get("uid")) == source.uid:
        _write(cluster, resource, source, kepts.prune_ops(obj, None))


def _write(
    cluster: Cluster, resource: Resource, source: KeptSource, ops: list[dict[str, object]]
) -> None:
    if ops:
        cluster.json_patch(resource, source.namespace, source.name, ops)
