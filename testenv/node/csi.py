"""A CSI external-provisioner for every StorageClass of the test environment.

Upstream's PV binder (kube-controller-manager) decides when a claim needs dynamic
provisioning: it annotates the claim ``volume.kubernetes.io/storage-provisioner`` (for
WaitForFirstConsumer once the scheduler set ``volume.kubernetes.io/selected-node``). Then,
as external-provisioner does, a PV ``pvc-<claim uid>`` pre-bound to the claim is created,
and the binder binds the two. Claims whose ``dataSourceRef`` is a CDI populator's source
are skipped (the populator provisions a prime claim instead and hands its PV over). A
Released PV with reclaim policy Delete that we provisioned is deleted.

Also: a bound claim gets its PV's simulated content hash (a populator's PV carries it to the
claim it is handed to); ``sim.vmstorage.dev/capacity-overhead`` on a class (e.g. ``-1%``)
makes its Block PVs that much smaller; ``sim.vmstorage.dev/claim-property-sets`` on a class
is written into its StorageProfile's ``spec.claimPropertySets`` (what an administrator
does for a provisioner CDI does not know).
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from typing import Any, ClassVar

from testenv.node.runtime import (
    CONTENT_HASH_ANNOTATION,
    Controller,
    Key,
    annotations_of,
    content_hash,
    is_deleting,
)
from testenv.quantity import to_bytes

PVC = "persistentvolumeclaims"
PV = "persistentvolumes"
SC = "storageclasses"
PROFILE = "storageprofiles"
PROVISIONER_ANNOTATION = "volume.kubernetes.io/storage-provisioner"
SELECTED_NODE_ANNOTATION = "volume.kubernetes.io/selected-node"
PROVISIONED_BY = "pv.kubernetes.io/provisioned-by"
OVERHEAD_ANNOTATION = "sim.vmstorage.dev/capacity-overhead"
CLAIM_PROPERTY_SETS_ANNOTATION = "sim.vmstorage.dev/claim-property-sets"
POPULATOR_GROUPS = frozenset({"cdi.kubevirt.io", "forklift.cdi.kubevirt.io"})


class Provisioner(Controller):
    """external-provisioner + deleter for every class (see the module docstring)."""

    watches: ClassVar[tuple[str, ...]] = (PVC, PV, SC, PROFILE)

    def keys_for(self, resource: str, obj: dict[str, Any]) -> Iterable[Key]:
        meta = obj.get("metadata") or {}
        if resource == PVC:
            return [(PVC, meta.get("namespace", ""), meta["name"])]
        if resource == PV:
            keys: list[Key] = [(PV, "", meta["name"])]
            ref = (obj.get("spec") or {}).get("claimRef") or {}
            if ref.get("name"):
                keys.append((PVC, ref.get("namespace", ""), ref["name"]))
            return keys
        if resource == SC:
            return [(PROFILE, "", meta["name"])]
        return [(PROFILE, "", meta["name"])]

    def reconcile(self, key: Key) -> None:
        resource, namespace, name = key
        if resource == PVC:
            self._claim(namespace, name)
        elif resource == PV:
            self._volume(name)
        else:
            self._profile(name)

    def _claim(self, namespace: str, name: str) -> None:
        pvc = self.sim.store.get(PVC, namespace, name)
        if pvc is None or is_deleting(pvc):
            return
        spec = pvc.get("spec") or {}
        if spec.get("volumeName"):
            self._sync_content(pvc)
            return
        sc = self.sim.store.get(SC, "", str(spec.get("storageClassName") or ""))
        annotations = annotations_of(pvc)
        if sc is None or annotations.get(PROVISIONER_ANNOTATION) != sc.get("provisioner"):
            return
        ref = spec.get("dataSourceRef") or {}
        if ref.get("apiGroup") in POPULATOR_GROUPS:
            return
        if sc.get("volumeBindingMode") == "WaitForFirstConsumer" and \
                SELECTED_NODE_ANNOTATION not in annotations:
            return
        pv_name = f"pvc-{pvc['metadata']['uid']}"
        if self.sim.store.get(PV, "", pv_name) is not None:
            return
        self.sim.client.create(PV, self._pv_body(pvc, sc, pv_name))
        self.sim.client.event(pvc, "Normal", "ProvisioningSucceeded",
                              f"Successfully provisioned volume {pv_name}")

    def _pv_body(self, pvc: dict[str, Any], sc: dict[str, Any], pv_name: str) -> dict[str, Any]:
        spec = pvc.get("spec") or {}
        request = str(((spec.get("resources") or {}).get("requests") or {}).get("storage") or
                      "1Gi")
        mode = spec.get("volumeMode") or "Filesystem"
        capacity = request
        overhead = annotations_of(sc).get(OVERHEAD_ANNOTATION, "").strip()
        if overhead.endswith("%") and mode == "Block":
            capacity = str(int(to_bytes(request) * (1 + float(overhead[:-1]) / 100)))
        meta = pvc["metadata"]
        provisioner = str(sc.get("provisioner"))
        body: dict[str, Any] = {
            "metadata": {"name": pv_name, "annotations": {PROVISIONED_BY: provisioner}},
            "spec": {
                "capacity": {"storage": capacity},
                "accessModes": list(spec.get("accessModes") or ["ReadWriteOnce"]),
                "volumeMode": mode,
                "storageClassName": sc["metadata"]["name"],
                "persistentVolumeReclaimPolicy": sc.get("reclaimPolicy") or "Delete",
                "claimRef": {"apiVersion": "v1", "kind": "PersistentVolumeClaim",
                             "namespace": meta["namespace"], "name": meta["name"],
                             "uid": meta["uid"], "resourceVersion": meta["resourceVersion"]},
                "csi": {"driver": provisioner, "volumeHandle": pv_name},
            },
        }
        if mode == "Filesystem":
            body["spec"]["csi"]["fsType"] = "ext4"
        return body

    def _volume(self, name: str) -> None:
        pv = self.sim.store.get(PV, "", name)
        if pv is None or is_deleting(pv):
            return
        spec = pv.get("spec") or {}
        if ((pv.get("status") or {}).get("phase") == "Released"
                and spec.get("persistentVolumeReclaimPolicy") == "Delete"
                and PROVISIONED_BY in annotations_of(pv)):
            self.sim.client.delete(PV, "", name)

    def _sync_content(self, pvc: dict[str, Any]) -> None:
        pv = self.sim.store.get(PV, "", str(pvc["spec"]["volumeName"]))
        if pv is None:
            return
        value = content_hash(pv)
        if value is None or content_hash(pvc) == value:
            return
        ref = (pv.get("spec") or {}).get("claimRef") or {}
        if ref.get("uid") not in (None, pvc["metadata"]["uid"]):
            return
        meta = pvc["metadata"]
        self.sim.client.merge_patch(PVC, meta["namespace"], meta["name"], {
            "metadata": {"annotations": {CONTENT_HASH_ANNOTATION: value}}})

    def _profile(self, name: str) -> None:
        profile = self.sim.store.get(PROFILE, "", name)
        sc = self.sim.store.get(SC, "", name)
        if profile is None or sc is None:
            return
        text = annotations_of(sc).get(CLAIM_PROPERTY_SETS_ANNOTATION)
        if not text:
            return
        try:
            wanted = json.loads(text)
        except ValueError:
            return
        if (profile.get("spec") or {}).get("claimPropertySets") == wanted:
            return
        self.sim.client.merge_patch(PROFILE, "", name, {"spec": {"claimPropertySets": wanted}})
