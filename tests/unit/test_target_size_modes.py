"""Destination sizes when the volume mode changes (found by the live Filesystem -> Block move of
tests/cluster/test_apply_shapes.py: a Block device the size of the DataVolume is a little
smaller than the source's disk image, and libvirt refuses the copy)."""

from __future__ import annotations

from reconciler.diff.target import resolve_target, target_size
from reconciler.model.plan import VolumeMode
from tests.support.factories import RWO, GiB, desired, dv, profile, pvc

# A 2 GiB DataVolume on a Filesystem class: CDI's storage API asked for the size plus the
# filesystem overhead, and the image inside fills the capacity less that overhead.
FS_SOURCE = pvc(size=int(2 * GiB / 0.945) + 1, capacity=int(2 * GiB / 0.945) + (1 << 20))
FS_DV = dv(size=2 * GiB)


def test_filesystem_to_filesystem_asks_for_the_datavolume_size() -> None:
    assert target_size(FS_SOURCE, FS_DV) == 2 * GiB
    assert target_size(FS_SOURCE, FS_DV, "Filesystem") == 2 * GiB


def test_filesystem_to_block_gets_the_whole_source_capacity() -> None:
    """No overhead is added to a Block request, so the device must hold the image as it is."""
    assert target_size(FS_SOURCE, FS_DV, "Block") == FS_SOURCE.capacity_bytes
    assert target_size(FS_SOURCE, None, "Block") == FS_SOURCE.capacity_bytes


def test_block_sources_keep_their_capacity_whatever_the_target_mode() -> None:
    block = pvc(size=2 * GiB, capacity=2 * GiB + (4 << 20), volume_mode="Block")
    for mode in ("", "Block", "Filesystem"):
        assert target_size(block, dv(size=2 * GiB), mode) == 2 * GiB + (4 << 20)


def test_resolve_target_sizes_for_the_mode_it_resolves() -> None:
    explicit = resolve_target(
        desired(volume_mode=VolumeMode.BLOCK), FS_SOURCE, profile("new", (RWO, "Block")), FS_DV
    )
    assert (explicit.volume_mode, explicit.size_bytes) == ("Block", FS_SOURCE.capacity_bytes)
    # Auto on a class that only offers Block: CDI would pick Block, so the size follows
    auto = resolve_target(desired(), FS_SOURCE, profile("new", (RWO, "Block")), FS_DV)
    assert (auto.volume_mode, auto.size_bytes) == ("Block", FS_SOURCE.capacity_bytes)
    kept = resolve_target(desired(), FS_SOURCE, profile("new", (RWO, "Filesystem")), FS_DV)
    assert (kept.volume_mode, kept.size_bytes) == ("Filesystem", 2 * GiB)
