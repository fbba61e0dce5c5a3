"""`apply` on every VM shape, live and offline (issue 9, "Prove it": the success half).

Block and Filesystem disks; dataVolumeTemplates, standalone DataVolumes and plain PVCs; two
or three RWO disks moved together in one patch; retention Keep and Delete (the source deleted
only after verification, once no pod mounts it, or kept with the reason recorded); a VM on the
deprecated `spec.running`; per-volume storageClass overrides. Each test asserts what upstream
KubeVirt/CDI would show and what `apply` leaves behind: content hashes equal to the sources',
the same VMI after a live move (the guest never rebooted), the run strategy as it was, the
journal removed, the last-migration record, and no DataVolume of ours beyond the targets.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pykube
import pytest

from reconciler import engine
from reconciler.apply.context import Settings
from testenv.controlplane import ControlPlane
from tests.cluster.test_apply import JOURNAL, LAST, cluster_objects
from tests.cluster.test_plan import create, plan_file
from tests.support.kube import Eventually, annotation
from tests.support.moves import (
    BLOCK_CLASS,
    TARGET_CLASS,
    Disk,
    Moves,
    Sampler,
    disks_of,
    ensure_block_class,
    moves_ctx,
    vm_manifest,
)
from tests.support.node_faults import NodeSide

__all__ = ["cluster_objects"]  # the module fixture that seeds the classes and the KubeVirt CR


@pytest.fixture(scope="module", autouse=True)
def block_class(api: pykube.HTTPClient) -> None:
    ensure_block_class(api)


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


def plan_body(vm: str = "vm1", *, cls: str = TARGET_CLASS, extra: str = "") -> str:
    return f"storageClass: {cls}\n{extra}virtualMachines:\n  - name: {vm}\n"


def assert_moved(
    ctx: Moves,
    name: str,
    before: dict[str, Any],
    report: dict[str, Any],
    *,
    flow: str,
    classes: dict[str, str],
    modes: dict[str, str] | None = None,
) -> dict[str, str]:
    """Everything a verified move leaves: returns volume -> target claim."""
    (outcome,) = [o for o in report["outcomes"] if o["name"] == name]
    assert (outcome["result"], outcome["flow"], outcome["rule"]) == ("Succeeded", flow, None)
    vm = ctx.vm(name)
    sources = disks_of(before)
    now = disks_of(vm)
    moved = {v: now[v] for v in classes}
    for volume, target in moved.items():
        assert target != sources[volume] and target.startswith(f"{sources[volume]}-mig-")
        pvc = ctx.pvc(target)
        assert pvc["status"]["phase"] == "Bound"
        assert pvc["spec"]["storageClassName"] == classes[volume], volume
        if modes:
            assert pvc["spec"].get("volumeMode", "Filesystem") == modes[volume], volume
    assert {v: c for v, c in now.items() if v not in classes} == {
        v: c for v, c in sources.items() if v not in classes
    }, "volumes outside the plan are untouched"
    assert ctx.hashes(vm) == ctx.source_hashes, "every target holds its source's content"
    assert annotation(vm, JOURNAL) is None, "the journal is removed on completion"
    last = ctx.last(name)
    assert last["result"] == "Succeeded"
    assert last["flow"] == flow
    assert last["volumes"] == moved
    assert last["id"] == outcome["migrationId"]
    # live: KubeVirt's Migration strategy stays (dropping it changes nothing the guest sees);
    # offline moves never set it
    assert vm["spec"].get("updateVolumesStrategy") == ("Migration" if flow == "live" else None)
    for field in ("runStrategy", "running"):
        assert vm["spec"].get(field) == before["spec"].get(field), "the run state as it was"
    assert set(ctx.ours()) == set(moved.values()), "no DataVolume of ours beyond the targets"
    templates = {
        t["metadata"]["name"]: t["spec"]["storage"].get("storageClassName")
        for t in vm["spec"].get("dataVolumeTemplates") or []
    }
    from_templates = {
        v: c
        for v, c in sources.items()
        if c in {t["metadata"]["name"] for t in before["spec"].get("dataVolumeTemplates") or []}
    }
    assert templates == {moved[v]: classes[v] for v in from_templates}, (
        "templates renamed with their volumes, asking for the new class"
    )
    return moved


def run_and_capture(ctx: Moves, name: str) -> tuple[dict[str, Any], str]:
    """The VM before the move, with its content hashes remembered on ctx; the VMI uid."""
    before = ctx.vm(name)
    ctx.source_hashes = ctx.hashes(before)
    assert all(ctx.source_hashes.values())
    return before, str((ctx.vmi(name).get("metadata") or {}).get("uid") or "")


# --------------------------------------------------------------------------------------------
# live


def test_live_three_disk_kinds_move_together_in_one_migration(ctx: Moves) -> None:
    disks = [
        Disk("root", "template", "vm1-root"),
        Disk("data", "dv", "vm1-data"),
        Disk("scratch", "pvc", "vm1-scratch"),
    ]
    ctx.make("vm1", disks)
    before, uid = run_and_capture(ctx, "vm1")
    rc, report, err = ctx.apply(body=plan_body())

    assert rc == 0, err
    assert_moved(
        ctx,
        "vm1",
        before,
        report,
        flow="live",
        classes=dict.fromkeys(("root", "data", "scratch"), TARGET_CLASS),
    )
    assert ctx.vmi("vm1")["metadata"]["uid"] == uid, "same VMI: the guest never rebooted"
    assert len(ctx.migrations("vm1")) == 1, "one update, one migration for all three disks"
    assert ctx.vm("vm1")["spec"]["runStrategy"] == "Always"


def test_live_block_disks_stay_block_on_the_target(ctx: Moves) -> None:
    disks = [
        Disk("root", "template", "vm1-root", block=True),
        Disk("raw", "pvc", "vm1-raw", block=True),
    ]
    ctx.make("vm1", disks)
    before, uid = run_and_capture(ctx, "vm1")

    rc, report, err = ctx.apply(body=plan_body(cls=BLOCK_CLASS))

    assert rc == 0, err
    moved = assert_moved(
        ctx,
        "vm1",
        before,
        report,
        flow="live",
        classes={"root": BLOCK_CLASS, "raw": BLOCK_CLASS},
        modes={"root": "Block", "raw": "Block"},
    )
    assert ctx.vmi("vm1")["metadata"]["uid"] == uid
    status = {v["name"]: v for v in ctx.vmi("vm1")["status"]["volumeStatus"]}
    assert {v: status[v]["persistentVolumeClaimInfo"]["claimName"] for v in moved} == moved
    assert all(status[v]["persistentVolumeClaimInfo"]["volumeMode"] == "Block" for v in moved)


def test_live_per_volume_overrides_pick_each_disk_s_class(ctx: Moves) -> None:
    disks = [Disk("root", "template", "vm1-root"), Disk("logs", "dv", "vm1-logs")]
    ctx.make("vm1", disks)
    before, uid = run_and_capture(ctx, "vm1")
    body = (
        f"storageClass: {TARGET_CLASS}\nvirtualMachines:\n  - name: vm1\n    volumes:\n"
        f"      - name: logs\n        storageClass: {BLOCK_CLASS}\n        volumeMode: Block\n"
    )

    rc, report, err = ctx.apply(body=body)

    assert rc == 0, err
    assert_moved(
        ctx,
        "vm1",
        before,
        report,
        flow="live",
        classes={"root": TARGET_CLASS, "logs": BLOCK_CLASS},
        modes={"root": "Filesystem", "logs": "Block"},
    )
    assert ctx.vmi("vm1")["metadata"]["uid"] == uid
    (migration,) = ctx.migrations("vm1")
    assert migration["status"]["phase"] == "Succeeded", "both disks in one migration"


def test_live_move_of_a_vm_on_the_deprecated_running_field(ctx: Moves) -> None:
    ctx.make("vm1", [Disk("root", "template", "vm1-root")], deprecated_running=True)
    before, uid = run_and_capture(ctx, "vm1")

    rc, report, err = ctx.apply(body=plan_body())

    assert rc == 0, err
    assert_moved(ctx, "vm1", before, report, flow="live", classes={"root": TARGET_CLASS})
    spec = ctx.vm("vm1")["spec"]
    assert spec["running"] is True and "runStrategy" not in spec, "left on the field it used"
    assert ctx.vmi("vm1")["metadata"]["uid"] == uid


# --------------------------------------------------------------------------------------------
# offline


def test_offline_stopped_vm_with_three_disk_kinds_stays_stopped(ctx: Moves) -> None:
    disks = [
        Disk("root", "template", "vm1-root"),
        Disk("data", "dv", "vm1-data"),
        Disk("scratch", "pvc", "vm1-scratch"),
    ]
    ctx.make("vm1", disks, running=False)
    before, _ = run_and_capture(ctx, "vm1")

    rc, report, err = ctx.apply(body=plan_body())

    assert rc == 0, err
    moved = assert_moved(
        ctx,
        "vm1",
        before,
        report,
        flow="offline",
        classes=dict.fromkeys(("root", "data", "scratch"), TARGET_CLASS),
    )
    assert ctx.vm("vm1")["spec"]["runStrategy"] == "Halted"
    assert not ctx.vmi("vm1"), "a stopped VM stays stopped"
    for volume, target in moved.items():
        source = disks_of(before)[volume]
        assert ctx.dv(target)["spec"]["source"] == {"pvc": {"namespace": ctx.ns, "name": source}}, (
            "a CDI clone of the source"
        )
    assert ctx.dv("vm1-data") and ctx.pvc("vm1-scratch"), "retention Keep leaves the sources"


def test_offline_block_disks_cloned_block_to_block(ctx: Moves) -> None:
    disks = [
        Disk("root", "template", "vm1-root", block=True),
        Disk("raw", "pvc", "vm1-raw", block=True),
    ]
    ctx.make("vm1", disks, running=False)
    before, _ = run_and_capture(ctx, "vm1")

    rc, report, err = ctx.apply(body=plan_body(cls=BLOCK_CLASS))

    assert rc == 0, err
    assert_moved(
        ctx,
        "vm1",
        before,
        report,
        flow="offline",
        classes={"root": BLOCK_CLASS, "raw": BLOCK_CLASS},
        modes={"root": "Block", "raw": "Block"},
    )
    assert not ctx.vmi("vm1")


def test_offline_allow_stop_on_the_deprecated_running_field_restores_it(ctx: Moves) -> None:
    ctx.make(
        "vm1",
        [Disk("root", "template", "vm1-root"), Disk("data", "pvc", "vm1-data")],
        deprecated_running=True,
    )
    before, uid = run_and_capture(ctx, "vm1")

    rc, report, err = ctx.apply(body=plan_body(extra="mode: Offline\nallowStop: true\n"))

    assert rc == 0, err
    assert_moved(
        ctx,
        "vm1",
        before,
        report,
        flow="offline",
        classes={"root": TARGET_CLASS, "data": TARGET_CLASS},
    )
    spec = ctx.vm("vm1")["spec"]
    assert spec["running"] is True and "runStrategy" not in spec, "stopped and started by `running`"
    vmi = ctx.vmi("vm1")
    assert vmi["status"]["phase"] == "Running"
    assert vmi["metadata"]["uid"] != uid, "an offline move restarts the guest"
    assert set(disks_of({"spec": {"template": {"spec": vmi["spec"]}}}).values()) == set(
        disks_of(ctx.vm("vm1")).values()
    ), "the new VMI runs on the targets"


# --------------------------------------------------------------------------------------------
# retention


DELETE = "retention: Delete\n"


def source_watch(ctx: Moves, name: str, sources: dict[str, str]) -> Sampler:
    """Samples (a source is gone or deleting, the journal's step, a last-migration record)."""

    def probe() -> tuple[bool, str | None, bool]:
        gone = any(ctx.gone_or_deleting(claim, plural) for claim, plural in sources.items())
        vm = ctx.vm(name)
        journal = annotation(vm, JOURNAL)
        step = str(json.loads(journal)["step"]) if journal else None
        return gone, step, annotation(vm, LAST) is not None

    return ctx.sample(probe)


def never_deleted_before_verification(samples: list[tuple[bool, str | None, bool]]) -> None:
    assert any(s[1] in ("wait-migration", "wait-targets") for s in samples), (
        "the sampler saw the move in flight"
    )
    early = [
        s for s in samples if s[0] and not (s[1] == "delete-sources" or (s[1] is None and s[2]))
    ]
    assert not early, f"a source went before the move was verified: {early[:3]}"


def test_retention_delete_after_a_live_move_frees_the_sources_when_the_vm_stops(
    ctx: Moves,
) -> None:
    """Upstream pvc-protection counts a completed pod that still lists a claim (the source
    virt-launcher pod a live migration leaves Succeeded, owned by the VMI), so a deleted
    source stays Terminating until the VM stops; apply says so instead of implying the
    storage is free, and the sources go once the VM stops."""
    ctx.make("vm1", [Disk("root", "template", "vm1-root"), Disk("data", "pvc", "vm1-data")])
    before, uid = run_and_capture(ctx, "vm1")
    pods_before = {p["metadata"]["name"] for p in ctx.pods("vm1")}
    watch = source_watch(
        ctx, "vm1", {"vm1-root": "datavolumes", "vm1-data": "persistentvolumeclaims"}
    )

    rc, report, err = ctx.apply(body=plan_body(extra=DELETE))

    never_deleted_before_verification(watch.stop())
    assert rc == 0, err
    assert_moved(
        ctx,
        "vm1",
        before,
        report,
        flow="live",
        classes={"root": TARGET_CLASS, "data": TARGET_CLASS},
    )
    assert ctx.vmi("vm1")["metadata"]["uid"] == uid
    (old_launcher,) = pods_before
    assert ctx.pod(old_launcher)["status"]["phase"] == "Succeeded", (
        "the old virt-launcher pod is left Succeeded after the migration"
    )
    last = ctx.last("vm1")
    assert sorted(last["sourcesDeleted"]) == ["vm1-data", "vm1-root"]
    assert "sourcesKept" not in last
    for claim in ("vm1-root", "vm1-data"):
        assert (
            f"source {claim} stays Terminating until the completed pod {old_launcher} is removed"
            in err
        ), err
    ctx.eventually(lambda: not ctx.dv("vm1-root"), 60.0, what="source DataVolume deleted")
    assert all(
        ctx.pvc(claim)["metadata"].get("deletionTimestamp") for claim in ("vm1-root", "vm1-data")
    ), "the deleted sources are Terminating, held by the completed launcher pod"

    ctx.set_running("vm1", False)  # the VMI goes, and its pods with it

    ctx.eventually(
        lambda: not ctx.pvc("vm1-root") and not ctx.pvc("vm1-data"),
        120.0,  # on the real engine: virt-controller deletes the pods, KWOK removes them
        what="sources freed once the VM stopped",
    )


def test_retention_delete_waits_until_no_pod_mounts_the_source(ctx: Moves) -> None:
    ctx.make("vm1", [Disk("root", "template", "vm1-root"), Disk("data", "pvc", "vm1-data")])
    before, _ = run_and_capture(ctx, "vm1")
    ctx.holder_pod("backup", "vm1-data")  # e.g. a backup job reading the disk
    held: list[bool] = []

    def release(_: object) -> None:
        held.append(not ctx.gone_or_deleting("vm1-data", "persistentvolumeclaims"))
        ctx.delete("v1", "pods/backup")

    released = ctx.during(ctx.at_step("vm1", "delete-sources"), release)
    watch = source_watch(ctx, "vm1", {"vm1-data": "persistentvolumeclaims"})

    rc, report, err = ctx.apply(body=plan_body(extra=DELETE))

    released.check()
    samples = watch.stop()
    never_deleted_before_verification(samples)
    assert rc == 0, err
    assert_moved(
        ctx,
        "vm1",
        before,
        report,
        flow="live",
        classes={"root": TARGET_CLASS, "data": TARGET_CLASS},
    )
    assert held == [True], "apply waited at delete-sources while the pod held the source"
    assert ctx.gone_or_deleting("vm1-data", "persistentvolumeclaims")
    assert sorted(ctx.last("vm1")["sourcesDeleted"]) == ["vm1-data", "vm1-root"]


def test_retention_delete_keeps_a_source_still_mounted_and_records_why(
    ctx: Moves, control_plane: ControlPlane
) -> None:
    ctx.make("vm1", [Disk("root", "template", "vm1-root"), Disk("data", "pvc", "vm1-data")])
    ctx.holder_pod("backup", "vm1-data")
    run_and_capture(ctx, "vm1")
    path = plan_file(ctx.tmp_path, ctx.ns, plan_body(extra=DELETE))

    report = engine.apply(
        [path],
        kubeconfig=str(control_plane.kubeconfig),
        lease_namespace=ctx.lease_ns,
        settings=Settings(release_timeout=0.5),
    )

    (outcome,) = report.outcomes
    assert outcome.result == "Succeeded", outcome.reason
    last = ctx.last("vm1")
    assert last["sourcesKept"] == {"vm1-data": "still mounted by pod backup"}
    assert last["sourcesDeleted"] == ["vm1-root"]
    pvc = ctx.pvc("vm1-data")
    assert pvc and not pvc["metadata"].get("deletionTimestamp"), "kept, not left Terminating"
    assert ctx.content("vm1-data") == ctx.source_hashes["data"]
    assert ctx.gone_or_deleting("vm1-root")


def test_retention_delete_keeps_a_source_another_vm_refers_to(ctx: Moves) -> None:
    ctx.make(
        "vm1",
        [Disk("root", "template", "vm1-root"), Disk("data", "pvc", "vm1-data")],
        running=False,
    )
    before, _ = run_and_capture(ctx, "vm1")
    other = vm_manifest(ctx.ns, "vm2", [Disk("data", "pvc", "vm1-data")], running=False)
    create(ctx.api, other)

    rc, report, err = ctx.apply(body=plan_body(extra=DELETE))

    assert rc == 0, err
    assert_moved(
        ctx,
        "vm1",
        before,
        report,
        flow="offline",
        classes={"root": TARGET_CLASS, "data": TARGET_CLASS},
    )
    last = ctx.last("vm1")
    assert last["sourcesKept"] == {"vm1-data": f"still used by VirtualMachine {ctx.ns}/vm2"}
    assert ctx.pvc("vm1-data") and not ctx.pvc("vm1-data")["metadata"].get("deletionTimestamp")
    assert ctx.gone_or_deleting("vm1-root")
