"""Storage half of the simulator: StorageProfiles, a CSI provisioner and CDI DataVolumes.

Behaviour follows the KubeVirt/CDI reference (section 4). On classes without a CSIDriver
object the legacy CDI flow runs (the DataVolume's PVC is created and bound first, then
filled); with one (or the DV annotation `cdi.kubevirt.io/storage.usePopulator`) the populator
flow of `cdi_populator`. Simplifications:

- one simulated CSI driver per StorageClass provisioner name; no attach/mount, no topology;
- no VolumeSnapshotClasses: a `snapshot` clone strategy behaves like `csi-clone`;
- CDIConfig is not read: the filesystem overhead is always 0.06;
- upload, snapshot and sourceRef sources are refused (DataVolume Failed).

Disk contents are modelled by a hash in the PVC annotation `sim.vmstorage.dev/content-hash`:
"" for a blank disk, sha256 of the URL for an import, the source's hash for a clone. The
annotation appears only when a DataVolume finishes filling the PVC.

Deletion: kube-apiserver's StorageObjectInUseProtection admission puts finalizers on PVCs
and PVs, and no garbage collector runs, so this module also plays the pvc-protection and
pv-protection controllers and the owner-reference GC for DataVolume -> PVC.
"""

from __future__ import annotations

import hashlib
import json
import math
import time
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, ClassVar

from testenv.node.runtime import (
    CONTENT_HASH_ANNOTATION,
    GI,
    ApiError,
    Controller,
    FaultAction,
    Key,
    annotations_of,
    content_hash,
    is_deleting,
    is_owned_by,
    key_of,
    owner_reference,
    set_condition,
)
from testenv.quantity import to_bytes, to_quantity
from testenv.simulator import cdi_populator as populator
from testenv.simulator.pods import claim_pinners, claim_users, pod_claims

# Kubernetes annotations and finalizers
ANN_DEFAULT_CLASS = "storageclass.kubernetes.io/is-default-class"
ANN_SELECTED_NODE = "volume.kubernetes.io/selected-node"
ANN_STORAGE_PROVISIONER = "volume.kubernetes.io/storage-provisioner"
ANN_BETA_STORAGE_PROVISIONER = "volume.beta.kubernetes.io/storage-provisioner"
ANN_BIND_COMPLETED = "pv.kubernetes.io/bind-completed"
ANN_BOUND_BY_CONTROLLER = "pv.kubernetes.io/bound-by-controller"
ANN_PROVISIONED_BY = "pv.kubernetes.io/provisioned-by"
FINALIZER_PVC_PROTECTION = "kubernetes.io/pvc-protection"
FINALIZER_PV_PROTECTION = "kubernetes.io/pv-protection"
FINALIZER_FOREGROUND = "foregroundDeletion"
FINALIZER_ORPHAN = "orphan"

# CDI / KubeVirt annotations
ANN_DEFAULT_VIRT_CLASS = "storageclass.kubevirt.io/is-default-virt-class"
ANN_CLONE_STRATEGY = "cdi.kubevirt.io/clone-strategy"
ANN_IMMEDIATE_BIND = "cdi.kubevirt.io/storage.bind.immediate.requested"
ANN_ALLOW_CLAIM_ADOPTION = "cdi.kubevirt.io/allowClaimAdoption"
ANN_PERMISSIVE_CLONE = "cdi.kubevirt.io/permissiveClone"
ANN_CLONE_TYPE = "cdi.kubevirt.io/cloneType"
ANN_CLONE_FALLBACK_REASON = "cdi.kubevirt.io/cloneFallbackReason"
ANN_CLONE_REQUEST = "k8s.io/CloneRequest"
ANN_CONTENT_TYPE = "cdi.kubevirt.io/storage.contentType"
ANN_POD_PHASE = "cdi.kubevirt.io/storage.pod.phase"
ANN_POD_RESTARTS = "cdi.kubevirt.io/storage.pod.restarts"
ANN_CREATED_FOR_DV = "cdi.kubevirt.io/createdForDataVolume"
ANN_POPULATED_FOR = "cdi.kubevirt.io/storage.populatedFor"
ANN_IMPORT_ENDPOINT = "cdi.kubevirt.io/storage.import.endpoint"
ANN_IMPORT_SOURCE = "cdi.kubevirt.io/storage.import.source"

# Simulator knobs (annotations, so cluster tests need only plain API calls)
ANN_CLAIM_PROPERTY_SETS = "sim.vmstorage.dev/claim-property-sets"
ANN_CAPACITY_OVERHEAD = "sim.vmstorage.dev/capacity-overhead"
ANN_COPY_SECONDS = "sim.vmstorage.dev/copy-seconds"

FILESYSTEM_OVERHEAD = 0.06
ALIGN = 2**20  # CDI aligns image sizes to 1 MiB; the simulated CSI driver allocates in MiB
DEFAULT_PROPERTY_SETS: tuple[dict[str, Any], ...] = (
    {"accessModes": ["ReadWriteOnce"], "volumeMode": "Filesystem"},
)
DEFAULT_CLONE_STRATEGY = "csi-clone"
IMPORT_SOURCES = ("http", "registry", "s3", "gcs", "imageio", "vddk")
DUPLICATE_STORAGE = "Duplicate storage definition, both target storage and target pvc defined"
TOO_SMALL = "target resources requests storage size is smaller than the source"


# --------------------------------------------------------------------------------------------
# Pure helpers


def pvc_phase(pvc: Mapping[str, Any]) -> str:
    """The claim's phase ("Pending" until the binder says otherwise)."""
    return str(pvc.get("status", {}).get("phase") or "Pending")


def request_bytes(spec: Mapping[str, Any]) -> int | None:
    """`resources.requests.storage` of a PVC or DV storage spec in bytes, None if unset."""
    value = (spec.get("resources") or {}).get("requests", {}).get("storage")
    return to_bytes(value) if value is not None else None


def capacity_bytes(pvc: Mapping[str, Any]) -> int | None:
    """`status.capacity.storage` of a bound claim in bytes, None if unknown."""
    value = (pvc.get("status", {}).get("capacity") or {}).get("storage")
    return to_bytes(value) if value is not None else None


def default_class(classes: Iterable[Mapping[str, Any]], *, virt: bool) -> dict[str, Any] | None:
    """The default StorageClass: the newest one annotated default (like the admission
    plugin). With `virt`, a class annotated default-virt-class wins (CDI `storage` API)."""
    ranked = sorted(classes, key=lambda c: c["metadata"].get("creationTimestamp", ""))
    for ann in ([ANN_DEFAULT_VIRT_CLASS] if virt else []) + [ANN_DEFAULT_CLASS]:
        marked = [c for c in ranked if annotations_of(c).get(ann) == "true"]
        if marked:
            return dict(marked[-1])
    return None


def claim_property_sets(sc: Mapping[str, Any]) -> list[dict[str, Any]]:
    """The StorageProfile claimPropertySets for a class: the JSON in the class annotation
    `sim.vmstorage.dev/claim-property-sets`, else RWO + Filesystem."""
    raw = annotations_of(sc).get(ANN_CLAIM_PROPERTY_SETS)
    if raw:
        parsed = json.loads(raw)
        if isinstance(parsed, list):
            return [dict(p) for p in parsed]
    return [dict(p) for p in DEFAULT_PROPERTY_SETS]


def provisioned_capacity(request: int, sc: Mapping[str, Any], volume_mode: str) -> int:
    """What the simulated driver allocates: the request rounded up to 1 MiB, then, for Block
    volumes only, the class's `sim.vmstorage.dev/capacity-overhead` percentage (e.g. "-1%",
    the vendor whose block devices come out ~1% small), rounded down to 1 MiB."""
    size = math.ceil(request / ALIGN) * ALIGN
    overhead = annotations_of(sc).get(ANN_CAPACITY_OVERHEAD, "").strip()
    if volume_mode == "Block" and overhead.endswith("%"):
        size = int(size * (1 + float(overhead[:-1]) / 100)) // ALIGN * ALIGN
    return size


def required_space(size: int, overhead: float = FILESYSTEM_OVERHEAD) -> int:
    """CDI `GetRequiredSpace`: align to 1 MiB, then add `overhead` of the aligned size for
    filesystem metadata (upstream multiplies by 1 + overhead)."""
    aligned = math.ceil(size / ALIGN) * ALIGN
    return math.ceil(aligned * (1 + overhead))


def detect_clone_size(source: Mapping[str, Any], target_mode: str) -> int:
    """CDI `detectCloneSize` for a clone without a size: the image's virtual size for a
    Filesystem source with KubeVirt content (the size-detection pod's answer: what the
    importer left, the source's space minus the filesystem overhead), else the source's
    capacity; plus the overhead again for a Filesystem target. So a Filesystem-to-Filesystem
    clone comes out smaller than its source claim, as upstream's does."""
    spec = source.get("spec", {})
    annotations = (source.get("metadata") or {}).get("annotations") or {}
    size = capacity_bytes(source) or request_bytes(spec) or 0
    kubevirt_content = annotations.get(ANN_CONTENT_TYPE) == "kubevirt"
    if (spec.get("volumeMode") or "Filesystem") == "Filesystem" and kubevirt_content:
        size = int(size * (1 - FILESYSTEM_OVERHEAD))
    return required_space(size) if target_mode == "Filesystem" else size


@dataclass(frozen=True)
class CloneChoice:
    """How CDI copies a clone: `clone_type` in copy|snapshot|csi-clone, and why a smart
    strategy fell back to a host-assisted copy (empty when it did not)."""

    clone_type: str
    fallback_reason: str = ""


def choose_clone(
    strategy: str,
    *,
    same_provisioner: bool,
    same_volume_mode: bool,
    expands: bool,
    allow_expansion: bool,
) -> CloneChoice:
    """The clone planner's choice (`planner.go`): a smart strategy falls back to copy on
    incompatible provisioners, volume modes, or a needed expansion the class cannot do."""
    if strategy == "copy":
        return CloneChoice("copy")
    if not same_provisioner:
        return CloneChoice("copy", "IncompatibleProvisioners")
    if not same_volume_mode:
        return CloneChoice("copy", "IncompatibleVolumeModes")
    if expands and not allow_expansion:
        return CloneChoice("copy", "NoVolumeExpansion")
    return CloneChoice(strategy)


def copy_duration(dv: Mapping[str, Any], claim: Mapping[str, Any], seconds_per_gib: float
                  ) -> float:
    """Seconds a fill takes: the DV annotation `sim.vmstorage.dev/copy-seconds` if set,
    0 for a blank disk, else the claim's request in GiB times `seconds_per_gib`."""
    override = annotations_of(dv).get(ANN_COPY_SECONDS)
    if override is not None:
        return float(override)
    if source_kind(dv) == "blank":
        return 0.0
    return (request_bytes(claim.get("spec", {})) or 0) / GI * seconds_per_gib


def format_progress(fraction: float) -> str:
    """DataVolume progress text: "45.20%" while running, "100.0%" when done."""
    if fraction >= 1:
        return "100.0%"
    return f"{max(fraction, 0.0) * 100:.2f}%"


def source_kind(dv: Mapping[str, Any]) -> str:
    """The DataVolume's source type ("blank", "http", "pvc", ...), "" when it has none."""
    source = dv.get("spec", {}).get("source") or {}
    kinds = sorted(source)
    return kinds[0] if len(kinds) == 1 else ""


def import_url(dv: Mapping[str, Any]) -> str:
    """The URL (or image reference) an import reads from."""
    source = dv.get("spec", {}).get("source") or {}
    body = source.get(source_kind(dv)) or {}
    return str(body.get("url") or body.get("imageURL") or body.get("bucket") or "")


def import_hash(dv: Mapping[str, Any]) -> str:
    """Content hash of an imported disk: sha256 of the source URL (hex)."""
    return hashlib.sha256(import_url(dv).encode()).hexdigest()


def clone_source(dv: Mapping[str, Any]) -> tuple[str, str]:
    """(namespace, name) of a clone's source PVC; the namespace defaults to the DV's."""
    src = dv["spec"]["source"]["pvc"]
    return src.get("namespace") or dv["metadata"]["namespace"], src["name"]


def waits_for_consumer(pvc: Mapping[str, Any], sc: Mapping[str, Any] | None) -> bool:
    """Whether binding is deferred: a WaitForFirstConsumer class, no node selected by the
    scheduler yet, and no CDI request for immediate binding."""
    if sc is None or sc.get("volumeBindingMode") != "WaitForFirstConsumer":
        return False
    anns = annotations_of(pvc)
    return ANN_SELECTED_NODE not in anns and ANN_IMMEDIATE_BIND not in anns


def validate_dv(dv: Mapping[str, Any]) -> str:
    """What the CDI webhook would refuse in a DataVolume spec ("" = acceptable)."""
    spec = dv.get("spec", {})
    if "pvc" in spec and "storage" in spec:
        return DUPLICATE_STORAGE
    if "pvc" not in spec and "storage" not in spec:
        return "Missing target storage definition: either spec.pvc or spec.storage is required"
    if spec.get("sourceRef"):
        return "spec.sourceRef is not supported by the simulator"
    kind = source_kind(dv)
    if kind not in ("blank", "pvc", *IMPORT_SOURCES):
        return f"unsupported or ambiguous DataVolume source {sorted(spec.get('source') or {})}"
    if "pvc" in spec and request_bytes(spec["pvc"]) is None:
        return "spec.pvc.resources.requests.storage is required"
    if "storage" in spec and request_bytes(spec["storage"]) is None and kind != "pvc":
        return "spec.storage.resources.requests.storage is required unless cloning"
    return ""


# --------------------------------------------------------------------------------------------
# StorageProfiles


class StorageProfileController(Controller):
    """CDI's StorageProfile controller: one cluster-scoped StorageProfile per StorageClass,
    with the class's provisioner, claimPropertySets and clone strategy in its status
    (`spec` values, when set, win, as in CDI)."""

    watches: ClassVar[tuple[str, ...]] = ("storageclasses", "storageprofiles")

    def keys_for(self, resource: str, obj: dict[str, Any]) -> Iterable[Key]:
        return [("storageprofiles", "", obj["metadata"]["name"])]

    def reconcile(self, key: Key) -> None:
        name = key[2]
        sc = self.sim.store.get("storageclasses", "", name)
        profile = self.sim.store.get("storageprofiles", "", name)
        if sc is None:
            if profile is not None:
                self.sim.client.delete("storageprofiles", "", name)
            return
        if profile is None:
            profile = self.sim.client.create("storageprofiles", {"metadata": {"name": name},
                                                                 "spec": {}})
        desired = self._status(sc, profile.get("spec") or {})
        current = profile.get("status") or {}
        if any(current.get(k) != v for k, v in desired.items()):
            self.sim.client.patch_status("storageprofiles", "", name, {"status": desired})

    @staticmethod
    def _status(sc: Mapping[str, Any], spec: Mapping[str, Any]) -> dict[str, Any]:
        strategy = annotations_of(sc).get(ANN_CLONE_STRATEGY, DEFAULT_CLONE_STRATEGY)
        return {
            "storageClass": sc["metadata"]["name"],
            "provisioner": sc.get("provisioner", ""),
            "claimPropertySets": spec.get("claimPropertySets") or claim_property_sets(sc),
            "cloneStrategy": spec.get("cloneStrategy") or strategy,
            "dataImportCronSourceFormat": "pvc",
        }


# --------------------------------------------------------------------------------------------
# CSI provisioner + PV binder + pvc/pv-protection


class ProvisionerController(Controller):
    """External-provisioner, PV controller and pvc/pv-protection for simulated CSI drivers.

    A PVC with a StorageClass gets a PV `pvc-<uid>` and is bound, at once for Immediate
    classes, and for WaitForFirstConsumer classes once the scheduler (the KubeVirt half of the
    simulator) annotates `volume.kubernetes.io/selected-node`, or CDI asks for immediate
    binding. A PVC without a class name gets the default class. A deleted PVC releases its PV,
    which is deleted under reclaimPolicy Delete. pvc-protection: every claim gets the
    `kubernetes.io/pvc-protection` finalizer, and a deleting claim keeps it (Terminating)
    while a scheduled pod lists it, completed or not (`pods.claim_pinners`).
    """

    watches: ClassVar[tuple[str, ...]] = (
        "persistentvolumeclaims",
        "persistentvolumes",
        "storageclasses",
        "pods",
    )

    def __init__(self, sim: Any) -> None:
        super().__init__(sim)
        self._announced: dict[tuple[str, str], str] = {}

    def keys_for(self, resource: str, obj: dict[str, Any]) -> Iterable[Key]:
        store = self.sim.store
        if resource == "persistentvolumeclaims":
            return [key_of(resource, obj)]
        if resource == "persistentvolumes":
            ref = obj.get("spec", {}).get("claimRef") or {}
            if ref.get("name"):
                return [("persistentvolumeclaims", ref.get("namespace", ""), ref["name"])]
            return []
        if resource == "storageclasses":
            return [key_of("persistentvolumeclaims", p)
                    for p in store.list("persistentvolumeclaims") if pvc_phase(p) == "Pending"]
        # pods: a finished or deleted pod may free a deleting claim
        namespace = obj["metadata"].get("namespace", "")
        return [("persistentvolumeclaims", namespace, c) for c in pod_claims(obj) if c]

    def reconcile(self, key: Key) -> None:
        _, namespace, name = key
        pvc = self.sim.store.get("persistentvolumeclaims", namespace, name)
        self._release_volumes(namespace, name, pvc)
        if pvc is None:
            return
        if is_deleting(pvc):
            self._protect(pvc)
            return
        if FINALIZER_PVC_PROTECTION not in (pvc["metadata"].get("finalizers") or []):
            pvc = self._add_protection(pvc)
        if pvc_phase(pvc) == "Bound" and pvc.get("spec", {}).get("volumeName"):
            return
        if populator.is_populator_target(pvc):
            return  # the CDI populator binds it (by rebinding the prime claim's PV)
        sc = self._storage_class(pvc)
        if sc is None or waits_for_consumer(pvc, sc):
            return
        self._provision_and_bind(pvc, sc)

    # -- class selection

    def _storage_class(self, pvc: dict[str, Any]) -> dict[str, Any] | None:
        """The claim's class; sets the default class on a claim without one (the admission
        plugin does this on create when a default exists; this catches later defaults)."""
        store, spec = self.sim.store, pvc.get("spec", {})
        name = spec.get("storageClassName")
        if name is None:
            default = default_class(store.list("storageclasses"), virt=False)
            if default is None:
                self._announce(pvc, "Normal", "FailedBinding",
                               "no persistent volumes available for this claim and no "
                               "storage class is set")
                return None
            name = default["metadata"]["name"]
            meta = pvc["metadata"]
            self.sim.client.merge_patch("persistentvolumeclaims", meta["namespace"],
                                        meta["name"], {"spec": {"storageClassName": name}})
        if not name:
            return None  # "" = static binding only; no simulated static PVs
        sc = store.get("storageclasses", "", name)
        if sc is None:
            self._announce(pvc, "Warning", "ProvisioningFailed",
                           f'storageclass.storage.k8s.io "{name}" not found')
            return None
        if waits_for_consumer(pvc, sc):
            self._announce(pvc, "Normal", "WaitForFirstConsumer",
                           "waiting for first consumer to be created before binding")
        return sc

    # -- provisioning and binding

    def _provision_and_bind(self, pvc: dict[str, Any], sc: dict[str, Any]) -> None:
        meta, spec = pvc["metadata"], pvc.get("spec", {})
        pv_name = f"pvc-{meta['uid']}"
        provisioner = sc.get("provisioner", "")
        pv = self.sim.store.get("persistentvolumes", "", pv_name)
        if pv is None:
            self._announce(pvc, "Normal", "Provisioning",
                           f'External provisioner is provisioning volume for claim '
                           f'"{meta["namespace"]}/{meta["name"]}"')
            pv = self._create_pv(pvc, sc, pv_name)
            self._announce(pvc, "Normal", "ProvisioningSucceeded",
                           f"Successfully provisioned volume {pv_name}")
        if pv.get("status", {}).get("phase") != "Bound":
            self.sim.client.patch_status("persistentvolumes", "", pv_name,
                                         {"status": {"phase": "Bound"}})
        anns = {ANN_BIND_COMPLETED: "yes", ANN_BOUND_BY_CONTROLLER: "yes",
                ANN_STORAGE_PROVISIONER: provisioner, ANN_BETA_STORAGE_PROVISIONER: provisioner}
        if spec.get("volumeName") != pv_name or any(
            annotations_of(pvc).get(k) != v for k, v in anns.items()
        ):
            self.sim.client.merge_patch(
                "persistentvolumeclaims", meta["namespace"], meta["name"],
                {"metadata": {"annotations": anns}, "spec": {"volumeName": pv_name}},
            )
        self.sim.client.patch_status(
            "persistentvolumeclaims", meta["namespace"], meta["name"],
            {"status": {"phase": "Bound",
                        "accessModes": pv["spec"]["accessModes"],
                        "capacity": {"storage": pv["spec"]["capacity"]["storage"]}}},
        )

    def _create_pv(self, pvc: dict[str, Any], sc: dict[str, Any], pv_name: str) -> dict[str, Any]:
        meta, spec = pvc["metadata"], pvc.get("spec", {})
        mode = spec.get("volumeMode") or "Filesystem"
        size = provisioned_capacity(request_bytes(spec) or 0, sc, mode)
        csi: dict[str, Any] = {"driver": sc.get("provisioner", ""), "volumeHandle": pv_name,
                               "volumeAttributes": dict(sc.get("parameters") or {})}
        if mode == "Filesystem":
            csi["fsType"] = "ext4"
        body = {
            "metadata": {"name": pv_name,
                         "annotations": {ANN_PROVISIONED_BY: sc.get("provisioner", "")}},
            "spec": {
                "capacity": {"storage": to_quantity(size)},
                "accessModes": list(spec.get("accessModes") or ["ReadWriteOnce"]),
                "volumeMode": mode,
                "persistentVolumeReclaimPolicy": sc.get("reclaimPolicy") or "Delete",
                "storageClassName": sc["metadata"]["name"],
                "mountOptions": list(sc.get("mountOptions") or []),
                "claimRef": {"apiVersion": "v1", "kind": "PersistentVolumeClaim",
                             "namespace": meta["namespace"], "name": meta["name"],
                             "uid": meta["uid"], "resourceVersion": meta["resourceVersion"]},
                "csi": csi,
            },
        }
        try:
            return self.sim.client.create("persistentvolumes", body)
        except ApiError as err:
            if err.code != 409:
                raise
            found = self.sim.client.get("persistentvolumes", "", pv_name)
            if found is None:
                raise
            return found

    # -- release and protection

    def _release_volumes(self, namespace: str, name: str, pvc: dict[str, Any] | None) -> None:
        """Reclaim PVs whose claim (this namespace/name, but not this uid) is gone."""
        uid = pvc["metadata"]["uid"] if pvc is not None else None
        for pv in self.sim.store.list("persistentvolumes"):
            ref = pv.get("spec", {}).get("claimRef") or {}
            if (ref.get("namespace"), ref.get("name")) != (namespace, name):
                continue
            if ref.get("uid") == uid:
                continue
            pv_name = pv["metadata"]["name"]
            if pv["spec"].get("persistentVolumeReclaimPolicy", "Delete") == "Delete":
                self._delete_pv(pv)
            elif pv.get("status", {}).get("phase") != "Released":
                self.sim.client.patch_status("persistentvolumes", "", pv_name,
                                             {"status": {"phase": "Released"}})

    def _delete_pv(self, pv: dict[str, Any]) -> None:
        meta = pv["metadata"]
        finalizers = [f for f in meta.get("finalizers") or [] if f != FINALIZER_PV_PROTECTION]
        if finalizers != list(meta.get("finalizers") or []):
            self.sim.client.merge_patch(
                "persistentvolumes", "", meta["name"],
                {"metadata": {"finalizers": finalizers,
                              "resourceVersion": meta["resourceVersion"]}},
            )
        if not is_deleting(pv):
            self.sim.client.delete("persistentvolumes", "", meta["name"])

    def _add_protection(self, pvc: dict[str, Any]) -> dict[str, Any]:
        """pvc-protection adds its finalizer to every claim that is not being deleted."""
        meta = pvc["metadata"]
        finalizers = [*(meta.get("finalizers") or []), FINALIZER_PVC_PROTECTION]
        return self.sim.client.merge_patch(
            "persistentvolumeclaims", meta["namespace"], meta["name"],
            {"metadata": {"finalizers": finalizers, "resourceVersion": meta["resourceVersion"]}})

    def _protect(self, pvc: dict[str, Any]) -> None:
        """pvc-protection: drop the finalizer once no scheduled pod lists the claim, completed
        pods included (upstream podUsesPVCForDeletion)."""
        meta = pvc["metadata"]
        finalizers = list(meta.get("finalizers") or [])
        if FINALIZER_PVC_PROTECTION not in finalizers:
            return
        if claim_pinners(self.sim.store, meta["namespace"], meta["name"]):
            return
        finalizers.remove(FINALIZER_PVC_PROTECTION)
        self.sim.client.merge_patch(
            "persistentvolumeclaims", meta["namespace"], meta["name"],
            {"metadata": {"finalizers": finalizers, "resourceVersion": meta["resourceVersion"]}},
        )

    def _announce(self, obj: dict[str, Any], type_: str, reason: str, message: str) -> None:
        """Record an event once per (object uid, reason) and message. Callers write status
        first, so whoever sees the event also sees the state it describes."""
        ident = (obj["metadata"].get("uid", ""), reason)
        if self._announced.get(ident) == message:
            return
        self._announced[ident] = message
        self.sim.client.event(obj, type_, reason, message)


# --------------------------------------------------------------------------------------------
# DataVolumes


@dataclass
class _Transfer:
    """In-memory state of one DataVolume fill (import, blank or clone)."""

    duration: float
    started: bool = False
    elapsed: float = 0.0
    last: float = field(default_factory=time.monotonic)
    last_write: float = 0.0
    retry_at: float = 0.0
    restarts: int = 0


@dataclass(frozen=True)
class _Flavor:
    """Phase names and event reasons of a transfer kind."""

    scheduled: str
    running: str
    succeeded_reason: str
    failed_reason: str


IMPORT = _Flavor("ImportScheduled", "ImportInProgress", "ImportSucceeded", "ImportFailed")
CLONE = _Flavor("CloneScheduled", "CloneInProgress", "CloneSucceeded", "CloneFailed")


class DataVolumeController(Controller):
    """CDI's DataVolume controllers (import, blank, clone) plus the DV -> PVC garbage collector.

    Phases: Pending -> [WaitForFirstConsumer] -> ImportScheduled/CloneScheduled ->
    ImportInProgress/CloneInProgress (progress "N.NN%") -> Succeeded ("100.0%"), or Failed.
    A copy takes `size GiB * copy_seconds_per_gib` seconds (a DV annotation
    `sim.vmstorage.dev/copy-seconds` overrides it); csi-clone and snapshot clones are instant.

    Faults (test API or the DV annotation `sim.vmstorage.dev/fault`), taken when a fill
    attempt starts. As upstream, a failing importer/cloner pod is restarted, not final:
    "fail" -> every attempt fails until the fault is cleared (phase stays *InProgress,
    Running=False reason Error, rising restartCount, a Warning ImportFailed/CloneFailed
    Event per attempt, back-off doubling up to 2 s); "fail-times:N" -> N failed attempts
    then success; "fatal" -> Failed (what only fatal import errors do upstream);
    "stall" -> progress freezes until cleared.
    """

    watches: ClassVar[tuple[str, ...]] = (
        "datavolumes",
        "persistentvolumeclaims",
        "pods",
        "storageprofiles",
        "storageclasses",
        "csidrivers",
    )

    def __init__(self, sim: Any) -> None:
        super().__init__(sim)
        self._transfers: dict[str, _Transfer] = {}
        self._announced: dict[tuple[str, str], str] = {}

    # -- event mapping

    def keys_for(self, resource: str, obj: dict[str, Any]) -> Iterable[Key]:
        store = self.sim.store
        namespace = obj["metadata"].get("namespace", "")
        if resource == "datavolumes":
            return [key_of(resource, obj)]
        if resource == "persistentvolumeclaims":
            name = populator.target_of_prime(obj) or obj["metadata"]["name"]
            keys = [("datavolumes", namespace, name)]  # owner, adopter or blocked creator
            keys += [key_of("datavolumes", dv) for dv in store.list("datavolumes")
                     if source_kind(dv) == "pvc" and clone_source(dv) == (namespace, name)]
            return keys
        unfinished = [dv for dv in store.list("datavolumes")
                      if dv.get("status", {}).get("phase") not in ("Succeeded", "Failed")]
        if resource == "pods":  # a pod that lets go of a clone source
            claims = pod_claims(obj)
            return [key_of("datavolumes", dv) for dv in unfinished
                    if source_kind(dv) == "pvc" and clone_source(dv)[0] == namespace
                    and clone_source(dv)[1] in claims]
        return [key_of("datavolumes", dv) for dv in unfinished]  # profiles and classes

    # -- reconcile

    def reconcile(self, key: Key) -> None:
        _, namespace, name = key
        dv = self.sim.store.get("datavolumes", namespace, name)
        if dv is None:
            self._collect_orphan(namespace, name)
            return
        if is_deleting(dv):
            self._finalize(dv)
            return
        if dv.get("status", {}).get("phase") in ("Succeeded", "Failed"):
            return
        problem = validate_dv(dv)
        if problem:
            self._fail(dv, None, "ValidationFailed", problem)
            return
        claim = self._claim(dv)
        if claim is None:
            return
        if populator.is_populator_target(claim):
            self._populate(dv, claim)
            return
        if pvc_phase(claim) != "Bound":
            self._wait_for_bind(dv, claim)
        elif annotations_of(claim).get(ANN_POPULATED_FOR) == name:
            self._succeed(dv, claim, None)  # adopted claims count as populated
        elif content_hash(claim) is not None:
            self._succeed(dv, claim, None)  # filled earlier (e.g. before a simulator restart)
        elif source_kind(dv) == "pvc":
            self._clone(dv, claim)
        else:
            self._fill(dv, claim, IMPORT, "" if source_kind(dv) == "blank" else import_hash(dv))

    # -- the claim

    def _claim(self, dv: dict[str, Any]) -> dict[str, Any] | None:
        """The DV's own (or adopted) PVC; creates it when missing. None = not there yet."""
        meta = dv["metadata"]
        claim = self.sim.store.get("persistentvolumeclaims", meta["namespace"], meta["name"])
        if claim is not None and is_owned_by(claim, dv):
            return None if is_deleting(claim) else claim
        if claim is not None:
            return self._adopt(dv, claim)
        spec = self._claim_spec(dv)
        if spec is None:
            return None
        anns = {ANN_CREATED_FOR_DV: meta["uid"], ANN_CONTENT_TYPE: "kubevirt",
                ANN_POD_PHASE: "Pending"}
        dv_anns = annotations_of(dv)
        if ANN_IMMEDIATE_BIND in dv_anns:
            anns[ANN_IMMEDIATE_BIND] = dv_anns[ANN_IMMEDIATE_BIND]
        kind = source_kind(dv)
        if kind in IMPORT_SOURCES:
            anns[ANN_IMPORT_ENDPOINT] = import_url(dv)
            anns[ANN_IMPORT_SOURCE] = kind
        elif kind == "blank":
            anns[ANN_IMPORT_SOURCE] = "none"
        else:
            anns[ANN_CLONE_REQUEST] = "/".join(clone_source(dv))
        class_name = spec.get("storageClassName")
        sc = self.sim.store.get("storageclasses", "", class_name) if class_name else None
        if populator.uses_populator(dv, sc, self.sim.store):
            anns[populator.ANN_USE_POPULATOR] = "true"
            spec = {**spec, "dataSourceRef": populator.data_source_ref(dv, kind == "pvc")}
        labels = {**(meta.get("labels") or {}), "app": "containerized-data-importer"}
        body = {"metadata": {"name": meta["name"], "namespace": meta["namespace"],
                             "labels": labels, "annotations": anns,
                             "ownerReferences": [owner_reference(dv)]},
                "spec": spec}
        created = self.sim.client.create("persistentvolumeclaims", body)
        self._status(dv, "Pending", created, progress="N/A")
        return None  # the PVC's watch event brings us back

    def _adopt(self, dv: dict[str, Any], claim: dict[str, Any]) -> dict[str, Any] | None:
        meta = dv["metadata"]
        if is_deleting(claim):
            return None  # wait for the old claim to go, then create ours
        if annotations_of(dv).get(ANN_ALLOW_CLAIM_ADOPTION) != "true":
            message = f'Resource "{meta["name"]}" already exists and is not managed by DataVolume'
            self._status(dv, "Pending", None, bound=("False", "ErrResourceExists", message))
            self._announce(dv, "Warning", "ErrResourceExists", message)
            return None
        refs = [*(claim["metadata"].get("ownerReferences") or []), owner_reference(dv)]
        if any(r.get("controller") for r in refs[:-1]):
            refs[-1]["controller"] = False  # an object has at most one controller
        return self.sim.client.merge_patch(
            "persistentvolumeclaims", meta["namespace"], meta["name"],
            {"metadata": {"ownerReferences": refs,
                          "annotations": {ANN_POPULATED_FOR: meta["name"]},
                          "resourceVersion": claim["metadata"]["resourceVersion"]}},
        )

    def _claim_spec(self, dv: dict[str, Any]) -> dict[str, Any] | None:
        """The PVC spec to create, or None (DV failed or waiting; status already written)."""
        spec = dv["spec"]
        source: dict[str, Any] | None = None
        if source_kind(dv) == "pvc":
            source = self._clone_source_ready(dv)
            if source is None:
                return None
        if "pvc" in spec:
            claim_spec = json.loads(json.dumps(spec["pvc"]))
        else:
            built = self._storage_spec(dv, spec["storage"], source)
            if built is None:
                return None
            claim_spec = built
        if source is not None and not self._size_ok(dv, source, claim_spec):
            return None
        return dict(claim_spec)

    def _storage_spec(
        self, dv: dict[str, Any], storage: Mapping[str, Any], source: dict[str, Any] | None
    ) -> dict[str, Any] | None:
        """CDI `storage` API: class default, access/volume modes from the StorageProfile,
        size detected for clones, filesystem overhead added in Filesystem mode."""
        store = self.sim.store
        class_name = storage.get("storageClassName")
        if class_name is None:
            default = default_class(store.list("storageclasses"), virt=True)
            class_name = default["metadata"]["name"] if default else None
        modes = list(storage.get("accessModes") or [])
        volume_mode = storage.get("volumeMode")
        if not modes or not volume_mode:
            profile = store.get("storageprofiles", "", class_name) if class_name else None
            sets = (profile or {}).get("status", {}).get("claimPropertySets") or []
            chosen = next((s for s in sets if not volume_mode or
                           s.get("volumeMode") == volume_mode), None)
            if chosen is None:
                self._status(dv, "Pending", None)
                self._announce(dv, "Warning", "ErrClaimNotValid",
                               "DataVolume.storage spec is missing accessMode and volumeMode, "
                               f"cannot get access mode from StorageProfile {class_name}")
                return None
            modes = modes or list(chosen.get("accessModes") or ["ReadWriteOnce"])
            volume_mode = volume_mode or chosen.get("volumeMode") or "Filesystem"
        size = request_bytes(storage)
        if size is None and source is not None:
            size = detect_clone_size(source, volume_mode)
        elif volume_mode == "Filesystem":
            size = required_space(size or 0)
        result: dict[str, Any] = {"accessModes": modes, "volumeMode": volume_mode,
                                  "resources": {"requests": {"storage": str(size)}}}
        if class_name is not None:
            result["storageClassName"] = class_name
        if storage.get("selector"):
            result["selector"] = storage["selector"]
        return result

    def _wait_for_bind(self, dv: dict[str, Any], claim: dict[str, Any]) -> None:
        class_name = claim.get("spec", {}).get("storageClassName")
        sc = self.sim.store.get("storageclasses", "", class_name) if class_name else None
        phase = "WaitForFirstConsumer" if waits_for_consumer(claim, sc) else "Pending"
        self._status(dv, phase, claim, progress="N/A")

    # -- clone

    def _clone_source_ready(self, dv: dict[str, Any]) -> dict[str, Any] | None:
        """The clone source PVC if it exists and is filled; None (status written) if not."""
        src_ns, src_name = clone_source(dv)
        source = self.sim.store.get("persistentvolumeclaims", src_ns, src_name)
        if source is None or is_deleting(source):
            message = f"The source pvc {src_ns}/{src_name} doesn't exist"
            self._status(dv, "Pending", None, running=("False", "CloneWithoutSource", message))
            self._announce(dv, "Warning", "CloneWithoutSource", message)
            return None
        if ANN_CREATED_FOR_DV in annotations_of(source) and content_hash(source) is None:
            message = f"source pvc {src_ns}/{src_name} is not populated yet"
            self._status(dv, "CloneScheduled", None, running=("False", "Pending", message))
            return None
        return source

    def _size_ok(self, dv: dict[str, Any], source: dict[str, Any],
                 claim_spec: Mapping[str, Any]) -> bool:
        """Upstream's clone size rules (pvc-clone-controller's validation, then the clone
        planner's): a `pvc:` request, or a sized `storage:` request of a Block source, must be
        >= the source's request; then, unless the clone is permissive, the target claim's
        request (after any filesystem overhead) must be too. Permissive (detectCloneSize): a
        clone without a size whose source is larger than what was detected, or a sized
        Filesystem-to-Block clone of KubeVirt content whose request holds the image."""
        if ANN_PERMISSIVE_CLONE in annotations_of(dv):
            return True
        spec = dv["spec"]
        source_request = request_bytes(source.get("spec", {})) or 0
        source_mode = source.get("spec", {}).get("volumeMode") or "Filesystem"
        asked = request_bytes(spec.get("pvc") or spec.get("storage") or {})
        checked_on_the_dv = asked is not None and ("pvc" in spec or source_mode == "Block")
        if checked_on_the_dv and (asked or 0) < source_request:
            return self._too_small(dv)
        target_mode = claim_spec.get("volumeMode") or "Filesystem"
        if asked is None:
            detected = detect_clone_size(source, target_mode)
            permissive = (capacity_bytes(source) or source_request) > detected
        elif target_mode == "Block" and source_mode == "Filesystem" and (
                annotations_of(source).get(ANN_CONTENT_TYPE) == "kubevirt"):
            permissive = asked >= detect_clone_size(source, "Block")
        else:
            permissive = False
        if permissive or (request_bytes(claim_spec) or 0) >= source_request:
            return True
        return self._too_small(dv)

    def _too_small(self, dv: dict[str, Any]) -> bool:
        self._fail(dv, None, "CloneValidationFailed", TOO_SMALL)
        return False

    def _clone(self, dv: dict[str, Any], claim: dict[str, Any]) -> None:
        """Wait until the source is free, then copy it (its hash) into the target."""
        source = self._clone_source_ready(dv)
        if source is None:
            return
        meta = source["metadata"]
        transfer = self._transfers.get(dv["metadata"]["uid"])
        if transfer is None or not transfer.started:
            users = claim_users(self.sim.store, meta["namespace"], meta["name"])
            if users:  # clone/common.go: a Warning per pod, the DV just waits
                self._status(dv, "CloneScheduled", claim, progress="N/A")
                for pod in users:
                    self._announce(dv, "Warning", "CloneSourceInUse",
                                   f"pod {meta['namespace']}/{pod} using "
                                   f"PersistentVolumeClaim {meta['name']}", key=pod)
                return
        self._fill(dv, claim, CLONE, content_hash(source) or "", source=source)

    def _clone_choice(self, claim: dict[str, Any], source: dict[str, Any]) -> CloneChoice:
        store = self.sim.store
        src_class = source.get("spec", {}).get("storageClassName") or ""
        dst_class = claim.get("spec", {}).get("storageClassName") or ""
        src_sc = store.get("storageclasses", "", src_class) if src_class else None
        dst_sc = store.get("storageclasses", "", dst_class) if dst_class else None
        profile = store.get("storageprofiles", "", dst_class) if dst_class else None
        strategy = ((profile or {}).get("status", {}).get("cloneStrategy")
                    or DEFAULT_CLONE_STRATEGY)
        src_size = request_bytes(source.get("spec", {})) or 0
        return choose_clone(
            strategy,
            same_provisioner=bool(src_sc and dst_sc
                                  and src_sc.get("provisioner") == dst_sc.get("provisioner")),
            same_volume_mode=(source.get("spec", {}).get("volumeMode") or "Filesystem")
            == (claim.get("spec", {}).get("volumeMode") or "Filesystem"),
            expands=(request_bytes(claim.get("spec", {})) or 0) > src_size,
            allow_expansion=bool((dst_sc or {}).get("allowVolumeExpansion")),
        )

    # -- the fill (import, blank, clone)

    def _fill(self, dv: dict[str, Any], claim: dict[str, Any], flavor: _Flavor, digest: str,
              source: dict[str, Any] | None = None) -> None:
        """Advance the fill one step; schedules its own next tick."""
        uid, meta = dv["metadata"]["uid"], dv["metadata"]
        now = time.monotonic()
        transfer = self._transfers.get(uid)
        if transfer is None:
            transfer = _Transfer(self._duration(dv, claim), restarts=self._restarts(dv))
            self._transfers[uid] = transfer
            self._status(dv, flavor.scheduled, claim, progress="N/A",
                         running=("False", "Pending", ""))
            self._tick(dv, 0.0)
            return
        if transfer.retry_at > now:
            self.sim.enqueue(self, ("datavolumes", meta["namespace"], meta["name"]),
                             transfer.retry_at - now)
            return
        if not transfer.started and not self._start(dv, claim, flavor, transfer, source):
            return
        stalled = self.sim.faults.take("datavolumes", meta["namespace"], meta["name"],
                                       FaultAction.STALL, obj=dv) is not None
        if not stalled:
            transfer.elapsed += now - transfer.last
        transfer.last = now
        if transfer.duration > 0:
            fraction = transfer.elapsed / transfer.duration
        else:
            fraction = 0.0 if stalled else 1.0
        if fraction >= 1 and not stalled:
            self._complete(dv, claim, flavor, digest)
            return
        if not stalled and now - transfer.last_write >= self.sim.config.progress_tick:
            transfer.last_write = now
            self._status(dv, flavor.running, claim, progress=format_progress(min(fraction, 0.9999)),
                         running=("True", "", ""), restarts=transfer.restarts)
        self._tick(dv, self.sim.config.progress_tick)

    def _start(self, dv: dict[str, Any], claim: dict[str, Any], flavor: _Flavor,
               transfer: _Transfer, source: dict[str, Any] | None) -> bool:
        """Start one attempt (the importer/cloner pod). False when a fault failed it."""
        meta = dv["metadata"]
        fault = self.sim.faults.take("datavolumes", meta["namespace"], meta["name"],
                                     FaultAction.FAIL, obj=dv)
        if fault is not None and fault.action is FaultAction.FATAL:
            self._fail(dv, claim, flavor.failed_reason,
                       f"Unable to process data: {fault.message}", restarts=transfer.restarts)
            return False
        if fault is not None:  # the importer/cloner pod fails, restarts and tries again
            transfer.restarts += 1
            backoff = min(max(self.sim.config.progress_tick, 0.05) * 2 ** min(
                transfer.restarts - 1, 5), 2.0)
            transfer.retry_at = time.monotonic() + backoff
            message = f"Unable to process data: {fault.message}"
            self.sim.client.merge_patch(
                "persistentvolumeclaims", claim["metadata"]["namespace"],
                claim["metadata"]["name"],
                {"metadata": {"annotations": {ANN_POD_RESTARTS: str(transfer.restarts)}}})
            self._status(dv, flavor.running, claim, progress=format_progress(0.0),
                         running=("False", "Error", message), restarts=transfer.restarts)
            self.sim.client.event(dv, "Warning", flavor.failed_reason, message)
            self._tick(dv, transfer.retry_at - time.monotonic())
            return False
        transfer.started = True
        transfer.last = time.monotonic()
        anns = {ANN_POD_PHASE: "Running"}
        if source is not None:
            choice = self._clone_choice(claim, source)
            anns[ANN_CLONE_TYPE] = choice.clone_type
            if choice.fallback_reason:
                anns[ANN_CLONE_FALLBACK_REASON] = choice.fallback_reason
            if choice.clone_type != "copy":
                transfer.duration = 0.0  # storage-side clones are near instant
        self.sim.client.merge_patch("persistentvolumeclaims", claim["metadata"]["namespace"],
                                    claim["metadata"]["name"],
                                    {"metadata": {"annotations": anns}})
        self._status(dv, flavor.running, claim, progress=format_progress(0.0),
                     running=("True", "", ""), restarts=transfer.restarts)
        transfer.last_write = time.monotonic()
        return True

    def _complete(self, dv: dict[str, Any], claim: dict[str, Any], flavor: _Flavor,
                  digest: str) -> None:
        """Write the disk content (hash) first, so Succeeded always implies the content."""
        if populator.target_of_prime(claim) is not None:
            self._rebind(dv, claim, flavor, digest)
            return
        cmeta = claim["metadata"]
        self.sim.client.merge_patch(
            "persistentvolumeclaims", cmeta["namespace"], cmeta["name"],
            {"metadata": {"annotations": {CONTENT_HASH_ANNOTATION: digest,
                                          ANN_POD_PHASE: "Succeeded"}}})
        self._succeed(dv, claim, flavor)

    # -- populators (see cdi_populator)

    def _populate(self, dv: dict[str, Any], target: dict[str, Any]) -> None:
        """The populator flow: PendingPopulation while a WaitForFirstConsumer target has no
        node, then a prime claim that is filled and whose PV is handed to the target."""
        meta, store = target["metadata"], self.sim.store
        flavor = CLONE if source_kind(dv) == "pvc" else IMPORT
        if pvc_phase(target) == "Bound":
            if content_hash(target) is not None:
                self._succeed(dv, target, None)
            return
        class_name = (target.get("spec") or {}).get("storageClassName")
        sc = store.get("storageclasses", "", class_name) if class_name else None
        if waits_for_consumer(target, sc):  # shouldBeMarkedPendingPopulation
            self._status(dv, "PendingPopulation", target, progress="N/A")
            return
        prime = store.get("persistentvolumeclaims", meta["namespace"],
                          populator.prime_name(target))
        if prime is None:
            self.sim.client.create("persistentvolumeclaims", populator.prime_body(target))
            self._status(dv, flavor.scheduled, target, progress="N/A")
            return
        if is_deleting(prime):
            return
        if populator.ANN_SELECTED_NODE in annotations_of(target) and \
                populator.ANN_SELECTED_NODE not in annotations_of(prime):
            node = annotations_of(target)[populator.ANN_SELECTED_NODE]
            self.sim.client.merge_patch("persistentvolumeclaims", meta["namespace"],
                                        prime["metadata"]["name"], {"metadata": {
                                            "annotations": {populator.ANN_SELECTED_NODE: node}}})
            return
        if pvc_phase(prime) != "Bound":
            self._status(dv, flavor.scheduled, target, progress="N/A")
            return
        if flavor is CLONE:
            self._clone(dv, prime)
        else:
            self._fill(dv, prime, IMPORT, "" if source_kind(dv) == "blank" else import_hash(dv))

    def _rebind(self, dv: dict[str, Any], prime: dict[str, Any], flavor: _Flavor,
                digest: str) -> None:
        """The filled prime claim's PV moves to the target claim; the prime claim goes."""
        namespace = prime["metadata"]["namespace"]
        target_name = populator.target_of_prime(prime) or dv["metadata"]["name"]
        target = self.sim.store.get("persistentvolumeclaims", namespace, target_name)
        pv_name = (prime.get("spec") or {}).get("volumeName")
        pv = self.sim.store.get("persistentvolumes", "", pv_name) if pv_name else None
        if target is None or pv is None:
            return
        tmeta = target["metadata"]
        self.sim.client.merge_patch("persistentvolumes", "", pv["metadata"]["name"], {"spec": {
            "claimRef": {"apiVersion": "v1", "kind": "PersistentVolumeClaim",
                         "namespace": namespace, "name": target_name, "uid": tmeta["uid"],
                         "resourceVersion": tmeta["resourceVersion"]}}})
        self.sim.client.merge_patch("persistentvolumeclaims", namespace, target_name, {
            "metadata": {"annotations": {CONTENT_HASH_ANNOTATION: digest,
                                         ANN_POD_PHASE: "Succeeded",
                                         ANN_BIND_COMPLETED: "yes",
                                         ANN_BOUND_BY_CONTROLLER: "yes"}},
            "spec": {"volumeName": pv["metadata"]["name"]}})
        bound = self.sim.client.patch_status("persistentvolumeclaims", namespace, target_name, {
            "status": {"phase": "Bound", "accessModes": pv["spec"]["accessModes"],
                       "capacity": {"storage": pv["spec"]["capacity"]["storage"]}}})
        self.sim.client.delete("persistentvolumeclaims", namespace, prime["metadata"]["name"])
        self._succeed(dv, bound, flavor)

    def _succeed(self, dv: dict[str, Any], claim: dict[str, Any], flavor: _Flavor | None) -> None:
        transfer = self._transfers.pop(dv["metadata"]["uid"], None)
        restarts = transfer.restarts if transfer else None
        self._status(dv, "Succeeded", claim, progress="100.0%",
                     running=("False", "Completed", ""), restarts=restarts)
        if flavor is not None:
            self._announce(dv, "Normal", flavor.succeeded_reason,
                           f"Successfully {'imported' if flavor is IMPORT else 'cloned'} "
                           f"into PVC {claim['metadata']['name']}")

    def _fail(self, dv: dict[str, Any], claim: dict[str, Any] | None, reason: str,
              message: str, restarts: int | None = None) -> None:
        self._transfers.pop(dv["metadata"]["uid"], None)
        self._status(dv, "Failed", claim, running=("False", "Error", message), restarts=restarts)
        self._announce(dv, "Warning", reason, message)

    def _duration(self, dv: dict[str, Any], claim: dict[str, Any]) -> float:
        return copy_duration(dv, claim, self.sim.config.copy_seconds_per_gib)

    @staticmethod
    def _restarts(dv: Mapping[str, Any]) -> int:
        return int(dv.get("status", {}).get("restartCount") or 0)

    def _tick(self, dv: dict[str, Any], delay: float) -> None:
        meta = dv["metadata"]
        self.sim.enqueue(self, ("datavolumes", meta["namespace"], meta["name"]), max(delay, 0))

    # -- status and events

    def _status(
        self,
        dv: dict[str, Any],
        phase: str,
        claim: dict[str, Any] | None,
        *,
        progress: str | None = None,
        running: tuple[str, str, str] = ("False", "", ""),
        bound: tuple[str, str, str] | None = None,
        restarts: int | None = None,
    ) -> None:
        """Write phase, progress, claimName, restartCount and the Bound/Ready/Running
        conditions, skipping the write when nothing changed."""
        current = dv.get("status") or {}
        if bound is None:
            bound = self._bound_condition(dv, claim)
        conditions = current.get("conditions") or []
        conditions = set_condition(conditions, "Bound", *bound)
        ready = ("True", "", "") if phase == "Succeeded" else ("False", phase, "")
        conditions = set_condition(conditions, "Ready", *ready)
        conditions = set_condition(conditions, "Running", *running)
        status: dict[str, Any] = {"phase": phase, "conditions": conditions}
        if claim is not None:
            status["claimName"] = dv["metadata"]["name"]  # the target, also while a prime fills
        if progress is not None:
            status["progress"] = progress
        if restarts is not None:
            status["restartCount"] = restarts
        elif "restartCount" not in current:
            status["restartCount"] = 0
        if all(current.get(k) == v for k, v in status.items()):
            return
        meta = dv["metadata"]
        updated = self.sim.client.patch_status("datavolumes", meta["namespace"], meta["name"],
                                               {"status": status})
        dv["status"] = updated.get("status", status)

    @staticmethod
    def _bound_condition(dv: Mapping[str, Any], claim: Mapping[str, Any] | None
                         ) -> tuple[str, str, str]:
        if claim is None:
            bound = get_bound(dv)
            return bound if bound else ("Unknown", "", "No PVC found")
        name = claim["metadata"]["name"]
        if pvc_phase(claim) == "Bound":
            return ("True", "Bound", f"PVC {name} Bound")
        return ("False", "Pending", f"PVC {name} Pending")

    def _announce(self, obj: dict[str, Any], type_: str, reason: str, message: str,
                  key: str = "") -> None:
        ident = (obj["metadata"].get("uid", ""), reason + key)
        if self._announced.get(ident) == message:
            return
        self._announced[ident] = message
        self.sim.client.event(obj, type_, reason, message)

    # -- deletion (the garbage collector's part)

    def _collect_orphan(self, namespace: str, name: str) -> None:
        """Background deletion: the DV is gone, delete the PVC it owned."""
        claim = self.sim.store.get("persistentvolumeclaims", namespace, name)
        if claim is None or is_deleting(claim):
            return
        live = {dv["metadata"]["uid"] for dv in self.sim.store.list("datavolumes", namespace)}
        refs = claim["metadata"].get("ownerReferences") or []
        owners = [r for r in refs if r.get("kind") == "DataVolume" and r.get("name") == name]
        if owners and not any(r.get("uid") in live for r in owners):
            if len(owners) == len(refs):
                self.sim.client.delete("persistentvolumeclaims", namespace, name)
            else:
                self._drop_owner_refs(claim, {str(r.get("uid")) for r in owners})

    def _finalize(self, dv: dict[str, Any]) -> None:
        """Foreground and orphan deletion of a DV, as the garbage collector does them."""
        meta = dv["metadata"]
        self._transfers.pop(meta["uid"], None)
        finalizers = list(meta.get("finalizers") or [])
        claim = self.sim.store.get("persistentvolumeclaims", meta["namespace"], meta["name"])
        owned = claim is not None and is_owned_by(claim, dv)
        if FINALIZER_ORPHAN in finalizers:
            if owned and claim is not None:
                self._drop_owner_refs(claim, {meta["uid"]})
            finalizers.remove(FINALIZER_ORPHAN)
        elif FINALIZER_FOREGROUND in finalizers:
            if owned and claim is not None:
                if not is_deleting(claim):
                    self.sim.client.delete("persistentvolumeclaims", meta["namespace"],
                                           meta["name"])
                return  # the PVC's deletion event brings us back
            finalizers.remove(FINALIZER_FOREGROUND)
        else:
            return
        self.sim.client.merge_patch(
            "datavolumes", meta["namespace"], meta["name"],
            {"metadata": {"finalizers": finalizers, "resourceVersion": meta["resourceVersion"]}})

    def _drop_owner_refs(self, claim: dict[str, Any], uids: set[str]) -> None:
        meta = claim["metadata"]
        refs = [r for r in meta.get("ownerReferences") or [] if r.get("uid") not in uids]
        self.sim.client.merge_patch(
            "persistentvolumeclaims", meta["namespace"], meta["name"],
            {"metadata": {"ownerReferences": refs or None,
                          "resourceVersion": meta["resourceVersion"]}})


def get_bound(dv: Mapping[str, Any]) -> tuple[str, str, str] | None:
    """The DV's current Bound condition as (status, reason, message), None if absent."""
    for cond in dv.get("status", {}).get("conditions") or []:
        if cond.get("type") == "Bound":
            return (str(cond.get("status", "Unknown")), str(cond.get("reason", "")),
                    str(cond.get("message", "")))
    return None


CONTROLLERS: Sequence[type[Controller]] = (
    StorageProfileController,
    ProvisionerController,
    DataVolumeController,
)
"""The storage controllers, in the order they are built."""
