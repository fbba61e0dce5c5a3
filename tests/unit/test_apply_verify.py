"""The verify rules (``apply.verify.problems``): what a finished move leaves, checked on the VM,
its VMI and the destination PVCs as read. Pure: one test per rule, each from a verified state
with one thing wrong."""

from __future__ import annotations

import copy
from dataclasses import replace
from typing import Any

import pytest

from reconciler.apply.verify import observed_problems
from reconciler.model.journal import Flow, Journal, Step, VolumeMove

GIB = 1 << 30


def journal(flow: Flow = Flow.LIVE, **changes: Any) -> Journal:
    base = Journal(
        id="m1",
        plan="ns/move",
        flow=flow,
        step=Step.VERIFY,
        volumes=(VolumeMove("root", "root-old", "root-new", True, "slow", "fast", 10 * GIB),),
        run_strategy="Always",
        was_running=True,
        started="2026-03-01T12:00:00+00:00",
        deadline="2026-03-01T13:00:00+00:00",
        retention="Keep",
        vmi_uid="vmi-1",
        live_migratable="True",
    )
    return replace(base, **changes)


def vm() -> dict[str, Any]:
    return {
        "metadata": {"name": "vm1"},
        "spec": {
            "runStrategy": "Always",
            "dataVolumeTemplates": [
                {
                    "metadata": {"name": "root-new"},
                    "spec": {"storage": {"storageClassName": "fast"}},
                }
            ],
            "template": {
                "spec": {"volumes": [{"name": "root", "dataVolume": {"name": "root-new"}}]}
            },
        },
        "status": {"conditions": [{"type": "Ready", "status": "True"}]},
    }


def vmi() -> dict[str, Any]:
    return {
        "metadata": {"name": "vm1", "uid": "vmi-1"},
        "spec": {"volumes": [{"name": "root", "dataVolume": {"name": "root-new"}}]},
        "status": {
            "phase": "Running",
            "volumeStatus": [
                {"name": "root", "persistentVolumeClaimInfo": {"claimName": "root-new"}}
            ],
            "conditions": [{"type": "LiveMigratable", "status": "True"}],
        },
    }


def pvc(size: str = "10Gi") -> dict[str, Any]:
    return {
        "metadata": {"name": "root-new"},
        "spec": {"storageClassName": "fast"},
        "status": {"phase": "Bound", "capacity": {"storage": size}},
    }


def test_a_finished_move_has_no_problem() -> None:
    assert observed_problems(journal(), vm(), vmi(), {"root-new": pvc()}) == []
    # larger than the source is fine (a class may round sizes up)
    assert observed_problems(journal(), vm(), vmi(), {"root-new": pvc("11Gi")}) == []


def edit(obj: dict[str, Any], path: str, value: Any) -> dict[str, Any]:
    out = copy.deepcopy(obj)
    *head, last = path.split(".")
    node: Any = out
    for key in head:
        node = node[int(key)] if isinstance(node, list) else node[key]
    if isinstance(node, list):
        node[int(last)] = value
    else:
        node[last] = value
    return out


@pytest.mark.parametrize(
    ("vm_edit", "says"),
    [
        (("spec.template.spec.volumes.0.dataVolume.name", "root-old"), "uses 'root-old', not"),
        (
            ("spec.dataVolumeTemplates.0.metadata.name", "root-old"),
            "dataVolumeTemplate root-old is still there",
        ),
        (
            ("spec.dataVolumeTemplates.0.spec.storage.storageClassName", "slow"),
            "asks for class slow",
        ),
        (("spec.runStrategy", "Halted"), "run strategy is Halted, not Always"),
        (
            ("status.conditions", [{"type": "RestartRequired", "status": "True", "message": "m"}]),
            "RestartRequired=True m",
        ),
        (
            ("status.conditions", [{"type": "ManualRecoveryRequired", "status": "True"}]),
            "ManualRecoveryRequired=True",
        ),
        (
            ("status.conditions", [{"type": "VolumesChange", "status": "True"}]),
            "the VM has VolumesChange=True",
        ),
    ],
)
def test_each_vm_rule(vm_edit: tuple[str, Any], says: str) -> None:
    found = observed_problems(journal(), edit(vm(), *vm_edit), vmi(), {"root-new": pvc()})
    assert len(found) == 1 and says in found[0], found


@pytest.mark.parametrize(
    ("pvc_edit", "says"),
    [
        (("status.phase", "Pending"), "PVC root-new is Pending, not Bound"),
        (("spec.storageClassName", "slow"), "on class 'slow', not fast"),
        (("status.capacity.storage", "9Gi"), f"holds {9 * GIB} bytes, less than"),
        (("status.capacity.storage", "lots"), "holds None bytes"),
    ],
)
def test_each_destination_rule(pvc_edit: tuple[str, Any], says: str) -> None:
    found = observed_problems(journal(), vm(), vmi(), {"root-new": edit(pvc(), *pvc_edit)})
    assert len(found) == 1 and says in found[0], found


def test_a_missing_destination_or_vm() -> None:
    assert observed_problems(journal(), vm(), vmi(), {}) == ["PVC root-new does not exist"]
    assert observed_problems(journal(), None, vmi(), {"root-new": pvc()}) == ["the VM was deleted"]


@pytest.mark.parametrize(
    ("vmi_edit", "says"),
    [
        (("status.phase", "Succeeded"), "its VMI is not Running"),
        (
            ("status.volumeStatus.0.persistentVolumeClaimInfo.claimName", "root-old"),
            "volumeStatus shows 'root-old' for root",
        ),
        (
            ("status.conditions", [{"type": "VolumesChange", "status": "True"}]),
            "the VMI still has VolumesChange=True",
        ),
        (("metadata.uid", "vmi-2"), "the guest rebooted"),
        (
            ("status.conditions", [{"type": "LiveMigratable", "status": "False"}]),
            "LiveMigratable is False, was True",
        ),
    ],
)
def test_each_vmi_rule_of_a_vm_that_should_run(vmi_edit: tuple[str, Any], says: str) -> None:
    found = observed_problems(journal(), vm(), edit(vmi(), *vmi_edit), {"root-new": pvc()})
    assert any(says in p for p in found), found


def test_a_vm_that_should_run_without_a_vmi() -> None:
    assert observed_problems(journal(), vm(), None, {"root-new": pvc()}) == [
        "the VM should run but its VMI is not Running"
    ]


def test_a_stopped_vm_is_verified_without_a_vmi_and_its_stale_volumes_change_ignored() -> None:
    stopped = journal(Flow.OFFLINE, run_strategy="Halted", was_running=False, vmi_uid="")
    halted = edit(vm(), "spec.runStrategy", "Halted")
    stale = edit(halted, "status.conditions", [{"type": "VolumesChange", "status": "True"}])
    assert observed_problems(stopped, stale, None, {"root-new": pvc()}) == []


def test_a_stopped_vm_s_stale_restart_required_is_ignored() -> None:
    """KubeVirt can set RestartRequired while a stopped VM's VMI is still going (it clears it
    at the next start): with no VMI running there is nothing to restart."""
    stopped = journal(Flow.LIVE, run_strategy="Halted", was_running=False, vmi_uid="")
    halted = edit(vm(), "spec.runStrategy", "Halted")
    stale = edit(halted, "status.conditions", [{"type": "RestartRequired", "status": "True"}])
    assert observed_problems(stopped, stale, None, {"root-new": pvc()}) == []
    ended = edit(vmi(), "status.phase", "Succeeded")
    assert observed_problems(stopped, stale, ended, {"root-new": pvc()}) == []


def test_after_an_offline_move_the_vmi_is_a_new_one() -> None:
    offline = journal(Flow.OFFLINE)
    rebooted = edit(vmi(), "metadata.uid", "vmi-2")
    assert observed_problems(offline, vm(), rebooted, {"root-new": pvc()}) == []


def test_a_vm_on_spec_running_is_verified_in_that_field() -> None:
    on_running = journal(run_strategy="running:true")
    spec_running = copy.deepcopy(vm())
    del spec_running["spec"]["runStrategy"]
    spec_running["spec"]["running"] = True
    assert observed_problems(on_running, spec_running, vmi(), {"root-new": pvc()}) == []
    spec_running["spec"]["running"] = False
    found = observed_problems(on_running, spec_running, vmi(), {"root-new": pvc()})
    assert found == ["the run strategy is running:false, not running:true"]
