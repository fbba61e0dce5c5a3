"""The journal lives on the VM, in the ``vmstorage.dev/journal`` annotation.

Every write is a JSON patch that first tests the annotation's current value, so a journal is
never overwritten by a run that did not read it (a second runner without the Lease, a person
editing it) and a VM annotation write never touches anything else of the VM. The
resourceVersion is deliberately not tested: KubeVirt updates the VM's status all the time, and
the journal only has to agree with itself.
"""

from __future__ import annotations

from typing import Any

from reconciler.apply.context import MoveRun, StepFailed
from reconciler.kube.resources import VIRTUAL_MACHINES
from reconciler.model import journal as journals
from reconciler.model.errors import ClusterError
from reconciler.model.journal import Journal, LastMigration
from reconciler.model.names import JOURNAL_ANNOTATION, LAST_MIGRATION_ANNOTATION

Obj = dict[str, Any]


def pointer(key: str) -> str:
    """The JSON pointer of annotation ``key`` (RFC 6901 escaping of ``~`` and ``/``)."""
    return "/metadata/annotations/" + key.replace("~", "~0").replace("/", "~1")


def read_vm(run: MoveRun) -> Obj | None:
    """The VM as it is now, or None when it was deleted."""
    return run.cluster.get(VIRTUAL_MACHINES, run.namespace, run.vm)


def annotations_of(vm: Obj) -> dict[str, str]:
    value = (vm.get("metadata") or {}).get("annotations") or {}
    return value if isinstance(value, dict) else {}


def read_journal(vm: Obj) -> Journal | None:
    """The VM's journal (None: no move of ours is open). JournalError when unreadable."""
    text = annotations_of(vm).get(JOURNAL_ANNOTATION)
    return None if text is None else journals.decode(text)


def _annotation_ops(vm: Obj, key: str, value: str | None) -> list[Obj]:
    """Ops that set (or remove, for None) annotation ``key``, testing its current value."""
    current = annotations_of(vm)
    ops: list[Obj] = []
    if "annotations" not in (vm.get("metadata") or {}) or not isinstance(
        vm["metadata"].get("annotations"), dict
    ):
        if value is None:
            return []
        return [{"op": "add", "path": "/metadata/annotations", "value": {key: value}}]
    path = pointer(key)
    if key in current:
        ops.append({"op": "test", "path": path, "value": current[key]})
        if value is None:
            ops.append({"op": "remove", "path": path})
        else:
            ops.append({"op": "replace", "path": path, "value": value})
    elif value is not None:
        ops.append({"op": "add", "path": path, "value": value})
    return ops


def write(run: MoveRun, journal: Journal) -> Journal:
    """Write ``journal`` on the VM (replacing what is there). StepFailed ``vm-deleted`` when
    the VM is gone; ClusterError when the write is refused (the journal changed under us)."""
    text = journals.encode(journal)
    for _ in range(3):
        vm = read_vm(run)
        if vm is None:
            raise StepFailed("vm-deleted", f"VirtualMachine {run.namespace}/{run.vm} was deleted")
        if annotations_of(vm).get(JOURNAL_ANNOTATION) == text:
            return journal
        try:
            run.cluster.json_patch(
                VIRTUAL_MACHINES,
                run.namespace,
                run.vm,
                _annotation_ops(vm, JOURNAL_ANNOTATION, text),
            )
            return journal
        except ClusterError as exc:
            if exc.code not in (409, 422):
                raise
            # 422: a test op failed because someone (KubeVirt, a person) changed the
            # annotations between our read and our write; read again and retry.
    raise ClusterError(
        f"VirtualMachine/{run.namespace}/{run.vm}",
        "the journal annotation keeps changing under us: is another reconciler running?",
    )


def close(run: MoveRun, journal: Journal, last: LastMigration) -> None:
    """Remove the journal and leave ``last`` on the VM, in one patch. A VM that is gone has
    nothing to close."""
    for _ in range(3):
        vm = read_vm(run)
        if vm is None:
            return
        ops = _annotation_ops(vm, LAST_MIGRATION_ANNOTATION, journals.encode_last(last))
        if "annotations" not in (vm.get("metadata") or {}):
            run.cluster.json_patch(VIRTUAL_MACHINES, run.namespace, run.vm, ops)
            return
        ops += _annotation_ops(vm, JOURNAL_ANNOTATION, None)
        try:
            run.cluster.json_patch(VIRTUAL_MACHINES, run.namespace, run.vm, ops)
            return
        except ClusterError as exc:
            if exc.code not in (409, 422):
                raise
    raise ClusterError(
        f"VirtualMachine/{run.namespace}/{run.vm}",
        "could not remove the journal: the annotations keep changing",
    )
