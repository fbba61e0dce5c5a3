"""Where a volume goes: the destination resolved from the plan, the source claim and the target
StorageProfile, its size, and whether the claim already is what the plan wants. Pure."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from reconciler.model.live import DataVolumeInfo, PVCInfo, StorageProfileInfo, VMVolume
from reconciler.model.plan import VolumeMode
from reconciler.model.verdict import DesiredVolume

CLAIM_KINDS = frozenset({"dataVolume", "persistentVolumeClaim"})
"""Volume kinds backed by a claim, i.e. the only ones with a StorageClass to move."""


@dataclass(frozen=True)
class TargetSpec:
    """The destination we would ask CDI for, resolved from the plan, the source claim and the
    target StorageProfile. ``volume_mode`` is "" and ``access_modes`` () only when neither the
    plan nor a source claim says. ``offered`` is False when the StorageProfile lists claim
    property sets and none of them fits the explicitly wanted mode/access."""

    storage_class: str
    volume_mode: str
    access_modes: tuple[str, ...]
    size_bytes: int
    offered: bool = True


def target_size(pvc: PVCInfo, dv: DataVolumeInfo | None = None, target_mode: str = "") -> int:
    """The size to request for a copy of ``pvc`` (made by DataVolume ``dv``, if any) onto a
    ``target_mode`` volume ("" = the source's mode).

    Filesystem to Filesystem: the request of the source's DataVolume when there is one (KMC
    does the same): CDI's ``storage:`` API adds the filesystem overhead to it again, so the
    destination PVC comes out the size of the source PVC instead of ~6% larger on every move.
    Without a DataVolume, the PVC request. Block sources: the device is as large as the
    volume's *capacity*, which may exceed the request (provisioners round up), and a
    destination smaller than the source device fails in libvirt; so the larger of capacity and
    request. Filesystem to Block: CDI adds no overhead to a Block request, and the source's disk
    image fills its PVC's capacity less the overhead (a little over the DataVolume's size once
    rounded), so the device gets the source's whole capacity. Never below the request, because
    CDI refuses a clone whose target request is below the source's.
    """
    if pvc.volume_mode == "Block" or target_mode == "Block":
        return max(pvc.request_bytes, pvc.capacity_bytes or 0)
    if dv is not None and dv.request_bytes:
        return min(dv.request_bytes, pvc.request_bytes) or pvc.request_bytes
    return pvc.request_bytes


def _offers(profile: StorageProfileInfo, mode: str, access: Sequence[str]) -> bool:
    """Some claim property set has ``mode`` and at least the ``access`` modes."""
    return any(
        set_mode == mode and set(access) <= set(set_access)
        for set_access, set_mode in profile.claim_property_sets
    )


def resolve_target(
    want: DesiredVolume,
    pvc: PVCInfo | None,
    profile: StorageProfileInfo | None,
    dv: DataVolumeInfo | None = None,
) -> TargetSpec:
    """Resolve Auto volumeMode / unset accessModes.

    Explicit values are kept and must be offered by the StorageProfile (when it lists claim
    property sets). Auto keeps the source's value when the profile offers it (or says nothing),
    else takes the profile's first fitting set, as CDI itself would.
    """
    source_mode = pvc.volume_mode if pvc else ""
    source_access = pvc.access_modes if pvc else ()
    explicit_mode = want.volume_mode is not VolumeMode.AUTO
    mode = want.volume_mode.value if explicit_mode else source_mode
    access = want.access_modes if want.access_modes is not None else source_access

    def size(target_mode: str) -> int:
        return target_size(pvc, dv, target_mode) if pvc else 0

    sets = profile.claim_property_sets if profile else ()
    if profile is None or not sets or not mode or _offers(profile, mode, access):
        return TargetSpec(want.storage_class, mode, tuple(access), size(mode))
    # The wanted pair is not offered: let the Auto half follow the profile, in its order.
    for set_access, set_mode in sets:
        mode_fits = not explicit_mode or set_mode == mode
        access_fits = want.access_modes is None or set(access) <= set(set_access)
        if mode_fits and access_fits:
            chosen = tuple(access) if want.access_modes is not None else set_access
            return TargetSpec(want.storage_class, set_mode, chosen, size(set_mode))
    return TargetSpec(want.storage_class, mode, tuple(access), size(mode), offered=False)


def is_in_sync(volume: VMVolume | None, pvc: PVCInfo | None, want: DesiredVolume) -> bool:
    """The claim already is what the plan wants: same resolved class, and the explicitly wanted
    volumeMode/accessModes (Auto/unset accept the claim's own)."""
    if volume is None or volume.kind not in CLAIM_KINDS or pvc is None:
        return False
    if pvc.storage_class != want.storage_class:
        return False
    if want.volume_mode is not VolumeMode.AUTO and want.volume_mode.value != pvc.volume_mode:
        return False
    return want.access_modes is None or set(want.access_modes) == set(pvc.access_modes)
