"""render.py: DataVolumes and VM patches from the Jinja templates.

Inputs are real object YAML (what the API server returns), parsed by ``observe`` exactly as a
run does. Golden files in ``golden/`` hold the rendered output; ``UPDATE_GOLDEN=1 pytest
tests/unit/test_render.py`` rewrites them after an intended change (review the diff).
"""

from __future__ import annotations

import copy
import os
import re
import shutil
import subprocess
import sys
import zipfile
from collections.abc import Mapping
from dataclasses import replace
from pathlib import Path
from typing import Any

import jsonpatch
import pytest
import yaml

from reconciler.model.errors import TemplateError
from reconciler.model.live import Snapshot, VMInfo
from reconciler.model.verdict import Action, VMVerdict, VolumeVerdict
from reconciler.observe.parse import RawObjects, build_snapshot
from reconciler.render.bounds import quantity_filter, sha_filter
from reconciler.render.datavolume import copied_labels
from reconciler.render.move import RenderedVM, render_vm
from reconciler.render.sandbox import (
    TEMPLATE_NAMES,
    TemplateSet,
    default_templates_dir,
    load_templates,
)
from reconciler.render.targets import check_distinct_targets, target_name, valid_name
from testenv import seed

ROOT = Path(__file__).resolve().parents[2]
GOLDEN = Path(__file__).resolve().parent / "golden"
GiB = 1024**3
MiB = 1024**2

# --------------------------------------------------------------------------------------------
# Scenes: cluster objects as the API server returns them
# --------------------------------------------------------------------------------------------


def _fedora_objects() -> list[dict[str, Any]]:
    """The seed's vm-fedora as the API server returns it once CDI has imported its disk."""
    vm = seed.fedora_vm()
    vm["metadata"].update(uid="7d3c2a10-0000-4000-8000-000000000001", resourceVersion="4711")
    vm["status"] = {"printableStatus": "Running"}
    pvc = {
        "apiVersion": "v1",
        "kind": "PersistentVolumeClaim",
        "metadata": {
            "name": CLAIM,
            "namespace": seed.NAMESPACE,
            "labels": {
                "app": "containerized-data-importer",
                "app.kubernetes.io/component": "storage",
                "app.kubernetes.io/managed-by": "cdi-controller",
                "app.kubernetes.io/part-of": "demo",
                "kubevirt.io/created-by": vm["metadata"]["uid"],
                "owner": "team-a",
            },
            "annotations": {"cdi.kubevirt.io/storage.contentType": "kubevirt"},
        },
        "spec": {
            "storageClassName": seed.SOURCE_CLASS,
            "accessModes": ["ReadWriteOnce"],
            "volumeMode": "Filesystem",
            "resources": {"requests": {"storage": "30Gi"}},
        },
        "status": {"phase": "Bound", "capacity": {"storage": "30Gi"}},
    }
    dv = {
        "apiVersion": "cdi.kubevirt.io/v1beta1",
        "kind": "DataVolume",
        "metadata": {"name": CLAIM, "namespace": seed.NAMESPACE},
        "spec": vm["spec"]["dataVolumeTemplates"][0]["spec"],
        "status": {"phase": "Succeeded", "progress": "100.0%"},
    }
    return [vm, pvc, dv]


CLAIM = seed.DV_NAME  # fedora-40-dv-template
FEDORA = yaml.safe_dump(_fedora_objects())

OFFLINE_PVC = """
- apiVersion: kubevirt.io/v1
  kind: VirtualMachine
  metadata: {name: vm-db, namespace: apps, uid: u-db, resourceVersion: "900"}
  spec:
    runStrategy: Halted
    template:
      spec:
        domain:
          devices:
            disks:
            - {name: rootdisk, disk: {bus: virtio}}
            - {name: data, disk: {bus: virtio}}
        volumes:
        - name: rootdisk
          containerDisk: {image: quay.io/containerdisks/fedora:latest}
        - name: data
          persistentVolumeClaim: {claimName: db-data}
- apiVersion: v1
  kind: PersistentVolumeClaim
  metadata:
    name: db-data
    namespace: apps
    labels: {tier: gold, vmstorage.dev/plan: old-plan, vm.kubevirt.io/name: vm-db}
  spec:
    storageClassName: standard
    accessModes: [ReadWriteOnce]
    resources: {requests: {storage: 20Gi}}
  status: {phase: Bound, capacity: {storage: 20Gi}}
"""

BLOCK = """
- apiVersion: kubevirt.io/v1
  kind: VirtualMachine
  metadata: {name: vm-block, namespace: mig-vm, uid: u-block, resourceVersion: "77"}
  spec:
    runStrategy: Always
    updateVolumesStrategy: Migration
    template:
      spec:
        domain: {devices: {disks: [{name: disk0, disk: {bus: virtio}}]}}
        volumes:
        - name: disk0
          dataVolume: {name: blk-disk-mig-k3x9q}
- apiVersion: v1
  kind: PersistentVolumeClaim
  metadata:
    name: blk-disk-mig-k3x9q
    namespace: mig-vm
    labels: {app.kubernetes.io/managed-by: vm-storage-reconciler, vmstorage.dev/vm: vm-block}
    annotations: {vmstorage.dev/source-claim: blk-disk}
  spec:
    storageClassName: san-block
    volumeMode: Block
    accessModes: [ReadWriteMany]
    resources: {requests: {storage: 10Gi}}
  status: {phase: Bound, capacity: {storage: 10245Mi}}
"""

TWO_DISKS = """
- apiVersion: kubevirt.io/v1
  kind: VirtualMachine
  metadata: {name: vm-two, namespace: mig-vm, uid: u-two, resourceVersion: "31337"}
  spec:
    runStrategy: Always
    dataVolumeTemplates:
    - metadata: {name: two-root}
      spec:
        source: {http: {url: "http://images.example.com/fedora.qcow2"}}
        storage:
          resources: {requests: {storage: 8Gi}}
          storageClassName: old
    - metadata: {name: two-data}
      spec:
        source: {blank: {}}
        pvc:
          accessModes: [ReadWriteOnce]
          resources: {requests: {storage: 50Gi}}
    template:
      spec:
        domain:
          devices:
            disks:
            - {name: rootdisk, disk: {bus: virtio}}
            - {name: cloudinitdisk, disk: {bus: virtio}}
            - {name: datadisk, disk: {bus: virtio}}
        volumes:
        - name: rootdisk
          dataVolume: {name: two-root}
        - name: cloudinitdisk
          cloudInitNoCloud: {userData: "#cloud-config\\n"}
        - name: datadisk
          dataVolume: {name: two-data}
- apiVersion: v1
  kind: PersistentVolumeClaim
  metadata: {name: two-root, namespace: mig-vm, labels: {disk: root}}
  spec:
    storageClassName: old
    resources: {requests: {storage: 8Gi}}
  status: {phase: Bound, capacity: {storage: 8Gi}}
- apiVersion: v1
  kind: PersistentVolumeClaim
  metadata: {name: two-data, namespace: mig-vm, labels: {disk: data}}
  spec:
    storageClassName: old
    resources: {requests: {storage: 50Gi}}
  status: {phase: Bound, capacity: {storage: 50Gi}}
"""


def scene(text: str, *more: str) -> Snapshot:
    """A Snapshot of the objects in ``text`` (and ``more``), parsed by observe."""
    objects: list[dict[str, Any]] = []
    for chunk in (text, *more):
        objects += yaml.safe_load(chunk)
    by_kind: dict[str, list[dict[str, Any]]] = {}
    for obj in objects:
        by_kind.setdefault(obj["kind"], []).append(obj)
    return build_snapshot(
        RawObjects(
            vms=by_kind.get("VirtualMachine", []),
            pvcs=by_kind.get("PersistentVolumeClaim", []),
            data_volumes=by_kind.get("DataVolume", []),
        )
    )


def move(
    volume: str,
    claim: str,
    to_class: str,
    *,
    live: bool = True,
    size: int = 10 * GiB,
    from_class: str = "old",
    mode: str = "",
    access: tuple[str, ...] = (),
    target: str = "",
) -> VolumeVerdict:
    return VolumeVerdict(
        volume=volume,
        claim=claim,
        from_class=from_class,
        to_class=to_class,
        action=Action.MOVE_LIVE if live else Action.MOVE_OFFLINE,
        size_bytes=size,
        volume_mode=mode,
        access_modes=access,
        target_name=target,
    )


def verdict(vm: VMInfo, *moves: VolumeVerdict, plan: str = "p") -> VMVerdict:
    action = moves[0].action if moves else Action.IN_SYNC
    return VMVerdict(
        namespace=vm.namespace,
        name=vm.name,
        plan=plan,
        action=action,
        volumes=moves,
        running=action == Action.MOVE_LIVE,
    )


@pytest.fixture(scope="module")
def templates() -> TemplateSet:
    return load_templates(None)


def only_vm(snap: Snapshot, name: str) -> VMInfo:
    return next(v for v in snap.vms.values() if v.name == name)


def render(
    snap: Snapshot,
    vm_name: str,
    *moves: VolumeVerdict,
    templates: TemplateSet,
    plan: str = "p",
) -> RenderedVM:
    vm = only_vm(snap, vm_name)
    return render_vm(verdict(vm, *moves, plan=plan), vm, snap, templates, plan_name=plan)


def apply(ops: Any, doc: Mapping[str, Any]) -> dict[str, Any]:
    result: dict[str, Any] = jsonpatch.apply_patch(copy.deepcopy(dict(doc)), list(ops))
    return result


# --------------------------------------------------------------------------------------------
# Golden files
# --------------------------------------------------------------------------------------------

CASES = {
    "fedora-live-template": (
        FEDORA,
        "vm-fedora",
        "fedora-to-ceph",
        [move("datavolumedisk1", CLAIM, "ceph-rbd", size=30 * GiB, from_class=seed.SOURCE_CLASS)],
    ),
    "offline-pvc": (
        OFFLINE_PVC,
        "vm-db",
        "db-to-fast",
        [
            move(
                "data",
                "db-data",
                "fast",
                live=False,
                size=20 * GiB,
                from_class="standard",
                mode="Filesystem",
                access=("ReadWriteMany",),
            )
        ],
    ),
    "block-capacity": (
        BLOCK,
        "vm-block",
        "block-to-ssd",
        [
            move(
                "disk0",
                "blk-disk-mig-k3x9q",
                "ssd-block",
                size=10 * GiB + 5 * MiB,
                from_class="san-block",
                mode="Block",
                access=("ReadWriteMany",),
            )
        ],
    ),
    "two-disks": (
        TWO_DISKS,
        "vm-two",
        "two-to-new",
        [
            move("rootdisk", "two-root", "new", size=8 * GiB),
            move("datadisk", "two-data", "new", size=50 * GiB),
        ],
    ),
}


def golden_text(rendered: RenderedVM) -> str:
    doc = {
        "target_names": dict(rendered.target_names),
        "data_volumes": list(rendered.data_volumes),
        "vm_patch": list(rendered.vm_patch),
        "revert_patch": list(rendered.revert_patch),
        "strategy_cleanup_patch": list(rendered.strategy_cleanup_patch),
    }
    return yaml.safe_dump(doc, sort_keys=False, default_flow_style=False, width=100)


def render_case(name: str, templates: TemplateSet) -> RenderedVM:
    text, vm_name, plan, moves = CASES[name]
    return render(scene(text), vm_name, *moves, templates=templates, plan=plan)


@pytest.mark.parametrize("case", sorted(CASES))
def test_rendering_matches_the_golden_file(case: str, templates: TemplateSet) -> None:
    text = golden_text(render_case(case, templates))
    path = GOLDEN / f"{case}.yaml"
    if os.environ.get("UPDATE_GOLDEN") == "1":
        path.parent.mkdir(exist_ok=True)
        path.write_text(text)
    assert path.exists(), f"no golden file {path}: run with UPDATE_GOLDEN=1 and review it"
    assert text == path.read_text()


def test_same_input_renders_identical_bytes(templates: TemplateSet) -> None:
    fresh = load_templates(None)  # a new environment: no state carried between renderings
    for case in CASES:
        assert golden_text(render_case(case, templates)) == golden_text(render_case(case, fresh))


# --------------------------------------------------------------------------------------------
# What the seed's live move does
# --------------------------------------------------------------------------------------------


def test_live_move_creates_a_blank_adoptable_datavolume(templates: TemplateSet) -> None:
    out = render_case("fedora-live-template", templates)
    (dv,) = out.data_volumes
    target = out.target_names["datavolumedisk1"]
    assert re.fullmatch(rf"{CLAIM}-mig-[0-9a-z]{{5}}", target)
    assert dv["metadata"]["name"] == target
    assert dv["spec"]["source"] == {"blank": {}}
    assert dv["spec"]["storage"] == {
        "storageClassName": "ceph-rbd",
        "resources": {"requests": {"storage": "30Gi"}},
    }
    assert dv["metadata"]["annotations"] == {
        "cdi.kubevirt.io/allowClaimAdoption": "true",
        "cdi.kubevirt.io/storage.bind.immediate.requested": "true",
        "vmstorage.dev/source-claim": CLAIM,
    }
    # CDI/KubeVirt bookkeeping is not copied; the user's labels are, and ours are added.
    assert dv["metadata"]["labels"] == {
        "app.kubernetes.io/part-of": "demo",
        "owner": "team-a",
        "app.kubernetes.io/managed-by": "vm-storage-reconciler",
        "vmstorage.dev/vm": "vm-fedora",
        "vmstorage.dev/plan": "fedora-to-ceph",
    }


def test_live_patch_swaps_volume_and_template_and_sets_migration(templates: TemplateSet) -> None:
    snap = scene(FEDORA)
    out = render_case("fedora-live-template", templates)
    target = out.target_names["datavolumedisk1"]
    spec = out.patched_vm["spec"]
    assert spec["template"]["spec"]["volumes"][0]["dataVolume"]["name"] == target
    assert spec["dataVolumeTemplates"][0]["metadata"]["name"] == target
    assert spec["dataVolumeTemplates"][0]["spec"]["storage"]["storageClassName"] == "ceph-rbd"
    assert spec["updateVolumesStrategy"] == "Migration"
    # The patch is real: applied to the observed VM it gives patched_vm.
    assert apply(out.vm_patch, only_vm(snap, "vm-fedora").raw) == out.patched_vm
    assert out.vm_patch[0] == {"op": "test", "path": "/metadata/resourceVersion", "value": "4711"}


def test_patch_fails_when_the_vm_changed_since_it_was_observed(templates: TemplateSet) -> None:
    raw: dict[str, Any] = copy.deepcopy(dict(only_vm(scene(FEDORA), "vm-fedora").raw))
    out = render_case("fedora-live-template", templates)
    edited = copy.deepcopy(raw)
    edited["metadata"]["resourceVersion"] = "4712"
    with pytest.raises(jsonpatch.JsonPatchTestFailed):
        apply(out.vm_patch, edited)
    # Even with the old resourceVersion, a reordered volume list cannot be hit at a stale index.
    reordered = copy.deepcopy(raw)
    volumes = reordered["spec"]["template"]["spec"]["volumes"]
    volumes.reverse()
    with pytest.raises(jsonpatch.JsonPatchTestFailed):
        apply(out.vm_patch, reordered)


def test_rollback_restores_the_vm_and_keeps_the_strategy_until_cleanup(
    templates: TemplateSet,
) -> None:
    raw = dict(only_vm(scene(FEDORA), "vm-fedora").raw)
    out = render_case("fedora-live-template", templates)
    reverted = apply(out.revert_patch, out.patched_vm)
    # KubeVirt cancels a volume migration only while the strategy is still Migration.
    assert reverted["spec"]["updateVolumesStrategy"] == "Migration"
    assert all(op["path"] != "/spec/updateVolumesStrategy" for op in out.revert_patch)
    assert not any(op["path"] == "/metadata/resourceVersion" for op in out.revert_patch)
    assert out.strategy_cleanup_patch == (
        {"op": "test", "path": "/spec/updateVolumesStrategy", "value": "Migration"},
        {"op": "remove", "path": "/spec/updateVolumesStrategy"},
    )
    assert apply(out.strategy_cleanup_patch, reverted) == raw


def test_rollback_refuses_to_undo_a_value_someone_else_changed(templates: TemplateSet) -> None:
    out = render_case("fedora-live-template", templates)
    changed = copy.deepcopy(out.patched_vm)
    changed["spec"]["template"]["spec"]["volumes"][0]["dataVolume"]["name"] = "other"
    with pytest.raises(jsonpatch.JsonPatchTestFailed):
        apply(out.revert_patch, changed)


# --------------------------------------------------------------------------------------------
# Offline, Block, two disks
# --------------------------------------------------------------------------------------------


def test_offline_move_clones_the_source_and_leaves_the_strategy_alone(
    templates: TemplateSet,
) -> None:
    out = render_case("offline-pvc", templates)
    (dv,) = out.data_volumes
    assert dv["spec"]["source"] == {"pvc": {"namespace": "apps", "name": "db-data"}}
    assert dv["metadata"]["annotations"]["cdi.kubevirt.io/storage.deleteAfterCompletion"] == "false"
    assert dv["spec"]["storage"]["volumeMode"] == "Filesystem"
    assert dv["spec"]["storage"]["accessModes"] == ["ReadWriteMany"]
    # the source's size: upstream CDI sizes a clone without one from the image, smaller
    assert dv["spec"]["storage"]["resources"] == {"requests": {"storage": "20Gi"}}
    assert dv["metadata"]["labels"]["tier"] == "gold"
    assert dv["metadata"]["labels"]["vmstorage.dev/plan"] == "db-to-fast"  # ours, not the copy
    assert "vm.kubevirt.io/name" not in dv["metadata"]["labels"]
    volume = out.patched_vm["spec"]["template"]["spec"]["volumes"][1]
    assert volume == {
        "name": "data",
        "persistentVolumeClaim": {"claimName": dv["metadata"]["name"]},
    }
    assert "updateVolumesStrategy" not in out.patched_vm["spec"]
    assert all("updateVolumesStrategy" not in op["path"] for op in out.vm_patch)
    assert out.strategy_cleanup_patch == ()


def test_block_volume_is_sized_from_capacity_and_keeps_its_name_short(
    templates: TemplateSet,
) -> None:
    out = render_case("block-capacity", templates)
    (dv,) = out.data_volumes
    assert dv["spec"]["storage"]["resources"]["requests"]["storage"] == "10245Mi"
    assert dv["spec"]["storage"]["volumeMode"] == "Block"
    # The previous "-mig-k3x9q" is replaced, not extended.
    assert re.fullmatch(r"blk-disk-mig-[0-9a-z]{5}", dv["metadata"]["name"])
    # The VM already had updateVolumesStrategy: Migration: nothing to clean up afterwards.
    assert out.strategy_cleanup_patch == ()


def test_two_disks_move_in_one_patch(templates: TemplateSet) -> None:
    snap = scene(TWO_DISKS)
    out = render_case("two-disks", templates)
    assert [dv["metadata"]["name"] for dv in out.data_volumes] == [
        out.target_names["rootdisk"],
        out.target_names["datadisk"],
    ]
    spec = out.patched_vm["spec"]
    assert (
        spec["template"]["spec"]["volumes"][2]["dataVolume"]["name"] == out.target_names["datadisk"]
    )
    # The data template uses spec.pvc and had no class: the class is added there.
    assert spec["dataVolumeTemplates"][1]["spec"]["pvc"]["storageClassName"] == "new"
    assert spec["dataVolumeTemplates"][0]["spec"]["storage"]["storageClassName"] == "new"
    raw = dict(only_vm(snap, "vm-two").raw)
    assert apply(out.strategy_cleanup_patch, apply(out.revert_patch, out.patched_vm)) == raw


# --------------------------------------------------------------------------------------------
# Target names
# --------------------------------------------------------------------------------------------


def name_for(templates: TemplateSet, claim: str, storage_class: str = "new") -> str:
    return target_name(
        templates,
        namespace="ns",
        vm="vm1",
        volume="rootdisk",
        claim=claim,
        storage_class=storage_class,
    )


def test_target_name_is_deterministic_and_depends_on_every_input(templates: TemplateSet) -> None:
    base = {
        "namespace": "ns",
        "vm": "vm1",
        "volume": "rootdisk",
        "claim": "disk",
        "storage_class": "new",
    }
    first = target_name(templates, **base)
    assert first == target_name(load_templates(None), **base)
    for key, value in base.items():
        assert target_name(templates, **{**base, key: value + "x"}) != first, key


def test_a_60_char_claim_gives_a_63_char_dns_name(templates: TemplateSet) -> None:
    claim = "a" * 52 + "-" + "b" * 7  # 60 chars; the cut falls right after the '-'
    name = name_for(templates, claim)
    assert len(name) <= 63
    assert valid_name(name)
    assert re.fullmatch(r"a{52}-mig-[0-9a-z]{5}", name)  # no "--": the trailing '-' is dropped


def test_previous_mig_suffix_is_stripped_so_names_do_not_grow(templates: TemplateSet) -> None:
    there = name_for(templates, "disk", "b")
    back = name_for(templates, there, "a")
    again = name_for(templates, back, "b")
    for name in (there, back, again):
        assert re.fullmatch(r"disk-mig-[0-9a-z]{5}", name)
    # A -> B -> A -> B does not reuse the first destination (a kept source may still hold it).
    assert len({there, back, again}) == 3


def test_filters() -> None:
    assert quantity_filter(10 * GiB) == "10Gi"
    assert quantity_filter(10 * GiB + 1) == str(10 * GiB + 1)
    assert quantity_filter(0) == "0"
    assert re.fullmatch(r"[0-9a-z]{5}", sha_filter("x"))
    assert sha_filter("x") == sha_filter("x") != sha_filter("y")
    assert copied_labels(
        {
            "kubevirt.io/created-by": "u",
            "cdi.kubevirt.io/x": "y",
            "app": "containerized-data-importer",
            "a": "b",
            "vmstorage.dev/plan": "old",
        }
    ) == {"a": "b"}


# --------------------------------------------------------------------------------------------
# Collisions and resumability
# --------------------------------------------------------------------------------------------


def fedora_target(templates: TemplateSet) -> str:
    return target_name(
        templates,
        namespace="mig-vm",
        vm="vm-fedora",
        volume="datavolumedisk1",
        claim=CLAIM,
        storage_class="ceph-rbd",
    )


def existing_pvc(name: str, annotations: Mapping[str, str] | None = None) -> str:
    return yaml.safe_dump(
        [
            {
                "apiVersion": "v1",
                "kind": "PersistentVolumeClaim",
                "metadata": {
                    "name": name,
                    "namespace": "mig-vm",
                    "annotations": dict(annotations or {}),
                },
                "spec": {
                    "storageClassName": "ceph-rbd",
                    "resources": {"requests": {"storage": "10Gi"}},
                },
                "status": {"phase": "Bound"},
            }
        ]
    )


def existing_dv(name: str, annotations: Mapping[str, str] | None = None) -> str:
    return yaml.safe_dump(
        [
            {
                "apiVersion": "cdi.kubevirt.io/v1beta1",
                "kind": "DataVolume",
                "metadata": {
                    "name": name,
                    "namespace": "mig-vm",
                    "annotations": dict(annotations or {}),
                },
                "spec": {"source": {"blank": {}}, "storage": {"storageClassName": "ceph-rbd"}},
            }
        ]
    )


FEDORA_MOVE = CASES["fedora-live-template"][3][0]


def test_a_foreign_pvc_holding_the_target_name_is_an_error(templates: TemplateSet) -> None:
    target = fedora_target(templates)
    snap = scene(FEDORA, existing_pvc(target))
    with pytest.raises(TemplateError) as caught:
        render(snap, "vm-fedora", FEDORA_MOVE, templates=templates)
    message = str(caught.value)
    assert f"PersistentVolumeClaim mig-vm/{target}" in message
    assert "targetName" in message  # the hint says how to get out


def test_a_foreign_datavolume_or_vm_reference_is_an_error(templates: TemplateSet) -> None:
    target = fedora_target(templates)
    ours_for_another_disk = {"vmstorage.dev/source-claim": "some-other-disk"}
    with pytest.raises(TemplateError, match=f"DataVolume mig-vm/{target}"):
        render(
            scene(FEDORA, existing_dv(target, ours_for_another_disk)),
            "vm-fedora",
            FEDORA_MOVE,
            templates=templates,
        )
    other_vm = OFFLINE_PVC.replace("namespace: apps", "namespace: mig-vm").replace(
        "claimName: db-data", f"claimName: {target}"
    )
    with pytest.raises(TemplateError, match="already used by VirtualMachine mig-vm/vm-db"):
        render(scene(FEDORA, other_vm), "vm-fedora", FEDORA_MOVE, templates=templates)


def test_our_own_leftover_is_reused(templates: TemplateSet) -> None:
    target = fedora_target(templates)
    ours = {"vmstorage.dev/source-claim": CLAIM}
    for leftover in (existing_pvc(target, ours), existing_dv(target, ours)):
        out = render(scene(FEDORA, leftover), "vm-fedora", FEDORA_MOVE, templates=templates)
        assert out.reused_targets == {target}
        assert out.target_names == {"datavolumedisk1": target}
    # A PVC without the marker belongs to our DataVolume of the same name (CDI made it).
    out = render(
        scene(FEDORA, existing_dv(target, ours), existing_pvc(target)),
        "vm-fedora",
        FEDORA_MOVE,
        templates=templates,
    )
    assert out.reused_targets == {target}


def test_two_volumes_cannot_share_a_destination(templates: TemplateSet) -> None:
    moves = [replace(m, target_name="same") for m in CASES["two-disks"][3]]
    with pytest.raises(TemplateError, match="also the destination of volume rootdisk"):
        render(scene(TWO_DISKS), "vm-two", *moves, templates=templates)


def test_two_vms_cannot_share_a_destination(templates: TemplateSet) -> None:
    a = render_case("fedora-live-template", templates)
    b = replace(a, target_names={"other": a.target_names["datavolumedisk1"]})
    check_distinct_targets({("mig-vm", "vm-fedora"): a})
    with pytest.raises(TemplateError, match="wanted by both"):
        check_distinct_targets({("mig-vm", "vm-fedora"): a, ("mig-vm", "vm-x"): b})


def test_an_invalid_explicit_target_name_is_an_error(templates: TemplateSet) -> None:
    bad = replace(FEDORA_MOVE, target_name="Not_A_Name")
    with pytest.raises(TemplateError, match="targetName 'Not_A_Name'"):
        render(scene(FEDORA), "vm-fedora", bad, templates=templates)


# --------------------------------------------------------------------------------------------
# Template sets: defaults, overrides, errors, sandbox
# --------------------------------------------------------------------------------------------


def override(tmp_path: Path, name: str, text: str) -> TemplateSet:
    (tmp_path / name).write_text(text)
    return load_templates(tmp_path)


def test_the_checkout_serves_the_top_level_templates() -> None:
    assert default_templates_dir() == ROOT / "templates"
    assert sorted(p.name for p in (ROOT / "templates").glob("*.j2")) == sorted(TEMPLATE_NAMES)


def test_an_override_dir_replaces_one_template_only(tmp_path: Path) -> None:
    custom = override(tmp_path, "target-name.j2", "{{ claim ~ '-on-' ~ storage_class }}\n")
    assert custom.path_of("target-name.j2") == tmp_path / "target-name.j2"
    assert custom.path_of("vm-patch.j2") == ROOT / "templates" / "vm-patch.j2"
    out = render(scene(FEDORA), "vm-fedora", FEDORA_MOVE, templates=custom)
    assert out.target_names == {"datavolumedisk1": f"{CLAIM}-on-ceph-rbd"}
    assert out.data_volumes[0]["metadata"]["name"] == f"{CLAIM}-on-ceph-rbd"
    assert out.data_volumes[0]["spec"]["source"] == {"blank": {}}  # the default DV template


def test_an_unknown_file_in_the_override_dir_is_an_error(tmp_path: Path) -> None:
    (tmp_path / "datavolume_live.j2").write_text("")
    with pytest.raises(TemplateError, match=r"unknown template datavolume_live\.j2"):
        load_templates(tmp_path)


def test_an_undefined_variable_names_the_template_and_line(tmp_path: Path) -> None:
    lines = (ROOT / "templates" / "datavolume-live.j2").read_text().splitlines()
    at = lines.index("spec:")
    lines.insert(at, "  note: {{ no_such_variable | to_json }}")
    custom = override(tmp_path, "datavolume-live.j2", "\n".join(lines) + "\n")
    with pytest.raises(TemplateError) as caught:
        render(scene(FEDORA), "vm-fedora", FEDORA_MOVE, templates=custom)
    (problem,) = caught.value.problems
    assert problem.source is not None
    assert problem.source.file == str(tmp_path / "datavolume-live.j2")
    assert problem.source.line == at + 1
    assert "no_such_variable" in problem.message
    assert "variables" in problem.hint


def test_a_syntax_error_is_reported_when_loading(tmp_path: Path) -> None:
    with pytest.raises(TemplateError) as caught:
        override(tmp_path, "vm-patch.j2", "- {op: test}\n{% for m in moves %}\n")
    (problem,) = caught.value.problems
    assert problem.source is not None
    assert (problem.source.file, problem.source.line) == (str(tmp_path / "vm-patch.j2"), 2)


@pytest.mark.parametrize(
    "expression",
    ["claim.__class__.__mro__", "source_labels.update({'x': 'y'})", "access_modes.append('x')"],
)
def test_the_sandbox_refuses_unsafe_access(tmp_path: Path, expression: str) -> None:
    text = (ROOT / "templates" / "datavolume-live.j2").read_text()
    custom = override(
        tmp_path,
        "datavolume-live.j2",
        text.replace("kind: DataVolume", f"kind: DataVolume{{{{ {expression} }}}}"),
    )
    with pytest.raises(TemplateError, match="unsafe") as caught:
        render(scene(FEDORA), "vm-fedora", FEDORA_MOVE, templates=custom)
    assert "sandbox" in caught.value.problems[0].hint


@pytest.mark.parametrize(
    ("name", "old", "new", "complaint"),
    [
        (
            "datavolume-live.j2",
            "namespace: {{ namespace | to_json }}",
            "namespace: elsewhere",
            "metadata.namespace is 'elsewhere'",
        ),
        ("datavolume-live.j2", "blank: {}", "http: {url: x}", "must be blank"),
        ("datavolume-live.j2", "{{ size_bytes | quantity | to_json }}", "1Gi", "smaller"),
        ("datavolume-live.j2", '"true"', "true", "not a string"),
        (
            "vm-patch.j2",
            '"value": {{ resource_version | to_json }}',
            '"value": "1"',
            "must test /metadata/resourceVersion",
        ),
        (
            "vm-patch.j2",
            '"/spec/updateVolumesStrategy", "value": "Migration"',
            '"/spec/updateVolumesStrategy", "value": "Replacement"',
            "expected 'Migration'",
        ),
        ("vm-patch.j2", '"value": {{ m.claim | to_json }}}', '"value": "wrong"}', "does not apply"),
        (
            "vm-revert-patch.j2",
            "{%- for op in ops %}",
            "{%- for op in ops[:-1] %}",
            "does not restore the VM",
        ),
    ],
)
def test_unsafe_renderings_are_refused(
    tmp_path: Path,
    name: str,
    old: str,
    new: str,
    complaint: str,
) -> None:
    text = (ROOT / "templates" / name).read_text()
    assert old in text
    custom = override(tmp_path, name, text.replace(old, new, 1))
    with pytest.raises(TemplateError, match=re.escape(complaint)) as caught:
        render(scene(FEDORA), "vm-fedora", FEDORA_MOVE, templates=custom)
    assert caught.value.problems[0].source is not None
    assert caught.value.problems[0].source.file == str(tmp_path / name)


def test_an_offline_template_that_requests_no_size_is_refused(tmp_path: Path) -> None:
    text = (ROOT / "templates" / "datavolume-offline.j2").read_text()
    sized = "{%- if size_bytes > 0 %}"
    assert sized in text
    custom = override(tmp_path, "datavolume-offline.j2", text.replace(sized, "{%- if false %}"))
    with pytest.raises(TemplateError, match=r"resources\.requests\.storage is missing") as caught:
        render_case("offline-pvc", custom)
    assert "smaller than the source claim" in (caught.value.problems[0].hint or "")


def test_a_vm_without_moves_renders_nothing(templates: TemplateSet) -> None:
    snap = scene(FEDORA)
    out = render(snap, "vm-fedora", templates=templates)
    assert (out.data_volumes, out.vm_patch, out.revert_patch) == ((), (), ())
    assert out.patched_vm == dict(only_vm(snap, "vm-fedora").raw)


# --------------------------------------------------------------------------------------------
# Packaging: the wheel carries the templates and finds them
# --------------------------------------------------------------------------------------------


@pytest.mark.timeout(180)
def test_the_wheel_ships_the_templates_and_uses_them(tmp_path: Path) -> None:
    source = tmp_path / "src"
    source.mkdir()
    shutil.copy(ROOT / "pyproject.toml", source)
    for tree in ("reconciler", "templates"):
        shutil.copytree(ROOT / tree, source / tree, ignore=shutil.ignore_patterns("__pycache__"))
    readme = ROOT / "README.md"
    (source / "README.md").write_text(readme.read_text() if readme.exists() else "readme\n")
    dist = tmp_path / "dist"
    pip = Path(sys.executable).with_name("pip")
    subprocess.run(
        [
            str(pip),
            "wheel",
            "--no-deps",
            "--no-build-isolation",
            "-q",
            str(source),
            "-w",
            str(dist),
        ],
        check=True,
        capture_output=True,
        timeout=170,
    )
    (wheel,) = dist.glob("*.whl")
    with zipfile.ZipFile(wheel) as archive:
        names = set(archive.namelist())
        assert {f"reconciler/_templates/{n}" for n in TEMPLATE_NAMES} <= names
        archive.extractall(tmp_path / "site")
    probe = (
        "from reconciler.render.sandbox import default_templates_dir, load_templates;"
        "load_templates(None); print(default_templates_dir())"
    )
    found = subprocess.run(
        [sys.executable, "-c", probe],
        check=True,
        capture_output=True,
        text=True,
        cwd=tmp_path,
        env={**os.environ, "PYTHONPATH": str(tmp_path / "site")},
        timeout=60,
    ).stdout.strip()
    assert Path(found) == tmp_path / "site" / "reconciler" / "_templates"
