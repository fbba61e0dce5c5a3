"""The KubeVirt half of the simulator (virt-controller, virt-handler, workload updater,
migrations), driven only through the real kube-apiserver with plain pykube-ng calls.

The first tests check pure rules (no cluster); the rest create VMs, DataVolumes and PVCs
and watch what the simulated KubeVirt does with them. The shared KubeVirt CR is configured
per test by the `kubevirt` fixture and restored afterwards.
"""

from __future__ import annotations

import copy
import hashlib
import json
import time
from collections.abc import Callable, Iterator
from typing import Any

import pykube
import pytest

from testenv.node.runtime import Simulator
from testenv.simulator import kubevirt_rules as rules
from tests.support.kube import Eventually, annotation, condition, stays

HASH = "sim.vmstorage.dev/content-hash"
FAULT = "sim.vmstorage.dev/fault"
COPY_SECONDS = "sim.vmstorage.dev/copy-seconds"
IMAGE = "docker://quay.io/containerdisks/fedora:40"
IMAGE_HASH = hashlib.sha256(IMAGE.encode()).hexdigest()
MIGRATION_PHASES = ["Pending", "Scheduling", "Scheduled", "PreparingTarget", "TargetReady",
                    "Running", "Succeeded"]

KINDS: dict[str, tuple[str, str]] = {
    "VirtualMachine": ("kubevirt.io/v1", "virtualmachines"),
    "VirtualMachineInstance": ("kubevirt.io/v1", "virtualmachineinstances"),
    "VirtualMachineInstanceMigration": ("kubevirt.io/v1", "virtualmachineinstancemigrations"),
    "KubeVirt": ("kubevirt.io/v1", "kubevirts"),
    "DataVolume": ("cdi.kubevirt.io/v1beta1", "datavolumes"),
    "PersistentVolumeClaim": ("v1", "persistentvolumeclaims"),
    "StorageClass": ("storage.k8s.io/v1", "storageclasses"),
    "Namespace": ("v1", "namespaces"),
    "Event": ("v1", "events"),
    "ControllerRevision": ("apps/v1", "controllerrevisions"),
    "Pod": ("v1", "pods"),
    "CSIDriver": ("storage.k8s.io/v1", "csidrivers"),
}

# ============================================================================ pure rules


@pytest.mark.parametrize(
    ("version", "spec", "live_update", "admission"),
    [
        # v1.3/v1.4: LiveUpdate needs VMLiveUpdateFeatures, Migration needs both gates
        ("v1.4.2", {"rollout": "LiveUpdate"}, False, 2),
        ("v1.4.2", {"rollout": "LiveUpdate", "gates": ["VMLiveUpdateFeatures",
                                                      "VolumesUpdateStrategy",
                                                      "VolumeMigration"]}, True, 0),
        ("v1.3.0", {"rollout": "LiveUpdate", "gates": ["VMLiveUpdateFeatures",
                                                      "VolumesUpdateStrategy"]}, True, 1),
        # v1.5: gates are GA, but the default rollout is still Stage
        ("v1.5.0", {}, False, 0),
        ("v1.5.0", {"rollout": "LiveUpdate"}, True, 0),
        # v1.6+: LiveUpdate is the default
        ("v1.6.0", {}, True, 0),
        ("v1.9.0", {"rollout": "Stage"}, False, 0),
    ],
)
def test_kubevirt_config_follows_the_version_rules(
    version: str, spec: dict[str, Any], live_update: bool, admission: int
) -> None:
    cr = kubevirt_cr_body(version=version, rollout=spec.get("rollout"),
                          gates=spec.get("gates", ()), methods=("LiveMigrate",))
    config = rules.kubevirt_config(cr, "v1.9.0")
    assert config.live_update is live_update
    assert len(config.admission_errors({"updateVolumesStrategy": "Migration"})) == admission


def test_kubevirt_config_without_a_cr_is_undeployed_default() -> None:
    config = rules.kubevirt_config(None, "v1.9.0")
    assert (config.deployed, config.live_update, config.live_migrate) == (False, True, False)


def test_backoff_doubles_per_consecutive_failure_and_resets_after_success() -> None:
    def record(uid: str, order: int, phase: str, failed_at: float | None = None
               ) -> rules.MigrationRecord:
        return rules.MigrationRecord(uid, ("t", order, uid), phase, False, failed_at)

    first = [record("a", 1, "Failed", 100.0), record("b", 2, "Pending")]
    assert rules.backoff_deadline("b", first, 20.0) == 120.0
    twice = [*first[:1], record("b", 2, "Failed", 130.0), record("c", 3, "Pending")]
    assert rules.backoff_deadline("c", twice, 20.0) == 170.0
    after_success = [record("a", 1, "Failed", 1.0), record("b", 2, "Succeeded"),
                     record("c", 3, "Pending")]
    assert rules.backoff_deadline("c", after_success, 20.0) is None
    assert rules.backoff_deadline("a", twice, 20.0) is None  # only the newest waits


def test_invalid_volume_message_lists_each_kind_like_upstream() -> None:
    vmi = {"spec": {
        "domain": {"devices": {"disks": [{"name": "a", "shareable": True, "disk": {}},
                                         {"name": "b", "lun": {}},
                                         {"name": "c", "disk": {}}]}},
        "volumes": [pvc_volume("a", "a0"), pvc_volume("b", "b0"), pvc_volume("c", "c0")]}}
    vm = {"spec": {"template": {"spec": {
        "volumes": [pvc_volume("a", "a1"), pvc_volume("b", "b1"), pvc_volume("c", "c1")]}}}}
    error = rules.invalid_volumes_error(vmi, vm, dvs={}, pvcs={"c1": {}},
                                        config=rules.KubeVirtConfig("v1.9.0"))
    assert error == "invalid volumes to update with migration: shareable: [a] luns: [b]"
    # a missing destination stops ValidateVolumes at once, from v1.9 for a plain PVC
    missing = rules.validate_volumes(vmi, vm, dvs={}, pvcs={},
                                     config=rules.KubeVirtConfig("v1.9.0"))
    assert missing == rules.VolumeError("the pvc c1 doesn't exist", missing=True)
    assert rules.invalid_volumes_error(vmi, vm, dvs={}, pvcs={},
                                       config=rules.KubeVirtConfig("v1.8.0")) == error


@pytest.mark.parametrize(("version", "error"), [
    ("v1.4.0", "invalid volumes to update with migration: hotplugged: [hp]"),
    ("v1.5.0", None),
])
def test_hotplugged_volumes_are_refused_before_v1_5(version: str, error: str | None) -> None:
    hotplugged = {"name": "hp", "persistentVolumeClaim": {"claimName": "a",
                                                           "hotpluggable": True}}
    vmi = {"spec": {"domain": {"devices": {"disks": [{"name": "hp", "disk": {}}]}},
                    "volumes": [hotplugged]}}
    vm = {"spec": {"template": {"spec": {"volumes": [
        {"name": "hp", "persistentVolumeClaim": {"claimName": "b", "hotpluggable": True}}]}}}}
    assert rules.invalid_volumes_error(vmi, vm, dvs={}, pvcs={},
                                       config=rules.KubeVirtConfig(version)) == error


def test_run_strategy_refuses_running_and_run_strategy_together() -> None:
    with pytest.raises(rules.RunStrategyError, match="mutually exclusive"):
        rules.run_strategy({"running": True, "runStrategy": "Always"})
    assert rules.run_strategy({"running": False}) is rules.RunStrategy.HALTED
    assert rules.run_strategy({}) is rules.RunStrategy.HALTED


# ============================================================================ API helpers


def _kwargs(kind: str, namespace: str | None, name: str = "", sub: str = "") -> dict[str, Any]:
    version, plural = KINDS[kind]
    url = "/".join(p for p in (plural, name, sub) if p)
    return {"version": version, "namespace": namespace, "url": url}


def create(api: pykube.HTTPClient, kind: str, namespace: str | None,
           body: dict[str, Any]) -> dict[str, Any]:
    """POST an object and return what the server stored."""
    version = KINDS[kind][0]
    payload = {"apiVersion": version, "kind": kind, **body}
    if namespace:
        payload["metadata"] = {**payload.get("metadata", {}), "namespace": namespace}
    resp = api.post(data=json.dumps(payload), **_kwargs(kind, namespace))
    api.raise_for_status(resp)
    result: dict[str, Any] = resp.json()
    return result


def get(api: pykube.HTTPClient, kind: str, namespace: str | None,
        name: str) -> dict[str, Any] | None:
    """GET one object, None when it does not exist."""
    resp = api.get(**_kwargs(kind, namespace, name))
    if resp.status_code == 404:
        return None
    api.raise_for_status(resp)
    result: dict[str, Any] = resp.json()
    return result


def listing(api: pykube.HTTPClient, kind: str, namespace: str,
            labels: dict[str, str] | None = None) -> list[dict[str, Any]]:
    """LIST objects of a kind in a namespace (optionally by labels), oldest first."""
    params = {"labelSelector": ",".join(f"{k}={v}" for k, v in labels.items())} \
        if labels else {}
    resp = api.get(params=params, **_kwargs(kind, namespace))
    api.raise_for_status(resp)
    items: list[dict[str, Any]] = resp.json()["items"]
    return sorted(items, key=lambda o: (o["metadata"]["creationTimestamp"],
                                        o["metadata"]["name"]))


def patch(api: pykube.HTTPClient, kind: str, namespace: str | None, name: str,
          body: Any, *, sub: str = "", json_patch: bool = False) -> dict[str, Any]:
    """PATCH (merge patch, or JSON patch) the object or one of its subresources."""
    content = "application/json-patch+json" if json_patch else "application/merge-patch+json"
    resp = api.patch(data=json.dumps(body), headers={"Content-Type": content},
                     **_kwargs(kind, namespace, name, sub))
    api.raise_for_status(resp)
    result: dict[str, Any] = resp.json()
    return result


def delete(api: pykube.HTTPClient, kind: str, namespace: str | None, name: str) -> None:
    resp = api.delete(**_kwargs(kind, namespace, name))
    if resp.status_code != 404:
        api.raise_for_status(resp)


def status(obj: dict[str, Any] | None) -> dict[str, Any]:
    return dict((obj or {}).get("status") or {})


def events(api: pykube.HTTPClient, namespace: str, name: str) -> list[tuple[str, str, str]]:
    """(type, reason, message) of the Events about `name`."""
    resp = api.get(params={"fieldSelector": f"involvedObject.name={name}"},
                   **_kwargs("Event", namespace))
    api.raise_for_status(resp)
    return [(e.get("type", ""), e.get("reason", ""), e.get("message", ""))
            for e in resp.json()["items"]]


# ============================================================================ object builders


def kubevirt_cr_body(*, version: str | None = None, rollout: str | None = "LiveUpdate",
                     gates: tuple[str, ...] | list[str] = (),
                     methods: tuple[str, ...] = ("LiveMigrate",),
                     backoff: str | None = "0.3") -> dict[str, Any]:
    """A KubeVirt CR; `version`/`backoff` become the simulator annotations."""
    annotations = {}
    if version:
        annotations[rules.VERSION_ANNOTATION] = version
    if backoff:
        annotations[rules.BACKOFF_ANNOTATION] = backoff
    configuration: dict[str, Any] = {"developerConfiguration": {"featureGates": list(gates)}}
    if rollout:
        configuration["vmRolloutStrategy"] = rollout
    return {
        "apiVersion": "kubevirt.io/v1", "kind": "KubeVirt",
        "metadata": {"name": "kubevirt", "namespace": "kubevirt", "annotations": annotations},
        "spec": {"configuration": configuration,
                 "workloadUpdateStrategy": {"workloadUpdateMethods": list(methods)}},
    }


def pvc_volume(name: str, claim: str) -> dict[str, Any]:
    return {"name": name, "persistentVolumeClaim": {"claimName": claim}}


def dv_volume(name: str, dv: str) -> dict[str, Any]:
    return {"name": name, "dataVolume": {"name": dv}}


def vm_body(name: str, volumes: list[dict[str, Any]], *, run_strategy: str | None = "Always",
            running: bool | None = None, templates: list[dict[str, Any]] | None = None,
            disks: dict[str, dict[str, Any]] | None = None,
            template_annotations: dict[str, str] | None = None,
            annotations: dict[str, str] | None = None) -> dict[str, Any]:
    """A VM shaped like the seed's vm-fedora: the given disks plus a cloud-init disk."""
    disk_list = [{"name": v["name"], **(disks or {}).get(v["name"], {"disk": {"bus": "virtio"}})}
                 for v in volumes]
    cloud_init = {"name": "cloudinitdisk",
                  "cloudInitNoCloud": {"userData": "#cloud-config\npassword: fedora\n"}}
    spec: dict[str, Any] = {
        "template": {
            "metadata": {"labels": {"kubevirt.io/vm": name},
                         "annotations": template_annotations or {}},
            "spec": {
                "domain": {"devices": {"disks": [*disk_list, {"name": "cloudinitdisk",
                                                              "disk": {"bus": "virtio"}}]},
                           "resources": {"requests": {"memory": "1Gi"}}},
                "volumes": [*volumes, cloud_init],
            },
        },
    }
    if templates:
        spec["dataVolumeTemplates"] = templates
    if run_strategy is not None:
        spec["runStrategy"] = run_strategy
    if running is not None:
        spec["running"] = running
    return {"metadata": {"name": name, "annotations": annotations or {}}, "spec": spec}


def dv_template(name: str, storage_class: str, size: str = "2Gi", *,
                source: dict[str, Any] | None = None,
                annotations: dict[str, str] | None = None) -> dict[str, Any]:
    """A dataVolumeTemplates entry (a registry import by default)."""
    return {
        "metadata": {"name": name, "annotations": annotations or {}},
        "spec": {"source": source or {"registry": {"url": IMAGE}},
                 "storage": {"storageClassName": storage_class,
                             "resources": {"requests": {"storage": size}}}},
    }


def blank_dv(name: str, storage_class: str, size: str = "2Gi") -> dict[str, Any]:
    """A blank destination DataVolume, as a storage migration tool creates it."""
    return {"metadata": {"name": name,
                         "annotations": {rules.ALLOW_CLAIM_ADOPTION_ANNOTATION: "true"}},
            "spec": {"source": {"blank": {}},
                     "storage": {"storageClassName": storage_class,
                                 "resources": {"requests": {"storage": size}}}}}


def pvc_body(name: str, storage_class: str, size: str = "2Gi",
             modes: tuple[str, ...] = ("ReadWriteOnce",)) -> dict[str, Any]:
    return {"metadata": {"name": name},
            "spec": {"accessModes": list(modes), "volumeMode": "Filesystem",
                     "storageClassName": storage_class,
                     "resources": {"requests": {"storage": size}}}}


# ============================================================================ fixtures


@pytest.fixture(scope="session")
def classes(api: pykube.HTTPClient, sim: Simulator) -> Iterator[dict[str, str]]:
    """Two StorageClasses for this module: `fast` (Immediate) and `wffc`
    (WaitForFirstConsumer); deleted at the end of the session."""
    names = {"fast": "kvsim-fast", "wffc": "kvsim-wffc"}
    for role, name in names.items():
        body = {"metadata": {"name": name}, "provisioner": "kvsim.csi.example",
                "allowVolumeExpansion": True,
                "volumeBindingMode": "WaitForFirstConsumer" if role == "wffc" else "Immediate"}
        if get(api, "StorageClass", None, name) is None:
            create(api, "StorageClass", None, body)
    yield names
    for name in names.values():
        delete(api, "StorageClass", None, name)


@pytest.fixture
def kubevirt(api: pykube.HTTPClient, sim: Simulator,
             eventually: Eventually) -> Iterator[Callable[..., dict[str, Any]]]:
    """Configure the cluster's KubeVirt CR (default: LiveUpdate + LiveMigrate, the
    simulator's version, a 0.3 s migration back-off) and restore it after the test."""
    if get(api, "Namespace", None, "kubevirt") is None:
        create(api, "Namespace", None, {"metadata": {"name": "kubevirt"}})
    original = get(api, "KubeVirt", "kubevirt", "kubevirt")

    def configure(**kwargs: Any) -> dict[str, Any]:
        body = kubevirt_cr_body(**kwargs)
        current = get(api, "KubeVirt", "kubevirt", "kubevirt")
        if current is None:
            current = create(api, "KubeVirt", "kubevirt", body)
        else:
            current = patch(api, "KubeVirt", "kubevirt", "kubevirt", [
                {"op": "replace", "path": "/spec", "value": body["spec"]},
                {"op": "replace", "path": "/metadata/annotations",
                 "value": body["metadata"]["annotations"]},
            ], json_patch=True)
        version = kwargs.get("version") or sim.config.kubevirt_version
        generation = current["metadata"]["generation"]

        def deployed() -> dict[str, Any] | None:
            cr = get(api, "KubeVirt", "kubevirt", "kubevirt")
            st = status(cr)
            ok = (st.get("phase") == "Deployed" and st.get("observedKubeVirtVersion") == version
                  and st.get("observedGeneration") == generation)
            return cr if ok else None

        result: dict[str, Any] = eventually(deployed, what="KubeVirt CR deployed")
        return result

    configure()
    yield configure
    if original is None:
        delete(api, "KubeVirt", "kubevirt", "kubevirt")
    else:
        patch(api, "KubeVirt", "kubevirt", "kubevirt", [
            {"op": "replace", "path": "/spec", "value": original.get("spec") or {}},
            {"op": "replace", "path": "/metadata/annotations",
             "value": original["metadata"].get("annotations") or {}},
        ], json_patch=True)


class Cluster:
    """Test-side view of one namespace: create things and wait for the simulator."""

    def __init__(self, api: pykube.HTTPClient, namespace: str, classes: dict[str, str],
                 eventually: Eventually) -> None:
        self.api = api
        self.ns = namespace
        self.classes = classes
        self.eventually = eventually

    def get(self, kind: str, name: str) -> dict[str, Any] | None:
        return get(self.api, kind, self.ns, name)

    def create(self, kind: str, body: dict[str, Any]) -> dict[str, Any]:
        return create(self.api, kind, self.ns, body)

    def patch(self, kind: str, name: str, body: Any, **kwargs: Any) -> dict[str, Any]:
        return patch(self.api, kind, self.ns, name, body, **kwargs)

    def vm(self, name: str) -> dict[str, Any]:
        vm = self.get("VirtualMachine", name)
        assert vm is not None
        return vm

    def vmi(self, name: str) -> dict[str, Any] | None:
        return self.get("VirtualMachineInstance", name)

    def bound_pvc(self, name: str, size: str = "2Gi",
                  modes: tuple[str, ...] = ("ReadWriteOnce",)) -> dict[str, Any]:
        """A plain PVC on the Immediate class, once bound."""
        self.create("PersistentVolumeClaim", pvc_body(name, self.classes["fast"], size, modes))
        result: dict[str, Any] = self.wait(
            lambda: self._phase("PersistentVolumeClaim", name, "Bound"), f"PVC {name} bound")
        return result

    def imported_dv(self, name: str, size: str = "2Gi") -> dict[str, Any]:
        """A registry-import DataVolume (content hash = the image's), once Succeeded."""
        body = dv_template(name, self.classes["fast"], size)
        self.create("DataVolume", {"metadata": {"name": name}, "spec": body["spec"]})
        result: dict[str, Any] = self.wait(lambda: self._phase("DataVolume", name, "Succeeded"),
                                           f"DataVolume {name} Succeeded")
        return result

    def blank_dv(self, name: str, size: str = "2Gi") -> dict[str, Any]:
        self.create("DataVolume", blank_dv(name, self.classes["fast"], size))
        result: dict[str, Any] = self.wait(lambda: self._phase("DataVolume", name, "Succeeded"),
                                           f"DataVolume {name} Succeeded")
        return result

    def running_vm(self, body: dict[str, Any]) -> dict[str, Any]:
        """Create a VM and return its VMI once Running (and the VM says so)."""
        name = body["metadata"]["name"]
        self.create("VirtualMachine", body)
        self.wait(lambda: status(self.get("VirtualMachine", name)).get("printableStatus")
                  == "Running", f"VM {name} Running")
        vmi = self.vmi(name)
        assert vmi is not None
        return vmi

    def migrate(self, vm: str, volume: str, claim: str, *, data_volume: bool = False,
                template_rename: tuple[str, str] | None = None) -> None:
        """Point `volume` at `claim` with updateVolumesStrategy Migration, in one update
        (renaming the dataVolumeTemplate `old` -> `new` when asked)."""
        current = self.vm(vm)
        spec = copy.deepcopy(current["spec"])
        for vol in spec["template"]["spec"]["volumes"]:
            if vol["name"] == volume:
                vol.pop("persistentVolumeClaim", None)
                vol.pop("dataVolume", None)
                vol.update(dv_volume(volume, claim) if data_volume else pvc_volume(volume,
                                                                                     claim))
        body: dict[str, Any] = {"spec": {"updateVolumesStrategy": "Migration",
                                         "template": {"spec": {"volumes": spec["template"]
                                                               ["spec"]["volumes"]}}}}
        if template_rename is not None:
            old, new = template_rename
            templates = spec.get("dataVolumeTemplates") or []
            for template in templates:
                if template["metadata"]["name"] == old:
                    template["metadata"]["name"] = new
            body["spec"]["dataVolumeTemplates"] = templates
        self.patch("VirtualMachine", vm, body)

    def migrations(self, vmi: str) -> list[dict[str, Any]]:
        """The volume-update migrations of a VMI, oldest first."""
        return listing(self.api, "VirtualMachineInstanceMigration", self.ns,
                       {rules.VOLUME_UPDATE_MIGRATION_LABEL: vmi})

    def migration_in(self, vmi: str, *phases: str, exclude: tuple[str, ...] = ()
                     ) -> dict[str, Any]:
        """A volume-update migration of `vmi` (not named in `exclude`) once it is in one of
        `phases`. (Creation timestamps have one-second resolution, so "newest" cannot be
        told apart reliably; tests tell migrations apart by name.)"""
        def probe() -> dict[str, Any] | None:
            return next((m for m in self.migrations(vmi)
                         if status(m).get("phase") in phases
                         and m["metadata"]["name"] not in exclude), None)
        result: dict[str, Any] = self.wait(probe, f"migration of {vmi} in {phases}")
        return result

    def wait(self, probe: Callable[[], Any], what: str, timeout: float = 10.0) -> Any:
        return self.eventually(probe, timeout=timeout, what=what)

    def _phase(self, kind: str, name: str, wanted: str) -> dict[str, Any] | None:
        obj = self.get(kind, name)
        return obj if status(obj).get("phase") == wanted else None


@pytest.fixture
def cluster(api: pykube.HTTPClient, namespace: str, classes: dict[str, str],
            eventually: Eventually, kubevirt: Callable[..., dict[str, Any]]) -> Cluster:
    """The test's namespace, with the storage classes and a default KubeVirt CR."""
    return Cluster(api, namespace, classes, eventually)


def claims_of(vmi: dict[str, Any] | None) -> dict[str, str]:
    """Volume name -> claim of a VMI's spec."""
    return rules.claims_by_volume(rules.spec_volumes(vmi or {}))


def volume_status_claims(vmi: dict[str, Any] | None) -> dict[str, str]:
    return {v["name"]: v["persistentVolumeClaimInfo"]["claimName"]
            for v in status(vmi).get("volumeStatus") or [] if v.get("persistentVolumeClaimInfo")}


# ============================================================================ run strategies


@pytest.mark.cluster
def test_always_starts_a_vmi_and_halted_stops_it(cluster: Cluster, sim: Simulator) -> None:
    cluster.bound_pvc("root")
    vmi = cluster.running_vm(vm_body("vm1", [pvc_volume("rootdisk", "root")],
                                     template_annotations={"team": "a"}))
    assert status(vmi)["nodeName"] in sim.config.nodes
    assert vmi["metadata"]["labels"]["kubevirt.io/vm"] == "vm1"
    assert vmi["metadata"]["annotations"]["team"] == "a"
    owner = vmi["metadata"]["ownerReferences"][0]
    assert (owner["kind"], owner["name"], owner["controller"]) == ("VirtualMachine", "vm1", True)
    assert [h["phase"] for h in status(vmi)["phaseTransitionTimestamps"]] == [
        "Pending", "Scheduling", "Scheduled", "Running"]
    assert condition(vmi, "Ready")["status"] == "True"
    vm = cluster.vm("vm1")
    assert (status(vm)["ready"], status(vm)["created"], status(vm)["runStrategy"]) == (
        True, True, "Always")
    assert condition(vm, "Ready")["status"] == "True"
    assert volume_status_claims(vmi) == {"rootdisk": "root"}

    cluster.patch("VirtualMachine", "vm1", {"spec": {"runStrategy": "Halted"}})
    cluster.wait(lambda: cluster.vmi("vm1") is None, "VMI deleted")
    # (a final VMI that still exists already reads Stopped, with created: true)
    vm = cluster.wait(lambda: (v := cluster.vm("vm1")) and status(v).get("printableStatus")
                      == "Stopped" and not status(v)["created"] and v, "VM Stopped")
    assert status(vm)["ready"] is False
    assert condition(vm, "Ready")["reason"] == "VMINotExists"
    reasons = {e[1] for e in events(cluster.api, cluster.ns, "vm1")}
    assert {"SuccessfulCreate", "SuccessfulDelete"} <= reasons


@pytest.mark.cluster
def test_stopping_shows_while_the_guest_shuts_down(cluster: Cluster) -> None:
    cluster.bound_pvc("root")
    cluster.running_vm(vm_body("vm1", [pvc_volume("rootdisk", "root")]))
    seen: set[str] = set()
    cluster.patch("VirtualMachine", "vm1", {"spec": {"runStrategy": "Halted"}})

    def stopped() -> bool:
        seen.add(status(cluster.vm("vm1")).get("printableStatus", ""))
        return "Stopped" in seen
    cluster.wait(stopped, "VM Stopped")
    assert "Stopping" in seen


@pytest.mark.cluster
def test_deprecated_running_true_starts_the_vm(cluster: Cluster) -> None:
    cluster.bound_pvc("root")
    cluster.running_vm(vm_body("vm1", [pvc_volume("rootdisk", "root")], run_strategy=None,
                               running=True))
    assert status(cluster.vm("vm1"))["runStrategy"] == "Always"


@pytest.mark.cluster
def test_running_and_run_strategy_together_are_refused_by_the_api(cluster: Cluster) -> None:
    # The webhook's refusal is an API error (tests/env/test_admission.py has the message).
    cluster.bound_pvc("root")
    with pytest.raises(pykube.exceptions.HTTPError) as refused:
        cluster.create("VirtualMachine", vm_body("vm1", [pvc_volume("rootdisk", "root")],
                                                 running=True))
    assert refused.value.code == 422
    assert cluster.get("VirtualMachine", "vm1") is None
    assert cluster.vmi("vm1") is None


@pytest.mark.cluster
def test_manual_run_strategy_acts_on_state_change_requests(cluster: Cluster) -> None:
    cluster.bound_pvc("root")
    cluster.create("VirtualMachine", vm_body("vm1", [pvc_volume("rootdisk", "root")],
                                             run_strategy="Manual"))
    assert stays(lambda: cluster.vmi("vm1") is None)
    cluster.patch("VirtualMachine", "vm1", {"status": {"stateChangeRequests": [
        {"action": "Start"}]}}, sub="status")
    vmi = cluster.wait(lambda: (i := cluster.vmi("vm1")) and status(i).get("phase")
                       == "Running" and i, "VMI Running")
    cluster.wait(lambda: not status(cluster.vm("vm1")).get("stateChangeRequests"),
                 "Start request consumed")
    cluster.patch("VirtualMachine", "vm1", {"status": {"stateChangeRequests": [
        {"action": "Stop", "uid": vmi["metadata"]["uid"]}]}}, sub="status")
    cluster.wait(lambda: cluster.vmi("vm1") is None, "VMI stopped")


@pytest.mark.cluster
def test_deleting_the_vm_deletes_its_vmi_and_data_volumes(cluster: Cluster) -> None:
    seed_like_vm(cluster)
    delete(cluster.api, "VirtualMachine", cluster.ns, "vm-fedora")
    cluster.wait(lambda: cluster.vmi("vm-fedora") is None, "VMI gone")
    cluster.wait(lambda: cluster.get("DataVolume", "vm-fedora-dv") is None, "DataVolume gone")


# ============================================================================ volumes at start


@pytest.mark.cluster
def test_vmi_waits_for_its_data_volume_and_binds_it_on_its_node(cluster: Cluster) -> None:
    template = dv_template("root-dv", cluster.classes["wffc"],
                           annotations={COPY_SECONDS: "1.5"})
    cluster.create("VirtualMachine", vm_body("vm1", [dv_volume("rootdisk", "root-dv")],
                                             templates=[template]))
    seen: set[str] = set()

    def running() -> dict[str, Any] | None:
        vm = cluster.vm("vm1")
        seen.add(status(vm).get("printableStatus", ""))
        dv = cluster.get("DataVolume", "root-dv")
        vmi = cluster.vmi("vm1")
        if status(dv).get("phase") != "Succeeded":
            # the guest does not start before its disk is imported
            assert status(vmi).get("phase") in (None, "Pending", "Scheduling")
        return vmi if status(vmi).get("phase") == "Running" else None
    vmi = cluster.wait(running, "VMI Running after the import")
    assert "Provisioning" in seen
    dv = cluster.get("DataVolume", "root-dv")
    assert annotation(dv, rules.ALLOW_CLAIM_ADOPTION_ANNOTATION) == "true"
    assert dv is not None and dv["metadata"]["ownerReferences"][0]["name"] == "vm1"
    pvc = cluster.get("PersistentVolumeClaim", "root-dv")
    assert annotation(pvc, rules.SELECTED_NODE_ANNOTATION) == status(vmi)["nodeName"]
    assert annotation(pvc, HASH) == IMAGE_HASH


@pytest.mark.cluster
def test_missing_pvc_shows_error_pvc_not_found_until_it_exists(cluster: Cluster) -> None:
    cluster.create("VirtualMachine", vm_body("vm1", [pvc_volume("rootdisk", "later")]))
    vm = cluster.wait(lambda: (v := cluster.vm("vm1")) and status(v).get("printableStatus")
                      == "ErrorPvcNotFound" and v, "ErrorPvcNotFound")
    assert condition(vm, "Synchronized")["reason"] == "FailedPvcNotFound"
    assert status(cluster.vmi("vm1"))["phase"] == "Pending"
    cluster.bound_pvc("later")
    cluster.wait(lambda: status(cluster.vm("vm1")).get("printableStatus") == "Running",
                 "VM Running once the PVC exists")


@pytest.mark.cluster
def test_failed_data_volume_shows_data_volume_error(cluster: Cluster) -> None:
    template = dv_template("root-dv", cluster.classes["fast"], source={"upload": {}})
    cluster.create("VirtualMachine", vm_body("vm1", [dv_volume("rootdisk", "root-dv")],
                                             templates=[template]))
    cluster.wait(lambda: status(cluster.vm("vm1")).get("printableStatus") == "DataVolumeError",
                 "DataVolumeError")
    assert cluster.vmi("vm1") is None


# ============================================================================ live migration


def seed_like_vm(cluster: Cluster, name: str = "vm-fedora", *,
                 annotations: dict[str, str] | None = None) -> dict[str, Any]:
    """The seed's VM (registry-import dataVolumeTemplate + cloud-init), running."""
    template = dv_template(f"{name}-dv", cluster.classes["fast"])
    return cluster.running_vm(vm_body(name, [dv_volume("datavolumedisk1", f"{name}-dv")],
                                      templates=[template], annotations=annotations))


@pytest.mark.cluster
def test_live_migration_moves_the_disk_with_its_content(cluster: Cluster) -> None:
    vmi = seed_like_vm(cluster)
    source_node = status(vmi)["nodeName"]
    cluster.blank_dv("vm-fedora-dv-mig")
    cluster.migrate("vm-fedora", "datavolumedisk1", "vm-fedora-dv-mig", data_volume=True,
                    template_rename=("vm-fedora-dv", "vm-fedora-dv-mig"))

    migration = cluster.migration_in("vm-fedora", "Succeeded")
    meta = migration["metadata"]
    assert meta["name"].startswith("kubevirt-workload-update-")
    assert rules.WORKLOAD_UPDATE_ANNOTATION in meta["annotations"]
    assert meta["labels"] == {rules.VOLUME_UPDATE_MIGRATION_LABEL: "vm-fedora",
                              rules.VMI_NAME_LABEL: "vm-fedora"}
    assert migration["spec"] == {"vmiName": "vm-fedora", "priority": "user-triggered"}
    assert [h["phase"] for h in status(migration)["phaseTransitionTimestamps"]] == \
        MIGRATION_PHASES
    state = status(migration)["migrationState"]
    assert state["sourceNode"] == source_node != state["targetNode"]
    assert state["completed"] is True
    for stamp in ("startTimestamp", "endTimestamp", "targetNodeDomainReadyTimestamp"):
        assert state[stamp]

    vmi_after = cluster.wait(lambda: (i := cluster.vmi("vm-fedora"))
                             and not status(i).get("migratedVolumes") and i, "VMI settled")
    assert status(vmi_after)["nodeName"] == state["targetNode"]
    assert vmi_after["metadata"]["uid"] == vmi["metadata"]["uid"]  # the same guest, moved
    assert claims_of(vmi_after) == {"datavolumedisk1": "vm-fedora-dv-mig"}
    assert volume_status_claims(vmi_after) == {"datavolumedisk1": "vm-fedora-dv-mig"}
    assert not condition(vmi_after, "VolumesChange")
    destination = cluster.get("PersistentVolumeClaim", "vm-fedora-dv-mig")
    assert annotation(destination, HASH) == IMAGE_HASH
    # The VM controller mirrors the VMI asynchronously (as upstream): wait until it has.
    vm = cluster.wait(lambda: (v := cluster.vm("vm-fedora"))
                      and status(v).get("printableStatus") == "Running" and v,
                      "VM printableStatus back to Running")
    migrated = status(vm)["volumeUpdateState"]["volumeMigrationState"]["migratedVolumes"]
    assert migrated == [{"volumeName": "datavolumedisk1",
                         "sourcePVCInfo": {"claimName": "vm-fedora-dv",
                                           "volumeMode": "Filesystem"},
                         "destinationPVCInfo": {"claimName": "vm-fedora-dv-mig",
                                                "volumeMode": "Filesystem"}}]
    assert status(vm)["printableStatus"] == "Running"
    assert not condition(vm, "RestartRequired")


@pytest.mark.cluster
def test_migrating_shows_on_the_vm_while_the_copy_runs(cluster: Cluster) -> None:
    seed_like_vm(cluster, annotations={FAULT: "stall"})
    cluster.blank_dv("vm-fedora-dv-mig")
    # Volume and template renamed in one update: the VM webhook refuses an unreferenced
    # dataVolumeTemplate (testenv.admission).
    cluster.migrate("vm-fedora", "datavolumedisk1", "vm-fedora-dv-mig", data_volume=True,
                    template_rename=("vm-fedora-dv", "vm-fedora-dv-mig"))
    cluster.migration_in("vm-fedora", "Running")
    vm = cluster.wait(lambda: (v := cluster.vm("vm-fedora")) and status(v).get(
        "printableStatus") == "Migrating" and v, "VM Migrating")
    assert condition(vm, "VolumesChange") == {**condition(vm, "VolumesChange"),
                                              "status": "True", "message": "migrate volumes"}
    cluster.patch("VirtualMachine", "vm-fedora", {"metadata": {"annotations": {FAULT: None}}})
    cluster.migration_in("vm-fedora", "Succeeded")


@pytest.mark.cluster
def test_rwo_volume_left_out_of_the_update_is_refused(cluster: Cluster) -> None:
    cluster.bound_pvc("root")
    cluster.bound_pvc("data")
    cluster.bound_pvc("root-new")
    cluster.running_vm(vm_body("vm1", [pvc_volume("rootdisk", "root"),
                                       pvc_volume("datadisk", "data")]))
    cluster.migrate("vm1", "rootdisk", "root-new")
    vm = cluster.wait(lambda: (v := cluster.vm("vm1")) and condition(v, "RestartRequired")
                      and v, "RestartRequired")
    assert condition(vm, "RestartRequired")["message"] == (
        "cannot migrate the VM. The volume datadisk is RWO and not included in the "
        "migration volumes")
    assert claims_of(cluster.vmi("vm1")) == {"rootdisk": "root", "datadisk": "data"}
    assert cluster.migrations("vm1") == []


@pytest.mark.cluster
@pytest.mark.parametrize(("disk", "kind"), [
    ({"disk": {"bus": "virtio"}, "shareable": True}, "shareable"),
    ({"lun": {"bus": "scsi"}}, "luns"),
])
def test_shareable_and_lun_disks_are_refused(cluster: Cluster, disk: dict[str, Any],
                                             kind: str) -> None:
    cluster.bound_pvc("data", modes=("ReadWriteMany",))
    cluster.bound_pvc("data-new", modes=("ReadWriteMany",))
    cluster.running_vm(vm_body("vm1", [pvc_volume("datadisk", "data")],
                               disks={"datadisk": disk}))
    cluster.migrate("vm1", "datadisk", "data-new")
    vm = cluster.wait(lambda: (v := cluster.vm("vm1")) and condition(v, "RestartRequired")
                      and v, "RestartRequired")
    assert condition(vm, "RestartRequired")["message"] == (
        f"invalid volumes to update with migration: {kind}: [datadisk]")
    assert cluster.migrations("vm1") == []


@pytest.mark.cluster
def test_unpopulated_destination_data_volume_is_refused_from_v1_5(cluster: Cluster) -> None:
    cluster.bound_pvc("root")
    cluster.running_vm(vm_body("vm1", [pvc_volume("rootdisk", "root")]))
    # a WaitForFirstConsumer DV without populators: not Succeeded, PVC has no dataSourceRef
    cluster.create("DataVolume", blank_dv("root-new", cluster.classes["wffc"], "3Gi"))
    cluster.wait(lambda: status(cluster.get("DataVolume", "root-new")).get("phase")
                 == "WaitForFirstConsumer", "destination waits for its consumer")
    cluster.migrate("vm1", "rootdisk", "root-new", data_volume=True)
    vm = cluster.wait(lambda: (v := cluster.vm("vm1")) and condition(v, "RestartRequired")
                      and v, "RestartRequired")
    assert condition(vm, "RestartRequired")["message"] == (
        "invalid volumes to update with migration: DV storage class isn't a CSI or not "
        "using volume populators: [rootdisk]")
    assert cluster.migrations("vm1") == []


@pytest.mark.cluster
def test_missing_destination_holds_the_migration_until_it_exists(cluster: Cluster) -> None:
    cluster.bound_pvc("root")
    cluster.running_vm(vm_body("vm1", [pvc_volume("rootdisk", "root")]))
    cluster.migrate("vm1", "rootdisk", "root-new")
    vmi = cluster.wait(lambda: (i := cluster.vmi("vm1")) and condition(i, "VolumesChange")
                       and i, "VolumesChange")
    change = condition(vmi, "VolumesChange")
    assert change["status"] == "False"
    assert "One of the destination volumes doesn't exist" in change["message"]
    assert stays(lambda: cluster.migrations("vm1") == [])
    cluster.bound_pvc("root-new")
    cluster.migration_in("vm1", "Succeeded")
    cluster.wait(lambda: claims_of(cluster.vmi("vm1")) == {"rootdisk": "root-new"},
                 "VMI on the new claim")


@pytest.mark.cluster
def test_smaller_destination_fails_the_migration(
        cluster: Cluster, kubevirt: Callable[..., dict[str, Any]]) -> None:
    kubevirt(backoff="60")  # keep the retry waiting, so the VMI shows the failed attempt
    cluster.bound_pvc("root", size="2Gi")
    cluster.bound_pvc("root-small", size="1Gi")
    cluster.running_vm(vm_body("vm1", [pvc_volume("rootdisk", "root")]))
    cluster.migrate("vm1", "rootdisk", "root-small")
    failed = cluster.migration_in("vm1", "Failed")
    state = status(failed)["migrationState"]
    assert state["failed"] is True
    assert state["failureReason"].startswith(
        "Volume migration cannot be performed because the destination volume is smaller "
        "than the source volume")
    vmi = cluster.wait(lambda: (i := cluster.vmi("vm1")) and status(i).get(
        "migrationState", {}).get("failed") and i, "failure on the VMI")
    assert status(vmi)["migrationState"]["failureReason"] == state["failureReason"]
    assert condition(vmi, "VolumesChange")["status"] == "True"  # KubeVirt keeps retrying
    retry = cluster.migration_in("vm1", "Pending", exclude=(failed["metadata"]["name"],))
    assert stays(lambda: status(cluster.get("VirtualMachineInstanceMigration", retry[
        "metadata"]["name"])).get("phase") == "Pending")  # backing off


@pytest.mark.cluster
def test_failed_migration_is_retried_by_a_new_one_after_backoff(
        cluster: Cluster, kubevirt: Callable[..., dict[str, Any]]) -> None:
    kubevirt(backoff="1.0")
    cluster.bound_pvc("root")
    cluster.bound_pvc("root-new")
    cluster.running_vm(vm_body("vm1", [pvc_volume("rootdisk", "root")],
                               annotations={FAULT: "fail-times:1"}))
    cluster.migrate("vm1", "rootdisk", "root-new")
    first = cluster.migration_in("vm1", "Failed")
    failed_at = time.monotonic()
    assert status(first)["migrationState"]["failureReason"].startswith("Live migration failed")
    first_name = first["metadata"]["name"]
    second = cluster.migration_in("vm1", *MIGRATION_PHASES, exclude=(first_name,))
    second_name = second["metadata"]["name"]
    cluster.wait(lambda: status(cluster.get("VirtualMachineInstanceMigration", second_name))
                 .get("phase") not in (None, "Pending"), "second migration leaves Pending")
    assert time.monotonic() - failed_at >= 0.8  # it waited out the 1 s back-off
    cluster.migration_in("vm1", "Succeeded")
    assert len(cluster.migrations("vm1")) == 2
    assert ("Warning", "MigrationBackoff", f"backoff migrating vmi {cluster.ns}/vm1") in \
        events(cluster.api, cluster.ns, "vm1")  # on the VMI (and the VM: same name)


@pytest.mark.cluster
def test_deleting_the_migration_is_not_a_cancellation(cluster: Cluster) -> None:
    cluster.bound_pvc("root")
    cluster.bound_pvc("root-new")
    cluster.running_vm(vm_body("vm1", [pvc_volume("rootdisk", "root")],
                               annotations={FAULT: "stall"}))
    cluster.migrate("vm1", "rootdisk", "root-new")
    first = cluster.migration_in("vm1", "Running")
    delete(cluster.api, "VirtualMachineInstanceMigration", cluster.ns, first["metadata"]["name"])
    second = cluster.wait(lambda: [m for m in cluster.migrations("vm1")
                                   if m["metadata"]["name"] != first["metadata"]["name"]],
                          "a new migration")[0]
    assert second["metadata"]["uid"] != first["metadata"]["uid"]
    assert condition(cluster.vmi("vm1"), "VolumesChange")["status"] == "True"


@pytest.mark.cluster
def test_user_migration_moves_a_shared_disk_vm_and_refuses_an_rwo_one(cluster: Cluster) -> None:
    cluster.bound_pvc("shared", modes=("ReadWriteMany",))
    cluster.bound_pvc("local")
    before = cluster.running_vm(vm_body("rwx", [pvc_volume("rootdisk", "shared")]))
    cluster.running_vm(vm_body("rwo", [pvc_volume("rootdisk", "local")]))
    for vmi in ("rwx", "rwo"):
        cluster.create("VirtualMachineInstanceMigration",
                       {"metadata": {"name": f"move-{vmi}"}, "spec": {"vmiName": vmi}})

    def final(name: str) -> dict[str, Any] | None:
        found = cluster.get("VirtualMachineInstanceMigration", name)
        return found if status(found).get("phase") in ("Succeeded", "Failed") else None
    moved = cluster.wait(lambda: final("move-rwx"), "move-rwx done")
    assert status(moved)["phase"] == "Succeeded"
    assert moved["metadata"]["labels"] == {rules.VMI_NAME_LABEL: "rwx"}  # the mutator's label
    after = cluster.wait(lambda: (i := cluster.vmi("rwx")) and status(i).get("nodeName")
                         != status(before)["nodeName"] and i, "VMI on another node")
    assert status(after)["migrationMethod"] == "LiveMigration"
    refused = cluster.wait(lambda: final("move-rwo"), "move-rwo done")
    assert status(refused)["phase"] == "Failed"
    assert status(refused)["migrationState"]["failureReason"] == (
        "Cannot migrate VMI, Reason: DisksNotLiveMigratable, Message: cannot migrate VMI: "
        "PVC local is not shared, live migration requires that all PVCs must be shared "
        "(using ReadWriteMany access mode)")


# ============================================================================ cancel and recovery


@pytest.mark.cluster
def test_reverting_the_volumes_cancels_the_migration(cluster: Cluster) -> None:
    vmi = seed_like_vm(cluster, annotations={FAULT: "stall"})
    cluster.blank_dv("vm-fedora-dv-mig")
    cluster.migrate("vm-fedora", "datavolumedisk1", "vm-fedora-dv-mig", data_volume=True,
                    template_rename=("vm-fedora-dv", "vm-fedora-dv-mig"))
    cluster.migration_in("vm-fedora", "Running")
    cluster.wait(lambda: status(cluster.vm("vm-fedora")).get("volumeUpdateState"),
                 "volumeMigrationState")

    cluster.migrate("vm-fedora", "datavolumedisk1", "vm-fedora-dv", data_volume=True,
                    template_rename=("vm-fedora-dv-mig", "vm-fedora-dv"))
    vmi = cluster.wait(lambda: (i := cluster.vmi("vm-fedora")) and condition(
        i, "VolumesChange").get("status") == "False" and i, "VolumesChange False")
    assert condition(vmi, "VolumesChange")["reason"] == "VolumesChangeCancellation"
    assert claims_of(vmi) == {"datavolumedisk1": "vm-fedora-dv"}
    assert not status(vmi).get("migratedVolumes")
    cluster.wait(lambda: cluster.migrations("vm-fedora") == [], "migration aborted and gone")
    cluster.wait(lambda: not status(cluster.vm("vm-fedora")).get("volumeUpdateState", {})
                 .get("volumeMigrationState"), "volumeMigrationState cleared")
    assert status(cluster.vmi("vm-fedora"))["migrationState"]["abortStatus"] == "Succeeded"
    assert annotation(cluster.get("PersistentVolumeClaim", "vm-fedora-dv-mig"), HASH) == ""


@pytest.mark.cluster
def test_other_volume_change_during_migration_is_rejected(cluster: Cluster) -> None:
    cluster.bound_pvc("root")
    cluster.bound_pvc("root-new")
    cluster.bound_pvc("root-other")
    cluster.running_vm(vm_body("vm1", [pvc_volume("rootdisk", "root")],
                               annotations={FAULT: "stall"}))
    cluster.migrate("vm1", "rootdisk", "root-new")
    cluster.migration_in("vm1", "Running")
    cluster.migrate("vm1", "rootdisk", "root-other")
    vm = cluster.wait(lambda: (v := cluster.vm("vm1")) and condition(v, "Failure") and v,
                      "Failure condition")
    assert condition(vm, "Failure")["reason"] == "VolumesUpdateError"
    assert condition(vm, "Failure")["message"].endswith(
        "The volume can only be reverted to the previous version during the update")
    assert claims_of(cluster.vmi("vm1")) == {"rootdisk": "root-new"}


@pytest.mark.cluster
def test_stopping_mid_migration_requires_manual_recovery(cluster: Cluster) -> None:
    cluster.bound_pvc("root")
    cluster.bound_pvc("root-new")
    cluster.running_vm(vm_body("vm1", [pvc_volume("rootdisk", "root")],
                               annotations={FAULT: "stall"}))
    cluster.migrate("vm1", "rootdisk", "root-new")
    running = cluster.migration_in("vm1", "Running")
    cluster.patch("VirtualMachine", "vm1", {"spec": {"runStrategy": "Halted"}})
    vm = cluster.wait(lambda: (v := cluster.vm("vm1")) and condition(
        v, "ManualRecoveryRequired") and v, "ManualRecoveryRequired")
    assert condition(vm, "ManualRecoveryRequired") == {
        **condition(vm, "ManualRecoveryRequired"), "status": "True",
        "reason": "VMI was removed or was final during the volume migration"}
    cluster.wait(lambda: cluster.vmi("vm1") is None, "VMI gone")
    failed = cluster.get("VirtualMachineInstanceMigration", running["metadata"]["name"])
    assert status(failed)["phase"] == "Failed"

    cluster.patch("VirtualMachine", "vm1", {"spec": {"runStrategy": "Always"}})
    assert stays(lambda: cluster.vmi("vm1") is None)  # refused while recovery is required

    cluster.patch("VirtualMachine", "vm1", {"spec": {"template": {"spec": {"volumes": [
        pvc_volume("rootdisk", "root"),
        {"name": "cloudinitdisk",
         "cloudInitNoCloud": {"userData": "#cloud-config\npassword: fedora\n"}}]}}}})
    cluster.wait(lambda: status(cluster.vm("vm1")).get("printableStatus") == "Running",
                 "VM starts after the revert")
    vm = cluster.vm("vm1")
    assert not condition(vm, "ManualRecoveryRequired")
    assert claims_of(cluster.vmi("vm1")) == {"rootdisk": "root"}


@pytest.mark.cluster
def test_volume_change_of_a_stopped_vm_copies_nothing(cluster: Cluster) -> None:
    template = dv_template("root-dv", cluster.classes["fast"])
    cluster.create("VirtualMachine", vm_body("vm1", [dv_volume("rootdisk", "root-dv")],
                                             templates=[template], run_strategy="Halted"))
    cluster.wait(lambda: annotation(cluster.get("PersistentVolumeClaim", "root-dv"), HASH)
                 == IMAGE_HASH, "source imported")
    cluster.blank_dv("root-new")
    cluster.migrate("vm1", "rootdisk", "root-new", data_volume=True,
                    template_rename=("root-dv", "root-new"))
    cluster.patch("VirtualMachine", "vm1", {"spec": {"runStrategy": "Always"}})
    vmi = cluster.wait(lambda: (i := cluster.vmi("vm1")) and status(i).get("phase")
                       == "Running" and i, "VMI Running")
    assert claims_of(vmi) == {"rootdisk": "root-new"}
    assert cluster.migrations("vm1") == []
    assert annotation(cluster.get("PersistentVolumeClaim", "root-new"), HASH) == ""


# ============================================================================ cluster configuration


@pytest.mark.cluster
def test_v1_4_without_feature_gates_refuses_the_strategy(
        cluster: Cluster, kubevirt: Callable[..., dict[str, Any]]) -> None:
    kubevirt(version="v1.4.0", gates=("VMLiveUpdateFeatures",))
    cluster.bound_pvc("root")
    cluster.bound_pvc("root-new")
    cluster.running_vm(vm_body("vm1", [pvc_volume("rootdisk", "root")]))
    cluster.migrate("vm1", "rootdisk", "root-new")
    vm = cluster.wait(lambda: (v := cluster.vm("vm1")) and condition(v, "Failure") and v,
                      "admission failure")
    message = condition(vm, "Failure")["message"]
    assert "VolumesUpdateStrategy feature gate is not enabled in kubevirt-config" in message
    assert "VolumeMigration feature gate is not enabled in kubevirt-config" in message
    assert stays(lambda: cluster.migrations("vm1") == [])
    assert claims_of(cluster.vmi("vm1")) == {"rootdisk": "root"}


@pytest.mark.cluster
def test_v1_4_with_feature_gates_migrates(
        cluster: Cluster, kubevirt: Callable[..., dict[str, Any]]) -> None:
    kubevirt(version="v1.4.0", gates=("VMLiveUpdateFeatures", "VolumesUpdateStrategy",
                                      "VolumeMigration"))
    cluster.bound_pvc("root")
    cluster.bound_pvc("root-new")
    cluster.running_vm(vm_body("vm1", [pvc_volume("rootdisk", "root")]))
    cluster.migrate("vm1", "rootdisk", "root-new")
    cluster.migration_in("vm1", "Succeeded")


@pytest.mark.cluster
def test_v1_3_has_no_volume_update_state(
        cluster: Cluster, kubevirt: Callable[..., dict[str, Any]]) -> None:
    kubevirt(version="v1.3.1", gates=("VMLiveUpdateFeatures", "VolumesUpdateStrategy",
                                      "VolumeMigration"))
    cluster.bound_pvc("root")
    cluster.bound_pvc("root-new")
    cluster.running_vm(vm_body("vm1", [pvc_volume("rootdisk", "root")]))
    cluster.migrate("vm1", "rootdisk", "root-new")
    cluster.migration_in("vm1", "Succeeded")
    assert "volumeUpdateState" not in status(cluster.vm("vm1"))


@pytest.mark.cluster
def test_without_live_update_only_a_restart_is_required(
        cluster: Cluster, kubevirt: Callable[..., dict[str, Any]]) -> None:
    kubevirt(rollout="Stage")
    cluster.bound_pvc("root")
    cluster.bound_pvc("root-new")
    cluster.running_vm(vm_body("vm1", [pvc_volume("rootdisk", "root")]))
    cluster.migrate("vm1", "rootdisk", "root-new")
    vm = cluster.wait(lambda: (v := cluster.vm("vm1")) and condition(v, "RestartRequired")
                      and v, "RestartRequired")
    assert condition(vm, "RestartRequired")["message"] == (
        "a non-live-updatable field was changed in the template spec")
    assert stays(lambda: cluster.migrations("vm1") == [])
    vmi = cluster.vmi("vm1")
    assert claims_of(vmi) == {"rootdisk": "root"}
    assert not status(vmi).get("migratedVolumes")


@pytest.mark.cluster
def test_without_live_migrate_method_no_migration_is_created(
        cluster: Cluster, kubevirt: Callable[..., dict[str, Any]]) -> None:
    kubevirt(methods=())
    cluster.bound_pvc("root")
    cluster.bound_pvc("root-new")
    cluster.running_vm(vm_body("vm1", [pvc_volume("rootdisk", "root")]))
    cluster.migrate("vm1", "rootdisk", "root-new")
    cluster.wait(lambda: condition(cluster.vmi("vm1"), "VolumesChange").get("status") == "True",
                 "VolumesChange True")
    assert stays(lambda: cluster.migrations("vm1") == [])


@pytest.mark.cluster
def test_persistent_reservation_is_not_storage_live_migratable(cluster: Cluster) -> None:
    cluster.bound_pvc("root")
    cluster.bound_pvc("shared", modes=("ReadWriteMany",))
    cluster.bound_pvc("root-new")
    vmi = cluster.running_vm(vm_body(
        "vm1", [pvc_volume("rootdisk", "root"), pvc_volume("pr", "shared")],
        disks={"pr": {"lun": {"bus": "scsi", "reservation": True}}}))
    storage = condition(vmi, "StorageLiveMigratable")
    assert (storage["status"], storage["reason"], storage["message"]) == (
        "False", "NotMigratable",
        "PersistentReservationNotLiveMigratable: VMI uses SCSI persistent reservation")
    live = condition(vmi, "LiveMigratable")
    assert (live["status"], live["reason"]) == ("False", "PersistentReservationNotLiveMigratable")
    cluster.migrate("vm1", "rootdisk", "root-new")
    vm = cluster.wait(lambda: (v := cluster.vm("vm1")) and condition(v, "RestartRequired")
                      and v, "RestartRequired")
    assert condition(vm, "RestartRequired")["message"] == (
        "cannot migrate the volumes as the VMI isn't migratable: "
        "PersistentReservationNotLiveMigratable: VMI uses SCSI persistent reservation")


@pytest.mark.cluster
def test_not_live_migratable_annotation_on_the_template(cluster: Cluster) -> None:
    cluster.bound_pvc("root", modes=("ReadWriteMany",))
    vmi = cluster.running_vm(vm_body(
        "vm1", [pvc_volume("rootdisk", "root")],
        template_annotations={rules.NOT_LIVE_MIGRATABLE_ANNOTATION:
                              "HostDeviceNotLiveMigratable: VMI uses a PCI host devices"}))
    assert condition(vmi, "StorageLiveMigratable")["message"] == (
        "HostDeviceNotLiveMigratable: VMI uses a PCI host devices")
    assert condition(vmi, "LiveMigratable")["reason"] == "HostDeviceNotLiveMigratable"
    vm = cluster.wait(lambda: (v := cluster.vm("vm1")) and condition(
        v, "StorageLiveMigratable") and v, "conditions mirrored on the VM")
    assert condition(vm, "StorageLiveMigratable")["status"] == "False"


@pytest.mark.cluster
def test_rwo_vm_is_not_live_migratable_but_storage_migratable(cluster: Cluster) -> None:
    cluster.bound_pvc("root")
    vmi = cluster.running_vm(vm_body("vm1", [pvc_volume("rootdisk", "root")]))
    live = condition(vmi, "LiveMigratable")
    assert (live["status"], live["reason"]) == ("False", "DisksNotLiveMigratable")
    assert live["message"] == (
        "cannot migrate VMI: PVC root is not shared, live migration requires that all PVCs "
        "must be shared (using ReadWriteMany access mode)")
    assert condition(vmi, "StorageLiveMigratable")["status"] == "True"
