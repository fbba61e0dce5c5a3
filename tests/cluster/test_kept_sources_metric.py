"""The kept-sources gauges against a real API server (issue 17 item 5): an apply run whose move
keeps its source (retention Keep) ends with ``vmsr_kept_sources`` and
``vmsr_kept_source_bytes`` of the plan's namespace counting it, from one LIST per kind with the
kept-source label's selector."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pykube
import pytest
from prometheus_client import generate_latest

from reconciler import engine
from reconciler.model.outcome import SUCCEEDED
from reconciler.publish.metrics import Metrics
from testenv.controlplane import ControlPlane
from tests.cluster.test_apply import cluster_objects
from tests.cluster.test_plan import plan_file
from tests.support.kube import Eventually
from tests.support.moves import Disk, Moves, moves_ctx
from tests.support.node_faults import NodeSide

__all__ = ["cluster_objects"]  # the module fixture that seeds the classes and the KubeVirt CR

TO_CEPH = "storageClass: ceph-rbd\nvirtualMachines:\n  - name: vm1\n"


@pytest.fixture
def ctx(
    api: pykube.HTTPClient,
    control_plane: ControlPlane,
    namespace: str,
    tmp_path: Path,
    eventually: Eventually,
    capsys: pytest.CaptureFixture[str],
    node_side: NodeSide,
) -> Iterator[Moves]:
    with moves_ctx(api, control_plane, namespace, tmp_path, eventually, capsys, node_side) as moves:
        yield moves


def kept_samples(metrics: Metrics) -> dict[str, float]:
    found = {}
    for line in generate_latest(metrics.registry).decode().splitlines():
        if line.startswith("vmsr_kept_source"):
            key, value = line.rsplit(" ", 1)
            found[key] = float(value)
    return found


def test_an_apply_run_that_keeps_a_source_sets_the_kept_sources_gauge(ctx: Moves) -> None:
    ctx.make("vm1", [Disk("data", "pvc", "vm1-data")], running=False)
    metrics = Metrics()
    plan = plan_file(ctx.tmp_path, ctx.ns, TO_CEPH, name="to-ceph")

    report = engine.apply(
        [plan],
        kubeconfig=str(ctx.control_plane.kubeconfig),
        lease_namespace=ctx.lease_ns,
        metrics=metrics,
    )

    assert [o.result for o in report.outcomes] == [SUCCEEDED], report.outcomes
    assert ctx.last("vm1")["sourcesKept"] == {"vm1-data": "retention Keep"}
    got = kept_samples(metrics)
    assert got[f'vmsr_kept_sources{{namespace="{ctx.ns}"}}'] == 1, got
    size = got[f'vmsr_kept_source_bytes{{namespace="{ctx.ns}"}}']
    assert 2 << 30 <= size < 3 << 30, got  # the kept 2Gi PVC's capacity
    assert set(got) == {
        f'vmsr_kept_sources{{namespace="{ctx.ns}"}}',
        f'vmsr_kept_source_bytes{{namespace="{ctx.ns}"}}',
    }, "only the plan's namespace is counted"
