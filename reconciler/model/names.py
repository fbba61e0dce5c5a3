"""Every label and annotation key the reconciler owns or reads, and its field manager.

One vocabulary: the diff, render, observe and kube read these names from here, so a key is
spelled once and a grep for it finds every use. (The Jinja templates write ours too; render
checks the ones that matter, e.g. ``SOURCE_CLAIM_ANNOTATION``.)
"""

from __future__ import annotations

FIELD_MANAGER = "vm-storage-reconciler"
"""``fieldManager`` of every write, and the value of ``MANAGED_BY_LABEL`` on what we create."""

# -- ours ------------------------------------------------------------------------------------
OUR_PREFIX = "vmstorage.dev"
JOURNAL_ANNOTATION = "vmstorage.dev/journal"  # an open move of ours (on the VM)
LAST_MIGRATION_ANNOTATION = "vmstorage.dev/last-migration"  # the last move's result (on the VM)
MIGRATION_LABEL = "vmstorage.dev/migration"  # on every DataVolume a move creates: the move's id
# On our Events (reconciler.publish.events); MIGRATION_LABEL there too.
RULE_LABEL = "vmstorage.dev/rule"  # the rule id behind the Event (blocking rule, rollback cause)
RULES_ANNOTATION = "vmstorage.dev/rules"  # every rule id of a blocked VM, comma-separated
RUN_LABEL = "vmstorage.dev/run"  # the run's id (also in JSON logs and the status ConfigMap)
COMMIT_ANNOTATION = "vmstorage.dev/commit"  # the plans' commit
SOURCE_CLAIM_ANNOTATION = "vmstorage.dev/source-claim"  # on a destination: the claim it copies
# On a destination while its move is open; removed when the move succeeds. A DataVolume that
# still has it while no VM journals its move is a leftover (the VM was deleted, or the move
# abandoned) that nothing can use: `apply` deletes it. Kept sources never carry it.
IN_FLIGHT_ANNOTATION = "vmstorage.dev/in-flight"
# On a source a move kept (retention Keep, or a Delete that had to keep it): the label names
# the move, the annotation holds its record (reconciler.model.kept); `sources` lists them and
# `prune` deletes those a destination of ours corroborates. The pruning annotation is prune's
# journal: written right before the delete.
KEPT_SOURCE_LABEL = "vmstorage.dev/kept-source"
KEPT_SOURCE_ANNOTATION = "vmstorage.dev/kept-source"
PRUNING_ANNOTATION = "vmstorage.dev/pruning"
VM_LABEL = "vmstorage.dev/vm"
PLAN_LABEL = "vmstorage.dev/plan"
MANAGED_BY_LABEL = "app.kubernetes.io/managed-by"
MANAGED_BY = FIELD_MANAGER

# -- Kubernetes, CDI and KubeVirt ------------------------------------------------------------
DEFAULT_CLASS_ANNOTATION = "storageclass.kubernetes.io/is-default-class"
DEFAULT_VIRT_CLASS_ANNOTATION = "storageclass.kubevirt.io/is-default-virt-class"
CONTENT_TYPE_ANNOTATION = "cdi.kubevirt.io/storage.contentType"
VOLUME_UPDATE_LABEL = "kubevirt.io/volume-update-migration"  # on a VMIM of a volume update

# -- GitOps controllers that may own a VM ----------------------------------------------------
ARGO_PREFIX = "argocd.argoproj.io/"
ARGO_TRACKING_ANNOTATION = "argocd.argoproj.io/tracking-id"
INSTANCE_LABEL = "app.kubernetes.io/instance"
FLUX_KUSTOMIZATION_NAME_LABEL = "kustomize.toolkit.fluxcd.io/name"
FLUX_KUSTOMIZATION_NAMESPACE_LABEL = "kustomize.toolkit.fluxcd.io/namespace"
FLUX_SSA_ANNOTATION = "kustomize.toolkit.fluxcd.io/ssa"
FLUX_RECONCILE_ANNOTATION = "kustomize.toolkit.fluxcd.io/reconcile"
FLUX_HELM_NAME_LABEL = "helm.toolkit.fluxcd.io/name"
FLUX_HELM_NAMESPACE_LABEL = "helm.toolkit.fluxcd.io/namespace"
# Their field managers (metadata.managedFields): who wrote a field, e.g. who reverted a move.
FLUX_KUSTOMIZE_MANAGER = "kustomize-controller"
FLUX_HELM_MANAGER = "helm-controller"
ARGO_MANAGER_PREFIX = "argocd-"  # argocd-controller (server-side apply)
