"""Report formatting: the table people read and the document machines read say the same."""

from __future__ import annotations

import json
from datetime import UTC, datetime

import yaml

from reconciler.model.journal import Flow, LastMigration
from reconciler.model.outcome import ApplyReport
from reconciler.model.verdict import (
    Action,
    Effect,
    EmptyPlan,
    Finding,
    VMVerdict,
    VolumeVerdict,
)
from reconciler.plans.load import parse_plans
from reconciler.report.apply import apply_document, apply_text, status_document, status_rows
from reconciler.report.documents import converged, dump, plan_document, summary, window_states
from reconciler.report.text import plan_text, table

GI = 2**30

LIVE = VMVerdict(
    namespace="mig-vm",
    name="vm-fedora",
    plan="fedora-to-ceph",
    action=Action.MOVE_LIVE,
    running=True,
    volumes=(
        VolumeVerdict(
            "datavolumedisk1",
            "fedora-40-dv-template",
            "local-hostpath",
            "ceph-rbd",
            Action.MOVE_LIVE,
            target_name="fedora-40-dv-template-mig-x",
            size_bytes=30 * GI,
        ),
    ),
)
BLOCKED = VMVerdict(
    namespace="mig-vm",
    name="db",
    plan="fedora-to-ceph",
    action=Action.BLOCKED,
    running=True,
    findings=(
        Finding(
            "shareable-disk", Effect.NO_LIVE, "data", "the disk is shareable; set allowStop: true"
        ),
    ),
    volumes=(
        VolumeVerdict(
            "data",
            "db-data",
            "local-hostpath",
            "ceph-rbd",
            Action.BLOCKED,
            reason="the disk is shareable",
            rule="shareable-disk",
            size_bytes=10 * GI,
        ),
    ),
)
SYNCED = VMVerdict(
    namespace="mig-vm",
    name="web",
    plan="fedora-to-ceph",
    action=Action.IN_SYNC,
    volumes=(VolumeVerdict("root", "web-root", "ceph-rbd", "ceph-rbd", Action.IN_SYNC),),
)


def test_summary_counts_vms_by_action_and_bytes_to_move() -> None:
    counts = summary([LIVE, BLOCKED, SYNCED])
    assert counts == {
        "vms": 3,
        "inSync": 1,
        "live": 1,
        "offline": 0,
        "blocked": 1,
        "inProgress": 0,
        "volumesToMove": 1,
        "bytesToMove": 30 * GI,
        "plansSelectingNothing": 0,
    }
    assert not converged([LIVE, SYNCED]) and converged([SYNCED])


def test_text_shows_a_table_per_vm_the_reasons_and_a_summary_line() -> None:
    text = plan_text([LIVE, BLOCKED, SYNCED])
    assert "VM mig-vm/vm-fedora (running, plan fedora-to-ceph): live" in text
    assert "local-hostpath -> ceph-rbd  30Gi" in text
    assert "-> fedora-40-dv-template-mig-x" in text
    assert "  ! volume data: the disk is shareable; set allowStop: true [shareable-disk]\n" in text
    assert "In sync: mig-vm/web" in text
    assert text.rstrip().endswith("1 volume(s), 30Gi to move.")


def test_verbose_text_lists_in_sync_vms_in_full() -> None:
    assert "VM mig-vm/web (stopped, plan fedora-to-ceph): in sync" in plan_text(
        [SYNCED], verbose=True
    )


def test_json_and_yaml_carry_the_same_document() -> None:
    doc = plan_document([LIVE, BLOCKED])
    as_json = json.loads(dump(doc, "json"))
    as_yaml = yaml.safe_load(dump(doc, "yaml"))
    assert as_json == as_yaml
    assert as_json["kind"] == "PlanReport" and as_json["converged"] is False
    live, blocked = as_json["vms"]
    assert live["volumes"][0] == {
        "volume": "datavolumedisk1",
        "claim": "fedora-40-dv-template",
        "from": "local-hostpath",
        "to": "ceph-rbd",
        "action": "MoveLive",
        "sizeBytes": 30 * GI,
        "target": "fedora-40-dv-template-mig-x",
    }
    assert blocked["volumes"][0]["rule"] == "shareable-disk"
    assert live["reasons"] == []
    assert blocked["reasons"] == [
        {
            "rule": "shareable-disk",
            "effect": "NoLive",
            "volume": "data",
            "message": "the disk is shareable; set allowStop: true",
        }
    ]


def test_a_move_under_a_window_says_whether_it_is_open() -> None:
    (plan,) = parse_plans(
        "apiVersion: vmstorage.dev/v1alpha1\nkind: StoragePlan\n"
        "metadata: {name: fedora-to-ceph}\n"
        "spec:\n  namespace: mig-vm\n  storageClass: ceph-rbd\n"
        "  virtualMachines: [{name: vm-fedora}]\n"
        '  window: {start: "Sat 01:00", duration: 4h, timeZone: UTC}\n'
    )
    friday = datetime(2026, 11, 27, 12, 0, tzinfo=UTC)
    saturday = datetime(2026, 11, 28, 2, 0, tzinfo=UTC)
    closed = window_states([plan], friday)
    assert closed[("mig-vm", "fedora-to-ceph")] == {
        "window": "Sat 01:00 for 4h (UTC)",
        "open": False,
        "opensAt": "2026-11-28T01:00:00+00:00",
    }
    assert "window Sat 01:00 for 4h (UTC) closed, opens 2026-11-28T01:00:00+00:00" in plan_text(
        [LIVE], windows=closed
    )
    opened = window_states([plan], saturday)
    assert opened[("mig-vm", "fedora-to-ceph")]["closesAt"] == "2026-11-28T05:00:00+00:00"
    doc = plan_document([LIVE, SYNCED], windows=opened)
    assert doc["vms"][0]["window"]["open"] is True
    assert doc["vms"][1]["window"] == doc["vms"][0]["window"]  # per plan, whatever the action


# --------------------------------------------------------------------------------------------
# issue 18: plans that select nothing, missing VMs, apply's line for a blocked VM
# --------------------------------------------------------------------------------------------

TYPO = EmptyPlan(
    namespace="mig-vmm",
    plan="fedora-to-ceph",
    finding=Finding(
        "namespace-not-found",
        Effect.NOTHING_SELECTED,
        None,
        "plan fedora-to-ceph selects no VM: namespace mig-vmm does not exist (did you mean "
        "mig-vm?); fix the plan's namespace",
    ),
)
GHOST = VMVerdict(
    namespace="mig-vmm",
    name="vm-fedora",
    plan="fedora-to-ceph",
    action=Action.BLOCKED,
    volumes=(),
    findings=(
        Finding(
            "vm-not-found",
            Effect.BLOCK,
            None,
            "plan fedora-to-ceph names VM mig-vmm/vm-fedora, which does not exist (did you "
            "mean mig-vm/vm-fedora?): fix the name in the plan's virtualMachines, or remove it",
        ),
    ),
    exists=False,
)
TWO_REASONS = VMVerdict(
    namespace="mig-vm",
    name="db",
    plan="fedora-to-ceph",
    action=Action.BLOCKED,
    running=True,
    volumes=(),
    findings=(
        Finding(
            "stop-not-allowed",
            Effect.BLOCK,
            None,
            "the VM is running and cannot move live (shareable-disk): set allowStop: true",
        ),
        Finding("shareable-disk", Effect.NO_LIVE, "data", "disk data is shareable"),
        Finding("gitops-managed", Effect.BLOCK, None, "the VM is managed by Argo CD shop"),
    ),
)


def test_a_plan_that_selects_nothing_is_said_in_text_and_is_never_converged() -> None:
    text = plan_text([], empty_plans=[TYPO])
    assert (
        "! plan fedora-to-ceph selects no VM: namespace mig-vmm does not exist (did you mean "
        "mig-vm?); fix the plan's namespace [namespace-not-found]\n"
    ) in text
    assert text.rstrip().endswith("0 volume(s), 0B to move; 1 plan(s) selected nothing.")
    assert "selected nothing" not in plan_text([SYNCED])


def test_a_plan_that_selects_nothing_is_data_in_the_plan_report() -> None:
    doc = plan_document([SYNCED], empty_plans=[TYPO])
    assert doc["converged"] is False, "a typo never reads as in sync"
    assert doc["summary"]["plansSelectingNothing"] == 1
    assert doc["nothingSelected"] == [
        {
            "namespace": "mig-vmm",
            "plan": "fedora-to-ceph",
            "rule": "namespace-not-found",
            "effect": "NothingSelected",
            "volume": None,
            "message": TYPO.finding.message,
        }
    ]
    assert plan_document([SYNCED])["converged"] is True


def test_a_vm_that_does_not_exist_is_missing_not_stopped() -> None:
    text = plan_text([GHOST])
    assert "VM mig-vmm/vm-fedora (missing, plan fedora-to-ceph): blocked\n" in text
    assert "VOLUME" not in text, "no empty volume table"
    assert "did you mean mig-vm/vm-fedora?" in text
    assert plan_document([GHOST])["vms"][0]["exists"] is False
    assert plan_document([LIVE])["vms"][0]["exists"] is True


def test_apply_names_the_rule_ids_and_the_first_thing_to_do_for_a_blocked_vm() -> None:
    text = apply_text(ApplyReport(verdicts=(TWO_REASONS,)))
    assert (
        "VM mig-vm/db: blocked [stop-not-allowed, shareable-disk, gitops-managed]; first: the "
        "VM is running and cannot move live (shareable-disk): set allowStop: true\n"
    ) in text
    assert "see `plan`" not in text
    ghost = apply_text(ApplyReport(verdicts=(GHOST,)))
    assert "VM mig-vmm/vm-fedora: blocked [vm-not-found]; first: plan fedora-to-ceph names" in ghost


def test_apply_reports_a_plan_that_selects_nothing() -> None:
    report = ApplyReport(empty_plans=(TYPO,))
    text = apply_text(report)
    assert "! plan fedora-to-ceph selects no VM: namespace mig-vmm does not exist" in text
    assert text.rstrip().endswith("0 outside their window; 1 plan(s) selected nothing.")
    doc = apply_document(report)
    assert doc["summary"]["plansSelectingNothing"] == 1
    assert doc["nothingSelected"][0]["rule"] == "namespace-not-found"
    assert apply_document(ApplyReport())["nothingSelected"] == []


def test_status_says_a_vm_is_missing_and_what_it_probably_meant() -> None:
    last = LastMigration(
        id="m1",
        plan="p",
        flow=Flow.LIVE,
        result="Succeeded",
        started="t0",
        finished="t1",
        volumes={"root": "root-mig-x"},
    )
    missing = GHOST.findings[0]
    entries = [
        ("mig-vm", "vm-a", None, last, "", None),
        ("mig-vmm", "vm-fedora", None, None, "", missing),
    ]
    rows = status_rows(entries)
    assert rows[2][:2] == ["mig-vmm/vm-fedora", "missing"]
    assert rows[2][-1].endswith(
        "(did you mean mig-vm/vm-fedora?): fix the name in the plan's "
        "virtualMachines, or remove it [vm-not-found]"
    )
    assert "mig-vmm/vm-fedora  missing" in table(rows)
    doc = status_document(entries)
    assert [(v["exists"], v["missing"]) for v in doc["vms"]] == [
        (True, None),
        (
            False,
            {"rule": "vm-not-found", "effect": "Block", "volume": None, "message": missing.message},
        ),
    ]
