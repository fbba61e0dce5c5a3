"""A CSI external-provisioner for every StorageClass of the test environment.

Upstream's PV binder (kube-controller-manager) decides when a claim needs dynamic
provisioning: it annotates the claim ``volume.kubernetes.io/storage-provisioner`` (for
WaitForFirstConsumer once the scheduler set ``volume.kubernetes.io/selected-node``). Then,
as external-provisioner does, a PV ``pvc-<claim uid>`` pre-bound to the claim is created,
and the binder binds the two. Claims whose ``dataSourceRef`` is a CDI populator's source
are skipped (the populator provisions a prime claim instead and hands its PV over). A claim
whose data source is another claim is a CSI clone (CDI's ``csi-clone`` strategy, its
``tmp-pvc-<uid>``): provisioned once external-provisioner's checks pass (the source Bound, of
the same class and volume mode, no larger than the request), its PV holding the source's
content. A Released PV with reclaim policy Delete that we provisioned is deleted.

Which drivers are CSI drivers is the CSIDriver objects' business (``testenv.seed.csi_drivers``
registers the seed's): CDI reads them to choose its populators; this provisioner serves every
class alike.

Also: the disk's content is its PV's (``CONTENT_HASH_ANNOTATION``); a bound claim gets its
PV's (so a populator's PV carries it to the claim CDI rebinds it to);
``sim.vmstorage.dev/capacity-overhead`` on a class (e.g. ``-1%``) makes its Block PVs that
much smaller; ``sim.vmstorage.dev/claim-property-sets`` on a class is written into its
StorageProfile's ``spec.claimPropertySets`` (what an administrator does for a provisioner CDI
does not know).
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping
from typing import Any, ClassVar

from testenv.node.runtime import (
    CONTENT_HASH_ANNOTATION,
    Controller,
    Key,
    Simulator,
    Store,
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
PRIME_PREFIX = "prime-"
TMP_PREFIX = "tmp-pvc-"


def handed_to(store: Store, pvc: Mapping[str, Any]) -> dict[str, Any] | None:
    """The claim CDI hands ``pvc``'s volume to once it is populated, if ``pvc`` is one of its
    populators' temporary claims and that claim is not bound yet: a ``prime-<uid>`` claim's
    owner (the import and upload populators, ``createPVCPrime``) or the claim whose uid names a
    ``tmp-pvc-<uid>`` (the clone populator's, ``createDesiredClaim``). CDI rebinds the PV to it
    (``cc.Rebind``, the clone's ``RebindPhase``) and reports the DataVolume Succeeded as soon
    as it is bound: the content, the volume's, is written on it beforehand, so nobody sees a
    populated claim without it."""
    meta = pvc["metadata"]
    namespace, name = meta.get("namespace", ""), str(meta.get("name", ""))
    target: dict[str, Any] | None = None
    if name.startswith(PRIME_PREFIX):
        owner = next((r for r in meta.get("ownerReferences") or []
                      if r.get("kind") == "PersistentVolumeClaim"), None)
        if owner is not None:
            target = store.get(PVC, namespace, str(owner.get("name")))
            if target is not None and target["metadata"].get("uid") != owner.get("uid"):
                target = None
    elif name.startswith(TMP_PREFIX):
        uid = name.removeprefix(TMP_PREFIX)
        target = next((c for c in store.list(PVC, namespace)
                       if c["metadata"].get("uid") == uid), None)
    if target is None or is_deleting(target) or (target.get("spec") or {}).get("volumeName"):
        return None
    return target


def _clone_source_name(pvc: dict[str, Any]) -> str | None:
    """The claim ``pvc`` is a CSI clone of (its data source a PersistentVolumeClaim)."""
    spec = pvc.get("spec") or {}
    ref = spec.get("dataSourceRef") or spec.get("dataSource") or {}
    if ref.get("kind") == "PersistentVolumeClaim" and not ref.get("apiGroup"):
        return str(ref.get("name") or "")
    return None


class Provisioner(Controller):
    """external-provisioner + deleter for every class (see the module docstring)."""

    watches: ClassVar[tuple[str, ...]] = (PVC, PV, SC, PROFILE)

    def __init__(self, sim: Simulator) -> None:
        super().__init__(sim)
        self._refused: set[tuple[str, str]] = set()  # (claim uid, why): each told once

    def keys_for(self, resource: str, obj: dict[str, Any]) -> Iterable[Key]:
        meta = obj.get("metadata") or {}
        if resource == PVC:
            namespace = meta.get("namespace", "")
            # and the claims cloned from it (a clone waits for its source to be Bound)
            return [(PVC, namespace, meta["name"]), *(
                (PVC, namespace, c["metadata"]["name"]) for c in self.sim.store.list(
                    PVC, namespace) if _clone_source_name(c) == meta["name"])]
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
        ref = spec.get("dataSourceRef") or spec.get("dataSource") or {}
        if ref.get("apiGroup") in POPULATOR_GROUPS:
            return
        if sc.get("volumeBindingMode") == "WaitForFirstConsumer" and \
                SELECTED_NODE_ANNOTATION not in annotations:
            return
        pv_name = f"pvc-{pvc['metadata']['uid']}"
        if self.sim.store.get(PV, "", pv_name) is not None:
            return
        body = self._pv_body(pvc, sc, pv_name)
        source = _clone_source_name(pvc)
        if source is not None:
            ready, cloned = self._clone_source(pvc, source)
            if not ready:
                return
            if cloned is not None:
                body["metadata"]["annotations"][CONTENT_HASH_ANNOTATION] = cloned
                target = handed_to(self.sim.store, pvc)
                if target is not None:
                    self.sim.client.merge_patch(PVC, namespace, target["metadata"]["name"], {
                        "metadata": {"annotations": {CONTENT_HASH_ANNOTATION: cloned}}})
        self.sim.client.create(PV, body)
        self.sim.client.event(pvc, "Normal", "ProvisioningSucceeded",
                              f"Successfully provisioned volume {pv_name}")

    def _clone_source(self, pvc: dict[str, Any], source_name: str) -> tuple[bool, str | None]:
        """A CSI clone of claim ``source_name`` (what CDI's csi-clone strategy asks for):
        (True, the source's content: its PV's, else its claim's, None without any), or
        (False, None) while external-provisioner would refuse it (its checks, each told once
        in a ProvisioningFailed event: the source missing, being deleted or not Bound, of
        another class or volume mode, or larger than the request); it retries, as we do on
        the next change of either claim."""
        meta = pvc["metadata"]
        source = self.sim.store.get(PVC, meta["namespace"], source_name)
        spec = pvc.get("spec") or {}
        error = ""
        if source is None:
            error = f"error getting PVC {source_name} (namespace {meta['namespace']!r})"
        elif is_deleting(source):
            error = f"the PVC {source_name} is being deleted"
        elif (source.get("status") or {}).get("phase") != "Bound":
            error = f"the PVC {source_name} not bound"
        else:
            source_spec = source.get("spec") or {}
            source_class = source_spec.get("storageClassName")
            requested = to_bytes(str(((spec.get("resources") or {}).get("requests") or {})
                                     .get("storage") or "0"))
            capacity = to_bytes(str(((source.get("status") or {}).get("capacity") or {})
                                    .get("storage") or "0"))
            if source_class != spec.get("storageClassName"):
                error = ("the source PVC and destination PVCs must be in the same storage "
                         f"class for cloning.  Source is in {source_class}, but new PVC is in "
                         f"{spec.get('storageClassName')}")
            elif (source_spec.get("volumeMode") or "Filesystem") != (
                    spec.get("volumeMode") or "Filesystem"):
                error = "the source PVC and destination PVCs must have the same volume mode"
            elif requested < capacity:
                error = ("error, new PVC request must be greater than or equal in size to the "
                         f"specified PVC data source, requested {requested} but source is "
                         f"{capacity}")
        if error:
            if (meta["uid"], error) not in self._refused:
                self._refused.add((meta["uid"], error))
                self.sim.client.event(pvc, "Warning", "ProvisioningFailed",
                                      f"failed to provision volume with StorageClass "
                                      f"{spec.get('storageClassName')!r}: {error}")
            return False, None
        assert source is not None
        pv = self.sim.store.get(PV, "", str((source.get("spec") or {}).get("volumeName") or ""))
        on_volume = content_hash(pv) if pv is not None else None
        return True, on_volume if on_volume is not None else content_hash(source)

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
