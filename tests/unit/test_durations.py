"""The real-engine modules' weights (tests.support.durations) and how tests/conftest.py deals
them out to the engines."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests import conftest
from tests.support import durations

REPORT = """<?xml version="1.0" encoding="utf-8"?>
<testsuites><testsuite name="pytest">
<testcase classname="tests.cluster.test_apply_crash" name="test_a[x]" time="14.0"/>
<testcase classname="tests.cluster.test_apply_crash" name="test_a[y]" time="16.0"/>
<testcase classname="tests.cluster.test_split_brain.TestSomething" name="test_b" time="3.5"/>
<testcase classname="tests.cluster.no_such_module" name="test_c" time="1.0"/>
</testsuite></testsuites>
"""


def test_a_junit_report_gives_each_module_its_mean_seconds_a_test(tmp_path: Path) -> None:
    report = tmp_path / "junit.xml"
    report.write_text(REPORT)
    assert durations.from_junit(report) == {
        "tests/cluster/test_apply_crash.py": 15.0,
        "tests/cluster/test_split_brain.py": 3.5,
    }


def test_a_module_weighs_its_tests_by_its_mean_or_the_default() -> None:
    known = {"tests/cluster/test_apply_crash.py": 15.0}
    assert durations.weight("tests/cluster/test_apply_crash.py", 4, known) == 60.0
    assert durations.weight("tests/cluster/test_new.py", 3, known) == 3 * durations.DEFAULT_SECONDS


def test_the_engines_get_shares_of_about_equal_time(monkeypatch: pytest.MonkeyPatch) -> None:
    known = {"a.py": 10.0, "b.py": 1.0, "c.py": 1.0, "d.py": 5.0}
    monkeypatch.setattr(durations, "load", lambda: known)
    monkeypatch.setattr(conftest, "REAL_ENGINES", 2)
    groups = conftest.real_engine_groups({"a.py": 10, "b.py": 50, "c.py": 40, "d.py": 2})
    # 100 s (a) against 50 + 40 + 10 s: by count, a and d would share an engine with 12 tests
    assert groups["a.py"] != groups["b.py"]
    assert groups["b.py"] == groups["c.py"] == groups["d.py"]
