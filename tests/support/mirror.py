"""Run a tests/cluster module's tests again elsewhere (tests/real: on the real engine).

``mirror(module, leave_out)`` returns the module's test functions and fixtures, to put into
the mirroring module's namespace, where pytest collects them with that directory's fixtures
(tests/real/conftest.py's ``control_plane``, ``api``, ``sim``). Tests that cannot run there
are left out by name, each with the reason; a name that is not a test of the module is an
error, so the list cannot go stale silently.

A mirrored test runs where it is mirrored *instead of* where it is written: ``MIRRORED``
records it, and tests/conftest.py deselects the original when both are collected (the
simulator run would repeat what the real engine proved). Run only tests/cluster to run
the originals on the simulator."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from types import ModuleType
from typing import Any

from _pytest.fixtures import FixtureFunctionDefinition

MIRRORED: set[tuple[Path, str]] = set()
"""(file, test name) of every test some module mirrors: by file, since pytest imports the
original under another module name than ``tests.cluster...``."""


def mirror(module: ModuleType, leave_out: Mapping[str, str]) -> dict[str, Any]:
    """The tests (but ``leave_out``'s) and fixtures of ``module``, by name."""
    tests = {n: v for n, v in vars(module).items() if n.startswith("test_") and callable(v)}
    unknown = sorted(set(leave_out) - set(tests))
    if unknown:
        raise ValueError(f"{module.__name__} has no tests {unknown} to leave out")
    missing = [n for n, reason in leave_out.items() if not reason.strip()]
    if missing:
        raise ValueError(f"say why {missing} cannot run here")
    fixtures = {n: v for n, v in vars(module).items() if isinstance(v, FixtureFunctionDefinition)}
    chosen = {n: v for n, v in tests.items() if n not in leave_out}
    where = Path(str(module.__file__)).resolve()
    MIRRORED.update((where, name) for name in chosen)
    return {**fixtures, **chosen}
