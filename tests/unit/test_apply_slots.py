"""``apply --parallel``'s scheduler (reconciler/apply/slots.py): which VM starts next, as a pure
function of the lanes, the migrations the cluster runs and KubeVirt's limits."""

from __future__ import annotations

from reconciler.apply.slots import (
    Candidate,
    Migrating,
    MigrationLimits,
    next_to_start,
)
from reconciler.model.journal import Flow

LIVE_A = Candidate("ns", "a", Flow.LIVE, node="node-1")
LIVE_B = Candidate("ns", "b", Flow.LIVE, node="node-2")
OFFLINE_C = Candidate("ns", "c", Flow.OFFLINE)
LIMITS = MigrationLimits(per_cluster=2, per_node=1)


def on(node: str, vmi: str, namespace: str = "ns") -> Migrating:
    return Migrating(namespace, vmi, node)


def test_no_free_lane_starts_nothing() -> None:
    chosen, waits = next_to_start([OFFLINE_C], lanes=2, busy=2, migrating=[], limits=LIMITS)
    assert chosen is None and waits == ()


def test_the_first_candidate_that_fits_starts_in_order() -> None:
    chosen, waits = next_to_start([LIVE_A, LIVE_B], lanes=3, busy=0, migrating=[], limits=LIMITS)
    assert chosen == LIVE_A and waits == ()


def test_a_full_cluster_holds_live_moves_but_not_offline_ones() -> None:
    full = [on("node-3", "x"), on("node-4", "y")]
    chosen, waits = next_to_start(
        [LIVE_A, OFFLINE_C], lanes=3, busy=1, migrating=full, limits=LIMITS
    )
    assert chosen == OFFLINE_C
    assert [w.candidate for w in waits] == [LIVE_A]
    assert "parallelMigrationsPerCluster 2" in waits[0].reason


def test_a_busy_source_node_holds_its_vms_while_another_node_may_go() -> None:
    chosen, waits = next_to_start(
        [LIVE_A, LIVE_B], lanes=3, busy=1, migrating=[on("node-1", "x")], limits=LIMITS
    )
    assert chosen == LIVE_B
    assert "leave node node-1" in waits[0].reason
    assert "parallelOutboundMigrationsPerNode 1" in waits[0].reason


def test_our_lane_and_the_migration_it_caused_count_once() -> None:
    # our live lane reserved vmi "x" on node-3; virt-controller has since created its migration
    twice = [on("node-3", "x"), on("node-3", "x")]
    chosen, _ = next_to_start([LIVE_A], lanes=3, busy=1, migrating=twice, limits=LIMITS)
    assert chosen == LIVE_A  # one of two cluster slots taken, node-1 free


def test_same_vmi_name_in_two_namespaces_counts_twice() -> None:
    two = [on("node-3", "x", "ns1"), on("node-4", "x", "ns2")]
    chosen, waits = next_to_start([LIVE_A], lanes=3, busy=0, migrating=two, limits=LIMITS)
    assert chosen is None and len(waits) == 1


def test_no_candidate_fits_returns_every_reason() -> None:
    chosen, waits = next_to_start(
        [LIVE_A, LIVE_B],
        lanes=5,
        busy=0,
        migrating=[on("node-1", "x"), on("node-2", "y")],
        limits=MigrationLimits(per_cluster=5, per_node=1),
    )
    assert chosen is None
    assert [w.candidate.name for w in waits] == ["a", "b"]


def test_limits_are_read_from_the_kubevirt_cr_with_kubevirt_defaults() -> None:
    assert MigrationLimits.of_kubevirt(None) == MigrationLimits(5, 2)
    assert MigrationLimits.of_kubevirt({"spec": {}}) == MigrationLimits(5, 2)
    cr = {
        "spec": {
            "configuration": {
                "migrations": {
                    "parallelMigrationsPerCluster": 3,
                    "parallelOutboundMigrationsPerNode": 1,
                }
            }
        }
    }
    assert MigrationLimits.of_kubevirt(cr) == MigrationLimits(3, 1)


def test_limits_that_are_not_positive_integers_read_as_the_defaults() -> None:
    for bad in (0, -1, "3", True, None, 2.5):
        cr = {"spec": {"configuration": {"migrations": {"parallelMigrationsPerCluster": bad}}}}
        assert MigrationLimits.of_kubevirt(cr).per_cluster == 5, bad
    assert MigrationLimits.of_kubevirt({"spec": {"configuration": "garbage"}}) == MigrationLimits()
