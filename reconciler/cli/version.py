"""The program's version and its exit-code table as help text.

The version is the installed distribution's (``importlib.metadata``): ``--version`` prints it,
every ``-o json|yaml`` document carries it (``reconcilerVersion``), and the image's
``org.opencontainers.image.version`` label is built from the same ``pyproject.toml``.
"""

from __future__ import annotations

import textwrap
from collections.abc import Mapping, Sequence
from importlib import metadata
from typing import Any

from reconciler.model.errors import ExitCodeDoc

DISTRIBUTION = "vm-storage-reconciler"


def version() -> str:
    """The installed version (``0.1.0``), or ``unknown`` when run from a bare source tree."""
    try:
        return metadata.version(DISTRIBUTION)
    except metadata.PackageNotFoundError:
        return "unknown"


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
    """``--help``'s exit-code section, from the one table (``model.errors.EXIT_CODE_TABLE``)."""
    lines = ["exit codes:"]
    for row in table:
        wrapped = textwrap.wrap(row.meaning, width=88)
        lines.append(f"  {int(row.code)}  {wrapped[0]}")
        lines.extend(f"     {more}" for more in wrapped[1:])
    return "\n".join(lines) + "\n"
