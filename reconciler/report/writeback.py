"""The GitOps write-back of a finished move, computed and formatted. Pure.

``write_back`` takes the VM as the move left it (verified) and the moved volumes
``(volume, source claim, target claim)`` and returns the ``WriteBack``: for each volume the
entry of ``spec.template.spec.volumes`` whose claim was renamed and, when the claim came from
``spec.dataVolumeTemplates``, that template's new name and class; plus
``spec.updateVolumesStrategy`` as the move left it. The patch is written against the manifest
*as Git has it*, which is the VM before the move: the lists are atomic in KubeVirt's schema, so
a GitOps tool applied them whole and in Git's order, and the indices of the moved VM are the
indices in Git. Each renamed value is ``test``-ed first (the old claim name), so a manifest that
has drifted from the cluster fails to patch instead of being half-edited; the template's class
is set with ``add`` (RFC 6902: replaces a member that exists, adds one that does not), because
Git may leave it to the default class.

Three renderings: ``write_back_yaml`` (the changed fields in context, with the old names as
comments, for editing by hand), ``kustomize_patch`` (the patch as a kustomize ``patches`` entry,
which Flux and Argo CD both build), and ``write_back_note`` (one line for a Kubernetes Event,
at most 1024 bytes).
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from typing import Any

from reconciler.model.writeback import WriteBack, WriteBackVolume

VOLUMES = "/spec/template/spec/volumes"
TEMPLATES = "/spec/dataVolumeTemplates"
STRATEGY = "/spec/updateVolumesStrategy"
NOTE_LIMIT = 1024  # bytes of an events.k8s.io/v1 Event's note


def _list(value: Any) -> list[Mapping[str, Any]]:
    return [v for v in value if isinstance(v, Mapping)] if isinstance(value, list) else []


def write_back(
    vm: Mapping[str, Any],
    moved: Sequence[tuple[str, str, str]],
    owners: Sequence[str],
) -> WriteBack:
    """The write-back for ``vm`` (the VM as a verified move left it) after ``moved``
    (volume, source, target). ValueError when the VM does not use a target (not a finished
    move: nothing to write back)."""
    meta = vm.get("metadata") or {}
    spec = vm.get("spec") or {}
    volumes = _list(((spec.get("template") or {}).get("spec") or {}).get("volumes"))
    templates = _list(spec.get("dataVolumeTemplates"))
    entries: list[WriteBackVolume] = []
    ops: list[dict[str, Any]] = []
    notes: list[str] = []
    for volume, source, target in moved:
        index = next((i for i, v in enumerate(volumes) if v.get("name") == volume), None)
        if index is None:
            raise ValueError(f"the VM has no volume {volume}")
        entry = volumes[index]
        claim_field = "dataVolume" if "dataVolume" in entry else "persistentVolumeClaim"
        key = "claimName" if claim_field == "persistentVolumeClaim" else "name"
        if (entry.get(claim_field) or {}).get(key) != target:
            raise ValueError(f"volume {volume} does not use {target}: the move is not finished")
        path = f"{VOLUMES}/{index}/{claim_field}/{key}"
        ops += [
            {"op": "test", "path": f"{VOLUMES}/{index}/name", "value": volume},
            {"op": "test", "path": path, "value": source},
            {"op": "replace", "path": path, "value": target},
        ]
        found = next(
            (
                (j, t)
                for j, t in enumerate(templates)
                if (t.get("metadata") or {}).get("name") == target
            ),
            None,
        )
        if found is None:
            entries.append(WriteBackVolume(volume, index, claim_field, source, target))
            kind = "DataVolume" if claim_field == "dataVolume" else "PersistentVolumeClaim"
            notes.append(
                f"volume {volume}: {kind} {target} was created by vm-storage-reconciler and is "
                f"not in Git; if the repository also holds {kind} {source}, keep it there while "
                "the source is kept, and remove it from Git before the source may be deleted "
                "(a sync would recreate it)"
            )
            continue
        j, template = found
        tspec = template.get("spec") or {}
        storage = "pvc" if "pvc" in tspec and "storage" not in tspec else "storage"
        cls = (tspec.get(storage) or {}).get("storageClassName")
        entries.append(
            WriteBackVolume(
                volume,
                index,
                claim_field,
                source,
                target,
                template_index=j,
                template_storage=storage,
                storage_class=str(cls) if cls else None,
            )
        )
        ops += [
            {"op": "test", "path": f"{TEMPLATES}/{j}/metadata/name", "value": source},
            {"op": "replace", "path": f"{TEMPLATES}/{j}/metadata/name", "value": target},
        ]
        if cls:
            ops.append(
                {
                    "op": "add",
                    "path": f"{TEMPLATES}/{j}/spec/{storage}/storageClassName",
                    "value": cls,
                }
            )
    strategy = spec.get("updateVolumesStrategy")
    if strategy:
        ops.append({"op": "add", "path": STRATEGY, "value": strategy})
    return WriteBack(
        namespace=str(meta.get("namespace") or ""),
        vm=str(meta.get("name") or ""),
        owners=tuple(owners),
        volumes=tuple(entries),
        patch=tuple(ops),
        strategy=str(strategy) if strategy else None,
        notes=tuple(notes),
    )


def write_back_yaml(wb: WriteBack) -> str:
    """The fields to change in the VM's manifest, in context, old values as comments.

    Only the changed fields are shown (the lists are abbreviated to the moved entries: edit
    those entries in place, do not replace the lists with this)."""
    lines = [
        f"# VirtualMachine {wb.namespace}/{wb.vm}: change these fields in its manifest",
        "spec:",
    ]
    if wb.strategy:
        lines.append(f"  updateVolumesStrategy: {wb.strategy}")
    templated = sorted((v for v in wb.volumes if v.template_index is not None), key=_by_template)
    if templated:
        lines.append("  dataVolumeTemplates:")
        for v in templated:
            lines += [
                f"    - metadata:  # dataVolumeTemplates[{v.template_index}]",
                f"        name: {v.target}  # was: {v.source}",
            ]
            if v.storage_class:
                lines += [
                    "      spec:",
                    f"        {v.template_storage}:",
                    f"          storageClassName: {v.storage_class}",
                ]
    lines += ["  template:", "    spec:", "      volumes:"]
    for v in sorted(wb.volumes, key=lambda v: v.index):
        lines += [
            f"        - name: {v.volume}  # volumes[{v.index}]",
            f"          {v.claim_field}:",
            f"            {v.claim_key}: {v.target}  # was: {v.source}",
        ]
    return "\n".join(lines) + "\n"


def _by_template(v: WriteBackVolume) -> int:
    return v.template_index if v.template_index is not None else -1


def kustomize_patch(wb: WriteBack) -> dict[str, Any]:
    """The patch as an entry of a kustomization's ``patches`` list."""
    return {
        "target": {
            "group": "kubevirt.io",
            "version": "v1",
            "kind": "VirtualMachine",
            "name": wb.vm,
            "namespace": wb.namespace,
        },
        "patch": json.dumps([dict(op) for op in wb.patch]),
    }


def write_back_doc(wb: WriteBack) -> dict[str, Any]:
    """``writeBack`` of an outcome in the ApplyReport (and the status ConfigMap)."""
    return {
        "owners": list(wb.owners),
        "volumes": [
            {
                "volume": v.volume,
                "claimField": f"{v.claim_field}.{v.claim_key}",
                "from": v.source,
                "to": v.target,
                "dataVolumeTemplate": v.target if v.template_index is not None else None,
                "storageClass": v.storage_class,
            }
            for v in wb.volumes
        ],
        "updateVolumesStrategy": wb.strategy,
        "jsonPatch": [dict(op) for op in wb.patch],
        "yaml": write_back_yaml(wb),
        "kustomizePatch": kustomize_patch(wb),
        "notes": list(wb.notes),
    }


def write_back_text(wb: WriteBack, indent: str = "  ") -> str:
    """The write-back for the text report: who, why, the YAML, the one-line JSON patch."""
    who = ", ".join(wb.owners) or "a GitOps tool"
    lines = [
        f"{indent}Write-back: {wb.vm} is applied from Git by {who}; commit this change to its "
        "manifest so Git and the cluster agree and a later sync reverts nothing:",
        *(f"{indent}  {line}" for line in write_back_yaml(wb).splitlines()),
        f"{indent}  as a JSON patch (RFC 6902; also a kustomize `patches` entry): "
        + json.dumps([dict(op) for op in wb.patch], separators=(",", ":")),
        *(f"{indent}  note: {note}" for note in wb.notes),
    ]
    return "\n".join(lines) + "\n"


def write_back_note(wb: WriteBack, *, more: str = "") -> str:
    """One line for an Event (at most ``NOTE_LIMIT`` bytes): what to commit, then the JSON
    patch when it fits; ``more`` says where the whole write-back is (the status ConfigMap)."""
    changes = []
    for v in wb.volumes:
        change = f"volume {v.volume}: {v.claim_field}.{v.claim_key} {v.source} -> {v.target}"
        if v.template_index is not None:
            change += f", dataVolumeTemplates[{v.template_index}] renamed too"
            if v.storage_class:
                change += f" (storageClassName {v.storage_class})"
        changes.append(change)
    if wb.strategy:
        changes.append(f"updateVolumesStrategy: {wb.strategy}")
    who = ", ".join(wb.owners) or "a GitOps tool"
    head = f"applied from Git by {who}: commit to its manifest: " + "; ".join(changes)
    patch = " JSON patch: " + json.dumps([dict(op) for op in wb.patch], separators=(",", ":"))
    tail = f" ({more})" if more else ""
    for text in (head + patch + tail, head + tail, head):
        if len(text.encode()) <= NOTE_LIMIT:
            return text
    return cut(head, NOTE_LIMIT)


def cut(text: str, limit: int) -> str:
    """``text`` in at most ``limit`` UTF-8 bytes (an ellipsis marks a cut)."""
    if len(text.encode()) <= limit:
        return text
    data = text.encode()[: limit - 3]
    return data.decode("utf-8", "ignore") + "..."
