"""The first journal of a move, from the engine's judgement of the VM and the VMI as it runs
now. Pure.

Everything later steps need is decided here and written down: the DataVolumes (labelled with
the move's id, so a rollback deletes exactly them), the swap patch without its resourceVersion
test (each send tests the version it just read), its inverse, the run strategy to restore and
the deadline.
"""

from __future__ import annotations

import copy
from collections.abc import Mapping
from datetime import datetime, timedelta
from typing import Any

from reconciler.apply.read import VMIState
from reconciler.model.journal import FORWARD, Flow, Journal, VolumeMove
from reconciler.model.judged import JudgedVM
from reconciler.model.names import IN_FLIGHT_ANNOTATION, MIGRATION_LABEL
from reconciler.model.runstrategy import run_strategy_of
from reconciler.model.verdict import Action

GIB = 1 << 30
BASE_TIMEOUT = timedelta(minutes=15)
PER_GIB = timedelta(minutes=1)  # a copy slower than ~17 MiB/s counts as stuck
MOVES = (Action.MOVE_LIVE, Action.MOVE_OFFLINE)


def default_timeout(total_bytes: int) -> timedelta:
    """A move's timeout when the plan sets none: 15 minutes plus a minute per GiB moved."""
    return BASE_TIMEOUT + PER_GIB * -(-total_bytes // GIB)


def first_journal(
    *,
    judged: JudgedVM,
    vmi: VMIState | None,
    migration_id: str,
    now: datetime,
    commit: str | None = None,
) -> Journal:
    """The journal at the first step of the verdict's flow. ValueError when the judgement is
    not of a move (no verdict, VM, plan or rendering), or its rendering does not match the
    verdict (a bug, not a user error)."""
    verdict, vm, plan, rendered = judged.verdict, judged.vm, judged.plan, judged.rendering
    if verdict is None or vm is None or plan is None or rendered is None:
        raise ValueError("the judgement is not of a move: nothing to journal")
    if verdict.action not in MOVES:
        raise ValueError(f"the verdict is {verdict.action.value}, not a move")
    flow = Flow.LIVE if verdict.action is Action.MOVE_LIVE else Flow.OFFLINE
    moves = [v for v in verdict.volumes if v.action in MOVES]
    missing = [m.volume for m in moves if m.volume not in rendered.target_names]
    if missing:
        raise ValueError(f"the rendering names no destination for {', '.join(missing)}")
    volumes = tuple(
        VolumeMove(
            volume=m.volume,
            source=m.claim,
            target=rendered.target_names[m.volume],
            source_is_data_volume=m.claim in judged.sources
            and judged.sources[m.claim].is_data_volume,
            from_class=m.from_class,
            to_class=m.to_class,
            size_bytes=judged.sources[m.claim].size_bytes if m.claim in judged.sources else 0,
        )
        for m in moves
    )
    patch = [dict(op) for op in rendered.vm_patch]
    if not patch or patch[0].get("path") != "/metadata/resourceVersion":
        raise ValueError("the rendered VM patch does not open with a resourceVersion test")
    total = sum(v.size_bytes for v in volumes)
    timeout = plan.timeout if plan.timeout is not None else default_timeout(total)
    migratable = vmi.condition("LiveMigratable") if vmi is not None else None
    return Journal(
        id=migration_id,
        plan=f"{plan.namespace}/{plan.name}",
        flow=flow,
        step=FORWARD[flow][0],
        volumes=volumes,
        run_strategy=run_strategy_of(vm.raw.get("spec")).recorded,
        was_running=vmi is not None and vmi.running,
        started=now.isoformat(timespec="seconds"),
        deadline=(now + timeout).isoformat(timespec="seconds"),
        retention=plan.retention.value,
        vmi_uid=vmi.uid if vmi is not None else "",
        commit=commit,
        data_volumes=tuple(_labelled(dv, migration_id) for dv in rendered.data_volumes),
        forward_ops=tuple(patch[1:]),
        revert_ops=tuple(dict(op) for op in rendered.revert_patch),
        cleanup_ops=tuple(dict(op) for op in rendered.strategy_cleanup_patch),
        live_migratable=migratable.status if migratable and flow is Flow.LIVE else "",
    )


def _labelled(manifest: Mapping[str, Any], migration_id: str) -> dict[str, Any]:
    out = copy.deepcopy(dict(manifest))
    meta = out.setdefault("metadata", {})
    meta.setdefault("labels", {})[MIGRATION_LABEL] = migration_id
    meta.setdefault("annotations", {})[IN_FLIGHT_ANNOTATION] = migration_id
    return out
