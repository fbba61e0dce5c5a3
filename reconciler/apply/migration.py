"""Following KubeVirt through a live volume migration, and through its cancellation.

What "done" means is read off the objects KubeVirt maintains (see the reference): the
VirtualMachineInstanceMigrations it creates for this VMI (label
``kubevirt.io/volume-update-migration``), the VMI's ``VolumesChange`` condition,
``status.migratedVolumes`` and ``volumeStatus``, and the VM's ``RestartRequired`` and
``ManualRecoveryRequired`` conditions. KubeVirt retries a failed migration on its own (a new
VMIM each time, with backoff), so a failure is ours to declare: after
``max_migration_attempts`` failed VMIMs, or at the deadline.
"""

from __future__ import annotations

import time
from collections.abc import Iterable, Mapping
from dataclasses import replace
from datetime import datetime
from typing import Any

from reconciler.apply.context import MoveRun, StepFailed
from reconciler.apply.narration import elapsed
from reconciler.apply.read import (
    MigrationProgress,
    MigrationState,
    VMIState,
    VMState,
    migration_state,
    vm_state,
    vmi_state,
)
from reconciler.apply.store import read_vm
from reconciler.apply.vm_steps import patch_vm
from reconciler.kube.resources import DATA_VOLUMES, MIGRATIONS, VIRTUAL_MACHINES, VMIS
from reconciler.kube.watch import State, Stream
from reconciler.model.failures import Failure
from reconciler.model.journal import Journal, Step
from reconciler.model.names import MIGRATION_LABEL, VOLUME_UPDATE_LABEL
from reconciler.model.quantity import human_size

Obj = Mapping[str, Any]


def migration_label(vmi_name: str, vmi_uid: str) -> str:
    """KubeVirt labels the VMIMs of a volume update with the VMI's name, or its UID when the
    name does not fit a label value."""
    return vmi_name if len(vmi_name) <= 63 else vmi_uid


def _ours(migrations: Iterable[Obj], journal: Journal) -> list[MigrationState]:
    """This move's VMIMs, oldest first (those created since the move started)."""
    started = datetime.fromisoformat(journal.started).replace(microsecond=0)
    read = (migration_state(m) for m in migrations)
    ours = [m for m in read if m.created is not None and m.created >= started]
    return sorted(ours, key=lambda m: (m.created or started, m.name))


def _copy_complete(ours: list[MigrationState]) -> bool:
    """The newest migration of this move copied everything: Succeeded, or the target domain
    was ready (the reference's exception to reverting). The phase is not required to be
    Failed yet: the VMI can vanish before KubeVirt marks its migration Failed."""
    if not ours:
        return False
    newest = ours[-1]
    return newest.phase == "Succeeded" or newest.progress.target_ready


def _streams(run: MoveRun, journal: Journal) -> list[Stream]:
    label = f"{VOLUME_UPDATE_LABEL}={migration_label(run.vm, journal.vmi_uid)}"
    return [
        Stream("vm", VIRTUAL_MACHINES, run.namespace, name=run.vm),
        Stream("vmi", VMIS, run.namespace, name=run.vm),
        Stream("migrations", MIGRATIONS, run.namespace, label_selector=label),
    ]


class _Copied:
    """The VMI went away after the copy finished (ManualRecoveryRequired, copy complete)."""


def _gone(run: MoveRun) -> StepFailed:
    return StepFailed(Failure.VM_DELETED, f"VirtualMachine {run.namespace}/{run.vm} was deleted")


def _migrated(run: MoveRun, journal: Journal, state: State) -> object | None:
    raw_vm = state["vm"].get(run.vm)
    if raw_vm is None:
        raise _gone(run)
    vm = vm_state(raw_vm)
    raw_vmi = state["vmi"].get(run.vm)
    vmi = vmi_state(raw_vmi) if raw_vmi is not None else None
    ours = _ours(state["migrations"].values(), journal)
    if vm.is_true("ManualRecoveryRequired"):
        if _copy_complete(ours):
            return _Copied()
        recovery = vm.condition("ManualRecoveryRequired")
        raise StepFailed(
            Failure.MANUAL_RECOVERY_REQUIRED,
            f"KubeVirt set ManualRecoveryRequired ({recovery.reason if recovery else ''}) "
            "before the copy ended",
        )
    if any(vm.claims.get(v.volume) != v.target for v in journal.volumes):
        raise StepFailed(Failure.MIGRATION_CANCELLED, _cancelled_by(run, raw_vm, vm, journal))
    if vm.is_true("RestartRequired"):
        restart = vm.condition("RestartRequired")
        raise StepFailed(
            Failure.RESTART_REQUIRED,
            f"KubeVirt refused the volume update: {restart.message if restart else ''}",
        )
    if vmi is None or vmi.ended:
        # Stopped, evicted or crashed mid-copy: KubeVirt never retries a volume migration
        # without its VMI (and marks the VM ManualRecoveryRequired, unless its status write
        # was lost). Decide now instead of waiting for that condition or the deadline.
        if _copy_complete(ours):
            return _Copied()
        raise StepFailed(
            Failure.MANUAL_RECOVERY_REQUIRED,
            "the VMI went away during the volume migration, before the copy ended: KubeVirt "
            "will not retry it, and the VM must not start on the half-copied destination",
        )
    if journal.vmi_uid and vmi.uid != journal.vmi_uid:
        raise StepFailed(Failure.VMI_RESTARTED, "the VM was restarted during the live move")
    change = vmi.condition("VolumesChange")
    if change is not None and change.status == "False":
        message = change.message or change.reason
        if change.reason == "VolumesChangeCancellation" or "doesn't exist" in message:
            raise StepFailed(Failure.MIGRATION_REFUSED, f"KubeVirt: {message}")
    failed = [m for m in ours if m.phase == "Failed"]
    if len(failed) >= run.settings.max_migration_attempts:
        reasons = sorted({m.progress.failure_reason or "no reason given" for m in failed})
        raise StepFailed(
            Failure.MIGRATION_FAILED,
            f"{len(failed)} migration attempts failed: " + "; ".join(reasons),
        )
    targets = journal.targets
    done = (
        any(m.phase == "Succeeded" for m in ours)
        and all(vmi.claims.get(k) == t for k, t in targets.items())
        and all(vmi.volume_status.get(k) == t for k, t in targets.items())
        and not (change is not None and change.status == "True")
        and not vmi.migrating_volumes
    )
    return True if done else None


def _cancelled_by(run: MoveRun, raw: Obj, vm: VMState, journal: Journal) -> str:
    """Why the move is cancelled, naming who rewrote the volumes when managedFields tell
    (e.g. "reverted by Flux Kustomization flux-system/apps")."""
    claims = vm.claims
    what = (
        "reverted" if all(claims.get(v.volume) == v.source for v in journal.volumes) else "changed"
    )
    writer = run.volumes_writer(raw)
    if writer:
        hint = (
            "; add the ignore rule `plan` prints for a GitOps-managed VM before moving it again"
            if not writer.startswith("field manager")
            else ""
        )
        return (
            f"the VM's volumes were {what} by {writer} during the migration, which KubeVirt "
            f"treats as a cancellation{hint}"
        )
    return (
        f"the VM's volumes were {what} by someone else during the migration (a GitOps "
        "controller syncing the old manifest?), which KubeVirt treats as a cancellation"
    )


class _Progress:
    """What the migration wait says at each tick, as (text, key): the key changes only when
    something worth a line changed (the newest migration, its phase, its mode, the target
    domain ready, an abort, a failed attempt, why it is pending), and the text is made only
    then, so it can carry the elapsed times of that moment: how long the previous phase lasted
    (as seen from here) and how old the migration is. KubeVirt v1.8 reports no byte counts in
    the API (the VMIM's and the VMI's ``migrationState`` have phases, nodes, mode and
    timestamps; the bytes copied are only in virt-handler's Prometheus metrics
    ``kubevirt_vmi_migration_data_processed_bytes``/``_remaining_bytes``), so a running copy
    is told by what it moves (volumes, sizes, nodes) and its mode (PreCopy, PostCopy)."""

    def __init__(self, run: MoveRun, journal: Journal) -> None:
        self.run, self.journal = run, journal
        self.key = ""
        self.text = ""
        self.phase: tuple[str, str] | None = None  # (migration, phase) last told, and when
        self.phase_at = 0.0

    def line(self, state: State) -> tuple[str, str]:
        ours = _ours(state["migrations"].values(), self.journal)
        if not ours:
            return "waiting for KubeVirt to create the migration", "none"
        newest = ours[-1]
        failed = [m for m in ours if m.phase == "Failed"]
        raw_vmi = state["vmi"].get(self.run.vm)
        moving = newest.progress_with(vmi_state(raw_vmi) if raw_vmi is not None else None)
        pending = _pending_why(newest) if newest.phase in ("", "Pending") else ""
        abort = moving.abort_status or ("True" if moving.abort_requested else "")
        parts = (
            newest.name,
            newest.phase,
            moving.mode,
            str(moving.target_ready),
            abort,
            str(len(failed)),
        )
        key = "|".join((*parts, pending))
        if key != self.key:
            self.key, self.text = key, self._text(newest, moving, pending, failed)
        return self.text, self.key

    def _text(
        self,
        newest: MigrationState,
        moving: MigrationProgress,
        pending: str,
        failed: list[MigrationState],
    ) -> str:
        now = time.monotonic()
        name, phase = newest.name, newest.phase
        told = self.phase[1] if self.phase is not None and self.phase[0] == name else None
        path = _phases_since(newest, told, phase)
        head = f"migration {name} {phase}"
        if told is not None and told != phase:
            head = f"migration {name} {' -> '.join(path)} after {elapsed(now - self.phase_at)}"
        created = newest.created
        age = elapsed((self.run.now() - created).total_seconds()) if created else ""
        if told is None and len(path) > 1:
            head += f" ({' -> '.join(path)}" + (f" in {age})" if age else ")")
        elif age:
            head += f" ({age} since it was created)"
        if self.phase != (name, phase):
            self.phase, self.phase_at = (name, phase), now
        if pending:  # waiting for KubeVirt to schedule it: say why when the API says
            head = f"migration {name} pending ({pending})" + (
                f", {age} since it was created" if age else ""
            )
        detail = []
        if phase in ("Running", "TargetReady", "PreparingTarget", "Scheduled", "Scheduling"):
            detail.append(self._what(moving, copying=phase == "Running"))
        if moving.target_ready and phase not in FINAL_MIGRATION:
            detail.append("the copy finished, the target domain is ready: switching over")
        if moving.abort_requested:
            detail.append(f"abort requested ({moving.abort_status or 'pending'})")
        if failed:
            reason = failed[-1].progress.failure_reason
            detail.append(
                f"{len(failed)} failed attempt(s) of {self.run.settings.max_migration_attempts}"
                + (f", the last: {reason[:200]}" if reason else "")
            )
        return head + (": " + "; ".join(d for d in detail if d) if detail else "")

    def _what(self, moving: MigrationProgress, *, copying: bool) -> str:
        """The volumes moving, their size, the nodes and the mode."""
        volumes = ", ".join(
            f"{v.volume} ({human_size(v.size_bytes)})" for v in self.journal.volumes
        )
        source, target = moving.source_node, moving.target_node
        nodes = f" from {source} to {target}" if source and target else ""
        mode = f", {moving.mode}" if moving.mode else ""
        return f"{'copying' if copying else 'preparing to copy'} {volumes}{nodes}{mode}"


FINAL_MIGRATION = ("Succeeded", "Failed")


def _phases_since(migration: MigrationState, told: str | None, phase: str) -> list[str]:
    """The phases the migration went through from ``told`` (the phase last told, None: from
    its creation) to ``phase``, by its ``phaseTransitionTimestamps`` (at least both ends)."""
    history = list(migration.history)
    if told in history:
        history = history[history.index(told) :]
    elif told is not None:
        history = [told, *history]
    path = [p for index, p in enumerate(history) if index == 0 or p != history[index - 1]]
    if phase in path:
        path = path[: path.index(phase) + 1]
    else:
        path.append(phase)
    return path


def _pending_why(migration: MigrationState) -> str:
    """Why a migration not yet scheduled waits: its conditions when KubeVirt set any (a
    resource quota, a backoff); otherwise nothing the API says. virt-controller keeps a
    migration Pending, without a condition, while the cluster's or the node's migration slots
    are full (migration.go), but also for the moment after it is created, so no slot is named."""
    return (
        "; ".join(c.message or c.reason for c in migration.conditions)
        or "KubeVirt has not scheduled it yet"
    )


def _targets_there(journal: Journal, state: State) -> None:
    """A destination deleted mid-migration fails the move now, not at its deadline."""
    for v in journal.volumes:
        if v.target not in state["dvs"]:
            raise StepFailed(
                Failure.TARGET_DELETED, f"DataVolume {v.target} was deleted during the migration"
            )


def _wait_migration(run: MoveRun, journal: Journal) -> Journal:
    def done(state: State) -> object | None:
        _targets_there(journal, state)
        return _migrated(run, journal, state)

    streams = [
        *_streams(run, journal),
        Stream(
            "dvs", DATA_VOLUMES, run.namespace, label_selector=f"{MIGRATION_LABEL}={journal.id}"
        ),
    ]
    progress = _Progress(run, journal)
    began = time.monotonic()

    def tick(state: State) -> None:
        text, key = progress.line(state)
        run.say(text, key=key)

    result = run.wait(
        streams,
        done,
        seconds=run.seconds_left(journal),
        what="KubeVirt's volume migration",
        on_tick=tick,
    )
    if isinstance(result, _Copied):
        # The upstream recovery when the copy finished but the VMI went away: drop the
        # strategy so KubeVirt keeps the destination, and the VM starts on it.
        run.say("the copy finished before the VMI went away: keeping the destination")
        patch_vm(
            run,
            lambda vm: (
                [
                    {"op": "test", "path": "/spec/updateVolumesStrategy", "value": "Migration"},
                    {"op": "remove", "path": "/spec/updateVolumesStrategy"},
                ]
                if vm.update_volumes_strategy == "Migration"
                else None
            ),
            refused_rule=Failure.RECOVERY_REFUSED,
        )
        raw = read_vm(run)
        if raw is None:
            raise _gone(run)
        # Someone else stopped the VM mid-copy; it stays as they left it (verify then checks
        # the VM as it is now, not the run state it had before the move).
        return replace(
            journal,
            vmi_uid="",
            was_running=False,
            run_strategy=vm_state(raw).run_strategy.recorded,
        )
    run.say(f"migration succeeded after {elapsed(time.monotonic() - began)} of waiting")
    return journal


def _reverted(run: MoveRun, journal: Journal, state: State) -> bool | None:
    raw_vm = state["vm"].get(run.vm)
    if raw_vm is None:
        return True
    raw_vmi = state["vmi"].get(run.vm)
    vmi: VMIState | None = vmi_state(raw_vmi) if raw_vmi is not None else None
    if vmi is None or vmi.ended:
        return None if vm_state(raw_vm).is_true("ManualRecoveryRequired") else True
    return True if _vmi_back(vmi, journal) and not _unfinished(journal, state) else None


def _vmi_back(vmi: VMIState, journal: Journal) -> bool:
    """KubeVirt confirmed the cancellation on the VMI: its volumes on the sources again,
    ``VolumesChange`` not True, no ``migratedVolumes``."""
    sources = journal.sources
    change = vmi.condition("VolumesChange")
    return (
        all(vmi.claims.get(k) == s for k, s in sources.items())
        and all(vmi.volume_status.get(k, s) == s for k, s in sources.items())
        and not (change is not None and change.status == "True")
        and not vmi.migrating_volumes
    )


def _unfinished(journal: Journal, state: State) -> list[str]:
    """This move's migrations that are neither Succeeded nor Failed, by name. The revert alone
    does not end one: upstream's workload updater deletes the migration of a cancelled change
    only at its next pass, which nothing may trigger before the migration fails on its own
    (v1.8: a VMI update while it migrates does not enqueue it), and a migration still running
    may yet land on the destinations the rollback deletes next."""
    final = ("Succeeded", "Failed")
    return [m.name for m in _ours(state["migrations"].values(), journal) if m.phase not in final]


def _wait_reverted(run: MoveRun, journal: Journal) -> Journal:
    def tick(state: State) -> None:
        running = _unfinished(journal, state)
        raw_vmi = state["vmi"].get(run.vm)
        if running and raw_vmi is not None and _vmi_back(vmi_state(raw_vmi), journal):
            run.say(
                f"volumes reverted; waiting for KubeVirt to abort migration {', '.join(running)} "
                "(its workload updater deletes it, or it fails at its progress timeout)"
            )
        else:
            run.say("waiting for KubeVirt to cancel the migration")

    run.wait(
        _streams(run, journal),
        lambda state: _reverted(run, journal, state),
        seconds=run.settings.rollback_timeout,
        what="KubeVirt to confirm the cancellation and end the move's migrations",
        on_tick=tick,
        timeout_rule=Failure.ROLLBACK_TIMEOUT,
    )
    return journal


STEPS = {Step.WAIT_MIGRATION: _wait_migration, Step.WAIT_REVERTED: _wait_reverted}
