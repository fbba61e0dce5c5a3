"""The rollback: the inverse of whatever the forward patch does, computed in Python and proven
to restore the VM (see ``move``'s module docstring for why). Pure."""

from __future__ import annotations

import copy
from collections.abc import Iterable, Mapping

import jsonpatch

from reconciler.model.manifests import PatchOp
from reconciler.render.bounds import Unchecked
from reconciler.render.sandbox import VM_REVERT, Rendered, TemplateSet, render_yaml
from reconciler.render.vm_patch import apply_ops, ops_of

STRATEGY_PATH = "/spec/updateVolumesStrategy"


def _pointer(path: str) -> list[str]:
    if path == "":
        return []
    if not path.startswith("/"):
        raise ValueError(f"not a JSON pointer: {path!r}")
    return [p.replace("~1", "/").replace("~0", "~") for p in path[1:].split("/")]


def _parent(doc: Unchecked, path: str) -> tuple[Unchecked, str]:
    """The container holding ``path``'s last member, and that member's key."""
    parts = _pointer(path)
    if not parts:
        raise ValueError("an operation on the whole document cannot be inverted")
    node = doc
    for part in parts[:-1]:
        node = node[int(part)] if isinstance(node, list) else node[part]
    return node, parts[-1]


def invert(ops: Iterable[PatchOp], document: Unchecked) -> tuple[list[PatchOp], list[PatchOp]]:
    """The inverse of ``ops`` applied to ``document``: (revert ops, strategy cleanup ops).

    Each change becomes "test the value we wrote, then restore the old value (or remove what we
    added)", in reverse order; ``test`` ops vanish (the resourceVersion will have moved on).
    Changes of ``/spec/updateVolumesStrategy`` go to the cleanup list (see the module doc).
    Supported: add/replace/remove of object members, replace of array items. Raises ValueError
    for anything else (an insertion into an array, move, copy).
    """
    doc = copy.deepcopy(document)
    revert: list[PatchOp] = []
    cleanup: list[PatchOp] = []
    for op in ops:
        kind, path = op["op"], op.get("path", "")
        if kind == "test":
            continue
        if kind not in ("add", "replace", "remove"):
            raise ValueError(f"{kind!r} operations cannot be rolled back automatically")
        parent, key = _parent(doc, path)
        if isinstance(parent, list) and kind != "replace":
            raise ValueError(f"{kind} into an array ({path}) cannot be rolled back automatically")
        existed = (0 <= int(key) < len(parent)) if isinstance(parent, list) else key in parent
        old = copy.deepcopy(parent[int(key)] if isinstance(parent, list) else parent.get(key))
        doc = jsonpatch.apply_patch(doc, [op], in_place=True)
        if kind != "remove" and existed and old == op.get("value"):
            continue  # writes what was there already: nothing to undo
        inverse: list[PatchOp] = []
        if kind != "remove":
            inverse.append({"op": "test", "path": path, "value": copy.deepcopy(op["value"])})
        if not existed:
            inverse.append({"op": "remove", "path": path})
        else:
            inverse.append(
                {"op": "add" if kind == "remove" else "replace", "path": path, "value": old}
            )
        target = cleanup if path == STRATEGY_PATH else revert
        target[:0] = inverse
    return revert, cleanup


def revert_patches(
    templates: TemplateSet,
    context: Mapping[str, Unchecked],
    forward: Rendered,
    raw: Unchecked,
    patched: Unchecked,
) -> tuple[list[PatchOp], list[PatchOp]]:
    """Compute the inverse, shape it with vm-revert-patch.j2, and prove it restores the VM."""
    try:
        inverse, cleanup = invert(forward.data, raw)
    except (ValueError, KeyError, IndexError, TypeError) as exc:
        raise forward.error(
            f"the patch cannot be rolled back: {exc}",
            hint="use add/replace/remove on object fields only",
        ) from exc
    out = render_yaml(templates, VM_REVERT, {**context, "ops": inverse})
    revert = ops_of(out)
    restored = apply_ops(Rendered(out.name, out.template, revert), patched)
    cleaned = apply_ops(Rendered(forward.name, forward.template, cleanup), restored)
    if cleaned != raw:
        raise out.error(
            "the rollback does not restore the VM as it was observed",
            hint="keep the computed `ops`; extra operations must be undone too",
        )
    return revert, cleanup
