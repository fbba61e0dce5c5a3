"""Reporting, pure parts: Event bodies and what the publisher says when, the metrics a report
gives, the status document, and JSON log lines. (The cluster tests send them for real:
tests/cluster/test_reporting.py.)"""

from __future__ import annotations

import base64
import io
import json
import logging
import threading
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any, TextIO, cast

import pytest
from prometheus_client import generate_latest

from reconciler.cli.common import JsonFormatter, JsonLines, progress
from reconciler.model.journal import FORWARD, ROLLBACK, Flow, Journal, VolumeMove
from reconciler.model.names import RULE_LABEL, RUN_LABEL
from reconciler.model.outcome import ROLLED_BACK, SUCCEEDED, ApplyReport, Outcome
from reconciler.model.progress import Line, tagged
from reconciler.model.verdict import Action, Effect, Finding, VMVerdict, VolumeVerdict
from reconciler.model.writeback import WriteBack, WriteBackVolume
from reconciler.publish.events import NOTE_LIMIT, Notice, event_body, event_name
from reconciler.publish.metrics import (
    Metrics,
    RunFacts,
    blocked_by_rule,
    out_of_sync,
    read_basic_auth,
)
from reconciler.publish.publisher import Publisher
from reconciler.publish.status import MAX_BYTES, configmap_data, status_document
from reconciler.report.logs import KEYS

NOW = datetime(2026, 3, 1, 12, 0, 0, 123456, tzinfo=UTC)


class Recorder:
    """An EventSink that keeps what it is told."""

    def __init__(self) -> None:
        self.notices: list[tuple[str, str, Notice]] = []

    def emit(self, namespace: str, vm: str, notice: Notice) -> None:
        self.notices.append((namespace, vm, notice))

    @property
    def reasons(self) -> list[str]:
        return [n.reason for _, _, n in self.notices]


def journal(flow: Flow = Flow.LIVE, **changes: Any) -> Journal:
    fields: dict[str, Any] = {
        "id": "abc123def456",
        "plan": "ns/move",
        "flow": flow,
        "step": FORWARD[flow][0],
        "volumes": (
            VolumeMove("disk", "disk-dv", "disk-dv-mig-xyz12", True, "old", "new", 10 * 2**30),
        ),
        "run_strategy": "Always",
        "was_running": True,
        "started": "2026-03-01T12:00:00+00:00",
        "deadline": "2026-03-01T13:00:00+00:00",
        "retention": "Keep",
        "commit": "0123456789abcdef0123456789abcdef01234567",
    }
    fields.update(changes)
    return Journal(**fields)


def outcome(result: str = SUCCEEDED, **changes: Any) -> Outcome:
    fields: dict[str, Any] = {
        "migration_id": "abc123def456",
        "plan": "ns/move",
        "flow": "live",
        "result": result,
        "seconds": 4.25,
        "volumes": (("disk", "disk-dv", "disk-dv-mig-xyz12"),),
        "namespace": "ns",
        "vm": "vm1",
    }
    fields.update(changes)
    return Outcome(**fields)


def blocked(name: str = "vm2", *rules: str) -> VMVerdict:
    findings = tuple(
        Finding(rule, Effect.BLOCK if i == 0 else Effect.NO_LIVE, None, f"because {rule}")
        for i, rule in enumerate(rules or ("gitops-managed",))
    )
    return VMVerdict(
        namespace="ns",
        name=name,
        plan="move",
        action=Action.BLOCKED,
        volumes=(VolumeVerdict("disk", "d2", "old", "new", Action.BLOCKED),),
        findings=(*findings, Finding("a-note", Effect.NOTE, None, "just so you know")),
    )


# -- Event bodies ----------------------------------------------------------------------------


def test_an_event_names_the_vm_with_its_uid_the_controller_and_the_rule() -> None:
    notice = Notice(
        "MoveRolledBack",
        "rolled back: x [migration-failed]",
        type="Warning",
        action="Rollback",
        rule="migration-failed",
        migration_id="abc",
        commit="c0ffee",
    )

    body = event_body(
        notice,
        namespace="ns",
        vm="vm1",
        uid="u-1",
        holder="pod-1-42",
        run_id="run1",
        now=NOW,
        name="vm1.1",
    )

    assert body["apiVersion"] == "events.k8s.io/v1" and body["kind"] == "Event"
    assert body["regarding"] == {
        "apiVersion": "kubevirt.io/v1",
        "kind": "VirtualMachine",
        "namespace": "ns",
        "name": "vm1",
        "uid": "u-1",
    }
    assert (body["reportingController"], body["reportingInstance"]) == (
        "vm-storage-reconciler",
        "pod-1-42",
    )
    assert (body["reason"], body["type"], body["action"]) == (
        "MoveRolledBack",
        "Warning",
        "Rollback",
    )
    assert body["eventTime"] == "2026-03-01T12:00:00.123456Z"
    assert body["metadata"]["labels"] == {
        RUN_LABEL: "run1",
        RULE_LABEL: "migration-failed",
        "vmstorage.dev/migration": "abc",
    }
    assert body["metadata"]["annotations"] == {"vmstorage.dev/commit": "c0ffee"}


def test_a_note_is_cut_to_the_api_limit_in_bytes_and_escaped() -> None:
    body = event_body(
        Notice("MoveBlocked", "é\x1b[31m" * 2000),
        namespace="ns",
        vm="vm1",
        uid=None,
        holder="h" * 300,
        run_id="",
        now=NOW,
        name="n",
    )

    assert len(body["note"].encode()) <= NOTE_LIMIT
    assert "\x1b" not in body["note"]
    assert len(body["reportingInstance"]) <= 128
    assert "uid" not in body["regarding"]


def test_repeated_notices_share_a_name_only_when_deduplicated() -> None:
    same = Notice("MoveBlocked", "blocked [x]", rule="x", dedupe=True)
    other = Notice("MoveBlocked", "blocked [y]", rule="y", dedupe=True)

    assert event_name("vm1", same, 1) == event_name("vm1", same, 2)
    assert event_name("vm1", same, 1) != event_name("vm1", other, 1)
    assert event_name("vm1", Notice("MoveStarted", "n"), 1) != event_name(
        "vm1", Notice("MoveStarted", "n"), 2
    )


# -- what the publisher says -------------------------------------------------------------------


def test_a_live_move_is_started_milestones_then_succeeded() -> None:
    sink = Recorder()
    publisher = Publisher(sink, status_where="lease/status")
    j = journal()

    publisher.move_started("ns", "vm1", j, False)
    for step in FORWARD[Flow.LIVE]:
        publisher.step_done("ns", "vm1", j.at(step), step)
    publisher.move_finished(outcome())

    assert sink.reasons == [
        "MoveStarted",
        "TargetsReady",
        "VolumesSwapped",
        "MigrationSucceeded",
        "MoveVerified",
        "MoveSucceeded",
    ]
    started = sink.notices[0][2]
    assert "moving live (move abc123def456, plan ns/move, commit 0123456789ab)" in started.note
    assert "disk disk-dv -> disk-dv-mig-xyz12 (old -> new)" in started.note
    assert {n.type for _, _, n in sink.notices} == {"Normal"}
    assert {n.migration_id for _, _, n in sink.notices} == {"abc123def456"}


def test_an_offline_move_reports_the_stop_and_the_restart_only_when_it_ran() -> None:
    said = {}
    for was_running in (True, False):
        sink = Recorder()
        j = journal(Flow.OFFLINE, was_running=was_running, retention="Delete")
        for step in FORWARD[Flow.OFFLINE]:
            Publisher(sink).step_done("ns", "vm1", j.at(step), step)
        said[was_running] = sink.reasons

    running, stopped = said[True], said[False]
    assert running == [
        "VMStopped",
        "TargetsReady",
        "VolumesSwapped",
        "VMRunning",
        "MoveVerified",
        "SourcesDeleted",
    ]
    assert "VMRunning" not in stopped


def test_a_rollback_warns_with_its_rule_and_reason() -> None:
    sink = Recorder()
    publisher = Publisher(sink)
    j = journal().rolled_back_because("migration-failed", "KubeVirt's migration failed 3 times")

    for step in ROLLBACK[Flow.LIVE]:
        publisher.step_done("ns", "vm1", j.at(step), step)
    publisher.move_finished(
        outcome(ROLLED_BACK, rule="migration-failed", reason="KubeVirt's migration failed 3 times")
    )

    assert sink.reasons == ["VolumesReverted", "MoveRolledBack"]
    for _, _, notice in sink.notices:
        assert (notice.type, notice.rule) == ("Warning", "migration-failed")
        assert "KubeVirt's migration failed 3 times [migration-failed]" in notice.note


def test_a_blocked_vm_lists_its_blocking_rules_first_and_leaves_notes_out() -> None:
    sink = Recorder()

    Publisher(sink).vm_blocked(blocked("vm2", "gitops-managed", "shareable-disk"))

    ((namespace, vm, notice),) = sink.notices
    assert (namespace, vm, notice.reason, notice.type) == ("ns", "vm2", "MoveBlocked", "Warning")
    assert (notice.rule, notice.rules) == ("gitops-managed", ("gitops-managed", "shareable-disk"))
    assert notice.note == (
        "blocked (plan move): because gitops-managed [gitops-managed]; because shareable-disk "
        "[shareable-disk]"
    )
    assert notice.dedupe


def test_a_write_back_is_a_warning_after_the_success() -> None:
    sink = Recorder()
    wb = WriteBack(
        "ns",
        "vm1",
        ("Flux Kustomization flux-system/apps",),
        (
            WriteBackVolume(
                "disk", 0, "dataVolume", "disk-dv", "disk-dv-mig-xyz12", 0, "storage", "new"
            ),
        ),
        ({"op": "replace", "path": "/spec/x", "value": 1},),
    )

    Publisher(sink, status_where="lease/vm-storage-reconciler-status").move_finished(
        outcome(write_back=wb)
    )

    assert sink.reasons == ["MoveSucceeded", "GitOpsWriteBack"]
    notice = sink.notices[1][2]
    assert (notice.type, notice.action, notice.rule) == ("Warning", "WriteBack", "gitops-managed")
    assert "applied from Git by Flux Kustomization flux-system/apps" in notice.note
    assert notice.note.endswith("(all of it in ConfigMap lease/vm-storage-reconciler-status)")


# -- metrics -----------------------------------------------------------------------------------


def moving(name: str, *volumes: tuple[str, str]) -> VMVerdict:
    return VMVerdict(
        namespace="ns",
        name=name,
        plan="move",
        action=Action.MOVE_LIVE,
        volumes=tuple(
            VolumeVerdict(f"v{i}", f"{name}-{i}", source, target, Action.MOVE_LIVE)
            for i, (source, target) in enumerate(volumes)
        ),
    )


REPORT = ApplyReport(
    outcomes=(
        outcome(vm="vm1"),
        outcome(ROLLED_BACK, vm="vm3", flow="offline", seconds=9.5, rule="clone-failed"),
    ),
    verdicts=(
        moving("vm1", ("old", "new"), ("old", "new")),
        blocked("vm2", "gitops-managed", "shareable-disk"),
        moving("vm3", ("old", "new")),
        moving("vm4", ("slow", "new")),
    ),
    pending=("ns/vm4",),
)


def samples(metrics: Metrics) -> dict[str, float]:
    text = generate_latest(metrics.registry).decode()
    found = {}
    for line in text.splitlines():
        if line and not line.startswith("#"):
            key, value = line.rsplit(" ", 1)
            found[key] = float(value)
    return found


def test_out_of_sync_volumes_leave_out_the_vms_that_moved() -> None:
    assert out_of_sync(REPORT) == {("ns", "old", "new"): 2, ("ns", "slow", "new"): 1}
    assert blocked_by_rule(REPORT) == {("ns", "gitops-managed"): 1, ("ns", "shareable-disk"): 1}


def test_metrics_describe_the_last_run_and_replace_the_run_before() -> None:
    metrics = Metrics()
    facts = RunFacts(finished=1000.0, seconds=12.5, succeeded=False, last_success=900.0)

    metrics.record(REPORT, facts)
    first = samples(metrics)
    metrics.record(ApplyReport(), RunFacts(2000.0, 1.0, True, 2000.0))
    second = samples(metrics)

    assert first['vmsr_run_migrations{flow="live",result="Succeeded"}'] == 1
    assert first['vmsr_run_migrations{flow="offline",result="RolledBack"}'] == 1
    assert first['vmsr_run_migrations{flow="live",result="Failed"}'] == 0
    assert first['vmsr_volumes_out_of_sync{from_class="old",namespace="ns",to_class="new"}'] == 2
    assert first['vmsr_blocked_vms{namespace="ns",rule="shareable-disk"}'] == 1
    assert first['vmsr_pending_vms{reason="max-vms"}'] == 1
    duration = (
        'vmsr_vm_move_duration_seconds{flow="offline",namespace="ns",result="RolledBack",vm="vm3"}'
    )
    assert first[duration] == 9.5
    assert (first["vmsr_last_run_success"], first["vmsr_last_success_timestamp_seconds"]) == (
        0,
        900,
    )
    assert first["vmsr_last_run_duration_seconds"] == 12.5
    assert duration not in second, "a VM of an earlier run does not linger"
    assert not any(k.startswith("vmsr_blocked_vms{") for k in second)
    assert second["vmsr_last_success_timestamp_seconds"] == 2000


def test_a_run_without_a_report_still_says_when_and_that_it_failed() -> None:
    metrics = Metrics()

    metrics.record(None, RunFacts(finished=50.0, seconds=0.5, succeeded=False, last_success=None))

    got = samples(metrics)
    assert (got["vmsr_last_run_timestamp_seconds"], got["vmsr_last_run_success"]) == (50, 0)
    assert got["vmsr_last_success_timestamp_seconds"] == 0
    assert not any(k.startswith("vmsr_run_migrations{") for k in got)


# -- status ------------------------------------------------------------------------------------


def test_the_status_document_carries_the_report_and_the_run() -> None:
    doc = status_document(
        REPORT,
        run_id="run1",
        holder="pod-1",
        started=NOW,
        finished=NOW + timedelta(seconds=30),
        last_success=NOW - timedelta(days=1),
    )

    assert (doc["kind"], doc["result"], doc["seconds"]) == ("RunStatus", "VMFailed", 30.0)
    assert doc["lastSuccess"] == "2026-02-28T12:00:00+00:00"
    assert [o["name"] for o in doc["report"]["outcomes"]] == ["vm1", "vm3"]
    assert doc["report"]["outcomes"][1]["rule"] == "clone-failed"
    data = configmap_data(doc)
    assert json.loads(data["report.json"]) == doc
    assert (data["result"], data["runId"], data["lastRun"]) == (
        "VMFailed",
        "run1",
        "2026-03-01T12:00:30+00:00",
    )
    error = status_document(None, run_id="r", holder="h", started=NOW, finished=NOW, error="boom")
    assert (error["result"], error["error"], error["report"]) == ("Error", "boom", None)


def test_a_status_too_large_for_a_configmap_keeps_counts_of_the_blocked() -> None:
    many = ApplyReport(verdicts=tuple(blocked(f"vm-{i:05}", "x" * 40) for i in range(6000)))

    doc = status_document(many, run_id="r", holder="h", started=NOW, finished=NOW)

    assert stored(doc) <= MAX_BYTES
    assert doc["report"]["truncated"] is True
    assert doc["report"]["blocked"] == {"vms": 6000, "byRule": {"x" * 40: 6000}}


def stored(doc: dict[str, Any]) -> int:
    """What the API server counts against a ConfigMap's 1 MiB: the bytes of its data values."""
    return sum(len(value.encode()) for value in configmap_data(doc).values())


def test_the_status_size_is_what_the_configmap_stores_to_the_byte() -> None:
    """Issue 14, item 12: the check measured compact JSON, the ConfigMap stores it indented,
    and a report in between was refused by the API server (422): nothing was written."""
    limit = 1024 * 1024  # the API server's (core.MaxSecretSize, the data values' bytes)
    report = ApplyReport(verdicts=tuple(blocked(f"vm-{i:05}", "x" * 40) for i in range(1500)))

    def doc(holder: str) -> dict[str, Any]:
        return status_document(report, run_id="r", holder=holder, started=NOW, finished=NOW)

    room = limit - stored(doc("h"))
    assert room > 0
    at_limit, over = doc("h" * (1 + room)), doc("h" * (2 + room))

    assert stored(at_limit) == limit, "exactly at the limit"
    assert "truncated" not in at_limit["report"], "kept whole: the API server takes it"
    assert len(at_limit["report"]["blocked"]) == 1500
    assert len(json.dumps(at_limit).encode()) < 900_000, "(the old check: far below its limit)"
    assert over["report"].get("truncated") is True, "one byte more: trimmed"
    assert over["report"]["trimmed"] == ["blocked"]
    assert over["report"]["blocked"] == {"vms": 1500, "byRule": {"x" * 40: 1500}}
    assert stored(over) <= limit
    assert limit == MAX_BYTES


@pytest.mark.parametrize(
    ("outcomes", "reason", "trimmed"),
    [
        (3_000, "r" * 1_000, ["blocked", "pending", "outsideWindow", "outcomes.details"]),
        (8_000, "", ["blocked", "pending", "outsideWindow", "outcomes.details", "outcomes"]),
    ],
)
def test_a_status_too_large_is_trimmed_step_by_step_until_it_fits_and_says_so(
    outcomes: int, reason: str, trimmed: list[str]
) -> None:
    many = ApplyReport(
        outcomes=tuple(
            outcome(vm=f"vm-{i:06}", reason=reason, steps=(("create-targets", 1.0),) * 5)
            for i in range(outcomes)
        ),
        pending=tuple(f"ns/p-{i}" for i in range(2000)),
    )

    doc = status_document(many, run_id="r", holder="h", started=NOW, finished=NOW)

    assert stored(doc) <= MAX_BYTES
    assert (doc["report"]["truncated"], doc["report"]["trimmed"]) == (True, trimmed)
    assert doc["report"]["pending"] == {"vms": 2000}
    assert doc["report"]["summary"]["succeeded"] == outcomes, "the counts are always kept"
    if "outcomes" in trimmed:
        assert doc["report"]["outcomes"] == {"vms": outcomes}
    else:
        assert doc["report"]["outcomes"][0] == {
            "namespace": "ns",
            "name": "vm-000000",
            "migrationId": "abc123def456",
            "flow": "live",
            "result": "Succeeded",
            "rule": None,
        }


# -- the Pushgateway's basic auth (issue 14, item 11) ------------------------------------------


class Gateway:
    """A local HTTP server standing in for a Pushgateway: keeps each request's path and
    Authorization header, answers 200."""

    def __init__(self) -> None:
        self.requests: list[tuple[str, str | None]] = []
        requests = self.requests

        class Handler(BaseHTTPRequestHandler):
            def do_PUT(self) -> None:
                self.rfile.read(int(self.headers.get("Content-Length") or 0))
                requests.append((self.path, self.headers.get("Authorization")))
                self.send_response(200)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, format: str, *args: object) -> None:
                """Quiet."""

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        threading.Thread(target=self.server.serve_forever, daemon=True).start()
        self.address = f"127.0.0.1:{self.server.server_address[1]}"


@pytest.fixture
def gateway() -> Iterator[Gateway]:
    running = Gateway()
    yield running
    running.server.shutdown()
    running.server.server_close()


def basic(user: str, password: str) -> str:
    return "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()


def test_a_push_sends_the_urls_userinfo_as_basic_auth_never_in_the_url(gateway: Gateway) -> None:
    metrics = Metrics()
    metrics.push(f"http://pusher:s3cr3t/p@ss%20x@{gateway.address}", "vmsr")
    metrics.push(f"pusher:s3cr3t@{gateway.address}", "vmsr")  # no scheme: http
    metrics.push(f"http://ignored:x@{gateway.address}/", "vmsr", auth=("file-user", "s3cr3t"))

    assert gateway.requests == [
        ("/metrics/job/vmsr", basic("pusher", "s3cr3t/p@ss x")),
        ("/metrics/job/vmsr", basic("pusher", "s3cr3t")),
        ("/metrics/job/vmsr", basic("file-user", "s3cr3t")),
    ]


def test_a_basic_auth_file_is_user_and_password_and_its_errors_never_quote_it(
    tmp_path: Path,
) -> None:
    path = tmp_path / "auth"
    path.write_text("pusher:s3cr3t:with colon \n")
    assert read_basic_auth(path) == ("pusher", "s3cr3t:with colon")
    for text in ("s3cr3t-token-alone\n", "pusher:\n", ""):
        path.write_text(text)
        with pytest.raises(ValueError) as caught:
            read_basic_auth(path)
        assert str(caught.value).startswith(f"{path}: ")
        assert "s3cr3t" not in str(caught.value) and "pusher" not in str(caught.value)
    with pytest.raises(ValueError, match="cannot be read"):
        read_basic_auth(tmp_path / "missing")


# -- JSON logs ---------------------------------------------------------------------------------


def lines(stream: io.StringIO) -> list[dict[str, Any]]:
    return [json.loads(line) for line in stream.getvalue().splitlines()]


def test_json_lines_carry_the_fields_of_progress_lines_and_the_levels_of_errors() -> None:
    stream = io.StringIO()
    err = JsonLines(cast(TextIO, stream), runId="run1")
    say = tagged(lambda message: progress(cast(TextIO, err), message), commit="c0ffee")

    say(
        Line(
            "ns/vm1: created DataVolume d",
            namespace="ns",
            vm="vm1",
            volume="disk",
            step="create-targets",
        )
    )
    say("Observing the cluster (one LIST per kind)...")
    err.write("error: VirtualMachine/ns/vm1: refused (HTTP 403)\n  hint: check the RBAC\n")
    err.write("warning: metrics not pushed")
    err.flush()

    got = lines(stream)
    assert all(set(KEYS) <= set(line) and {"time", "level", "msg"} <= set(line) for line in got)
    assert got[0]["msg"] == "ns/vm1: created DataVolume d"
    assert (got[0]["vm"], got[0]["volume"], got[0]["step"], got[0]["commit"]) == (
        "vm1",
        "disk",
        "create-targets",
        "c0ffee",
    )
    assert (got[1]["vm"], got[1]["commit"], got[1]["runId"]) == (None, "c0ffee", "run1")
    assert [(line["level"], line["msg"]) for line in got[2:]] == [
        ("error", "VirtualMachine/ns/vm1: refused (HTTP 403)"),
        ("error", "hint: check the RBAC"),
        ("warning", "metrics not pushed"),
    ]
    assert got[0]["time"].endswith("Z")


def test_log_records_become_json_lines_with_their_extra_fields() -> None:
    record = logging.LogRecord(
        "reconciler.x", logging.WARNING, __file__, 1, "Lease %s", ("lost",), None
    )
    record.vm = "vm1"

    line = json.loads(JsonFormatter(runId="run1").format(record))

    assert (line["level"], line["msg"], line["logger"]) == ("warning", "Lease lost", "reconciler.x")
    assert (line["vm"], line["runId"], line["namespace"]) == ("vm1", "run1", None)
