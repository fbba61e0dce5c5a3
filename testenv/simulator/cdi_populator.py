"""CDI volume populators: how a DataVolume on a CSI storage class is filled.

Upstream (CDI `pkg/controller/datavolume/controller-base.go shouldUseCDIPopulator` and
`pkg/controller/populators/`): a DataVolume uses populators when its annotation
`cdi.kubevirt.io/storage.usePopulator` says so ("true"/"false" win), else when a
storage.k8s.io/v1 CSIDriver object exists for its class's provisioner. Then:

- the target PVC is created with `spec.dataSourceRef` (apiGroup cdi.kubevirt.io, kind
  VolumeImportSource or VolumeCloneSource, name `volume-{import,clone}-source-<dv uid>`);
  the external provisioner leaves it alone;
- while the target is unbound on a WaitForFirstConsumer class with no selected node (and no
  immediate-binding request), the DataVolume is `PendingPopulation` (and KubeVirt v1.5+
  accepts it as a live-migration destination, the PVC having a dataSourceRef);
- otherwise the populator creates `prime-<target uid>` (same spec, selected node copied,
  owned by the target), fills it once bound, then rebinds its PV to the target and deletes
  the prime claim; the DataVolume is Succeeded once the target is Bound and filled.

Deviation: the VolumeImportSource/VolumeCloneSource objects themselves are not created (their
CRDs are not installed); `dataSourceRef` names them as CDI would.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from testenv.node.runtime import Store, annotations_of, owner_reference

ANN_USE_POPULATOR = "cdi.kubevirt.io/storage.usePopulator"
ANN_SELECTED_NODE = "volume.kubernetes.io/selected-node"
ANN_IMMEDIATE_BIND = "cdi.kubevirt.io/storage.bind.immediate.requested"
CDI_GROUP = "cdi.kubevirt.io"
PRIME_PREFIX = "prime-"
_CARRIED = ("cdi.kubevirt.io/storage.contentType", ANN_SELECTED_NODE, ANN_IMMEDIATE_BIND)


def uses_populator(dv: Mapping[str, Any], storage_class: Mapping[str, Any] | None,
                   store: Store) -> bool:
    """shouldUseCDIPopulator: the DV annotation when set (a bool), else whether a CSIDriver
    object exists for the class's provisioner."""
    value = annotations_of(dv).get(ANN_USE_POPULATOR)
    if value is not None:
        return value.strip().lower() in ("true", "1", "t")
    if storage_class is None:
        return False
    provisioner = str(storage_class.get("provisioner") or "")
    return bool(provisioner) and store.get("csidrivers", "", provisioner) is not None


def data_source_ref(dv: Mapping[str, Any], clone: bool) -> dict[str, str]:
    """The target PVC's dataSourceRef, naming the populator source CDI creates."""
    kind, prefix = (("VolumeCloneSource", "volume-clone-source") if clone
                    else ("VolumeImportSource", "volume-import-source"))
    return {"apiGroup": CDI_GROUP, "kind": kind, "name": f"{prefix}-{dv['metadata']['uid']}"}


def is_populator_target(pvc: Mapping[str, Any]) -> bool:
    """A PVC that a CDI populator fills (its dataSourceRef is a CDI kind)."""
    ref = (pvc.get("spec") or {}).get("dataSourceRef") or {}
    return ref.get("apiGroup") == CDI_GROUP


def prime_name(target: Mapping[str, Any]) -> str:
    """PVCPrimeName: `prime-<target uid>`."""
    return f"{PRIME_PREFIX}{target['metadata']['uid']}"


def target_of_prime(pvc: Mapping[str, Any]) -> str | None:
    """The target claim's name when `pvc` is a prime claim (owned by a PVC), else None."""
    if not pvc["metadata"]["name"].startswith(PRIME_PREFIX):
        return None
    for ref in pvc["metadata"].get("ownerReferences") or []:
        if ref.get("kind") == "PersistentVolumeClaim":
            return str(ref.get("name"))
    return None


def prime_body(target: Mapping[str, Any]) -> dict[str, Any]:
    """The prime claim of a target: its spec without the data source, the annotations that
    steer binding, and a controller reference to the target."""
    spec = {k: v for k, v in (target.get("spec") or {}).items()
            if k not in ("dataSourceRef", "dataSource", "volumeName")}
    anns = {k: v for k, v in annotations_of(target).items() if k in _CARRIED}
    owner = owner_reference({"apiVersion": "v1", "kind": "PersistentVolumeClaim",
                             "metadata": target["metadata"]})
    return {"metadata": {"name": prime_name(target),
                         "namespace": target["metadata"]["namespace"],
                         "annotations": anns, "ownerReferences": [owner]},
            "spec": spec}
