"""Who applies a VM from Git, for the write-back after a move. Pure.

``gitops.gitops_owners`` answers "who would revert a move now" (the gitops-managed rule);
the write-back asks a wider question: "whose Git manifest still names the old disks". A
Kustomization that skips the VM for now (``kustomize.toolkit.fluxcd.io/reconcile: disabled``
or ``ssa: Ignore`` on it) reverts nothing today, but its manifest is stale all the same, and
the day the annotation goes, Flux puts the old claims back.
"""

from __future__ import annotations

from collections.abc import Mapping

from reconciler.diff.gitops import gitops_owners
from reconciler.model import names
from reconciler.model.live import VMInfo


def git_owners(vm: VMInfo) -> tuple[str, ...]:
    """The GitOps tools whose manifest of ``vm`` a move makes stale, in words, e.g.
    ``("Flux Kustomization flux-system/apps",)``; () when the VM is not applied from Git."""
    labels = vm.labels
    owners: list[str] = []
    for owner in gitops_owners(vm):
        if owner.tool == "Flux Kustomization":
            owners.append(f"{owner.tool} {_flux(labels, owner.name)}")
        elif owner.tool == "Flux HelmRelease":
            where = labels.get(names.FLUX_HELM_NAMESPACE_LABEL, "")
            owners.append(f"{owner.tool} {where + '/' if where else ''}{owner.name}")
        else:
            owners.append(f"{owner.tool} Application {owner.name or '<unknown>'}")
    kustomization = labels.get(names.FLUX_KUSTOMIZATION_NAME_LABEL)
    if kustomization and not any(o.startswith("Flux Kustomization") for o in owners):
        owners.append(
            f"Flux Kustomization {_flux(labels, kustomization)} (which skips the VM for now)"
        )
    return tuple(owners)


def _flux(labels: Mapping[str, str], name: str) -> str:
    namespace = labels.get(names.FLUX_KUSTOMIZATION_NAMESPACE_LABEL, "")
    return f"{namespace}/{name}" if namespace else name
