"""``apply --parallel`` (tests/cluster/test_parallel.py) on the real engine: the lanes' live
moves are upstream virt-controller's migrations, held to the KubeVirt CR's limits."""

from __future__ import annotations

from tests.cluster import test_parallel
from tests.support.mirror import mirror

globals().update(mirror(test_parallel, {}))
