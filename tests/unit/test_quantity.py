"""Storage quantities: parse what the API server accepts, format what it would echo."""

import pytest

from reconciler.model.quantity import format_quantity, human_size, parse_quantity


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("10Gi", 10 * 2**30),
        ("1Ki", 1024),
        ("500M", 500_000_000),
        ("1.5Gi", 3 * 2**29),
        ("1e3", 1000),
        ("1073741824", 2**30),
        (42, 42),
        ("0.5", 1),  # fractions of a byte round up, as the API server does
        ("1500m", 2),
        (2.5, 3),
    ],
)
def test_parse_quantity_reads_storage_sizes(text: str | int, expected: int) -> None:
    assert parse_quantity(text) == expected


@pytest.mark.parametrize("text", ["", "ten", "10GB", "-1Gi", "1.2.3", True])
def test_parse_quantity_rejects_non_quantities(text: object) -> None:
    with pytest.raises(ValueError, match="not a quantity"):
        parse_quantity(text)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("size", "text"),
    [(10 * 2**30, "10Gi"), (2**20 * 3, "3Mi"), (1000, "1000"), (2**40, "1Ti"), (1536, "1536")],
)
def test_format_quantity_is_exact_and_short(size: int, text: str) -> None:
    assert format_quantity(size) == text
    assert parse_quantity(format_quantity(size)) == size


def test_human_size_rounds_for_tables() -> None:
    assert human_size(None) == "-"
    assert human_size(10 * 2**30) == "10Gi"
    assert human_size(int(9.5 * 2**30)) == "9.5Gi"
    assert human_size(12) == "12B"
