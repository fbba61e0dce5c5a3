"""Rollback and failure handling (tests/cluster/test_apply_faults.py) on the real engine: the
node side fails, stalls or slows migrations and copies; how upstream virt-controller and
cdi-controller react, and what apply does about it, is not ours. ``LEAVE_OUT`` names the tests
that still run on the simulator only, each with the difference that keeps it there."""

from __future__ import annotations

from tests.cluster import test_apply_faults
from tests.support.mirror import mirror

LEAVE_OUT = {
    "test_migration_failing_every_time_is_cancelled_and_rolled_back": (
        "upstream virt-controller holds the workload updater's next VMIM after a failed one "
        "in its migration backoff (the simulator shortens it with a knob), so three attempts "
        "outlast the test's deadline"
    ),
    "test_migration_failing_twice_then_succeeding_is_a_success": (
        "the same upstream migration backoff between the failed attempts"
    ),
    "test_clone_failing_and_retried_counts_as_failed_and_restarts_the_vm": (
        "the node side fails the clone's source pod, which restarts forever, and apply did "
        "not see three restarts before the test's deadline: which pod's restarts upstream "
        "CDI counts for a host-assisted clone, and what apply should watch, is open"
    ),
    "test_fatal_clone_is_rolled_back_and_a_stopped_vm_stays_stopped": (
        "upstream CDI fails a DataVolume for good only on a fatal importer error, a clone's "
        "worker pods are restarted: the simulator's 'fatal clone' has no upstream twin"
    ),
    "test_three_failing_vms_in_a_row_trip_the_breaker": (
        "fails its clones with a fatal fault, which has no upstream twin (above)"
    ),
    "test_a_migration_waiting_for_a_slot_is_reported_queued_then_succeeds": (
        "fills KubeVirt's migration slots with the simulator's parallel-migration knob"
    ),
    "test_queued_progress_goes_to_stderr": (
        "the same: needs a migration held queued by the simulator's slot knob"
    ),
    "test_vm_stopped_after_the_copy_finished_keeps_the_destination": (
        "reads migrationState fields the simulator writes when the VM stops after the copy; "
        "the node side does not write them the same way yet"
    ),
}

globals().update(mirror(test_apply_faults, LEAVE_OUT))
