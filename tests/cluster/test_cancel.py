"""`cancel` (issue 18 item 5): a way to stop a move, and what Ctrl-C says.

Real subprocesses against the session's real engine, with the harness of
test_apply_crash.py. Ctrl-C on `apply` stops it at the next step and says that KubeVirt goes
on migrating and what the next run does; `cancel NS/VM` then rolls the move back through its
journal: a live move mid-migration by KubeVirt's cancel-by-revert (the VM back on its source,
the same VMI, the destination deleted), an offline move mid-copy back to its source and its
run strategy. It takes the Lease like `apply` (held by another run: exit 4, nothing changed),
a crash during its rollback is finished by the next `apply`, and a VM with no open move, no
such VM, or a move past the point of no return get a clear message and their exit code.
"""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
from typing import Any

from reconciler.model.journal import Flow, Step
from reconciler.model.names import JOURNAL_ANNOTATION
from testenv.node.runtime import Fault, FaultAction
from tests.cluster.test_apply_crash import (
    FAULT,
    KV,
    ROOT,
    SOURCE,
    VM,
    VOLUME,
    Cluster,
    Run,
    cluster,
    cluster_objects,
    finish,
    ours,
    plan_body,
    settled_state,
    stalled_move,
    state_of,
    vmi_volume_claims,
    volume_claim,
)
from tests.support.kube import annotation, get_json

__all__ = ["cluster", "cluster_objects"]  # the fixtures, from test_apply_crash


CANCEL_TIMEOUT = 240.0
"""A bound on one `cancel`: a live move's rollback waits until KubeVirt has ended the stalled
migration, which upstream's workload updater may leave to the node side's progress timeout
(150 s) when no other migration's change triggers its next pass."""


def cancel(c: Cluster, *args: str, fail_at: str | None = None) -> Run:
    """`cancel` as a subprocess, with the Lease where the tests' `apply` takes it."""
    argv = [
        sys.executable,
        "-m",
        "reconciler",
        "cancel",
        *args,
        "--kubeconfig",
        str(c.control_plane.kubeconfig),
        "--lease-namespace",
        c.ns,
    ]
    began = time.monotonic()
    done = subprocess.run(
        argv,
        env=c.env(fail_at),
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=CANCEL_TIMEOUT,
        check=False,
    )
    return Run(done.returncode, done.stdout, done.stderr, time.monotonic() - began)


def migrating(c: Cluster) -> subprocess.Popen[str]:
    """A live move whose migration holds at Running (the node side's stall fault on the VM),
    `apply` waiting for it in the background."""
    c.create_vm()
    c.annotate_vm(FAULT, "stall")
    proc = c.start(plan_body(Flow.LIVE))

    def running() -> bool:
        assert proc.poll() is None, f"apply ended early: {proc.communicate()}"
        journal = c.journal()
        items = get_json(c.api, KV, c.ns, "virtualmachineinstancemigrations")["items"]
        phases = [(m.get("status") or {}).get("phase") for m in items]
        return journal is not None and journal.step is Step.WAIT_MIGRATION and "Running" in phases

    c.eventually(running, timeout=60, what="the live migration running")
    return proc


def interrupt(proc: subprocess.Popen[str]) -> Run:
    """Ctrl-C, as a terminal sends it."""
    proc.send_signal(signal.SIGINT)
    return finish(proc, timeout=15)


def assert_cancelled(c: Cluster, run: Run, source_hash: str | None) -> dict[str, Any]:
    assert run.returncode == 0, run
    assert "cancelled and rolled back" in run.stdout, run.stdout
    vm = c.vm()
    assert annotation(vm, JOURNAL_ANNOTATION) is None, "the journal is closed"
    assert volume_claim(vm) == SOURCE, "back on the source"
    assert [t["metadata"]["name"] for t in vm["spec"]["dataVolumeTemplates"]] == [SOURCE]
    assert "updateVolumesStrategy" not in vm["spec"]
    assert vm["spec"]["runStrategy"] == "Always", "the original run strategy"
    c.eventually(lambda: not ours(c), what="the move's DataVolumes deleted")
    assert c.source_exists() and c.content(SOURCE) == source_hash
    last = c.last()
    assert (last["result"], last["rule"]) == ("RolledBack", "cancelled"), last
    assert last["reason"].startswith("cancelled by "), last
    return vm


def test_ctrl_c_says_kubevirt_keeps_migrating_and_cancel_rolls_the_live_move_back(
    cluster: Cluster,
) -> None:
    proc = migrating(cluster)
    uid = cluster.vmi()["metadata"]["uid"]
    source_hash = cluster.content(SOURCE)
    move = cluster.journal()
    assert move is not None

    stopped = interrupt(proc)

    assert stopped.returncode == 1, stopped
    assert "Ctrl-C again quits at once" in stopped.stderr
    said = " ".join(stopped.stderr.split())
    assert f"move {move.id} stays journaled at step wait-migration" in said, said
    assert "KubeVirt keeps migrating the disks: stopping apply does not cancel the migration" in (
        said
    )
    command = f"`vm-storage-reconciler cancel {cluster.ns}/{VM}`"
    assert f"the next `apply` resumes it there, or {command} rolls it back" in said
    assert cluster.journal() == move, "Ctrl-C leaves the journal as it was"

    done = cancel(cluster, f"{cluster.ns}/{VM}")

    assert_cancelled(cluster, done, source_hash)
    vmi = cluster.eventually(
        lambda: cluster.vmi() if vmi_volume_claims(cluster.vmi()).get(VOLUME) == SOURCE else None,
        what="the VMI on its source",
    )
    assert vmi["metadata"]["uid"] == uid, "the same VMI: the guest never restarted"
    assert vmi["status"]["phase"] == "Running"
    assert not vmi["status"].get("migratedVolumes")
    assert f"cancelling move {move.id} (live, at step wait-migration)" in done.stderr

    again = cancel(cluster, VM, "-n", cluster.ns)
    assert again.returncode == 0, again
    assert f"nothing to cancel: VirtualMachine {cluster.ns}/{VM} has no move in flight" in (
        again.stdout
    )
    assert f"its last move {move.id} (live) ended RolledBack" in again.stdout


def test_cancel_of_an_offline_move_mid_copy_runs_the_vm_again_on_its_source(
    cluster: Cluster,
) -> None:
    cluster.create_vm()
    source_hash = cluster.content(SOURCE)
    target = cluster.target_name(Flow.OFFLINE)
    cluster.node_side.faults.add("datavolumes", cluster.ns, target, Fault(FaultAction.STALL))
    try:
        proc = cluster.start(plan_body(Flow.OFFLINE))

        def copying() -> bool:
            assert proc.poll() is None, f"apply ended early: {proc.communicate()}"
            journal = cluster.journal()
            return journal is not None and journal.step is Step.WAIT_TARGETS

        cluster.eventually(copying, timeout=60, what="the offline copy under way")
        assert not cluster.vmi(), "the VM is stopped for the copy"
        proc.send_signal(signal.SIGTERM)
        stopped = finish(proc)
        assert stopped.returncode == 1, stopped
        assert "CDI keeps copying the disks; the VM stays stopped" in " ".join(
            stopped.stderr.split()
        )

        done = cancel(cluster, f"{cluster.ns}/{VM}")
    finally:
        cluster.node_side.faults.clear("datavolumes", cluster.ns, target)

    assert_cancelled(cluster, done, source_hash)
    cluster.eventually(
        lambda: (cluster.vmi().get("status") or {}).get("phase") == "Running",
        what="the VMI Running",
    )
    assert vmi_volume_claims(cluster.vmi()).get(VOLUME) == SOURCE, "on its source"
    assert "back to the sources and the original run strategy" in done.stderr


def test_cancel_while_another_apply_holds_the_lease_exits_4_and_changes_nothing(
    cluster: Cluster,
) -> None:
    first, _ = stalled_move(cluster)
    try:
        before = settled_state(cluster)

        refused = cancel(cluster, f"{cluster.ns}/{VM}")

        assert refused.returncode == 4, refused
        assert "holds the lock" in refused.stderr and "nothing was changed" in refused.stderr
        assert state_of(cluster) == before, "the cancel changed something"
        assert first.poll() is None, "the apply goes on"
    finally:
        first.send_signal(signal.SIGTERM)
        finish(first)


def test_a_cancel_killed_mid_rollback_is_finished_by_the_next_apply(cluster: Cluster) -> None:
    proc = migrating(cluster)
    uid = cluster.vmi()["metadata"]["uid"]
    source_hash = cluster.content(SOURCE)
    move = cluster.journal()
    assert move is not None
    assert interrupt(proc).returncode == 1

    killed = cancel(cluster, f"{cluster.ns}/{VM}", fail_at="live/after:revert")

    assert killed.returncode == -signal.SIGKILL, killed
    journal = cluster.journal()
    assert journal is not None and journal.id == move.id
    assert (journal.step, journal.rollback_rule) == (Step.REVERT, "cancelled"), journal
    cluster.expire_lease()

    rerun = cluster.apply(plan_body(Flow.LIVE, window_shut=True))

    assert rerun.returncode == 3, rerun  # for apply, a rolled-back move is a failed VM
    (outcome,) = rerun.report["outcomes"]
    assert (outcome["result"], outcome["rule"], outcome["resumed"]) == (
        "RolledBack",
        "cancelled",
        True,
    ), rerun
    assert_cancelled(cluster, Run(0, "cancelled and rolled back", "", 0), source_hash)
    vmi = cluster.eventually(
        lambda: cluster.vmi() if vmi_volume_claims(cluster.vmi()).get(VOLUME) == SOURCE else None,
        what="the VMI on its source",
    )
    assert vmi["metadata"]["uid"] == uid


def test_a_move_past_its_migration_is_not_cancelled(cluster: Cluster) -> None:
    cluster.create_vm()
    killed = cluster.apply(plan_body(Flow.LIVE), fail_at="live/before:verify")
    assert killed.returncode == -signal.SIGKILL, killed
    cluster.expire_lease()
    before = cluster.vm()

    refused = cancel(cluster, f"{cluster.ns}/{VM}")

    assert refused.returncode == 2, refused
    assert "cannot be cancelled at step verify: its migration has finished" in refused.stderr
    assert "the next `apply` finishes it" in " ".join(refused.stderr.split())
    after = cluster.vm()
    assert annotation(after, JOURNAL_ANNOTATION) == annotation(before, JOURNAL_ANNOTATION)
    assert after["spec"] == before["spec"]


def test_cancel_of_a_vm_without_a_move_or_of_no_vm(cluster: Cluster) -> None:
    cluster.create_vm()

    idle = cancel(cluster, f"{cluster.ns}/{VM}", "-o", "json")
    missing = cancel(cluster, f"{cluster.ns}/vm-nope")
    ambiguous = cancel(cluster, VM)  # no -n, and the kubeconfig's context names none

    assert idle.returncode == 0, idle
    assert json.loads(idle.stdout)["outcomes"] == []
    assert missing.returncode == 2, missing
    assert f"VirtualMachine {cluster.ns}/vm-nope does not exist" in missing.stderr
    assert ambiguous.returncode == 2, ambiguous
    assert "which namespace is VM vm-fedora in?" in ambiguous.stderr
