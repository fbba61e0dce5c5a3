"""The last forward step: after verification, delete the sources (retention Delete), or mark
each one kept with the move's record (``model.kept``), for `sources` and `prune`.

A source is deleted only if both the journal and the plan (as it is now) say Delete, once no
running pod mounts it any more (the old virt-launcher can hold it for a while after a live
move), and never when another VM still refers to it or its destination does not record this
move copying it.
"""

from __future__ import annotations

import contextlib
from dataclasses import replace

from reconciler.apply.claims import mounting, pinned_by, pods, pods_of, users_of
from reconciler.apply.context import MoveRun, StepFailed
from reconciler.apply.read import data_volume_state
from reconciler.apply.store import check_fence, read_vm
from reconciler.kube.resources import DATA_VOLUMES, PODS, PVCS
from reconciler.kube.watch import State, Stream
from reconciler.model.errors import ClusterError
from reconciler.model.journal import Journal, Step, VolumeMove
from reconciler.model.kept import KeptRecord, mark_ops
from reconciler.model.names import MIGRATION_LABEL, SOURCE_CLAIM_ANNOTATION
from reconciler.model.plan import Retention


def _delete_sources(run: MoveRun, journal: Journal) -> Journal:
    """Retention Delete, and only if the plan still says so (the more conservative of the
    journal and the plan: a plan changed to Keep, or gone, keeps the sources). Each source is
    deleted once no running pod mounts it (a completed pod that still lists it, as a live
    migration's source virt-launcher does, keeps the claim Terminating until it goes: said),
    and only if, immediately before its delete, the move is
    still ours and no VM, VMI or pod refers to it (one may have been created on it while we
    waited for the old virt-launcher to let go). Every source kept is marked as such
    (``_mark_kept``), for `sources` and `prune`."""
    kept: dict[str, str] = {}
    if journal.retention != Retention.DELETE:
        kept = {v.source: f"retention {journal.retention}" for v in journal.volumes}
        for v in journal.volumes:
            _mark_kept(run, journal, v, kept[v.source])
        return replace(journal, sources_kept=kept)
    if run.plan_retention is not Retention.DELETE:
        why = f"the plan now says retention {run.plan_retention}"
        if run.plan_retention is None:
            why = "no plan selects this VM any more"
        kept = {v.source: why for v in journal.volumes}
    sources = [v for v in journal.volumes if v.source not in kept]
    if sources:
        streams = [Stream("pods", PODS, run.namespace)]

        def released(state: State) -> bool | None:
            found = pods_of(state["pods"])
            return None if any(mounting(found, v.source) for v in sources) else True

        def tick(state: State) -> None:
            found = pods_of(state["pods"])
            run.say(
                "waiting for pods to release "
                + ", ".join(
                    f"{v.source} ({', '.join(mounting(found, v.source))})"
                    for v in sources
                    if mounting(found, v.source)
                )
            )

        with contextlib.suppress(StepFailed):  # whoever still holds a source is named below
            run.wait(
                streams,
                released,
                seconds=run.settings.release_timeout,
                what="the sources to be released by their pods",
                on_tick=tick,
            )
    for v in journal.volumes:
        if v.source not in kept:
            vm = read_vm(run)
            if vm is not None:
                check_fence(run, vm)
            users = users_of(run.cluster, run.namespace, {v.source})
            if users:
                kept[v.source] = f"still {users[v.source]}"
            elif not _copied_from(run, journal, v.target, v.source):
                kept[v.source] = (
                    f"its destination {v.target} does not record this move copying it "
                    "(label vmstorage.dev/migration, annotation vmstorage.dev/source-claim)"
                )
        if v.source in kept:
            run.say(f"kept source {v.source}: {kept[v.source]}", volume=v.volume)
            _mark_kept(run, journal, v, kept[v.source])
            continue
        resource = DATA_VOLUMES if v.source_is_data_volume else PVCS
        run.cluster.delete(resource, run.namespace, v.source)
        run.say(f"deleted source {resource.kind} {v.source} (retention: Delete)", volume=v.volume)
        if pinned := pinned_by(pods(run.cluster, run.namespace), v.source):
            run.say(
                f"source {v.source} stays Terminating until the completed pod "
                f"{', '.join(pinned)} is removed (kubernetes.io/pvc-protection; a virt-launcher "
                "pod goes when the VM stops): its storage is freed then",
                volume=v.volume,
            )
    return replace(journal, sources_kept=kept)


def _mark_kept(run: MoveRun, journal: Journal, v: VolumeMove, why: str) -> None:
    """Mark a source this move keeps with the move's record (``model.kept``: a label and an
    annotation on the DataVolume, else the PVC), so `sources` lists every move's kept sources
    and `prune` may delete them later. Idempotent (a resumed step keeps the first mark). A
    mark never fails a move: a source gone or replaced, or a Role without get and patch on
    it, is said and left (``sources`` still finds it by its destination's record)."""
    resource = DATA_VOLUMES if v.source_is_data_volume else PVCS
    record = KeptRecord(
        vm=run.vm,
        move=journal.id,
        plan=journal.plan,
        kept=run.now().isoformat(timespec="seconds"),
        why=why,
        volume=v.volume,
        target=v.target,
        from_class=v.from_class,
        size_bytes=v.size_bytes,
    )
    try:
        obj = run.cluster.get(resource, run.namespace, v.source)
        if obj is None or data_volume_state(obj).deleting:
            return
        ops = mark_ops(obj, record)
        if ops:
            run.cluster.json_patch(resource, run.namespace, v.source, ops)
    except ClusterError as exc:
        if exc.code not in (403, 404, 409, 422):
            raise
        run.say(f"kept source {v.source} not marked as kept: {exc}", volume=v.volume)


def _copied_from(run: MoveRun, journal: Journal, target: str, source: str) -> bool:
    """The destination says it is this move's copy of ``source``: what proves, beyond the
    journal (untrusted), that ``source`` is a claim this move replaced."""
    found = run.cluster.get(DATA_VOLUMES, run.namespace, target)
    if found is None:
        return False
    dv = data_volume_state(found)
    return (
        dv.labels.get(MIGRATION_LABEL) == journal.id
        and dv.annotations.get(SOURCE_CLAIM_ANNOTATION) == source
    )


STEPS = {Step.DELETE_SOURCES: _delete_sources}
