"""``apply`` end to end on the real engine: the seed's storage classes and VM shape, moved
live (upstream virt-controller's workload updater and migration controller) and offline
(upstream cdi-controller's clone), with the seed's CSIDriver objects (so through CDI's
populators) and the node side's content marker checked on every target."""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pykube
import pytest

from reconciler.cli.main import main
from testenv import seed
from testenv.node.runtime import CONTENT_HASH_ANNOTATION
from testenv.real.engine import RealEngine
from tests.cluster.test_plan import fedora, plan_file
from tests.support.kube import annotation, get_json

pytestmark = pytest.mark.cluster

KV = "kubevirt.io/v1"
CDI = "cdi.kubevirt.io/v1beta1"
JOURNAL = "vmstorage.dev/journal"
LAST = "vmstorage.dev/last-migration"


class Cluster:
    """A namespace of the real engine, and ``apply`` run on a plan for it."""

    def __init__(self, engine: RealEngine, tmp_path: Path,
                 capsys: pytest.CaptureFixture[str]) -> None:
        self.engine, self.tmp_path, self.capsys = engine, tmp_path, capsys
        self.api: pykube.HTTPClient = engine.api()
        self.ns = engine.control_plane.create_namespace("apply")
        self.lease_ns = engine.control_plane.create_namespace("lease")

    def wait(self, probe: Callable[[], Any], what: str, timeout: float = 180.0) -> Any:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if found := probe():
                return found
            assert not self.engine.dead(), f"{self.engine.dead()} died waiting for {what}"
            time.sleep(0.2)
        logs = "\n".join(self.engine.log_tail(n, 20) for n in ("virt-controller",
                                                                "cdi-controller", "node-side"))
        pytest.fail(f"timed out waiting for {what}\n{logs}")

    def create_vm(self, vm: dict[str, Any]) -> None:
        response = self.api.post(version=KV, namespace=self.ns, url="virtualmachines",
                                 data=json.dumps(vm))
        self.api.raise_for_status(response)
        disk = vm["spec"]["dataVolumeTemplates"][0]["metadata"]["name"]
        self.wait(lambda: (self.dv(disk).get("status") or {}).get("phase") == "Succeeded",
                  f"DataVolume {disk}")
        if vm["spec"]["runStrategy"] == "Always":
            self.wait(lambda: (self.vmi().get("status") or {}).get("phase") == "Running",
                      "VMI Running")

    def merge(self, url: str, patch: dict[str, Any]) -> None:
        response = self.api.patch(version=KV, namespace=self.ns, url=url, data=json.dumps(patch),
                                  headers={"Content-Type": "application/merge-patch+json"})
        self.api.raise_for_status(response)

    def vm(self) -> dict[str, Any]:
        return get_json(self.api, KV, self.ns, "virtualmachines/vm-fedora")

    def vmi(self) -> dict[str, Any]:
        return get_json(self.api, KV, self.ns, "virtualmachineinstances/vm-fedora")

    def dv(self, name: str) -> dict[str, Any]:
        return get_json(self.api, CDI, self.ns, f"datavolumes/{name}")

    def pvc(self, name: str) -> dict[str, Any]:
        return get_json(self.api, "v1", self.ns, f"persistentvolumeclaims/{name}")

    def content(self, claim: str) -> str | None:
        return annotation(self.pvc(claim), CONTENT_HASH_ANNOTATION)

    def migrations(self) -> list[dict[str, Any]]:
        items: list[dict[str, Any]] = get_json(
            self.api, KV, self.ns, "virtualmachineinstancemigrations")["items"]
        return items

    def apply(self, body: str = "") -> tuple[int, dict[str, Any], str]:
        path = plan_file(self.tmp_path, self.ns, body)
        rc = main(["apply", str(path), "-o", "json", "--kubeconfig",
                   str(self.engine.control_plane.kubeconfig), "--lease-namespace",
                   self.lease_ns])
        out, err = self.capsys.readouterr()
        return rc, json.loads(out) if out.strip().startswith("{") else {}, err


@pytest.fixture(scope="module")
def seeded(real_engine: RealEngine) -> RealEngine:
    seed.seed_cluster(real_engine.api())  # the two classes; the engine's KubeVirt CR stays
    return real_engine


@pytest.fixture
def cluster(seeded: RealEngine, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> Cluster:
    return Cluster(seeded, tmp_path, capsys)


def target_claim(vm: dict[str, Any]) -> str:
    (volume,) = [v for v in vm["spec"]["template"]["spec"]["volumes"]
                 if v["name"] == "datavolumedisk1"]
    return str((volume.get("dataVolume") or {}).get("name")
               or volume["persistentVolumeClaim"]["claimName"])


def test_a_running_vm_moves_live_through_the_upstream_migration(cluster: Cluster) -> None:
    cluster.create_vm(fedora(cluster.ns, size="10Gi"))
    before = cluster.vmi()
    source_hash = cluster.content("vm-fedora-disk")
    assert source_hash

    rc, report, err = cluster.apply()

    assert rc == 0, err
    (outcome,) = report["outcomes"]
    assert (outcome["result"], outcome["flow"]) == ("Succeeded", "live"), err
    target = target_claim(cluster.vm())
    assert target.startswith("vm-fedora-disk-mig-")
    vmi = cluster.vmi()
    assert vmi["metadata"]["uid"] == before["metadata"]["uid"], "the same VMI: no reboot"
    assert vmi["status"]["nodeName"] != before["status"]["nodeName"], "it migrated"
    assert cluster.content(target) == source_hash
    assert cluster.pvc(target)["spec"]["storageClassName"] == seed.TARGET_CLASS
    (migration,) = cluster.migrations()
    assert migration["metadata"]["name"].startswith("kubevirt-workload-update-")
    assert migration["status"]["phase"] == "Succeeded"
    assert annotation(cluster.vm(), JOURNAL) is None
    last = json.loads(annotation(cluster.vm(), LAST) or "{}")
    assert (last["result"], last["volumes"]) == ("Succeeded", {"datavolumedisk1": target})


def test_a_stopped_vm_on_a_filesystem_disk_moves_offline(cluster: Cluster) -> None:
    cluster.create_vm(fedora(cluster.ns, size="10Gi"))
    cluster.merge("virtualmachines/vm-fedora", {"spec": {"runStrategy": "Halted"}})
    cluster.wait(lambda: not cluster.vmi(), "VMI gone")
    source_hash = cluster.content("vm-fedora-disk")

    rc, report, err = cluster.apply()

    assert rc == 0, err
    (outcome,) = report["outcomes"]
    assert (outcome["result"], outcome["flow"]) == ("Succeeded", "offline"), err
    target = target_claim(cluster.vm())
    assert cluster.content(target) == source_hash, "cdi-controller's clone carried it"
    assert cluster.pvc(target)["spec"]["storageClassName"] == seed.TARGET_CLASS
    assert cluster.vm()["spec"]["runStrategy"] == "Halted"
    assert not cluster.vmi()
    assert not cluster.migrations()


def test_a_stopped_vm_on_a_block_disk_moves_offline_through_the_upstream_clone(
        cluster: Cluster) -> None:
    vm = fedora(cluster.ns, size="10Gi", running=False)
    vm["spec"]["dataVolumeTemplates"][0]["spec"]["storage"]["storageClassName"] = (
        seed.TARGET_CLASS)  # ceph-rbd: CDI's StorageProfile makes it RWX Block
    cluster.create_vm(vm)
    assert cluster.pvc("vm-fedora-disk")["spec"]["volumeMode"] == "Block"
    source_hash = cluster.content("vm-fedora-disk")
    body = (f"storageClass: {seed.SOURCE_CLASS}\nvirtualMachines:\n  - name: vm-fedora\n")

    rc, report, err = cluster.apply(body)

    assert rc == 0, err
    (outcome,) = report["outcomes"]
    assert (outcome["result"], outcome["flow"]) == ("Succeeded", "offline"), err
    target = target_claim(cluster.vm())
    assert cluster.content(target) == source_hash, "cdi-controller's clone carried it"
    assert cluster.pvc(target)["spec"]["storageClassName"] == seed.SOURCE_CLASS
    assert cluster.vm()["spec"]["runStrategy"] == "Halted"
    assert not cluster.vmi()
    assert not cluster.migrations()
    assert target in cluster.engine.log_tail("cdi-controller", 20000)


def test_a_running_vm_moves_live_back_to_the_wait_for_first_consumer_class(
        cluster: Cluster) -> None:
    """``local-hostpath`` is WaitForFirstConsumer and of a CSI driver (its CSIDriver object
    registered): CDI's populator waits for the claim's consumer (DataVolume
    PendingPopulation), which the migration's target launcher pod is, so KubeVirt migrates to
    it and the move back is live, not rolled back (target-waits-for-consumer, what the legacy
    WaitForFirstConsumer phase would get)."""
    cluster.create_vm(fedora(cluster.ns, size="10Gi"))
    source_hash = cluster.content("vm-fedora-disk")
    rc, _, err = cluster.apply()
    assert rc == 0, err
    there = target_claim(cluster.vm())
    assert cluster.content(there) == source_hash
    uid = cluster.vmi()["metadata"]["uid"]
    body = f"storageClass: {seed.SOURCE_CLASS}\nvirtualMachines:\n  - name: vm-fedora\n"

    rc, report, err = cluster.apply(body)

    assert rc == 0, err
    (outcome,) = report["outcomes"]
    assert (outcome["result"], outcome["flow"]) == ("Succeeded", "live"), err
    back = target_claim(cluster.vm())
    assert back not in (there, "vm-fedora-disk")
    pvc = cluster.pvc(back)
    assert pvc["spec"]["storageClassName"] == seed.SOURCE_CLASS
    assert pvc["spec"]["dataSourceRef"]["kind"] == "VolumeImportSource", "CDI's populator"
    assert cluster.content(back) == source_hash
    assert cluster.vmi()["metadata"]["uid"] == uid, "the same VMI: no reboot"
    assert [m["status"]["phase"] for m in cluster.migrations()] == ["Succeeded", "Succeeded"]
