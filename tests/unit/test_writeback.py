"""The GitOps write-back: the change to commit to a moved VM's manifest, as an RFC 6902 patch
that turns the Git manifest (the VM before the move) into the VM after it, a YAML snippet, a
kustomize patches entry and an Event note; and who applies a VM from Git."""

from __future__ import annotations

import copy
import json
from typing import Any

import jsonpatch
import pytest
import yaml

from reconciler.diff.git_owners import git_owners
from reconciler.model import names
from reconciler.report.writeback import (
    NOTE_LIMIT,
    kustomize_patch,
    write_back,
    write_back_doc,
    write_back_note,
    write_back_text,
    write_back_yaml,
)
from tests.support.factories import vm as vm_info


def manifest() -> dict[str, Any]:
    """A VM as Git has it: a templated root disk, a plain DataVolume and a PVC data disk."""
    return {
        "apiVersion": "kubevirt.io/v1",
        "kind": "VirtualMachine",
        "metadata": {"name": "vm-fedora", "namespace": "mig-vm", "labels": {"app": "x"}},
        "spec": {
            "runStrategy": "Always",
            "dataVolumeTemplates": [
                {
                    "metadata": {"name": "other-template"},
                    "spec": {"storage": {"resources": {"requests": {"storage": "1Gi"}}}},
                },
                {
                    "metadata": {"name": "vm-fedora-disk"},
                    "spec": {
                        "source": {"http": {"url": "http://images/fedora.qcow2"}},
                        "storage": {
                            "storageClassName": "local-hostpath",
                            "resources": {"requests": {"storage": "30Gi"}},
                        },
                    },
                },
            ],
            "template": {
                "spec": {
                    "domain": {"devices": {"disks": [{"name": "datavolumedisk1"}]}},
                    "volumes": [
                        {"name": "cloudinit", "cloudInitNoCloud": {"userData": "#cloud-config"}},
                        {"name": "datavolumedisk1", "dataVolume": {"name": "vm-fedora-disk"}},
                        {"name": "scratch", "dataVolume": {"name": "scratch-dv"}},
                        {"name": "data", "persistentVolumeClaim": {"claimName": "data-pvc"}},
                        {"name": "other", "dataVolume": {"name": "other-template"}},
                    ],
                }
            },
        },
    }


MOVED = (
    ("datavolumedisk1", "vm-fedora-disk", "vm-fedora-disk-mig-ab12c"),
    ("scratch", "scratch-dv", "scratch-dv-mig-dd33e"),
    ("data", "data-pvc", "data-pvc-mig-ff44g"),
)


def moved(git: dict[str, Any], *, live: bool = True) -> dict[str, Any]:
    """What a move does to the VM: claims and the template renamed, the class set."""
    vm = copy.deepcopy(git)
    volumes = vm["spec"]["template"]["spec"]["volumes"]
    volumes[1]["dataVolume"]["name"] = MOVED[0][2]
    volumes[2]["dataVolume"]["name"] = MOVED[1][2]
    volumes[3]["persistentVolumeClaim"]["claimName"] = MOVED[2][2]
    template = vm["spec"]["dataVolumeTemplates"][1]
    template["metadata"]["name"] = MOVED[0][2]
    template["spec"]["storage"]["storageClassName"] = "ceph-rbd"
    if live:
        vm["spec"]["updateVolumesStrategy"] = "Migration"
    vm["metadata"]["resourceVersion"] = "4242"  # the live object carries more than Git
    vm["status"] = {"printableStatus": "Running"}
    return vm


def moved_fields(vm: dict[str, Any]) -> dict[str, Any]:
    spec = vm["spec"]
    return {
        "volumes": spec["template"]["spec"]["volumes"],
        "templates": spec["dataVolumeTemplates"],
        "strategy": spec.get("updateVolumesStrategy"),
    }


OWNERS = ("Flux Kustomization flux-system/apps",)


def test_the_patch_turns_the_git_manifest_into_the_moved_vm() -> None:
    git = manifest()
    after = moved(git)

    wb = write_back(after, MOVED, OWNERS)

    patched = jsonpatch.apply_patch(git, [dict(op) for op in wb.patch])
    assert moved_fields(patched) == moved_fields(after)
    assert patched["metadata"] == git["metadata"], "nothing but the moved fields"
    assert [(v.volume, v.template_index, v.storage_class) for v in wb.volumes] == [
        ("datavolumedisk1", 1, "ceph-rbd"),
        ("scratch", None, None),
        ("data", None, None),
    ]
    assert wb.strategy == "Migration"


def test_every_renamed_value_is_tested_so_a_drifted_manifest_fails_whole() -> None:
    git = manifest()
    wb = write_back(moved(git), MOVED, OWNERS)
    drifted = copy.deepcopy(git)
    drifted["spec"]["template"]["spec"]["volumes"][2]["dataVolume"]["name"] = "someone-else"

    with pytest.raises(jsonpatch.JsonPatchTestFailed):
        jsonpatch.apply_patch(drifted, [dict(op) for op in wb.patch])
    reordered = copy.deepcopy(git)
    reordered["spec"]["template"]["spec"]["volumes"].reverse()
    with pytest.raises(jsonpatch.JsonPatchTestFailed):
        jsonpatch.apply_patch(reordered, [dict(op) for op in wb.patch])


def test_a_template_without_a_class_in_git_gets_one_and_offline_moves_add_no_strategy() -> None:
    git = manifest()
    del git["spec"]["dataVolumeTemplates"][1]["spec"]["storage"]["storageClassName"]
    after = moved(git, live=False)

    wb = write_back(after, MOVED[:1], OWNERS)

    patched = jsonpatch.apply_patch(git, [dict(op) for op in wb.patch])
    assert patched["spec"]["dataVolumeTemplates"][1]["spec"]["storage"]["storageClassName"] == (
        "ceph-rbd"
    )
    assert "updateVolumesStrategy" not in patched["spec"]
    assert wb.strategy is None


def test_a_pvc_shaped_template_is_patched_under_spec_pvc() -> None:
    git = manifest()
    template = git["spec"]["dataVolumeTemplates"][1]
    template["spec"]["pvc"] = template["spec"].pop("storage")
    after = copy.deepcopy(git)
    after["spec"]["template"]["spec"]["volumes"][1]["dataVolume"]["name"] = MOVED[0][2]
    after["spec"]["dataVolumeTemplates"][1]["metadata"]["name"] = MOVED[0][2]
    after["spec"]["dataVolumeTemplates"][1]["spec"]["pvc"]["storageClassName"] = "ceph-rbd"

    wb = write_back(after, MOVED[:1], OWNERS)

    assert jsonpatch.apply_patch(git, [dict(op) for op in wb.patch]) == after
    assert "pvc:" in write_back_yaml(wb)


def test_an_unfinished_move_has_no_write_back() -> None:
    with pytest.raises(ValueError, match="not finished"):
        write_back(manifest(), MOVED[:1], OWNERS)
    with pytest.raises(ValueError, match="no volume"):
        write_back(manifest(), (("nope", "a", "b"),), OWNERS)


def test_the_yaml_snippet_names_new_and_old_values_in_context() -> None:
    wb = write_back(moved(manifest()), MOVED, OWNERS)

    text = write_back_yaml(wb)

    parsed = yaml.safe_load(text)
    assert parsed["spec"]["updateVolumesStrategy"] == "Migration"
    (template,) = parsed["spec"]["dataVolumeTemplates"]
    assert template["metadata"]["name"] == "vm-fedora-disk-mig-ab12c"
    assert template["spec"]["storage"]["storageClassName"] == "ceph-rbd"
    volumes = {v["name"]: v for v in parsed["spec"]["template"]["spec"]["volumes"]}
    assert volumes["data"] == {
        "name": "data",
        "persistentVolumeClaim": {"claimName": "data-pvc-mig-ff44g"},
    }
    assert "name: vm-fedora-disk-mig-ab12c  # was: vm-fedora-disk" in text
    assert "claimName: data-pvc-mig-ff44g  # was: data-pvc" in text


def test_the_kustomize_patch_is_the_same_patch_aimed_at_the_vm() -> None:
    wb = write_back(moved(manifest()), MOVED, OWNERS)

    entry = kustomize_patch(wb)

    assert entry["target"] == {
        "group": "kubevirt.io",
        "version": "v1",
        "kind": "VirtualMachine",
        "name": "vm-fedora",
        "namespace": "mig-vm",
    }
    assert json.loads(entry["patch"]) == [dict(op) for op in wb.patch]


def test_document_text_and_note_say_the_same() -> None:
    wb = write_back(moved(manifest()), MOVED, OWNERS)

    doc = write_back_doc(wb)
    text = write_back_text(wb)
    note = write_back_note(wb, more="all of it in ConfigMap ns/status")

    assert doc["owners"] == list(OWNERS)
    assert doc["jsonPatch"] == [dict(op) for op in wb.patch]
    assert doc["volumes"][0] == {
        "volume": "datavolumedisk1",
        "claimField": "dataVolume.name",
        "from": "vm-fedora-disk",
        "to": "vm-fedora-disk-mig-ab12c",
        "dataVolumeTemplate": "vm-fedora-disk-mig-ab12c",
        "storageClass": "ceph-rbd",
    }
    assert len(doc["notes"]) == 2, "the two volumes whose claims are not in the VM manifest"
    assert "Flux Kustomization flux-system/apps" in text and "as a JSON patch" in text
    assert json.dumps(doc["jsonPatch"], separators=(",", ":")) in text
    assert len(note.encode()) <= NOTE_LIMIT
    assert "vm-fedora-disk -> vm-fedora-disk-mig-ab12c" in note
    assert note.endswith("(all of it in ConfigMap ns/status)")


def test_a_note_too_long_for_an_event_drops_the_patch_then_is_cut() -> None:
    git = manifest()
    volumes = git["spec"]["template"]["spec"]["volumes"]
    many = []
    for i in range(30):
        volumes.append({"name": f"disk{i}", "dataVolume": {"name": f"claim-{i}-x"}})
        many.append((f"disk{i}", f"claim-{i}-x", f"claim-{i}-x-mig-abcde"))
    after = copy.deepcopy(git)
    for entry in after["spec"]["template"]["spec"]["volumes"][5:]:
        entry["dataVolume"]["name"] += "-mig-abcde"

    wb = write_back(after, many, OWNERS)
    note = write_back_note(wb, more="see ConfigMap")

    assert len(note.encode()) <= NOTE_LIMIT
    assert "JSON patch" not in note
    assert note.startswith("applied from Git by Flux Kustomization")


def test_git_owners_name_the_tool_and_where_it_lives() -> None:
    flux = vm_info(
        labels={
            names.FLUX_KUSTOMIZATION_NAME_LABEL: "apps",
            names.FLUX_KUSTOMIZATION_NAMESPACE_LABEL: "flux-system",
        }
    )
    skipped = vm_info(
        labels={names.FLUX_KUSTOMIZATION_NAME_LABEL: "apps"},
        annotations={names.FLUX_RECONCILE_ANNOTATION: "disabled"},
    )
    argo = vm_info(
        annotations={names.ARGO_TRACKING_ANNOTATION: "vms:kubevirt.io/VirtualMachine:ns/vm1"}
    )

    assert git_owners(flux) == ("Flux Kustomization flux-system/apps",)
    assert git_owners(skipped) == ("Flux Kustomization apps (which skips the VM for now)",)
    assert git_owners(argo) == ("Argo CD Application vms",)
    assert git_owners(vm_info()) == ()
