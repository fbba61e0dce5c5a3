"""The objects `apply` acts on, read into typed values: the one place that walks their JSON. Pure.

A step gets KubeVirt's and CDI's objects as JSON (a GET, or a watch's state) and reads them
only through these functions. Every field may be missing or of another type than the schema
says (an object someone else wrote): an absent map reads as empty, an absent text as "", a
count that is not a number as 0, a quantity that does not parse as None. Nothing here fails.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from reconciler.model.live import Condition
from reconciler.model.names import JOURNAL_ANNOTATION
from reconciler.model.quantity import parse_quantity
from reconciler.model.runstrategy import RunStrategy, run_strategy_of

Obj = Mapping[str, Any]
FINAL_PHASES = ("Succeeded", "Failed")
"""The phases of a VMI, a pod or a migration that has ended."""


def _map(value: object) -> Mapping[str, Any]:
    return value if isinstance(value, Mapping) else {}


def _items(value: object) -> Sequence[Any]:
    return value if isinstance(value, list | tuple) else ()


def _text(value: object) -> str:
    return "" if value is None else str(value)


def _at(obj: object, *keys: str) -> Any:
    """``obj[k1][k2]...``, or None where a level is missing or not a map."""
    for key in keys:
        obj = _map(obj).get(key)
    return obj


def _int(value: object) -> int:
    if isinstance(value, bool) or not isinstance(value, int | float | str):
        return 0
    try:
        return int(value or 0)
    except ValueError:
        return 0


def _strings(value: object) -> dict[str, str]:
    return {str(k): _text(v) for k, v in _map(value).items()}


def timestamp(value: object) -> datetime | None:
    """An RFC 3339 time (``2024-01-01T00:00:00Z``), None when it is not one."""
    try:
        return datetime.fromisoformat(str(value).replace("Z", "+00:00"))
    except ValueError:
        return None


def conditions_of(obj: object) -> tuple[Condition, ...]:
    """``status.conditions``: entries that are not maps are skipped."""
    return tuple(
        Condition(
            type=_text(c.get("type")),
            status=_text(c.get("status")),
            reason=_text(c.get("reason")),
            message=_text(c.get("message")),
        )
        for c in _items(_at(obj, "status", "conditions"))
        if isinstance(c, Mapping)
    )


def claims_in(volumes: object) -> dict[str, str]:
    """volume name -> the claim (DataVolume or PVC name) of a ``volumes`` list (a VM's
    template, a VMI's or a pod's spec); volumes without a claim are left out."""
    claims: dict[str, str] = {}
    for volume in _items(volumes):
        if not isinstance(volume, Mapping):
            continue
        claim = _at(volume, "dataVolume", "name") or _at(
            volume, "persistentVolumeClaim", "claimName"
        )
        if claim:
            claims[str(volume.get("name"))] = str(claim)
    return claims


class _Conditioned:
    """What an object with ``status.conditions`` answers about them."""

    __slots__ = ()
    conditions: tuple[Condition, ...]

    def condition(self, kind: str) -> Condition | None:
        return next((c for c in self.conditions if c.type == kind), None)

    def is_true(self, kind: str) -> bool:
        found = self.condition(kind)
        return found is not None and found.status == "True"


@dataclass(frozen=True, slots=True)
class VMState(_Conditioned):
    """A VirtualMachine as `apply` reads it.

    ``claims``: volume -> claim of ``spec.template.spec.volumes``; ``templates``:
    dataVolumeTemplate name -> its storageClassName (or ""); ``annotations_map``: whether
    ``metadata.annotations`` exists (a JSON patch adds a key only to an existing map);
    ``migrated_destinations``: the claims KubeVirt recorded as destinations of a volume
    migration (``status.volumeUpdateState.volumeMigrationState.migratedVolumes``)."""

    name: str
    resource_version: str
    generation: int
    annotations: Mapping[str, str]
    annotations_map: bool
    claims: Mapping[str, str]
    templates: Mapping[str, str]
    run_strategy: RunStrategy
    update_volumes_strategy: str | None
    printable_status: str
    conditions: tuple[Condition, ...]
    migrated_destinations: frozenset[str]

    @property
    def journal_text(self) -> str | None:
        """The journal annotation as written (None: there is none)."""
        return self.annotations.get(JOURNAL_ANNOTATION)


def vm_state(obj: Obj) -> VMState:
    meta, spec = _map(obj.get("metadata")), _map(obj.get("spec"))
    templates: dict[str, str] = {}
    for t in _items(spec.get("dataVolumeTemplates")):
        if not isinstance(t, Mapping):
            continue
        storage = _at(t, "spec", "storage") or _at(t, "spec", "pvc")
        templates[str(_at(t, "metadata", "name"))] = _text(
            _map(storage).get("storageClassName") or ""
        )
    migrated = _at(obj, "status", "volumeUpdateState", "volumeMigrationState", "migratedVolumes")
    strategy = spec.get("updateVolumesStrategy")
    return VMState(
        name=_text(meta.get("name")),
        resource_version=_text(meta.get("resourceVersion")),
        generation=_int(meta.get("generation")),
        annotations=_strings(meta.get("annotations")),
        annotations_map=isinstance(meta.get("annotations"), Mapping),
        claims=claims_in(_at(spec, "template", "spec", "volumes")),
        templates=templates,
        run_strategy=run_strategy_of(spec),
        update_volumes_strategy=None if strategy is None else str(strategy),
        printable_status=_text(_at(obj, "status", "printableStatus")),
        conditions=conditions_of(obj),
        migrated_destinations=frozenset(
            str(claim)
            for m in _items(migrated)
            if (claim := _at(m, "destinationPVCInfo", "claimName"))
        ),
    )


@dataclass(frozen=True, slots=True)
class MigrationProgress:
    """A migration's ``migrationState`` (on the VMIM, and on the VMI while it is the VMI's
    current one: ``migration_uid`` says which)."""

    migration_uid: str = ""
    failure_reason: str = ""
    target_ready: bool = False  # targetNodeDomainReadyTimestamp set: the copy has finished
    mode: str = ""
    source_node: str = ""
    target_node: str = ""
    abort_status: str = ""
    abort_requested: bool = False

    def over(self, older: MigrationProgress) -> MigrationProgress:
        """This state where it says something, ``older``'s where it does not."""
        return MigrationProgress(
            migration_uid=self.migration_uid or older.migration_uid,
            failure_reason=self.failure_reason or older.failure_reason,
            target_ready=self.target_ready or older.target_ready,
            mode=self.mode or older.mode,
            source_node=self.source_node or older.source_node,
            target_node=self.target_node or older.target_node,
            abort_status=self.abort_status or older.abort_status,
            abort_requested=self.abort_requested or older.abort_requested,
        )


def _progress(state: object) -> MigrationProgress:
    state = _map(state)
    return MigrationProgress(
        migration_uid=_text(state.get("migrationUid")),
        failure_reason=_text(state.get("failureReason")),
        target_ready=bool(state.get("targetNodeDomainReadyTimestamp")),
        mode=_text(state.get("mode")),
        source_node=_text(state.get("sourceNode")),
        target_node=_text(state.get("targetNode")),
        abort_status=_text(state.get("abortStatus")),
        abort_requested=bool(state.get("abortRequested")),
    )


@dataclass(frozen=True, slots=True)
class VMIState(_Conditioned):
    """A VirtualMachineInstance. ``claims``: volume -> claim of its spec (what KubeVirt
    patched it to); ``volume_status``: volume -> claim of ``status.volumeStatus`` (what the
    guest really uses); ``migrating_volumes``: ``status.migratedVolumes`` is not empty."""

    name: str
    uid: str
    phase: str
    claims: Mapping[str, str]
    volume_status: Mapping[str, str]
    conditions: tuple[Condition, ...]
    migrating_volumes: bool
    migration: MigrationProgress

    @property
    def running(self) -> bool:
        return self.phase == "Running"

    @property
    def ended(self) -> bool:
        return self.phase in FINAL_PHASES


def vmi_state(obj: Obj) -> VMIState:
    status = _map(obj.get("status"))
    volume_status: dict[str, str] = {}
    for v in _items(status.get("volumeStatus")):
        claim = _at(v, "persistentVolumeClaimInfo", "claimName")
        if claim:
            volume_status[str(_map(v).get("name"))] = str(claim)
    return VMIState(
        name=_text(_at(obj, "metadata", "name")),
        uid=_text(_at(obj, "metadata", "uid")),
        phase=_text(status.get("phase")),
        claims=claims_in(_at(obj, "spec", "volumes")),
        volume_status=volume_status,
        conditions=conditions_of(obj),
        migrating_volumes=bool(status.get("migratedVolumes")),
        migration=_progress(status.get("migrationState")),
    )


@dataclass(frozen=True, slots=True)
class MigrationState(_Conditioned):
    """A VirtualMachineInstanceMigration. ``phase`` is ``Pending`` until KubeVirt sets one;
    ``history`` the phases of ``status.phaseTransitionTimestamps``, oldest first."""

    name: str
    uid: str
    created: datetime | None
    phase: str
    progress: MigrationProgress
    history: tuple[str, ...]
    conditions: tuple[Condition, ...]

    def progress_with(self, vmi: VMIState | None) -> MigrationProgress:
        """Its ``migrationState``, updated by the VMI's when that is this migration's
        (KubeVirt writes it on both; the VMI's is the one virt-handler keeps current)."""
        if vmi is not None and self.uid and vmi.migration.migration_uid == self.uid:
            return vmi.migration.over(self.progress)
        return self.progress


def migration_state(obj: Obj) -> MigrationState:
    meta, status = _map(obj.get("metadata")), _map(obj.get("status"))
    return MigrationState(
        name=_text(meta.get("name")),
        uid=_text(meta.get("uid")),
        created=timestamp(meta.get("creationTimestamp")),
        phase=_text(status.get("phase") or "Pending"),
        progress=_progress(status.get("migrationState")),
        history=tuple(
            str(h["phase"])
            for h in _items(status.get("phaseTransitionTimestamps"))
            if isinstance(h, Mapping) and h.get("phase")
        ),
        conditions=conditions_of(obj),
    )


@dataclass(frozen=True, slots=True)
class PVCState:
    """A PersistentVolumeClaim: ``capacity_bytes`` is ``status.capacity.storage`` (None when
    unset or not a quantity)."""

    name: str
    phase: str
    storage_class: str | None
    capacity_bytes: int | None
    annotations: Mapping[str, str] = field(default_factory=dict)
    owner_uids: tuple[str, ...] = ()  # its ownerReferences' uids (CDI: the DataVolume's)


def pvc_state(obj: Obj) -> PVCState:
    capacity = _at(obj, "status", "capacity", "storage")
    try:
        size = parse_quantity(capacity) if capacity is not None else None
    except ValueError:
        size = None
    storage_class = _at(obj, "spec", "storageClassName")
    return PVCState(
        name=_text(_at(obj, "metadata", "name")),
        phase=_text(_at(obj, "status", "phase")),
        storage_class=None if storage_class is None else str(storage_class),
        capacity_bytes=size,
        annotations=_strings(_at(obj, "metadata", "annotations")),
        owner_uids=tuple(
            uid
            for ref in _items(_at(obj, "metadata", "ownerReferences"))
            if (uid := _text(_at(ref, "uid")))
        ),
    )


@dataclass(frozen=True, slots=True)
class DataVolumeState(_Conditioned):
    """A CDI DataVolume. ``deleting``: it has a deletionTimestamp."""

    name: str
    uid: str
    labels: Mapping[str, str]
    annotations: Mapping[str, str]
    deleting: bool
    phase: str
    progress: str
    restart_count: int
    conditions: tuple[Condition, ...] = field(default=())


def data_volume_state(obj: Obj) -> DataVolumeState:
    meta, status = _map(obj.get("metadata")), _map(obj.get("status"))
    return DataVolumeState(
        name=_text(meta.get("name")),
        uid=_text(meta.get("uid")),
        labels=_strings(meta.get("labels")),
        annotations=_strings(meta.get("annotations")),
        deleting=bool(meta.get("deletionTimestamp")),
        phase=_text(status.get("phase")),
        progress=_text(status.get("progress")),
        restart_count=_int(status.get("restartCount")),
        conditions=conditions_of(obj),
    )


@dataclass(frozen=True, slots=True)
class PodState:
    """A pod: its phase, its node, the claims its volumes mount, the claim that controls it
    (its controller ownerReference, when that is a PersistentVolumeClaim: CDI's importer and
    upload-server pods; "" otherwise), and ``error``: the termination message of its latest
    failed container run (exit code not 0; "" when none failed)."""

    name: str
    phase: str
    node: str
    claims: frozenset[str]
    controlling_claim: str = ""
    error: str = ""

    @property
    def ended(self) -> bool:
        return self.phase in FINAL_PHASES


def _controlling_claim(obj: Obj) -> str:
    for ref in _items(_at(obj, "metadata", "ownerReferences")):
        if _at(ref, "controller") is True and _at(ref, "kind") == "PersistentVolumeClaim":
            return _text(_at(ref, "name"))
    return ""


def _failed_run_message(obj: Obj) -> str:
    for status in _items(_at(obj, "status", "containerStatuses")):
        for state in ("state", "lastState"):
            ended = _at(status, state, "terminated")
            if _int(_at(ended, "exitCode")) != 0:
                return _text(_at(ended, "message"))
    return ""


def pod_state(obj: Obj) -> PodState:
    return PodState(
        name=_text(_at(obj, "metadata", "name")),
        phase=_text(_at(obj, "status", "phase")),
        node=_text(_at(obj, "spec", "nodeName")),
        claims=frozenset(
            str(claim)
            for v in _items(_at(obj, "spec", "volumes"))
            if (claim := _at(v, "persistentVolumeClaim", "claimName"))
        ),
        controlling_claim=_controlling_claim(obj),
        error=_failed_run_message(obj),
    )
