"""``run --every`` (tests/cluster/test_loop_mode.py) on the real engine:
upstream virt-controller, virt-api and cdi-controller; only the node side is ours.
``LEAVE_OUT`` names the tests that still run on the simulator only, each with the upstream
difference that keeps it there."""

from __future__ import annotations

from tests.cluster import test_loop_mode
from tests.support.mirror import mirror

LEAVE_OUT: dict[str, str] = {}

globals().update(mirror(test_loop_mode, LEAVE_OUT))
