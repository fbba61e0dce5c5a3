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
from typing import Any

from reconciler.apply.context import MoveRun, StepFailed
from reconciler.apply.migration import FINAL_VMI, condition, is_true, volume_status_claims
from reconciler.apply.vm_steps import claims_of, run_strategy_of
from reconciler.kube.resources import PVCS, VIRTUAL_MACHINES, VMIS
from reconciler.kube.watch import State, Stream
from reconciler.model.journal import Flow, Journal
from reconciler.model.quantity import parse_quantity

Obj = Mapping[str, Any]


def _template_names(vm: Obj) -> dict[str, str]:
    """dataVolumeTemplate name -> its storageClassName (or "")."""
    found: dict[str, str] = {}
    for t in (vm.get("spec") or {}).get("dataVolumeTemplates") or ():
        spec = (t or {}).get("spec") or {}
        storage = spec.get("storage") or spec.get("pvc") or {}
        found[str(((t or {}).get("metadata") or {}).get("name"))] = str(
            storage.get("storageClassName") or ""
        )
    return found


def _size(pvc: Obj) -> int | None:
    value = ((pvc.get("status") or {}).get("capacity") or {}).get("storage")
    try:
        return parse_quantity(value) if value is not None else None
    except ValueError:
        return None


def problems(
    journal: Journal, vm: Obj | None, vmi: Obj | None, pvcs: Mapping[str, Obj]
) -> list[str]:
    """What is not yet as a finished move leaves it ([] = verified)."""
    if vm is None:
        return ["the VM was deleted"]
    found: list[str] = []
    claims = claims_of(vm)
    templates = _template_names(vm)
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
        phase = (pvc.get("status") or {}).get("phase")
        if phase != "Bound":
            found.append(f"PVC {v.target} is {phase or 'Pending'}, not Bound")
        cls = (pvc.get("spec") or {}).get("storageClassName")
        if cls != v.to_class:
            found.append(f"PVC {v.target} is on class {cls!r}, not {v.to_class}")
        size = _size(pvc)
        if phase == "Bound" and (size is None or size < v.size_bytes):
            found.append(
                f"PVC {v.target} holds {size} bytes, less than its source's {v.size_bytes}"
            )
    alive = vmi is not None and (vmi.get("status") or {}).get("phase") not in FINAL_VMI
    for kind in ("VolumesChange", "RestartRequired", "ManualRecoveryRequired"):
        # VolumesChange is the VMI's, mirrored on the VM; KubeVirt stops mirroring when the
        # VMI goes, so on a stopped VM the copy it leaves behind says nothing.
        if kind == "VolumesChange" and not alive:
            continue
        if is_true(vm, kind):
            message = (condition(vm, kind) or {}).get("message", "")
            found.append(f"the VM has {kind}=True {message}".rstrip())
    if run_strategy_of(vm) != journal.run_strategy:
        found.append(f"the run strategy is {run_strategy_of(vm)}, not {journal.run_strategy}")
    if journal.was_running:
        found += _vmi_problems(journal, vmi)
    return found


def _vmi_problems(journal: Journal, vmi: Obj | None) -> list[str]:
    if vmi is None or (vmi.get("status") or {}).get("phase") != "Running":
        return ["the VM should run but its VMI is not Running"]
    found: list[str] = []
    status_claims = volume_status_claims(vmi)
    for v in journal.volumes:
        if status_claims.get(v.volume) != v.target:
            found.append(
                f"the VMI's volumeStatus shows {status_claims.get(v.volume)!r} for "
                f"{v.volume}, not {v.target}"
            )
    if is_true(vmi, "VolumesChange"):
        found.append("the VMI still has VolumesChange=True")
    if journal.flow is Flow.LIVE and journal.vmi_uid:
        if (vmi.get("metadata") or {}).get("uid") != journal.vmi_uid:
            found.append("the VMI is not the one that ran before the move (the guest rebooted)")
        migratable = str((condition(vmi, "LiveMigratable") or {}).get("status") or "")
        if journal.live_migratable and migratable != journal.live_migratable:
            found.append(
                f"LiveMigratable is {migratable or 'unset'}, was {journal.live_migratable}"
            )
    return found


def _verify(run: MoveRun, journal: Journal) -> Journal:
    streams = [
        Stream("vm", VIRTUAL_MACHINES, run.namespace, name=run.vm),
        Stream("vmi", VMIS, run.namespace, name=run.vm),
        Stream("pvcs", PVCS, run.namespace),
    ]
    last: list[str] = []

    def verified(state: State) -> bool | None:
        last[:] = problems(
            journal, state["vm"].get(run.vm), state["vmi"].get(run.vm), state["pvcs"]
        )
        return True if not last else None

    try:
        run.wait(
            streams,
            verified,
            seconds=run.settings.settle_timeout,
            what="verification",
            timeout_rule="verify-failed",
        )
    except StepFailed as exc:
        raise StepFailed("verify-failed", "verification failed: " + "; ".join(last)) from exc
    run.say(
        "verified: "
        + ", ".join(f"{v.volume} on {v.target} ({v.to_class})" for v in journal.volumes)
    )
    return journal


STEPS = {"verify": _verify}
