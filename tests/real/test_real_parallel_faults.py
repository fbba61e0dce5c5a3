"""The fault matrix with ``apply --parallel 3`` (tests/cluster/test_parallel_faults.py) on the
real engine: one VM's move is failed, stalled or meddled with while two healthy VMs move in
the other lanes; the failed migrations, cancellations and clone retries are upstream
virt-controller's and cdi-controller's, the faults the node side's. ``LEAVE_OUT`` names the
cases that stay on the simulator, each with the upstream difference that keeps it there (as
tests/real/test_real_faults.py does for the one-at-a-time matrix)."""

from __future__ import annotations

from tests.cluster import test_parallel_faults
from tests.support.mirror import mirror

LEAVE_OUT = {
    "test_fatal_clone_rolls_back_its_lane_only": (
        "a clone DataVolume never goes Failed upstream: CDI fails one for good only on a fatal "
        "importer error, and a clone's phase never maps to Failed (clone-controller-base.go "
        "updateStatusPhaseForPopulator); the failing clone's upstream form (restarts) is "
        "test_clone_failing_and_retried_rolls_back_its_lane_only"
    ),
}

globals().update(mirror(test_parallel_faults, LEAVE_OUT))
