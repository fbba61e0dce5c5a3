"""The volume-update lifecycle of the simulated virt-controller, as upstream `vm.go`
(`handleVolumeUpdateRequest`, `syncRestartRequired`) and `volume-migration.go`
(`ValidateVolumes`) have it, version by version, through the real API server.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest

from tests.env import test_sim_kubevirt as kv
from tests.env.test_sim_kubevirt import (
    FAULT,
    Cluster,
    claims_of,
    listing,
    pvc_volume,
    status,
    vm_body,
)
from tests.support.kube import condition, stays

# The fixtures of test_sim_kubevirt.py (pytest registers them by attribute name).
classes, kubevirt, cluster = kv.classes, kv.kubevirt, kv.cluster

Configure = Callable[..., dict[str, Any]]


def set_claims(cluster: Cluster, vm: str, claims: dict[str, str]) -> None:
    """One update: updateVolumesStrategy Migration and each named volume on its new claim."""
    spec = cluster.vm(vm)["spec"]
    volumes = spec["template"]["spec"]["volumes"]
    for volume in volumes:
        if volume["name"] in claims:
            volume.pop("dataVolume", None)
            volume["persistentVolumeClaim"] = {"claimName": claims[volume["name"]]}
    cluster.patch("VirtualMachine", vm, {"spec": {"updateVolumesStrategy": "Migration",
                                                  "template": {"spec": {"volumes": volumes}}}})


@pytest.mark.cluster
@pytest.mark.parametrize("version", ["v1.9.0", "v1.5.0"])
def test_an_update_after_a_cancel_by_revert_migrates_from_v1_6(
        cluster: Cluster, kubevirt: Configure, version: str) -> None:
    kubevirt(version=version)
    cluster.bound_pvc("root")
    cluster.bound_pvc("root-new")
    cluster.running_vm(vm_body("vm1", [pvc_volume("rootdisk", "root")],
                               annotations={FAULT: "stall"}))
    cluster.migrate("vm1", "rootdisk", "root-new")
    first = cluster.migration_in("vm1", "Running")
    cluster.migrate("vm1", "rootdisk", "root")  # cancel by revert
    cluster.wait(lambda: condition(cluster.vmi("vm1"), "VolumesChange").get("reason")
                 == "VolumesChangeCancellation", "cancelled")
    cluster.wait(lambda: cluster.migrations("vm1") == [], "aborted migration gone")
    cluster.patch("VirtualMachine", "vm1", {"metadata": {"annotations": {FAULT: None}}})

    cluster.migrate("vm1", "rootdisk", "root-new")  # try again
    if version == "v1.5.0":  # the cancellation condition stays and blocks the new update
        cluster.wait(lambda: claims_of(cluster.vmi("vm1")) == {"rootdisk": "root-new"},
                     "VMI volumes patched")
        assert stays(lambda: cluster.migrations("vm1") == []
                     and condition(cluster.vmi("vm1"), "VolumesChange").get("reason")
                     == "VolumesChangeCancellation")
        return
    second = cluster.migration_in("vm1", "Succeeded")
    assert second["metadata"]["uid"] != first["metadata"]["uid"]
    vmi = cluster.wait(lambda: (i := cluster.vmi("vm1")) and not condition(i, "VolumesChange")
                       and i, "VolumesChange gone after success")
    assert claims_of(vmi) == {"rootdisk": "root-new"}


@pytest.mark.cluster
@pytest.mark.parametrize("version", ["v1.9.0", "v1.7.0"])
def test_restart_required_clears_once_the_update_is_valid_from_v1_8(
        cluster: Cluster, kubevirt: Configure, version: str) -> None:
    kubevirt(version=version)
    for name in ("root", "data", "root-new", "data-new"):
        cluster.bound_pvc(name)
    cluster.running_vm(vm_body("vm1", [pvc_volume("rootdisk", "root"),
                                       pvc_volume("datadisk", "data")]))
    set_claims(cluster, "vm1", {"rootdisk": "root-new"})  # the RWO datadisk left out
    vm = cluster.wait(lambda: (v := cluster.vm("vm1")) and condition(v, "RestartRequired")
                      and v, "RestartRequired")
    assert condition(vm, "RestartRequired")["message"] == (
        "cannot migrate the VM. The volume datadisk is RWO and not included in the "
        "migration volumes")

    set_claims(cluster, "vm1", {"rootdisk": "root-new", "datadisk": "data-new"})  # fixed
    if version == "v1.7.0":  # sticky until the VM restarts
        assert stays(lambda: bool(condition(cluster.vm("vm1"), "RestartRequired"))
                     and cluster.migrations("vm1") == [])
        assert claims_of(cluster.vmi("vm1")) == {"rootdisk": "root", "datadisk": "data"}
        return
    cluster.migration_in("vm1", "Succeeded")
    vm = cluster.wait(lambda: (v := cluster.vm("vm1")) and not condition(v, "RestartRequired")
                      and v, "RestartRequired removed")
    assert claims_of(cluster.vmi("vm1")) == {"rootdisk": "root-new", "datadisk": "data-new"}


@pytest.mark.cluster
@pytest.mark.parametrize(("version", "kind", "message"), [
    ("v1.9.0", "dv", "the datavolume root-new doesn't exist"),
    ("v1.9.0", "pvc", "the pvc root-new doesn't exist"),
    ("v1.6.0", "dv", "the datavolume root-new doesn't exist"),
])
def test_a_missing_destination_is_refused_before_anything_is_written(
        cluster: Cluster, kubevirt: Configure, version: str, kind: str, message: str) -> None:
    kubevirt(version=version)
    cluster.bound_pvc("root")
    before = cluster.running_vm(vm_body("vm1", [pvc_volume("rootdisk", "root")]))
    cluster.migrate("vm1", "rootdisk", "root-new", data_volume=kind == "dv")
    vmi = cluster.wait(lambda: (i := cluster.vmi("vm1")) and condition(i, "VolumesChange")
                       and i, "VolumesChange")
    change = condition(vmi, "VolumesChange")
    assert (change["status"], change["message"]) == (
        "False", f"One of the destination volumes doesn't exist: {message}")
    assert claims_of(vmi) == {"rootdisk": "root"}  # the VMI was not touched
    assert vmi["spec"]["volumes"] == before["spec"]["volumes"]
    assert not status(vmi).get("migratedVolumes")
    assert not condition(cluster.vm("vm1"), "RestartRequired")
    assert not status(cluster.vm("vm1")).get("volumeUpdateState", {}).get(
        "volumeMigrationState")
    assert stays(lambda: cluster.migrations("vm1") == [])

    cluster.migrate("vm1", "rootdisk", "root")  # a revert is then a no-op
    assert stays(lambda: claims_of(cluster.vmi("vm1")) == {"rootdisk": "root"}
                 and cluster.migrations("vm1") == []
                 and not status(cluster.vmi("vm1")).get("migratedVolumes"))


@pytest.mark.cluster
def test_a_missing_destination_data_volume_requires_a_restart_on_v1_5(
        cluster: Cluster, kubevirt: Configure) -> None:
    kubevirt(version="v1.5.0")
    cluster.bound_pvc("root")
    cluster.running_vm(vm_body("vm1", [pvc_volume("rootdisk", "root")]))
    cluster.migrate("vm1", "rootdisk", "root-new", data_volume=True)
    vm = cluster.wait(lambda: (v := cluster.vm("vm1")) and condition(v, "RestartRequired")
                      and v, "RestartRequired")
    assert condition(vm, "RestartRequired")["message"] == "the datavolume root-new doesn't exist"
    assert claims_of(cluster.vmi("vm1")) == {"rootdisk": "root"}


@pytest.mark.cluster
def test_the_restart_baseline_is_the_spec_the_vmi_started_with(cluster: Cluster) -> None:
    cluster.bound_pvc("root")
    cluster.bound_pvc("root-new")
    vmi = cluster.running_vm(vm_body("vm1", [pvc_volume("rootdisk", "root")]))
    vm = cluster.vm("vm1")
    revision = f"revision-start-vm-{vm['metadata']['uid']}-{vm['metadata']['generation']}"
    assert status(vmi)["virtualMachineRevisionName"] == revision
    stored = [r for r in listing(cluster.api, "ControllerRevision", cluster.ns)
              if r["metadata"]["name"] == revision]
    assert stored and stored[0]["data"]["spec"]["template"] == vm["spec"]["template"]

    cluster.migrate("vm1", "rootdisk", "root-new")
    cluster.migration_in("vm1", "Succeeded")
    cluster.wait(lambda: claims_of(cluster.vmi("vm1")) == {"rootdisk": "root-new"},
                 "VMI on the new claim")
    assert stays(lambda: not condition(cluster.vm("vm1"), "RestartRequired"))
    # The running VMI now matches the template, but the spec it started with names `root`:
    # without the Migration strategy that claim change is not live-updatable.
    cluster.patch("VirtualMachine", "vm1", {"spec": {"updateVolumesStrategy": None}})
    vm = cluster.wait(lambda: (v := cluster.vm("vm1")) and condition(v, "RestartRequired")
                      and v, "RestartRequired")
    assert condition(vm, "RestartRequired")["message"] == (
        "a non-live-updatable field was changed in the template spec")
