"""What `apply` tells the world, against the real API server, the simulator and a real
Pushgateway: Events on each VM (success, rollback, blocked), the status ConfigMap, the metrics
in the Pushgateway (read back through its HTTP API) and JSON log lines.

Each test runs `apply` in-process as admin (``Apply`` from test_apply) with its own Lease
namespace (the status ConfigMap lives there) and its own Pushgateway job.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import pykube
import pytest

from reconciler.kube.client import Cluster
from reconciler.model.outcome import ApplyReport, Outcome
from reconciler.publish.reporting import Reporting
from reconciler.publish.status import STATUS_NAME
from testenv.pushgateway import Pushgateway
from tests.cluster.test_apply import Apply, cluster_objects, ctx, volume_claim
from tests.cluster.test_plan import _merge, fedora
from tests.support.kube import get_json

__all__ = ["cluster_objects", "ctx"]  # fixtures, imported for pytest
pytestmark = pytest.mark.usefixtures("sim")

KV = "kubevirt.io/v1"
FAULT = "sim.vmstorage.dev/fault"


@pytest.fixture(scope="module")
def gateway() -> Iterator[Pushgateway]:
    with Pushgateway(log=lambda _line: None) as running:
        yield running


def events(ctx: Apply, name: str = "vm-fedora") -> list[dict[str, Any]]:
    """Our Events about VM ``name``, oldest first."""
    items = get_json(ctx.api, "events.k8s.io/v1", ctx.ns, "events")["items"]
    ours = [
        e
        for e in items
        if e.get("reportingController") == "vm-storage-reconciler"
        and e["regarding"]["name"] == name
    ]
    return sorted(ours, key=lambda e: (e["eventTime"], e["metadata"]["creationTimestamp"]))


def status(ctx: Apply) -> tuple[dict[str, str], dict[str, Any]]:
    data = get_json(ctx.api, "v1", ctx.lease_ns, f"configmaps/{STATUS_NAME}")["data"]
    return data, json.loads(data["report.json"])


def json_lines(err: str) -> list[dict[str, Any]]:
    lines = [line for line in err.splitlines() if line.strip()]
    parsed = [json.loads(line) for line in lines]  # every line is one JSON object
    assert parsed
    return parsed


def job_of(ctx: Apply) -> str:
    return f"vmsr-{ctx.ns}"


def pushed(gateway: Pushgateway, job: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    return {
        (name, tuple(sorted(labels.items()))): value
        for name, series in gateway.samples(job).items()
        for labels, value in series
    }


def test_a_live_move_is_told_in_events_status_metrics_and_json_logs(
    ctx: Apply, gateway: Pushgateway
) -> None:
    ctx.settle(fedora(ctx.ns))
    uid = ctx.vm()["metadata"]["uid"]
    began = time.time()

    rc, report, err = ctx.apply(
        "--pushgateway", gateway.url, "--pushgateway-job", job_of(ctx), "--log-format", "json"
    )

    assert rc == 0, err
    (outcome,) = report["outcomes"]
    move = outcome["migrationId"]
    target = volume_claim(ctx.vm())

    # Events: started, the milestones, succeeded; all about this VM (its uid), all Normal.
    told = events(ctx)
    assert [e["reason"] for e in told] == [
        "MoveStarted",
        "TargetsReady",
        "VolumesSwapped",
        "MigrationSucceeded",
        "MoveVerified",
        "MoveSucceeded",
    ]
    for event in told:
        assert event["regarding"]["uid"] == uid
        assert (event["type"], event["action"]) == ("Normal", "Move")
        assert event["metadata"]["labels"]["vmstorage.dev/migration"] == move
        assert event["reportingInstance"] and len(event["note"].encode()) <= 1024
    assert (
        f"datavolumedisk1 vm-fedora-disk -> {target} (local-hostpath -> ceph-rbd)"
        in (told[0]["note"])
    )
    # what `kubectl describe vm` asks for (core/v1 Events with the VM's involvedObject uid)
    core = ctx.api.get(
        version="v1",
        namespace=ctx.ns,
        url="events",
        params={
            "fieldSelector": "involvedObject.kind=VirtualMachine,"
            f"involvedObject.name=vm-fedora,involvedObject.uid={uid}"
        },
    ).json()["items"]
    assert {e["reason"] for e in core} >= {"MoveStarted", "MoveSucceeded"}

    # The status ConfigMap: the run and its report, per VM with duration and steps.
    data, doc = status(ctx)
    run_id = told[0]["metadata"]["labels"]["vmstorage.dev/run"]
    assert (data["result"], data["runId"], doc["runId"]) == ("Succeeded", run_id, run_id)
    assert data["lastSuccess"] == doc["lastSuccess"] == doc["finishedAt"]
    (done,) = doc["report"]["outcomes"]
    assert (done["name"], done["result"], done["flow"], done["migrationId"]) == (
        "vm-fedora",
        "Succeeded",
        "live",
        move,
    )
    assert done["seconds"] > 0 and [s["step"] for s in done["steps"]][:2] == [
        "create-targets",
        "wait-targets",
    ]

    # The Pushgateway, as its API shows the push.
    got = pushed(gateway, job_of(ctx))
    assert got[("vmsr_run_migrations", (("flow", "live"), ("result", "Succeeded")))] == 1
    assert got[("vmsr_run_migrations", (("flow", "live"), ("result", "RolledBack")))] == 0
    duration = (
        "vmsr_vm_move_duration_seconds",
        (("flow", "live"), ("namespace", ctx.ns), ("result", "Succeeded"), ("vm", "vm-fedora")),
    )
    assert 0 < got[duration] < 60
    assert got[("vmsr_last_run_success", ())] == 1
    assert began <= got[("vmsr_last_success_timestamp_seconds", ())] <= time.time()
    assert not [k for k in got if k[0] == "vmsr_volumes_out_of_sync"], "nothing out of sync"

    # JSON logs: one object per line, the run id on each, fields on the move's lines.
    lines = json_lines(err)
    assert {line["runId"] for line in lines} == {run_id}
    about = [line for line in lines if line["vm"] == "vm-fedora"]
    assert {line["migrationId"] for line in about if line["step"]} == {move}
    assert {line["namespace"] for line in about} == {ctx.ns}
    steps = {line["step"] for line in about}
    assert {"create-targets", "wait-migration", "verify"} <= steps
    created = [line for line in about if line["msg"].endswith(f"created DataVolume {target}")]
    assert [line["volume"] for line in created] == ["datavolumedisk1"]
    assert all(line["level"] == "info" for line in lines)


def test_a_rollback_warns_on_the_vm_and_fails_the_run_in_status_and_metrics(
    ctx: Apply, gateway: Pushgateway
) -> None:
    ctx.settle(fedora(ctx.ns))
    _merge(
        ctx.api,
        KV,
        ctx.ns,
        "virtualmachines/vm-fedora",
        {"metadata": {"annotations": {FAULT: "fail"}}},
    )

    rc, report, err = ctx.apply(
        "--max-migration-attempts",
        "1",
        "--pushgateway",
        gateway.url,
        "--pushgateway-job",
        job_of(ctx),
    )

    assert rc == 3, err
    (outcome,) = report["outcomes"]
    assert (outcome["result"], outcome["rule"]) == ("RolledBack", "migration-failed")
    told = events(ctx)
    reasons = [e["reason"] for e in told]
    assert reasons[:3] == ["MoveStarted", "TargetsReady", "VolumesSwapped"]
    assert reasons[-2:] == ["VolumesReverted", "MoveRolledBack"]
    assert "MoveSucceeded" not in reasons and "MigrationSucceeded" not in reasons
    for event in told[-2:]:
        assert (event["type"], event["action"]) == ("Warning", "Rollback")
        assert event["metadata"]["labels"]["vmstorage.dev/rule"] == "migration-failed"
        assert "[migration-failed]" in event["note"]
        assert outcome["reason"][:60] in event["note"]

    data, doc = status(ctx)
    assert (data["result"], data["lastSuccess"]) == ("VMFailed", "")
    assert doc["report"]["outcomes"][0]["rule"] == "migration-failed"
    got = pushed(gateway, job_of(ctx))
    assert got[("vmsr_run_migrations", (("flow", "live"), ("result", "RolledBack")))] == 1
    assert got[("vmsr_last_run_success", ())] == 0
    assert got[("vmsr_last_success_timestamp_seconds", ())] == 0, "never succeeded here"
    out_of_sync = (
        "vmsr_volumes_out_of_sync",
        (("from_class", "local-hostpath"), ("namespace", ctx.ns), ("to_class", "ceph-rbd")),
    )
    assert got[out_of_sync] == 1, "the volume is still to move"


def test_a_blocked_vm_has_one_event_counted_across_runs(ctx: Apply, gateway: Pushgateway) -> None:
    vm = fedora(ctx.ns)
    vm["spec"]["template"]["spec"]["domain"]["devices"]["disks"][0]["shareable"] = True
    ctx.settle(vm)

    for _ in range(2):
        rc, report, err = ctx.apply("--pushgateway", gateway.url, "--pushgateway-job", job_of(ctx))
        assert rc == 0 and report["outcomes"] == [], err  # blocked: reported, not failed

    (event,) = events(ctx)
    assert (event["reason"], event["type"], event["action"]) == ("MoveBlocked", "Warning", "Judge")
    assert event["metadata"]["labels"]["vmstorage.dev/rule"] == "stop-not-allowed"
    assert event["metadata"]["annotations"]["vmstorage.dev/rules"] == (
        "stop-not-allowed,shareable-disk"
    )
    assert "[stop-not-allowed]" in event["note"] and "[shareable-disk]" in event["note"]
    assert event["series"]["count"] == 2, "the second run counted, not a second Event"
    data, doc = status(ctx)
    assert data["result"] == "Succeeded", "a blocked VM is not a failed run"
    (blocked,) = doc["report"]["blocked"]
    assert {r["rule"] for r in blocked["reasons"]} >= {"stop-not-allowed", "shareable-disk"}
    got = pushed(gateway, job_of(ctx))
    for rule in ("stop-not-allowed", "shareable-disk"):
        assert got[("vmsr_blocked_vms", (("namespace", ctx.ns), ("rule", rule)))] == 1


def test_the_last_success_survives_a_run_that_fails(
    api: pykube.HTTPClient, namespace: str, gateway: Pushgateway
) -> None:
    cluster = Cluster(api)
    clock = [datetime(2026, 5, 1, 3, 0, tzinfo=UTC)]
    job = f"vmsr-{namespace}"

    def run(report: ApplyReport | None, error: str = "") -> None:
        reporting = Reporting(
            cluster,
            run_id=f"run-{len(clock)}",
            holder="test",
            status_namespace=namespace,
            pushgateway=gateway.url,
            job=job,
            now=lambda: clock[-1],
        )
        reporting.finish(report, error)
        clock.append(clock[-1] + timedelta(minutes=15))

    run(ApplyReport(outcomes=(Outcome("m1", "ns/p", "live", "Succeeded", namespace="ns", vm="a"),)))
    first = clock[0]
    run(None, error="ClusterError: the API server went away")

    data = get_json(api, "v1", namespace, f"configmaps/{STATUS_NAME}")["data"]
    assert (data["result"], data["runId"]) == ("Error", "run-2")
    assert data["lastSuccess"] == first.isoformat(timespec="seconds")
    assert json.loads(data["report.json"])["error"] == "ClusterError: the API server went away"
    got = pushed(gateway, job)
    assert got[("vmsr_last_success_timestamp_seconds", ())] == first.timestamp()
    assert got[("vmsr_last_run_success", ())] == 0
    assert got[("vmsr_last_run_timestamp_seconds", ())] == clock[1].timestamp()
    assert not [k for k in got if k[0] == "vmsr_run_migrations"], "the push replaced the group"


def test_an_unreachable_pushgateway_is_a_warning_not_a_failed_run(
    api: pykube.HTTPClient, namespace: str
) -> None:
    warnings: list[str] = []
    reporting = Reporting(
        Cluster(api),
        run_id="r",
        holder="test",
        status_namespace=namespace,
        pushgateway="http://127.0.0.1:9",  # discard port: nothing listens
        warn=warnings.append,
    )

    reporting.finish(ApplyReport())

    (warning,) = warnings
    assert warning.startswith("warning: metrics not pushed to http://127.0.0.1:9")
    data = get_json(api, "v1", namespace, f"configmaps/{STATUS_NAME}")["data"]
    assert data["result"] == "Succeeded", "the status is written all the same"
