"""render/scope.py: the one allow-list for a move's scope (issue 14, items 5 and 9).

The shipped templates' renderings are in scope (before the swap, and after it for a resume);
every hostile variant of them, as a ``--templates`` override or a forged journal would hold
it, is refused with a message naming the op or field. Pure: no cluster, no templates beyond
rendering the accepted cases once.
"""

from __future__ import annotations

import copy
from collections.abc import Callable
from typing import Any

import pytest

from reconciler.render.move import RenderedVM
from reconciler.render.sandbox import load_templates
from reconciler.render.scope import scope_check, scope_problems
from tests.unit.test_render import CASES, render_case, scene

Parts = dict[str, Any]


def parts_of(rendered: RenderedVM, case: str) -> Parts:
    """``scope_problems``' keyword arguments for a rendering of ``CASES[case]``."""
    text, vm_name, _, moves = CASES[case]
    snap = scene(text)
    vm = next(v for v in snap.vms.values() if v.name == vm_name)
    live = any(m.action.value == "MoveLive" for m in moves)
    return {
        "namespace": vm.namespace,
        "vm": copy.deepcopy(dict(vm.raw)),
        "moves": [(m.volume, m.claim, rendered.target_names[m.volume], m.to_class) for m in moves],
        "flow": "live" if live else "offline",
        "data_volumes": copy.deepcopy(list(rendered.data_volumes)),
        "forward_ops": copy.deepcopy(list(rendered.vm_patch[1:])),
        "revert_ops": copy.deepcopy(list(rendered.revert_patch)),
        "cleanup_ops": copy.deepcopy(list(rendered.strategy_cleanup_patch)),
    }


_RENDERED: dict[str, RenderedVM] = {}


def shipped(case: str) -> Parts:
    """A fresh copy of the shipped templates' rendering of ``case``, as keyword arguments."""
    if case not in _RENDERED:
        _RENDERED[case] = render_case(case, load_templates(None))
    return parts_of(_RENDERED[case], case)


def problems(parts: Parts, **changes: Any) -> list[str]:
    return scope_problems(**{**parts, **changes})


LIVE = "fedora-live-template"  # one dataVolumeTemplate (class added), cloud-init at volume 1
OFFLINE = "offline-pvc"  # a persistentVolumeClaim volume at index 1, cloned
TWO = "two-disks"  # two templates: one with spec.storage (class "old"), one with spec.pvc


# --------------------------------------------------------------------------------------------
# What the shipped templates render is in scope
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("case", sorted(CASES))
def test_the_shipped_rendering_is_in_scope(case: str) -> None:
    assert problems(shipped(case)) == []


@pytest.mark.parametrize("case", sorted(CASES))
def test_a_resume_after_the_swap_is_in_scope_only_when_swapped(case: str) -> None:
    parts = shipped(case)
    after = {**parts, "vm": copy.deepcopy(_RENDERED[case].patched_vm)}
    assert problems(after, swapped=True) == []
    assert problems(parts, swapped=True) == [], "swapped=True also accepts a VM not yet swapped"
    refused = problems(after)
    assert "the move's source must be the claim the VM uses" in refused[0], refused


def test_a_vm_that_had_a_replacement_strategy_gets_it_back_and_nothing_else() -> None:
    parts = shipped(LIVE)
    parts["vm"]["spec"]["updateVolumesStrategy"] = "Replacement"
    restore = [
        {"op": "test", "path": "/spec/updateVolumesStrategy", "value": "Migration"},
        {"op": "replace", "path": "/spec/updateVolumesStrategy", "value": "Replacement"},
    ]
    assert problems(parts, cleanup_ops=restore) == []
    sneaky = copy.deepcopy(restore)
    sneaky[1]["value"] = "Migration"
    assert "may only put back the VM's own strategy" in " ".join(
        problems(parts, cleanup_ops=sneaky)
    )


def test_problems_carry_their_part_for_render() -> None:
    parts = shipped(LIVE)
    parts["forward_ops"].append({"op": "add", "path": "/spec/runStrategy", "value": "Halted"})
    parts["data_volumes"][0]["metadata"]["finalizers"] = ["x"]
    found = scope_check(**parts)
    assert [(p.part, p.near) for p in found] == [
        ("dataVolumes", "finalizers:"),
        ("forward", "/spec/runStrategy"),
    ]


# --------------------------------------------------------------------------------------------
# Hostile variants: each one refused, saying which op or field
# --------------------------------------------------------------------------------------------

Mutation = Callable[[Parts], None]


def _append(key: str, op: dict[str, Any]) -> Mutation:
    return lambda parts: parts[key].append(op)


def _dv(change: Callable[[dict[str, Any]], None], index: int = 0) -> Mutation:
    return lambda parts: change(parts["data_volumes"][index])


def _meta(key: str, value: Any) -> Mutation:
    return _dv(lambda dv: dv["metadata"].__setitem__(key, value))


def _spec(key: str, value: Any) -> Mutation:
    return _dv(lambda dv: dv["spec"].__setitem__(key, value))


def _source(value: Any) -> Mutation:
    return _spec("source", value)


def _storage(key: str, value: Any) -> Mutation:
    return _dv(lambda dv: dv["spec"]["storage"].__setitem__(key, value))


def _set_op(key: str, index: int, **fields: Any) -> Mutation:
    return lambda parts: parts[key][index].update(fields)


def _extra_dv(name: str | None = None) -> Mutation:
    def change(parts: Parts) -> None:
        dv = copy.deepcopy(parts["data_volumes"][0])
        if name is not None:
            dv["metadata"]["name"] = name
        parts["data_volumes"].append(dv)

    return change


def _moves(change: Callable[[list[Any]], None]) -> Mutation:
    return lambda parts: change(parts["moves"])


def _move_field(index: int, value: str) -> Mutation:
    def change(moves: list[Any]) -> None:
        fields = list(moves[0])
        fields[index] = value
        moves[0] = tuple(fields)

    return _moves(change)


def _target_is_a_kept_volume(parts: Parts) -> None:
    """The root disk alone moves, onto the claim of the data disk, which does not move."""
    parts["moves"] = [(*parts["moves"][0][:2], "two-data", "new")]


USER_DATA = "/spec/template/spec/volumes/1/cloudInitNoCloud/userData"
DATA_SOURCE_REF = {"kind": "PersistentVolumeClaim", "name": "secret", "namespace": "tenant-b"}
HTTP = {"http": {"url": "http://images.example.com/evil.qcow2"}}

HOSTILE: dict[str, tuple[str, Mutation, str]] = {
    # -- forward operations --
    "cloud-init userData replaced": (
        LIVE,
        _append("forward_ops", {"op": "replace", "path": USER_DATA, "value": "#cloud-config\n"}),
        f'forward op 8 {{"op": "replace", "path": "{USER_DATA}"',
    ),
    "runStrategy added": (
        OFFLINE,
        _append("forward_ops", {"op": "add", "path": "/spec/runStrategy", "value": "Always"}),
        "/spec/runStrategy is not part of a move",
    ),
    "a VM label added": (
        LIVE,
        _append("forward_ops", {"op": "add", "path": "/metadata/labels/x", "value": "y"}),
        "/metadata/labels/x is not part of a move",
    ),
    "a dataVolumeTemplate's source rewritten": (
        LIVE,
        _append(
            "forward_ops",
            {"op": "replace", "path": "/spec/dataVolumeTemplates/0/spec/source", "value": HTTP},
        ),
        "/spec/dataVolumeTemplates/0/spec/source is not part of a move",
    ),
    "a claim set to another disk": (
        LIVE,
        _set_op("forward_ops", 2, value="someone-elses-disk"),
        "volume datavolumedisk1's claim may only be set to",
    ),
    "a template renamed to another disk": (
        LIVE,
        _set_op("forward_ops", 4, value="someone-elses-disk"),
        "the name of dataVolumeTemplate 0 may only be set to",
    ),
    "a template's class set to another class": (
        LIVE,
        _set_op("forward_ops", 5, value="cheap"),
        "the class of dataVolumeTemplate 0 may only be set to 'ceph-rbd'",
    ),
    "the claim of the wrong volume index": (
        OFFLINE,
        _set_op(
            "forward_ops", 2, path="/spec/template/spec/volumes/0/persistentVolumeClaim/claimName"
        ),
        "volumes/0/persistentVolumeClaim/claimName is not part of a move",
    ),
    "the claim field of the other volume kind": (
        OFFLINE,
        _set_op("forward_ops", 2, path="/spec/template/spec/volumes/1/dataVolume/name"),
        "volumes/1/dataVolume/name is not part of a move",
    ),
    "a volume swapped nowhere": (
        OFFLINE,
        lambda parts: parts["forward_ops"].pop(2),
        "the forward operations do not set volume data's claim",
    ),
    "a claim removed": (
        OFFLINE,
        _set_op("forward_ops", 2, op="remove"),
        "volume data's claim may only be set to",
    ),
    "a move operation": (
        OFFLINE,
        _append(
            "forward_ops",
            {"op": "move", "from": "/spec/template/spec/volumes/0", "path": "/spec/x"},
        ),
        "only add, replace, remove and test",
    ),
    "an offline move setting the strategy": (
        OFFLINE,
        _append(
            "forward_ops",
            {"op": "add", "path": "/spec/updateVolumesStrategy", "value": "Migration"},
        ),
        "only a live move sets /spec/updateVolumesStrategy",
    ),
    "a live move setting another strategy": (
        LIVE,
        _set_op("forward_ops", 6, value="Replacement"),
        "only to 'Migration'",
    ),
    # -- revert operations --
    "a revert onto another disk": (
        LIVE,
        _set_op("revert_ops", 5, value="someone-elses-disk"),
        "volume datavolumedisk1's claim may only be restored to 'fedora-40-dv-template'",
    ),
    "a revert that also starts the VM": (
        OFFLINE,
        _append("revert_ops", {"op": "add", "path": "/spec/runStrategy", "value": "Always"}),
        "the revert may only restore what the forward operations change",
    ),
    "a revert that drops the strategy": (
        LIVE,
        _append("revert_ops", {"op": "remove", "path": "/spec/updateVolumesStrategy"}),
        "is the cleanup's, not the revert's",
    ),
    "a revert that removes the claim": (
        OFFLINE,
        _set_op("revert_ops", 1, op="remove"),
        "volume data's claim may not be removed",
    ),
    "a revert of a class the template had, removed": (
        TWO,
        _set_op("revert_ops", 7, op="remove"),
        "the class of dataVolumeTemplate 0 may not be removed",
    ),
    "a revert of a class the template had, to another": (
        TWO,
        _set_op("revert_ops", 7, value="elsewhere"),
        "the class of dataVolumeTemplate 0 may only be restored to 'old'",
    ),
    "a revert giving a class-less template a class": (
        TWO,
        _set_op("revert_ops", 1, op="replace", value="elsewhere"),
        "may only be restored to nothing (it is removed)",
    ),
    # -- cleanup operations --
    "a cleanup that stops the VM": (
        LIVE,
        _append("cleanup_ops", {"op": "replace", "path": "/spec/runStrategy", "value": "Halted"}),
        "the cleanup may only remove the /spec/updateVolumesStrategy a live move set",
    ),
    "an offline cleanup that removes the VM's strategy": (
        OFFLINE,
        _append("cleanup_ops", {"op": "remove", "path": "/spec/updateVolumesStrategy"}),
        "the cleanup may only remove the /spec/updateVolumesStrategy a live move set",
    ),
    # -- DataVolumes --
    "ownerReferences": (
        LIVE,
        _meta(
            "ownerReferences", [{"apiVersion": "v1", "kind": "Namespace", "name": "x", "uid": "u"}]
        ),
        "metadata.ownerReferences is not allowed",
    ),
    "finalizers": (
        LIVE,
        _meta("finalizers", ["example.com/keep"]),
        "metadata.finalizers is not allowed",
    ),
    "generateName": (LIVE, _meta("generateName", "x-"), "metadata.generateName is not allowed"),
    "a DataVolume in another namespace": (
        LIVE,
        _meta("namespace", "tenant-b"),
        "metadata.namespace is 'tenant-b', not the VM's 'mig-vm'",
    ),
    "a cross-namespace dataSourceRef": (
        LIVE,
        _storage("dataSourceRef", DATA_SOURCE_REF),
        "spec.storage.dataSourceRef is not allowed",
    ),
    "a cross-namespace sourceRef": (
        OFFLINE,
        _spec("sourceRef", {"kind": "DataSource", "name": "golden", "namespace": "tenant-b"}),
        "spec.sourceRef is not allowed",
    ),
    "a second http source": (
        OFFLINE,
        _dv(lambda dv: dv["spec"]["source"].update(HTTP)),
        "spec.source must name exactly one source",
    ),
    "an http source instead of the clone": (
        OFFLINE,
        _source(HTTP),
        "an offline move's target must clone its source apps/db-data",
    ),
    "a clone of another VM's claim": (
        OFFLINE,
        _source({"pvc": {"namespace": "apps", "name": "other-vm-disk"}}),
        "must clone its source apps/db-data (spec.source.pvc), got",
    ),
    "a clone from another namespace": (
        OFFLINE,
        _source({"pvc": {"namespace": "tenant-b", "name": "db-data"}}),
        "must clone its source apps/db-data",
    ),
    "a live target that is not blank": (
        LIVE,
        _source({"pvc": {"namespace": "mig-vm", "name": "fedora-40-dv-template"}}),
        "a live move's target must be blank",
    ),
    "a live target blank with content": (
        LIVE,
        _source({"blank": {"x": 1}}),
        "a live move's target must be blank",
    ),
    "a wrong class": (
        LIVE,
        _storage("storageClassName", "cheap"),
        "spec.storage.storageClassName is 'cheap', not the target class 'ceph-rbd'",
    ),
    "a PV picked by name": (
        LIVE,
        _storage("volumeName", "pv-of-tenant-b"),
        "volumeName is not allowed",
    ),
    "a PV picked by selector": (
        LIVE,
        _storage("selector", {"matchLabels": {"x": "y"}}),
        "selector is not allowed",
    ),
    "both storage and pvc": (
        LIVE,
        _spec("pvc", {"storageClassName": "ceph-rbd"}),
        "exactly one of storage and pvc",
    ),
    "an extra DataVolume": (
        LIVE,
        _extra_dv("extra-disk"),
        "DataVolume 2 ('extra-disk'): not a target",
    ),
    "a second DataVolume for one target": (LIVE, _extra_dv(), "a second DataVolume for it"),
    "no DataVolume for a target": (
        LIVE,
        lambda parts: parts["data_volumes"].clear(),
        "no DataVolume for target 'fedora-40-dv-template-mig-rv9tk'",
    ),
    "a status": (LIVE, _dv(lambda dv: dv.__setitem__("status", {})), "field status is not allowed"),
    "another kind": (
        LIVE,
        _dv(lambda dv: dv.__setitem__("kind", "Pod")),
        "expected cdi.kubevirt.io/v1beta1",
    ),
    "a KubeVirt label": (
        LIVE,
        _dv(lambda dv: dv["metadata"]["labels"].__setitem__("kubevirt.io/created-by", "u")),
        "label kubevirt.io/created-by='u' is KubeVirt's or CDI's",
    ),
    "a CDI annotation": (
        LIVE,
        _dv(
            lambda dv: dv["metadata"]["annotations"].__setitem__(
                "cdi.kubevirt.io/storage.prePopulated", "x"
            )
        ),
        "annotation cdi.kubevirt.io/storage.prePopulated is KubeVirt's or CDI's",
    ),
    "the source-claim marker naming another claim": (
        LIVE,
        _dv(
            lambda dv: dv["metadata"]["annotations"].__setitem__("vmstorage.dev/source-claim", "x")
        ),
        "annotation vmstorage.dev/source-claim is 'x', not the source",
    ),
    "a size limit": (
        LIVE,
        _storage("resources", {"requests": {"storage": "30Gi"}, "limits": {"storage": "1Gi"}}),
        "resources may only hold requests.storage",
    ),
    # -- the moves and the VM --
    "a source the VM does not use": (
        OFFLINE,
        _move_field(1, "other-vm-disk"),
        "volume 'data' uses claim 'db-data', not 'other-vm-disk'",
    ),
    "a target that is another volume's claim": (
        TWO,
        _move_field(2, "two-data"),
        "target 'two-data' is also a move's source",
    ),
    "a target that is a non-moved volume's claim": (
        TWO,
        _target_is_a_kept_volume,
        "target 'two-data' is the claim of volume 'datadisk', which does not move",
    ),
    "a target name that is not a name": (
        OFFLINE,
        _move_field(2, "../../x"),
        "is not a valid DataVolume name",
    ),
    "two moves onto one target": (
        TWO,
        lambda parts: parts["moves"].__setitem__(
            1, (*parts["moves"][1][:2], parts["moves"][0][2], "new")
        ),
        "appears in two moves",
    ),
    "a flow that is neither": (
        LIVE,
        lambda parts: parts.__setitem__("flow", "sideways"),
        "flow is 'sideways'",
    ),
    "a volume the VM does not have": (
        OFFLINE,
        _move_field(0, "nope"),
        "volume 'nope': the VM has no such volume",
    ),
    "a volume that is not a claim": (
        OFFLINE,
        _move_field(0, "rootdisk"),
        "not a dataVolume or claim volume",
    ),
}


@pytest.mark.parametrize("name", sorted(HOSTILE))
def test_a_hostile_variant_is_refused_naming_the_op_or_field(name: str) -> None:
    case, mutate, expected = HOSTILE[name]
    parts = shipped(case)
    mutate(parts)
    found = problems(parts)
    assert any(expected in p for p in found), found


def test_a_resume_after_the_swap_is_checked_just_as_strictly() -> None:
    parts = shipped(LIVE)
    parts["vm"] = copy.deepcopy(_RENDERED[LIVE].patched_vm)
    parts["forward_ops"].append({"op": "replace", "path": USER_DATA, "value": "#cloud-config\n"})
    parts["data_volumes"][0]["spec"]["storage"]["dataSourceRef"] = DATA_SOURCE_REF
    found = problems(parts, swapped=True)
    assert len(found) == 2, found


def test_after_the_swap_a_class_restore_is_any_name_but_only_a_name() -> None:
    parts = shipped(TWO)
    parts["vm"] = copy.deepcopy(_RENDERED[TWO].patched_vm)
    # Template 0 had class "old"; the swapped VM holds "new", so the original is unknown.
    parts["revert_ops"][7]["value"] = "whatever"
    assert problems(parts, swapped=True) == []
    parts["revert_ops"][7]["value"] = {"not": "a name"}
    assert "restored to a non-name" in " ".join(problems(parts, swapped=True))


def test_harmless_tests_are_allowed_anywhere() -> None:
    parts = shipped(LIVE)
    for key in ("forward_ops", "revert_ops", "cleanup_ops"):
        parts[key].append({"op": "test", "path": USER_DATA, "value": "anything"})
    assert problems(parts) == []


def test_garbage_is_reported_not_raised() -> None:
    parts = shipped(OFFLINE)
    garbage: list[Any] = [None, 1, "x", [], {"op": "add"}, {"op": "add", "path": 1}]
    found = problems(
        parts,
        vm={
            "spec": {
                "template": {"spec": {"volumes": [{"name": ["x"], "dataVolume": {"name": {}}}]}}
            }
        },
        data_volumes=[
            *garbage,
            {"metadata": {"name": ["x"], "labels": {"a": ["b"]}}, "spec": []},
            {
                "metadata": {"name": "db-data-mig-zj1xc", "annotations": []},
                "spec": {
                    "source": {"pvc": []},
                    "storage": {"volumeMode": ["Block"], "accessModes": [["x"]], "resources": 1},
                },
            },
        ],
        forward_ops=garbage,
        revert_ops=garbage,
        cleanup_ops=garbage,
    )
    assert found
    assert problems(parts, moves=[("a", "b")]) == [
        'move 1 is not (volume, source, target, class): ["a", "b"]'
    ]
