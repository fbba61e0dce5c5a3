"""Steps on the disks: create the destination DataVolumes, wait until they are usable, delete
them on rollback, and (retention Delete, after verification) delete the sources.

Ownership is explicit: every DataVolume a move creates carries ``vmstorage.dev/migration=<id>``,
and a rollback deletes exactly those (never a disk the VM uses). A source is deleted only after
``verify`` passed, once no running pod mounts it any more (the old virt-launcher can hold it
for a while after a live move), and never when another VM still refers to it.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable
from dataclasses import replace
from typing import Any

from reconciler.apply.context import MoveRun, StepFailed
from reconciler.apply.store import check_fence, read_vm
from reconciler.apply.vm_steps import claims_of
from reconciler.kube.client import Cluster
from reconciler.kube.resources import (
    DATA_VOLUMES,
    PODS,
    PVCS,
    STORAGE_CLASSES,
    VIRTUAL_MACHINES,
    VMIS,
)
from reconciler.kube.watch import State, Stream
from reconciler.model.errors import ClusterError
from reconciler.model.journal import Flow, Journal, VolumeMove
from reconciler.model.kept import KeptRecord, mark_ops
from reconciler.model.names import (
    IN_FLIGHT_ANNOTATION,
    MANAGED_BY,
    MANAGED_BY_LABEL,
    MIGRATION_LABEL,
    SOURCE_CLAIM_ANNOTATION,
)

Obj = dict[str, Any]


def _meta(obj: Obj) -> Obj:
    meta = obj.get("metadata")
    return meta if isinstance(meta, dict) else {}


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
                        raise StepFailed("target-refused", str(exc)) from exc
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
    meta = _meta(existing)
    labels = meta.get("labels") or {}
    if labels.get(MIGRATION_LABEL) == journal.id:
        return True
    if labels.get(MANAGED_BY_LABEL) != MANAGED_BY:
        raise StepFailed(
            "target-taken",
            f"DataVolume {run.namespace}/{name} exists and is not ours: pick another target "
            "name (targetName in the plan)",
        )
    users = _users(run, {name})
    if users:
        raise StepFailed(
            "target-taken",
            f"DataVolume {run.namespace}/{name} (left by move {labels.get(MIGRATION_LABEL)}) is "
            f"{users[name]}: pick another target name (targetName in the plan)",
        )
    _delete_and_wait(run, journal, name, str(meta.get("uid") or ""))
    run.say(
        f"deleted DataVolume {name}, left by move {labels.get(MIGRATION_LABEL) or '?'}: a copy "
        "is only used by the move that made it",
        volume=_volume_of(journal, name),
    )
    return False


def _delete_and_wait(run: MoveRun, journal: Journal, name: str, uid: str) -> None:
    """Delete DataVolume ``name`` (that uid only) and watch until it is gone."""
    _delete_exactly(run.cluster, run.namespace, name, uid)

    def gone(state: State) -> bool | None:
        dv = state["dv"].get(name)
        return True if dv is None or _meta(dv).get("uid") != uid else None

    run.wait(
        [Stream("dv", DATA_VOLUMES, run.namespace, name=name)],
        gone,
        seconds=min(run.seconds_left(journal), run.settings.settle_timeout),
        what=f"the leftover DataVolume {name} to be deleted",
        timeout_rule="target-taken",
    )


def _dv_failure(dv: Obj, run: MoveRun) -> str | None:
    status = dv.get("status") or {}
    phase = status.get("phase")
    running = next(
        (
            c
            for c in status.get("conditions") or ()
            if isinstance(c, dict) and c.get("type") == "Running"
        ),
        {},
    )
    why = running.get("message") or running.get("reason") or ""
    if phase == "Failed":
        return f"DataVolume {_meta(dv).get('name')} failed: {why or 'no reason given'}"
    restarts = int(status.get("restartCount") or 0)
    if restarts >= run.settings.max_clone_restarts:
        return (
            f"DataVolume {_meta(dv).get('name')} copy restarted {restarts} times"
            f" ({why or 'no reason given'})"
        )
    return None


def _usable(dv: Obj, flow: Flow) -> bool:
    phase = (dv.get("status") or {}).get("phase")
    # KubeVirt (v1.5+) accepts a populator-backed target still pending population (a
    # WaitForFirstConsumer CSI class) as a live destination: the migration target pod binds it.
    return phase == "Succeeded" or (flow is Flow.LIVE and phase == "PendingPopulation")


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
            raise StepFailed("vm-deleted", f"VirtualMachine {run.namespace}/{run.vm} was deleted")
        if journal.flow is Flow.OFFLINE and state["vmi"]:
            raise StepFailed(
                "vm-changed",
                "the VM was started by someone else during the offline copy (its disks are in "
                "use again); nothing was swapped",
            )
        for v in journal.volumes:
            dv = state["dvs"].get(v.target)
            if dv is None:
                raise StepFailed("target-deleted", f"DataVolume {v.target} was deleted")
            if v.to_class not in state["classes"]:
                raise StepFailed(
                    "storage-class-deleted",
                    f"StorageClass {v.to_class} was deleted during the move",
                )
            failure = _dv_failure(dv, run)
            if failure:
                raise StepFailed("copy-failed", failure)
            phase = (dv.get("status") or {}).get("phase")
            if journal.flow is Flow.LIVE and phase == "WaitForFirstConsumer":
                raise StepFailed(
                    "target-waits-for-consumer",
                    (
                        f"DataVolume {v.target} waits for a first consumer on a class without CDI "
                        "populators; KubeVirt cannot migrate to it live (use an Immediate class, a "
                        "CSI class, or mode: Offline)"
                    ),
                )
        return True if all(_usable(state["dvs"][n], journal.flow) for n in names) else None

    def tick(state: State) -> None:
        parts = []
        for name in names:
            status = (state["dvs"].get(name) or {}).get("status") or {}
            parts.append(f"{name} {status.get('phase') or 'Pending'} {status.get('progress', '')}")
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
    vm = read_vm(run)
    if vm is not None:
        check_fence(run, vm)  # destructive: only while the move is provably still ours
    in_use = set(claims_of(vm).values()) if vm else set()
    created = run.cluster.list_objects(
        DATA_VOLUMES, run.namespace, label_selector=f"{MIGRATION_LABEL}={journal.id}"
    )
    for dv in created:
        name = str(_meta(dv).get("name"))
        if name in in_use:  # never delete a disk the VM uses: the revert did not happen
            raise StepFailed("target-in-use", f"DataVolume {name} is still used by the VM")
        _delete_exactly(run.cluster, run.namespace, name, str(_meta(dv).get("uid") or ""))
        run.say(
            f"deleted DataVolume {name} (created by this move)",
            volume=_volume_of(journal, name),
        )
    return journal


def _lists(pod: Obj, claim: str) -> bool:
    """``claim`` is among the pod's volumes."""
    volumes = (pod.get("spec") or {}).get("volumes") or ()
    return any(
        (v.get("persistentVolumeClaim") or {}).get("claimName") == claim
        for v in volumes
        if isinstance(v, dict)
    )


def _done(pod: Obj) -> bool:
    return (pod.get("status") or {}).get("phase") in ("Succeeded", "Failed")


def _mounting(pods: dict[str, Obj], claim: str) -> list[str]:
    """Pods that are not terminated and mount ``claim``: they must let go before a delete."""
    return sorted(name for name, pod in pods.items() if not _done(pod) and _lists(pod, claim))


def _pinned_by(pods: dict[str, Obj], claim: str) -> list[str]:
    """Completed pods, scheduled to a node, that still list ``claim``. Kubernetes'
    pvc-protection counts them (podUsesPVCForDeletion ignores the phase), so a deleted claim
    stays Terminating until they are removed: after a live migration the source virt-launcher
    pod is left Succeeded, owned by the VMI, until the VM stops."""
    return sorted(
        name
        for name, pod in pods.items()
        if _done(pod) and (pod.get("spec") or {}).get("nodeName") and _lists(pod, claim)
    )


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
    if journal.retention != "Delete":
        kept = {v.source: f"retention {journal.retention}" for v in journal.volumes}
        for v in journal.volumes:
            _mark_kept(run, journal, v, kept[v.source])
        return replace(journal, sources_kept=kept)
    if run.plan_retention != "Delete":
        why = f"the plan now says retention {run.plan_retention}"
        if not run.plan_retention:
            why = "no plan selects this VM any more"
        kept = {v.source: why for v in journal.volumes}
    sources = [v for v in journal.volumes if v.source not in kept]
    if sources:
        streams = [Stream("pods", PODS, run.namespace)]

        def released(state: State) -> bool | None:
            return None if any(_mounting(dict(state["pods"]), v.source) for v in sources) else True

        with contextlib.suppress(StepFailed):  # whoever still holds a source is named below
            run.wait(
                streams,
                released,
                seconds=run.settings.release_timeout,
                what="the sources to be released by their pods",
                on_tick=lambda s: run.say(
                    "waiting for pods to release "
                    + ", ".join(
                        f"{v.source} ({', '.join(_mounting(dict(s['pods']), v.source))})"
                        for v in sources
                        if _mounting(dict(s["pods"]), v.source)
                    )
                ),
            )
    for v in journal.volumes:
        if v.source not in kept:
            vm = read_vm(run)
            if vm is not None:
                check_fence(run, vm)
            users = _users(run, {v.source})
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
        if pinned := _pinned_by(_pods(run.cluster, run.namespace), v.source):
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
        if obj is None or _meta(obj).get("deletionTimestamp"):
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
    dv = run.cluster.get(DATA_VOLUMES, run.namespace, target)
    meta = _meta(dv or {})
    return (meta.get("labels") or {}).get(MIGRATION_LABEL) == journal.id and (
        meta.get("annotations") or {}
    ).get(SOURCE_CLAIM_ANNOTATION) == source


def _users(run: MoveRun, claims: set[str]) -> dict[str, str]:
    return users_of(run.cluster, run.namespace, claims)


def _pods(cluster: Cluster, namespace: str) -> dict[str, Obj]:
    """The namespace's pods by name."""
    return {str(_meta(p).get("name")): p for p in cluster.list_objects(PODS, namespace)}


def users_of(cluster: Cluster, namespace: str, claims: set[str]) -> dict[str, str]:
    """claim -> who refers to it now ("used by VirtualMachine ns/x", "mounted by pod p"): a
    VM (this one included; its volumes or its dataVolumeTemplates), a VMI, or a pod that is
    not terminated and mounts it."""
    users: dict[str, str] = {}
    for vm in cluster.list_objects(VIRTUAL_MACHINES, namespace):
        templates = (vm.get("spec") or {}).get("dataVolumeTemplates") or ()
        names = set(claims_of(vm).values()) | {
            str(_meta(t).get("name")) for t in templates if isinstance(t, dict)
        }
        for claim in sorted(claims & names):
            users.setdefault(claim, f"used by VirtualMachine {namespace}/{_meta(vm).get('name')}")
    for vmi in cluster.list_objects(VMIS, namespace):
        names = set(claims_of({"spec": {"template": {"spec": vmi.get("spec") or {}}}}).values())
        for claim in sorted(claims & names):
            users.setdefault(
                claim, f"used by VirtualMachineInstance {namespace}/{_meta(vmi).get('name')}"
            )
    pods = _pods(cluster, namespace)
    for claim in sorted(claims):
        holders = _mounting(pods, claim)
        if holders:
            users.setdefault(claim, f"mounted by pod {', '.join(holders)}")
    return users


def held_by_completed_pods(cluster: Cluster, namespace: str, claims: set[str]) -> dict[str, str]:
    """claim -> the completed pods that keep it from going once deleted (``_pinned_by``)."""
    pods = _pods(cluster, namespace)
    return {c: ", ".join(held) for c in sorted(claims) if (held := _pinned_by(pods, c))}


def settle_targets(run: MoveRun, journal: Journal) -> None:
    """The move succeeded: its destinations are the VM's disks now, no longer in flight
    (``IN_FLIGHT_ANNOTATION`` removed, so no clean-up ever mistakes them for leftovers)."""
    for v in journal.volumes:
        dv = run.cluster.get(DATA_VOLUMES, run.namespace, v.target)
        if dv is None or IN_FLIGHT_ANNOTATION not in (_meta(dv).get("annotations") or {}):
            continue
        try:
            run.cluster.json_patch(
                DATA_VOLUMES,
                run.namespace,
                v.target,
                [
                    {"op": "test", "path": _label_pointer(MIGRATION_LABEL), "value": journal.id},
                    {"op": "remove", "path": _annotation_pointer(IN_FLIGHT_ANNOTATION)},
                ],
            )
        except ClusterError as exc:
            # 422: not ours any more, or already settled (our patch landed and its answer was
            # lost, the client's retry then found nothing to remove): either way, not in flight
            if exc.code != 422:
                raise


def _label_pointer(key: str) -> str:
    return "/metadata/labels/" + key.replace("~", "~0").replace("/", "~1")


def _annotation_pointer(key: str) -> str:
    return "/metadata/annotations/" + key.replace("~", "~0").replace("/", "~1")


def remove_leftovers(
    cluster: Cluster, namespace: str, open_moves: set[str], say: Callable[[str], None]
) -> list[str]:
    """Delete every destination of ours still in flight whose move no VM journals any more
    (its VM was deleted, or the journal removed to abandon the move), unless something uses
    it. The names deleted. Call only while holding the Lease, with every journal of the
    namespace read (``open_moves``: their ids)."""
    deleted = []
    for dv in cluster.list_objects(DATA_VOLUMES, namespace, label_selector=MIGRATION_LABEL):
        meta = _meta(dv)
        name = str(meta.get("name"))
        move = (meta.get("annotations") or {}).get(IN_FLIGHT_ANNOTATION)
        if not move or (meta.get("labels") or {}).get(MIGRATION_LABEL) != move:
            continue
        if move in open_moves or meta.get("deletionTimestamp"):
            continue
        users = users_of(cluster, namespace, {name})
        if users:
            who = users[name]
            say(f"{namespace}: kept DataVolume {name} of abandoned move {move}: {who}")
            continue
        if not _delete_exactly(cluster, namespace, name, str(meta.get("uid") or "")):
            continue
        say(f"{namespace}: deleted DataVolume {name}, left by move {move} (no VM journals it)")
        deleted.append(name)
    return deleted


STEPS = {
    "create-targets": _create_targets,
    "wait-targets": _wait_targets,
    "delete-targets": _delete_targets,
    "delete-sources": _delete_sources,
}
