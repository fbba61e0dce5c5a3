"""What ``apply --parallel`` reads from the cluster to schedule its lanes (``apply.slots``
decides): KubeVirt's migration limits, the migrations the cluster runs, and the node a VMI
runs on. Reads only; each is small (the KubeVirt CR, the unfinished migrations and their
VMIs), so a decision costs a few requests however large the fleet is."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

from reconciler.apply.slots import Migrating, MigrationLimits
from reconciler.kube.client import Cluster
from reconciler.kube.resources import KUBEVIRTS, MIGRATIONS, VMIS
from reconciler.model.errors import ClusterError

FINISHED = frozenset({"Succeeded", "Failed"})
"""Migration phases virt-controller no longer counts against its limits."""


def _field(obj: object, *keys: str) -> str:
    for key in keys:
        obj = obj.get(key) if isinstance(obj, Mapping) else None
    return obj if isinstance(obj, str) else ""


def kubevirt_limits(cluster: Cluster) -> MigrationLimits:
    """The limits of the cluster's KubeVirt CR (KubeVirt's defaults when there is none or it
    cannot be read: the conservative reading is not available, so the upstream default is)."""
    try:
        crs = cluster.list_objects(KUBEVIRTS, None, missing_ok=True)
    except ClusterError:
        return MigrationLimits()
    return MigrationLimits.of_kubevirt(crs[0] if crs else None)


def source_node(vmi: Mapping[str, Any] | None) -> str:
    """The node a migration of ``vmi`` leaves, as virt-controller counts it
    (``outboundMigrationsOnNode``: the migration state's source node, else the VMI's node)."""
    if vmi is None:
        return ""
    return _field(vmi, "status", "migrationState", "sourceNode") or _field(
        vmi, "status", "nodeName"
    )


def unfinished_migrations(
    cluster: Cluster, namespaces: Iterable[str]
) -> tuple[list[Migrating], bool]:
    """Every migration not yet Succeeded or Failed, with the node it leaves; and whether the
    whole cluster was seen (a LIST across namespaces) or only ``namespaces`` (RBAC refused the
    wider one: migrations elsewhere then go uncounted, and KubeVirt may queue ours behind them)."""
    try:
        found = cluster.list_objects(MIGRATIONS, None, missing_ok=True)
        whole = True
    except ClusterError as exc:
        if exc.code not in (401, 403):
            raise
        found = [m for n in sorted(set(namespaces)) for m in cluster.list_objects(MIGRATIONS, n)]
        whole = False
    migrating: list[Migrating] = []
    for migration in found:
        if _field(migration, "status", "phase") in FINISHED:
            continue
        namespace = _field(migration, "metadata", "namespace")
        vmi_name = _field(migration, "spec", "vmiName")
        vmi = cluster.get(VMIS, namespace, vmi_name) if vmi_name else None
        migrating.append(Migrating(namespace, vmi_name, source_node(vmi)))
    return migrating, whole
