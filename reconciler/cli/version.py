"""The program's version and its exit-code table as help text.

The version is ``reconciler.__version__`` (kept equal to ``pyproject.toml``'s by
tests/unit/test_manifests.py): ``--version`` prints it, every ``-o json|yaml`` document carries
it (``reconcilerVersion``), the API requests' User-Agent names it, and the image's
``org.opencontainers.image.version`` label is read from ``pyproject.toml`` at build time.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from reconciler import __version__
from reconciler.model.errors import ExitCodeDoc


def version() -> str:
    """This reconciler's version (``0.1.0``)."""
    return __version__


def versioned(document: Mapping[str, Any]) -> dict[str, Any]:
    """``document`` with ``reconcilerVersion`` right after its ``kind``."""
    out: dict[str, Any] = {}
    for key, value in document.items():
        out[key] = value
        if key == "kind":
            out["reconcilerVersion"] = version()
    out.setdefault("reconcilerVersion", version())
    return out


def exit_codes_epilog(table: Sequence[ExitCodeDoc]) -> str:
    """``--help``'s exit-code section, from the one table (``model.errors.EXIT_CODE_TABLE``):
    one line per code, wrapped under its meaning by ``cli.common.HelpFormatter``."""
    lines = ["exit codes:"]
    lines += [f"  {int(row.code)}  {row.meaning}" for row in table]
    return "\n".join(lines) + "\n"
