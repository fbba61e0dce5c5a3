"""Reading the objects `apply` acts on (``apply.read``) and a VM's run strategy
(``model.runstrategy``, the one reader the diff and `apply` share). Pure."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import pytest

from reconciler.apply.read import (
    data_volume_state,
    migration_state,
    pod_state,
    pvc_state,
    vm_state,
    vmi_state,
)
from reconciler.model.names import JOURNAL_ANNOTATION
from reconciler.model.runstrategy import RunStrategy, run_strategy_of, stopped_form
from reconciler.observe.parse import parse_vm


@pytest.mark.parametrize(
    ("spec", "effective", "recorded"),
    [
        # upstream VirtualMachine.RunStrategy(): running true/false, neither set, runStrategy
        ({"running": True}, "Always", "running:true"),
        ({"running": False}, "Halted", "running:false"),
        ({}, "Halted", "Halted"),
        ({"runStrategy": "Manual"}, "Manual", "Manual"),
        ({"runStrategy": "RerunOnFailure"}, "RerunOnFailure", "RerunOnFailure"),
        # null fields are absent (the API server prunes them; upstream tests for nil)
        ({"runStrategy": None, "running": None}, "Halted", "Halted"),
        ({"runStrategy": None, "running": True}, "Always", "running:true"),
        # both set: KubeVirt's admission refuses it; runStrategy wins here
        ({"runStrategy": "Halted", "running": True}, "Halted", "Halted"),
    ],
)
def test_the_run_strategy_follows_upstream(spec: Any, effective: str, recorded: str) -> None:
    strategy = run_strategy_of(spec)
    assert (strategy.effective, strategy.recorded) == (effective, recorded)
    vm = parse_vm({"metadata": {"name": "v", "namespace": "n"}, "spec": spec})
    assert vm.run_strategy == effective, "the diff reads the same strategy"
    assert vm.uses_running_field == strategy.on_running_field
    assert vm_state({"spec": spec}).run_strategy == strategy, "and so does apply"


def test_a_spec_that_is_not_a_map_reads_as_halted() -> None:
    assert run_strategy_of(None) == RunStrategy("Halted")
    assert run_strategy_of(["running"]) == RunStrategy("Halted")


def test_the_stopped_form_stays_in_the_field_the_vm_uses() -> None:
    assert stopped_form("running:true") == "running:false"
    assert stopped_form("Always") == "Halted"
    assert stopped_form("Manual") == "Halted"


def test_a_vm_is_read_whole() -> None:
    vm = vm_state(
        {
            "metadata": {
                "name": "vm1",
                "resourceVersion": "42",
                "generation": 3,
                "annotations": {JOURNAL_ANNOTATION: "{}"},
            },
            "spec": {
                "runStrategy": "Always",
                "updateVolumesStrategy": "Migration",
                "dataVolumeTemplates": [
                    {"metadata": {"name": "t1"}, "spec": {"pvc": {"storageClassName": "c"}}},
                    {"metadata": {"name": "t2"}, "spec": {"storage": {}}},
                    "junk",
                ],
                "template": {
                    "spec": {
                        "volumes": [
                            {"name": "a", "dataVolume": {"name": "t1"}},
                            {"name": "b", "persistentVolumeClaim": {"claimName": "p"}},
                            {"name": "c", "containerDisk": {"image": "x"}},
                            "junk",
                        ]
                    }
                },
            },
            "status": {
                "printableStatus": "Running",
                "conditions": [{"type": "RestartRequired", "status": "True"}, "junk"],
                "volumeUpdateState": {
                    "volumeMigrationState": {
                        "migratedVolumes": [{"destinationPVCInfo": {"claimName": "t1-new"}}]
                    }
                },
            },
        }
    )
    assert (vm.name, vm.resource_version, vm.generation) == ("vm1", "42", 3)
    assert vm.journal_text == "{}" and vm.annotations_map
    assert vm.claims == {"a": "t1", "b": "p"}
    assert vm.templates == {"t1": "c", "t2": ""}
    assert vm.update_volumes_strategy == "Migration"
    assert vm.printable_status == "Running"
    assert vm.is_true("RestartRequired") and not vm.is_true("Ready")
    assert vm.migrated_destinations == frozenset({"t1-new"})


@pytest.mark.parametrize(
    "obj",
    [
        {},
        {"metadata": None, "spec": None, "status": None},
        {"metadata": {"generation": "x", "annotations": ["a"]}, "spec": {"template": 5}},
        {"status": {"conditions": {"type": "Ready"}, "volumeUpdateState": []}},
    ],
)
def test_a_vm_of_any_shape_reads_without_failing(obj: dict[str, Any]) -> None:
    vm = vm_state(obj)
    assert vm.claims == {} and vm.generation == 0 and vm.journal_text is None
    assert vm.run_strategy == RunStrategy("Halted")
    assert not vm.annotations_map


def test_a_vmi_and_its_migration_state() -> None:
    vmi = vmi_state(
        {
            "metadata": {"name": "vm1", "uid": "u1"},
            "spec": {"volumes": [{"name": "root", "persistentVolumeClaim": {"claimName": "a"}}]},
            "status": {
                "phase": "Running",
                "volumeStatus": [
                    {"name": "root", "persistentVolumeClaimInfo": {"claimName": "a"}},
                    {"name": "cloudinit"},
                ],
                "migratedVolumes": [{"volumeName": "root"}],
                "migrationState": {"migrationUid": "m-uid", "mode": "PostCopy"},
            },
        }
    )
    assert vmi.running and not vmi.ended and vmi.uid == "u1"
    assert vmi.claims == {"root": "a"} and vmi.volume_status == {"root": "a"}
    assert vmi.migrating_volumes
    migration = migration_state(
        {
            "metadata": {
                "name": "mig",
                "uid": "m-uid",
                "creationTimestamp": "2026-01-01T00:00:00Z",
            },
            "status": {
                "phase": "Running",
                "phaseTransitionTimestamps": [{"phase": "Pending"}, {"phase": "Running"}, {}],
                "migrationState": {"mode": "PreCopy", "sourceNode": "n1", "targetNode": "n2"},
                "conditions": [{"type": "X", "status": "True", "reason": "queued"}],
            },
        }
    )
    assert migration.created == datetime(2026, 1, 1, tzinfo=UTC)
    assert migration.history == ("Pending", "Running")
    # the VMI's state is the current one when it is this migration's
    merged = migration.progress_with(vmi)
    assert (merged.mode, merged.source_node, merged.target_node) == ("PostCopy", "n1", "n2")
    other = migration_state({"metadata": {"uid": "other"}, "status": {}})
    assert other.phase == "Pending", "no phase yet reads as Pending"
    assert other.progress_with(vmi) == other.progress


def test_claims_data_volumes_and_pods() -> None:
    pvc = pvc_state(
        {"spec": {"storageClassName": "fast"}, "status": {"capacity": {"storage": "1Gi"}}}
    )
    assert (pvc.phase, pvc.storage_class, pvc.capacity_bytes) == ("", "fast", 1 << 30)
    assert pvc_state({"status": {"capacity": {"storage": "big"}}}).capacity_bytes is None
    owned = {"metadata": {"ownerReferences": [{"kind": "DataVolume", "uid": "dv-1"}, "junk"]}}
    assert pvc_state(owned).owner_uids == ("dv-1",)
    assert pvc_state({"metadata": {"ownerReferences": "not a list"}}).owner_uids == ()
    dv = data_volume_state(
        {
            "metadata": {"name": "d", "uid": "u", "deletionTimestamp": "now", "labels": {"a": "b"}},
            "status": {
                "phase": "CloneInProgress",
                "progress": "12.5%",
                "restartCount": "x",
                "conditions": [{"type": "Running", "status": "False", "reason": "Error"}],
            },
        }
    )
    assert dv.deleting and dv.labels == {"a": "b"} and dv.restart_count == 0
    assert (dv.phase, dv.progress) == ("CloneInProgress", "12.5%")
    running = dv.condition("Running")
    assert running is not None and running.reason == "Error"
    pod = pod_state(
        {
            "metadata": {"name": "virt-launcher-x"},
            "spec": {
                "nodeName": "n1",
                "volumes": [{"persistentVolumeClaim": {"claimName": "a"}}, {"emptyDir": {}}],
            },
            "status": {"phase": "Succeeded"},
        }
    )
    assert pod.ended and pod.node == "n1" and pod.claims == frozenset({"a"})
