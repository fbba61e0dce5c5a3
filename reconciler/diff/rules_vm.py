"""VM rules: the VM as a whole (recovery first, then moves in progress, then the VM's own
blockers). Facts behind each rule: reference/kubevirt-storage-migration.md. Pure."""

from __future__ import annotations

from collections.abc import Mapping

from reconciler.diff.context import VMContext
from reconciler.diff.gitops import GITOPS_OPT_IN, gitops_owners
from reconciler.diff.rule import Rule, condition, is_rwo
from reconciler.model.names import JOURNAL_ANNOTATION
from reconciler.model.verdict import Effect

FINAL_MIGRATION_PHASES = frozenset({"Succeeded", "Failed"})


def journal_present(ctx: VMContext) -> str | None:
    if JOURNAL_ANNOTATION not in ctx.vm.annotations:
        return None
    return (
        f"a previous run's journal ({JOURNAL_ANNOTATION}) is on the VM: the next `apply` "
        "resumes or rolls back that move first; `status` shows where it stopped"
    )


def volume_migration_in_progress(ctx: VMContext) -> str | None:
    if ctx.vm.update_volumes_strategy != "Migration":
        return None
    change = condition(ctx.vmi.conditions, "VolumesChange") if ctx.vmi else None
    in_flight = [
        m.name for m in ctx.migrations if m.volume_update and m.phase not in FINAL_MIGRATION_PHASES
    ]
    if change is not None and change.status == "True":
        evidence = "the VMI has VolumesChange=True"
    elif in_flight:
        evidence = f"VirtualMachineInstanceMigration {', '.join(in_flight)} is in flight"
    else:
        return None
    return (
        f"a volume migration is under way ({evidence}): wait for it to finish; to cancel it, "
        "restore the VM's original volumes"
    )


def manual_recovery_required(ctx: VMContext) -> str | None:
    found = condition(ctx.vm.conditions, "ManualRecoveryRequired")
    if found is None or found.status != "True":
        return None
    why = found.message or found.reason or "an interrupted volume migration"
    return (
        f"the VM has ManualRecoveryRequired=True ({why}) and KubeVirt will not start it. "
        "Recover it first: restore the original claim names in spec.template.spec.volumes (and "
        "spec.dataVolumeTemplates); or, if the copy finished (the failed migration's "
        "migrationState.targetNodeDomainReadyTimestamp is set), remove "
        "spec.updateVolumesStrategy to keep the destination. Then run again"
    )


def vm_deleting(ctx: VMContext) -> str | None:
    meta = ctx.vm.raw.get("metadata")
    since = meta.get("deletionTimestamp") if isinstance(meta, Mapping) else None
    if not since:
        return None
    finalizers = meta.get("finalizers") if isinstance(meta, Mapping) else None
    held = (
        f"; finalizer {', '.join(str(f) for f in finalizers)} keeps it until removed"
        if isinstance(finalizers, list) and finalizers
        else ""
    )
    return (
        f"the VM is being deleted (deletionTimestamp {since}{held}): a VM on its way out is "
        "never moved. Let the deletion finish and remove the VM from the plan; if deleting it "
        "was a mistake, re-create it once it is gone and run again"
    )


def gitops_managed(ctx: VMContext) -> str | None:
    if ctx.allow_gitops_managed:
        return None
    owners = gitops_owners(ctx.vm)
    if not owners:
        return None
    tools = " and ".join(f"{o.tool} {o.name}".strip() for o in owners)
    fixes = "; ".join(o.fix for o in owners)
    return (
        f"the VM is managed by {tools}, which would revert the moved volumes and so cancel the "
        f"migration (or leave the VM in ManualRecoveryRequired). To allow it: {fixes}; then set "
        f"{GITOPS_OPT_IN} in the plan"
    )


VM_NOT_RUNNING = "vm-not-running"


def vm_not_running(ctx: VMContext) -> str | None:
    if ctx.vmi is None:
        return "the VM is stopped (no VMI): KubeVirt copies volumes live only for a running VM"
    if ctx.vmi.phase == "Running":
        return None
    if not ctx.running:
        return (
            f"the VMI has ended (phase {ctx.vmi.phase}), so the VM is stopped: KubeVirt copies "
            "volumes live only for a running VM"
        )
    return (
        f"the VMI is in phase {ctx.vmi.phase or 'unknown'}, not Running: live migration needs a "
        "running VMI; wait until it is Running"
    )


def storage_not_live_migratable(ctx: VMContext) -> str | None:
    found = condition(ctx.vmi.conditions, "StorageLiveMigratable") if ctx.vmi else None
    if found is None or found.status != "False":
        return None
    why = ": ".join(p for p in (found.reason, found.message) if p) or "no reason given"
    return (
        f"the VMI reports StorageLiveMigratable=False ({why}): KubeVirt refuses to migrate its "
        "storage live. Remove the cause, or move it offline (allowStop: true or mode: Offline)"
    )


def rwo_volume_not_moved(ctx: VMContext) -> str | None:
    if not ctx.moving:
        return None
    left = [
        name
        for name, pvc in ctx.claims.items()
        if pvc is not None and is_rwo(pvc.access_modes) and name not in ctx.moving
    ]
    if not left:
        return None
    unplanned = [n for n in left if n not in ctx.wanted]
    described = ", ".join(
        n if n in unplanned else f"{n} (already on its target class)" for n in left
    )
    todo = f"add {', '.join(unplanned)} to the plan, or " if unplanned else ""
    return (
        f"volume {described} is ReadWriteOnce and not moved in this update, but KubeVirt "
        "moves every RWO volume of a VM in the same update ('The volume ... is RWO and not "
        f"included in the migration volumes'): {todo}let the VM move offline (allowStop: true "
        "or mode: Offline)"
    )


def running_field_deprecated(ctx: VMContext) -> str | None:
    if not ctx.vm.uses_running_field:
        return None
    return (
        "the VM uses the deprecated spec.running (KubeVirt warns about it); moves still work, "
        "but consider switching it to spec.runStrategy"
    )


IN_PROGRESS_RULES: tuple[Rule[VMContext], ...] = (
    Rule(
        "journal-present",
        Effect.IN_PROGRESS,
        f"The VM carries our journal annotation {JOURNAL_ANNOTATION}: a move of ours is open.",
        check=journal_present,
    ),
    Rule(
        "volume-migration-in-progress",
        Effect.IN_PROGRESS,
        "updateVolumesStrategy is Migration and the VMI has VolumesChange=True or a "
        "volume-update VMIM is in flight.",
        check=volume_migration_in_progress,
    ),
)

# Checked before anything else about a VM: after an interrupted migration the VM's spec may
# name a half-copied destination, so even a VM whose claims all sit on the target class is not
# "in sync" until it is recovered.
RECOVERY_RULES: tuple[Rule[VMContext], ...] = (
    Rule(
        "manual-recovery-required",
        Effect.BLOCK,
        "The VM has ManualRecoveryRequired=True after an interrupted migration (even if its "
        "claims already name the target class).",
        check=manual_recovery_required,
    ),
)

VM_DELETING = "vm-deleting"

VM_RULES: tuple[Rule[VMContext], ...] = (
    Rule(
        VM_DELETING,
        Effect.BLOCK,
        "The VM is being deleted (metadata.deletionTimestamp is set).",
        check=vm_deleting,
    ),
    Rule(
        "gitops-managed",
        Effect.BLOCK,
        "Argo CD or Flux manages the VM and would revert the move, unless the plan allows it.",
        check=gitops_managed,
    ),
    Rule(
        VM_NOT_RUNNING, Effect.NO_LIVE, "No VMI, or the VMI is not Running.", check=vm_not_running
    ),
    Rule(
        "storage-not-live-migratable",
        Effect.NO_LIVE,
        "The VMI has StorageLiveMigratable=False.",
        check=storage_not_live_migratable,
    ),
    Rule(
        "rwo-volume-not-moved",
        Effect.NO_LIVE,
        "A RWO PVC/DataVolume volume of the VM is not moved in the same update.",
        check=rwo_volume_not_moved,
    ),
    Rule(
        "running-field-deprecated",
        Effect.NOTE,
        "The VM uses the deprecated spec.running.",
        check=running_field_deprecated,
    ),
)
