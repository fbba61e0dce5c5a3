"""The pipeline `apply` executes against, written once: observe -> diff -> render, and the
report's write-back, handed to ``apply`` as ``apply.seam.Stages``.

``apply`` imports none of observe, diff, render or report; the engine builds its ``Stages``
here (``stages_for``). Each function takes what it reads as arguments and keeps nothing
between calls, so several lanes may call them at once (``apply.seam`` says where the shared
state is). The judges read the engine's watch-fed view (``observe.view``): no LIST per VM, so a
judge's cost does not grow with its namespace. When the view cannot prove it is current (not
listed yet, a stream failed for good, our own last write or the VM's state at the moment of
asking not seen within its deadline) a judge observes afresh, as it did before the view: one
``fetch`` of the namespace, a consistent LIST at least as new as the moment it was sent.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence

from reconciler.apply.seam import Checks, MovedVolumes, Stages
from reconciler.diff.git_owners import git_owners
from reconciler.diff.gitops import volumes_writer
from reconciler.diff.judge import Diff, diff
from reconciler.kube.client import Cluster
from reconciler.kube.resources import VIRTUAL_MACHINES
from reconciler.model import journal as journals
from reconciler.model.errors import ClusterError, PlanError, TemplateError
from reconciler.model.judged import JudgedVM, Judgement, Rendering, SourceClaim
from reconciler.model.live import Snapshot
from reconciler.model.plan import Plan
from reconciler.model.verdict import Action, VMVerdict
from reconciler.model.writeback import WriteBack
from reconciler.observe.fetch import fetch
from reconciler.observe.parse import parse_vm
from reconciler.observe.view import Stale, View
from reconciler.render.move import RenderedVM, render_vm
from reconciler.render.sandbox import TemplateSet
from reconciler.render.scope import scope_problems
from reconciler.report.writeback import write_back

log = logging.getLogger(__name__)
MOVES = (Action.MOVE_LIVE, Action.MOVE_OFFLINE)

CHECKS = Checks(scope=scope_problems, volumes_writer=volumes_writer)
"""The pure checks `apply` and `cancel` take from render and diff."""


def judged(plans: Sequence[Plan], snapshot: Snapshot, allowed: frozenset[str] | None) -> Diff:
    """``diff`` of the plans on ``snapshot``; ``PlanError`` when the plans conflict."""
    result = diff(plans, snapshot, allowed_namespaces=allowed)
    if result.problems:
        raise PlanError(list(result.problems))
    return result


def observed(
    cluster: Cluster,
    view: View | None,
    namespaces: Sequence[str],
    vm: tuple[str, str] | None = None,
) -> Snapshot:
    """``namespaces`` as ``view`` shows them once it proves itself current (``View.snapshot``:
    our own last write seen, and ``vm``'s state as of now); a fresh ``fetch`` when there is no
    view or it cannot prove that."""
    if view is not None:
        try:
            return view.snapshot(namespaces, vm=vm)
        except Stale as exc:
            log.info(
                "observing %s afresh: the view cannot prove it is current (%s)", namespaces, exc
            )
    return fetch(cluster, namespaces)


def judge_all(
    cluster: Cluster,
    plans: Sequence[Plan],
    allowed: frozenset[str] | None,
    view: View | None = None,
) -> Judgement:
    """Every VM the plans select, judged on one current observation of their namespaces
    (``observed``), with each VM's last-migration record (the backoff after failed moves)."""
    snapshot = observed(cluster, view, sorted({p.namespace for p in plans}))
    result = judged(plans, snapshot, allowed)
    last = {
        key: record
        for key, vm in snapshot.vms.items()
        if (record := journals.read_last(vm.annotations)) is not None
    }
    return Judgement(verdicts=result.vms, empty_plans=result.empty_plans, last_moves=last)


def judge(
    cluster: Cluster,
    plans: Sequence[Plan],
    templates: TemplateSet,
    allowed: frozenset[str] | None,
    *,
    namespace: str,
    name: str,
    view: View | None = None,
) -> JudgedVM:
    """``namespace/name`` judged on a current look at its namespace (``observed``, the VM as
    of now) and, if it moves, rendered (a ``TemplateError`` becomes ``render_error``: that VM
    fails, the run goes on). A judgement from the view that fails to render is judged again on
    a fresh observation: the view lags what others deleted (e.g. a leftover's claim the garbage
    collector removed after our delete of its DataVolume), and a stale name must not fail a
    move."""
    judged_vm = _judge_on(
        observed(cluster, view, [namespace], (namespace, name)),
        plans,
        templates,
        allowed,
        namespace=namespace,
        name=name,
    )
    if view is not None and judged_vm.render_error:
        judged_vm = _judge_on(
            observed(cluster, None, [namespace], (namespace, name)),
            plans,
            templates,
            allowed,
            namespace=namespace,
            name=name,
        )
    return judged_vm


def _judge_on(
    snapshot: Snapshot,
    plans: Sequence[Plan],
    templates: TemplateSet,
    allowed: frozenset[str] | None,
    *,
    namespace: str,
    name: str,
) -> JudgedVM:
    mine = [p for p in plans if p.namespace == namespace]
    # Not ``judged``: the plans were found free of conflicts at the start of the run; what
    # the cluster did since is judged per VM, as its verdict.
    found = diff(mine, snapshot, allowed_namespaces=allowed).vms
    verdict = next((v for v in found if v.name == name), None)
    if verdict is None or verdict.action not in MOVES:
        return JudgedVM(verdict)
    vm = snapshot.vms[(namespace, name)]
    plan = next(p for p in mine if p.name == verdict.plan)
    sources = _sources(verdict, snapshot)
    try:
        rendered = render_vm(verdict, vm, snapshot, templates, plan_name=plan.name)
    except TemplateError as exc:
        return JudgedVM(verdict, vm, plan, render_error=str(exc), sources=sources)
    return JudgedVM(verdict, vm, plan, rendering=rendering_of(rendered), sources=sources)


def rendering_of(rendered: RenderedVM) -> Rendering:
    """What a journal records of a rendering."""
    return Rendering(
        target_names=dict(rendered.target_names),
        data_volumes=rendered.data_volumes,
        vm_patch=rendered.vm_patch,
        revert_patch=rendered.revert_patch,
        strategy_cleanup_patch=rendered.strategy_cleanup_patch,
    )


def _sources(verdict: VMVerdict, snapshot: Snapshot) -> dict[str, SourceClaim]:
    """The claims the verdict moves, as observed (a claim neither a PVC nor a DataVolume of
    the snapshot is left out: size 0, not a DataVolume)."""
    found: dict[str, SourceClaim] = {}
    for v in verdict.volumes:
        key = (verdict.namespace, v.claim)
        pvc = snapshot.pvcs.get(key)
        if pvc is None and key not in snapshot.data_volumes:
            continue
        found[v.claim] = SourceClaim(
            size_bytes=pvc.request_bytes if pvc is not None else 0,
            is_data_volume=key in snapshot.data_volumes,
        )
    return found


def write_back_of(
    cluster: Cluster, namespace: str, name: str, volumes: MovedVolumes
) -> WriteBack | None:
    """A moved VM that Argo CD or Flux applies from Git: the change to commit to its manifest
    (``report.writeback``). One GET; reporting never fails a move (None when it cannot
    tell)."""
    try:
        vm = cluster.get(VIRTUAL_MACHINES, namespace, name)
        owners = git_owners(parse_vm(vm)) if vm is not None else ()
        if vm is None or not owners:
            return None
        return write_back(vm, volumes, owners)
    except (ClusterError, ValueError) as exc:
        log.warning("%s/%s: no write-back: %s", namespace, name, exc)
        return None


def stages_for(
    cluster: Cluster,
    plans: Sequence[Plan],
    templates: TemplateSet,
    allowed: frozenset[str] | None,
    view: View | None = None,
) -> Stages:
    """The ``Stages`` of one `apply` run over ``plans``, judged on ``view`` (None: a fresh
    ``fetch`` per judge)."""
    chosen = tuple(plans)
    return Stages(
        judge_all=lambda: judge_all(cluster, chosen, allowed, view),
        judge=lambda namespace, name: judge(
            cluster, chosen, templates, allowed, namespace=namespace, name=name, view=view
        ),
        write_back=lambda namespace, name, volumes: write_back_of(
            cluster, namespace, name, volumes
        ),
        checks=CHECKS,
    )
