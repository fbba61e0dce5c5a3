"""Verify a move before the next VM starts: ``problems`` is pure, the step watches until there
are none (status settles a moment after a migration) or fails with what is still wrong.

Done means: the VM's volumes (and dataVolumeTemplates) name the targets; every target PVC is
Bound on the wanted class and at least as large as its source; a VM that should run has a
Running VMI whose volumeStatus names the targets, and after a live move it is the same VMI (the
guest never rebooted) with the LiveMigratable status it had; KubeVirt left no VolumesChange,
RestartRequired or ManualRecoveryRequired behind; the run strategy is what it was.
"""

from __future__ import annotations

from collections.abc import Mapping

from reconciler.apply.context import MoveRun, StepFailed
from reconciler.apply.read import (
    Obj,
    PVCState,
    VMIState,
    VMState,
    pvc_state,
    vm_state,
    vmi_state,
)
from reconciler.kube.resources import PVCS, VIRTUAL_MACHINES, VMIS
from reconciler.kube.watch import State, Stream
from reconciler.model.failures import Failure
from reconciler.model.journal import Flow, Journal, Step


def problems(
    journal: Journal,
    vm: VMState | None,
    vmi: VMIState | None,
    pvcs: Mapping[str, PVCState],
) -> list[str]:
    """What is not yet as a finished move leaves it ([] = verified)."""
    if vm is None:
        return ["the VM was deleted"]
    found: list[str] = []
    claims, templates = vm.claims, vm.templates
    for v in journal.volumes:
        if claims.get(v.volume) != v.target:
            found.append(f"volume {v.volume} uses {claims.get(v.volume)!r}, not {v.target}")
        if v.source in templates:
            found.append(f"dataVolumeTemplate {v.source} is still there")
        if v.target in templates and templates[v.target] not in ("", v.to_class):
            found.append(f"dataVolumeTemplate {v.target} asks for class {templates[v.target]}")
        pvc = pvcs.get(v.target)
        if pvc is None:
            found.append(f"PVC {v.target} does not exist")
            continue
        if pvc.phase != "Bound":
            found.append(f"PVC {v.target} is {pvc.phase or 'Pending'}, not Bound")
        if pvc.storage_class != v.to_class:
            found.append(f"PVC {v.target} is on class {pvc.storage_class!r}, not {v.to_class}")
        size = pvc.capacity_bytes
        if pvc.phase == "Bound" and (size is None or size < v.size_bytes):
            found.append(
                f"PVC {v.target} holds {size} bytes, less than its source's {v.size_bytes}"
            )
    alive = vmi is not None and not vmi.ended
    for kind in ("VolumesChange", "RestartRequired", "ManualRecoveryRequired"):
        # VolumesChange is the VMI's, mirrored on the VM; KubeVirt stops mirroring when the
        # VMI goes, so on a stopped VM the copy it leaves behind says nothing. RestartRequired
        # says the running VMI must restart to take the spec; with none running it says
        # nothing either: KubeVirt can set it while the VMI of a stopped VM is still going
        # (and clears it only at the next start), e.g. when a volume migration's VMI went
        # away after the copy and the recovery removed updateVolumesStrategy.
        if kind in ("VolumesChange", "RestartRequired") and not alive:
            continue
        if vm.is_true(kind):
            condition = vm.condition(kind)
            message = condition.message if condition else ""
            found.append(f"the VM has {kind}=True {message}".rstrip())
    strategy = vm.run_strategy.recorded
    if strategy != journal.run_strategy:
        found.append(f"the run strategy is {strategy}, not {journal.run_strategy}")
    if journal.was_running:
        found += _vmi_problems(journal, vmi)
    return found


def _vmi_problems(journal: Journal, vmi: VMIState | None) -> list[str]:
    if vmi is None or not vmi.running:
        return ["the VM should run but its VMI is not Running"]
    found: list[str] = []
    for v in journal.volumes:
        if vmi.volume_status.get(v.volume) != v.target:
            found.append(
                f"the VMI's volumeStatus shows {vmi.volume_status.get(v.volume)!r} for "
                f"{v.volume}, not {v.target}"
            )
    if vmi.is_true("VolumesChange"):
        found.append("the VMI still has VolumesChange=True")
    if journal.flow is Flow.LIVE and journal.vmi_uid:
        if vmi.uid != journal.vmi_uid:
            found.append("the VMI is not the one that ran before the move (the guest rebooted)")
        condition = vmi.condition("LiveMigratable")
        migratable = condition.status if condition else ""
        if journal.live_migratable and migratable != journal.live_migratable:
            found.append(
                f"LiveMigratable is {migratable or 'unset'}, was {journal.live_migratable}"
            )
    return found


def observed_problems(
    journal: Journal, vm: Obj | None, vmi: Obj | None, pvcs: Mapping[str, Obj]
) -> list[str]:
    """``problems`` of the objects as read (JSON)."""
    return problems(
        journal,
        vm_state(vm) if vm is not None else None,
        vmi_state(vmi) if vmi is not None else None,
        {name: pvc_state(pvc) for name, pvc in pvcs.items()},
    )


def _verify(run: MoveRun, journal: Journal) -> Journal:
    streams = [
        Stream("vm", VIRTUAL_MACHINES, run.namespace, name=run.vm),
        Stream("vmi", VMIS, run.namespace, name=run.vm),
        # each target claim by name: a stream of the whole namespace would list every claim
        # of a fleet once per VM verified
        *(Stream(f"pvc/{v.target}", PVCS, run.namespace, name=v.target) for v in journal.volumes),
    ]
    last: list[str] = []

    def verified(state: State) -> bool | None:
        pvcs = {
            v.target: found
            for v in journal.volumes
            if (found := state[f"pvc/{v.target}"].get(v.target)) is not None
        }
        last[:] = observed_problems(
            journal, state["vm"].get(run.vm), state["vmi"].get(run.vm), pvcs
        )
        return True if not last else None

    try:
        run.wait(
            streams,
            verified,
            seconds=run.settings.settle_timeout,
            what="verification",
            timeout_rule=Failure.VERIFY_FAILED,
        )
    except StepFailed as exc:
        raise StepFailed(Failure.VERIFY_FAILED, "verification failed: " + "; ".join(last)) from exc
    run.say(
        "verified: "
        + ", ".join(f"{v.volume} on {v.target} ({v.to_class})" for v in journal.volumes)
    )
    return journal


STEPS = {Step.VERIFY: _verify}
