"""Volume rules: one wanted volume of one VM that is not yet in sync. Pure."""

from __future__ import annotations

from reconciler.diff.context import VolumeContext
from reconciler.diff.rule import Rule, names
from reconciler.diff.target import CLAIM_KINDS
from reconciler.model.live import StorageProfileInfo
from reconciler.model.names import CONTENT_TYPE_ANNOTATION
from reconciler.model.plan import DEFAULT_CLASS
from reconciler.model.verdict import Effect


def _claim_ref(ctx: VolumeContext) -> str:
    claim = ctx.volume.claim if ctx.volume else None
    return f"{ctx.vm.namespace}/{claim}"


def volume_not_found(ctx: VolumeContext) -> str | None:
    if ctx.volume is not None:
        return None
    have = names(v.name for v in ctx.vm.volumes)
    return (
        f"the plan names volume {ctx.want.volume}, but VM {ctx.vm.namespace}/{ctx.vm.name} has "
        f"no such volume (it has: {have}); fix the volume name in the plan"
    )


def volume_not_a_claim(ctx: VolumeContext) -> str | None:
    if ctx.volume is None or ctx.volume.kind in CLAIM_KINDS:
        return None
    return (
        f"volume {ctx.volume.name} is a {ctx.volume.kind} volume; only dataVolume and "
        "persistentVolumeClaim volumes have a StorageClass. Remove it from the plan"
    )


def claim_not_found(ctx: VolumeContext) -> str | None:
    if ctx.volume is None or ctx.volume.kind not in CLAIM_KINDS or ctx.pvc is not None:
        return None
    if not ctx.volume.claim:
        return f"volume {ctx.volume.name} names no claim; fix the VM's volume"
    dv = f" (DataVolume phase {ctx.dv.phase or 'unknown'})" if ctx.dv else ""
    return (
        f"PVC {_claim_ref(ctx)} of volume {ctx.volume.name} does not exist{dv}: there is "
        "nothing to copy. Create or restore it, or fix the VM's volume"
    )


def claim_not_bound(ctx: VolumeContext) -> str | None:
    if ctx.pvc is None or ctx.pvc.phase == "Bound":
        return None
    return (
        f"PVC {_claim_ref(ctx)} is {ctx.pvc.phase or 'in no phase'}, not Bound: only a bound "
        "claim can be copied. Wait until it binds (WaitForFirstConsumer classes bind when the "
        "VM first starts) or fix its StorageClass"
    )


def datavolume_not_succeeded(ctx: VolumeContext) -> str | None:
    if ctx.dv is None or ctx.dv.phase == "Succeeded":
        return None
    progress = f", progress {ctx.dv.progress}" if ctx.dv.progress else ""
    return (
        f"DataVolume {_claim_ref(ctx)} is {ctx.dv.phase or 'in no phase'}{progress}, not "
        "Succeeded: its disk is not fully populated yet. Wait until CDI finishes"
    )


def source_size_unknown(ctx: VolumeContext) -> str | None:
    if ctx.pvc is None or ctx.target.size_bytes > 0:
        return None
    return (
        f"PVC {_claim_ref(ctx)} has no usable storage request or capacity (missing, or "
        "beyond 8 EiB), so the destination cannot be sized (it must be at least as large as "
        "the source); fix the claim"
    )


def datavolume_template_unsized(ctx: VolumeContext) -> str | None:
    """A dataVolumeTemplate (schema-valid, accepted by the API server) with neither
    ``spec.storage`` nor ``spec.pvc`` as a mapping: there is no class in it to change."""
    if ctx.volume is None or not ctx.volume.from_template:
        return None
    spec = ctx.vm.raw.get("spec")
    templates = spec.get("dataVolumeTemplates") if isinstance(spec, dict) else None
    for template in templates if isinstance(templates, list) else ():
        meta = template.get("metadata") if isinstance(template, dict) else None
        if not isinstance(meta, dict) or meta.get("name") != ctx.volume.claim:
            continue
        dv_spec = template.get("spec")
        storage = dv_spec.get("storage", dv_spec.get("pvc")) if isinstance(dv_spec, dict) else None
        if isinstance(storage, dict):
            return None
        return (
            f"dataVolumeTemplate {ctx.volume.claim} of VM {ctx.vm.namespace}/{ctx.vm.name} has "
            "neither spec.storage nor spec.pvc, so there is no StorageClass in it to change; "
            "fix the VM's dataVolumeTemplates"
        )
    return None


def storage_class_not_found(ctx: VolumeContext) -> str | None:
    if ctx.storage_class is not None:
        return None
    wanted = ctx.want.storage_class
    have = names(sorted(ctx.snapshot.storage_classes))
    if wanted == DEFAULT_CLASS:
        return (
            "the plan asks for the cluster's default StorageClass, but no StorageClass is "
            "annotated storageclass.kubevirt.io/is-default-virt-class or "
            f"storageclass.kubernetes.io/is-default-class (classes: {have}); name the class in "
            "the plan or mark one default"
        )
    return (
        f"StorageClass {wanted} does not exist (classes: {have}); create it or fix "
        "storageClass in the plan"
    )


def _sets(profile: StorageProfileInfo) -> str:
    return ", ".join(f"{m} [{', '.join(a)}]" for a, m in profile.claim_property_sets)


def storage_profile_mismatch(ctx: VolumeContext) -> str | None:
    if ctx.target.offered or ctx.profile is None:
        return None
    wanted = f"{ctx.target.volume_mode or 'Auto'} [{', '.join(ctx.target.access_modes)}]"
    return (
        f"StorageProfile {ctx.profile.name} does not offer {wanted}; it offers: "
        f"{_sets(ctx.profile)}. Set volumeMode/accessModes in the plan to one of these, or to "
        "Auto to follow the profile"
    )


def _live_only_offline(what: str) -> str:
    return (
        f"{what}: KubeVirt cannot migrate its storage live, so the VM can only move offline "
        "(allowStop: true or mode: Offline)"
    )


def shareable_disk(ctx: VolumeContext) -> str | None:
    if ctx.volume is None or not ctx.volume.shareable:
        return None
    return _live_only_offline(f"disk {ctx.volume.name} is shareable")


def lun_disk(ctx: VolumeContext) -> str | None:
    if ctx.volume is None or ctx.volume.disk_type != "lun":
        return None
    return _live_only_offline(f"volume {ctx.volume.name} is attached as a LUN")


def virtiofs_filesystem(ctx: VolumeContext) -> str | None:
    if ctx.volume is None or not ctx.volume.filesystem:
        return None
    return _live_only_offline(f"volume {ctx.volume.name} is shared as a virtiofs filesystem")


def hotplug_volume(ctx: VolumeContext) -> str | None:
    kv, version = ctx.snapshot.kubevirt, ctx.version
    if ctx.volume is None or not ctx.volume.hotpluggable or kv is None or version is None:
        return None  # no CR / unknown version already rule live out (kubevirt-* rules)
    if version.at_least(1, 5):
        return None
    return (
        f"volume {ctx.volume.name} is hotplugged, and KubeVirt {kv.version} refuses "
        "hotplugged volumes in a volume migration (allowed from v1.5.0): upgrade KubeVirt, or "
        "move it offline (allowStop: true or mode: Offline)"
    )


def persistent_reservation(ctx: VolumeContext) -> str | None:
    if ctx.volume is None or not ctx.volume.persistent_reservation:
        return None
    return _live_only_offline(f"LUN {ctx.volume.name} uses SCSI persistent reservation")


def content_type_not_kubevirt(ctx: VolumeContext) -> str | None:
    pvc = ctx.pvc
    if pvc is None or pvc.volume_mode != "Block" or ctx.target.volume_mode != "Filesystem":
        return None
    content = pvc.annotations.get(CONTENT_TYPE_ANNOTATION)
    if content is None or content == "kubevirt":
        return None
    return (
        f"PVC {_claim_ref(ctx)} has {CONTENT_TYPE_ANNOTATION}: {content}, and CDI clones Block "
        "to Filesystem only for contentType kubevirt. Keep volumeMode Block (or Auto), or "
        "move it live"
    )


VOLUME_RULES: tuple[Rule[VolumeContext], ...] = (
    Rule(
        "volume-not-found",
        Effect.BLOCK,
        "The plan names a volume the VM does not have.",
        check=volume_not_found,
    ),
    Rule(
        "volume-not-a-claim",
        Effect.BLOCK,
        "The plan names a volume that is not a dataVolume/persistentVolumeClaim.",
        check=volume_not_a_claim,
    ),
    Rule(
        "claim-not-found", Effect.BLOCK, "The volume's PVC does not exist.", check=claim_not_found
    ),
    Rule("claim-not-bound", Effect.BLOCK, "The volume's PVC is not Bound.", check=claim_not_bound),
    Rule(
        "datavolume-not-succeeded",
        Effect.BLOCK,
        "The volume's DataVolume is not Succeeded.",
        check=datavolume_not_succeeded,
    ),
    Rule(
        "source-size-unknown",
        Effect.BLOCK,
        "The source PVC has no request/capacity to size the destination from.",
        check=source_size_unknown,
    ),
    Rule(
        "datavolume-template-unsized",
        Effect.BLOCK,
        "The volume's dataVolumeTemplate has neither spec.storage nor spec.pvc.",
        check=datavolume_template_unsized,
    ),
    Rule(
        "storage-class-not-found",
        Effect.BLOCK,
        "The target StorageClass does not exist.",
        check=storage_class_not_found,
    ),
    Rule(
        "storage-profile-mismatch",
        Effect.BLOCK,
        "The target StorageProfile does not offer the wanted volumeMode/accessModes.",
        check=storage_profile_mismatch,
    ),
    Rule("shareable-disk", Effect.NO_LIVE, "The disk is shareable.", check=shareable_disk),
    Rule("lun-disk", Effect.NO_LIVE, "The volume is a LUN disk.", check=lun_disk),
    Rule(
        "virtiofs-filesystem",
        Effect.NO_LIVE,
        "The volume is a virtiofs filesystem.",
        check=virtiofs_filesystem,
    ),
    Rule(
        "hotplug-volume",
        Effect.NO_LIVE,
        "The volume is hotplugged (KubeVirt < v1.5.0).",
        check=hotplug_volume,
    ),
    Rule(
        "persistent-reservation",
        Effect.NO_LIVE,
        "The LUN uses SCSI persistent reservation.",
        check=persistent_reservation,
    ),
    Rule(
        "content-type-not-kubevirt",
        Effect.NO_OFFLINE,
        "Block -> Filesystem clone of a PVC whose contentType is not kubevirt.",
        check=content_type_not_kubevirt,
    ),
)
