"""Observe the cluster: one list per kind (8 lists), each page of ``Cluster.page_size`` objects
parsed into the slim model in the thread that fetched it and then dropped, assembled into one
``Snapshot``. The kinds that grow with the fleet (VMs, VMIs, PVCs, DataVolumes, migrations) are
streamed by watch-list, one request each, served from the API server's watch cache whatever the
kind's age (``kube.client``: continue pages of a kind not written for minutes come from etcd, 4-5x
slower for custom resources); the cluster-scoped ones (StorageClasses, StorageProfiles, the
KubeVirt CR: a few objects, a single page, and ``list`` is all RBAC grants on two of them) by
paginated LIST. The only I/O of observe, and only through ``kube.client.Cluster``."""

from __future__ import annotations

import logging
from collections.abc import Collection, Iterable
from typing import Any

from reconciler.kube import resources as kube
from reconciler.kube.client import Cluster
from reconciler.model.errors import ClusterError
from reconciler.model.live import Snapshot
from reconciler.model.text import shown
from reconciler.observe.parse import RawObjects, assemble, parse_list, parse_page

log = logging.getLogger(__name__)


def _parse(
    resource: kube.Resource, items: list[Any], namespaces: Collection[str] | None = None
) -> list[Any]:
    """``parse_page``; an object whose fields have shapes no API server would send (``spec``
    a string, ``volumes`` a number) is a ``ClusterError`` naming it, not a traceback."""
    try:
        return parse_page(resource.plural, items, namespaces)
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


_KINDS: tuple[tuple[kube.Resource, bool], ...] = (
    (kube.VIRTUAL_MACHINES, False),
    (kube.VMIS, False),
    (kube.PVCS, False),
    (kube.DATA_VOLUMES, True),
    (kube.STORAGE_CLASSES, False),
    (kube.STORAGE_PROFILES, True),
    (kube.KUBEVIRTS, True),
    (kube.MIGRATIONS, False),
)
"""What the diff needs, in ``assemble`` order: (kind, missing_ok). The KubeVirt CR is namespaced
but looked for in every namespace (it lives wherever KubeVirt was installed)."""

_STREAMED = frozenset(
    (kube.VIRTUAL_MACHINES, kube.VMIS, kube.PVCS, kube.DATA_VOLUMES, kube.MIGRATIONS)
)
"""The kinds read by watch-list (deploy/base/rbac.yaml grants ``watch`` on each, for apply's
waits); any other is read paginated."""


def _listed_per_namespace(resource: kube.Resource) -> bool:
    return resource.namespaced and resource is not kube.KUBEVIRTS


def _lists(
    cluster: Cluster, scopes: list[str | None], keep: Collection[str] | None
) -> list[list[Any]]:
    """One list per kind of ``_KINDS``: namespaced kinds (but the KubeVirt CR) gathered over
    ``scopes`` (``[None]``: across the cluster, one list each), the others listed once. Each
    page is parsed as it arrives, keeping of the namespaced kinds only the objects in ``keep``
    (None: all)."""
    requests: list[tuple[kube.Resource, str | None, bool]] = []
    for resource, missing_ok in _KINDS:
        wanted = scopes if _listed_per_namespace(resource) else [None]
        requests.extend((resource, scope, missing_ok) for scope in wanted)

    def parse(resource: kube.Resource, page: list[Any]) -> list[Any]:
        return _parse(resource, page, keep if _listed_per_namespace(resource) else None)

    results = iter(cluster.list_many(requests, parse, streamed=_STREAMED))
    lists: list[list[Any]] = []
    for resource, _missing_ok in _KINDS:
        gathered: list[Any] = []
        for _scope in scopes if _listed_per_namespace(resource) else [None]:
            gathered.extend(next(results))
        lists.append(gathered)
    return lists


def fetch(cluster: Cluster, namespaces: Iterable[str]) -> Snapshot:
    """List every kind the diff needs (8 lists: a watch-list or a request per page) and parse
    them.

    Namespaced kinds are listed in the plans' namespace when there is exactly one, else across
    all namespaces (one list, not one per namespace) and the other namespaces' objects dropped
    page by page, unparsed; when RBAC refuses a cluster-wide LIST (403: the role is bound per
    namespace), once per namespace instead. StorageProfiles and the KubeVirt CR may be absent
    (CDI/KubeVirt not installed): they then read as empty. Each page is parsed in the thread
    that fetched it, while the other lists are still on the wire, and dropped: what stays is
    the slim model (``observe.parse``), whatever the cluster's size.
    """
    wanted = sorted(set(namespaces))
    scope = wanted[0] if len(wanted) == 1 else None
    keep = frozenset(wanted) if scope is None and wanted else None
    log.debug("listing in %s", scope or "all namespaces")
    try:
        lists = _lists(cluster, [scope], keep)
    except ClusterError as exc:
        if scope is not None or len(wanted) < 2 or exc.code != 403:
            raise
        # RBAC granted per namespace (cronjob.yaml: a RoleBinding in each allowed namespace),
        # not across the cluster: one LIST per kind and namespace instead.
        log.debug("cluster-wide LIST refused (%s): listing per namespace", exc)
        lists = _lists(cluster, list(wanted), None)

    vms, vmis, pvcs, dvs, scs, profiles, kubevirts, migrations = lists
    return assemble(
        RawObjects(
            vms=vms,
            vmis=vmis,
            pvcs=pvcs,
            data_volumes=dvs,
            storage_classes=scs,
            storage_profiles=profiles,
            kubevirts=kubevirts,
            migrations=migrations,
        )
    )
