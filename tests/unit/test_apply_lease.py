"""The Lease's rules, without a cluster (``apply.lease``): when another runner's Lease may be
taken over (client-go's leader election: only once ``renewTime + leaseDurationSeconds`` has
passed), and when a renewal finds the Lease is no longer ours."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from reconciler.apply.lease import Holding, held_by_another, holding_of, lost_because

NOW = datetime(2026, 3, 1, 12, 0, 0, tzinfo=UTC)


def spec(holder: str = "other", renewed: datetime | None = NOW, duration: int = 60) -> Any:
    out: dict[str, Any] = {"holderIdentity": holder, "leaseDurationSeconds": duration}
    if renewed is not None:
        out["renewTime"] = renewed.strftime("%Y-%m-%dT%H:%M:%S.%fZ")
    out["leaseTransitions"] = 4
    return out


def test_a_lease_is_read_into_its_holder_expiry_and_transitions() -> None:
    holding = holding_of(spec(renewed=NOW, duration=60))
    assert holding == Holding("other", NOW + timedelta(seconds=60), 4)
    assert holding_of({}) == Holding("", None, 0)
    assert holding_of({"renewTime": "yesterday", "leaseTransitions": "x"}) == Holding("", None, 0)


@pytest.mark.parametrize(
    ("lease", "held"),
    [
        (spec(renewed=NOW - timedelta(seconds=30)), True),  # another's, 30 s left
        (spec(renewed=NOW - timedelta(seconds=59)), True),  # 1 s left
        (spec(renewed=NOW - timedelta(seconds=60)), False),  # expired this very moment
        (spec(renewed=NOW - timedelta(hours=1)), False),  # long expired: taken over
        (spec(holder=""), False),  # released
        (spec(holder="me"), False),  # ours (a restart of this runner): taken again
        (spec(renewed=None), False),  # never renewed: no expiry to wait for
        (spec(renewed=NOW + timedelta(seconds=30), duration=0), True),  # a clock ahead of ours
    ],
)
def test_another_runner_s_lease_is_taken_over_only_once_it_expired(lease: Any, held: bool) -> None:
    assert held_by_another(holding_of(lease), "me", NOW) is held


def test_a_renewal_loses_the_lease_to_another_holder_or_another_acquisition() -> None:
    assert lost_because(Holding("me", None, 4), "me", 4) is None
    assert lost_because(Holding("other", None, 4), "me", 4) == "it is held by other"
    assert lost_because(Holding("", None, 4), "me", 4) == (
        "it is held by nobody (deleted or released)"
    )
    # our name, but taken again since (another process with the same identity)
    assert lost_because(Holding("me", None, 5), "me", 4) == (
        "it was taken again since we acquired it"
    )
