"""The first journal of a move, from the verdict and what render produced. Pure.

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

from reconciler.model.journal import FORWARD, Flow, Journal, VolumeMove
from reconciler.model.live import Snapshot, VMInfo
from reconciler.model.names import IN_FLIGHT_ANNOTATION, MIGRATION_LABEL
from reconciler.model.plan import Plan
from reconciler.model.verdict import Action, VMVerdict
from reconciler.render.move import RenderedVM

GIB = 1 << 30
BASE_TIMEOUT = timedelta(minutes=15)
PER_GIB = timedelta(minutes=1)  # a copy slower than ~17 MiB/s counts as stuck


def default_timeout(total_bytes: int) -> timedelta:
    """A move's timeout when the plan sets none: 15 minutes plus a minute per GiB moved."""
    return BASE_TIMEOUT + PER_GIB * -(-total_bytes // GIB)


def first_journal(
    *,
    verdict: VMVerdict,
    vm: VMInfo,
    vmi: Mapping[str, Any] | None,
    rendered: RenderedVM,
    snapshot: Snapshot,
    plan: Plan,
    migration_id: str,
    run_strategy: str,
    now: datetime,
    commit: str | None = None,
) -> Journal:
    """The journal at the first step of the verdict's flow. ValueError when the rendering does
    not match the verdict (a bug, not a user error)."""
    flow = Flow.LIVE if verdict.action is Action.MOVE_LIVE else Flow.OFFLINE
    moves = [v for v in verdict.volumes if v.action in (Action.MOVE_LIVE, Action.MOVE_OFFLINE)]
    volumes = tuple(
        VolumeMove(
            volume=m.volume,
            source=m.claim,
            target=rendered.target_names[m.volume],
            source_is_data_volume=(vm.namespace, m.claim) in snapshot.data_volumes,
            from_class=m.from_class,
            to_class=m.to_class,
            size_bytes=_source_size(snapshot, vm.namespace, m.claim),
        )
        for m in moves
    )
    patch = [dict(op) for op in rendered.vm_patch]
    if not patch or patch[0].get("path") != "/metadata/resourceVersion":
        raise ValueError("the rendered VM patch does not open with a resourceVersion test")
    total = sum(v.size_bytes for v in volumes)
    timeout = plan.timeout if plan.timeout is not None else default_timeout(total)
    status = (vmi or {}).get("status") or {}
    migratable = next(
        (
            str(c.get("status"))
            for c in status.get("conditions") or ()
            if isinstance(c, dict) and c.get("type") == "LiveMigratable"
        ),
        "",
    )
    return Journal(
        id=migration_id,
        plan=f"{plan.namespace}/{plan.name}",
        flow=flow,
        step=FORWARD[flow][0],
        volumes=volumes,
        run_strategy=run_strategy,
        was_running=status.get("phase") == "Running",
        started=now.isoformat(timespec="seconds"),
        deadline=(now + timeout).isoformat(timespec="seconds"),
        retention=plan.retention.value,
        vmi_uid=str(((vmi or {}).get("metadata") or {}).get("uid") or ""),
        commit=commit,
        data_volumes=tuple(_labelled(dv, migration_id) for dv in rendered.data_volumes),
        forward_ops=tuple(patch[1:]),
        revert_ops=tuple(dict(op) for op in rendered.revert_patch),
        cleanup_ops=tuple(dict(op) for op in rendered.strategy_cleanup_patch),
        live_migratable=migratable if flow is Flow.LIVE else "",
    )


def _source_size(snapshot: Snapshot, namespace: str, claim: str) -> int:
    pvc = snapshot.pvcs.get((namespace, claim))
    return pvc.request_bytes if pvc is not None else 0


def _labelled(manifest: Mapping[str, Any], migration_id: str) -> dict[str, Any]:
    out = copy.deepcopy(dict(manifest))
    meta = out.setdefault("metadata", {})
    meta.setdefault("labels", {})[MIGRATION_LABEL] = migration_id
    meta.setdefault("annotations", {})[IN_FLIGHT_ANNOTATION] = migration_id
    return out
