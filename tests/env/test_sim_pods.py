"""virt-launcher pods are real Pod objects, and "in use" means mounted by one: what a client
sees through the API server during a VM's life and a live migration (upstream
virt-controller template.go, migration.go; CDI clone/common.go; kube pvc-protection)."""

from __future__ import annotations

from typing import Any

import pykube
import pytest

from tests.env import test_sim_kubevirt as kv
from tests.env.test_sim_kubevirt import (
    FAULT,
    Cluster,
    delete,
    events,
    listing,
    pvc_volume,
    status,
    vm_body,
)
from tests.support.kube import condition, stays

classes, kubevirt, cluster = kv.classes, kv.kubevirt, kv.cluster  # fixtures, by name


def launcher_pods(cluster: Cluster, vmi: dict[str, Any]) -> list[dict[str, Any]]:
    return listing(cluster.api, "Pod", cluster.ns,
                   {"kubevirt.io": "virt-launcher", "kubevirt.io/created-by":
                    vmi["metadata"]["uid"]})


def claims(pod: dict[str, Any]) -> set[str]:
    return {v["persistentVolumeClaim"]["claimName"] for v in pod["spec"]["volumes"]
            if "persistentVolumeClaim" in v}


def clone_of(cluster: Cluster, name: str, source: str) -> None:
    cluster.create("DataVolume", {"metadata": {"name": name}, "spec": {
        "source": {"pvc": {"namespace": cluster.ns, "name": source}},
        "storage": {"storageClassName": cluster.classes["fast"]}}})


@pytest.mark.cluster
def test_launcher_pods_hold_the_claims_through_a_live_migration(cluster: Cluster) -> None:
    cluster.bound_pvc("root")
    cluster.bound_pvc("root-new", size="3Gi")
    vmi = cluster.running_vm(vm_body("vm1", [pvc_volume("rootdisk", "root")],
                                     annotations={FAULT: "stall"}))
    [pod] = launcher_pods(cluster, vmi)
    assert pod["metadata"]["labels"]["vm.kubevirt.io/name"] == "vm1"
    assert pod["metadata"]["ownerReferences"][0]["uid"] == vmi["metadata"]["uid"]
    assert pod["spec"]["nodeName"] == status(vmi)["nodeName"]
    assert status(pod)["phase"] == "Running"
    assert claims(pod) == {"root"}
    assert status(vmi)["activePods"] == {pod["metadata"]["uid"]: status(vmi)["nodeName"]}

    cluster.migrate("vm1", "rootdisk", "root-new")
    running = cluster.migration_in("vm1", "Running")
    state = status(running)["migrationState"]
    pods = {p["metadata"]["name"]: p for p in launcher_pods(cluster, vmi)}
    assert set(pods) == {state["sourcePod"], state["targetPod"]}
    assert claims(pods[state["sourcePod"]]) == {"root"}
    assert claims(pods[state["targetPod"]]) == {"root-new"}
    assert pods[state["targetPod"]]["spec"]["nodeName"] == state["targetNode"]

    clone_of(cluster, "copy", "root")  # the source launcher still holds `root`
    cluster.wait(lambda: ("Warning", "CloneSourceInUse",
                          f"pod {cluster.ns}/{state['sourcePod']} using PersistentVolumeClaim "
                          "root") in events(cluster.api, cluster.ns, "copy"), "CloneSourceInUse")
    assert stays(lambda: status(cluster.get("DataVolume", "copy")).get("phase")
                 == "CloneScheduled")
    assert condition(cluster.get("DataVolume", "copy"), "Running").get("reason", "") != \
        "CloneSourceInUse"

    cluster.patch("VirtualMachine", "vm1", {"metadata": {"annotations": {FAULT: None}}})
    cluster.migration_in("vm1", "Succeeded")
    after = {p["metadata"]["name"]: status(p)["phase"] for p in launcher_pods(cluster, vmi)}
    assert after == {state["sourcePod"]: "Succeeded", state["targetPod"]: "Running"}
    cluster.wait(lambda: status(cluster.get("DataVolume", "copy")).get("phase") == "Succeeded",
                 "the clone runs once the source pod finished")

    cluster.patch("VirtualMachine", "vm1", {"spec": {"runStrategy": "Halted"}})
    cluster.wait(lambda: cluster.vmi("vm1") is None and launcher_pods(cluster, vmi) == [],
                 "VMI and all its pods gone")


@pytest.mark.cluster
def test_deleting_a_mounted_claim_leaves_it_terminating_until_the_vm_stops(
        cluster: Cluster) -> None:
    claim = cluster.bound_pvc("data")
    assert "kubernetes.io/pvc-protection" in claim["metadata"]["finalizers"]
    vmi = cluster.running_vm(vm_body("vm1", [pvc_volume("datadisk", "data")]))
    assert [claims(p) for p in launcher_pods(cluster, vmi)] == [{"data"}]
    delete(cluster.api, "PersistentVolumeClaim", cluster.ns, "data")
    assert stays(lambda: bool((c := cluster.get("PersistentVolumeClaim", "data"))
                              and c["metadata"].get("deletionTimestamp")))
    cluster.patch("VirtualMachine", "vm1", {"spec": {"runStrategy": "Halted"}})
    cluster.wait(lambda: cluster.get("PersistentVolumeClaim", "data") is None,
                 "claim released once the launcher pod is gone")


@pytest.mark.cluster
def test_a_deleted_launcher_pod_fails_its_vmi(cluster: Cluster, api: pykube.HTTPClient) -> None:
    cluster.bound_pvc("root")
    vmi = cluster.running_vm(vm_body("vm1", [pvc_volume("rootdisk", "root")]))
    [pod] = launcher_pods(cluster, vmi)
    pykube.Pod.objects(api, namespace=cluster.ns).get(name=pod["metadata"]["name"]).delete()
    cluster.wait(lambda: launcher_pods(cluster, vmi) == [], "pod gone (no kubelet waits)")
    # the guest died with its pod: the VMI failed, and runStrategy Always starts a new one
    cluster.wait(lambda: (i := cluster.vmi("vm1")) is not None
                 and i["metadata"]["uid"] != vmi["metadata"]["uid"]
                 and status(i).get("phase") == "Running", "a new VMI")
    assert any(e[:2] == ("Warning", "Stopped") for e in events(cluster.api, cluster.ns, "vm1"))
