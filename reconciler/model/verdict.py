"""Verdicts: what the diff decided, per volume and per VM, with its findings as data. Stdlib only.

A ``Finding`` is one rule's verdict (rule id, effect, the volume it concerns or None for the
VM, message). Findings stay data through ``VMVerdict`` so Events, metrics, the status report
and ``-o json`` all speak rule ids; only ``reconciler.report`` turns them into text.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass

from reconciler.model.plan import Plan, VolumeMode


class Action(enum.Enum):
    """The verdict for one volume (and, aggregated, for one VM)."""

    IN_SYNC = "InSync"
    MOVE_LIVE = "MoveLive"
    MOVE_OFFLINE = "MoveOffline"
    BLOCKED = "Blocked"
    IN_PROGRESS = "InProgress"


class Effect(enum.Enum):
    """What a finding does to the decision.

    - ``BLOCK``: nothing of this VM moves until it is fixed.
    - ``NO_LIVE``: live migration is impossible; an offline move may still be possible.
    - ``NO_OFFLINE``: an offline clone is impossible; a live move may still be possible.
    - ``IN_PROGRESS``: a move is already under way; leave the VM alone.
    - ``NOTE``: informational, changes nothing.
    - ``PROBLEM``: the plans are wrong; reported as a ``Problem`` and nothing is applied.
    - ``NOTHING_SELECTED``: a plan selects no VM (``EmptyPlan``); the other plans still act,
      but the run says so and exits 7 (a typo must never read as "in sync").
    """

    BLOCK = "Block"
    NO_LIVE = "NoLive"
    NO_OFFLINE = "NoOffline"
    IN_PROGRESS = "InProgress"
    NOTE = "Note"
    PROBLEM = "Problem"
    NOTHING_SELECTED = "NothingSelected"


class Route(enum.Enum):
    """How a VM with something to move would move, once the run-state rules had their say:
    a closed set, so no caller confuses "offline" with "blocked" (no ``bool | None``)."""

    LIVE = "Live"
    OFFLINE = "Offline"
    BLOCKED = "Blocked"


@dataclass(frozen=True)
class Finding:
    """One rule's verdict on one subject: the rule's id and effect, the VM volume it concerns
    (None: the VM, the cluster or the plan as a whole) and the message for the user (what is
    wrong and what to do). Plain data: the text form belongs to ``reconciler.report``."""

    rule: str
    effect: Effect
    volume: str | None
    message: str


@dataclass(frozen=True)
class DesiredVolume:
    """What the plans want for one VM volume, after selectors and overrides are resolved."""

    namespace: str
    vm: str
    volume: str
    storage_class: str
    volume_mode: VolumeMode
    access_modes: tuple[str, ...] | None
    target_name: str | None
    plan: Plan


@dataclass(frozen=True)
class VolumeVerdict:
    """The decision for one volume. ``reason`` explains Blocked/InProgress verdicts; ``rule``
    is the stable identifier of the rule that decided (for tests, JSON output and metrics)."""

    volume: str
    claim: str
    from_class: str | None
    to_class: str
    action: Action
    reason: str = ""
    rule: str = ""
    target_name: str = ""
    size_bytes: int = 0
    volume_mode: str = ""
    access_modes: tuple[str, ...] = ()


@dataclass(frozen=True)
class VMVerdict:
    """The decision for one VM: the aggregate action, its volumes' verdicts and the findings
    behind it (every reason, in the order the user should read them).

    A VM moves only as a whole: if any wanted volume is Blocked, the VM is Blocked (and every
    move is withheld), because live migration must move all RWO volumes in one update.
    """

    namespace: str
    name: str
    plan: str
    action: Action
    volumes: tuple[VolumeVerdict, ...]
    findings: tuple[Finding, ...] = ()
    running: bool = False
    stop_required: bool = False
    exists: bool = True  # False: a VM the plan names that does not exist (rule vm-not-found)


@dataclass(frozen=True)
class EmptyPlan:
    """A plan that selects no VM, and why: ``finding`` is one of the selection rules of
    ``diff.catalog`` (no such namespace, no VM there, no VM matched the selector, every match
    excluded, ...; effect ``NOTHING_SELECTED``) with what to do."""

    namespace: str
    plan: str
    finding: Finding
