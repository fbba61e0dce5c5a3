"""Live and offline moves, verification and retention (tests/cluster/test_apply.py) on the
real engine: upstream virt-controller's workload updater and migration, cdi-controller's
clone, virt-api's admission."""

from __future__ import annotations

from tests.cluster import test_apply
from tests.support.mirror import mirror

globals().update(mirror(test_apply, {}))
