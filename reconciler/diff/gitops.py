"""GitOps owners of a VM: Argo CD and Flux, as far as its metadata tells, the exact rule each
needs so it does not revert (and so cancel) a move, and who reverted a VM's volumes. Pure.

The fixes are checked against the controllers' own APIs and, for Flux, against a real
kustomize-controller v1.9.6 (tests/env/test_flux.py, tests/cluster/test_flux_gitops.py):

- Flux Kustomization: ``spec.ignore`` (JSON pointers plus a ``target`` selector;
  kustomize-controller API v1.9.0 and later). For a drifted ignored path Flux keeps the
  in-cluster value, across syncs and new Git revisions. Older Flux has no field-level ignore:
  suspend the Kustomization, mark the live VM ``kustomize.toolkit.fluxcd.io/reconcile:
  disabled`` (honoured on the in-cluster object, even when set with kubectl), or put
  ``kustomize.toolkit.fluxcd.io/ssa: IfNotPresent`` on the VM **in Git**. ``IfNotPresent`` is
  read from the desired (Git) object only: added in Git to a VM that exists, Flux skips the
  VM but the annotation never reaches it; added live it has no effect, and with kubectl it is
  removed (Flux takes over the fields of every field manager whose name starts with
  ``kubectl``). So a live ``IfNotPresent`` counts as protection here only when Flux itself
  wrote it (the VM was created from Git with it).
- Argo CD: ``spec.ignoreDifferences`` plus the ``RespectIgnoreDifferences=true`` sync option
  (without it a sync still applies the Git values; it acts only on resources that exist).
- Flux HelmRelease: ``spec.driftDetection.ignore`` (same rule shape, helm-controller API v2).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from reconciler.model import names
from reconciler.model.live import VMInfo

# The VM fields a move rewrites; a GitOps tool must ignore them or it reverts (cancels) the move.
MOVED_FIELDS = (
    ".spec.template.spec.volumes",
    ".spec.dataVolumeTemplates",
    ".spec.updateVolumesStrategy",
    ".spec.runStrategy",
)
# The plan field that accepts a GitOps-managed VM (named as users write it in plan files).
GITOPS_OPT_IN = "allowGitOpsManaged: true"


@dataclass(frozen=True)
class GitOpsOwner:
    """A GitOps controller that reconciles the VM, as far as its metadata tells."""

    tool: str  # "Argo CD" | "Flux Kustomization" | "Flux HelmRelease"
    name: str  # the Application / Kustomization / HelmRelease ("" when unknown)
    fix: str  # the exact ignore rule to add


# Honoured by kustomize-controller on the in-cluster object too (its ExclusionSelector).
_FLUX_SKIP = ((names.FLUX_SSA_ANNOTATION, "Ignore"), (names.FLUX_RECONCILE_ANNOTATION, "disabled"))


def _target(vm: VMInfo) -> str:
    return f"group: kubevirt.io, kind: VirtualMachine, name: {vm.name}, namespace: {vm.namespace}"


def pointers() -> tuple[str, ...]:
    """``MOVED_FIELDS`` as JSON pointers (RFC 6901), as Flux's ``spec.ignore`` wants them."""
    return tuple(path.replace(".", "/") for path in MOVED_FIELDS)


def flux_ignore_rule(vm: VMInfo) -> dict[str, Any]:
    """The ``spec.ignore`` entry of a Flux Kustomization that keeps it off ``vm``'s moved
    fields (the same shape serves a HelmRelease's ``spec.driftDetection.ignore``)."""
    return {
        "paths": list(pointers()),
        "target": {
            "group": "kubevirt.io",
            "kind": "VirtualMachine",
            "name": vm.name,
            "namespace": vm.namespace,
        },
    }


def _flux_rule_text(vm: VMInfo) -> str:
    return f"[{{paths: [{', '.join(pointers())}], target: {{{_target(vm)}}}}}]"


def gitops_owners(vm: VMInfo) -> tuple[GitOpsOwner, ...]:
    """Argo CD and Flux owners of ``vm`` that would revert (and so cancel) a move.

    Argo CD: the ``argocd.argoproj.io/tracking-id`` annotation, or the
    ``app.kubernetes.io/instance`` label together with any ``argocd.argoproj.io/`` key (the
    label alone is also set by Helm and others). Flux: the ``kustomize.toolkit.fluxcd.io/name``
    or ``helm.toolkit.fluxcd.io/name`` label. A Kustomization-applied VM is not an owner here
    when Flux skips it: annotated ``kustomize.toolkit.fluxcd.io/ssa: Ignore`` or
    ``.../reconcile: disabled`` (by anyone), or ``.../ssa: IfNotPresent`` written by Flux
    itself (so it is in Git).
    """
    labels, annotations = vm.labels, vm.annotations
    owners = []
    tracking = annotations.get(names.ARGO_TRACKING_ANNOTATION)
    argo_keys = any(k.startswith(names.ARGO_PREFIX) for k in (*labels, *annotations))
    instance = labels.get(names.INSTANCE_LABEL)
    if tracking or (instance and argo_keys):
        app = tracking.split(":", 1)[0] if tracking else instance or ""
        fix = (
            f"in Application {app or '<app>'} add spec.ignoreDifferences: [{{{_target(vm)}, "
            f"jqPathExpressions: [{', '.join(MOVED_FIELDS)}]}}] and "
            "spec.syncPolicy.syncOptions: [RespectIgnoreDifferences=true] (without it a sync "
            "still applies the Git values)"
        )
        owners.append(GitOpsOwner("Argo CD", app, fix))
    kustomization = labels.get(names.FLUX_KUSTOMIZATION_NAME_LABEL)
    if kustomization and not flux_skips(vm):
        where = f"{labels.get(names.FLUX_KUSTOMIZATION_NAMESPACE_LABEL, '')}/{kustomization}"
        fix = (
            f"in Kustomization {where.lstrip('/')} add spec.ignore: {_flux_rule_text(vm)} "
            "(kustomize-controller v1.9.0 and later). Flux before v1.9 has no field-level "
            "ignore: suspend the Kustomization for the move, or annotate the VM "
            f"{names.FLUX_RECONCILE_ANNOTATION}: disabled, or set "
            f"{names.FLUX_SSA_ANNOTATION}: IfNotPresent on the VM in Git (Flux then skips the "
            "existing VM but the annotation never reaches it, so this check cannot see it; "
            "set live, Flux ignores it, and with kubectl removes it: it takes over the fields "
            "of every field manager whose name starts with kubectl)"
        )
        owners.append(GitOpsOwner("Flux Kustomization", kustomization, fix))
    release = labels.get(names.FLUX_HELM_NAME_LABEL)
    if release:
        where = f"{labels.get(names.FLUX_HELM_NAMESPACE_LABEL, '')}/{release}"
        fix = (
            f"in HelmRelease {where.lstrip('/')} add spec.driftDetection.ignore: "
            f"{_flux_rule_text(vm)} (it matters when spec.driftDetection.mode is enabled) and "
            "change the chart's volumes before its next upgrade"
        )
        owners.append(GitOpsOwner("Flux HelmRelease", release, fix))
    return tuple(owners)


def flux_skips(vm: VMInfo) -> bool:
    """Whether kustomize-controller leaves ``vm`` alone (v1.9.6 semantics, see the module)."""
    annotations = vm.annotations
    if any(annotations.get(key) == value for key, value in _FLUX_SKIP):
        return True
    if annotations.get(names.FLUX_SSA_ANNOTATION) != "IfNotPresent":
        return False
    path = ("f:metadata", "f:annotations", f"f:{names.FLUX_SSA_ANNOTATION}")
    return names.FLUX_KUSTOMIZE_MANAGER in field_owners(vm.raw, path)


def field_owners(obj: Mapping[str, Any], path: Iterable[str]) -> tuple[str, ...]:
    """Field managers whose ``managedFields`` entry (``fieldsV1``) covers ``path`` (keys such as
    ``("f:spec", "f:template")``) or anything below it; in the order the server lists them."""
    wanted = tuple(path)
    owners = []
    for entry in (obj.get("metadata") or {}).get("managedFields") or ():
        if not isinstance(entry, Mapping) or entry.get("subresource"):
            continue
        node: Any = entry.get("fieldsV1") or {}
        for key in wanted:
            node = node.get(key) if isinstance(node, Mapping) else None
        if node is not None:
            owners.append(str(entry.get("manager", "")))
    return tuple(owners)


_VOLUMES = ("f:spec", "f:template", "f:spec", "f:volumes")


def volumes_writer(vm: Mapping[str, Any]) -> str:
    """Who last wrote the VM's ``spec.template.spec.volumes``, in words: "Flux Kustomization
    NS/NAME", "Flux HelmRelease NS/NAME", "Argo CD Application APP", "field manager M", or ""
    when only we (or nobody known) own them. The list is atomic in KubeVirt's schema, so its
    owner is whoever wrote it last."""
    owners = [m for m in field_owners(vm, _VOLUMES) if m != names.FIELD_MANAGER]
    if not owners:
        return ""
    manager = owners[-1]
    meta = vm.get("metadata") or {}
    labels: Mapping[str, str] = meta.get("labels") or {}
    annotations: Mapping[str, str] = meta.get("annotations") or {}

    def where(name_label: str, namespace_label: str) -> str:
        return f"{labels.get(namespace_label, '')}/{labels.get(name_label, '')}".lstrip("/")

    if manager == names.FLUX_KUSTOMIZE_MANAGER and names.FLUX_KUSTOMIZATION_NAME_LABEL in labels:
        kustomization = where(
            names.FLUX_KUSTOMIZATION_NAME_LABEL, names.FLUX_KUSTOMIZATION_NAMESPACE_LABEL
        )
        return f"Flux Kustomization {kustomization}"
    if manager == names.FLUX_HELM_MANAGER and names.FLUX_HELM_NAME_LABEL in labels:
        return (
            f"Flux HelmRelease {where(names.FLUX_HELM_NAME_LABEL, names.FLUX_HELM_NAMESPACE_LABEL)}"
        )
    if manager.startswith(names.ARGO_MANAGER_PREFIX):
        tracking = annotations.get(names.ARGO_TRACKING_ANNOTATION, "")
        app = tracking.split(":", 1)[0] or labels.get(names.INSTANCE_LABEL, "")
        return f"Argo CD Application {app}".rstrip()
    return f"field manager {manager}"
