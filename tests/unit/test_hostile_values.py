"""Values from the cluster that must not crash the run (issue 7, item 5): absurd quantities
are refused by the parser (so the VM is Blocked with source-size-unknown), quickly."""

from __future__ import annotations

import pytest

from reconciler.model.quantity import MAX_BYTES, human_size, parse_quantity


@pytest.mark.parametrize("text", ["1e400", "1e999999999", "8Ei", "9223372036854775808", 2**70])
def test_absurd_quantities_are_refused_quickly(text: str | int) -> None:
    with pytest.raises(ValueError, match="quantity too large"):
        parse_quantity(text)


@pytest.mark.parametrize("value", [float("inf"), float("nan")])
def test_non_finite_numbers_are_not_quantities(value: float) -> None:
    with pytest.raises(ValueError, match="not a quantity"):
        parse_quantity(value)


def test_the_largest_quantity_still_formats() -> None:
    assert parse_quantity("7Ei") < MAX_BYTES
    assert human_size(MAX_BYTES) == "8388608Ti"
