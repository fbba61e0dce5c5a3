"""Desired state: validated plans as plain values. Stdlib only.

Everything here is a frozen dataclass or an enum: no I/O, no mutation. Names are Kubernetes
names (str). A ``Source`` records where a value came from in a plan file so that every error
can name ``file:line`` and the field path.

``PLAN_SETTINGS`` and ``TARGET_FIELDS`` are the one list of what plans sharing a VM must agree
on; both the cross-file check (``plans.crosscheck``) and the diff (``diff.desired``) use them,
so a new field added here is compared everywhere.
"""

from __future__ import annotations

import enum
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import time, timedelta

DEFAULT_CLASS = "<default>"
"""Target class meaning "the cluster's default StorageClass", to be resolved by the diff.

Only KMC plans produce it (a ``destinationPVC`` without ``storageClassName``). It is not a
valid StorageClass name, so it can never collide with a real class. KMC creates the target
DataVolume without a class, so CDI picks one: the virt default
(``storageclass.kubevirt.io/is-default-virt-class``) if there is one, else the Kubernetes
default. The diff should resolve it the same way, and block the volume when there is none.
"""

# --------------------------------------------------------------------------------------------
# Closed vocabularies
# --------------------------------------------------------------------------------------------


class Mode(enum.Enum):
    """How a plan may move a VM's disks."""

    AUTO = "Auto"  # live when possible, else offline (if the VM is stopped or allowStop)
    LIVE = "Live"  # live only; a VM that cannot move live is Blocked
    OFFLINE = "Offline"  # always stop (if allowed), clone, swap, restore run state


class VolumeMode(enum.Enum):
    """Target volumeMode. AUTO keeps the source's mode."""

    AUTO = "Auto"
    BLOCK = "Block"
    FILESYSTEM = "Filesystem"


class Retention(enum.StrEnum):
    """What happens to the source disk after the target is verified."""

    KEEP = "Keep"
    DELETE = "Delete"


# --------------------------------------------------------------------------------------------
# Desired state: plans
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Source:
    """Where a value was written: a plan file, a 1-based line, and the field path in it."""

    file: str
    line: int
    path: str = ""

    def __str__(self) -> str:
        where = f"{self.file}:{self.line}"
        return f"{where}: {self.path}" if self.path else where


@dataclass(frozen=True)
class Window:
    """A maintenance window: new moves may start only inside it.

    ``days`` holds ISO weekdays (1 = Monday .. 7 = Sunday); empty means every day. The window
    opens at ``start`` local time in ``time_zone`` and stays open for ``duration``.
    """

    start: time
    duration: timedelta
    time_zone: str = "UTC"
    days: frozenset[int] = frozenset()


@dataclass(frozen=True)
class LabelSelector:
    """A Kubernetes label selector (matchLabels and matchExpressions)."""

    match_labels: tuple[tuple[str, str], ...] = ()
    # (key, operator In|NotIn|Exists|DoesNotExist, values)
    match_expressions: tuple[tuple[str, str, tuple[str, ...]], ...] = ()


@dataclass(frozen=True)
class VolumeTarget:
    """A per-volume override inside a plan.

    ``name`` is the VM's volume name (``spec.template.spec.volumes[].name``). ``None`` fields
    inherit from the plan. ``target_name`` is an explicit destination claim name.
    """

    name: str
    source: Source
    storage_class: str | None = None
    volume_mode: VolumeMode | None = None
    access_modes: tuple[str, ...] | None = None
    target_name: str | None = None


@dataclass(frozen=True)
class VMSelection:
    """A VM named explicitly in a plan, with optional per-volume overrides."""

    name: str
    source: Source
    volumes: tuple[VolumeTarget, ...] = ()


@dataclass(frozen=True)
class Plan:
    """One validated plan document.

    ``storage_class`` is the default target for every PVC/DataVolume disk of the selected VMs;
    ``None`` means only the volumes listed with an explicit class are moved.
    The selected VMs are ``virtual_machines`` united with those matching ``selector``.
    """

    name: str
    namespace: str
    source: Source
    storage_class: str | None = None
    volume_mode: VolumeMode = VolumeMode.AUTO
    access_modes: tuple[str, ...] | None = None
    virtual_machines: tuple[VMSelection, ...] = ()
    selector: LabelSelector | None = None
    mode: Mode = Mode.AUTO
    allow_stop: bool = False
    retention: Retention = Retention.KEEP
    window: Window | None = None
    timeout: timedelta | None = None  # None: 15 min + 1 min per GiB moved (apply.begin)
    allow_gitops_managed: bool = False
    origin_kind: str = "StoragePlan"


PLAN_SETTINGS: Mapping[str, str] = {
    "mode": "mode",
    "allow_stop": "allowStop",
    "retention": "retention",
    "window": "window",
    "timeout": "timeout",
    "allow_gitops_managed": "allowGitOpsManaged",
}
"""The per-VM settings a VM moves under (``Plan`` attribute -> the field as users write it):
plans sharing a VM must agree on every one."""

TARGET_FIELDS: Mapping[str, str] = {
    "storage_class": "storageClass",
    "volume_mode": "volumeMode",
    "access_modes": "accessModes",
    "target_name": "targetName",
}
"""What one plan wants for one volume (attribute of ``DesiredVolume``/a resolved target ->
the field as users write it): two plans wanting a volume must agree on every one."""


def plan_settings(plan: Plan) -> tuple[object, ...]:
    """The values of ``PLAN_SETTINGS`` of ``plan``, in that order (equal = plans agree)."""
    return tuple(getattr(plan, attribute) for attribute in PLAN_SETTINGS)


def field_list(fields: Mapping[str, str], conjunction: str = "or") -> str:
    """``"mode, allowStop ... or allowGitOpsManaged"``: the user-facing names of ``fields``."""
    labels = list(fields.values())
    return f"{', '.join(labels[:-1])} {conjunction} {labels[-1]}" if len(labels) > 1 else labels[0]
