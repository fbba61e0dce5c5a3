"""The storage half of the simulator (CSI provisioner, StorageProfiles, CDI DataVolumes),
driven only through the real kube-apiserver with plain pykube-ng calls."""

from __future__ import annotations

import hashlib
import json
import math
import statistics
import time
from collections.abc import Callable, Iterator
from typing import Any, TypeVar

import pykube
import pytest

from reconciler.model.quantity import parse_quantity
from testenv.node.runtime import GI, Fault, FaultAction, Simulator
from testenv.simulator.storage import (
    CloneChoice,
    choose_clone,
    copy_duration,
    detect_clone_size,
    format_progress,
    provisioned_capacity,
    required_space,
)
from tests.support.kube import Eventually, annotation, condition, stays

F = TypeVar("F", bound=Callable[..., Any])


def cluster_test(test: F) -> F:
    """Mark a test as needing the control plane, with the session simulator running."""
    marked: F = pytest.mark.cluster(pytest.mark.usefixtures("sim")(test))
    return marked


CDI = "cdi.kubevirt.io/v1beta1"
HASH = "sim.vmstorage.dev/content-hash"
FAULT = "sim.vmstorage.dev/fault"
COPY_SECONDS = "sim.vmstorage.dev/copy-seconds"
URL = "https://images.example/fedora-42.qcow2"
MiB = 2**20

# ---------------------------------------------------------------------------- helpers

MakeClass = Callable[..., str]
@pytest.fixture
def make_class(api: pykube.HTTPClient, namespace: str) -> Iterator[MakeClass]:
    """Create StorageClasses named after the test's namespace; deleted after the test
    (StorageClasses are cluster-scoped, so a default class must not outlive its test)."""
    created: list[Any] = []

    def make(suffix: str, provisioner: str = "sim.csi.one", *, wffc: bool = False,
             annotations: dict[str, str] | None = None, **extra: Any) -> str:
        name = f"{namespace}-{suffix}"
        body = {"apiVersion": "storage.k8s.io/v1", "kind": "StorageClass",
                "metadata": {"name": name, "annotations": annotations or {}},
                "provisioner": provisioner,
                "volumeBindingMode": "WaitForFirstConsumer" if wffc else "Immediate",
                **extra}
        sc = _kind(api, "StorageClass")(api, body)
        sc.create()
        created.append(sc)
        return name

    yield make
    for sc in created:
        sc.delete()


def get(api: pykube.HTTPClient, kind: str, namespace: str, name: str) -> dict[str, Any] | None:
    """The live object (or None) of `kind` in "v1"/"cdi"/"kubevirt"/"storage" groups."""
    cls = _kind(api, kind)
    query = cls.objects(api, namespace=namespace) if namespace else cls.objects(api)
    found = query.get_or_none(name=name)
    return dict(found.obj) if found is not None else None


def _kind(api: pykube.HTTPClient, kind: str) -> Any:
    builtin = {"PersistentVolumeClaim": pykube.PersistentVolumeClaim,
               "PersistentVolume": pykube.PersistentVolume, "Pod": pykube.Pod}
    if kind in builtin:
        return builtin[kind]
    group = {"DataVolume": CDI, "StorageProfile": CDI,
             "StorageClass": "storage.k8s.io/v1"}.get(kind, "kubevirt.io/v1")
    return pykube.object_factory(api, group, kind)


def create(api: pykube.HTTPClient, kind: str, body: dict[str, Any]) -> dict[str, Any]:
    """Create an object with plain pykube and return it."""
    cls = _kind(api, kind)
    obj = cls(api, {"apiVersion": cls.version, "kind": kind, **body})
    obj.create()
    return dict(obj.obj)


def pvc_body(namespace: str, name: str, size: str = "1Gi", storage_class: str | None = None,
             *, mode: str = "Filesystem", annotations: dict[str, str] | None = None
             ) -> dict[str, Any]:
    spec: dict[str, Any] = {"accessModes": ["ReadWriteOnce"], "volumeMode": mode,
                            "resources": {"requests": {"storage": size}}}
    if storage_class is not None:
        spec["storageClassName"] = storage_class
    return {"metadata": {"name": name, "namespace": namespace,
                         "annotations": annotations or {}}, "spec": spec}


def dv_body(namespace: str, name: str, source: dict[str, Any], *,
            storage: dict[str, Any] | None = None, pvc: dict[str, Any] | None = None,
            annotations: dict[str, str] | None = None) -> dict[str, Any]:
    spec: dict[str, Any] = {"source": source}
    if storage is not None:
        spec["storage"] = storage
    if pvc is not None:
        spec["pvc"] = pvc
    return {"metadata": {"name": name, "namespace": namespace,
                         "annotations": annotations or {}}, "spec": spec}


def storage(storage_class: str, size: str | None = "1Gi", **extra: Any) -> dict[str, Any]:
    spec: dict[str, Any] = {"storageClassName": storage_class, **extra}
    if size is not None:
        spec["resources"] = {"requests": {"storage": size}}
    return spec


def clone_of(namespace: str, claim: str) -> dict[str, Any]:
    """A DataVolume source cloning `claim` (the CRD requires the namespace)."""
    return {"pvc": {"name": claim, "namespace": namespace}}


def phase(obj: dict[str, Any] | None) -> str | None:
    value = (obj or {}).get("status", {}).get("phase")
    return None if value is None else str(value)


def events(api: pykube.HTTPClient, namespace: str, name: str) -> list[tuple[str, str, str]]:
    """(type, reason, message) of the Events about object `name` in `namespace`."""
    query = pykube.Event.objects(api, namespace=namespace).filter(
        field_selector={"involvedObject.name": name})
    return [(e.obj.get("type", ""), e.obj.get("reason", ""), e.obj.get("message", ""))
            for e in query]


def reason_seen(api: pykube.HTTPClient, namespace: str, name: str, reason: str
                ) -> tuple[str, str, str] | None:
    return next((e for e in events(api, namespace, name) if e[1] == reason), None)


def in_phase(api: pykube.HTTPClient, namespace: str, name: str, *phases: str
             ) -> Callable[[], dict[str, Any] | None]:
    """A probe: the DataVolume once it is in one of `phases`."""
    def probe() -> dict[str, Any] | None:
        dv = get(api, "DataVolume", namespace, name)
        return dv if phase(dv) in phases else None
    return probe


def bound_pvc(api: pykube.HTTPClient, namespace: str, name: str
              ) -> Callable[[], dict[str, Any] | None]:
    def probe() -> dict[str, Any] | None:
        pvc = get(api, "PersistentVolumeClaim", namespace, name)
        return pvc if phase(pvc) == "Bound" else None
    return probe


def patch_annotations(api: pykube.HTTPClient, namespace: str, name: str,
                      annotations: dict[str, str | None]) -> None:
    """Merge-patch a DataVolume's annotations (None removes one)."""
    resp = api.patch(url=f"datavolumes/{name}", namespace=namespace, version=CDI,
                     headers={"Content-Type": "application/merge-patch+json"},
                     data=json.dumps({"metadata": {"annotations": annotations}}))
    api.raise_for_status(resp)


def mounting_pod(api: pykube.HTTPClient, namespace: str, name: str, claim: str) -> None:
    """A Running pod on node-1 that mounts `claim` (as a kubelet would report it)."""
    create(api, "Pod", {"metadata": {"name": name, "namespace": namespace},
                        "spec": {"nodeName": "node-1",
                                 "containers": [{"name": "c", "image": "busybox"}],
                                 "volumes": [{"name": "d", "persistentVolumeClaim": {
                                     "claimName": claim}}]}})
    resp = api.patch(url=f"pods/{name}/status", namespace=namespace,
                     headers={"Content-Type": "application/merge-patch+json"},
                     data=json.dumps({"status": {"phase": "Running"}}))
    api.raise_for_status(resp)


# ---------------------------------------------------------------------------- pure rules


def test_required_space_adds_filesystem_overhead_after_alignment() -> None:
    # upstream GetRequiredSpace: ceil(aligned * 1.06), pinned on real CDI by
    # test_real_engine.py::test_cdi_sizes_a_filesystem_clone_from_the_image_not_the_claim
    assert required_space(10 * GI) == 11381663335
    assert required_space(1) == math.ceil(MiB * 1.06)


def test_block_capacity_overhead_only_applies_to_block() -> None:
    sc = {"metadata": {"annotations": {"sim.vmstorage.dev/capacity-overhead": "-1%"}}}
    assert provisioned_capacity(10 * GI, sc, "Filesystem") == 10 * GI
    assert provisioned_capacity(10 * GI, sc, "Block") == 10137 * MiB
    assert provisioned_capacity(GI + 1, {"metadata": {}}, "Block") == GI + MiB


@pytest.mark.parametrize(
    ("kwargs", "expected"),
    [
        ({"same_provisioner": True, "same_volume_mode": True}, CloneChoice("csi-clone")),
        ({"same_provisioner": False, "same_volume_mode": True},
         CloneChoice("copy", "IncompatibleProvisioners")),
        ({"same_provisioner": True, "same_volume_mode": False},
         CloneChoice("copy", "IncompatibleVolumeModes")),
        ({"same_provisioner": True, "same_volume_mode": True, "expands": True},
         CloneChoice("copy", "NoVolumeExpansion")),
    ],
)
def test_clone_planner_falls_back_to_copy(kwargs: dict[str, bool], expected: CloneChoice) -> None:
    args = {"expands": False, "allow_expansion": False, **kwargs}
    assert choose_clone("csi-clone", **args) == expected


def test_copy_duration_scales_with_size_unless_overridden() -> None:
    claim = {"spec": {"resources": {"requests": {"storage": "4Gi"}}}}
    http = {"spec": {"source": {"http": {"url": URL}}}}
    assert copy_duration(http, claim, 0.5) == 2.0
    assert copy_duration({"spec": {"source": {"blank": {}}}}, claim, 0.5) == 0.0
    assert copy_duration({**http, "metadata": {"annotations": {COPY_SECONDS: "3"}}},
                         claim, 0.5) == 3.0


def test_detected_clone_size_is_the_image_size_not_the_source_claim() -> None:
    size = required_space(GI)
    fs_source = {"metadata": {"annotations": {"cdi.kubevirt.io/storage.contentType": "kubevirt"}},
                 "spec": {"volumeMode": "Filesystem",
                          "resources": {"requests": {"storage": str(size)}}}}
    block_source = {"spec": {"volumeMode": "Block", "resources": {"requests": {"storage": "1Gi"}}},
                    "status": {"capacity": {"storage": "1013Mi"}}}
    virtual = int(size * 0.94)  # what the importer left: the size-detection pod's answer
    assert detect_clone_size(fs_source, "Filesystem") == required_space(virtual) < size
    assert detect_clone_size(fs_source, "Block") == virtual
    assert detect_clone_size(block_source, "Filesystem") == required_space(1013 * MiB)
    plain = {**fs_source, "metadata": {}}  # no KubeVirt content: the capacity, no detection
    assert detect_clone_size(plain, "Block") == size


def test_progress_text_matches_cdi_format() -> None:
    assert format_progress(0.452) == "45.20%"
    assert format_progress(1.0) == "100.0%"


# ---------------------------------------------------------------------------- provisioner


@cluster_test
def test_immediate_class_provisions_and_binds(
    api: pykube.HTTPClient, namespace: str, make_class: MakeClass,
    eventually: Eventually,
) -> None:
    sc = make_class("fast", "fast.csi.example")
    create(api, "PersistentVolumeClaim",
           pvc_body(namespace, "data", "1500Mi", sc, mode="Block"))

    pvc = eventually(bound_pvc(api, namespace, "data"), what="PVC bound")

    pv = get(api, "PersistentVolume", "", pvc["spec"]["volumeName"])
    assert pv is not None
    assert pv["metadata"]["name"] == f"pvc-{pvc['metadata']['uid']}"
    assert pv["spec"]["csi"]["driver"] == "fast.csi.example"
    assert pv["spec"]["claimRef"]["uid"] == pvc["metadata"]["uid"]
    assert pv["spec"]["storageClassName"] == sc
    assert pv["spec"]["volumeMode"] == "Block"
    assert pv["spec"]["accessModes"] == ["ReadWriteOnce"]
    assert parse_quantity(pv["spec"]["capacity"]["storage"]) == 1500 * MiB
    assert phase(pv) == "Bound"
    assert pvc["status"]["capacity"]["storage"] == pv["spec"]["capacity"]["storage"]
    assert pvc["status"]["accessModes"] == ["ReadWriteOnce"]


@cluster_test
def test_binding_reacts_to_the_watch_not_a_resync(
    api: pykube.HTTPClient, namespace: str, make_class: MakeClass,
    eventually: Eventually,
) -> None:
    sc = make_class("quick")
    create(api, "PersistentVolumeClaim", pvc_body(namespace, "warmup", "1Gi", sc))
    eventually(bound_pvc(api, namespace, "warmup"))
    latencies = []
    for i in range(5):
        started = time.monotonic()
        create(api, "PersistentVolumeClaim", pvc_body(namespace, f"p{i}", "1Gi", sc))
        eventually(bound_pvc(api, namespace, f"p{i}"))
        latencies.append(time.monotonic() - started)
    # creation -> watch event -> PV create -> PV status -> PVC patch -> PVC status, polled.
    # Not a performance figure (those are benchmarks): a bound far above a watch's reaction
    # (~40 ms here) and far below any resync period, so only a lost watch fails it, never a
    # busy machine (it measured 102 ms while five other suites ran).
    assert statistics.median(latencies) < 1.0, latencies


@cluster_test
def test_wait_for_first_consumer_binds_on_selected_node(
    api: pykube.HTTPClient, namespace: str, make_class: MakeClass,
    eventually: Eventually,
) -> None:
    sc = make_class("local", wffc=True)
    create(api, "PersistentVolumeClaim", pvc_body(namespace, "data", "1Gi", sc))

    eventually(lambda: reason_seen(api, namespace, "data", "WaitForFirstConsumer"))
    assert stays(lambda: phase(get(api, "PersistentVolumeClaim", namespace, "data"))
                 == "Pending")

    claim = pykube.PersistentVolumeClaim.objects(api, namespace=namespace).get(name="data")
    claim.patch({"metadata": {"annotations": {"volume.kubernetes.io/selected-node": "node-1"}}})
    eventually(bound_pvc(api, namespace, "data"), what="bound after node selection")


@cluster_test
def test_wait_for_first_consumer_binds_when_cdi_requests_immediate(
    api: pykube.HTTPClient, namespace: str, make_class: MakeClass,
    eventually: Eventually,
) -> None:
    sc = make_class("local", wffc=True)
    body = pvc_body(namespace, "data", "1Gi", sc,
                    annotations={"cdi.kubevirt.io/storage.bind.immediate.requested": "true"})
    create(api, "PersistentVolumeClaim", body)
    eventually(bound_pvc(api, namespace, "data"))


@cluster_test
def test_default_class_is_used_when_claim_names_none(
    api: pykube.HTTPClient, namespace: str, make_class: MakeClass,
    eventually: Eventually,
) -> None:
    default = make_class("default", "default.csi.example",
                         annotations={"storageclass.kubernetes.io/is-default-class": "true"})
    create(api, "PersistentVolumeClaim", pvc_body(namespace, "data", "1Gi", None))

    pvc = eventually(bound_pvc(api, namespace, "data"))

    assert pvc["spec"]["storageClassName"] == default
    pv = get(api, "PersistentVolume", "", pvc["spec"]["volumeName"])
    assert pv is not None and pv["spec"]["csi"]["driver"] == "default.csi.example"


@cluster_test
def test_missing_class_leaves_claim_pending_with_event(
    api: pykube.HTTPClient, namespace: str, eventually: Eventually,
) -> None:
    create(api, "PersistentVolumeClaim", pvc_body(namespace, "data", "1Gi", "no-such-class"))

    event = eventually(lambda: reason_seen(api, namespace, "data", "ProvisioningFailed"))

    assert event[0] == "Warning" and "no-such-class" in event[2]
    assert phase(get(api, "PersistentVolumeClaim", namespace, "data")) == "Pending"


@cluster_test
def test_block_capacity_overhead_class_gives_smaller_capacity(
    api: pykube.HTTPClient, namespace: str, make_class: MakeClass,
    eventually: Eventually,
) -> None:
    sc = make_class("vendor", annotations={"sim.vmstorage.dev/capacity-overhead": "-1%"})
    create(api, "PersistentVolumeClaim", pvc_body(namespace, "data", "10Gi", sc, mode="Block"))
    pvc = eventually(bound_pvc(api, namespace, "data"))
    assert parse_quantity(pvc["status"]["capacity"]["storage"]) < 10 * GI


# ---------------------------------------------------------------------------- profiles


@cluster_test
def test_storage_profile_follows_each_class(
    api: pykube.HTTPClient, make_class: MakeClass, eventually: Eventually,
) -> None:
    plain = make_class("plain", "one.csi.example")
    block = make_class("block", "two.csi.example", annotations={
        "sim.vmstorage.dev/claim-property-sets":
            '[{"accessModes": ["ReadWriteMany"], "volumeMode": "Block"}]'})

    def status(name: str) -> dict[str, Any] | None:
        profile = get(api, "StorageProfile", "", name)
        return (profile or {}).get("status") or None

    plain_status = eventually(lambda: status(plain))
    block_status = eventually(lambda: status(block))

    assert plain_status["storageClass"] == plain
    assert plain_status["provisioner"] == "one.csi.example"
    assert plain_status["claimPropertySets"] == [
        {"accessModes": ["ReadWriteOnce"], "volumeMode": "Filesystem"}]
    assert plain_status["cloneStrategy"] == "csi-clone"
    assert block_status["claimPropertySets"] == [
        {"accessModes": ["ReadWriteMany"], "volumeMode": "Block"}]


# ---------------------------------------------------------------------------- DataVolumes


@cluster_test
def test_blank_dv_succeeds_with_empty_hash(
    api: pykube.HTTPClient, namespace: str, make_class: MakeClass,
    eventually: Eventually,
) -> None:
    sc = make_class("fast")
    create(api, "DataVolume", dv_body(namespace, "blank", {"blank": {}}, storage=storage(sc)))

    dv = eventually(in_phase(api, namespace, "blank", "Succeeded", "Failed"))

    assert phase(dv) == "Succeeded"
    assert dv["status"]["progress"] == "100.0%"
    assert dv["status"]["claimName"] == "blank"
    assert condition(dv, "Ready")["status"] == "True"
    assert condition(dv, "Running")["status"] == "False"
    assert condition(dv, "Bound")["status"] == "True"
    pvc = get(api, "PersistentVolumeClaim", namespace, "blank")
    assert annotation(pvc, HASH) == ""
    assert pvc is not None and pvc["metadata"]["ownerReferences"][0]["kind"] == "DataVolume"
    # storage API: RWO/Filesystem from the StorageProfile plus 6% filesystem overhead
    assert pvc["spec"]["volumeMode"] == "Filesystem"
    assert pvc["spec"]["accessModes"] == ["ReadWriteOnce"]
    assert parse_quantity(pvc["spec"]["resources"]["requests"]["storage"]) == required_space(GI)


@cluster_test
def test_import_dv_reports_progress_and_sets_hash(
    api: pykube.HTTPClient, namespace: str, make_class: MakeClass,
    eventually: Eventually,
) -> None:
    sc = make_class("fast")
    create(api, "DataVolume", dv_body(namespace, "img", {"http": {"url": URL}},
                                      storage=storage(sc), annotations={COPY_SECONDS: "1"}))
    phases, progress = set(), set()

    def observe() -> bool:
        dv = get(api, "DataVolume", namespace, "img") or {}
        phases.add(phase(dv))
        progress.add(dv.get("status", {}).get("progress"))
        if phase(dv) == "ImportInProgress":
            assert condition(dv, "Running")["status"] == "True"
            assert condition(dv, "Ready")["status"] == "False"
        return phase(dv) == "Succeeded"

    eventually(observe, what="import Succeeded")

    assert "ImportInProgress" in phases
    partial = [p for p in progress if p and p.endswith("%") and p not in ("0.00%", "100.0%")]
    assert partial, progress
    assert all(0 < float(p[:-1]) < 100 for p in partial)
    pvc = get(api, "PersistentVolumeClaim", namespace, "img")
    assert annotation(pvc, HASH) == hashlib.sha256(URL.encode()).hexdigest()


def _imported_source(api: pykube.HTTPClient, namespace: str, sc: str, eventually: Eventually,
                     *, name: str = "src", size: str = "1Gi") -> str:
    """An imported DataVolume's claim name, once Succeeded."""
    create(api, "DataVolume", dv_body(namespace, name, {"http": {"url": URL}},
                                      storage=storage(sc, size)))
    eventually(in_phase(api, namespace, name, "Succeeded"))
    return name


@cluster_test
def test_clone_copies_hash_and_records_clone_type(
    api: pykube.HTTPClient, namespace: str, make_class: MakeClass,
    eventually: Eventually,
) -> None:
    same = make_class("a", "one.csi.example")
    other = make_class("b", "two.csi.example")
    src = _imported_source(api, namespace, same, eventually)
    source_hash = annotation(get(api, "PersistentVolumeClaim", namespace, src), HASH)

    create(api, "DataVolume", dv_body(namespace, "smart", clone_of(namespace, src),
                                      storage=storage(same, None)))
    create(api, "DataVolume", dv_body(namespace, "copied", clone_of(namespace, src),
                                      storage=storage(other, None, volumeMode="Block",
                                                      accessModes=["ReadWriteOnce"])))
    eventually(in_phase(api, namespace, "smart", "Succeeded"))
    eventually(in_phase(api, namespace, "copied", "Succeeded"))

    smart = get(api, "PersistentVolumeClaim", namespace, "smart")
    copied = get(api, "PersistentVolumeClaim", namespace, "copied")
    assert source_hash and annotation(smart, HASH) == source_hash == annotation(copied, HASH)
    assert annotation(smart, "cdi.kubevirt.io/cloneType") == "csi-clone"
    assert annotation(copied, "cdi.kubevirt.io/cloneType") == "copy"
    assert annotation(copied, "cdi.kubevirt.io/cloneFallbackReason") == "IncompatibleProvisioners"


@cluster_test
def test_clone_waits_while_a_pod_mounts_the_source(
    api: pykube.HTTPClient, namespace: str, make_class: MakeClass,
    eventually: Eventually,
) -> None:
    sc = make_class("a")
    src = _imported_source(api, namespace, sc, eventually)
    mounting_pod(api, namespace, "user", src)

    create(api, "DataVolume", dv_body(namespace, "clone", clone_of(namespace, src),
                                      storage=storage(sc, None)))

    event = eventually(lambda: reason_seen(api, namespace, "clone", "CloneSourceInUse"))
    assert event == ("Warning", "CloneSourceInUse",
                     f"pod {namespace}/user using PersistentVolumeClaim {src}")
    assert stays(lambda: phase(get(api, "DataVolume", namespace, "clone")) == "CloneScheduled")
    running = condition(get(api, "DataVolume", namespace, "clone"), "Running")
    assert running.get("reason", "") != "CloneSourceInUse"  # no invented condition reason

    pykube.Pod.objects(api, namespace=namespace).get(name="user").delete()
    eventually(in_phase(api, namespace, "clone", "Succeeded"), what="clone after the pod went")


@cluster_test
def test_clone_to_a_smaller_target_fails(
    api: pykube.HTTPClient, namespace: str, make_class: MakeClass,
    eventually: Eventually,
) -> None:
    sc = make_class("a")
    src = _imported_source(api, namespace, sc, eventually, size="2Gi")
    create(api, "DataVolume", dv_body(namespace, "small", clone_of(namespace, src),
                                      storage=storage(sc, "1Gi")))

    dv = eventually(in_phase(api, namespace, "small", "Failed", "Succeeded"))

    assert phase(dv) == "Failed"
    assert "smaller than the source" in condition(dv, "Running")["message"]
    assert get(api, "PersistentVolumeClaim", namespace, "small") is None


@cluster_test
def test_a_clone_requesting_the_source_data_volume_size_gets_the_source_claim_size(
    api: pykube.HTTPClient,
    namespace: str,
    make_class: MakeClass,
    eventually: Eventually,
) -> None:
    """Upstream validates a sized Filesystem clone on the target claim, after the overhead
    (the clone planner), not on the DataVolume's own request: apply relies on it (pinned on
    real CDI by test_real_apply.py's offline Filesystem move)."""
    sc = make_class("a")
    src = _imported_source(api, namespace, sc, eventually, size="2Gi")
    create(api, "DataVolume", dv_body(namespace, "same", clone_of(namespace, src),
                                      storage=storage(sc, "2Gi")))
    dv = eventually(in_phase(api, namespace, "same", "Failed", "Succeeded"))
    assert phase(dv) == "Succeeded"

    def request(name: str) -> int:
        claim = get(api, "PersistentVolumeClaim", namespace, name)
        assert claim is not None
        return parse_quantity(claim["spec"]["resources"]["requests"]["storage"])

    assert request("same") == request(src) == required_space(2 * GI)


@cluster_test
def test_permissive_clone_allows_a_smaller_target(
    api: pykube.HTTPClient, namespace: str, make_class: MakeClass,
    eventually: Eventually,
) -> None:
    sc = make_class("a")
    src = _imported_source(api, namespace, sc, eventually, size="2Gi")
    create(api, "DataVolume", dv_body(namespace, "small", clone_of(namespace, src),
                                      storage=storage(sc, "1Gi"),
                                      annotations={"cdi.kubevirt.io/permissiveClone": "true"}))
    dv = eventually(in_phase(api, namespace, "small", "Failed", "Succeeded"))
    assert phase(dv) == "Succeeded"


@cluster_test
def test_claim_adoption_keeps_the_existing_disk(
    api: pykube.HTTPClient, namespace: str, make_class: MakeClass,
    eventually: Eventually,
) -> None:
    sc = make_class("a")
    create(api, "PersistentVolumeClaim",
           pvc_body(namespace, "disk", "1Gi", sc, annotations={HASH: "abc123"}))
    eventually(bound_pvc(api, namespace, "disk"))
    dv = create(api, "DataVolume", dv_body(
        namespace, "disk", {"blank": {}}, storage=storage(sc),
        annotations={"cdi.kubevirt.io/allowClaimAdoption": "true"}))

    eventually(in_phase(api, namespace, "disk", "Succeeded"))

    pvc = get(api, "PersistentVolumeClaim", namespace, "disk")
    assert annotation(pvc, HASH) == "abc123"
    assert pvc is not None
    assert [r["uid"] for r in pvc["metadata"]["ownerReferences"]] == [dv["metadata"]["uid"]]


@cluster_test
def test_existing_claim_without_adoption_is_not_taken(
    api: pykube.HTTPClient, namespace: str, make_class: MakeClass,
    eventually: Eventually,
) -> None:
    sc = make_class("a")
    create(api, "PersistentVolumeClaim", pvc_body(namespace, "disk", "1Gi", sc))
    create(api, "DataVolume", dv_body(namespace, "disk", {"blank": {}}, storage=storage(sc)))
    eventually(lambda: reason_seen(api, namespace, "disk", "ErrResourceExists"))
    dv = get(api, "DataVolume", namespace, "disk")
    assert phase(dv) == "Pending"
    assert condition(dv, "Bound")["reason"] == "ErrResourceExists"


@cluster_test
def test_wait_for_first_consumer_dv_waits_until_its_claim_binds(
    api: pykube.HTTPClient, namespace: str, make_class: MakeClass,
    eventually: Eventually,
) -> None:
    sc = make_class("local", wffc=True)
    create(api, "DataVolume", dv_body(namespace, "blank", {"blank": {}}, storage=storage(sc)))
    eventually(in_phase(api, namespace, "blank", "WaitForFirstConsumer"))

    claim = pykube.PersistentVolumeClaim.objects(api, namespace=namespace).get(name="blank")
    claim.patch({"metadata": {"annotations": {"volume.kubernetes.io/selected-node": "node-2"}}})
    eventually(in_phase(api, namespace, "blank", "Succeeded"))


@cluster_test
def test_duplicate_storage_definition_fails(
    api: pykube.HTTPClient, namespace: str, make_class: MakeClass,
    eventually: Eventually,
) -> None:
    sc = make_class("a")
    pvc_spec = {"accessModes": ["ReadWriteOnce"], "storageClassName": sc,
                "resources": {"requests": {"storage": "1Gi"}}}
    create(api, "DataVolume", dv_body(namespace, "both", {"blank": {}},
                                      storage=storage(sc), pvc=pvc_spec))

    dv = eventually(in_phase(api, namespace, "both", "Failed"))

    assert "Duplicate storage definition" in condition(dv, "Running")["message"]
    event = eventually(lambda: reason_seen(api, namespace, "both", "ValidationFailed"))
    assert event[0] == "Warning" and "Duplicate storage definition" in event[2]
    assert get(api, "PersistentVolumeClaim", namespace, "both") is None


# ---------------------------------------------------------------------------- faults


@cluster_test
def test_fault_fail_annotation_retries_the_import_until_cleared(
    api: pykube.HTTPClient, namespace: str, make_class: MakeClass,
    eventually: Eventually,
) -> None:
    sc = make_class("a")
    create(api, "DataVolume", dv_body(namespace, "img", {"http": {"url": URL}},
                                      storage=storage(sc), annotations={FAULT: "fail"}))

    def retried() -> dict[str, Any] | None:
        dv = get(api, "DataVolume", namespace, "img")
        return dv if (dv or {}).get("status", {}).get("restartCount", 0) >= 2 else None
    dv = eventually(retried, what="two restarts")
    assert phase(dv) == "ImportInProgress"  # not Failed: CDI restarts the importer pod
    running = condition(dv, "Running")
    assert (running["status"], running["reason"]) == ("False", "Error")
    assert eventually(lambda: reason_seen(api, namespace, "img", "ImportFailed"))[0] == "Warning"
    assert stays(lambda: phase(get(api, "DataVolume", namespace, "img")) != "Failed")

    patch_annotations(api, namespace, "img", {FAULT: None})
    done = eventually(in_phase(api, namespace, "img", "Succeeded"), what="import after clearing")
    assert done["status"]["restartCount"] >= 2
    assert annotation(get(api, "PersistentVolumeClaim", namespace, "img"), HASH)


@cluster_test
def test_fault_fatal_annotation_fails_the_import(
    api: pykube.HTTPClient, namespace: str, make_class: MakeClass,
    eventually: Eventually,
) -> None:
    sc = make_class("a")
    create(api, "DataVolume", dv_body(namespace, "img", {"http": {"url": URL}},
                                      storage=storage(sc), annotations={FAULT: "fatal"}))

    dv = eventually(in_phase(api, namespace, "img", "Failed", "Succeeded"))

    assert phase(dv) == "Failed"
    running = condition(dv, "Running")
    assert running["status"] == "False" and running["reason"] == "Error"
    assert condition(dv, "Ready")["status"] == "False"
    assert eventually(lambda: reason_seen(api, namespace, "img", "ImportFailed"))[0] == "Warning"
    assert annotation(get(api, "PersistentVolumeClaim", namespace, "img"), HASH) is None


@cluster_test
def test_fault_fail_times_annotation_restarts_then_succeeds(
    api: pykube.HTTPClient, namespace: str, make_class: MakeClass,
    eventually: Eventually,
) -> None:
    sc = make_class("a")
    create(api, "DataVolume", dv_body(namespace, "img", {"http": {"url": URL}},
                                      storage=storage(sc), annotations={FAULT: "fail-times:2"}))

    dv = eventually(in_phase(api, namespace, "img", "Failed", "Succeeded"))

    assert phase(dv) == "Succeeded"
    assert dv["status"]["restartCount"] == 2
    assert annotation(get(api, "PersistentVolumeClaim", namespace, "img"), HASH)


@cluster_test
def test_fault_added_by_test_code_makes_a_clone_retry(
    api: pykube.HTTPClient, sim: Simulator, namespace: str, make_class: MakeClass,
    eventually: Eventually,
) -> None:
    sc = make_class("a")
    src = _imported_source(api, namespace, sc, eventually)
    sim.faults.add("DataVolume", namespace, "clone", Fault(FaultAction.FAIL))
    create(api, "DataVolume", dv_body(namespace, "clone", clone_of(namespace, src),
                                      storage=storage(sc, None)))

    def retried() -> dict[str, Any] | None:
        dv = get(api, "DataVolume", namespace, "clone")
        return dv if (dv or {}).get("status", {}).get("restartCount", 0) >= 1 else None
    dv = eventually(retried, what="a restart")
    assert phase(dv) == "CloneInProgress"
    assert condition(dv, "Running")["reason"] == "Error"
    assert eventually(lambda: reason_seen(api, namespace, "clone", "CloneFailed"))[0] == "Warning"
    sim.faults.clear("DataVolume", namespace, "clone")
    eventually(in_phase(api, namespace, "clone", "Succeeded"), what="clone after clearing")


@cluster_test
def test_fault_stall_freezes_progress_until_cleared(
    api: pykube.HTTPClient, namespace: str, make_class: MakeClass,
    eventually: Eventually,
) -> None:
    sc = make_class("a")
    create(api, "DataVolume", dv_body(namespace, "img", {"http": {"url": URL}},
                                      storage=storage(sc), annotations={FAULT: "stall"}))
    stalled = eventually(in_phase(api, namespace, "img", "ImportInProgress"))
    frozen = stalled["status"]["progress"]

    assert stays(lambda: (get(api, "DataVolume", namespace, "img") or {})
                 .get("status", {}).get("progress") == frozen, seconds=0.6)

    dv_obj = _kind(api, "DataVolume").objects(api, namespace=namespace).get(name="img")
    dv_obj.patch({"metadata": {"annotations": {FAULT: None}}})
    eventually(in_phase(api, namespace, "img", "Succeeded"), what="Succeeded after clearing")


# ---------------------------------------------------------------------------- deletion


@pytest.mark.parametrize("propagation", ["Background", "Foreground"])
@cluster_test
def test_deleting_a_dv_deletes_its_claim_and_volume(
    api: pykube.HTTPClient, namespace: str, make_class: MakeClass,
    eventually: Eventually, propagation: str,
) -> None:
    sc = make_class("a")
    create(api, "DataVolume", dv_body(namespace, "disk", {"blank": {}}, storage=storage(sc)))
    eventually(in_phase(api, namespace, "disk", "Succeeded"))
    pvc = get(api, "PersistentVolumeClaim", namespace, "disk")
    assert pvc is not None
    volume = pvc["spec"]["volumeName"]

    dv = _kind(api, "DataVolume").objects(api, namespace=namespace).get(name="disk")
    dv.delete(propagation_policy=propagation)

    eventually(lambda: get(api, "DataVolume", namespace, "disk") is None, what="DV gone")
    eventually(lambda: get(api, "PersistentVolumeClaim", namespace, "disk") is None,
               what="PVC gone")
    eventually(lambda: get(api, "PersistentVolume", "", volume) is None, what="PV gone")


@cluster_test
def test_claim_in_use_stays_terminating_until_no_pod_mounts_it(
    api: pykube.HTTPClient, namespace: str, make_class: MakeClass,
    eventually: Eventually,
) -> None:
    sc = make_class("a")
    create(api, "PersistentVolumeClaim", pvc_body(namespace, "disk", "1Gi", sc))
    claim = eventually(bound_pvc(api, namespace, "disk"))
    assert "kubernetes.io/pvc-protection" in claim["metadata"]["finalizers"]
    mounting_pod(api, namespace, "user", "disk")

    pykube.PersistentVolumeClaim.objects(api, namespace=namespace).get(name="disk").delete()
    assert stays(lambda: (c := get(api, "PersistentVolumeClaim", namespace, "disk")) is not None
                 and bool(c["metadata"].get("deletionTimestamp")))  # Terminating

    pykube.Pod.objects(api, namespace=namespace).get(name="user").delete()
    eventually(lambda: get(api, "PersistentVolumeClaim", namespace, "disk") is None)


@cluster_test
def test_simulator_store_reads_its_own_writes(
    sim: Simulator, namespace: str, make_class: MakeClass,
    eventually: Eventually,
) -> None:
    sc = make_class("a")
    created = sim.client.create("persistentvolumeclaims", pvc_body(namespace, "own", "1Gi", sc))
    cached = sim.store.get("persistentvolumeclaims", namespace, "own")
    assert cached is not None and cached["metadata"]["uid"] == created["metadata"]["uid"]
    # Not sim.wait_idle(): the simulator is shared by the session, and other tests leave stalled
    # copies that keep it busy; what matters is that its own store sees the binding.
    bound = eventually(lambda: (pvc := sim.store.get("persistentvolumeclaims", namespace, "own"))
                       and phase(pvc) == "Bound" and pvc, what="the store sees the binding")
    assert bound["spec"]["volumeName"]
