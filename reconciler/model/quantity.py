"""Kubernetes resource quantities <-> bytes.

Plain numbers, decimal exponents (``1e9``), decimal suffixes (n, u, m, k, M, G, T, P, E) and
binary suffixes (Ki .. Ei). Fractions of a byte round up, as the API server does when it
canonicalises a storage request. (The test environment's simulator uses these too.)
"""

from __future__ import annotations

import math
import re
from decimal import Decimal, InvalidOperation

_SUFFIX: dict[str, int | Decimal] = {
    "n": Decimal("1e-9"),
    "u": Decimal("1e-6"),
    "m": Decimal("1e-3"),
    "": 1,
    "k": 10**3,
    "M": 10**6,
    "G": 10**9,
    "T": 10**12,
    "P": 10**15,
    "E": 10**18,
    "Ki": 2**10,
    "Mi": 2**20,
    "Gi": 2**30,
    "Ti": 2**40,
    "Pi": 2**50,
    "Ei": 2**60,
}
MAX_BYTES = 2**63 - 1
"""The largest quantity Kubernetes can use as a number (an int64, ~8 EiB); anything beyond
(``1e400`` is schema-valid and the API server stores it) is refused here, before arithmetic
on it or its formatting can overflow or take forever (``1e999999999`` has a billion digits)."""
_QUANTITY = re.compile(r"^([+]?[0-9.]+(?:[eE][+-]?[0-9]+)?)(Ki|Mi|Gi|Ti|Pi|Ei|n|u|m|k|M|G|T|P|E|)$")


def parse_quantity(value: str | int | float) -> int:
    """Return the number of bytes in ``value`` ("10Gi", "1.5G", "1024", 42).

    Raises ValueError with the offending text when it is not a storage quantity.
    """
    if isinstance(value, bool):
        raise ValueError(f"not a quantity: {value!r}")
    if isinstance(value, int):
        return _bounded(value, value)
    if isinstance(value, float):
        if not math.isfinite(value):
            raise ValueError(f"not a quantity: {value!r}")
        return _bounded(math.ceil(value), value)
    text = str(value).strip()
    match = _QUANTITY.match(text)
    if not match:
        raise ValueError(f"not a quantity: {value!r} (expected e.g. 10Gi, 500M, 1073741824)")
    try:
        number = Decimal(match.group(1))
    except InvalidOperation as exc:
        raise ValueError(f"not a quantity: {value!r}") from exc
    if number.is_finite() and number.adjusted() > 30:  # checked before it becomes an int
        raise ValueError(f"quantity too large: {text[:40]!r} (more than {MAX_BYTES} bytes)")
    return _bounded(math.ceil(number * _SUFFIX[match.group(2)]), value)


def _bounded(size: int, value: object) -> int:
    if size > MAX_BYTES:
        raise ValueError(f"quantity too large: {str(value)[:40]!r} (more than {MAX_BYTES} bytes)")
    return size


def format_quantity(size: int) -> str:
    """The shortest exact binary quantity for ``size`` bytes ("10Gi"), else plain bytes."""
    for suffix in ("Ei", "Pi", "Ti", "Gi", "Mi", "Ki"):
        unit = int(_SUFFIX[suffix])
        if size >= unit and size % unit == 0:
            return f"{size // unit}{suffix}"
    return str(size)


def human_size(size: int | None) -> str:
    """A short, rounded size for tables ("9.5Gi"); "-" when unknown."""
    if size is None:
        return "-"
    for suffix in ("Ti", "Gi", "Mi", "Ki"):
        unit = int(_SUFFIX[suffix])
        if size >= unit:
            scaled = size / unit
            return f"{scaled:.0f}{suffix}" if scaled == int(scaled) else f"{scaled:.1f}{suffix}"
    return f"{size}B"
