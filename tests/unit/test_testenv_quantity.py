"""The test environment's quantity parser (testenv/quantity.py) against the product's
(reconciler/model/quantity.py): written apart on purpose, they must agree on every storage
quantity a plan, a claim or a DataVolume can carry, so a bug in one shows as a disagreement
here instead of being shared by the code under test and the environment that judges it."""

from __future__ import annotations

import itertools

import pytest

from reconciler.model.quantity import format_quantity, parse_quantity
from testenv.quantity import to_bytes, to_quantity

NUMBERS = ["0", "1", "7", "10", "1.5", "0.25", ".5", "3.", "11381663335", "+2", "999999"]
SUFFIXES = ["", "Ki", "Mi", "Gi", "Ti", "Pi", "n", "u", "m", "k", "M", "G", "T", "P"]
SUFFIXES += ["e3", "E2", "e-2"]


@pytest.mark.parametrize("suffix", SUFFIXES)
def test_both_parsers_agree_on_every_number_with_every_suffix(suffix: str) -> None:
    for number in NUMBERS:
        text = number + suffix
        try:
            expected = parse_quantity(text)
        except ValueError:  # beyond an int64: both refuse
            with pytest.raises(ValueError):
                to_bytes(text)
            continue
        assert to_bytes(text) == expected, text


def test_known_sizes() -> None:
    assert to_bytes("10Gi") == 10 * 2**30
    assert to_bytes("1.5G") == 1_500_000_000
    assert to_bytes("1E") == 10**18  # a bare E is exa, not an exponent
    assert to_bytes("100m") == 1  # a fraction of a byte rounds up
    assert to_bytes(4096) == 4096


@pytest.mark.parametrize("text", ["", "Gi", "10 Gi", "10GB", "1.2.3", "ten", "10gi", "0x10"])
def test_both_parsers_refuse_what_is_not_a_quantity(text: str) -> None:
    with pytest.raises(ValueError):
        to_bytes(text)
    with pytest.raises(ValueError):
        parse_quantity(text)


def test_both_formatters_agree() -> None:
    sizes = [0, 1, 1000, 1024, 1536, 2**30, 10 * 2**30, 11381663335, 3 * 2**40 + 2**20]
    for size, unit in itertools.product(sizes, [1, 2**10, 2**20]):
        assert to_quantity(size * unit) == format_quantity(size * unit)
        assert to_bytes(to_quantity(size * unit)) == size * unit
