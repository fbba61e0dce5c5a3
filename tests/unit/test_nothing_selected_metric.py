"""The metric for plans that select nothing (issue 18 item 2): one series per such plan, with
the rule that says why, replaced by every run."""

from __future__ import annotations

from prometheus_client import generate_latest

from reconciler.model.outcome import ApplyReport
from reconciler.model.verdict import Effect, EmptyPlan, Finding
from reconciler.publish.metrics import Metrics, RunFacts

TYPO = EmptyPlan(
    "mig-vmm", "fedora-to-ceph", Finding("namespace-not-found", Effect.NOTHING_SELECTED, None, "")
)
SERIES = (
    'vmsr_plans_selecting_nothing{namespace="mig-vmm",plan="fedora-to-ceph",'
    'rule="namespace-not-found"} 1.0'
)


def test_each_plan_that_selected_nothing_is_a_series_until_a_run_without_it() -> None:
    metrics = Metrics()
    metrics.record(ApplyReport(empty_plans=(TYPO,)), RunFacts(1.0, 1.0, True, 1.0))
    assert SERIES in generate_latest(metrics.registry).decode().splitlines()
    metrics.record(ApplyReport(), RunFacts(2.0, 1.0, True, 2.0))
    assert "vmsr_plans_selecting_nothing{" not in generate_latest(metrics.registry).decode()
