"""The REST resources the reconciler reads and writes: ``api_version`` as in manifests,
``plural`` as in URLs. Plain values (no HTTP), so observe and apply name kinds the same way."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Resource:
    """A REST resource: ``api_version`` as in manifests, ``plural`` as in URLs."""

    api_version: str
    kind: str
    plural: str
    namespaced: bool = True


VIRTUAL_MACHINES = Resource("kubevirt.io/v1", "VirtualMachine", "virtualmachines")
VMIS = Resource("kubevirt.io/v1", "VirtualMachineInstance", "virtualmachineinstances")
MIGRATIONS = Resource(
    "kubevirt.io/v1", "VirtualMachineInstanceMigration", "virtualmachineinstancemigrations"
)
KUBEVIRTS = Resource("kubevirt.io/v1", "KubeVirt", "kubevirts")
PVCS = Resource("v1", "PersistentVolumeClaim", "persistentvolumeclaims")
DATA_VOLUMES = Resource("cdi.kubevirt.io/v1beta1", "DataVolume", "datavolumes")
STORAGE_CLASSES = Resource("storage.k8s.io/v1", "StorageClass", "storageclasses", False)
PODS = Resource("v1", "Pod", "pods")
LEASES = Resource("coordination.k8s.io/v1", "Lease", "leases")
EVENTS = Resource("events.k8s.io/v1", "Event", "events")
CONFIG_MAPS = Resource("v1", "ConfigMap", "configmaps")
STORAGE_PROFILES = Resource("cdi.kubevirt.io/v1beta1", "StorageProfile", "storageprofiles", False)


def subject(resource: Resource, namespace: str | None, name: str) -> str:
    """``Kind/namespace/name`` (or ``Kind/name``): how errors and logs name an object."""
    return f"{resource.kind}/{namespace}/{name}" if namespace else f"{resource.kind}/{name}"
