"""Steps that change the VirtualMachine: stop, swap, start, revert, remove the strategy; and the
waits for its run state (stopped, running).

Every change is one JSON patch whose first op tests that the journal is still the one this
runner wrote (the fence: ``store``), and whose other ops test each value they replace: a
concurrent edit of those values makes the patch fail (422) instead of being overwritten, while
unrelated writes to the VM (KubeVirt's, anyone's) do not. Then the VM is read again and the step
decides afresh: already done (the step is idempotent), still to do (retry, with backoff), or
changed by someone else into a state we did not expect (``StepFailed vm-changed``: never
clobber).
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Mapping
from dataclasses import replace
from typing import Any

from reconciler.apply.context import MoveRun, StepFailed
from reconciler.apply.read import VMState, pod_state, vm_state, vmi_state
from reconciler.apply.store import check_fence, fence_ops, read_vm
from reconciler.kube.resources import PODS, VIRTUAL_MACHINES, VMIS
from reconciler.kube.watch import State, Stream
from reconciler.model.errors import ClusterError
from reconciler.model.failures import Failure
from reconciler.model.journal import Flow, Journal, Step
from reconciler.model.runstrategy import RUNNING_FIELD, stopped_form

Obj = dict[str, Any]
Op = Mapping[str, Any]

_VM_ERROR_STATES = (
    "ErrorPvcNotFound",
    "DataVolumeError",
    "CrashLoopBackOff",
    "ErrorUnschedulable",
    "ErrImagePull",
    "ImagePullBackOff",
)


def _run_strategy_ops(current: str, wanted: str) -> list[Obj]:
    """Test ``current``, write ``wanted`` (both recorded forms: ``RunStrategy.recorded``), in
    the field the VM uses (a VM on the deprecated ``spec.running`` stays on it, so we leave its
    spec as we found it)."""
    if current.startswith(RUNNING_FIELD):
        return [
            {"op": "test", "path": "/spec/running", "value": current == f"{RUNNING_FIELD}true"},
            {"op": "replace", "path": "/spec/running", "value": wanted == f"{RUNNING_FIELD}true"},
        ]
    return [
        {"op": "test", "path": "/spec/runStrategy", "value": current},
        {"op": "replace", "path": "/spec/runStrategy", "value": wanted},
    ]


def _gone(run: MoveRun) -> StepFailed:
    return StepFailed(Failure.VM_DELETED, f"VirtualMachine {run.namespace}/{run.vm} was deleted")


def patch_vm(
    run: MoveRun,
    build: Callable[[VMState], list[Obj] | None],
    *,
    refused_rule: Failure,
    patient: bool = False,
) -> VMState | None:
    """Read the VM, ``build(vm)`` the ops (None: nothing to do), send them behind the fence
    (a test that the journal is still the one this runner wrote: ``store.fence_ops``); on a
    conflict read again and rebuild. Returns the VM as last read when nothing was to do.

    ``build`` tests every value it replaces, so the patch needs no resourceVersion test, and
    the busy writers of a real cluster (KubeVirt's own status and spec writes, labellers)
    do not make it fail: only a change to a value we replace, or to the journal, does. Such a
    conflict is retried with jittered exponential backoff for ``patch_budget`` seconds
    (``rollback_patch_budget`` when ``patient``: a rollback must not give up and leave a VM
    stopped). A 409/422 with an unchanged resourceVersion is not a race but a refusal
    (admission, a value that no longer matches): StepFailed ``refused_rule``.
    """
    for _ in run.conflicts(patient=patient):
        raw = read_vm(run)
        if raw is None:
            raise _gone(run)
        check_fence(run, raw)
        vm = vm_state(raw)
        ops = build(vm)
        if ops is None:
            return vm
        try:
            run.cluster.json_patch(VIRTUAL_MACHINES, run.namespace, run.vm, [*fence_ops(run), *ops])
            return None
        except ClusterError as exc:
            if exc.code not in (409, 422):
                raise
            again = read_vm(run)
            if again is not None:
                check_fence(run, again)
                if vm_state(again).resource_version == vm.resource_version:
                    raise StepFailed(refused_rule, str(exc)) from exc
    raise StepFailed(
        Failure.VM_CHANGED,
        "the VM kept changing under what we were about to change; nothing was overwritten",
    )


def _stop(run: MoveRun, journal: Journal) -> Journal:
    stopped = stopped_form(journal.run_strategy)

    def build(vm: VMState) -> list[Obj] | None:
        current = vm.run_strategy.recorded
        if current == stopped:
            return None
        if current != journal.run_strategy:
            raise StepFailed(
                Failure.VM_CHANGED,
                f"the VM's run strategy changed to {current!r} "
                f"(was {journal.run_strategy!r}) before we stopped it",
            )
        return _run_strategy_ops(current, stopped)

    if journal.run_strategy != stopped:  # a VM that was stopped already needs no stop
        run.say("stopping the VM (runStrategy Halted) for an offline move")
    patch_vm(run, build, refused_rule=Failure.STOP_REFUSED)
    return journal


def _start(run: MoveRun, journal: Journal) -> Journal:
    stopped = stopped_form(journal.run_strategy)

    def build(vm: VMState) -> list[Obj] | None:
        current = vm.run_strategy.recorded
        if current == journal.run_strategy:
            return None
        if current != stopped and journal.rolling_back:
            # Someone else chose a run strategy while we had the VM stopped: a rollback
            # leaves their choice (never clobber) and goes on cleaning up.
            run.say(
                f"leaving runStrategy {current.removeprefix(RUNNING_FIELD)}: set by someone else"
            )
            return None
        if current != stopped:
            raise StepFailed(
                Failure.VM_CHANGED,
                f"the VM's run strategy is {current!r}: someone "
                "else changed it while the VM was stopped for the move",
            )
        return _run_strategy_ops(current, journal.run_strategy)

    if journal.run_strategy != stopped:
        run.say(f"restoring runStrategy {journal.run_strategy.removeprefix(RUNNING_FIELD)}")
    patch_vm(run, build, refused_rule=Failure.START_REFUSED, patient=journal.rolling_back)
    return journal


def _launcher_pods(state: State) -> list[str]:
    return [name for name, pod in state["pods"].items() if not pod_state(pod).ended]


def _wait_stopped(run: MoveRun, journal: Journal) -> Journal:
    streams = [
        Stream("vmi", VMIS, run.namespace, name=run.vm),
        Stream("pods", PODS, run.namespace, label_selector=f"vm.kubevirt.io/name={run.vm}"),
    ]

    def stopped(state: State) -> bool | None:
        return True if not state["vmi"] and not _launcher_pods(state) else None

    def tick(state: State) -> None:
        held = ", ".join(_launcher_pods(state))
        run.say("waiting for the VMI to stop" + (f" (pods {held})" if held else ""))

    run.wait(
        streams,
        stopped,
        seconds=min(run.seconds_left(journal), max(run.settings.settle_timeout, 300.0)),
        what="the VM to stop (VMI and virt-launcher pod gone)",
        on_tick=tick,
    )
    raw = read_vm(run)
    if raw is None:
        raise _gone(run)
    # What proves the source unchanged when the copy is swapped in: the spec as it was once
    # stopped (a start, or any edit, bumps the generation; our annotation writes do not).
    return replace(journal, source_generation=vm_state(raw).generation)


def _unchanged_since_stop(run: MoveRun, journal: Journal, vm: VMState) -> None:
    """StepFailed ``source-changed`` unless nothing can have written to the source since the
    offline copy began: the VM is still stopped (no VMI), its spec unchanged since we stopped
    it (same generation). A copy that cannot be proven current is never swapped in."""
    if run.cluster.get(VMIS, run.namespace, run.vm) is not None:
        raise StepFailed(
            Failure.SOURCE_CHANGED,
            "the VM runs again (started by someone else after the copy began): the copy may "
            "miss its writes; nothing was swapped",
        )
    now = vm.generation
    if not journal.source_generation or now != journal.source_generation:
        was = journal.source_generation or "not recorded"
        raise StepFailed(
            Failure.SOURCE_CHANGED,
            f"the VM changed since it was stopped for the copy (generation {now}, was {was}: "
            "started, edited or stopped again by someone else): the copy may miss writes; "
            "nothing was swapped, the next run copies again",
        )


def _wait_running(run: MoveRun, journal: Journal) -> Journal:
    if not journal.was_running:
        return journal
    raw = read_vm(run)
    if raw is not None and vm_state(raw).run_strategy.recorded != journal.run_strategy:
        return journal  # not our run strategy (someone else's, left alone): nothing to wait for
    streams = [
        Stream("vmi", VMIS, run.namespace, name=run.vm),
        Stream("vm", VIRTUAL_MACHINES, run.namespace, name=run.vm),
    ]

    def running(state: State) -> bool | None:
        vmi = state["vmi"].get(run.vm)
        if vmi is not None and vmi_state(vmi).running:
            return True
        vm = state["vm"].get(run.vm)
        status = vm_state(vm).printable_status if vm is not None else ""
        if status in _VM_ERROR_STATES:
            raise StepFailed(Failure.VM_START_FAILED, f"the VM does not start: {status}")
        return None

    run.say("waiting for the VM to run again")
    run.wait(
        streams,
        running,
        seconds=min(run.seconds_left(journal), max(run.settings.settle_timeout, 300.0)),
        what="the VMI to be Running",
        on_tick=lambda _s: run.say("waiting for the VMI"),
    )
    return journal


def _swap(run: MoveRun, journal: Journal) -> Journal:
    """Rename every moved volume (and its dataVolumeTemplate) in one patch."""

    def build(vm: VMState) -> list[Obj] | None:
        claims = vm.claims
        if all(claims.get(v.volume) == v.target for v in journal.volumes):
            return None
        for v in journal.volumes:
            if claims.get(v.volume) != v.source:
                raise StepFailed(
                    Failure.VM_CHANGED,
                    f"volume {v.volume} now uses "
                    f"{claims.get(v.volume)!r}, neither {v.source} nor {v.target}: "
                    "the VM was edited by someone else; nothing was overwritten",
                )
        if journal.flow is Flow.OFFLINE:
            _unchanged_since_stop(run, journal, vm)
        if journal.flow is Flow.LIVE:
            vmi = run.cluster.get(VMIS, run.namespace, run.vm)
            if vmi is None or not vmi_state(vmi).running:
                raise StepFailed(
                    Failure.VM_CHANGED,
                    "the VM stopped before its live swap: KubeVirt would not copy the disks "
                    "but start the VM on the blank destinations; nothing was swapped",
                )
        ops = [dict(op) for op in journal.forward_ops]
        if journal.flow is Flow.OFFLINE:
            # Atomic with the check above: the swap lands only on the spec the copy was of.
            generation = {"op": "test", "path": "/metadata/generation"}
            ops.insert(0, {**generation, "value": journal.source_generation})
        return ops

    run.say(
        "swapping volumes: "
        + ", ".join(f"{v.volume} {v.source} -> {v.target}" for v in journal.volumes)
    )
    patch_vm(run, build, refused_rule=Failure.SWAP_REFUSED)
    if journal.flow is Flow.LIVE:
        _await_update_recorded(run, journal)
    return replace(journal, swapped=True)


_RECORDED = {("VolumesChange", "True"), ("VolumesChange", "False"), ("RestartRequired", "True")}
"""VM conditions that say virt-controller wrote the VM's status after the VMI changed."""


def _await_update_recorded(run: MoveRun, journal: Journal) -> None:
    """Leave the VM alone until KubeVirt has recorded the volume update on it.

    virt-controller patches the VMI, then writes the VM's status (with
    ``volumeUpdateState.volumeMigrationState``) guarded by the resourceVersion it read; our
    next write (the journal) landing first makes that status write conflict, and the retry
    never records the migration again: a VM stopped mid-copy would then not get
    ManualRecoveryRequired and could start on a half-copied disk. So wait (briefly, never
    failing: the migration wait judges the outcome) until the VM's status shows the update,
    or KubeVirt mirrored VolumesChange, refused it, or the VMI is gone.
    """
    targets = {v.target for v in journal.volumes}

    def recorded(state: State) -> bool | None:
        raw_vm, raw_vmi = state["vm"].get(run.vm), state["vmi"].get(run.vm)
        if raw_vm is None or raw_vmi is None:
            return True
        vm = vm_state(raw_vm)
        # Not the VMI's volumeStatus: virt-controller's VMI controller fills its claim names
        # from the VMI's spec (vmi/storage.go, processPVCInfo), so the targets show there as
        # soon as the VMI is patched, before the VM's status write this waits for.
        if targets <= vm.migrated_destinations:
            return True  # recorded
        if _RECORDED & {(c.type, c.status) for c in vm.conditions}:
            return True  # mirrored, or refused (the migration wait reports a refusal)
        return None

    # not recorded in time (an old KubeVirt without volumeUpdateState): go on
    with contextlib.suppress(StepFailed):
        run.wait(
            [
                Stream("vm", VIRTUAL_MACHINES, run.namespace, name=run.vm),
                Stream("vmi", VMIS, run.namespace, name=run.vm),
            ],
            recorded,
            seconds=min(run.seconds_left(journal), run.settings.settle_timeout, 10.0),
            what="KubeVirt to record the volume update",
        )


def _revert(run: MoveRun, journal: Journal) -> Journal:
    """Rename the volumes back exactly (for a live move: KubeVirt's cancellation)."""

    def build(vm: VMState) -> list[Obj] | None:
        claims = vm.claims
        if all(claims.get(v.volume) == v.source for v in journal.volumes):
            return None
        if not any(claims.get(v.volume) == v.target for v in journal.volumes):
            # The swap never took effect and someone else repointed a volume: nothing of
            # ours to revert, and their edit is not ours to overwrite.
            return None
        if not all(claims.get(v.volume) == v.target for v in journal.volumes):
            raise StepFailed(
                Failure.VM_CHANGED,
                "the VM's volumes are neither the sources nor the "
                f"targets ({dict(claims)}); fix the VM by hand, then run again",
            )
        return [dict(op) for op in journal.revert_ops]

    if read_vm(run) is None:
        return journal
    run.say("rolling back: restoring the original volumes")
    patch_vm(run, build, refused_rule=Failure.REVERT_REFUSED, patient=True)
    return replace(journal, swapped=False)


def _remove_strategy(run: MoveRun, journal: Journal) -> Journal:
    """Drop the ``updateVolumesStrategy: Migration`` we added, once the volumes are back."""
    if not journal.cleanup_ops:
        return journal

    def build(vm: VMState) -> list[Obj] | None:
        if vm.update_volumes_strategy != "Migration":
            return None
        return [dict(op) for op in journal.cleanup_ops]

    if read_vm(run) is not None:
        patch_vm(run, build, refused_rule=Failure.REVERT_REFUSED, patient=journal.rolling_back)
    return journal


STEPS = {
    Step.STOP: _stop,
    Step.WAIT_STOPPED: _wait_stopped,
    Step.SWAP: _swap,
    Step.START: _start,
    Step.WAIT_RUNNING: _wait_running,
    Step.REVERT: _revert,
    Step.REMOVE_STRATEGY: _remove_strategy,
}
