"""VM shapes (tests/cluster/test_apply_shapes.py) on the real engine: dataVolumeTemplates,
standalone DataVolumes and plain PVCs, Filesystem and Block, live and offline, retention."""

from __future__ import annotations

from tests.cluster import test_apply_shapes
from tests.support.mirror import mirror

globals().update(mirror(test_apply_shapes, {}))
