"""Steps on the destinations: create the DataVolumes, wait until they are usable, delete them on
rollback; once a move succeeded, settle them (no longer in flight); and the clean-up of leftovers
no journal claims any more.

Ownership is explicit: every DataVolume a move creates carries ``vmstorage.dev/migration=<id>``,
and a rollback deletes exactly those (never a disk the VM uses). The sources are
``source_steps``'.
"""

from __future__ import annotations

import time
from collections.abc import Callable

from reconciler.apply.claims import pods, users_of
from reconciler.apply.context import MoveRun, StepFailed
from reconciler.apply.read import DataVolumeState, data_volume_state, pvc_state, vm_state
from reconciler.apply.store import check_fence, pointer, read_vm
from reconciler.kube.client import Cluster
from reconciler.kube.resources import (
    DATA_VOLUMES,
    PVCS,
    STORAGE_CLASSES,
    VIRTUAL_MACHINES,
    VMIS,
)
from reconciler.kube.watch import Observer, State, Stream, WaitTimeout
from reconciler.model.errors import ClusterError
from reconciler.model.failures import Failure
from reconciler.model.journal import Flow, Journal, Step
from reconciler.model.names import (
    IN_FLIGHT_ANNOTATION,
    MANAGED_BY,
    MANAGED_BY_LABEL,
    MIGRATION_LABEL,
)

CLONE_SOURCE_POD_ANNOTATION = "cdi.kubevirt.io/storage.sourceClonePodName"
"""CDI's name of a host-assisted clone's source pod, on the target claim."""


def _create_targets(run: MoveRun, journal: Journal) -> Journal:
    for manifest in journal.data_volumes:
        name = str(manifest["metadata"]["name"])
        for _ in range(2):
            try:
                run.cluster.create(DATA_VOLUMES, run.namespace, manifest)
                run.say(f"created DataVolume {name}", volume=_volume_of(journal, name))
                break
            except ClusterError as exc:
                if exc.code != 409:
                    if exc.code in (400, 403, 404, 422):
                        raise StepFailed(Failure.TARGET_REFUSED, str(exc)) from exc
                    raise
            if _adopt(run, journal, name):
                break
    return journal


def _adopt(run: MoveRun, journal: Journal, name: str) -> bool:
    """A DataVolume named ``name`` exists where this move creates its destination. True when
    it is this move's own (created by an earlier attempt of this same move: its label names
    this move's id). Anything else is never used, whenever it was copied: a leftover of ours
    (another move, abandoned or of a VM since re-created) is deleted, once nothing uses it,
    and False returned (create again); anything not ours is refused."""
    existing = run.cluster.get(DATA_VOLUMES, run.namespace, name)
    if existing is None:
        return False  # gone meanwhile: create it
    dv = data_volume_state(existing)
    move = dv.labels.get(MIGRATION_LABEL)
    if move == journal.id:
        return True
    if dv.labels.get(MANAGED_BY_LABEL) != MANAGED_BY:
        raise StepFailed(
            Failure.TARGET_TAKEN,
            f"DataVolume {run.namespace}/{name} exists and is not ours: pick another target "
            "name (targetName in the plan)",
        )
    users = users_of(run.cluster, run.namespace, {name})
    if users:
        raise StepFailed(
            Failure.TARGET_TAKEN,
            f"DataVolume {run.namespace}/{name} (left by move {move}) is "
            f"{users[name]}: pick another target name (targetName in the plan)",
        )
    _delete_and_wait(run, journal, name, dv.uid)
    run.say(
        f"deleted DataVolume {name}, left by move {move or '?'}: a copy "
        "is only used by the move that made it",
        volume=_volume_of(journal, name),
    )
    return False


def _delete_and_wait(run: MoveRun, journal: Journal, name: str, uid: str) -> None:
    """Delete DataVolume ``name`` (that uid only) and watch until it and its claim are gone."""
    _delete_exactly(run.cluster, run.namespace, name, uid)
    run.wait(
        _dv_and_claim(run.namespace, name),
        _gone_with_its_claim(name, uid),
        seconds=min(run.seconds_left(journal), run.settings.settle_timeout),
        what=f"the leftover DataVolume {name} and its claim to be deleted",
        timeout_rule=Failure.TARGET_TAKEN,
    )


def _dv_and_claim(namespace: str, name: str) -> list[Stream]:
    return [
        Stream("dv", DATA_VOLUMES, namespace, name=name),
        Stream("pvc", PVCS, namespace, name=name),
    ]


def _gone_with_its_claim(name: str, uid: str) -> Callable[[State], bool | None]:
    """The predicate: DataVolume ``name`` of ``uid`` is gone, and so is the claim CDI made for
    it (same name, owned by that uid), which the garbage collector deletes only after it. A
    destination made again under that name must never meet the old claim: CDI would refuse
    it, or adopt the stale copy where claim adoption is on."""

    def gone(state: State) -> bool | None:
        dv = state["dv"].get(name)
        if dv is not None and data_volume_state(dv).uid == uid:
            return None
        claim = state["pvc"].get(name)
        if claim is not None and uid in pvc_state(claim).owner_uids:
            return None
        return True

    return gone


def _dv_failure(dv: DataVolumeState, run: MoveRun) -> str | None:
    running = dv.condition("Running")
    why = (running.message or running.reason) if running else ""
    if dv.phase == "Failed":
        return f"DataVolume {dv.name} failed: {why or 'no reason given'}"
    if dv.restart_count >= run.settings.max_clone_restarts:
        why = _clone_source_error(run, dv.name) or why
        return (
            f"DataVolume {dv.name} copy restarted {dv.restart_count} times"
            f" ({why or 'no reason given'})"
        )
    return None


def _clone_source_error(run: MoveRun, claim: str) -> str:
    """Why a host-assisted clone into ``claim`` keeps restarting: its source pod's last failed
    run. CDI counts that pod's restarts on the DataVolume, but the DataVolume's Running
    condition is the target's upload server's ("Pod is running"). The source pod is named on
    the claim the clone runs into: the target claim on CDI's legacy path; where CDI fills the
    target through its populators (a class whose driver has a CSIDriver object), the claim
    ``tmp-pvc-<target claim's uid>`` it makes in the source's namespace (CDI v1.65
    clone/planner.go ``createDesiredClaim``), the VM's namespace for a move. "" when there is
    none (not such a clone, or it never failed)."""
    pvc = run.cluster.get(PVCS, run.namespace, claim)
    if pvc is None:
        return ""
    source = pvc_state(pvc).annotations.get(CLONE_SOURCE_POD_ANNOTATION)
    uid = (pvc.get("metadata") or {}).get("uid")
    if not source and uid:
        desired = run.cluster.get(PVCS, run.namespace, f"tmp-pvc-{uid}")
        if desired is not None:
            source = pvc_state(desired).annotations.get(CLONE_SOURCE_POD_ANNOTATION)
    pod = pods(run.cluster, run.namespace).get(source) if source else None
    return pod.error if pod is not None else ""


def _usable(dv: DataVolumeState, flow: Flow) -> bool:
    # KubeVirt (v1.5+) accepts a populator-backed target still pending population (a
    # WaitForFirstConsumer CSI class) as a live destination: the migration target pod binds it.
    return dv.phase == "Succeeded" or (flow is Flow.LIVE and dv.phase == "PendingPopulation")


def _wait_targets(run: MoveRun, journal: Journal) -> Journal:
    streams = [
        Stream(
            "dvs", DATA_VOLUMES, run.namespace, label_selector=f"{MIGRATION_LABEL}={journal.id}"
        ),
        Stream("classes", STORAGE_CLASSES, None),
        Stream("vm", VIRTUAL_MACHINES, run.namespace, name=run.vm),
        Stream("vmi", VMIS, run.namespace, name=run.vm),
    ]
    names = [v.target for v in journal.volumes]

    def ready(state: State) -> bool | None:
        if not state["vm"]:  # a copy for a VM that is gone: stop now, not at the deadline
            raise StepFailed(
                Failure.VM_DELETED, f"VirtualMachine {run.namespace}/{run.vm} was deleted"
            )
        if journal.flow is Flow.OFFLINE and state["vmi"]:
            raise StepFailed(
                Failure.VM_CHANGED,
                "the VM was started by someone else during the offline copy (its disks are in "
                "use again); nothing was swapped",
            )
        dvs = {name: data_volume_state(dv) for name, dv in state["dvs"].items()}
        for v in journal.volumes:
            dv = dvs.get(v.target)
            if dv is None:
                raise StepFailed(Failure.TARGET_DELETED, f"DataVolume {v.target} was deleted")
            if v.to_class not in state["classes"]:
                raise StepFailed(
                    Failure.STORAGE_CLASS_DELETED,
                    f"StorageClass {v.to_class} was deleted during the move",
                )
            failure = _dv_failure(dv, run)
            if failure:
                raise StepFailed(Failure.COPY_FAILED, failure)
            if journal.flow is Flow.LIVE and dv.phase == "WaitForFirstConsumer":
                raise StepFailed(
                    Failure.TARGET_WAITS_FOR_CONSUMER,
                    (
                        f"DataVolume {v.target} waits for a first consumer on a class without CDI "
                        "populators; KubeVirt cannot migrate to it live (use an Immediate class, a "
                        "CSI class, or mode: Offline)"
                    ),
                )
        return True if all(_usable(dvs[n], journal.flow) for n in names) else None

    def tick(state: State) -> None:
        parts = []
        for name in names:
            raw = state["dvs"].get(name)
            dv = data_volume_state(raw) if raw is not None else None
            phase, progress = (dv.phase, dv.progress) if dv else ("", "")
            parts.append(f"{name} {phase or 'Pending'} {progress}")
        head = "copying: " if journal.flow is Flow.OFFLINE else "preparing: "
        run.say(head + "; ".join(p.strip() for p in parts))

    run.wait(
        streams,
        ready,
        seconds=run.seconds_left(journal),
        what="the destination DataVolumes to be ready",
        on_tick=tick,
    )
    return journal


def _volume_of(journal: Journal, target: str) -> str | None:
    """The VM volume whose destination is ``target`` (for structured progress)."""
    return next((v.volume for v in journal.volumes if v.target == target), None)


def _delete_exactly(cluster: Cluster, namespace: str, name: str, uid: str) -> bool:
    """Delete the DataVolume that was looked at (``uid``), never another one that took its
    name meanwhile. False when it is gone, or the name belongs to another object now."""
    try:
        return cluster.delete(DATA_VOLUMES, namespace, name, uid=uid or None)
    except ClusterError as exc:
        if exc.code == 409:  # the uid precondition failed: not the object we checked
            return False
        raise


def _delete_targets(run: MoveRun, journal: Journal) -> Journal:
    raw = read_vm(run)
    if raw is not None:
        check_fence(run, raw)  # destructive: only while the move is provably still ours
    in_use = set(vm_state(raw).claims.values()) if raw else set()
    created = run.cluster.list_objects(
        DATA_VOLUMES, run.namespace, label_selector=f"{MIGRATION_LABEL}={journal.id}"
    )
    for dv in map(data_volume_state, created):
        if dv.name in in_use:  # never delete a disk the VM uses: the revert did not happen
            raise StepFailed(Failure.TARGET_IN_USE, f"DataVolume {dv.name} is still used by the VM")
        _delete_exactly(run.cluster, run.namespace, dv.name, dv.uid)
        run.say(
            f"deleted DataVolume {dv.name} (created by this move)",
            volume=_volume_of(journal, dv.name),
        )
    return journal


def settle_targets(run: MoveRun, journal: Journal) -> None:
    """The move succeeded: its destinations are the VM's disks now, no longer in flight
    (``IN_FLIGHT_ANNOTATION`` removed, so no clean-up ever mistakes them for leftovers)."""
    for v in journal.volumes:
        found = run.cluster.get(DATA_VOLUMES, run.namespace, v.target)
        if found is None or IN_FLIGHT_ANNOTATION not in data_volume_state(found).annotations:
            continue
        try:
            run.cluster.json_patch(
                DATA_VOLUMES,
                run.namespace,
                v.target,
                [
                    {"op": "test", "path": _label_pointer(MIGRATION_LABEL), "value": journal.id},
                    {"op": "remove", "path": pointer(IN_FLIGHT_ANNOTATION)},
                ],
            )
        except ClusterError as exc:
            # 422: not ours any more, or already settled (our patch landed and its answer was
            # lost, the client's retry then found nothing to remove): either way, not in flight
            if exc.code != 422:
                raise


def _label_pointer(key: str) -> str:
    return "/metadata/labels/" + key.replace("~", "~0").replace("/", "~1")


def remove_leftovers(
    cluster: Cluster,
    namespace: str,
    open_moves: set[str],
    say: Callable[[str], None],
    *,
    settle: float,
) -> list[str]:
    """Delete every destination of ours still in flight whose move no VM journals any more
    (its VM was deleted, or the journal removed to abandon the move), unless something uses
    it, and watch until each is gone with its claim (up to ``settle`` seconds each: a move
    of this run may make a destination of the same name, which must not meet the old claim;
    one still there then is named by that move's render). The names deleted. Call only
    while holding the Lease, with every journal of the namespace read (``open_moves``:
    their ids)."""
    deleted = []
    for dv in map(
        data_volume_state,
        cluster.list_objects(DATA_VOLUMES, namespace, label_selector=MIGRATION_LABEL),
    ):
        move = dv.annotations.get(IN_FLIGHT_ANNOTATION)
        if not move or dv.labels.get(MIGRATION_LABEL) != move:
            continue
        if move in open_moves or dv.deleting:
            continue
        users = users_of(cluster, namespace, {dv.name})
        if users:
            who = users[dv.name]
            say(f"{namespace}: kept DataVolume {dv.name} of abandoned move {move}: {who}")
            continue
        if not _delete_exactly(cluster, namespace, dv.name, dv.uid):
            continue
        say(f"{namespace}: deleted DataVolume {dv.name}, left by move {move} (no VM journals it)")
        deleted.append(dv.name)
        with Observer(cluster.api, _dv_and_claim(namespace, dv.name)) as observer:
            try:
                observer.wait(
                    _gone_with_its_claim(dv.name, dv.uid),
                    time.monotonic() + settle,
                    what=f"DataVolume {dv.name} and its claim to be deleted",
                )
            except WaitTimeout:
                left = f"DataVolume {dv.name} or its claim"
                say(f"{namespace}: {left} is still there after {settle:.0f}s")
    return deleted


STEPS = {
    Step.CREATE_TARGETS: _create_targets,
    Step.WAIT_TARGETS: _wait_targets,
    Step.DELETE_TARGETS: _delete_targets,
}
