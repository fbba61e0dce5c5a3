"""Kubernetes quantities for the test environment, written apart from the product's.

The node side sizes disks with these; the reconciler under test has its own
parser (``reconciler.model.quantity``). Two readings of the grammar of Kubernetes'
``resource.Quantity`` (apimachinery ``quantity.go``: a signed decimal number, then a binary
suffix ``Ki``..``Ei``, a decimal suffix ``n``..``E`` or an exponent ``e3``/``E-3``) mean a bug in
one is caught by the other instead of being agreed on. Exact arithmetic with fractions; a
fraction of a byte rounds up, as the API server does for a storage request.
"""

from __future__ import annotations

import math
import re
from fractions import Fraction

_BINARY = {"Ki": 10, "Mi": 20, "Gi": 30, "Ti": 40, "Pi": 50, "Ei": 60}  # powers of two
_DECIMAL = {"n": -9, "u": -6, "m": -3, "": 0, "k": 3, "M": 6, "G": 9, "T": 12, "P": 15, "E": 18}
_GRAMMAR = re.compile(
    r"(?P<sign>[+-]?)(?P<number>\d+(?:\.\d*)?|\.\d+)"
    r"(?:(?P<binary>[KMGTPE]i)|[eE](?P<exponent>[+-]?\d{1,2})|(?P<decimal>[numkMGTPE]?))"
)


def to_bytes(value: str | int | float) -> int:
    """Bytes in ``value`` ("10Gi", "1.5G", "5e3", 42), rounded up; ValueError if malformed."""
    if isinstance(value, bool):
        raise ValueError(f"not a Kubernetes quantity: {value!r}")
    if isinstance(value, int | float):
        return math.ceil(value)
    match = _GRAMMAR.fullmatch(str(value).strip())
    if match is None:
        raise ValueError(f"not a Kubernetes quantity: {value!r}")
    number = Fraction(match["number"])
    if match["binary"]:
        number *= 2 ** _BINARY[match["binary"]]
    else:
        power = int(match["exponent"]) if match["exponent"] else _DECIMAL[match["decimal"] or ""]
        number *= Fraction(10) ** power
    if match["sign"] == "-":
        number = -number
    whole = number.numerator // number.denominator
    size = whole if whole == number else whole + 1
    if size >= 2**63:  # Kubernetes reads a quantity as a number only within an int64
        raise ValueError(f"quantity beyond an int64: {str(value)[:40]!r}")
    return size


def to_quantity(size: int) -> str:
    """``size`` bytes as the largest binary suffix that divides it exactly ("10Gi"), or bytes."""
    for suffix, power in sorted(_BINARY.items(), key=lambda item: -item[1]):
        if size and size % 2**power == 0:
            return f"{size >> power}{suffix}"
    return str(size)
