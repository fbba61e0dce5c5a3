"""Report formatting: the table people read and the document machines read say the same."""

from __future__ import annotations

import json
from datetime import UTC, datetime

import yaml

from reconciler.model.verdict import Action, Effect, Finding, VMVerdict, VolumeVerdict
from reconciler.plans.load import parse_plans
from reconciler.report.documents import converged, dump, plan_document, summary, window_states
from reconciler.report.text import plan_text

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
