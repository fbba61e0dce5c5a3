"""What `apply` tells the world, on the real engine (upstream KubeVirt and CDI) with a real
Pushgateway: Events on each VM (success, rollback, blocked), the status ConfigMap, the metrics
in the Pushgateway (read back through its HTTP API) and JSON log lines.

Issue 14: a report just over the old size check is written (trimmed, and saying so) where the
API server refused it before; a Pushgateway behind basic auth (the real one, with a web
config) gets the metrics from ``--pushgateway-auth-file`` or the URL's userinfo, and no
credential is ever printed.

Each test runs `apply` in-process as admin (``Apply`` from test_apply) with its own Lease
namespace (the status ConfigMap lives there) and its own Pushgateway job.
"""

from __future__ import annotations

import json
import socket
import subprocess
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pykube
import pytest
import requests

from reconciler.kube.client import Cluster
from reconciler.model.errors import ClusterError
from reconciler.model.journal import Flow
from reconciler.model.outcome import SUCCEEDED, ApplyReport, Outcome
from reconciler.model.verdict import Action, Effect, Finding, VMVerdict, VolumeVerdict
from reconciler.publish import status as status_module
from reconciler.publish.reporting import Reporting
from reconciler.publish.status import STATUS_NAME, status_document, write_status
from testenv.binaries import ensure_pushgateway
from testenv.pushgateway import Pushgateway
from tests.cluster.test_apply import Apply, cluster_objects, ctx, volume_claim
from tests.cluster.test_plan import _merge, fedora
from tests.support.kube import get_json

__all__ = ["cluster_objects", "ctx"]  # fixtures, imported for pytest

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

    moved = Outcome("m1", "ns/p", Flow.LIVE, SUCCEEDED, namespace="ns", vm="a")
    run(ApplyReport(outcomes=(moved,)))
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


# -- issue 14, item 12: the status ConfigMap is measured as it is stored -----------------------


def blocked_vm(name: str) -> VMVerdict:
    findings = (
        Finding("gitops-managed", Effect.BLOCK, None, "owned by Argo CD: " + "x" * 60),
        Finding("a-note", Effect.NOTE, None, "just so you know"),
    )
    return VMVerdict(
        namespace="ns",
        name=name,
        plan="move",
        action=Action.BLOCKED,
        volumes=(VolumeVerdict("disk", "d2", "old", "new", Action.BLOCKED),),
        findings=findings,
    )


def test_a_report_just_over_the_old_size_check_is_written_trimmed(
    api: pykube.HTTPClient, namespace: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The old check let through a report of up to 900,000 bytes of compact JSON; stored
    indented, one of 896-900 KB is over the API server's 1 MiB: refused (422), nothing
    written. Now the stored bytes are measured: it is written, trimmed, and says so."""
    cluster = Cluster(api)
    report = ApplyReport(verdicts=tuple(blocked_vm(f"vm-{i:05}") for i in range(1700)))
    started = datetime(2026, 5, 1, 3, 0, tzinfo=UTC)

    def untrimmed(holder: str) -> dict[str, Any]:
        with monkeypatch.context() as patched:
            patched.setattr(status_module, "_bounded", lambda doc: doc)
            return status_document(
                report, run_id="r", holder=holder, started=started, finished=started
            )

    holder = "h" * (898_000 - len(json.dumps(untrimmed("")).encode()))
    whole = untrimmed(holder)
    assert 896_000 < len(json.dumps(whole).encode()) <= 900_000, "between ~896 and 900 KB"
    with pytest.raises(ClusterError) as refused:  # the API server's own limit, for real
        write_status(cluster, namespace, whole)
    assert refused.value.code == 422
    warnings: list[str] = []

    Reporting(
        cluster,
        run_id="r",
        holder=holder,
        status_namespace=namespace,
        now=lambda: started,
        warn=warnings.append,
    ).finish(report)

    assert warnings == [], "the status ConfigMap was written"
    data = get_json(api, "v1", namespace, f"configmaps/{STATUS_NAME}")["data"]
    assert sum(len(v.encode()) for v in data.values()) <= 1024 * 1024
    doc = json.loads(data["report.json"])
    assert (doc["holder"], doc["result"]) == (holder, "Succeeded")
    assert (doc["report"]["truncated"], doc["report"]["trimmed"]) == (True, ["blocked"])
    assert doc["report"]["blocked"] == {"vms": 1700, "byRule": {"gitops-managed": 1700}}
    assert doc["report"]["summary"]["blocked"] == 1700


# -- issue 14, item 11: the Pushgateway's credentials ----------------------------------------

PUSHER, PUSH_PASSWORD = "pusher", "push/p@ss word"
PUSH_HASH = "$2b$04$qX.Gq00ZThJIR8JXwC5w6e/9CauGXWhEDXFYY1lAPYraOsJWx42vS"
"""bcrypt of PUSH_PASSWORD (the Pushgateway's web config takes only hashes)."""


@pytest.fixture(scope="module")
def guarded(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A real Pushgateway that demands ``PUSHER:PUSH_PASSWORD`` (basic auth, exporter-toolkit's
    web config); its URL."""
    workdir = tmp_path_factory.mktemp("guarded-pushgateway")
    config = workdir / "web.yml"
    config.write_text(f"basic_auth_users:\n  {PUSHER}: '{PUSH_HASH}'\n")
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    url = f"http://127.0.0.1:{port}"
    with (workdir / "log").open("wb") as log:
        process = subprocess.Popen(
            [
                str(ensure_pushgateway(log=lambda _line: None)),
                f"--web.listen-address=127.0.0.1:{port}",
                f"--web.config.file={config}",
                "--log.level=warn",
            ],
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
        )
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                answer = requests.get(f"{url}/-/ready", timeout=1, auth=(PUSHER, PUSH_PASSWORD))
                if answer.status_code == 200:
                    break
            except requests.RequestException:
                pass
            assert process.poll() is None and time.monotonic() < deadline, (
                workdir / "log"
            ).read_text()
            time.sleep(0.05)
        assert requests.get(f"{url}/metrics", timeout=5).status_code == 401, "guarded"
        yield url
    finally:
        process.terminate()
        process.wait(timeout=10)


def pushed_jobs(url: str) -> str:
    """The gateway's own exposition (read with the credentials)."""
    answer = requests.get(f"{url}/metrics", timeout=5, auth=(PUSHER, PUSH_PASSWORD))
    answer.raise_for_status()
    return answer.text


def test_a_pushgateway_behind_basic_auth_gets_the_metrics_and_no_secret_is_printed(
    ctx: Apply, guarded: str, tmp_path: Path
) -> None:
    auth_file = tmp_path / "pushgateway-auth"
    auth_file.write_text(f"{PUSHER}:{PUSH_PASSWORD}\n")
    wrong_file = tmp_path / "wrong-auth"
    wrong_file.write_text(f"{PUSHER}:not-it\n")
    with_userinfo = guarded.replace("://", f"://{PUSHER}:{PUSH_PASSWORD.replace(' ', '%20')}@")
    job = job_of(ctx)

    _, _, err_file = ctx.apply(
        "--pushgateway", guarded, "--pushgateway-auth-file", str(auth_file),
        "--pushgateway-job", f"{job}-file",
    )  # fmt: skip
    _, _, err_url = ctx.apply("--pushgateway", with_userinfo, "--pushgateway-job", f"{job}-url")
    _, _, err_wrong = ctx.apply(
        "--pushgateway", guarded, "--pushgateway-auth-file", str(wrong_file),
        "--pushgateway-job", f"{job}-wrong",
    )  # fmt: skip

    exposition = pushed_jobs(guarded)
    assert f'job="{job}-file"' in exposition, err_file
    assert f'job="{job}-url"' in exposition, err_url
    assert f'job="{job}-wrong"' not in exposition
    assert "metrics not pushed" not in err_file + err_url
    address = guarded.split("://")[1]
    assert (
        f"warning: --pushgateway http://***@{address} carries credentials: on a command line "
        "they are visible"
    ) in err_url
    assert f"warning: metrics not pushed to {guarded}: HTTP Error 401" in err_wrong
    for printed in (err_file, err_url, err_wrong):
        assert "p@ss" not in printed and "push/" not in printed and "%20" not in printed


def test_an_unreachable_pushgateway_never_prints_its_credentials(
    api: pykube.HTTPClient, namespace: str
) -> None:
    warnings: list[str] = []
    reporting = Reporting(
        Cluster(api),
        run_id="r",
        holder="test",
        status_namespace=namespace,
        pushgateway="http://pusher:s3cr3t/p@ss@127.0.0.1:9/?token=s3cr3t",
        warn=warnings.append,
    )

    reporting.finish(ApplyReport())

    (warning,) = warnings
    assert warning.startswith("warning: metrics not pushed to http://***@127.0.0.1:9/?token=***")
    assert "s3cr3t" not in warning and "p@ss" not in warning
    warnings.clear()
    reporting.pushgateway = "http://127.0.0.1:not-a-port"

    reporting.finish(ApplyReport())  # http.client.InvalidURL: a warning, not a failed run

    assert warnings == [
        "warning: metrics not pushed to http://127.0.0.1:not-a-port: nonnumeric port: 'not-a-port'"
    ]
