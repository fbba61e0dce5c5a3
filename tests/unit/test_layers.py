"""The architecture, checked: a pure core, a thin I/O edge, and no test code in the product."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[2] / "reconciler"
EDGE = {"kube", "cli", "__main__"}  # may talk to the cluster (observe.fetch goes through kube)
IO_MODULES = ("pykube", "requests", "urllib3", "socket", "subprocess")


def imports(path: Path) -> set[str]:
    """Every module ``path`` imports, and for ``from a import b`` also ``a.b``."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module:
            found.add(node.module)
            found |= {f"{node.module}.{alias.name}" for alias in node.names}
    return found


MODULES = sorted(PACKAGE.glob("*.py"))


@pytest.mark.parametrize("module", MODULES, ids=lambda p: p.stem)
def test_the_product_never_imports_the_test_environment(module: Path) -> None:
    assert not any(name.split(".")[0] == "testenv" for name in imports(module))


@pytest.mark.parametrize("module", [m for m in MODULES if m.stem not in EDGE | {"observe"}],
                         ids=lambda p: p.stem)
def test_the_core_does_no_io(module: Path) -> None:
    offending = {n for n in imports(module) if n.split(".")[0] in IO_MODULES}
    assert not offending, f"{module.name} imports {offending}: I/O belongs in kube.py"


def test_observe_reaches_the_cluster_only_through_kube() -> None:
    names = imports(PACKAGE / "observe.py")
    assert not {n for n in names if n.split(".")[0] in IO_MODULES}
    assert "reconciler.kube" in names
