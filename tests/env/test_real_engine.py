"""The real engine: upstream virt-controller, virt-api, cdi-controller, kube-scheduler,
kube-controller-manager and KWOK, with only the node side ours (``testenv.node``).

One engine per session (``real_engine`` in tests/env/conftest.py; ~30-60 s to start), each
test in its own namespace. These tests fail (never skip) when a binary is missing or a
process does not start: the engine builds what is missing and names the process that failed.
"""

from __future__ import annotations

import dataclasses
import hashlib
import itertools
import json
import math
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pykube
import pytest

from testenv import seed
from testenv.node.runtime import CONTENT_HASH_ANNOTATION
from testenv.real import engine as engine_module
from testenv.real import processes
from testenv.real.build import ensure_real
from testenv.real.engine import RealEngine, RealEngineError
from tests.support.kube import condition, get_json

pytestmark = pytest.mark.cluster

KV = "kubevirt.io/v1"
CDI = "cdi.kubevirt.io/v1beta1"
OLD, NEW = "real-old", "real-new"
TIMEOUT = 120.0


@pytest.fixture(scope="module")
def engine(real_engine: RealEngine) -> RealEngine:
    api = real_engine.api()
    for name, provisioner in ((OLD, "old.csi.vmsr.invalid"), (NEW, "new.csi.vmsr.invalid")):
        _immediate_class(api, name, provisioner)
    return real_engine


def _immediate_class(api: pykube.HTTPClient, name: str, provisioner: str) -> None:
    """An Immediate class of an unknown provisioner, RWO Filesystem: the administrator tells
    CDI how to claim from it (the node side writes the annotation into the StorageProfile)."""
    _post(api, "storage.k8s.io/v1", "", "storageclasses", {
        "apiVersion": "storage.k8s.io/v1", "kind": "StorageClass",
        "metadata": {"name": name, "annotations": {
            "sim.vmstorage.dev/claim-property-sets": json.dumps(
                [{"accessModes": ["ReadWriteOnce"], "volumeMode": "Filesystem"}])}},
        "provisioner": provisioner, "volumeBindingMode": "Immediate",
        "reclaimPolicy": "Delete"})


@pytest.fixture
def ns(engine: RealEngine, request: pytest.FixtureRequest) -> str:
    return engine.control_plane.create_namespace(request.node.name[5:25].replace("_", "-"))


def _post(api: pykube.HTTPClient, version: str, namespace: str, plural: str,
          body: dict[str, Any]) -> dict[str, Any]:
    kwargs: dict[str, Any] = {"version": version, "url": plural, "data": json.dumps(body)}
    if namespace:
        kwargs["namespace"] = namespace
    response = api.post(**kwargs)
    api.raise_for_status(response)
    created: dict[str, Any] = response.json()
    return created


def _patch(api: pykube.HTTPClient, version: str, namespace: str, url: str,
           patch: dict[str, Any]) -> None:
    response = api.patch(version=version, namespace=namespace, url=url, data=json.dumps(patch),
                         headers={"Content-Type": "application/merge-patch+json"})
    api.raise_for_status(response)


def wait(engine: RealEngine, probe: Callable[[], Any], what: str,
         timeout: float = TIMEOUT) -> Any:
    """Poll ``probe`` until truthy; on timeout fail with the upstream controllers' log tails
    (and fail at once when a process of the engine died)."""
    deadline = time.monotonic() + timeout
    last: Any = None
    while time.monotonic() < deadline:
        last = probe()
        if last:
            return last
        dead = engine.dead()
        if dead:
            pytest.fail(f"{', '.join(dead)} died while waiting for {what}:\n"
                        + "\n".join(engine.log_tail(n) for n in dead))
        time.sleep(0.2)
    logs = "\n".join(engine.log_tail(name, 25) for name in
                     ("virt-controller", "cdi-controller", "node-side"))
    pytest.fail(f"timed out after {timeout:.0f}s waiting for {what} (last: {last!r})\n{logs}")


def blank_dv(name: str, storage_class: str, size: str = "1Gi") -> dict[str, Any]:
    return {"apiVersion": CDI, "kind": "DataVolume", "metadata": {"name": name},
            "spec": {"source": {"blank": {}}, "storage": {
                "storageClassName": storage_class,
                "resources": {"requests": {"storage": size}}}}}


def import_dv(name: str, storage_class: str, url: str, size: str = "2Gi") -> dict[str, Any]:
    dv = blank_dv(name, storage_class, size)
    dv["spec"]["source"] = {"http": {"url": url}}
    return dv


def vm_body(name: str, claim: str, *, run: bool = True) -> dict[str, Any]:
    return {
        "apiVersion": KV, "kind": "VirtualMachine", "metadata": {"name": name},
        "spec": {
            "runStrategy": "Always" if run else "Halted",
            "template": {"spec": {
                "domain": {"devices": {"disks": [{"name": "rootdisk", "disk": {"bus": "virtio"}}]},
                           "resources": {"requests": {"memory": "1Gi"}}},
                "volumes": [{"name": "rootdisk", "persistentVolumeClaim": {"claimName": claim}}],
            }},
        },
    }


def dv_phase(api: pykube.HTTPClient, ns: str, name: str) -> str:
    return str((get_json(api, CDI, ns, f"datavolumes/{name}").get("status") or {}).get("phase"))


def content(api: pykube.HTTPClient, ns: str, claim: str) -> str | None:
    pvc = get_json(api, "v1", ns, f"persistentvolumeclaims/{claim}")
    return (pvc.get("metadata", {}).get("annotations") or {}).get(CONTENT_HASH_ANNOTATION)


def running_vm(engine: RealEngine, ns: str, name: str, claim: str) -> dict[str, Any]:
    api = engine.api()
    _post(api, KV, ns, "virtualmachines", vm_body(name, claim))
    vmi: dict[str, Any] = wait(
        engine, lambda: (v := get_json(api, KV, ns, f"virtualmachineinstances/{name}"))
        and (v.get("status") or {}).get("phase") == "Running" and v, f"VMI {name} Running")
    return vmi


def test_a_vm_starts_through_virt_controller_the_scheduler_and_the_node_side(
        engine: RealEngine, ns: str) -> None:
    api = engine.api()
    _post(api, CDI, ns, "datavolumes", blank_dv("root", OLD))
    wait(engine, lambda: dv_phase(api, ns, "root") == "Succeeded", "blank DataVolume")

    vmi = running_vm(engine, ns, "vm1", "root")

    node = vmi["status"]["nodeName"]
    assert node in engine.nodes
    assert vmi["metadata"]["labels"]["kubevirt.io/nodeName"] == node
    # virt-api's mutator defaulted what a real cluster defaults
    assert vmi["spec"]["architecture"] == "amd64"
    assert vmi["spec"]["domain"]["machine"]["type"].startswith("q35")
    # the RWO claim makes the VMI not live-migratable, as virt-handler says it
    live = condition(vmi, "LiveMigratable")
    assert (live["status"], live["reason"]) == ("False", "DisksNotLiveMigratable")
    assert "lastProbeTime" in live and live["lastProbeTime"] is None
    pods = get_json(api, "v1", ns, "pods")["items"]
    (launcher,) = [p for p in pods if p["metadata"]["labels"].get("kubevirt.io") == "virt-launcher"]
    assert launcher["spec"]["nodeName"] == node  # bound by kube-scheduler
    # VM Ready follows VMI Ready, which follows the launcher pod's readiness (a moment
    # after printableStatus says Running)
    wait(engine, lambda: (v := get_json(api, KV, ns, "virtualmachines/vm1"))
         and (v.get("status") or {}).get("printableStatus") == "Running"
         and condition(v, "Ready").get("status") == "True", "VM Running and Ready")
    assert condition(get_json(api, KV, ns, "virtualmachineinstances/vm1"), "Ready")[
        "status"] == "True"

    _patch(api, KV, ns, "virtualmachines/vm1", {"spec": {"runStrategy": "Halted"}})
    wait(engine, lambda: not get_json(api, KV, ns, "virtualmachineinstances/vm1"), "VMI gone")
    wait(engine, lambda: (get_json(api, KV, ns, "virtualmachines/vm1").get("status") or {})
         .get("printableStatus") == "Stopped", "VM Stopped")


def test_an_offline_clone_across_classes_runs_through_cdi_controller(
        engine: RealEngine, ns: str) -> None:
    api = engine.api()
    url = "http://images.vmsr.invalid/fedora.qcow2"
    _post(api, CDI, ns, "datavolumes", import_dv("src", OLD, url))
    wait(engine, lambda: dv_phase(api, ns, "src") == "Succeeded", "import DataVolume")
    source_hash = content(api, ns, "src")
    assert source_hash  # written by the node side's importer pod

    clone = blank_dv("dst", NEW, "2Gi")
    clone["spec"]["source"] = {"pvc": {"namespace": ns, "name": "src"}}
    _post(api, CDI, ns, "datavolumes", clone)
    dv = wait(engine, lambda: (d := get_json(api, CDI, ns, "datavolumes/dst"))
              and (d.get("status") or {}).get("phase") == "Succeeded" and d,
              "clone DataVolume Succeeded")

    assert dv["status"]["progress"] == "100.0%"
    dst = get_json(api, "v1", ns, "persistentvolumeclaims/dst")
    assert dst["spec"]["storageClassName"] == NEW
    assert content(api, ns, "dst") == source_hash
    assert "dst" in engine.log_tail("cdi-controller", 4000)


def test_a_live_volume_migration_runs_through_the_workload_updater(
        engine: RealEngine, ns: str) -> None:
    api = engine.api()
    _post(api, CDI, ns, "datavolumes", import_dv("root", OLD, "http://images.vmsr.invalid/a"))
    _post(api, CDI, ns, "datavolumes", blank_dv("root-new", NEW, "2Gi"))
    for name in ("root", "root-new"):
        wait(engine, lambda n=name: dv_phase(api, ns, n) == "Succeeded", f"DV {name}")  # type: ignore[misc]
    source_hash = content(api, ns, "root")
    before = running_vm(engine, ns, "vm1", "root")

    _patch(api, KV, ns, "virtualmachines/vm1", {"spec": {
        "updateVolumesStrategy": "Migration",
        "template": {"spec": {"volumes": [
            {"name": "rootdisk", "persistentVolumeClaim": {"claimName": "root-new"}}]}}}})

    migration = wait(engine, lambda: next(
        (m for m in get_json(api, KV, ns, "virtualmachineinstancemigrations")["items"]
         if (m.get("status") or {}).get("phase") == "Succeeded"), None),
        "the workload updater's migration Succeeded")
    assert migration["metadata"]["name"].startswith("kubevirt-workload-update-")
    vmi = wait(engine, lambda: (v := get_json(api, KV, ns, "virtualmachineinstances/vm1"))
               and not condition(v, "VolumesChange") and v.get("status", {}).get(
                   "nodeName") != before["status"]["nodeName"] and v,
               "VMI moved, VolumesChange gone")
    assert vmi["metadata"]["uid"] == before["metadata"]["uid"]  # the same VMI, live
    assert [v["persistentVolumeClaim"]["claimName"] for v in vmi["spec"]["volumes"]] == [
        "root-new"]
    assert not vmi["status"].get("migratedVolumes")
    assert content(api, ns, "root-new") == source_hash
    vm = wait(engine, lambda: (v := get_json(api, KV, ns, "virtualmachines/vm1"))
              and ((v.get("status") or {}).get("volumeUpdateState") or {}).get(
                  "volumeMigrationState") and v, "VM volumeUpdateState")
    assert not condition(vm, "RestartRequired")
    assert migration["metadata"]["name"] in engine.log_tail("virt-controller", 4000)


def test_cdi_sizes_a_filesystem_clone_from_the_image_not_the_claim(
        engine: RealEngine, ns: str) -> None:
    """Upstream detectCloneSize: a clone without a size of a Filesystem source with KubeVirt
    content gets the image's virtual size (the size-detection pod's answer: what the
    importer left, the source's space minus the filesystem overhead) plus the overhead again
    for a Filesystem target, so the destination claim is smaller than its source; ``apply``
    therefore requests the source's size for an offline clone."""
    api = engine.api()
    _post(api, CDI, ns, "datavolumes", import_dv("src", OLD, "http://x.vmsr.invalid/i", "10Gi"))
    wait(engine, lambda: dv_phase(api, ns, "src") == "Succeeded", "import")
    clone = blank_dv("dst", NEW)
    clone["spec"]["storage"].pop("resources")
    clone["spec"]["source"] = {"pvc": {"namespace": ns, "name": "src"}}
    _post(api, CDI, ns, "datavolumes", clone)
    wait(engine, lambda: dv_phase(api, ns, "dst") == "Succeeded", "clone without a size")

    def request(claim: str) -> int:
        pvc = get_json(api, "v1", ns, f"persistentvolumeclaims/{claim}")
        return int(pvc["spec"]["resources"]["requests"]["storage"])

    source, target = request("src"), request("dst")
    # CDI's GetRequiredSpace: align to 1 MiB, then x (1 + 6% filesystem overhead), not
    # / 0.94 (11422785362)
    assert source == math.ceil(10 * 2**30 * 1.06) == 11381663335
    virtual = int(source * 0.94)  # what the importer left: the usable space
    assert target == math.ceil(-(-virtual // 2**20) * 2**20 * 1.06) == 11341649675
    assert target < source
    assert content(api, ns, "dst") == content(api, ns, "src")


def test_controllers_that_lose_their_leader_election_are_started_again(
        engine: RealEngine, ns: str) -> None:
    """The API server down longer than the leader-elected controllers' renew deadlines (10 s
    for cdi-controller, 20 s for virt-controller): both exit on the lost election, as upstream
    does, are started again as the kubelet would, and then do their work."""
    before = {name: engine.processes[name].restarts for name in engine_module.RESTARTED}

    def until_both_exited() -> None:  # the outage: until both gave up their leadership
        deadline = time.monotonic() + 90
        while time.monotonic() < deadline:
            if all(engine.processes[n].lost_leadership() for n in engine_module.RESTARTED):
                return
            time.sleep(0.2)
        pytest.fail("not both exited on a lost leader election within 90 s of the outage")

    engine.control_plane.restart_apiserver(while_down=until_both_exited)
    deadline = time.monotonic() + 30  # the supervisor looks every 0.2 s once /readyz is ok
    while not all(engine.processes[n].restarts > before[n] for n in engine_module.RESTARTED):
        assert time.monotonic() < deadline, f"not both started again: {engine.restarts}"
        time.sleep(0.2)

    for name in engine_module.RESTARTED:
        proc = engine.processes[name]
        assert proc.alive(), proc.tail()
        log = proc.log.read_bytes()
        assert processes.LEADERSHIP_LOST.search(log[:proc.log_offset]), f"{name}: {proc.tail()}"
    api = engine.api()
    _post(api, CDI, ns, "datavolumes", blank_dv("root", OLD))
    wait(engine, lambda: dv_phase(api, ns, "root") == "Succeeded",
         "a DataVolume through the restarted cdi-controller")
    running_vm(engine, ns, "vm1", "root")  # through the restarted virt-controller
    assert not engine.dead()


def test_a_process_that_fails_to_start_is_named_and_nothing_is_left_behind(
        monkeypatch: pytest.MonkeyPatch) -> None:
    real = ensure_real(log=lambda _: None)
    broken = dataclasses.replace(real, kube_scheduler=Path("/bin/false"))
    monkeypatch.setattr(engine_module, "ensure_real", lambda log: broken)
    engine = RealEngine(log=lambda _: None)

    with pytest.raises(RealEngineError) as failed:
        engine.start()

    assert failed.value.component == "kube-scheduler"
    assert str(failed.value).startswith(
        "kube-scheduler exited with code 1 before it was healthy"), failed.value
    assert "kube-scheduler.log" in str(failed.value)  # its log tail follows
    assert engine.processes == {}
    assert engine.control_plane.workdir is None and engine.pki is None


FAULT = "sim.vmstorage.dev/fault"


def test_a_worker_pod_that_fails_once_is_restarted_and_cdi_counts_it(
        engine: RealEngine, ns: str) -> None:
    api = engine.api()
    dv = import_dv("flaky", OLD, "http://x.vmsr.invalid/flaky")
    dv["metadata"]["annotations"] = {FAULT: "fail-times:1"}
    _post(api, CDI, ns, "datavolumes", dv)

    done = wait(engine, lambda: (d := get_json(api, CDI, ns, "datavolumes/flaky"))
                and (d.get("status") or {}).get("phase") == "Succeeded" and d, "import")

    assert done["status"]["restartCount"] == 1  # cdi-controller read the container restart


def test_a_fatal_worker_pod_fails_the_data_volume(engine: RealEngine, ns: str) -> None:
    api = engine.api()
    dv = import_dv("doomed", OLD, "http://x.vmsr.invalid/doomed")
    dv["metadata"]["annotations"] = {FAULT: "fatal"}
    _post(api, CDI, ns, "datavolumes", dv)

    wait(engine, lambda: dv_phase(api, ns, "doomed") == "Failed", "DataVolume Failed")


def test_a_failing_migration_is_reported_by_the_source_and_fails_the_vmim(
        engine: RealEngine, ns: str) -> None:
    api = engine.api()
    _post(api, CDI, ns, "datavolumes", import_dv("root", OLD, "http://x.vmsr.invalid/b"))
    _post(api, CDI, ns, "datavolumes", blank_dv("root-new", NEW, "2Gi"))
    for name in ("root", "root-new"):
        wait(engine, lambda n=name: dv_phase(api, ns, n) == "Succeeded", f"DV {name}")  # type: ignore[misc]
    body = vm_body("vm1", "root")
    body["metadata"]["annotations"] = {FAULT: "fail"}
    _post(api, KV, ns, "virtualmachines", body)
    before = wait(engine, lambda: (v := get_json(api, KV, ns, "virtualmachineinstances/vm1"))
                  and (v.get("status") or {}).get("phase") == "Running" and v, "VMI Running")

    _patch(api, KV, ns, "virtualmachines/vm1", {"spec": {
        "updateVolumesStrategy": "Migration",
        "template": {"spec": {"volumes": [
            {"name": "rootdisk", "persistentVolumeClaim": {"claimName": "root-new"}}]}}}})

    # virt-controller may write the Failed phase a moment before it copies the VMI's
    # migrationState (with the source's failureReason) into the VMIM: wait for both
    failed = wait(engine, lambda: next(
        (m for m in get_json(api, KV, ns, "virtualmachineinstancemigrations")["items"]
         if (m.get("status") or {}).get("phase") == "Failed"
         and ((m["status"].get("migrationState") or {}).get("failureReason"))), None),
        "a Failed migration with its failure reason")
    assert "injected fault" in failed["status"]["migrationState"]["failureReason"]
    vmi = get_json(api, KV, ns, "virtualmachineinstances/vm1")
    assert vmi["status"]["nodeName"] == before["status"]["nodeName"]  # still on the source
    assert vmi["status"]["phase"] == "Running"
    assert content(api, ns, "root-new") == ""  # nothing copied


RUNNING_AND_STRATEGY = (
    "Running and RunStrategy are mutually exclusive. Note that Running is deprecated, "
    "please use RunStrategy instead"
)


def test_virt_api_refuses_an_invalid_vm_with_upstream_s_message(
        engine: RealEngine, ns: str) -> None:
    """virt-api's VM webhook answers 422 with its causes (vms-admitter.go), which the
    product shows as they come (``plan --server-dry-run``)."""
    api = engine.api()
    both = vm_body("vm1", "root", run=False)
    both["spec"]["running"] = False
    response = api.post(version=KV, namespace=ns, url="virtualmachines", data=json.dumps(both))
    assert response.status_code == 422
    assert 'admission webhook "virtualmachine-validator.kubevirt.io" denied the request: ' \
        + RUNNING_AND_STRATEGY in response.json()["message"]

    unreferenced = vm_body("vm2", "root", run=False)
    unreferenced["spec"]["dataVolumeTemplates"] = [
        {"metadata": {"name": "orphan"}, "spec": blank_dv("orphan", OLD)["spec"]}]
    response = api.post(version=KV, namespace=ns, url="virtualmachines",
                        data=json.dumps(unreferenced))
    assert response.status_code == 422
    assert ("DataVolumeTemplate entry spec.dataVolumeTemplate[0] must be referenced in the "
            "VMI template's 'volumes' list") in response.json()["message"]


def test_a_missing_destination_is_refused_before_anything_is_written(
        engine: RealEngine, ns: str) -> None:
    api = engine.api()
    _post(api, CDI, ns, "datavolumes", blank_dv("root", OLD))
    wait(engine, lambda: dv_phase(api, ns, "root") == "Succeeded", "DV root")
    running_vm(engine, ns, "vm1", "root")

    _patch(api, KV, ns, "virtualmachines/vm1", {"spec": {
        "updateVolumesStrategy": "Migration",
        "template": {"spec": {"volumes": [
            {"name": "rootdisk", "dataVolume": {"name": "root-new"}}]}}}})

    vmi = wait(engine, lambda: (v := get_json(api, KV, ns, "virtualmachineinstances/vm1"))
               and condition(v, "VolumesChange") and v, "VolumesChange")
    change = condition(vmi, "VolumesChange")
    assert (change["status"], change["message"]) == (
        "False", "One of the destination volumes doesn't exist: "
        "the datavolume root-new doesn't exist")
    assert [v["persistentVolumeClaim"]["claimName"] for v in vmi["spec"]["volumes"]] == ["root"]
    assert not vmi["status"].get("migratedVolumes")
    assert get_json(api, KV, ns, "virtualmachineinstancemigrations")["items"] == []


def test_a_claim_swap_without_the_migration_strategy_requires_a_restart(
        engine: RealEngine, ns: str) -> None:
    api = engine.api()
    for name in ("root", "root-new"):
        _post(api, CDI, ns, "datavolumes", blank_dv(name, OLD))
        wait(engine, lambda n=name: dv_phase(api, ns, n) == "Succeeded", f"DV {name}")  # type: ignore[misc]
    running_vm(engine, ns, "vm1", "root")

    _patch(api, KV, ns, "virtualmachines/vm1", {"spec": {"template": {"spec": {"volumes": [
        {"name": "rootdisk", "persistentVolumeClaim": {"claimName": "root-new"}}]}}}})

    vm = wait(engine, lambda: (v := get_json(api, KV, ns, "virtualmachines/vm1"))
              and condition(v, "RestartRequired") and v, "RestartRequired", timeout=30)
    assert condition(vm, "RestartRequired")["message"] == (
        "a non-live-updatable field was changed in the template spec")
    vmi = get_json(api, KV, ns, "virtualmachineinstances/vm1")
    assert [v["persistentVolumeClaim"]["claimName"] for v in vmi["spec"]["volumes"]] == ["root"]
    assert get_json(api, KV, ns, "virtualmachineinstancemigrations")["items"] == []


def test_a_stalled_migration_is_aborted_after_the_progress_timeout(
        engine: RealEngine, ns: str) -> None:
    api = engine.api()
    kubevirt = "kubevirts/kubevirt"
    _patch(api, KV, "kubevirt", kubevirt, {"spec": {"configuration": {"migrations": {
        "progressTimeout": 3}}}})
    try:
        _post(api, CDI, ns, "datavolumes", import_dv("root", OLD, "http://x.vmsr.invalid/c"))
        _post(api, CDI, ns, "datavolumes", blank_dv("root-new", NEW, "2Gi"))
        for name in ("root", "root-new"):
            wait(engine, lambda n=name: dv_phase(api, ns, n) == "Succeeded", f"DV {name}")  # type: ignore[misc]
        body = vm_body("vm1", "root")
        body["metadata"]["annotations"] = {FAULT: "stall"}
        _post(api, KV, ns, "virtualmachines", body)
        wait(engine, lambda: (get_json(api, KV, ns, "virtualmachineinstances/vm1").get(
            "status") or {}).get("phase") == "Running", "VMI Running")
        _patch(api, KV, ns, "virtualmachines/vm1", {"spec": {
            "updateVolumesStrategy": "Migration",
            "template": {"spec": {"volumes": [
                {"name": "rootdisk", "persistentVolumeClaim": {"claimName": "root-new"}}]}}}})

        # virt-controller writes a VMIM Failed first and copies the VMI's final
        # migrationState into it on its next reconcile (migration.go, IsFinal)
        failed = wait(engine, lambda: next(
            (m for m in get_json(api, KV, ns, "virtualmachineinstancemigrations")["items"]
             if (m.get("status") or {}).get("phase") == "Failed"
             and "failureReason" in (m["status"].get("migrationState") or {})), None),
            "an aborted migration")
        state = failed["status"]["migrationState"]
        assert state["failureReason"] == "Live migration stuck for 3 seconds and has been aborted"
        assert state["abortStatus"] == "Succeeded"
    finally:
        _patch(api, KV, "kubevirt", kubevirt, {"spec": {"configuration": {"migrations": None}}})



COPY_SECONDS = "sim.vmstorage.dev/copy-seconds"
SLOW_COPY = "8"  # seconds: cdi-controller scrapes a running worker every 2-3 s
POP_OLD, POP_NEW = "real-pop-old", "real-pop-new"  # classes whose drivers have CSIDriver objects


@pytest.fixture(scope="module")
def populated_classes(engine: RealEngine) -> tuple[str, str]:
    """Two classes CDI fills through its populators (it does for a provisioner with a
    CSIDriver object, ``shouldUseCDIPopulator``); OLD and NEW it fills the legacy way."""
    api = engine.api()
    for name in (POP_OLD, POP_NEW):
        provisioner = f"{name}.csi.vmsr.invalid"
        _post(api, "storage.k8s.io/v1", "", "csidrivers", {
            "apiVersion": "storage.k8s.io/v1", "kind": "CSIDriver",
            "metadata": {"name": provisioner}, "spec": {}})
        _immediate_class(api, name, provisioner)
    return POP_OLD, POP_NEW


@pytest.fixture(params=["legacy", "populator"])
def flow(request: pytest.FixtureRequest) -> tuple[str, str, bool]:
    """(source class, destination class, whether CDI's populators fill them)."""
    if request.param == "populator":
        old, new = request.getfixturevalue("populated_classes")
        return old, new, True
    return OLD, NEW, False


def progress_until_succeeded(engine: RealEngine, ns: str, name: str) -> list[float]:
    """The percentages the DataVolume's ``status.progress`` showed before it Succeeded, each
    change once, in order (polled every 0.2 s; "N/A" and 100% left out)."""
    api = engine.api()
    shown: list[str] = []

    def succeeded() -> bool:
        status = get_json(api, CDI, ns, f"datavolumes/{name}").get("status") or {}
        if status.get("phase") == "Succeeded":
            return True
        progress = str(status.get("progress") or "")
        if progress and (not shown or shown[-1] != progress):
            shown.append(progress)
        return False

    wait(engine, succeeded, f"DataVolume {name} Succeeded")
    percents = [float(p.rstrip("%")) for p in shown if p.endswith("%")]
    return [p for p in percents if p < 100.0]


def assert_rises(percents: list[float]) -> None:
    assert len([p for p in percents if p > 0]) >= 2, percents
    assert all(a < b for a, b in itertools.pairwise(percents)), percents


def assert_flow(engine: RealEngine, ns: str, claim: str, populated: bool) -> None:
    pvc = get_json(engine.api(), "v1", ns, f"persistentvolumeclaims/{claim}")
    assert ("dataSourceRef" in pvc["spec"]) is populated, pvc["spec"]


def test_an_import_shows_its_copy_progress(
        engine: RealEngine, ns: str, flow: tuple[str, str, bool]) -> None:
    """cdi-controller scrapes the importer pod's metrics (the node side serves them at its
    podIP, reached from cdi-controller's network namespace) into the DataVolume's progress:
    labelled with the DataVolume's uid (legacy) or its claim's (the import populator, which
    shows it through the claim's progress annotation)."""
    old, _, populated = flow
    dv = import_dv("slow", old, "http://x.vmsr.invalid/slow")
    dv["metadata"]["annotations"] = {COPY_SECONDS: SLOW_COPY}
    _post(engine.api(), CDI, ns, "datavolumes", dv)

    assert_rises(progress_until_succeeded(engine, ns, "slow"))
    assert_flow(engine, ns, "slow", populated)


def test_a_host_assisted_clone_shows_its_copy_progress(
        engine: RealEngine, ns: str, flow: tuple[str, str, bool]) -> None:
    """The same for the clone source pod of a clone across provisioners (host-assisted)."""
    old, new, populated = flow
    api = engine.api()
    _post(api, CDI, ns, "datavolumes", import_dv("src", old, "http://x.vmsr.invalid/src"))
    wait(engine, lambda: dv_phase(api, ns, "src") == "Succeeded", "source DataVolume")
    clone = blank_dv("dst", new, "2Gi")
    clone["metadata"]["annotations"] = {COPY_SECONDS: SLOW_COPY}
    clone["spec"]["source"] = {"pvc": {"namespace": ns, "name": "src"}}
    _post(api, CDI, ns, "datavolumes", clone)

    assert_rises(progress_until_succeeded(engine, ns, "dst"))
    assert_flow(engine, ns, "dst", populated)
    assert content(api, ns, "dst") == content(api, ns, "src")


@pytest.fixture(scope="module")
def seeded(engine: RealEngine) -> RealEngine:
    """The seed's CSIDriver objects and classes (``local-hostpath``, ``ceph-rbd``)."""
    seed.seed_cluster(engine.api())
    return engine


def claim(api: pykube.HTTPClient, ns: str, name: str) -> dict[str, Any]:
    return get_json(api, "v1", ns, f"persistentvolumeclaims/{name}")


def cluster_get(api: pykube.HTTPClient, version: str, url: str) -> dict[str, Any]:
    """GET a cluster-scoped ``url`` (get_json's "" namespace is the kubeconfig's)."""
    response = api.get(version=version, url=url)
    api.raise_for_status(response)
    body: dict[str, Any] = response.json()
    return body


def volume_of(api: pykube.HTTPClient, pvc: dict[str, Any]) -> dict[str, Any]:
    return cluster_get(api, "v1", f"persistentvolumes/{pvc['spec']['volumeName']}")


def bound_claim(engine: RealEngine, ns: str, name: str) -> dict[str, Any]:
    """Claim ``name`` once it names its volume. A populated DataVolume can be Succeeded first:
    CDI rebinds the prime's PV to the claim (its ``claimRef``) and kube-controller-manager's
    PV controller sets the claim's ``spec.volumeName`` on its own time."""
    api = engine.api()
    found: dict[str, Any] = wait(
        engine, lambda: (c := claim(api, ns, name))["spec"].get("volumeName") and c,
        f"claim {name} bound to its volume")
    return found


def test_the_seed_registers_csi_drivers_for_its_classes_only(seeded: RealEngine) -> None:
    """A CSI driver's install registers its CSIDriver object; the seed's two classes are of
    CSI drivers, the test classes of unknown provisioners are not (CDI fills those the
    legacy way)."""
    drivers = {d["metadata"]["name"]: d["spec"] for d in cluster_get(
        seeded.api(), "storage.k8s.io/v1", "csidrivers")["items"]}
    assert drivers[seed.SOURCE_PROVISIONER]["attachRequired"] is False
    assert drivers[seed.TARGET_PROVISIONER]["attachRequired"] is True
    assert "old.csi.vmsr.invalid" not in drivers and "new.csi.vmsr.invalid" not in drivers
    classes = {c["metadata"]["name"]: c["provisioner"] for c in seed.storage_classes()}
    assert set(classes.values()) <= set(drivers)


def test_an_import_to_the_seeds_target_class_goes_through_cdis_import_populator(
        seeded: RealEngine, ns: str) -> None:
    """CDI's import populator fills a prime claim (``prime-<uid>``), its importer pod run on
    the prime's node once the prime is bound, then rebinds the prime's PV to the target
    claim and deletes the prime: the content written on the prime's volume is the target's."""
    api = seeded.api()
    url = "http://images.vmsr.invalid/populated.qcow2"
    _post(api, CDI, ns, "datavolumes", import_dv("root", seed.TARGET_CLASS, url))
    wait(seeded, lambda: dv_phase(api, ns, "root") == "Succeeded", "DataVolume Succeeded")

    pvc = bound_claim(seeded, ns, "root")
    assert pvc["spec"]["dataSourceRef"]["kind"] == "VolumeImportSource", pvc["spec"]
    prime = f"prime-{pvc['metadata']['uid']}"
    assert pvc["metadata"]["annotations"]["cdi.kubevirt.io/storage.populator.pvcPrime"] == prime
    pv = volume_of(api, pvc)
    assert pv["spec"]["claimRef"]["uid"] == pvc["metadata"]["uid"]
    expected = hashlib.sha256(url.encode()).hexdigest()
    assert (pv["metadata"].get("annotations") or {}).get(CONTENT_HASH_ANNOTATION) == expected
    assert content(api, ns, "root") == expected, "on the claim as soon as it is Succeeded"
    wait(seeded, lambda: not claim(api, ns, prime), f"{prime} deleted")


def test_a_data_volume_on_the_wait_for_first_consumer_class_waits_for_a_consumer(
        seeded: RealEngine, ns: str) -> None:
    """On ``local-hostpath`` (WaitForFirstConsumer, a CSI driver) CDI's populator waits for
    the scheduler to pick the claim's node: the DataVolume shows PendingPopulation (not the
    legacy WaitForFirstConsumer, which KubeVirt cannot migrate to); a pod using the claim is
    that consumer, and the import then runs on its node."""
    api = seeded.api()
    _post(api, CDI, ns, "datavolumes", blank_dv("disk", seed.SOURCE_CLASS))
    wait(seeded, lambda: dv_phase(api, ns, "disk") == "PendingPopulation", "PendingPopulation")
    assert claim(api, ns, "disk")["status"]["phase"] == "Pending"

    _post(api, "v1", ns, "pods", {
        "apiVersion": "v1", "kind": "Pod", "metadata": {"name": "consumer"},
        "spec": {"containers": [{"name": "c", "image": "vmsr.invalid/consumer"}],
                 "volumes": [{"name": "d", "persistentVolumeClaim": {"claimName": "disk"}}]}})

    wait(seeded, lambda: dv_phase(api, ns, "disk") == "Succeeded", "DataVolume Succeeded")
    pvc = bound_claim(seeded, ns, "disk")
    node = pvc["metadata"]["annotations"]["volume.kubernetes.io/selected-node"]
    # kube-scheduler binds the pod once its claim is bound (VolumeBinding's PreBind)
    wait(seeded, lambda: get_json(api, "v1", ns, "pods/consumer")["spec"].get("nodeName"),
         "the consumer scheduled")
    assert get_json(api, "v1", ns, "pods/consumer")["spec"]["nodeName"] == node
    assert content(api, ns, "disk") == ""  # a blank disk
    assert (volume_of(api, pvc)["metadata"].get("annotations") or {}).get(
        CONTENT_HASH_ANNOTATION) == ""


def test_a_clone_within_the_ceph_class_is_a_csi_clone_carrying_the_content(
        seeded: RealEngine, ns: str) -> None:
    """CDI advises csi-clone for ``rbd.csi.ceph.com`` (its StorageProfile's cloneStrategy):
    the clone populator's ``tmp-pvc-<uid>`` names the source claim as its data source and the
    CSI driver clones the volume, content included; the PV is then rebound to the target."""
    api = seeded.api()
    url = "http://images.vmsr.invalid/to-clone.qcow2"
    _post(api, CDI, ns, "datavolumes", import_dv("src", seed.TARGET_CLASS, url, "1Gi"))
    wait(seeded, lambda: dv_phase(api, ns, "src") == "Succeeded", "source DataVolume")
    clone = blank_dv("dst", seed.TARGET_CLASS, "1Gi")
    clone["spec"]["source"] = {"pvc": {"namespace": ns, "name": "src"}}
    _post(api, CDI, ns, "datavolumes", clone)

    dv = wait(seeded, lambda: (d := get_json(api, CDI, ns, "datavolumes/dst"))
              and (d.get("status") or {}).get("phase") == "Succeeded" and d, "clone Succeeded")
    assert dv["metadata"]["annotations"]["cdi.kubevirt.io/cloneType"] == "csi-clone"
    expected = hashlib.sha256(url.encode()).hexdigest()
    assert content(api, ns, "dst") == expected, "on the claim as soon as it is Succeeded"
    pv = volume_of(api, bound_claim(seeded, ns, "dst"))
    assert (pv["metadata"].get("annotations") or {}).get(CONTENT_HASH_ANNOTATION) == expected
