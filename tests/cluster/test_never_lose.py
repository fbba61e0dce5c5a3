"""Never lose a disk (issue 14): one test per write-side case the hostile test found, each
failing on 2d06030 (before the fix), on the real engine: upstream virt-controller, virt-api
and cdi-controller, with the node side (``testenv.node``) playing virt-handler, the kubelet,
CSI and CDI's worker pods.

The cases, by the issue's numbering (1, split brain, and the random-kill storm are
tests/cluster/test_split_brain.py and test_kill_storm.py; 9, 11, 12 and the rest of 13 are not
decisions of `apply`'s state machine):

2. a stale clone is never swapped in (``source-changed``), and the next run copies again;
3. a leftover clone of an abandoned move is never reused: deleted, and copied afresh;
4. retention Delete keeps a source another VM started to use while we waited for its pods;
5. a forged journal is refused: a clone of another namespace's claim, a delete of a claim the
   VM never used;
6. an open move is finished when its namespace left the plans (allow-list or none);
7. retention Delete in the journal yields to a plan changed to Keep;
8. backoff after a failed move; one move of a VM per run, also after a resumed rollback;
10. a busy writer makes neither a move nor a rollback give up (nor the first journal write of
    a move): its unrelated VM patches land between each of the move's reads of the VM and the
    patch built from it (the premise, counted; not a rate, which virt-api's admission under
    the suite's load does not reach);
13. a target deleted mid-migration is noticed at once and the run ends with the VM back on
    its source (rolled back, or, where upstream KubeVirt loses its own cancellation, failed
    at a short rollback deadline with the journal kept); a VM deleted while no run is active
    leaves no target behind.

Killed runs are `apply` subprocesses with ``VMSR_FAILPOINT`` (SIGKILL at a step boundary); the
Lease such a run leaves is expired by moving its renewTime back. A guest "writes" by setting a
new content hash on its disk's PVC and PV while the VMI runs (``tests.support.never_lose``).
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pykube
import pytest

from reconciler import engine
from reconciler.apply.context import Settings
from reconciler.cli.main import main
from testenv.controlplane import ControlPlane
from testenv.node.runtime import FaultAction
from tests.cluster.test_apply import CDI, KV, cluster_objects
from tests.cluster.test_plan import create, plan_file
from tests.support.kube import Eventually, condition, get_json
from tests.support.moves import (
    FAULT_ANNOTATION,
    TARGET_CLASS,
    Disk,
    Moves,
    disks_of,
    moves_ctx,
    vm_manifest,
)
from tests.support.never_lose import (
    BusyWriter,
    expire_lease,
    forged,
    journal_text,
    killed_apply,
    put_journal,
    replace_strings,
    use_vm,
)
from tests.support.node_faults import NodeSide

__all__ = ["cluster_objects"]  # the module fixture that seeds the classes and the KubeVirt CR

DV_KIND = "DataVolume"
ROOT = [Disk("root", "template", "vm1-root")]
SOURCE = "vm1-root"
OFFLINE = "mode: Offline\nallowStop: true\n"
DELETE = "retention: Delete\n"
BOUNDED = "timeout: 1m\n"  # a move that misses what a test waits for ends in a minute
IN_FLIGHT = "vmstorage.dev/in-flight"


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


def body(vm: str = "vm1", extra: str = "") -> str:
    return f"storageClass: {TARGET_CLASS}\n{extra}virtualMachines:\n  - name: {vm}\n"


def outcomes_of(report: dict[str, Any], name: str = "vm1") -> list[dict[str, Any]]:
    return [dict(o) for o in report.get("outcomes") or () if o["name"] == name]


def only(report: dict[str, Any], name: str = "vm1") -> dict[str, Any]:
    found = outcomes_of(report, name)
    assert len(found) == 1, f"expected one outcome for {name}: {report.get('outcomes')}"
    return found[0]


def alive(ctx: Moves, plural: str, name: str, namespace: str | None = None) -> bool:
    """``plural/name`` exists and is not being deleted."""
    version = CDI if plural == "datavolumes" else "v1"
    response = ctx.api.get(version=version, namespace=namespace or ctx.ns, url=f"{plural}/{name}")
    if response.status_code == 404:
        return False
    ctx.api.raise_for_status(response)
    return not response.json()["metadata"].get("deletionTimestamp")


def source_alive(ctx: Moves, claim: str = SOURCE) -> bool:
    return alive(ctx, "persistentvolumeclaims", claim) and (
        alive(ctx, "datavolumes", claim) or claim not in ctx.dvs()
    )


def running(ctx: Moves, name: str = "vm1") -> dict[str, Any]:
    return dict(
        ctx.eventually(
            lambda: ctx.vmi(name) if ctx.vmi_phase(name) == "Running" else None,
            timeout=30,
            what=f"{name}'s VMI Running",
        )
    )


def vmi_claims(vmi: dict[str, Any]) -> dict[str, str]:
    return {
        str(v["name"]): str(v["persistentVolumeClaimInfo"]["claimName"])
        for v in (vmi.get("status") or {}).get("volumeStatus") or ()
        if v.get("persistentVolumeClaimInfo")
    }


def target_of(ctx: Moves, name: str = "vm1") -> str:
    journal = ctx.journal(name)
    assert journal is not None, f"{name} has no journal"
    (volume,) = journal["volumes"]
    return str(volume["target"])


def apply_paths(ctx: Moves, paths: list[Path], *args: str) -> tuple[int, dict[str, Any], str]:
    """`apply -o json` on plan files of any namespace (``ctx.apply`` writes its own)."""
    rc = main(
        [
            "apply",
            *map(str, paths),
            "-o",
            "json",
            "--kubeconfig",
            str(ctx.control_plane.kubeconfig),
            "--lease-namespace",
            ctx.lease_ns,
            *args,
        ]
    )
    out, err = ctx.capsys.readouterr()
    return rc, json.loads(out) if out.strip().startswith("{") else {}, err


# --------------------------------------------------------------------------------------------
# 2, 3: a copy is used only if nothing can have changed since it began


def test_stale_clone_is_never_swapped_in_and_the_next_run_copies_again(ctx: Moves) -> None:
    """Case 2: an offline move killed mid-copy; the copy finishes; the owner starts the VM,
    its guest writes, the owner stops it. The next run must not swap onto the clone taken
    before those writes (and, retention Delete, delete the source holding them)."""
    ctx.make("vm1", ROOT)
    plan = body(extra=OFFLINE + DELETE + BOUNDED)
    killed_apply(ctx, plan, "before:wait-targets")
    target = target_of(ctx)
    ctx.eventually(lambda: ctx.dv_phase(target) == "Succeeded", what="the clone finished")
    stale = ctx.content(target)
    assert stale and stale == ctx.content(SOURCE)
    written = use_vm(ctx, "vm1", SOURCE)
    expire_lease(ctx)

    rc, report, err = ctx.apply(body=plan)

    outcome = only(report)
    assert (outcome["result"], outcome["rule"], outcome["resumed"]) == (
        "RolledBack",
        "source-changed",
        True,
    ), f"the stale clone was swapped in: {outcome}\n{err}"
    assert rc == 3, err
    vm = ctx.vm("vm1")
    assert disks_of(vm) == {"root": SOURCE}, "the VM is on its source"
    assert source_alive(ctx), "the source, holding the guest's writes, is not deleted"
    assert ctx.content(SOURCE) == written
    ctx.eventually(lambda: not ctx.ours(), what="the stale clone deleted")
    assert ctx.journal("vm1") is None
    assert (ctx.last("vm1")["result"], ctx.last("vm1")["rule"]) == ("RolledBack", "source-changed")

    # source-changed says nothing about the VM: no backoff, the next run copies again
    rc, report, err = ctx.apply(body=plan)

    outcome = only(report)
    assert (outcome["result"], outcome["resumed"]) == ("Succeeded", False), (
        f"{outcome['rule']}: {outcome['reason']}\n{err}"
    )
    assert rc == 0, err
    moved = disks_of(ctx.vm("vm1"))["root"]
    assert moved != SOURCE
    assert ctx.content(moved) == written, "the new copy holds the guest's writes"
    assert not source_alive(ctx), "retention Delete, once the copy is current"
    assert ctx.last("vm1")["sourcesDeleted"] == [SOURCE]


def test_leftover_clone_of_an_abandoned_move_is_never_reused(ctx: Moves) -> None:
    """Case 3: mid-move (the clone exists) the owner removes the journal to abandon the move
    and uses the VM. The next run must delete that leftover (in flight, no journal claims
    it) and copy afresh, never adopt it."""
    ctx.make("vm1", ROOT)
    plan = body(extra=OFFLINE + DELETE + BOUNDED)
    killed_apply(ctx, plan, "before:wait-targets")
    target = target_of(ctx)
    ctx.eventually(lambda: ctx.dv_phase(target) == "Succeeded", what="the clone finished")
    leftover = ctx.dv(target)
    put_journal(ctx, "vm1", None)  # the owner abandons the move
    written = use_vm(ctx, "vm1", SOURCE)
    assert ctx.content(target) != written, "the leftover is stale"
    expire_lease(ctx)

    rc, report, err = ctx.apply(body=plan)

    assert "reusing DataVolume" not in err, err
    outcome = only(report)
    assert (outcome["result"], outcome["resumed"]) == ("Succeeded", False), (
        f"{outcome['rule']}: {outcome['reason']}\n{err}"
    )
    assert disks_of(ctx.vm("vm1")) == {"root": target}, "same deterministic name"
    assert ctx.dv(target)["metadata"]["uid"] != leftover["metadata"]["uid"], "a fresh copy"
    assert ctx.content(target) == written, "the copy holds the guest's writes"
    assert not source_alive(ctx), "retention Delete"
    deleted_leftover = err.find(f"deleted DataVolume {target}")
    assert 0 <= deleted_leftover < err.find(f"deleted source DataVolume {SOURCE}"), err
    assert rc == 0, err
    assert (
        leftover["metadata"]["annotations"].get(IN_FLIGHT)
        == leftover["metadata"]["labels"]["vmstorage.dev/migration"]
    ), "the leftover was marked in flight by its move"


# --------------------------------------------------------------------------------------------
# 4, 7: deleting a source


def test_retention_delete_keeps_a_source_another_vm_took_while_waiting_for_pods(
    ctx: Moves,
) -> None:
    """Case 4: the source is held by a pod, so delete-sources waits; meanwhile another VM is
    created on the source and the pod goes. The source must survive."""
    ctx.make("vm1", ROOT, running=False)
    plan = body(extra=DELETE + BOUNDED)
    killed_apply(ctx, plan, "before:delete-sources")
    ctx.holder_pod("backup", SOURCE)  # e.g. a backup job reading the old disk
    expire_lease(ctx)
    lines: list[str] = []

    def another_vm_takes_the_source(_: object) -> None:
        create(ctx.api, vm_manifest(ctx.ns, "vm2", [Disk("root", "pvc", SOURCE)], running=False))
        ctx.delete("v1", "pods/backup")

    took = ctx.during(
        lambda: any("waiting for pods to release" in line for line in lines),
        another_vm_takes_the_source,
    )

    report = engine.apply(
        [plan_file(ctx.tmp_path, ctx.ns, plan)],
        kubeconfig=str(ctx.control_plane.kubeconfig),
        lease_namespace=ctx.lease_ns,
        progress=lines.append,
        settings=Settings(tick=0.1),
    )

    took.check()
    (outcome,) = [o for o in report.outcomes if o.vm == "vm1"]
    assert source_alive(ctx), "the source vm2 now uses was deleted"
    assert (outcome.result, outcome.resumed) == ("Succeeded", True), outcome
    last = ctx.last("vm1")
    assert not last.get("sourcesDeleted"), last
    assert f"VirtualMachine {ctx.ns}/vm2" in last["sourcesKept"][SOURCE], last


def test_plan_changed_to_keep_keeps_the_source_the_journal_would_delete(ctx: Moves) -> None:
    """Case 7: killed just before delete-sources with retention Delete; the plan is changed
    to Keep before the rerun. The more conservative of journal and plan wins."""
    ctx.make("vm1", ROOT, running=False)
    killed_apply(ctx, body(extra=DELETE + BOUNDED), "before:delete-sources")
    journal = ctx.journal("vm1")
    assert journal is not None and journal["retention"] == "Delete"
    expire_lease(ctx)

    rc, report, err = ctx.apply(body=body(extra="retention: Keep\n" + BOUNDED))

    assert source_alive(ctx), f"the source was deleted though the plan says Keep:\n{err}"
    outcome = only(report)
    assert (outcome["result"], outcome["resumed"]) == ("Succeeded", True), (outcome, err)
    assert rc == 0, err
    last = ctx.last("vm1")
    assert not last.get("sourcesDeleted"), last
    assert "Keep" in last["sourcesKept"][SOURCE], last


# --------------------------------------------------------------------------------------------
# 5: the journal is untrusted input


def test_forged_journal_cloning_another_namespace_s_claim_is_refused(
    ctx: Moves, control_plane: ControlPlane
) -> None:
    """Case 5: tenant A's VM carries a journal (a real one, edited) whose DataVolume clones
    tenant B's claim; both namespaces are allowed. Nothing may be created or changed."""
    tenant_b = control_plane.create_namespace("tenant-b")
    secret = Disk("data", "pvc", "secret-disk").standalone(tenant_b)
    assert secret is not None
    create(ctx.api, secret)
    ctx.make("vm1", ROOT, running=False)
    plan = body(extra=BOUNDED)
    killed_apply(ctx, plan, "before:create-targets")

    def clone_tenant_b(doc: dict[str, Any]) -> dict[str, Any]:
        for dv in doc["dataVolumes"]:
            dv["spec"]["source"] = {"pvc": {"namespace": tenant_b, "name": "secret-disk"}}
        return doc

    text = forged(journal_text(ctx, "vm1"), clone_tenant_b)
    put_journal(ctx, "vm1", text)
    before = ctx.vm("vm1")
    dvs = set(ctx.dvs())
    expire_lease(ctx)

    rc, report, err = ctx.apply(
        "--allow-namespace", ctx.ns, "--allow-namespace", tenant_b, body=plan
    )

    assert set(ctx.dvs()) == dvs, "a DataVolume was created from the forged journal"
    vm = ctx.vm("vm1")
    assert vm["spec"] == before["spec"], "the VM is untouched"
    assert journal_text(ctx, "vm1") == text, "the journal is left as it was, for a human"
    outcome = only(report)
    assert (outcome["result"], outcome["rule"]) == ("Failed", "journal-refused"), outcome
    assert tenant_b in outcome["reason"], outcome
    assert rc == 3, err


@pytest.mark.parametrize("forgery", ["source-only", "consistent"])
def test_forged_journal_deleting_a_claim_the_vm_never_used_leaves_it(
    ctx: Moves, forgery: str
) -> None:
    """Case 5, second form: a journal at delete-sources (retention Delete) naming as a source a
    claim the VM never used: only in its volumes (``source-only``: refused), or everywhere the
    journal names the source (``consistent``: its DataVolume manifests, patch operations and
    volumes all agree, so nothing in the journal contradicts it; then the destination, which
    does not record copying that claim, must keep it)."""
    victim = Disk("data", "pvc", "victim").standalone(ctx.ns)
    assert victim is not None
    create(ctx.api, victim)
    content = ctx.content("victim")
    ctx.make("vm1", ROOT, running=False)
    plan = body(extra=DELETE + BOUNDED)
    killed_apply(ctx, plan, "before:delete-sources")

    def delete_the_victim(doc: dict[str, Any]) -> dict[str, Any]:
        if forgery == "consistent":
            doc = replace_strings(doc, SOURCE, "victim")
        for volume in doc["volumes"]:
            volume["source"], volume["sourceIsDataVolume"] = "victim", False
        return dict(doc)

    text = forged(journal_text(ctx, "vm1"), delete_the_victim)
    put_journal(ctx, "vm1", text)
    before = ctx.vm("vm1")
    expire_lease(ctx)

    rc, report, err = ctx.apply(body=plan)

    assert alive(ctx, "persistentvolumeclaims", "victim"), f"the victim was deleted:\n{err}"
    assert ctx.content("victim") == content
    assert source_alive(ctx), "nor was the real source deleted on the forged journal's word"
    outcome = only(report)
    if forgery == "source-only":
        assert (outcome["result"], outcome["rule"]) == ("Failed", "journal-refused"), outcome
        assert ctx.vm("vm1")["spec"] == before["spec"]
        assert journal_text(ctx, "vm1") == text, "the journal is left as it was"
        assert rc == 3, err
    elif outcome["rule"] != "journal-refused":
        last = ctx.last("vm1")
        assert not last.get("sourcesDeleted"), last
        assert "does not record this move copying it" in last["sourcesKept"]["victim"], last


# --------------------------------------------------------------------------------------------
# 6: open journals everywhere


@pytest.mark.parametrize("allow_list", [True, False], ids=["allow-list", "no-allow-list"])
def test_open_move_is_finished_when_its_namespace_left_the_plans(
    ctx: Moves, control_plane: ControlPlane, allow_list: bool
) -> None:
    """Case 6: an offline move of a running VM killed mid-copy; the next run has plans only for
    another namespace. It must still finish (or roll back) the open move."""
    ctx.make("vm1", ROOT)
    killed_apply(ctx, body(extra=OFFLINE + BOUNDED), "before:wait-targets")
    assert ctx.vm("vm1")["spec"]["runStrategy"] == "Halted", "stopped for the copy"
    other_ns = control_plane.create_namespace("other-plans")
    (ctx.tmp_path / "other").mkdir()
    other = Moves(
        ctx.api,
        control_plane,
        other_ns,
        ctx.tmp_path / "other",
        ctx.eventually,
        ctx.capsys,
        ctx.node_side,
    )
    other.make(
        "vm2", [Disk("root", "template", "vm2-root", storage_class=TARGET_CLASS)], running=False
    )
    path = plan_file(ctx.tmp_path, other_ns, body("vm2"), name="other")
    args = ("--allow-namespace", ctx.ns, "--allow-namespace", other_ns) if allow_list else ()
    expire_lease(ctx)

    rc, report, err = apply_paths(ctx, [path], *args)

    outcome = only(report)
    assert outcome["resumed"] is True, outcome
    assert outcome["namespace"] == ctx.ns
    assert outcome["result"] in ("Succeeded", "RolledBack"), (outcome, err)
    assert rc == (0 if outcome["result"] == "Succeeded" else 3), err
    assert ctx.journal("vm1") is None, "no journal left"
    vm = ctx.vm("vm1")
    assert vm["spec"]["runStrategy"] == "Always"
    vmi = running(ctx)
    assert vmi_claims(vmi) == disks_of(vm)


# --------------------------------------------------------------------------------------------
# 8: backoff, one move of a VM per run


def test_a_failed_move_backs_off_and_the_vm_is_not_stopped_again(ctx: Moves) -> None:
    """Case 8: a clone that always fails (its cloner pod fails every attempt, CDI restarts it);
    the first run gives up and rolls back (the VM runs again). An immediate second run must
    not stop the VM again: it backs off and says until when."""
    ctx.make("vm1", ROOT)
    plan = body(extra=OFFLINE + BOUNDED)
    target = ctx.targets(plan)["vm1"]["root"]
    ctx.fault(DV_KIND, target, FaultAction.FAIL)

    rc, report, err = ctx.apply(body=plan)

    assert rc == 3, err
    assert (only(report)["result"], only(report)["rule"]) == ("RolledBack", "copy-failed")
    uid = running(ctx)["metadata"]["uid"]
    ctx.eventually(lambda: not ctx.ours(), what="the failed copy deleted")
    before = ctx.vm("vm1")
    began = datetime.now(UTC)
    lines: list[str] = []

    again = engine.apply(
        [plan_file(ctx.tmp_path, ctx.ns, plan)],
        kubeconfig=str(ctx.control_plane.kubeconfig),
        lease_namespace=ctx.lease_ns,
        progress=lines.append,
    )

    key = f"{ctx.ns}/vm1"
    assert [o for o in again.outcomes if o.vm == "vm1"] == [], "the VM was moved again at once"
    vm = ctx.vm("vm1")
    assert vm["spec"] == before["spec"], "runStrategy and volumes untouched"
    assert vm["metadata"]["generation"] == before["metadata"]["generation"]
    assert ctx.vmi("vm1")["metadata"]["uid"] == uid, "the VM was not restarted"
    assert target not in ctx.dvs()
    assert key in again.pending
    assert again.backing_off == (key,)
    (note,) = [n for n in again.notes if key in n]
    until = datetime.fromisoformat(note.split("backing off until ")[1].split(" ")[0])
    assert until >= began + timedelta(seconds=200), note
    assert any(key in line and until.isoformat() in line for line in lines), lines


def test_a_run_that_resumes_a_rollback_does_not_move_the_vm_again(ctx: Moves) -> None:
    """Case 8: a run killed mid-rollback; the run that finishes the rollback must not start a
    new move of the same VM (even though, the fault gone, it would now succeed)."""
    ctx.make("vm1", ROOT)
    plan = body(extra=OFFLINE + BOUNDED)
    target = ctx.targets(plan)["vm1"]["root"]
    ctx.fault(DV_KIND, target, FaultAction.FAIL)
    killed_apply(ctx, plan, "before:delete-targets")
    journal = ctx.journal("vm1")
    assert journal is not None and journal["rollback"]["rule"] == "copy-failed", journal
    ctx.clear_fault(DV_KIND, target)
    uid = running(ctx)["metadata"]["uid"]
    expire_lease(ctx)

    rc, report, err = ctx.apply(body=plan)

    moves = [(o["result"], o["resumed"]) for o in outcomes_of(report)]
    assert moves == [("RolledBack", True)], f"one move of vm1 per run: {moves}\n{err}"
    assert report["pending"] == [f"{ctx.ns}/vm1"]
    assert disks_of(ctx.vm("vm1")) == {"root": SOURCE}
    assert ctx.vmi("vm1")["metadata"]["uid"] == uid, "not stopped again"
    ctx.eventually(lambda: not ctx.ours(), what="the failed copy deleted")
    assert ctx.journal("vm1") is None
    assert rc == 3, err


# --------------------------------------------------------------------------------------------
# 10: a busy writer


@dataclass
class Busy:
    """A busy writer (``BusyWriter``) and, from its release on, each time one of the move's
    steps read the VM to patch it and the VM changed before the patch was sent (the step's
    name and the resourceVersions before and after)."""

    writer: BusyWriter
    overtaken: list[tuple[str, str, str]] = field(default_factory=list)

    def steps(self) -> set[str]:
        return {step for step, _seen, _now in self.overtaken}


Release = Callable[[Callable[[Any], bool]], Busy]


@pytest.fixture
def busy(ctx: Moves, monkeypatch: pytest.MonkeyPatch) -> Iterator[Release]:
    """``busy(when)``: a busy writer on vm1 (unrelated label patches from another process,
    each through virt-api's admission), released as soon as a journal the move wrote
    satisfies ``when(journal)`` (from its first write, or once it rolls back), and busy until
    the end of the run. From then on it wins every race it can: each time a step reads the VM
    to patch it (``vm_steps.read_vm``), the read returns only once the VM's resourceVersion
    moved on, so a write lands between every read of ours and the patch built from it: a
    patch guarded by the resourceVersion it read would conflict every time, and a step that
    gave up after a few conflicts would fail for sure. Whatever rate the writer reaches under
    load, that interleaving is what it stands for."""
    from reconciler.apply import store, vm_steps

    runs: list[Busy] = []
    real_write, real_read = store.write, store.read_vm
    reader = ctx.control_plane.api()

    def version() -> str:
        vm = get_json(reader, KV, ctx.ns, "virtualmachines/vm1")
        return str(vm.get("metadata", {}).get("resourceVersion", ""))

    def start(when: Callable[[Any], bool]) -> Busy:
        writer = BusyWriter(ctx.control_plane.kubeconfig, ctx.ns, "vm1", rate=20.0).start()
        run = Busy(writer)
        runs.append(run)

        def write_then_busy(move: Any, journal: Any) -> Any:
            written = real_write(move, journal)
            if not writer.released and when(written):
                writer.release()
            return written

        def read_then_overtaken(move: Any) -> Any:
            vm = real_read(move)
            if vm is not None and writer.released and not writer.stopped:
                seen = str(vm["metadata"]["resourceVersion"])
                now = ctx.eventually(
                    lambda: (v := version()) != seen and v, what="the busy writer's next patch"
                )
                run.overtaken.append((move.step, seen, now))
            return vm

        monkeypatch.setattr(store, "write", write_then_busy)
        monkeypatch.setattr(vm_steps, "read_vm", read_then_overtaken)
        return run

    yield start
    for run in runs:
        run.writer.stop()


def test_a_busy_writer_does_not_make_an_offline_move_give_up(ctx: Moves, busy: Release) -> None:
    """Case 10: unrelated patches to the VM throughout an offline move of the running VM
    (from its first journal write on: the first write is the test below), one landing
    between each of the move's reads of the VM and its patch: the stop, the swap and the
    start must not give up."""
    ctx.make("vm1", ROOT)
    content = ctx.content(SOURCE)
    run = busy(lambda _journal: True)

    rc, report, err = ctx.apply(body=body(extra=OFFLINE + BOUNDED))

    run.writer.stop()
    assert run.writer.released and not run.writer.errors, run.writer.errors[:3]
    assert report, err
    outcome = only(report)
    assert (outcome["result"], outcome["flow"]) == ("Succeeded", "offline"), (outcome, err)
    assert rc == 0, err
    assert {"stop", "swap", "start"} <= run.steps(), (
        f"the VM changed between a read and the patch of each of stop, swap and start: "
        f"{run.overtaken}"
    )
    assert run.writer.writes >= len(run.overtaken), "the writer wrote throughout"
    vm = ctx.vm("vm1")
    moved = disks_of(vm)["root"]
    assert moved != SOURCE and ctx.content(moved) == content
    assert vm["spec"]["runStrategy"] == "Always"
    assert vm["metadata"]["labels"].get("busy-writer"), "the writer's label stays"
    assert vmi_claims(running(ctx)) == {"root": moved}
    assert ctx.journal("vm1") is None


def test_a_busy_writer_does_not_leave_a_rolled_back_vm_stopped(ctx: Moves, busy: Release) -> None:
    """Case 10: an offline move of the running VM fails (every cloner pod attempt fails) and is
    rolled back under the same writer (released once the move rolls back, a write between
    each of the rollback's reads of the VM and its patch): the rollback's start must not give
    up; the VM runs again on its source."""
    ctx.make("vm1", ROOT)
    plan = body(extra=OFFLINE + BOUNDED)
    target = ctx.targets(plan)["vm1"]["root"]
    ctx.fault(DV_KIND, target, FaultAction.FAIL)
    run = busy(lambda journal: bool(journal.rolling_back))

    rc, report, err = ctx.apply(body=plan)

    run.writer.stop()
    assert run.writer.released and not run.writer.errors, run.writer.errors[:3]
    assert report, err
    outcome = only(report)
    assert (outcome["result"], outcome["rule"]) == ("RolledBack", "copy-failed"), (outcome, err)
    assert rc == 3, err
    assert {"revert", "start"} <= run.steps(), (
        f"the VM changed between a read and the patch of the revert and the start: {run.overtaken}"
    )
    assert run.writer.writes >= len(run.overtaken), "the writer wrote throughout"
    vm = ctx.vm("vm1")
    assert vm["spec"]["runStrategy"] == "Always", "the rollback restored the run strategy"
    assert disks_of(vm) == {"root": SOURCE}
    assert vmi_claims(running(ctx)) == {"root": SOURCE}
    assert ctx.journal("vm1") is None


def test_a_busy_writer_does_not_keep_a_move_from_starting(
    ctx: Moves, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Case 10, the move's first journal write: an unrelated writer lands between each of its
    first 6 reads of the VM and the patch that follows (what a busy writer does on a loaded
    API server, made deterministic). The write must be retried, with backoff, not given up."""
    from reconciler.apply import store

    ctx.make("vm1", ROOT)
    real_read = store.read_vm
    raced: list[int] = []

    def read_then_raced(run: Any) -> Any:
        vm = real_read(run)
        if vm is not None and len(raced) < 6:
            ctx.merge("virtualmachines/vm1", {"metadata": {"labels": {"busy": str(len(raced))}}})
            raced.append(1)
        return vm

    monkeypatch.setattr(store, "read_vm", read_then_raced)

    rc, report, err = ctx.apply(body=body(extra=OFFLINE + BOUNDED))

    assert report, err
    assert only(report)["result"] == "Succeeded", err
    assert rc == 0, err


# --------------------------------------------------------------------------------------------
# 13: targets deleted, VMs deleted


ROLLBACK_DEADLINE = 60.0
"""The rollback's budget for each of its waits in the target-deleted case (the default is
900 s): how long a run waits for a cancellation upstream may never confirm."""


def test_target_deleted_mid_migration_fails_the_move_at_once(ctx: Moves) -> None:
    """Case 13: the destination DataVolume is deleted while KubeVirt's migration copies (a
    stalled one): the move fails within seconds, not at its deadline, and rolls back; the run
    ends, with the VM's volumes and the VMI's back on the source, the guest running there all
    along, the source's content intact.

    How the rollback ends is upstream's to decide. KubeVirt v1.8.4 cancels a volume migration
    in two writes (volume-migration.go ``VolumeMigrationCancel``: the VMI's volumes reverted,
    then ``cancelVolumeMigration``'s condition patch, guarded by JSON-patch tests). Here its
    VM controller also re-creates the deleted destination from the VM's dataVolumeTemplates,
    and when a condition write of its VMI controller makes that second patch fail (422), the
    next sync finds the VMI's volumes already reverted and never cancels: VolumesChange stays
    True (seen in 2 runs of 5). Or the cancellation is confirmed but the stalled migration
    runs on: the workload updater deletes it only at a pass some other VMIM's change starts,
    else the node side fails it at KubeVirt's progress timeout (150 s), and apply deletes no
    destination while a migration may still land on it. In both, apply does not claim a
    rollback it cannot see end: at its rollback deadline (``ROLLBACK_DEADLINE`` here) the move
    is Failed (``rollback-timeout``), its journal kept at wait-reverted for the next run and
    for `status`. Each ending is accepted only with the state that explains it."""
    ctx.make("vm1", ROOT)
    ctx.merge("virtualmachines/vm1", {"metadata": {"annotations": {FAULT_ANNOTATION: "stall"}}})
    before = ctx.vm("vm1")
    uid = ctx.vmi("vm1")["metadata"]["uid"]
    content = ctx.content(SOURCE)
    plan = body(extra=BOUNDED)
    target = ctx.targets(plan)["vm1"]["root"]

    def copying() -> bool:
        return any((m.get("status") or {}).get("phase") == "Running" for m in ctx.migrations("vm1"))

    deleted = ctx.during(copying, lambda _: ctx.delete(CDI, f"datavolumes/{target}"), 90)
    lines: list[tuple[float, str]] = []

    report = engine.apply(
        [plan_file(ctx.tmp_path, ctx.ns, plan)],
        kubeconfig=str(ctx.control_plane.kubeconfig),
        lease_namespace=ctx.lease_ns,
        progress=lambda line: lines.append((time.monotonic(), str(line))),
        settings=Settings(tick=0.1, rollback_timeout=ROLLBACK_DEADLINE),
    )

    ended = time.monotonic()
    deleted.check()
    (outcome,) = [o for o in report.outcomes if o.vm == "vm1"]
    said = "\n".join(line for _, line in lines)
    noticed = [at for at, line in lines if "[target-deleted]; rolling back" in line]
    assert noticed, f"the deletion was never noticed: {outcome}\n{said}"
    assert noticed[0] - deleted.fired_at[0] < 30, "noticed at once, not at the deadline"
    assert ended - noticed[0] < ROLLBACK_DEADLINE + 60, "the run ended, within its deadline"
    vm = ctx.vm("vm1")
    assert disks_of(vm) == disks_of(before), "the VM is back on the source"
    vmi = ctx.vmi("vm1")
    assert vmi["metadata"]["uid"] == uid, "the guest kept running"
    assert ctx.vmi_phase("vm1") == "Running"
    assert disks_of({"spec": {"template": {"spec": vmi["spec"]}}}) == disks_of(before), (
        "KubeVirt reverted the VMI's volumes to the source"
    )
    assert source_alive(ctx) and ctx.content(SOURCE) == content, "nothing lost"
    change = condition(vmi, "VolumesChange")
    if outcome.result == "RolledBack":  # KubeVirt confirmed the cancellation
        assert outcome.rule == "target-deleted", (outcome, said)
        assert f"DataVolume {target} was deleted during the migration" in outcome.reason
        assert change.get("status") != "True", change
        assert "updateVolumesStrategy" not in vm["spec"]
        assert ctx.journal("vm1") is None
        return
    # KubeVirt's lost cancellation, or its migration not yet ended: nothing else may explain a
    # rollback that did not end
    assert (outcome.result, outcome.rule) == ("Failed", "rollback-timeout"), (outcome, said)
    assert "KubeVirt to confirm the cancellation" in outcome.reason, outcome.reason
    waited_for_abort = "volumes reverted; waiting for KubeVirt to abort migration" in said
    assert change.get("status") == "True" or waited_for_abort, (
        f"the cancellation was confirmed and no migration was waited for: {change}\n{said}"
    )
    journal = ctx.journal("vm1")
    assert journal is not None and journal["step"] == "wait-reverted", journal
    assert journal["rollback"]["rule"] == "target-deleted", "kept, with why it rolls back"


def test_vm_deleted_while_no_run_is_active_leaves_no_target(ctx: Moves) -> None:
    """Case 13: an offline move killed mid-copy, then its VM deleted: the next run deletes the
    in-flight destination no journal claims any more."""
    ctx.make("vm1", ROOT)
    ctx.make(
        "vm2", [Disk("root", "template", "vm2-root", storage_class=TARGET_CLASS)], running=False
    )
    killed_apply(ctx, body(extra=OFFLINE + BOUNDED), "before:wait-targets")
    target = target_of(ctx)
    assert target in ctx.ours()
    ctx.delete(KV, "virtualmachines/vm1")
    ctx.eventually(lambda: not ctx.vm("vm1"), what="vm1 gone")
    expire_lease(ctx)

    rc, report, err = ctx.apply(body=body("vm2"))

    assert f"deleted DataVolume {target}" in err, err
    ctx.eventually(lambda: ctx.gone_or_deleting(target), what=f"the leftover {target} deleted")
    assert rc == 0, err
    assert not outcomes_of(report, "vm1")
