"""The journal lives on the VM, in the ``vmstorage.dev/journal`` annotation.

Every write is a compare-and-swap against the journal *this runner last wrote* (or adopted
when it resumed the move), ``MoveRun.journal_text``: a JSON patch that first tests the
annotation's value, then replaces it. Each journal carries the writer's fencing token (holder
and Lease transitions, ``Lease.token``), so once another runner has taken the move over (its
first write puts its own token in), a stale runner's next write fails the test and it stops
(``Fenced``) instead of acting on a move that is no longer its own. A journal someone else
wrote, or removed, is never overwritten.

The resourceVersion is tested only when no journal exists yet (JSON patch cannot test for an
absent member): KubeVirt updates the VM's status all the time, and the journal only has to
agree with itself.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import replace
from typing import Any

from reconciler.apply.context import Fenced, MoveRun, StepFailed
from reconciler.apply.read import vm_state
from reconciler.kube.resources import VIRTUAL_MACHINES
from reconciler.model import journal as journals
from reconciler.model.errors import ClusterError
from reconciler.model.failures import Failure
from reconciler.model.journal import Journal, LastMigration
from reconciler.model.names import JOURNAL_ANNOTATION, LAST_MIGRATION_ANNOTATION
from reconciler.model.outcome import Result

Obj = dict[str, Any]


def pointer(key: str) -> str:
    """The JSON pointer of annotation ``key`` (RFC 6901 escaping of ``~`` and ``/``)."""
    return "/metadata/annotations/" + key.replace("~", "~0").replace("/", "~1")


JOURNAL_POINTER = pointer(JOURNAL_ANNOTATION)


def read_vm(run: MoveRun) -> Obj | None:
    """The VM as it is now, or None when it was deleted."""
    return run.cluster.get(VIRTUAL_MACHINES, run.namespace, run.vm)


def annotations_of(vm: Obj) -> Mapping[str, str]:
    return vm_state(vm).annotations


def journal_text_of(vm: Obj) -> str | None:
    return vm_state(vm).journal_text


def check_fence(run: MoveRun, vm: Obj) -> None:
    """Raise ``Fenced`` unless ``vm`` carries the journal this runner last wrote (and
    ``LeaseLost`` unless the Lease is provably ours). Called on every VM read before a
    write and before every destructive step."""
    run.guard()
    if journal_text_of(vm) != run.journal_text:
        found = journal_text_of(vm)
        who = "removed" if found is None else "rewritten"
        holder = ""
        if found is not None:
            try:
                written = journals.read_journal(annotations_of(vm))
                holder = written.fence if written else ""
            except journals.JournalError:
                holder = "?"
        raise Fenced(
            f"{run.namespace}/{run.vm}: the journal was {who} by someone else"
            + (f" (runner {holder})" if holder else "")
            + "; this runner leaves the move to them"
        )


def fence_ops(run: MoveRun) -> list[Obj]:
    """The test that makes a VM patch land only while the journal is still ours."""
    if run.journal_text is None:
        return []
    return [{"op": "test", "path": JOURNAL_POINTER, "value": run.journal_text}]


def _set_ops(vm: Obj, key: str, value: str | None) -> list[Obj]:
    """Ops that set (or remove, for None) annotation ``key``; no test (the caller's)."""
    state = vm_state(vm)
    if not state.annotations_map:
        if value is None:
            return []
        return [{"op": "add", "path": "/metadata/annotations", "value": {key: value}}]
    if value is None:
        return [{"op": "remove", "path": pointer(key)}] if key in state.annotations else []
    return [{"op": "add", "path": pointer(key), "value": value}]


def _guarded(run: MoveRun, vm: Obj, ops: list[Obj]) -> list[Obj]:
    if run.journal_text is not None:
        return [*fence_ops(run), *ops]
    version = vm_state(vm).resource_version
    return [{"op": "test", "path": "/metadata/resourceVersion", "value": version}, *ops]


def write(run: MoveRun, journal: Journal) -> Journal:
    """Write ``journal`` (stamped with this runner's token) on the VM in place of the one this
    runner last wrote. StepFailed ``vm-deleted`` when the VM is gone; ``Fenced`` when the
    journal there is not ours; ClusterError when the write keeps failing."""
    journal = replace(journal, fence=run.token)
    text = journals.encode(journal)
    # A move's first write tests the resourceVersion (JSON patch cannot test that a member is
    # absent), so any write to the VM races it: retried with backoff like every VM patch.
    for _ in run.conflicts(patient=journal.rolling_back):
        vm = read_vm(run)
        if vm is None:
            raise StepFailed(
                Failure.VM_DELETED, f"VirtualMachine {run.namespace}/{run.vm} was deleted"
            )
        if journal_text_of(vm) == text != run.journal_text:
            # Our own write landed although its answer was lost (a 503 or a dropped
            # connection after it was sent; the client's retry then failed its test): the
            # text carries this runner's token, so nobody else wrote it.
            run.guard()
            run.journal_text = text
            return journal
        check_fence(run, vm)
        if run.journal_text == text:
            return journal
        try:
            run.cluster.json_patch(
                VIRTUAL_MACHINES,
                run.namespace,
                run.vm,
                _guarded(run, vm, _set_ops(vm, JOURNAL_ANNOTATION, text)),
            )
        except ClusterError as exc:
            if exc.code not in (409, 422):
                raise
            continue  # read again: ours still (a resourceVersion race), or Fenced
        run.journal_text = text
        return journal
    raise ClusterError(
        f"VirtualMachine/{run.namespace}/{run.vm}",
        "the journal could not be written: the VM keeps changing under us",
    )


def _counted(vm: Obj, last: LastMigration) -> LastMigration:
    """``last`` with its ``failures``: one more than the previous record's when both failed."""
    if last.result != Result.ROLLED_BACK:
        return replace(last, failures=0)
    previous = journals.read_last(annotations_of(vm))
    before = previous.failures if previous and previous.result == Result.ROLLED_BACK else 0
    return replace(last, failures=before + 1)


def close(run: MoveRun, journal: Journal, last: LastMigration) -> None:
    """Remove the journal (still ours) and leave ``last`` on the VM, in one patch. A VM that
    is gone has nothing to close."""
    sent: str | None = None
    for _ in run.conflicts(patient=True):
        vm = read_vm(run)
        if vm is None:
            return
        notes = annotations_of(vm)
        if (
            sent is not None
            and JOURNAL_ANNOTATION not in notes
            and notes.get(LAST_MIGRATION_ANNOTATION) == sent
        ):
            run.journal_text = None  # our close landed although its answer was lost
            return
        check_fence(run, vm)
        last = _counted(vm, last)
        sent = journals.encode_last(last)
        ops = _set_ops(vm, LAST_MIGRATION_ANNOTATION, sent)
        ops += _set_ops(vm, JOURNAL_ANNOTATION, None)
        try:
            run.cluster.json_patch(VIRTUAL_MACHINES, run.namespace, run.vm, _guarded(run, vm, ops))
        except ClusterError as exc:
            if exc.code not in (409, 422):
                raise
            continue
        run.journal_text = None
        return
    raise ClusterError(
        f"VirtualMachine/{run.namespace}/{run.vm}",
        "could not remove the journal: the VM keeps changing under us",
    )
