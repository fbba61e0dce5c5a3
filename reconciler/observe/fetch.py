"""Observe the cluster: one LIST per kind (8 requests whatever the number of VMs), each parsed
in the thread that fetched it, assembled into one ``Snapshot``. The only I/O of observe, and
only through ``kube.client.Cluster``."""

from __future__ import annotations

import logging
from collections.abc import Iterable
from typing import Any

from reconciler.kube import resources as kube
from reconciler.kube.client import Cluster
from reconciler.model.errors import ClusterError
from reconciler.model.live import Snapshot
from reconciler.model.text import shown
from reconciler.observe.parse import RawObjects, assemble, parse_list

log = logging.getLogger(__name__)


def _parse(resource: kube.Resource, items: list[Any]) -> list[Any]:
    """``parse_list``; an object whose fields have shapes no API server would send (``spec``
    a string, ``volumes`` a number) is a ``ClusterError`` naming it, not a traceback."""
    try:
        return parse_list(resource.plural, items)
    except (AttributeError, TypeError, ValueError, KeyError) as exc:
        bad = _first_bad(resource.plural, items)
        raise ClusterError(
            f"{resource.plural} {bad}", f"an object of unexpected shape: {shown(exc)}"
        ) from exc


def _first_bad(plural: str, items: list[Any]) -> str:
    for item in items:
        try:
            parse_list(plural, [item])
        except (AttributeError, TypeError, ValueError, KeyError):
            meta = item.get("metadata") if isinstance(item, dict) else None
            if isinstance(meta, dict):
                return shown(f"{meta.get('namespace', '')}/{meta.get('name', '')}".lstrip("/"), 120)
            return "(unnamed)"
    return ""


def fetch(cluster: Cluster, namespaces: Iterable[str]) -> Snapshot:
    """LIST every kind the diff needs (8 requests whatever the number of VMs) and parse them.

    Namespaced kinds are listed in the plans' namespace when there is exactly one, else across
    all namespaces (one request, not one per namespace) and filtered here. StorageProfiles and
    the KubeVirt CR may be absent (CDI/KubeVirt not installed): they then read as empty. Each
    list is parsed in the thread that fetched it, while the others are still on the wire.
    """
    wanted = sorted(set(namespaces))
    scope = wanted[0] if len(wanted) == 1 else None
    log.debug("listing in %s", scope or "all namespaces")
    lists = cluster.list_many(
        [
            (kube.VIRTUAL_MACHINES, scope, False),
            (kube.VMIS, scope, False),
            (kube.PVCS, scope, False),
            (kube.DATA_VOLUMES, scope, True),
            (kube.STORAGE_CLASSES, None, False),
            (kube.STORAGE_PROFILES, None, True),
            (kube.KUBEVIRTS, None, True),
            (kube.MIGRATIONS, scope, False),
        ],
        then=_parse,
    )
    keep = set(wanted)

    def ours(items: list[Any]) -> list[Any]:
        if scope is not None or not keep:
            return items
        return [i for i in items if i.namespace in keep]

    vms, vmis, pvcs, dvs, scs, profiles, kubevirts, migrations = lists
    return assemble(
        RawObjects(
            vms=ours(vms),
            vmis=ours(vmis),
            pvcs=ours(pvcs),
            data_volumes=ours(dvs),
            storage_classes=scs,
            storage_profiles=profiles,
            kubevirts=kubevirts,
            migrations=ours(migrations),
        )
    )
