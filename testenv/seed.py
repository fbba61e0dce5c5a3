"""The seed scenario: what a small KubeVirt cluster looks like before a storage move.

- StorageClasses ``local-hostpath`` (default, WaitForFirstConsumer) and ``ceph-rbd``
  (Immediate, expandable): the move goes from the first to the second. Both are of CSI
  drivers (KubeVirt's hostpath provisioner in its CSI form, ceph-csi's RBD driver), so each
  has the CSIDriver object its driver's install registers (``csi_drivers``): with it CDI
  fills their DataVolumes through its volume populators (``shouldUseCDIPopulator``).
- The ``kubevirt`` CR configured for storage live migration (LiveUpdate + LiveMigrate).
- Namespace ``mig-vm`` with the running VM ``vm-fedora`` whose disk ``datavolumedisk1`` is the
  DataVolume ``fedora-40-dv-template`` from its dataVolumeTemplates (a registry import), and
  the stopped VM ``vm-archive`` (label ``tier: archive``, the same shape, a 10Gi CentOS disk
  ``archive-disk`` imported at once although the VM is stopped: the template asks CDI for
  immediate binding on the WaitForFirstConsumer class). ``plans/seed`` moves both to
  ``ceph-rbd``: the first live, the second offline.

Used by the demo and by cluster tests; every function takes a pykube client and is idempotent
(409 AlreadyExists is fine).
"""

from __future__ import annotations

import json
from typing import Any

import pykube

SOURCE_CLASS = "local-hostpath"
TARGET_CLASS = "ceph-rbd"
NAMESPACE = "mig-vm"
VM_NAME = "vm-fedora"
DV_NAME = "fedora-40-dv-template"
IMAGE = "docker://quay.io/containerdisks/fedora:40"
SOURCE_PROVISIONER = "kubevirt.io.hostpath-provisioner"  # the CSI driver's name (the legacy,
# non-CSI hostpath provisioner is "kubevirt.io/hostpath-provisioner")
TARGET_PROVISIONER = "rbd.csi.ceph.com"
ARCHIVE_VM = "vm-archive"
ARCHIVE_DV = "archive-disk"
ARCHIVE_IMAGE = "docker://quay.io/containerdisks/centos-stream:9"
LEASE_NAMESPACE = "vm-storage-reconciler"  # where `apply` keeps its Lease (cronjob.yaml's)


def storage_classes() -> list[dict[str, Any]]:
    return [
        {
            "apiVersion": "storage.k8s.io/v1",
            "kind": "StorageClass",
            "metadata": {
                "name": SOURCE_CLASS,
                "annotations": {"storageclass.kubernetes.io/is-default-class": "true"},
            },
            "provisioner": SOURCE_PROVISIONER,
            "volumeBindingMode": "WaitForFirstConsumer",
            "reclaimPolicy": "Delete",
        },
        {
            "apiVersion": "storage.k8s.io/v1",
            "kind": "StorageClass",
            "metadata": {"name": TARGET_CLASS},
            "provisioner": TARGET_PROVISIONER,
            "volumeBindingMode": "Immediate",
            "allowVolumeExpansion": True,
            "reclaimPolicy": "Delete",
        },
    ]


def csi_drivers() -> list[dict[str, Any]]:
    """The CSIDriver objects of the classes' drivers, with the spec their installs give them
    (hostpath-provisioner-operator's ``createCSIDriverObject``, ceph-csi's ``csidriver.yaml``),
    but for ``storageCapacity``: the hostpath driver's is true upstream, where its
    external-provisioner publishes a CSIStorageCapacity per node, which kube-scheduler then
    requires for a WaitForFirstConsumer claim; nothing publishes them here, so it is false
    (capacity is not tracked). A class of any other provisioner has none: CDI then fills it
    the legacy way, as it does for a non-CSI provisioner on a real cluster."""

    def driver(name: str, spec: dict[str, Any]) -> dict[str, Any]:
        return {"apiVersion": "storage.k8s.io/v1", "kind": "CSIDriver",
                "metadata": {"name": name}, "spec": spec}

    return [
        driver(SOURCE_PROVISIONER, {
            "attachRequired": False, "podInfoOnMount": True, "fsGroupPolicy": "None",
            "volumeLifecycleModes": ["Persistent"], "storageCapacity": False,
        }),
        driver(TARGET_PROVISIONER, {
            "attachRequired": True, "podInfoOnMount": False, "fsGroupPolicy": "File",
            "seLinuxMount": True,
        }),
    ]


def kubevirt_cr(version_features: bool = True) -> dict[str, Any]:
    """The KubeVirt CR. ``version_features``: configure it for storage live migration."""
    spec: dict[str, Any] = {"configuration": {"developerConfiguration": {"featureGates": []}}}
    if version_features:
        spec = {
            "configuration": {
                "vmRolloutStrategy": "LiveUpdate",
                "developerConfiguration": {"featureGates": []},
            },
            "workloadUpdateStrategy": {"workloadUpdateMethods": ["LiveMigrate"]},
        }
    return {
        "apiVersion": "kubevirt.io/v1",
        "kind": "KubeVirt",
        "metadata": {"name": "kubevirt", "namespace": "kubevirt"},
        "spec": spec,
    }


def fedora_vm(namespace: str = NAMESPACE, name: str = VM_NAME, dv: str = DV_NAME,
              *, running: bool = True, size: str = "30Gi") -> dict[str, Any]:
    """The classic KubeVirt example VM with one dataVolumeTemplate disk and cloud-init."""
    return {
        "apiVersion": "kubevirt.io/v1",
        "kind": "VirtualMachine",
        "metadata": {"name": name, "namespace": namespace, "labels": {"app": name}},
        "spec": {
            "runStrategy": "Always" if running else "Halted",
            "dataVolumeTemplates": [
                {
                    "metadata": {"name": dv},
                    "spec": {
                        "source": {"registry": {"url": IMAGE}},
                        "storage": {"resources": {"requests": {"storage": size}}},
                    },
                }
            ],
            "template": {
                "metadata": {"labels": {"kubevirt.io/vm": name}},
                "spec": {
                    "domain": {
                        "devices": {
                            "disks": [
                                {"name": "datavolumedisk1", "disk": {"bus": "virtio"}},
                                {"name": "cloudinitdisk", "disk": {"bus": "virtio"}},
                            ]
                        },
                        "resources": {"requests": {"memory": "2Gi"}},
                    },
                    "volumes": [
                        {"name": "datavolumedisk1", "dataVolume": {"name": dv}},
                        {
                            "name": "cloudinitdisk",
                            "cloudInitNoCloud": {"userData": "#cloud-config\npassword: fedora\n"},
                        },
                    ],
                },
            },
        },
    }


def archive_vm(namespace: str = NAMESPACE) -> dict[str, Any]:
    """The stopped VM of the seed: like ``fedora_vm``, labelled ``tier: archive``, its disk
    imported although it never ran (CDI's immediate-binding annotation on the template)."""
    vm = fedora_vm(namespace, ARCHIVE_VM, ARCHIVE_DV, running=False, size="10Gi")
    vm["metadata"]["labels"]["tier"] = "archive"
    template = vm["spec"]["dataVolumeTemplates"][0]
    template["metadata"]["annotations"] = {
        "cdi.kubevirt.io/storage.bind.immediate.requested": "true"
    }
    template["spec"]["source"] = {"registry": {"url": ARCHIVE_IMAGE}}
    return vm


def create(api: pykube.HTTPClient, obj: dict[str, Any]) -> None:
    """POST ``obj`` to its collection; an existing object is left as it is."""
    api_version, kind = obj["apiVersion"], obj["kind"]
    plural = {
        "StorageClass": "storageclasses",
        "CSIDriver": "csidrivers",
        "Namespace": "namespaces",
        "KubeVirt": "kubevirts",
        "VirtualMachine": "virtualmachines",
    }[kind]
    kwargs: dict[str, Any] = {"version": api_version, "url": plural, "data": json.dumps(obj)}
    namespace = obj["metadata"].get("namespace")
    if namespace:
        kwargs["namespace"] = namespace
    response = api.post(**kwargs)
    if response.status_code != 409:
        api.raise_for_status(response)


def namespace(name: str) -> dict[str, Any]:
    return {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": name}}


def seed_cluster(api: pykube.HTTPClient) -> None:
    """Cluster-wide objects: the CSIDriver objects, the two StorageClasses and the KubeVirt
    CR (the drivers first: CDI decides how to fill a DataVolume when it first sees it)."""
    for obj in [*csi_drivers(), *storage_classes(), namespace("kubevirt"), kubevirt_cr()]:
        create(api, obj)


def seed(api: pykube.HTTPClient) -> None:
    """The whole seed scenario: cluster objects, mig-vm/vm-fedora (running) and
    mig-vm/vm-archive (stopped), and the namespace of `apply`'s Lease."""
    seed_cluster(api)
    create(api, namespace(NAMESPACE))
    create(api, namespace(LEASE_NAMESPACE))
    create(api, fedora_vm())
    create(api, archive_vm())
