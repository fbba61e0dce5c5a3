"""KubeVirt live migration: the workload updater and the migration controller.

- `WorkloadUpdater` (virt-controller workload-updater.go, volume changes only): creates the
  `kubevirt-workload-update-*` migration for a VMI whose volumes change (LiveMigrate), evicts
  its launcher pod instead when `workloadUpdateMethods` has Evict but not LiveMigrate, and
  deletes the migration again when the change is cancelled.
- `MigrationController` (migration.go, plus the source/target virt-handler and virt-launcher):
  VMIM phases with `migrationState`, the parallel limits of `spec.configuration.migrations`
  (`parallelMigrationsPerCluster` 5, `parallelOutboundMigrationsPerNode` 2: further
  migrations stay Pending), the target launcher pod, the copy (GiB of the migrated volumes
  x `copy_seconds_per_gib`), the progress timeout (`progressTimeout`, 150 s: a copy without
  progress is aborted), content hashes carried to the destination PVCs, the "destination
  smaller" failure, back-off between retries (Warning `MigrationBackoff` on the VMI), abort
  on delete, and the garbage collection of finished migrations beyond five per VMI (with the
  source pod of a successful one, the target pod of a failed one).
"""

from __future__ import annotations

import copy
import itertools
import logging
import time
from collections.abc import Iterable, Mapping
from typing import Any, ClassVar

from testenv.node.runtime import (
    CONTENT_HASH_ANNOTATION,
    Controller,
    Key,
    Simulator,
    annotations_of,
    content_hash,
    key_of,
    now_rfc3339,
)
from testenv.simulator import kubevirt_rules as rules
from testenv.simulator import pods
from testenv.simulator.kubevirt import (
    KUBEVIRT,
    PVC,
    VM,
    VMI,
    VMIM,
    Dwell,
    by_name,
    cluster_config,
    controller_owner,
    kubevirt_cr,
    namespace_terminating,
    phase_history,
    select_node,
    wall_to_monotonic,
    write_meta,
    write_status,
)
from testenv.simulator.kubevirt_rules import MigrationPhase, VMIPhase

log = logging.getLogger("testenv.simulator.kubevirt")

FINISHED_MIGRATIONS_KEPT = 5
"""defaultFinalizedMigrationGarbageCollectionBuffer: finished migrations kept per VMI."""




class WorkloadUpdater(Controller):
    """virt-controller's workload updater, for volume changes only."""

    watches: ClassVar[tuple[str, ...]] = (VMI, VMIM, KUBEVIRT)

    def keys_for(self, resource: str, obj: dict[str, Any]) -> Iterable[Key]:
        if resource == VMI:
            return [key_of(VMI, obj)]
        if resource == VMIM:
            vmi_name = (obj.get("spec") or {}).get("vmiName")
            return [(VMI, obj["metadata"]["namespace"], vmi_name)] if vmi_name else []
        return [key_of(VMI, vmi) for vmi in self.sim.store.list(VMI)]

    def reconcile(self, key: Key) -> None:
        cr = kubevirt_cr(self.sim)
        if cr is None or (cr.get("status") or {}).get("phase") != "Deployed" \
                or namespace_terminating(self.sim, key[1]):
            return
        config = cluster_config(self.sim)
        vmi = self.sim.store.get(*key)
        if vmi is None or rules.vmi_phase(vmi) != VMIPhase.RUNNING \
                or rules.is_deleting_obj(vmi):
            return
        namespace, name = key[1], key[2]
        unfinished = [m for m in self.sim.store.list(VMIM, namespace)
                      if (m.get("spec") or {}).get("vmiName") == name
                      and not rules.is_final_migration(m)]
        if rules.condition_is(vmi, "VolumesChange", "True"):
            if unfinished or rules.is_migrating(vmi):
                return
            migrated = (vmi.get("status") or {}).get("migratedVolumes") or []
            can_migrate = bool(migrated) and rules.update_migration_error(vmi, migrated) is None
            if config.live_migrate and can_migrate:
                self._create_migration(vmi)
            elif config.evict:
                self._evict(vmi)
            return
        state = (vmi.get("status") or {}).get("migrationState") or {}
        if state.get("targetNodeDomainReadyTimestamp"):
            return
        for migration in unfinished:
            if rules.WORKLOAD_UPDATE_ANNOTATION not in annotations_of(migration):
                continue
            if rules.is_deleting_obj(migration):
                continue
            self.sim.client.delete(VMIM, namespace, migration["metadata"]["name"])
            self.sim.client.event(vmi, "Normal", "SuccessfulChangeAbortion",
                                  f"Aborted change for vmi: {name}")

    def _evict(self, vmi: Mapping[str, Any]) -> None:
        """Evict the VMI's launcher pod (the pods/eviction subresource), as the updater does
        for an outdated VMI it may not migrate; the guest stops, the VM then needs manual
        recovery (its volume migration ended with the VMI)."""
        node = str((vmi.get("status") or {}).get("nodeName") or "")
        pod = pods.active_pod(self.sim.store, vmi, node)
        if pod is None:
            return
        meta = pod["metadata"]
        body = {"apiVersion": "policy/v1", "kind": "Eviction",
                "metadata": {"name": meta["name"], "namespace": meta["namespace"]}}
        self.sim.client.request("POST", f"/api/v1/namespaces/{meta['namespace']}/pods/"
                                f"{meta['name']}/eviction", body=body)
        # Go's "%v" of the nil error the upstream message formats
        self.sim.client.event(vmi, "Normal", "SuccessfulEvict",
                              "Initiated eviction of VMI as part of automated workload "
                              "update: <nil>")

    def _create_migration(self, vmi: Mapping[str, Any]) -> None:
        meta = vmi["metadata"]
        label = meta["name"] if len(meta["name"]) <= 63 else meta["uid"]
        body = {
            "apiVersion": "kubevirt.io/v1",
            "kind": "VirtualMachineInstanceMigration",
            "metadata": {
                "generateName": "kubevirt-workload-update-",
                "namespace": meta["namespace"],
                "annotations": {rules.WORKLOAD_UPDATE_ANNOTATION: ""},
                "labels": {rules.VOLUME_UPDATE_MIGRATION_LABEL: label,
                           rules.VMI_NAME_LABEL: meta["name"]},
            },
            "spec": {"vmiName": meta["name"], "priority": "user-triggered"},
        }
        created = self.sim.client.create(VMIM, body)
        self.sim.client.event(vmi, "Normal", "SuccessfulCreate",
                              f"Created Migration {created['metadata']['name']} for automated "
                              "workload update")


# --------------------------------------------------------------------------------------------
# Migrations


class MigrationController(Controller):
    """The migration controller plus the source/target virt-handlers of a live migration."""

    watches: ClassVar[tuple[str, ...]] = (VMIM, VMI, PVC)

    def __init__(self, sim: Simulator) -> None:
        super().__init__(sim)
        self._dwell = Dwell()
        self._seq: dict[str, int] = {}
        self._counter = itertools.count()
        self._failed_at: dict[str, float] = {}
        self._verdict: dict[str, str] = {}
        self._backoff_reported: set[str] = set()
        self._stalled_since: dict[str, float] = {}

    def keys_for(self, resource: str, obj: dict[str, Any]) -> Iterable[Key]:
        meta = obj["metadata"]
        if resource == VMIM:
            vmi_name = (obj.get("spec") or {}).get("vmiName")
            keys = [key_of(VMIM, obj), *self._active_keys(meta["namespace"], vmi_name)]
            if rules.is_final_migration(obj) or rules.is_deleting_obj(obj):
                keys += self._queued_keys()  # a parallel-migration slot may have opened
            return keys
        if resource == VMI:
            return self._active_keys(meta["namespace"], meta["name"])
        return self._active_keys(meta["namespace"], None)

    def _queued_keys(self) -> list[Key]:
        return [key_of(VMIM, m) for m in self.sim.store.list(VMIM)
                if rules.migration_phase(m) == MigrationPhase.PENDING]

    def _active_keys(self, namespace: str, vmi_name: str | None) -> list[Key]:
        return [key_of(VMIM, m) for m in self.sim.store.list(VMIM, namespace)
                if not rules.is_final_migration(m)
                and (vmi_name is None or (m.get("spec") or {}).get("vmiName") == vmi_name)]

    @property
    def tick(self) -> float:
        return float(self.sim.config.progress_tick)

    # -- main loop

    def reconcile(self, key: Key) -> None:
        migration = self.sim.store.get(*key)
        if migration is None or namespace_terminating(self.sim, key[1]):
            return
        meta = migration["metadata"]
        uid = meta["uid"]
        self._seq.setdefault(uid, next(self._counter))
        vmi_name = (migration.get("spec") or {}).get("vmiName", "")
        if (meta.get("labels") or {}).get(rules.VMI_NAME_LABEL) != vmi_name \
                and not rules.is_deleting_obj(migration):
            # the VMIM mutating webhook labels every migration with its VMI
            write_meta(self.sim, VMIM, migration,
                       {"metadata": {"labels": {rules.VMI_NAME_LABEL: vmi_name}}})
            return
        if rules.is_deleting_obj(migration):
            self._finalize(migration)
            return
        phase = rules.migration_phase(migration)
        if phase in rules.FINAL_MIGRATION_PHASES:
            return
        if not phase:
            self._admit(migration)
            return
        vmi = self.sim.store.get(VMI, meta["namespace"], vmi_name)
        if vmi is None or rules.is_deleting_obj(vmi) or rules.is_final_vmi(vmi) \
                or rules.vmi_phase(vmi) != VMIPhase.RUNNING:
            self._fail(migration, vmi, f"VMI {vmi_name} is not running")
            return
        steps = {
            MigrationPhase.PENDING: self._pending,
            MigrationPhase.SCHEDULING: self._scheduling,
            MigrationPhase.SCHEDULED: self._prepare,
            MigrationPhase.PREPARING_TARGET: self._prepare,
            MigrationPhase.TARGET_READY: self._start_copy,
            MigrationPhase.RUNNING: self._copy,
        }
        step = steps.get(MigrationPhase(phase)) if phase in steps else None
        if step is not None:
            step(migration, vmi)

    # -- phases

    def _admit(self, migration: dict[str, Any]) -> None:
        """Take the migration in: our finalizer, then Pending."""
        finalizers = migration["metadata"].get("finalizers") or []
        if rules.MIGRATION_FINALIZER not in finalizers:
            migration = write_meta(self.sim, VMIM, migration, {"metadata": {
                "finalizers": [*finalizers, rules.MIGRATION_FINALIZER]}})
        self._set_phase(migration, MigrationPhase.PENDING, {})

    def _pending(self, migration: dict[str, Any], vmi: dict[str, Any]) -> None:
        key = key_of(VMIM, migration)
        uid = migration["metadata"]["uid"]
        volume_migration = bool((vmi.get("status") or {}).get("migratedVolumes"))
        if not volume_migration:
            live = rules.find_condition(vmi, "LiveMigratable")
            if live is not None and live.get("status") == "False":
                self._fail(migration, vmi,
                           f"Cannot migrate VMI, Reason: {live.get('reason', '')}, "
                           f"Message: {live.get('message', '')}")
                return
        if self._other_active(migration):
            return  # one migration per VMI at a time; its progress wakes us up
        deadline = self._backoff_deadline(migration)
        if deadline is not None and deadline > time.monotonic():
            if uid not in self._backoff_reported:
                self._backoff_reported.add(uid)
                self.sim.client.event(vmi, "Warning", "MigrationBackoff",
                                      f"backoff migrating vmi {migration['metadata']['namespace']}"
                                      f"/{vmi['metadata']['name']}")
            self.sim.enqueue(self, key, deadline - time.monotonic())
            return
        if self._at_limit(vmi):
            return  # queued: a finished migration wakes every Pending one
        if volume_migration and not rules.condition_is(vmi, "VolumesChange", "True"):
            return  # a destination is missing; the VMI's VolumesChange flip wakes us up
        source = (vmi.get("status") or {}).get("nodeName", "")
        target = self._target_node(source)
        if target is None:
            log.warning("%s: no node to migrate %s to", key, vmi["metadata"]["name"])
            self.sim.enqueue(self, key, 1.0)
            return
        if self._wait(key, uid, MigrationPhase.PENDING, self.tick):
            return
        source_pod = pods.active_pod(self.sim.store, vmi, source)
        state = {
            "migrationUid": uid,
            "sourceNode": source,
            "sourcePod": source_pod["metadata"]["name"] if source_pod else "",
            "targetNode": target,
            "mode": "PreCopy",
        }
        self._set_vmi_migration_state(vmi, state)
        self._set_phase(migration, MigrationPhase.SCHEDULING, {"migrationState": state})

    def _scheduling(self, migration: dict[str, Any], vmi: dict[str, Any]) -> None:
        """The target pod starts once every destination claim is bound on the target node."""
        state = (migration.get("status") or {}).get("migrationState") or {}
        namespace = migration["metadata"]["namespace"]
        destinations = self._destinations(vmi)
        select_node(self.sim, namespace, destinations, str(state.get("targetNode", "")))
        pvcs = by_name(self.sim, PVC, namespace)
        if not all(((pvcs.get(c) or {}).get("status") or {}).get("phase") == "Bound"
                   for c in destinations):
            return
        if self._wait(key_of(VMIM, migration), migration["metadata"]["uid"],
                      MigrationPhase.SCHEDULING, self.tick):
            return
        target = str(state.get("targetNode", ""))
        pod = pods.active_pod(self.sim.store, vmi, target) or pods.create_launcher_pod(
            self.sim, vmi, target, rules.claims_by_volume(rules.spec_volumes(vmi)),
            migration_uid=migration["metadata"]["uid"])
        state = {**state, "targetPod": pod["metadata"]["name"]}
        vmi_status = copy.deepcopy(vmi.get("status") or {})
        vmi_status["activePods"] = {**(vmi_status.get("activePods") or {}),
                                    pod["metadata"]["uid"]: target}
        vmi_status["migrationState"] = state
        write_status(self.sim, VMI, vmi, vmi_status)
        self._set_phase(migration, MigrationPhase.SCHEDULED, {"migrationState": state})

    def _prepare(self, migration: dict[str, Any], vmi: dict[str, Any]) -> None:
        phase = MigrationPhase(rules.migration_phase(migration))
        if self._wait(key_of(VMIM, migration), migration["metadata"]["uid"], phase, self.tick):
            return
        following = (MigrationPhase.PREPARING_TARGET if phase is MigrationPhase.SCHEDULED
                     else MigrationPhase.TARGET_READY)
        self._set_phase(migration, following, {})

    def _start_copy(self, migration: dict[str, Any], vmi: dict[str, Any]) -> None:
        """TargetReady -> Running: the copy starts; decide now whether it will fail."""
        uid = migration["metadata"]["uid"]
        if self._wait(key_of(VMIM, migration), uid, MigrationPhase.TARGET_READY, self.tick):
            return
        verdict = self._smaller_destination(vmi)
        if verdict is None:
            fault = self._take_fault(migration, vmi, "fail")
            if fault is not None:
                verdict = f"Live migration failed {fault.message}"
        if verdict is not None:
            self._verdict[uid] = verdict
        state = {**((migration.get("status") or {}).get("migrationState") or {}),
                 "startTimestamp": now_rfc3339()}
        volume_migration = bool((vmi.get("status") or {}).get("migratedVolumes"))
        vmi_status = copy.deepcopy(vmi.get("status") or {})
        vmi_status["migrationState"] = state
        vmi_status["migrationMethod"] = "BlockMigration" if volume_migration or not \
            rules.condition_is(vmi, "LiveMigratable", "True") else "LiveMigration"
        write_status(self.sim, VMI, vmi, vmi_status)
        self._set_phase(migration, MigrationPhase.RUNNING, {"migrationState": state})

    def _copy(self, migration: dict[str, Any], vmi: dict[str, Any]) -> None:
        """Running: the copy takes GiB x copy_seconds_per_gib (a stall holds it)."""
        key = key_of(VMIM, migration)
        uid = migration["metadata"]["uid"]
        if self._take_fault(migration, vmi, "stall") is not None:
            self._dwell.restart(uid, MigrationPhase.RUNNING)
            stuck = time.monotonic() - self._stalled_since.setdefault(uid, time.monotonic())
            timeout = cluster_config(self.sim).progress_timeout
            if timeout and stuck > timeout:  # the migration monitor aborts a stuck copy
                log.info("%s: no progress for %.1fs, aborting", key, stuck)
                self._fail(migration, vmi, rules.MSG_ABORTED, aborted=True, notify=True)
                return
            left = timeout - stuck if timeout else max(self.tick, 0.2)
            self.sim.enqueue(self, key, min(max(self.tick, 0.2), max(left, 0.01) + 0.01))
            return
        self._stalled_since.pop(uid, None)
        verdict = self._verdict.get(uid)
        duration = self.tick if verdict is not None else max(self._copy_seconds(vmi), self.tick)
        if self._wait(key, uid, MigrationPhase.RUNNING, duration):
            return
        if verdict is not None:
            self._fail(migration, vmi, verdict)
        else:
            self._succeed(migration, vmi)

    # -- outcomes

    def _succeed(self, migration: dict[str, Any], vmi: dict[str, Any]) -> None:
        namespace = migration["metadata"]["namespace"]
        migrated = (vmi.get("status") or {}).get("migratedVolumes") or []
        for entry in migrated:
            self._carry_content(namespace, entry)
        now = now_rfc3339()
        state = {**((migration.get("status") or {}).get("migrationState") or {}),
                 "endTimestamp": now, "targetNodeDomainReadyTimestamp": now,
                 "targetNodeDomainDetected": True, "completed": True}
        target = str(state.get("targetNode", ""))
        vmi = write_meta(self.sim, VMI, vmi, {"metadata": {"labels": {
            rules.NODE_NAME_LABEL: target}}})
        target_pod = str(state.get("targetPod", ""))
        pods.finish_pods(self.sim, vmi, "Succeeded", except_pod=target_pod)
        status = copy.deepcopy(vmi.get("status") or {})
        status["nodeName"] = target
        status["migrationState"] = state
        status["activePods"] = {p["metadata"]["uid"]: target
                                for p in pods.launcher_pods(self.sim.store, vmi)
                                if p["metadata"]["name"] == target_pod}
        status.pop("migratedVolumes", None)
        status["conditions"] = rules.drop_condition(status.get("conditions"), "VolumesChange")
        write_status(self.sim, VMI, vmi, status)
        # virt-handler reports the handover on the VMI first; then the migration is done
        self._set_phase(migration, MigrationPhase.SUCCEEDED, {"migrationState": state})
        self._verdict.pop(migration["metadata"]["uid"], None)
        self.sim.client.event(vmi, "Normal", "Migrated",
                              f"The VirtualMachineInstance migrated to node {target}.")
        self._collect_finished(vmi)

    def _fail(self, migration: dict[str, Any], vmi: dict[str, Any] | None, reason: str,
              *, aborted: bool = False, notify: bool = False) -> None:
        uid = migration["metadata"]["uid"]
        now = now_rfc3339()
        state = {**((migration.get("status") or {}).get("migrationState") or {}),
                 "migrationUid": uid, "endTimestamp": now, "failed": True,
                 "failureReason": reason, "completed": False}
        if aborted:
            state.update(abortRequested=True, abortStatus="Succeeded")
        self._set_phase(migration, MigrationPhase.FAILED, {"migrationState": state})
        self._failed_at[uid] = time.monotonic()
        self._verdict.pop(uid, None)
        self._stalled_since.pop(uid, None)
        if vmi is None or rules.is_final_vmi(vmi):
            return
        target_pod = state.get("targetPod")
        for pod in pods.launcher_pods(self.sim.store, vmi):
            if target_pod and pod["metadata"]["name"] == target_pod:
                pods.set_pod_phase(self.sim, pod, "Failed")
        current = (vmi.get("status") or {}).get("migrationState") or {}
        if current.get("migrationUid") not in (None, uid):
            return
        if current:
            status = copy.deepcopy(vmi.get("status") or {})
            status["migrationState"] = state
            status["activePods"] = {uid_: node for uid_, node in
                                    (status.get("activePods") or {}).items()
                                    if node == status.get("nodeName")}
            vmi = write_status(self.sim, VMI, vmi, status)
        self._collect_finished(vmi)
        if aborted and not notify:
            return
        self.sim.client.event(vmi, "Warning", "Migrated",
                              f"VirtualMachineInstance migration uid {uid} failed. "
                              f"reason:{reason}")

    def _collect_finished(self, vmi: Mapping[str, Any]) -> None:
        """garbageCollectFinalizedMigrations: keep the 5 newest finished migrations of the
        VMI; delete older ones with their defunct pod (a success's source pod, a failure's
        target pod)."""
        namespace, name = vmi["metadata"]["namespace"], vmi["metadata"]["name"]
        finished = [m for m in self.sim.store.list(VMIM, namespace)
                    if (m.get("spec") or {}).get("vmiName") == name
                    and rules.is_final_migration(m) and not rules.is_deleting_obj(m)]
        finished.sort(key=lambda m: self._record(m).order)
        for old in finished[:max(len(finished) - FINISHED_MIGRATIONS_KEPT, 0)]:
            state = (old.get("status") or {}).get("migrationState") or {}
            defunct = state.get("targetPod") if state.get("failed") else \
                state.get("sourcePod") if state.get("completed") else None
            if defunct:
                pods.delete_pod(self.sim, namespace, str(defunct))
            self.sim.client.delete(VMIM, namespace, old["metadata"]["name"])

    def _at_limit(self, vmi: Mapping[str, Any]) -> bool:
        """The parallel migration limits: running migrations (past Pending, not finished)
        cluster-wide, and outbound ones from the VMI's node."""
        config = cluster_config(self.sim)
        running = [m for m in self.sim.store.list(VMIM)
                   if rules.migration_phase(m) not in ("", MigrationPhase.PENDING)
                   and not rules.is_final_migration(m)
                   and not namespace_terminating(self.sim, m["metadata"]["namespace"])]
        if len(running) >= config.parallel_migrations_per_cluster:
            return True
        node = (vmi.get("status") or {}).get("nodeName")
        outbound = [m for m in running
                    if ((m.get("status") or {}).get("migrationState") or {}).get("sourceNode")
                    == node]
        return len(outbound) >= config.parallel_outbound_migrations_per_node

    def _finalize(self, migration: dict[str, Any]) -> None:
        """A deleted migration: abort it if it still runs, then let it go."""
        meta = migration["metadata"]
        if not rules.is_final_migration(migration):
            vmi = self.sim.store.get(VMI, meta["namespace"],
                                     (migration.get("spec") or {}).get("vmiName", ""))
            self._fail(migration, vmi, rules.MSG_ABORTED, aborted=True)
            migration = self.sim.store.get(*key_of(VMIM, migration)) or migration
        finalizers = migration["metadata"].get("finalizers") or []
        if rules.MIGRATION_FINALIZER in finalizers:
            kept = [f for f in finalizers if f != rules.MIGRATION_FINALIZER]
            write_meta(self.sim, VMIM, migration, {"metadata": {"finalizers": kept}})
        self._dwell.forget(meta["uid"])

    def _carry_content(self, namespace: str, entry: Mapping[str, Any]) -> None:
        """The copied disk: the destination PVC gets the source's content hash."""
        source = self.sim.store.get(PVC, namespace, entry["sourcePVCInfo"]["claimName"])
        destination_name = entry["destinationPVCInfo"]["claimName"]
        destination = self.sim.store.get(PVC, namespace, destination_name)
        if source is None or destination is None:
            return
        value = content_hash(source)
        if content_hash(destination) != value:
            self.sim.client.merge_patch(PVC, namespace, destination_name, {
                "metadata": {"annotations": {CONTENT_HASH_ANNOTATION: value}}})

    # -- helpers

    def _set_phase(self, migration: dict[str, Any], phase: MigrationPhase,
                   changes: Mapping[str, Any]) -> dict[str, Any]:
        old = migration.get("status") or {}
        now = now_rfc3339()
        status = {**old, **changes, "phase": phase.value,
                  "phaseTransitionTimestamps": phase_history(old, phase.value, now)}
        return write_status(self.sim, VMIM, migration, status)

    def _set_vmi_migration_state(self, vmi: dict[str, Any], state: Mapping[str, Any]) -> None:
        status = copy.deepcopy(vmi.get("status") or {})
        status["migrationState"] = dict(state)
        write_status(self.sim, VMI, vmi, status)

    def _other_active(self, migration: Mapping[str, Any]) -> bool:
        namespace = migration["metadata"]["namespace"]
        vmi_name = (migration.get("spec") or {}).get("vmiName")
        return any(
            m["metadata"]["uid"] != migration["metadata"]["uid"]
            and (m.get("spec") or {}).get("vmiName") == vmi_name
            and rules.migration_phase(m) not in ("", MigrationPhase.PENDING)
            and not rules.is_final_migration(m)
            for m in self.sim.store.list(VMIM, namespace))

    def _backoff_deadline(self, migration: Mapping[str, Any]) -> float | None:
        """handleMigrationBackoff over this VMI's workload-update migrations."""
        if rules.WORKLOAD_UPDATE_ANNOTATION not in annotations_of(migration):
            return None
        namespace = migration["metadata"]["namespace"]
        vmi_name = (migration.get("spec") or {}).get("vmiName")
        history = [self._record(m) for m in self.sim.store.list(VMIM, namespace)
                   if (m.get("spec") or {}).get("vmiName") == vmi_name
                   and rules.WORKLOAD_UPDATE_ANNOTATION in annotations_of(m)]
        return rules.backoff_deadline(migration["metadata"]["uid"], history,
                                      self._backoff_base())

    def _record(self, migration: Mapping[str, Any]) -> rules.MigrationRecord:
        meta = migration["metadata"]
        uid = meta["uid"]
        failed_at = self._failed_at.get(uid)
        if failed_at is None and rules.migration_phase(migration) == MigrationPhase.FAILED:
            stamps = [h.get("phaseTransitionTimestamp") for h in
                      (migration.get("status") or {}).get("phaseTransitionTimestamps") or []
                      if h.get("phase") == MigrationPhase.FAILED]
            failed_at = wall_to_monotonic(stamps[-1]) if stamps and stamps[-1] else None
        return rules.MigrationRecord(
            uid=uid,
            order=(meta.get("creationTimestamp", ""), self._seq.setdefault(uid, next(
                self._counter)), meta["name"]),
            phase=rules.migration_phase(migration),
            deleting=rules.is_deleting_obj(migration),
            failed_at=failed_at,
        )

    def _backoff_base(self) -> float:
        """The KubeVirt CR annotation, else SimConfig.migration_backoff_base (20 s)."""
        configured = cluster_config(self.sim).backoff_seconds
        if configured is not None:
            return configured
        return float(self.sim.config.migration_backoff_base)

    def _target_node(self, source: str) -> str | None:
        """The next node after the source (a live migration always changes node)."""
        nodes = list(self.sim.config.nodes)
        if source in nodes:
            index = nodes.index(source)
            nodes = nodes[index + 1:] + nodes[:index]
        candidates = [n for n in nodes if n != source]
        return candidates[0] if candidates else None

    def _destinations(self, vmi: Mapping[str, Any]) -> list[str]:
        return [m["destinationPVCInfo"]["claimName"]
                for m in (vmi.get("status") or {}).get("migratedVolumes") or []]

    def _smaller_destination(self, vmi: Mapping[str, Any]) -> str | None:
        """libvirt refuses a destination smaller than its source."""
        namespace = vmi["metadata"]["namespace"]
        for entry in (vmi.get("status") or {}).get("migratedVolumes") or []:
            source = self.sim.store.get(PVC, namespace, entry["sourcePVCInfo"]["claimName"])
            destination = self.sim.store.get(PVC, namespace,
                                             entry["destinationPVCInfo"]["claimName"])
            if source is None or destination is None:
                continue
            source_size = rules.disk_image_size(source)
            destination_size = rules.disk_image_size(destination)
            if destination_size < source_size:
                return (f"{rules.MSG_SMALLER_DESTINATION}: virError(Code=1, Domain=10, "
                        "Message='internal error: unable to execute QEMU command "
                        f"'blockdev-mirror': Size of the destination ({destination_size} "
                        "bytes) has to be smaller or equal to the actual size of the "
                        f"containing file ({source_size} bytes)')")
        return None

    def _copy_seconds(self, vmi: Mapping[str, Any]) -> float:
        namespace = vmi["metadata"]["namespace"]
        sizes = []
        for entry in (vmi.get("status") or {}).get("migratedVolumes") or []:
            source = self.sim.store.get(PVC, namespace, entry["sourcePVCInfo"]["claimName"])
            sizes.append(rules.pvc_size(source) if source is not None else 0)
        return rules.copy_seconds(sizes, float(self.sim.config.copy_seconds_per_gib))

    def _take_fault(self, migration: Mapping[str, Any], vmi: Mapping[str, Any],
                    action: str) -> Any:
        """A fault of the VM (annotation or test-injected) or of the migration itself."""
        namespace = vmi["metadata"]["namespace"]
        owner = controller_owner(vmi)
        vm_name = owner["name"] if owner and owner.get("kind") == "VirtualMachine" \
            else vmi["metadata"]["name"]
        vm = self.sim.store.get(VM, namespace, vm_name)
        fault = self.sim.faults.take(VM, namespace, vm_name, action, obj=vm)
        if fault is None:
            fault = self.sim.faults.take(VMIM, namespace, migration["metadata"]["name"],
                                         action, obj=migration)
        return fault

    def _wait(self, key: Key, uid: str, phase: str, seconds: float) -> bool:
        left = self._dwell.remaining(uid, phase, seconds)
        if left > 0:
            self.sim.enqueue(self, key, left)
            return True
        return False


CONTROLLERS: list[type[Controller]] = [WorkloadUpdater, MigrationController]
"""The migration controllers, picked up by `testenv.simulator.all_controllers()`."""
