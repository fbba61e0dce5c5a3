"""Steps on the disks: create the destination DataVolumes, wait until they are usable, delete
them on rollback, and (retention Delete, after verification) delete the sources.

Ownership is explicit: every DataVolume a move creates carries ``vmstorage.dev/migration=<id>``,
and a rollback deletes exactly those (never a disk the VM uses). A source is deleted only after
``verify`` passed, once no running pod mounts it any more (the old virt-launcher can hold it
for a while after a live move), and never when another VM still refers to it.
"""

from __future__ import annotations

from dataclasses import replace
from typing import Any

from reconciler.apply.context import MoveRun, StepFailed
from reconciler.apply.store import read_vm
from reconciler.apply.vm_steps import claims_of
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
from reconciler.model.journal import Flow, Journal
from reconciler.model.names import (
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
        try:
            run.cluster.create(DATA_VOLUMES, run.namespace, manifest)
            run.say(f"created DataVolume {name}", volume=_volume_of(journal, name))
            continue
        except ClusterError as exc:
            if exc.code != 409:
                if exc.code in (400, 403, 404, 422):
                    raise StepFailed("target-refused", str(exc)) from exc
                raise
        _adopt(run, journal, name)
    return journal


def _adopt(run: MoveRun, journal: Journal, name: str) -> None:
    """A destination DataVolume of that name exists: ours (this move, or an earlier attempt
    on the same source) is used; anything else is never touched."""
    existing = run.cluster.get(DATA_VOLUMES, run.namespace, name) or {}
    labels = _meta(existing).get("labels") or {}
    if labels.get(MIGRATION_LABEL) == journal.id:
        return
    source = next((v.source for v in journal.volumes if v.target == name), None)
    ours = labels.get(MANAGED_BY_LABEL) == MANAGED_BY and (
        (_meta(existing).get("annotations") or {}).get(SOURCE_CLAIM_ANNOTATION) == source
    )
    if not ours:
        raise StepFailed(
            "target-taken",
            f"DataVolume {run.namespace}/{name} exists and is not "
            "ours: pick another target name (targetName in the plan)",
        )
    run.cluster.json_patch(
        DATA_VOLUMES,
        run.namespace,
        name,
        [
            {
                "op": "add" if MIGRATION_LABEL not in labels else "replace",
                "path": "/metadata/labels/" + MIGRATION_LABEL.replace("/", "~1"),
                "value": journal.id,
            },
        ],
    )
    run.say(
        f"reusing DataVolume {name} (left by an earlier attempt)",
        volume=_volume_of(journal, name),
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


def _delete_targets(run: MoveRun, journal: Journal) -> Journal:
    vm = read_vm(run)
    in_use = set(claims_of(vm).values()) if vm else set()
    created = run.cluster.list_objects(
        DATA_VOLUMES, run.namespace, label_selector=f"{MIGRATION_LABEL}={journal.id}"
    )
    for dv in created:
        name = str(_meta(dv).get("name"))
        if name in in_use:  # never delete a disk the VM uses: the revert did not happen
            raise StepFailed("target-in-use", f"DataVolume {name} is still used by the VM")
        run.cluster.delete(DATA_VOLUMES, run.namespace, name)
        run.say(
            f"deleted DataVolume {name} (created by this move)",
            volume=_volume_of(journal, name),
        )
    return journal


def _mounting(pods: dict[str, Obj], claim: str) -> list[str]:
    """Pods that are not terminated and mount ``claim`` (what pvc-protection counts)."""
    holders = []
    for name, pod in pods.items():
        if (pod.get("status") or {}).get("phase") in ("Succeeded", "Failed"):
            continue
        volumes = (pod.get("spec") or {}).get("volumes") or ()
        if any(
            (v.get("persistentVolumeClaim") or {}).get("claimName") == claim
            for v in volumes
            if isinstance(v, dict)
        ):
            holders.append(name)
    return sorted(holders)


def _delete_sources(run: MoveRun, journal: Journal) -> Journal:
    if journal.retention != "Delete":
        return journal
    users = _other_users(run, journal)
    kept: dict[str, str] = {c: f"still used by {who}" for c, who in users.items()}
    sources = [v for v in journal.volumes if v.source not in kept]
    if sources:
        streams = [Stream("pods", PODS, run.namespace)]

        def released(state: State) -> bool | None:
            return None if any(_mounting(dict(state["pods"]), v.source) for v in sources) else True

        try:
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
        except StepFailed:
            pods = {p["metadata"]["name"]: p for p in run.cluster.list_objects(PODS, run.namespace)}
            for v in sources:
                holders = _mounting(pods, v.source)
                if holders:
                    kept[v.source] = f"still mounted by pod {', '.join(holders)}"
    for v in journal.volumes:
        if v.source in kept:
            run.say(f"kept source {v.source}: {kept[v.source]}", volume=v.volume)
            continue
        resource = DATA_VOLUMES if v.source_is_data_volume else PVCS
        run.cluster.delete(resource, run.namespace, v.source)
        run.say(f"deleted source {resource.kind} {v.source} (retention: Delete)", volume=v.volume)
    return replace(journal, sources_kept=kept)


def _other_users(run: MoveRun, journal: Journal) -> dict[str, str]:
    """source claim -> the VM (this one included) that still refers to it."""
    sources = {v.source for v in journal.volumes}
    users: dict[str, str] = {}
    for vm in run.cluster.list_objects(VIRTUAL_MACHINES, run.namespace):
        templates = (vm.get("spec") or {}).get("dataVolumeTemplates") or ()
        names = set(claims_of(vm).values()) | {
            str(_meta(t).get("name")) for t in templates if isinstance(t, dict)
        }
        for claim in sources & names:
            users.setdefault(claim, f"VirtualMachine {run.namespace}/{_meta(vm).get('name')}")
    return users


STEPS = {
    "create-targets": _create_targets,
    "wait-targets": _wait_targets,
    "delete-targets": _delete_targets,
    "delete-sources": _delete_sources,
}
