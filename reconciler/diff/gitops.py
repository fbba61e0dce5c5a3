"""GitOps owners of a VM: Argo CD and Flux, as far as its metadata tells, and the exact ignore
rule each needs so it does not revert (and so cancel) a move. Pure."""

from __future__ import annotations

from dataclasses import dataclass

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


_FLUX_SAFE_SSA = frozenset({"IfNotPresent", "Ignore"})


def _target(vm: VMInfo) -> str:
    return f"group: kubevirt.io, kind: VirtualMachine, name: {vm.name}, namespace: {vm.namespace}"


def _pointers() -> str:
    return ", ".join(path.replace(".", "/") for path in MOVED_FIELDS)


def gitops_owners(vm: VMInfo) -> tuple[GitOpsOwner, ...]:
    """Argo CD and Flux owners of ``vm`` that would revert (and so cancel) a move.

    Argo CD: the ``argocd.argoproj.io/tracking-id`` annotation, or the
    ``app.kubernetes.io/instance`` label together with any ``argocd.argoproj.io/`` key (the
    label alone is also set by Helm and others). Flux: the ``kustomize.toolkit.fluxcd.io/name``
    or ``helm.toolkit.fluxcd.io/name`` label; a Kustomization-applied VM annotated
    ``kustomize.toolkit.fluxcd.io/ssa: IfNotPresent|Ignore`` or ``.../reconcile: disabled`` is
    not overwritten by Flux, so it is not an owner here.
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
    flux_safe = (
        annotations.get(names.FLUX_SSA_ANNOTATION) in _FLUX_SAFE_SSA
        or annotations.get(names.FLUX_RECONCILE_ANNOTATION) == "disabled"
    )
    if kustomization and not flux_safe:
        where = f"{labels.get(names.FLUX_KUSTOMIZATION_NAMESPACE_LABEL, '')}/{kustomization}"
        fix = (
            f"in Kustomization {where.lstrip('/')} add spec.driftIgnoreRules: [{{paths: "
            f"[{_pointers()}], target: {{{_target(vm)}}}}}], or annotate the VM in Git with "
            "kustomize.toolkit.fluxcd.io/ssa: IfNotPresent"
        )
        owners.append(GitOpsOwner("Flux Kustomization", kustomization, fix))
    release = labels.get(names.FLUX_HELM_NAME_LABEL)
    if release:
        where = f"{labels.get(names.FLUX_HELM_NAMESPACE_LABEL, '')}/{release}"
        fix = (
            f"in HelmRelease {where.lstrip('/')} add spec.driftDetection.ignore: [{{paths: "
            f"[{_pointers()}], target: {{{_target(vm)}}}}}] and change the chart's volumes "
            "before its next upgrade"
        )
        owners.append(GitOpsOwner("Flux HelmRelease", release, fix))
    return tuple(owners)
