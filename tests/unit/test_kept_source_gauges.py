"""The kept-sources metrics (issue 17 item 5): ``vmsr_kept_sources`` and
``vmsr_kept_source_bytes`` per namespace, counted from the objects carrying the kept-source
label at the end of each apply run (``Reporting.kept_totals``); a namespace that cannot be
listed only warns."""

from __future__ import annotations

from typing import Any, cast

from prometheus_client import generate_latest

from reconciler.kube.client import Cluster
from reconciler.kube.resources import DATA_VOLUMES, Resource
from reconciler.model.errors import ClusterError
from reconciler.model.kept import KeptRecord, encode_record, marked_totals
from reconciler.model.names import KEPT_SOURCE_ANNOTATION, KEPT_SOURCE_LABEL
from reconciler.model.outcome import ApplyReport
from reconciler.publish.metrics import Metrics, RunFacts
from reconciler.publish.reporting import Reporting

GI = 1 << 30
FACTS = RunFacts(finished=100.0, seconds=1.0, succeeded=True, last_success=100.0)


def obj(ns: str, name: str, *, move: str | None = "m1", size: int = 0, claim: str = "") -> Any:
    meta: dict[str, Any] = {"namespace": ns, "name": name, "labels": {}, "annotations": {}}
    if move is not None:
        meta["labels"][KEPT_SOURCE_LABEL] = move
    if size:
        record = KeptRecord(vm="vm1", move=move or "", plan="p", kept="", why="", size_bytes=size)
        meta["annotations"][KEPT_SOURCE_ANNOTATION] = encode_record(record)
    body: dict[str, Any] = {"metadata": meta}
    if claim:
        body["status"] = {"capacity": {"storage": claim}}
    return body


def samples(metrics: Metrics) -> dict[str, float]:
    text = generate_latest(metrics.registry).decode()
    found = {}
    for line in text.splitlines():
        if line.startswith("vmsr_kept_source"):
            key, value = line.rsplit(" ", 1)
            found[key] = float(value)
    return found


def test_marked_totals_count_each_marked_source_once_with_its_size() -> None:
    dvs = [
        obj("a", "root", size=10 * GI),  # a DataVolume: its mark's size ...
        obj("a", "data", size=1 * GI),  # ... unless its claim (CDI copied the label) is listed
        obj("a", "plain", move=None),  # not marked: not counted
        obj("b", "other", size=0),  # a mark with no size: counted, 0 bytes
    ]
    pvcs = [
        obj("a", "data", claim="3Gi"),
        obj("a", "claim", claim="2Gi"),  # a plain PVC source
        obj("a", "unmarked", move=None, claim="5Gi"),
    ]

    assert marked_totals(dvs, pvcs) == {"a": (3, 15 * GI), "b": (1, 0)}
    assert marked_totals([], []) == {}


def test_the_gauges_are_set_per_namespace_and_replaced_by_each_run() -> None:
    metrics = Metrics()

    metrics.record(ApplyReport(), FACTS, {"a": (3, 15 * GI), "b": (0, 0)})
    first = samples(metrics)
    metrics.record(ApplyReport(), FACTS, {"b": (1, GI)})
    second = samples(metrics)
    metrics.record(None, FACTS)
    third = samples(metrics)

    assert first == {
        'vmsr_kept_sources{namespace="a"}': 3,
        'vmsr_kept_sources{namespace="b"}': 0,
        'vmsr_kept_source_bytes{namespace="a"}': 15 * GI,
        'vmsr_kept_source_bytes{namespace="b"}': 0,
    }
    assert second == {
        'vmsr_kept_sources{namespace="b"}': 1,
        'vmsr_kept_source_bytes{namespace="b"}': GI,
    }, "a namespace of an earlier run does not linger"
    assert third == {}, "not counted: no series"


class FakeCluster:
    """``list_objects`` only: the marked objects of each namespace; ``broken`` refuses."""

    def __init__(self, objects: dict[tuple[str, str], list[Any]], broken: str = "") -> None:
        self.objects = objects
        self.broken = broken
        self.lists: list[tuple[str, str | None, str | None]] = []

    def list_objects(
        self,
        resource: Resource,
        namespace: str | None = None,
        *,
        missing_ok: bool = False,
        label_selector: str | None = None,
    ) -> list[Any]:
        self.lists.append((resource.plural, namespace, label_selector))
        if namespace == self.broken:
            raise ClusterError(f"{resource.plural} in {namespace}", "403 Forbidden", code=403)
        return self.objects.get((resource.plural, str(namespace)), [])


def test_reporting_lists_each_namespace_once_per_kind_and_a_refusal_only_warns() -> None:
    fake = FakeCluster(
        {
            (DATA_VOLUMES.plural, "a"): [obj("a", "root", size=10 * GI)],
            ("persistentvolumeclaims", "a"): [obj("a", "claim", claim="2Gi")],
        },
        broken="denied",
    )
    warnings: list[str] = []
    reporting = Reporting(
        cast(Cluster, fake),
        run_id="r1",
        holder="h",
        status_namespace="vmsr",
        warn=warnings.append,
    )

    totals = reporting.kept_totals(["empty", "a", "denied", "a"])

    assert totals == {"a": (2, 12 * GI), "empty": (0, 0)}
    expected = [
        (plural, ns, KEPT_SOURCE_LABEL)
        for ns in ("a", "empty")
        for plural in ("datavolumes", "persistentvolumeclaims")
    ]
    assert sorted(fake.lists) == sorted([*expected, ("datavolumes", "denied", KEPT_SOURCE_LABEL)])
    assert len(warnings) == 1 and "kept sources in denied not counted" in warnings[0], warnings
