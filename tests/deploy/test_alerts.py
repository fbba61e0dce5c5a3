"""The alerts of deploy/components/monitoring, checked and unit-tested with Prometheus's own
promtool (built from the Go module proxy into the cache, like the control plane):

- `promtool check rules` on the PrometheusRule's spec (the same format as a rule file);
- `promtool test rules` on tests/deploy/alerts-test.yaml: every alert fires where it should, with
  its labels and annotations as rendered, and stays quiet where it should not;
- every metric the rules read is one the reconciler exports (``publish.metrics``), so no alert
  waits for a series that never comes.
"""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

from reconciler.publish.metrics import Metrics
from testenv.binaries import ensure_promtool

ROOT = Path(__file__).resolve().parents[2]
RULE = ROOT / "deploy/components/monitoring/prometheusrule.yaml"
TESTS = Path(__file__).with_name("alerts-test.yaml")


@pytest.fixture(scope="module")
def promtool() -> Path:
    try:
        return ensure_promtool(log=lambda message: print(message, file=sys.stderr))
    except Exception as error:  # a missing Go or a failed build fails the tests, with why
        pytest.fail(f"promtool could not be built: {error}", pytrace=False)


def rules() -> dict[str, Any]:
    doc = yaml.safe_load(RULE.read_text())
    assert (doc["apiVersion"], doc["kind"]) == ("monitoring.coreos.com/v1", "PrometheusRule")
    spec: dict[str, Any] = doc["spec"]
    return spec


def alerts() -> list[dict[str, Any]]:
    return [rule for group in rules()["groups"] for rule in group["rules"] if "alert" in rule]


@pytest.fixture
def rule_dir(tmp_path: Path) -> Path:
    """rules.yaml (the PrometheusRule's spec) and the unit tests side by side."""
    (tmp_path / "rules.yaml").write_text(yaml.safe_dump(rules(), sort_keys=False))
    shutil.copy(TESTS, tmp_path / TESTS.name)
    return tmp_path


def promtool_run(promtool: Path, *args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(promtool), *args], cwd=cwd, capture_output=True, text=True, timeout=120, check=False
    )


def test_promtool_checks_the_rules(promtool: Path, rule_dir: Path) -> None:
    done = promtool_run(promtool, "check", "rules", "rules.yaml", cwd=rule_dir)
    assert done.returncode == 0, done.stdout + done.stderr
    assert f"SUCCESS: {len(alerts())} rules found" in done.stdout, done.stdout


def test_promtool_unit_tests_pass(promtool: Path, rule_dir: Path) -> None:
    done = promtool_run(promtool, "test", "rules", TESTS.name, cwd=rule_dir)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "SUCCESS" in done.stdout, done.stdout


def test_the_unit_tests_can_fail(promtool: Path, rule_dir: Path) -> None:
    """A rule that no longer fires where its test says it does fails the test run."""
    broken = rules()
    for group in broken["groups"]:
        for rule in group["rules"]:
            if rule.get("alert") == "VMStorageVMBlocked":
                rule["for"] = "48h"
    (rule_dir / "rules.yaml").write_text(yaml.safe_dump(broken, sort_keys=False))
    done = promtool_run(promtool, "test", "rules", TESTS.name, cwd=rule_dir)
    assert done.returncode != 0 and "VMStorageVMBlocked" in done.stdout + done.stderr


def test_every_alert_is_tested_firing_and_quiet() -> None:
    cases = [case for test in yaml.safe_load(TESTS.read_text())["tests"]
             for case in test.get("alert_rule_test", [])]  # fmt: skip
    for alert in alerts():
        name = alert["alert"]
        mine = [c for c in cases if c["alertname"] == name]
        assert any(c.get("exp_alerts") for c in mine), f"{name}: no test where it fires"
        assert any(not c.get("exp_alerts") for c in mine), f"{name}: no test where it is quiet"
        assert alert["labels"]["severity"] in ("warning", "critical"), name
        assert {"summary", "description"} <= set(alert["annotations"]), name


def test_the_alerts_read_only_metrics_the_reconciler_exports() -> None:
    exported = {family.name for family in Metrics().registry.collect()}
    for alert in alerts():
        used = set(re.findall(r"\bvmsr_[a-z_]+", alert["expr"]))
        assert used, alert["alert"]
        assert used <= exported, f"{alert['alert']} reads {used - exported}, never exported"
