"""How long each real-engine module's tests take, for dealing them out to the engines.

``tests/durations.json`` maps a test module (its path under the repository) to the mean
seconds of one of its tests on the real engine, as measured in a whole ``make test``;
tests/conftest.py weighs each module's selected tests by it, so the engines' shares end
close together (a crash case takes ~15 s, a plan case under one). A module missing from
the file weighs ``DEFAULT_SECONDS`` a test. Refresh it from a run's JUnit report::

    .venv/bin/pytest -q -n 3 --dist loadgroup --junitxml=/tmp/junit.xml
    .venv/bin/python -m tests.support.durations /tmp/junit.xml
"""

from __future__ import annotations

import json
import sys
from collections import defaultdict
from pathlib import Path
from xml.etree import ElementTree

ROOT = Path(__file__).resolve().parents[2]
FILE = ROOT / "tests" / "durations.json"
DEFAULT_SECONDS = 10.0


def load(path: Path = FILE) -> dict[str, float]:
    """Module path -> mean seconds a test; empty when the file is missing."""
    if not path.exists():
        return {}
    data = json.loads(path.read_text())
    return {str(module): float(seconds) for module, seconds in data.items()}


def weight(module: str, tests: int, known: dict[str, float]) -> float:
    """The seconds ``tests`` tests of ``module`` (a path under the repository) should take."""
    return tests * known.get(module, DEFAULT_SECONDS)


def from_junit(report: Path) -> dict[str, float]:
    """Mean seconds a test per module of tests/cluster, tests/env and tests/deploy, from a
    JUnit report (``classname`` is the dotted module, then the class if any)."""
    totals: dict[str, list[float]] = defaultdict(list)
    for case in ElementTree.parse(report).getroot().iter("testcase"):
        parts = case.get("classname", "").split(".")
        for end in range(len(parts), 0, -1):
            candidate = "/".join(parts[:end]) + ".py"
            if (ROOT / candidate).exists():
                totals[candidate].append(float(case.get("time", "0")))
                break
    return {m: round(sum(t) / len(t), 2) for m, t in sorted(totals.items()) if t}


def main(argv: list[str]) -> int:
    if len(argv) != 1:
        print("usage: python -m tests.support.durations JUNIT_XML", file=sys.stderr)
        return 2
    measured = from_junit(Path(argv[0]))
    FILE.write_text(json.dumps(measured, indent=1, sort_keys=True) + "\n")
    print(f"{FILE.relative_to(ROOT)}: {len(measured)} modules")
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
