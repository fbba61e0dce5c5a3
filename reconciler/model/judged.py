"""What the engine's pipeline (observe -> diff -> render) hands `apply`, as plain values.

`apply` is an executor: it never observes, judges or renders itself. Right before a move the
runner asks the engine's judge for the VM (``JudgedVM``: the fresh verdict and, when the VM
still moves, what render made for it); at the start of a run for all of the plans
(``Judgement``). Everything here is immutable and holds no cluster handle, so several lanes may
hold them at once.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

from reconciler.model.journal import LastMigration
from reconciler.model.live import VMInfo
from reconciler.model.manifests import DataVolumeManifest, PatchOp
from reconciler.model.plan import Plan
from reconciler.model.verdict import EmptyPlan, VMVerdict

VMKey = tuple[str, str]  # (namespace, VM name)


@dataclass(frozen=True)
class Rendering:
    """What render made for one VM's move, as a journal records it (``render.move.RenderedVM``
    without its previews).

    ``vm_patch`` opens with its resourceVersion test; ``revert_patch`` is its exact inverse;
    ``strategy_cleanup_patch`` removes the ``updateVolumesStrategy`` the move adds (empty when
    there is none to remove); ``target_names``: volume name -> destination claim."""

    target_names: Mapping[str, str]
    data_volumes: tuple[DataVolumeManifest, ...]
    vm_patch: tuple[PatchOp, ...]
    revert_patch: tuple[PatchOp, ...]
    strategy_cleanup_patch: tuple[PatchOp, ...] = ()


@dataclass(frozen=True)
class SourceClaim:
    """A claim a move copies, as observed: its requested size, and whether it is a
    DataVolume's (retention Delete then deletes the DataVolume, which owns the PVC)."""

    size_bytes: int
    is_data_volume: bool


@dataclass(frozen=True)
class JudgedVM:
    """One VM judged on a fresh look right before its move.

    ``verdict`` is None when no plan selects the VM any more. When it moves
    (MoveLive/MoveOffline): ``vm`` as observed, ``plan`` the plan of the verdict, ``sources``
    the claims it copies (by claim name), and ``rendering``, or ``render_error`` when render
    refused it (a ``TemplateError``'s text)."""

    verdict: VMVerdict | None
    vm: VMInfo | None = None
    plan: Plan | None = None
    rendering: Rendering | None = None
    render_error: str = ""
    sources: Mapping[str, SourceClaim] = field(default_factory=dict)


@dataclass(frozen=True)
class Judgement:
    """Every VM the plans select, judged at the start of a run: the verdicts in (namespace,
    name) order, the plans that select nothing (exit 7), and each VM's last-migration record
    (for the backoff after failed moves)."""

    verdicts: tuple[VMVerdict, ...]
    empty_plans: tuple[EmptyPlan, ...] = ()
    last_moves: Mapping[VMKey, LastMigration] = field(default_factory=dict)
