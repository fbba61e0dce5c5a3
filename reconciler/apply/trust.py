"""The journal is untrusted input: anyone who may patch a VM may write its journal annotation,
and a resumed journal is executed with the reconciler's ServiceAccount (which may create clones
in every allowed namespace and delete claims). So before a journal is acted on, everything it
would make the reconciler do passes the same scope checks as a fresh render (``ScopeCheck``:
the engine hands in ``render.scope.scope_problems``, one allow-list for both), plus what only a
journal can get wrong. A journal with problems is refused: left as it is, for a human. Pure.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any, Protocol

from reconciler.model.journal import FORWARD, Flow, Journal, Step
from reconciler.model.plan import Retention


class ScopeCheck(Protocol):
    """Everything in a move's manifests and operations outside its scope, one message per
    problem ([] = in scope): ``render.scope.scope_problems``."""

    def __call__(
        self,
        *,
        namespace: str,
        vm: Mapping[str, Any],
        moves: Sequence[tuple[str, str, str, str]],
        flow: str,
        data_volumes: Sequence[Mapping[str, Any]],
        forward_ops: Sequence[Mapping[str, Any]],
        revert_ops: Sequence[Mapping[str, Any]],
        cleanup_ops: Sequence[Mapping[str, Any]],
        swapped: bool = False,
    ) -> list[str]: ...


def journal_problems(
    namespace: str, vm: Mapping[str, Any], journal: Journal, scope: ScopeCheck
) -> list[str]:
    """What ``journal``, found on ``vm`` in ``namespace``, asks that a move of this VM never
    does ([] = it may be resumed); ``scope`` checks the manifests and operations it holds."""
    found: list[str] = []
    plan_namespace = journal.plan.partition("/")[0]
    if plan_namespace != namespace:
        found.append(f"its plan {journal.plan!r} is not of namespace {namespace}")
    if journal.retention not in tuple(Retention):
        found.append(f"retention {journal.retention!r} is not Keep or Delete")
    if not journal.volumes:
        found.append("it moves no volume")
    targets = [v.target for v in journal.volumes]
    sources = [v.source for v in journal.volumes]
    if len(set(targets)) != len(targets) or len(set(sources)) != len(sources):
        found.append("two volumes share a source or a target")
    if set(targets) & set(sources):
        found.append("a claim is both a source and a target")
    found += scope(
        namespace=namespace,
        vm=vm,
        moves=[(v.volume, v.source, v.target, v.to_class) for v in journal.volumes],
        flow=journal.flow.value,
        data_volumes=journal.data_volumes,
        forward_ops=journal.forward_ops,
        revert_ops=journal.revert_ops,
        cleanup_ops=journal.cleanup_ops,
        swapped=_may_be_swapped(journal),
    )
    if journal.flow is Flow.OFFLINE and journal.cleanup_ops:
        found.append("an offline move has no updateVolumesStrategy to clean up")
    return found


def _may_be_swapped(journal: Journal) -> bool:
    """Whether the VM may already use the targets: once the swap step has been reached (a
    crash mid-swap leaves either), and throughout a rollback. Before it, every moved volume
    must use its source, which proves each source is a claim of this VM."""
    if journal.rolling_back:
        return True
    steps = FORWARD[journal.flow]
    return steps.index(journal.step) >= steps.index(Step.SWAP)
