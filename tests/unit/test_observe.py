"""Parsing the API's JSON into the snapshot model (pure: no cluster)."""

from typing import Any

from reconciler.observe.parse import (
    RawObjects,
    build_snapshot,
    parse_data_volume,
    parse_kubevirt,
    parse_migration,
    parse_vm,
    parse_vmi,
)

VM: dict[str, Any] = {
    "apiVersion": "kubevirt.io/v1",
    "kind": "VirtualMachine",
    "metadata": {
        "name": "vm-fedora",
        "namespace": "mig-vm",
        "uid": "u1",
        "resourceVersion": "7",
        "labels": {"tier": "gold"},
    },
    "spec": {
        "running": True,
        "dataVolumeTemplates": [{"metadata": {"name": "fedora-40-dv-template"}, "spec": {}}],
        "template": {
            "spec": {
                "domain": {
                    "devices": {
                        "disks": [
                            {"name": "datavolumedisk1", "disk": {"bus": "virtio"}},
                            {"name": "shared", "disk": {}, "shareable": True},
                            {"name": "pr", "lun": {"reservation": True}},
                        ],
                        "filesystems": [{"name": "fs", "virtiofs": {}}],
                    }
                },
                "volumes": [
                    {"name": "datavolumedisk1", "dataVolume": {"name": "fedora-40-dv-template"}},
                    {"name": "shared", "persistentVolumeClaim": {"claimName": "shared-pvc"}},
                    {
                        "name": "pr",
                        "persistentVolumeClaim": {"claimName": "pr-pvc", "hotpluggable": True},
                    },
                    {"name": "fs", "persistentVolumeClaim": {"claimName": "fs-pvc"}},
                    {"name": "cloudinitdisk", "cloudInitNoCloud": {"userData": "#cloud-config"}},
                ],
            }
        },
    },
    "status": {"printableStatus": "Running", "conditions": [{"type": "Ready", "status": "True"}]},
}


def test_parse_vm_joins_volumes_with_their_devices() -> None:
    vm = parse_vm(VM)
    assert (vm.namespace, vm.name, vm.run_strategy) == ("mig-vm", "vm-fedora", "Always")
    assert vm.uses_running_field
    by_name = {v.name: v for v in vm.volumes}
    assert by_name["datavolumedisk1"].kind == "dataVolume"
    assert by_name["datavolumedisk1"].claim == "fedora-40-dv-template"
    assert by_name["datavolumedisk1"].from_template
    assert by_name["datavolumedisk1"].disk_type == "disk"
    assert by_name["shared"].shareable and not by_name["shared"].from_template
    assert by_name["pr"].disk_type == "lun" and by_name["pr"].persistent_reservation
    assert by_name["pr"].hotpluggable
    assert by_name["fs"].filesystem
    assert by_name["cloudinitdisk"].kind == "cloudInitNoCloud"
    assert by_name["cloudinitdisk"].claim is None


def test_run_strategy_wins_over_the_deprecated_running_field() -> None:
    spec = {**VM["spec"], "runStrategy": "Manual"}
    del spec["running"]
    vm = parse_vm({**VM, "spec": spec})
    assert vm.run_strategy == "Manual" and not vm.uses_running_field
    stopped = parse_vm({**VM, "spec": {**VM["spec"], "running": False}})
    assert stopped.run_strategy == "Halted"


def test_pvc_without_class_resolves_to_the_default_class() -> None:
    raw = RawObjects(
        pvcs=[
            {
                "metadata": {"name": "a", "namespace": "ns"},
                "spec": {
                    "resources": {"requests": {"storage": "10Gi"}},
                    "volumeMode": "Block",
                    "accessModes": ["ReadWriteOnce"],
                },
                "status": {"phase": "Bound", "capacity": {"storage": "9.9Gi"}},
            },
            {
                "metadata": {"name": "b", "namespace": "ns"},
                "spec": {"storageClassName": "fast", "resources": {"requests": {"storage": "1Gi"}}},
                "status": {"phase": "Pending"},
            },
        ],
        storage_classes=[
            {
                "metadata": {
                    "name": "slow",
                    "annotations": {"storageclass.kubernetes.io/is-default-class": "true"},
                },
                "provisioner": "x",
            },
            {
                "metadata": {"name": "fast"},
                "provisioner": "y",
                "volumeBindingMode": "WaitForFirstConsumer",
            },
        ],
    )
    snap = build_snapshot(raw)
    a, b = snap.pvcs[("ns", "a")], snap.pvcs[("ns", "b")]
    assert a.storage_class == "slow" and a.volume_mode == "Block"
    assert a.request_bytes == 10 * 2**30 and a.capacity_bytes is not None
    assert a.capacity_bytes < a.request_bytes
    assert b.storage_class == "fast" and b.capacity_bytes is None and b.phase == "Pending"
    assert snap.default_storage_class == "slow"
    assert snap.storage_classes["fast"].volume_binding_mode == "WaitForFirstConsumer"


def test_kubevirt_cr_configuration_is_read() -> None:
    kv = parse_kubevirt(
        {
            "spec": {
                "configuration": {
                    "vmRolloutStrategy": "LiveUpdate",
                    "developerConfiguration": {"featureGates": ["VolumeMigration"]},
                },
                "workloadUpdateStrategy": {"workloadUpdateMethods": ["LiveMigrate"]},
            },
            "status": {"observedKubeVirtVersion": "v1.4.0", "phase": "Deployed"},
        }
    )
    assert kv.version == "v1.4.0"
    assert kv.feature_gates == {"VolumeMigration"}
    assert kv.vm_rollout_strategy == "LiveUpdate"
    assert kv.workload_update_methods == ("LiveMigrate",)


def test_vmi_and_migration_report_claims_and_volume_updates() -> None:
    vmi = parse_vmi(
        {
            "metadata": {"name": "vm-fedora", "namespace": "mig-vm"},
            "spec": {"volumes": [{"name": "d", "dataVolume": {"name": "new"}}]},
            "status": {
                "phase": "Running",
                "nodeName": "node-1",
                "migratedVolumes": [{"volumeName": "d"}],
                "conditions": [
                    {"type": "VolumesChange", "status": "True", "message": "migrate volumes"}
                ],
            },
        }
    )
    assert vmi.volume_claims == {"d": "new"} and vmi.migrated_volumes == ("d",)
    assert vmi.conditions[0].message == "migrate volumes"
    vmim = parse_migration(
        {
            "metadata": {
                "name": "kubevirt-workload-update-abc",
                "namespace": "mig-vm",
                "labels": {"kubevirt.io/volume-update-migration": "vm-fedora"},
            },
            "spec": {"vmiName": "vm-fedora"},
            "status": {"phase": "Failed", "migrationState": {"failureReason": "too small"}},
        }
    )
    assert vmim.volume_update and vmim.failure_reason == "too small"


def test_data_volume_source_kind_and_size() -> None:
    dv = parse_data_volume(
        {
            "metadata": {"name": "d", "namespace": "ns"},
            "spec": {
                "source": {"registry": {"url": "docker://x"}},
                "storage": {
                    "storageClassName": "sc",
                    "resources": {"requests": {"storage": "30Gi"}},
                },
            },
            "status": {"phase": "Succeeded", "progress": "100.0%"},
        }
    )
    assert (dv.source_kind, dv.storage_class, dv.request_bytes) == ("registry", "sc", 30 * 2**30)
    assert dv.phase == "Succeeded"
