"""Observation page by page, slim (issue 19 item 2), pure parts: a LIST page is parsed into the
model at once and its JSON dropped; a VM keeps of its object only what render and apply read.
The pagination itself (``limit``/``continue``, an expired token) is in
tests/apiserver/test_paginated_observe.py, against the real API server."""

from __future__ import annotations

import copy
import json
from typing import Any

from reconciler.diff.gitops import field_owners, flux_skips
from reconciler.kube import resources as kube
from reconciler.model.live import PackedObject
from reconciler.model.names import FLUX_KUSTOMIZE_MANAGER, FLUX_SSA_ANNOTATION
from reconciler.observe.parse import (
    KEPT_FIELD_PATHS,
    RawObjects,
    assemble,
    build_snapshot,
    parse_list,
    parse_page,
    parse_vm,
    slim_vm,
)

SSA_PATH = ("f:metadata", "f:annotations", f"f:{FLUX_SSA_ANNOTATION}")


def vm(namespace: str, name: str, *, ssa_owner: str | None = None) -> dict[str, Any]:
    """A VM as the API server lists it: with managedFields (large) and a status."""
    managed: list[dict[str, Any]] = [
        {
            "manager": "kubectl-client-side-apply",
            "operation": "Update",
            "apiVersion": "kubevirt.io/v1",
            "time": "2025-01-01T00:00:00Z",
            "fieldsType": "FieldsV1",
            "fieldsV1": {
                "f:metadata": {"f:labels": {".": {}, "f:app": {}}},
                "f:spec": {"f:runStrategy": {}, "f:template": {"f:spec": {"f:volumes": {}}}},
            },
        },
        {
            "manager": "virt-controller",
            "operation": "Update",
            "subresource": "status",
            "fieldsType": "FieldsV1",
            "fieldsV1": {"f:status": {"f:printableStatus": {}, "f:conditions": {}}},
        },
    ]
    annotations = {"note": "kept"}
    if ssa_owner:
        annotations[FLUX_SSA_ANNOTATION] = "IfNotPresent"
        managed.append(
            {
                "manager": ssa_owner,
                "operation": "Apply",
                "apiVersion": "kubevirt.io/v1",
                "fieldsType": "FieldsV1",
                "fieldsV1": {
                    "f:metadata": {
                        "f:annotations": {f"f:{FLUX_SSA_ANNOTATION}": {}, "f:other": {}},
                        "f:labels": {"f:app": {}},
                    },
                    "f:spec": {"f:runStrategy": {}},
                },
            }
        )
    return {
        "apiVersion": "kubevirt.io/v1",
        "kind": "VirtualMachine",
        "metadata": {
            "name": name,
            "namespace": namespace,
            "uid": f"uid-{name}",
            "resourceVersion": "42",
            "labels": {"app": name},
            "annotations": annotations,
            "finalizers": ["kubevirt.io/virtualMachineControllerFinalize"],
            "managedFields": managed,
        },
        "spec": {
            "runStrategy": "Always",
            "dataVolumeTemplates": [{"metadata": {"name": f"{name}-root"}, "spec": {}}],
            "template": {
                "spec": {
                    "domain": {"devices": {"disks": [{"name": "root", "disk": {}}]}},
                    "volumes": [{"name": "root", "dataVolume": {"name": f"{name}-root"}}],
                }
            },
        },
        "status": {
            "printableStatus": "Running",
            "conditions": [{"type": "Ready", "status": "True"}],
            "volumeSnapshotStatuses": [{"name": "root", "enabled": False}],
        },
    }


def pvc(namespace: str, name: str) -> dict[str, Any]:
    return {
        "metadata": {"name": name, "namespace": namespace, "managedFields": [{"manager": "x"}]},
        "spec": {
            "storageClassName": "standard",
            "volumeMode": "Block",
            "accessModes": ["ReadWriteMany"],
            "resources": {"requests": {"storage": "1Gi"}},
        },
        "status": {"phase": "Bound", "capacity": {"storage": "1Gi"}},
    }


def decoded(obj: Any) -> Any:
    """A fresh decode, as each LIST page is: no string shared with any other page."""
    return json.loads(json.dumps(obj))


def test_a_vm_keeps_neither_its_status_nor_its_managed_fields() -> None:
    obj = vm("ns", "a")
    parsed = parse_vm(obj)
    assert "status" not in parsed.raw
    assert "managedFields" not in parsed.raw["metadata"]  # type: ignore[operator]
    # what the diff read from the status is kept, parsed
    assert parsed.printable_status == "Running"
    assert [c.type for c in parsed.conditions] == ["Ready"]
    # everything render patches and apply reads is the object as listed
    assert parsed.raw["spec"] == obj["spec"]
    without = {k: v for k, v in obj["metadata"].items() if k != "managedFields"}
    assert parsed.raw["metadata"] == without
    assert parsed.raw["apiVersion"] == "kubevirt.io/v1" and parsed.raw["kind"] == "VirtualMachine"
    # packed, and every read of it a fresh copy: the snapshot cannot be changed through it
    assert isinstance(parsed.raw, PackedObject)
    spec = parsed.raw["spec"]
    assert isinstance(spec, dict)
    spec["runStrategy"] = "Halted"
    assert parsed.raw["spec"] == obj["spec"] and parsed.raw == slim_vm(obj)
    assert copy.deepcopy(parsed.raw) == parsed.raw and dict(parsed.raw) == slim_vm(obj)
    # and the object as read is left alone
    assert "status" in obj and "managedFields" in obj["metadata"]


def test_the_managed_fields_the_diff_asks_about_survive_slimming() -> None:
    obj = vm("ns", "a", ssa_owner=FLUX_KUSTOMIZE_MANAGER)
    slim = slim_vm(obj)
    for path in KEPT_FIELD_PATHS:
        assert field_owners(slim, path) == field_owners(obj, path) == (FLUX_KUSTOMIZE_MANAGER,)
    (entry,) = slim["metadata"]["managedFields"]
    assert entry["manager"] == FLUX_KUSTOMIZE_MANAGER
    # only the kept path of that entry
    assert entry["fieldsV1"] == {"f:metadata": {"f:annotations": {SSA_PATH[-1]: {}}}}
    # the GitOps rule reads the same answer from the slim VM as from the full one
    assert flux_skips(parse_vm(obj))
    assert not flux_skips(parse_vm(vm("ns", "b", ssa_owner="kubectl")))


def test_a_page_is_parsed_keeping_only_the_namespaces_asked_for() -> None:
    page = [pvc("a", "p1"), pvc("b", "p2"), pvc("c", "p3")]
    # an object of another namespace is not even parsed: its odd shape is not our problem
    page.append({"metadata": {"name": "odd", "namespace": "z"}, "spec": "not an object"})
    parsed = parse_page(kube.PVCS.plural, page, frozenset({"a", "c"}))
    assert [(p.namespace, p.name) for p in parsed] == [("a", "p1"), ("c", "p3")]
    every = parse_page(kube.PVCS.plural, page[:3], None)
    assert [p.name for p in every] == ["p1", "p2", "p3"]


def test_pages_parsed_one_by_one_make_the_snapshot_of_the_whole_list() -> None:
    vms = [vm("ns", f"vm-{i}") for i in range(7)]
    pvcs = [pvc("ns", f"vm-{i}-root") for i in range(7)]
    classes = [{"metadata": {"name": "standard"}, "provisioner": "p"}]
    whole = build_snapshot(
        RawObjects(vms=copy.deepcopy(vms), pvcs=copy.deepcopy(pvcs), storage_classes=classes)
    )
    paged_vms: list[Any] = []
    paged_pvcs: list[Any] = []
    for start in range(0, 7, 3):  # pages of 3, each decoded on its own
        paged_vms += parse_page(kube.VIRTUAL_MACHINES.plural, decoded(vms[start : start + 3]))
        paged_pvcs += parse_page(kube.PVCS.plural, decoded(pvcs[start : start + 3]))
    paged = assemble(RawObjects(vms=paged_vms, pvcs=paged_pvcs, storage_classes=classes))
    assert paged == whole
    assert paged.claim_references == whole.claim_references


def test_repeated_strings_of_different_pages_are_kept_once() -> None:
    first = parse_list(kube.PVCS.plural, decoded([pvc("tenant-a", "p1")]))[0]
    second = parse_list(kube.PVCS.plural, decoded([pvc("tenant-a", "p2")]))[0]
    assert first.namespace is second.namespace
    assert first.storage_class is second.storage_class
    assert first.phase is second.phase and first.volume_mode is second.volume_mode
    assert first.access_modes[0] is second.access_modes[0]
    one = parse_vm(decoded(vm("tenant-a", "x")))
    other = parse_vm(decoded(vm("tenant-a", "y")))
    assert one.namespace is other.namespace and one.run_strategy is other.run_strategy
    assert one.volumes[0].name is other.volumes[0].name


def test_an_odd_storage_class_name_is_kept_as_read() -> None:
    odd = pvc("ns", "p")
    odd["spec"]["storageClassName"] = 7
    (parsed,) = parse_list(kube.PVCS.plural, [odd])
    assert parsed.storage_class == 7
