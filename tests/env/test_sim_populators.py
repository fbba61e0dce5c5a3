"""CDI volume populators (CDI controller-base.go `shouldUseCDIPopulator`, populators/):
DataVolumes on a CSI class fill through a `prime-<uid>` claim and the target gets
`dataSourceRef`; a WaitForFirstConsumer CSI class shows PendingPopulation (a valid live
destination for KubeVirt v1.5+); non-CSI classes keep the legacy flow."""

from __future__ import annotations

import hashlib
from collections.abc import Iterator
from typing import Any

import pykube
import pytest

from testenv.node.runtime import Simulator
from tests.env import test_sim_kubevirt as kv
from tests.env.test_sim_kubevirt import (
    COPY_SECONDS,
    HASH,
    Cluster,
    claims_of,
    create,
    delete,
    dv_volume,
    get,
    listing,
    pvc_volume,
    status,
    vm_body,
)
from tests.support.kube import annotation, stays

classes, kubevirt, cluster = kv.classes, kv.kubevirt, kv.cluster  # fixtures, by name
DRIVER = "populator.csi.example"
URL = "https://images.example/disk.img"
USE_POPULATOR = "cdi.kubevirt.io/storage.usePopulator"


@pytest.fixture(scope="module")
def csi(api: pykube.HTTPClient, sim: Simulator) -> Iterator[dict[str, str]]:
    """A CSIDriver object and two classes of its provisioner (Immediate, WFFC)."""
    if get(api, "CSIDriver", None, DRIVER) is None:
        create(api, "CSIDriver", None, {"metadata": {"name": DRIVER}, "spec": {}})
    names = {"imm": "popsim-imm", "wffc": "popsim-wffc"}
    for role, name in names.items():
        if get(api, "StorageClass", None, name) is None:
            create(api, "StorageClass", None, {
                "metadata": {"name": name}, "provisioner": DRIVER,
                "volumeBindingMode": "WaitForFirstConsumer" if role == "wffc" else "Immediate"})
    yield names
    for name in names.values():
        delete(api, "StorageClass", None, name)
    delete(api, "CSIDriver", None, DRIVER)


def dv(name: str, storage_class: str, source: dict[str, Any], size: str = "2Gi",
       annotations: dict[str, str] | None = None) -> dict[str, Any]:
    return {"metadata": {"name": name, "annotations": annotations or {}},
            "spec": {"source": source, "storage": {
                "storageClassName": storage_class,
                "resources": {"requests": {"storage": size}}}}}


def dv_phase(cluster: Cluster, name: str) -> str:
    return str(status(cluster.get("DataVolume", name)).get("phase", ""))


@pytest.mark.cluster
def test_a_csi_class_populates_through_a_prime_claim(cluster: Cluster,
                                                     csi: dict[str, str]) -> None:
    created = cluster.create("DataVolume", dv("img", csi["imm"], {"http": {"url": URL}},
                                              annotations={COPY_SECONDS: "1"}))
    uid = created["metadata"]["uid"]
    target = cluster.wait(lambda: cluster.get("PersistentVolumeClaim", "img"), "target PVC")
    assert target["spec"]["dataSourceRef"] == {
        "apiGroup": "cdi.kubevirt.io", "kind": "VolumeImportSource",
        "name": f"volume-import-source-{uid}"}
    prime_name = f"prime-{target['metadata']['uid']}"
    prime = cluster.wait(lambda: cluster.get("PersistentVolumeClaim", prime_name), "prime PVC")
    assert prime["metadata"]["ownerReferences"][0]["uid"] == target["metadata"]["uid"]
    assert status(cluster.get("PersistentVolumeClaim", "img")).get("phase") == "Pending"

    cluster.wait(lambda: dv_phase(cluster, "img") == "Succeeded", "import done", timeout=15)
    target = cluster.get("PersistentVolumeClaim", "img")
    assert target is not None and status(target)["phase"] == "Bound"
    assert annotation(target, HASH) == hashlib.sha256(URL.encode()).hexdigest()
    assert status(cluster.get("DataVolume", "img"))["claimName"] == "img"
    cluster.wait(lambda: cluster.get("PersistentVolumeClaim", prime_name) is None, "prime gone")
    assert target["spec"]["volumeName"] == f"pvc-{prime['metadata']['uid']}"  # the prime's PV


@pytest.mark.cluster
def test_wffc_csi_destination_is_pending_population_and_migrates_live(
        cluster: Cluster, csi: dict[str, str]) -> None:
    cluster.bound_pvc("root")
    cluster.running_vm(vm_body("vm1", [pvc_volume("rootdisk", "root")]))
    cluster.create("DataVolume", dv("root-new", csi["wffc"], {"blank": {}}, size="3Gi"))
    cluster.wait(lambda: dv_phase(cluster, "root-new") == "PendingPopulation",
                 "PendingPopulation")
    target = cluster.get("PersistentVolumeClaim", "root-new")
    assert target is not None
    assert target["spec"]["dataSourceRef"]["kind"] == "VolumeImportSource"
    assert status(target).get("phase") == "Pending"

    cluster.migrate("vm1", "rootdisk", "root-new", data_volume=True)  # accepted as is
    cluster.migration_in("vm1", "Succeeded")
    cluster.wait(lambda: claims_of(cluster.vmi("vm1")) == {"rootdisk": "root-new"},
                 "VMI on the populated claim")
    assert dv_phase(cluster, "root-new") == "Succeeded"
    assert status(cluster.get("PersistentVolumeClaim", "root-new"))["phase"] == "Bound"


@pytest.mark.cluster
@pytest.mark.parametrize(("role", "forced", "phase", "populated"), [
    ("kv-wffc", None, "WaitForFirstConsumer", False),   # no CSIDriver: legacy
    ("kv-wffc", "true", "PendingPopulation", True),     # the DV asks for populators
    ("wffc", "false", "WaitForFirstConsumer", False),   # the DV refuses them
])
def test_the_populator_choice_follows_the_csi_driver_or_the_annotation(
        cluster: Cluster, csi: dict[str, str], role: str, forced: str | None, phase: str,
        populated: bool) -> None:
    storage_class = cluster.classes["wffc"] if role == "kv-wffc" else csi[role]
    cluster.create("DataVolume", dv("d", storage_class, {"blank": {}},
                                    annotations={USE_POPULATOR: forced} if forced else None))
    cluster.wait(lambda: dv_phase(cluster, "d") == phase, phase)
    claim = cluster.get("PersistentVolumeClaim", "d")
    assert claim is not None and ("dataSourceRef" in claim["spec"]) is populated
    assert stays(lambda: [p["metadata"]["name"] for p in listing(
        cluster.api, "PersistentVolumeClaim", cluster.ns)] == ["d"])


@pytest.mark.cluster
def test_a_data_volume_disk_on_a_wffc_csi_class_binds_when_the_vm_starts(
        cluster: Cluster, csi: dict[str, str]) -> None:
    cluster.create("DataVolume", dv("boot", csi["wffc"], {"http": {"url": URL}}))
    cluster.wait(lambda: dv_phase(cluster, "boot") == "PendingPopulation", "PendingPopulation")
    cluster.running_vm(vm_body("vm1", [dv_volume("rootdisk", "boot")]))
    assert dv_phase(cluster, "boot") == "Succeeded"
    assert annotation(cluster.get("PersistentVolumeClaim", "boot"), HASH) == \
        hashlib.sha256(URL.encode()).hexdigest()
