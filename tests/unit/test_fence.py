"""The pure parts of `apply`'s never-lose-a-disk rules (issue 14): the Lease's renew deadline
(``Lease.ensure``, ``Lease.overdue`` on an injected clock), the journal's new fields and their
codec, the backoff after failed moves (``LastMigration.retry_after``), and the journal trust
check on resume (``apply.trust.journal_problems``). No cluster: the Lease is never asked to
send a request here.
"""

from __future__ import annotations

import copy
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from reconciler.apply.begin import _labelled
from reconciler.apply.lease import Lease, LeaseLost
from reconciler.apply.trust import journal_problems
from reconciler.model import journal as journals
from reconciler.model.journal import FORWARD, Flow, Journal, LastMigration, Step, VolumeMove
from reconciler.render.scope import scope_problems
from tests.unit.test_scope import LIVE, OFFLINE, shipped


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def held_lease(duration: int = 60) -> tuple[Lease, Clock]:
    clock = Clock()
    lease = Lease(None, "ns", "me", duration=duration, clock=clock)  # type: ignore[arg-type]
    lease._held_since(clock(), {"metadata": {"resourceVersion": "1"}, "spec": {}})
    return lease, clock


def test_a_lease_is_acted_on_only_until_two_thirds_of_its_duration_after_the_renewal() -> None:
    lease, clock = held_lease(60)
    clock.now += 39.9
    lease.ensure()  # still ours
    assert not lease.lost.is_set()
    clock.now += 0.2  # 40.1 s: another runner may take it over at 60 s; we stop at 40
    with pytest.raises(LeaseLost, match="not renewed within 40s"):
        lease.ensure()
    assert lease.lost.is_set(), "the run's stop event is set with it"
    with pytest.raises(LeaseLost):
        lease.ensure()  # and it stays lost, even if the clock went back
    assert not lease.holds()


def test_a_renewal_moves_the_deadline_from_when_it_was_sent() -> None:
    lease, clock = held_lease(30)
    clock.now += 15
    sent = clock()
    clock.now += 5  # the answer took 5 s: the deadline counts from the send
    lease._held_since(sent, {"metadata": {"resourceVersion": "2"}, "spec": {}})
    clock.now = sent + 19.9
    lease.ensure()
    clock.now = sent + 20.1
    assert not lease.holds()


def test_overdue_says_when_renewals_fail_and_when_the_run_stops_writing() -> None:
    lease, clock = held_lease(60)
    clock.now += 20
    assert lease.overdue() is None, "a renewal is due, not late"
    lease._last_error = "cannot reach the API server: timed out"
    clock.now += 10
    note = lease.overdue()
    assert note is not None
    assert "last renewed 30s ago" in note and "timed out" in note
    assert "stops writing in 10s" in note


def test_the_token_names_the_holder_and_its_takeover() -> None:
    lease, _ = held_lease()
    lease._held_since(0.0, {"metadata": {"resourceVersion": "3"}, "spec": {"leaseTransitions": 7}})
    assert lease.token == "me#7"


def journal_of(parts: dict[str, Any], flow: Flow, step: Step | None = None) -> Journal:
    moves = parts["moves"]
    return Journal(
        id="abc123",
        plan=f"{parts['namespace']}/move",
        flow=flow,
        step=step or FORWARD[flow][0],
        volumes=tuple(
            VolumeMove(volume, source, target, False, "old", klass, 1 << 30)
            for volume, source, target, klass in moves
        ),
        run_strategy="Always",
        was_running=True,
        started="2026-12-06T10:00:00+00:00",
        deadline="2026-12-06T11:00:00+00:00",
        retention="Delete",
        data_volumes=tuple(_labelled(dv, "abc123") for dv in parts["data_volumes"]),
        forward_ops=tuple(parts["forward_ops"]),
        revert_ops=tuple(parts["revert_ops"]),
        cleanup_ops=tuple(parts["cleanup_ops"]),
        fence="me#1",
        source_generation=4,
    )


def test_the_journal_codec_keeps_the_fence_and_the_generation() -> None:
    journal = journal_of(shipped(OFFLINE), Flow.OFFLINE)
    again = journals.decode(journals.encode(journal))
    assert again == journal
    assert (again.fence, again.source_generation) == ("me#1", 4)


@pytest.mark.parametrize(("case", "flow"), [(LIVE, Flow.LIVE), (OFFLINE, Flow.OFFLINE)])
def test_a_journal_as_apply_writes_it_is_trusted(case: str, flow: Flow) -> None:
    parts = shipped(case)
    journal = journal_of(parts, flow)
    assert journal_problems(parts["namespace"], parts["vm"], journal, scope_problems) == []


def test_a_journal_cloning_another_namespace_s_disk_is_refused() -> None:
    parts = shipped(OFFLINE)
    forged = copy.deepcopy(parts["data_volumes"])
    forged[0]["spec"]["source"]["pvc"]["namespace"] = "tenant-b"
    journal = journal_of({**parts, "data_volumes": forged}, Flow.OFFLINE)
    found = journal_problems(parts["namespace"], parts["vm"], journal, scope_problems)
    assert found and any("tenant-b" in p or "namespace" in p for p in found), found


def test_a_journal_of_another_namespace_s_plan_or_an_odd_retention_is_refused() -> None:
    parts = shipped(OFFLINE)
    journal = replace(journal_of(parts, Flow.OFFLINE), plan="other/move", retention="Purge")
    found = journal_problems(parts["namespace"], parts["vm"], journal, scope_problems)
    assert any("not of namespace" in p for p in found), found
    assert any("retention 'Purge'" in p for p in found), found


def test_a_journal_before_its_swap_must_name_the_claims_the_vm_uses() -> None:
    parts = shipped(OFFLINE)
    journal = journal_of(parts, Flow.OFFLINE)
    forged = replace(journal, volumes=(replace(journal.volumes[0], source="someone-elses-disk"),))
    forged_problems = journal_problems(parts["namespace"], parts["vm"], forged, scope_problems)
    assert forged_problems, "a source it never used"
    after_swap = replace(journal, step=Step.DELETE_SOURCES)
    assert journal_problems(parts["namespace"], parts["vm"], after_swap, scope_problems) == []


def last(result: str, failures: int, rule: str = "copy-failed") -> LastMigration:
    return LastMigration(
        id="x",
        plan="ns/p",
        flow=Flow.OFFLINE,
        result=result,
        finished="2026-12-06T10:00:00+00:00",
        started="2026-12-06T09:59:00+00:00",
        rule=rule,
        failures=failures,
    )


def test_backoff_doubles_with_each_failure_in_a_row_up_to_the_cap() -> None:
    finished = datetime(2026, 12, 6, 10, 0, tzinfo=UTC)
    waits = [last("RolledBack", n).retry_after(300, 6 * 3600) for n in (1, 2, 3, 10)]
    assert [w - finished for w in waits if w] == [
        timedelta(minutes=5),
        timedelta(minutes=10),
        timedelta(minutes=20),
        timedelta(hours=6),
    ]
    assert last("Succeeded", 0).retry_after(300, 3600) is None
    assert last("RolledBack", 2, rule="source-changed").retry_after(300, 3600) is None


def test_the_last_migration_record_keeps_its_failure_count() -> None:
    record = last("RolledBack", 3)
    again = journals.decode_last(journals.encode_last(record))
    assert again is not None and again.failures == 3
