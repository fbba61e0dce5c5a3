"""Render one VM's move (DataVolumes + VM JSON patches) from Jinja templates. Pure.

Input is plain data (a ``VMVerdict``, the ``VMInfo`` with its raw object, the ``Snapshot``);
output is plain data (``RenderedVM``: dicts and lists ready to send). No I/O besides reading the
template files, no pykube.

Templates (``templates/`` in a checkout, ``reconciler/_templates`` in a wheel; ``--templates
DIR`` overrides them one file at a time; each documents its variables in a comment at its top):

- ``target-name.j2``        -> the destination claim name (bare text)
- ``datavolume-live.j2``    -> the blank destination DataVolume of a live move
- ``datavolume-offline.j2`` -> the clone DataVolume of an offline move
- ``vm-patch.j2``           -> the RFC 6902 patch that swaps the VM onto the destinations
- ``vm-revert-patch.j2``    -> the patch that swaps it back (rollback)

They run in the sandbox of ``sandbox`` (StrictUndefined, documented variables and filters
only). Every rendering is parsed and checked (kind, apiVersion, namespace, names, sizes,
ownership annotation, patch shape); the forward patch is applied with ``jsonpatch`` to a copy
of the VM, so ``plan --show-manifests`` can show a real before/after, and the rollback is
proven to restore the VM exactly. Last, the whole move must stay within its scope
(``scope``: blank or cloned destinations in the VM's namespace, patches of the moved claims,
their templates' names and classes and ``updateVolumesStrategy`` only; the same allow-list a
journal passes before ``apply`` resumes it). Any failure is a ``TemplateError`` naming the
template file and line.

Design choices:

- **The rollback is computed in Python, the template only shapes it.** ``inverse.invert``
  derives the inverse of whatever the forward patch does (``test`` the value we wrote, then put
  back the old value or remove what we added), by walking the forward ops over the VM. So an
  overridden ``vm-patch.j2`` (say, one that also sets an annotation) gets a correct rollback
  for free; a hand-written inverse template would silently drift from it.
  ``vm-revert-patch.j2`` receives the computed ``ops`` and may reorder or extend them, but the
  result must still restore the VM, which render checks by applying forward, revert and
  cleanup to the VM's raw object.
- **The rollback does not remove ``spec.updateVolumesStrategy``.** KubeVirt treats a revert of
  the volumes as a *cancellation* only while the strategy is still ``Migration`` (the upstream
  migration controller cancels the same way). Dropping the strategy in the same update would
  turn the revert into a plain volume change of a running VM. Removing the strategy we added is
  therefore a separate patch, ``strategy_cleanup_patch``, to send once the cancellation is
  observed (or after a successful move). It is empty for offline moves and for VMs that already
  had ``Migration``.
- **The default target name hashes the source claim too** (namespace/vm/volume/claim/class),
  not only namespace/vm/volume/class: with ``retention: Keep``, a move A->B->A->B would
  otherwise give the third move the first move's name, which is still held by the kept disk.
  The name stays deterministic and its length bounded (the previous ``-mig-xxxxx`` is stripped).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

from reconciler.model.errors import Problem, TemplateError
from reconciler.model.live import Snapshot, VMInfo
from reconciler.model.manifests import DataVolumeManifest, PatchOp, VMObject
from reconciler.model.verdict import Action, VMVerdict
from reconciler.render.bounds import plain
from reconciler.render.datavolume import render_data_volume
from reconciler.render.inverse import revert_patches
from reconciler.render.sandbox import (
    DV_LIVE,
    DV_OFFLINE,
    TARGET_NAME,
    VM_PATCH,
    VM_REVERT,
    Rendered,
    TemplateSet,
)
from reconciler.render.scope import (
    CLEANUP,
    DATA_VOLUMES,
    FORWARD,
    LIVE,
    MOVES,
    OFFLINE,
    REVERT,
    VM,
    scope_check,
)
from reconciler.render.targets import check_targets, target_names
from reconciler.render.vm_patch import (
    apply_ops,
    check_patched,
    patch_context,
    render_forward_patch,
)


@dataclass(frozen=True)
class RenderedVM:
    """Everything to send for one VM's move.

    ``data_volumes``: the DataVolumes to create, in the verdict's volume order.
    ``vm_patch``: the JSON patch that swaps the VM onto them (fails if the VM changed since it
    was observed: its first op tests ``metadata.resourceVersion``).
    ``revert_patch``: the rollback (restores the original claims, template names and classes;
    keeps ``updateVolumesStrategy`` so KubeVirt sees a cancellation).
    ``patched_vm``: the VM as ``vm_patch`` leaves it (for previews and diffs).
    ``target_names``: volume name -> destination claim name.
    ``strategy_cleanup_patch``: removes the ``updateVolumesStrategy`` we added; send it after
    the cancellation (or the move) completed. Empty when there is nothing to remove.
    ``reused_targets``: destinations that already exist and are ours (an earlier attempt left
    them); creating their DataVolume again answers 409, which is expected.
    """

    data_volumes: tuple[DataVolumeManifest, ...]
    vm_patch: tuple[PatchOp, ...]
    revert_patch: tuple[PatchOp, ...]
    patched_vm: VMObject
    target_names: Mapping[str, str]
    strategy_cleanup_patch: tuple[PatchOp, ...] = ()
    reused_targets: frozenset[str] = field(default_factory=frozenset)


# --------------------------------------------------------------------------------------------
# render_vm
# --------------------------------------------------------------------------------------------


def render_vm(
    verdict: VMVerdict, vm: VMInfo, snapshot: Snapshot, templates: TemplateSet, *, plan_name: str
) -> RenderedVM:
    """Render the DataVolumes and patches that move ``verdict``'s MoveLive/MoveOffline volumes.

    Raises TemplateError when a template fails, renders something unsafe, or a destination name
    is taken by an object that is not ours. Raises ValueError when the verdict contradicts the
    VM object (a bug upstream, not a user error).
    """
    moves = [v for v in verdict.volumes if v.action in (Action.MOVE_LIVE, Action.MOVE_OFFLINE)]
    raw = plain(vm.raw)
    if not moves:
        return RenderedVM((), (), (), raw, {})
    actions = {v.action for v in moves}
    if len(actions) > 1:
        raise ValueError(f"VM {vm.namespace}/{vm.name}: live and offline moves mixed in one VM")
    live = actions == {Action.MOVE_LIVE}

    names = target_names(moves, vm, templates)
    reused = check_targets(moves, names, vm, snapshot)
    data_volumes = tuple(
        render_data_volume(
            move, names[move.volume], vm, snapshot, templates, plan_name=plan_name, live=live
        )
        for move in moves
    )
    context = patch_context(moves, names, vm, raw, plan_name=plan_name, live=live)
    forward = render_forward_patch(templates, context, vm)
    patched = apply_ops(forward, raw)
    check_patched(forward, patched, raw, moves, names, live=live)
    forward_ops: list[PatchOp] = forward.data  # checked by render_forward_patch
    revert, cleanup = revert_patches(templates, context, forward, raw, patched)
    check_scope(
        templates,
        vm,
        raw,
        [(m.volume, m.claim, names[m.volume], m.to_class) for m in moves],
        live=live,
        data_volumes=data_volumes,
        forward=forward_ops[1:],  # without the resourceVersion test (as a journal holds it)
        revert=revert,
        cleanup=cleanup,
    )
    return RenderedVM(
        data_volumes=data_volumes,
        vm_patch=tuple(forward_ops),
        revert_patch=tuple(revert),
        patched_vm=patched,
        target_names={m.volume: names[m.volume] for m in moves},
        strategy_cleanup_patch=tuple(cleanup),
        reused_targets=frozenset(reused),
    )


def check_scope(
    templates: TemplateSet,
    vm: VMInfo,
    raw: VMObject,
    moves: list[tuple[str, str, str, str]],
    *,
    live: bool,
    data_volumes: Sequence[DataVolumeManifest],
    forward: Sequence[PatchOp],
    revert: Sequence[PatchOp],
    cleanup: Sequence[PatchOp],
) -> None:
    """The rendering stays within the move's scope (``render.scope``, the same allow-list
    ``apply`` checks a journal against on resume); else a TemplateError naming, per problem,
    the template that produced it."""
    found = scope_check(
        namespace=vm.namespace,
        vm=raw,
        moves=moves,
        flow=LIVE if live else OFFLINE,
        data_volumes=[dict(dv) for dv in data_volumes],
        forward_ops=[dict(op) for op in forward],
        revert_ops=[dict(op) for op in revert],
        cleanup_ops=[dict(op) for op in cleanup],
    )
    if not found:
        return
    source = {
        MOVES: TARGET_NAME,
        VM: TARGET_NAME,
        DATA_VOLUMES: DV_LIVE if live else DV_OFFLINE,
        FORWARD: VM_PATCH,
        REVERT: VM_REVERT,
        CLEANUP: VM_PATCH,  # the cleanup is derived from the forward patch
    }
    problems: list[Problem] = []
    for problem in found:
        name = source[problem.part]
        out = Rendered(name, templates.get(name), None)
        problems += out.error(
            f"VM {vm.namespace}/{vm.name}, out of the move's scope: {problem.message}",
            near=problem.near,
            hint=_SCOPE_HINT,
        ).problems
    raise TemplateError(problems)


_SCOPE_HINT = (
    "a move may only create its blank (live) or cloned (offline) destination DataVolumes and "
    "swap the moved volumes' claims, their dataVolumeTemplates' names and classes and "
    "updateVolumesStrategy; see reconciler/render/scope.py"
)
