"""Pure rules the node side applies (plain API objects in, plain data out; no I/O): what
virt-handler decides about a VMI (its migration constraints, whether it migrates) and how big
a disk image a claim holds, as KubeVirt and CDI do; upstream messages kept verbatim, because
the reconciler under test matches on them."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

from testenv.node.runtime import GI
from testenv.quantity import to_bytes

NOT_LIVE_MIGRATABLE_ANNOTATION = "sim.vmstorage.dev/not-live-migratable"
"""On a VM template (copied to the VMI): "<Reason>[: <message>]" makes it not migratable."""


REASON_PR_NOT_MIGRATABLE = "PersistentReservationNotLiveMigratable"


def disks_by_name(spec: Mapping[str, Any]) -> dict[str, dict[str, Any]]:
    """`domain.devices.disks` of a VMI (or template) spec, by name."""
    disks = ((spec.get("domain") or {}).get("devices") or {}).get("disks") or []
    return {d["name"]: dict(d) for d in disks}


def pvc_size(pvc: Mapping[str, Any]) -> int:
    """Bytes of a PVC: status.capacity.storage, else spec.resources.requests.storage."""
    capacity = ((pvc.get("status") or {}).get("capacity") or {}).get("storage")
    request = (((pvc.get("spec") or {}).get("resources") or {}).get("requests") or {}).get(
        "storage")
    value = capacity or request
    return to_bytes(value) if value else 0


FILESYSTEM_OVERHEAD = 0.06
"""CDI's default global filesystem overhead: the share of a Filesystem PVC that the disk
image cannot use."""


def disk_image_size(pvc: Mapping[str, Any]) -> int:
    """Bytes the guest disk can have on this claim: all of a Block volume, a Filesystem
    volume minus the filesystem overhead (so an FS destination of the same nominal size as
    its source is too small, as kubevirt#13135 users found out)."""
    size = pvc_size(pvc)
    if ((pvc.get("spec") or {}).get("volumeMode") or "Filesystem") == "Block":
        return size
    return int(size * (1 - FILESYSTEM_OVERHEAD))


def non_migratable_reasons(vmi: Mapping[str, Any]) -> list[tuple[str, str]]:
    """evaluateCommonMigrationConstraints, as far as the node side models them:
    SCSI persistent reservation (a LUN disk with `reservation: true`) and the
    annotation `sim.vmstorage.dev/not-live-migratable: "<Reason>[: <message>]"`."""
    reasons = []
    disks = disks_by_name(vmi.get("spec") or {}).values()
    if any((d.get("lun") or {}).get("reservation") for d in disks):
        reasons.append((REASON_PR_NOT_MIGRATABLE, "VMI uses SCSI persistent reservation"))
    value = (vmi.get("metadata", {}).get("annotations") or {}).get(
        NOT_LIVE_MIGRATABLE_ANNOTATION)
    if value:
        reason, _, message = value.partition(":")
        reasons.append((reason.strip() or "NotLiveMigratable",
                        message.strip() or "VMI is not live migratable (testenv)"))
    return reasons


def is_migrating(vmi: Mapping[str, Any]) -> bool:
    """migrations.IsMigrating: migrationState has a start and no end timestamp."""
    state = (vmi.get("status") or {}).get("migrationState") or {}
    return bool(state.get("startTimestamp")) and not state.get("endTimestamp")


def copy_seconds(sizes: Iterable[int], seconds_per_gib: float) -> float:
    """How long copying disks of these byte sizes takes."""
    return sum(sizes) / GI * seconds_per_gib
