"""Desired (plans) x live (snapshot) -> per-VM verdicts. Pure: plain data in, plain data out.

Two steps:

1. ``desired.resolve_desired`` expands each plan against the live VMs of its namespace into one
   ``DesiredVolume`` per VM volume, and reports plans that only conflict once live labels are
   known.
2. ``diff`` builds each VM's contexts (``context``) once, runs the rule tables
   (``rules_*``) over them and aggregates the volumes' verdicts into one ``VMVerdict`` per VM,
   all here: a snapshot goes into the diff once and verdicts come out.

Aggregation, per VM (a VM moves only as a whole):

- a move of ours (or anyone's volume migration) is already under way -> InProgress, and no
  other rule is consulted: the executor resumes or rolls it back from the journal;
- every wanted volume already on its target -> InSync (whatever else is true of the VM);
- any Block finding (VM-level or on a wanted volume), or a run-state rule refusing the move
  (mode Live but live impossible, running without allowStop, ...) -> Blocked with all reasons:
  every rule runs whatever another found, and the reasons are listed in
  ``catalog.FIX_ORDER`` (what to fix first); volumes that could have moved are withheld (rule
  ``vm-blocked`` or the VM's first blocking rule);
- otherwise MoveLive when every moving volume can move live, else MoveOffline
  (``stop_required`` when the VM is running).

Target names are left "" unless the plan sets ``targetName`` (render decides names).
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from types import MappingProxyType

from reconciler.diff import catalog
from reconciler.diff.context import (
    ClusterContext,
    RunContext,
    VMContext,
    VolumeContext,
    vm_context,
    volume_context,
)
from reconciler.diff.desired import refuse_namespaces, resolve_desired
from reconciler.diff.rule import evaluate, of_effect
from reconciler.diff.rules_cluster import CLUSTER_RULES
from reconciler.diff.rules_run import RUN_RULES, decide
from reconciler.diff.rules_vm import (
    IN_PROGRESS_RULES,
    RECOVERY_RULES,
    VM_NOT_RUNNING,
    VM_RULES,
)
from reconciler.diff.rules_volume import VOLUME_RULES
from reconciler.diff.selection import empty_plans
from reconciler.model.errors import Problem
from reconciler.model.live import Snapshot, VMInfo
from reconciler.model.plan import Plan
from reconciler.model.verdict import (
    Action,
    DesiredVolume,
    Effect,
    EmptyPlan,
    Finding,
    Route,
    VMVerdict,
    VolumeVerdict,
)

MOVES = (Action.MOVE_LIVE, Action.MOVE_OFFLINE)
RUN_RULE_IDS = frozenset(r.id for r in RUN_RULES)


@dataclass(frozen=True)
class Diff:
    """The result of one diff.

    ``vms`` is in stable (namespace, name) order. ``problems`` are plan errors (the CLI
    refuses to act on any of them). ``summary`` counts VMs by action (every Action present,
    zero included). ``desired`` are the resolved assignments the verdicts were judged from.
    ``empty_plans``: the plans that select no VM, each with why (``selection``).
    """

    vms: tuple[VMVerdict, ...]
    problems: tuple[Problem, ...] = ()
    summary: Mapping[Action, int] = field(
        default_factory=lambda: MappingProxyType(dict.fromkeys(Action, 0)), hash=False
    )
    desired: tuple[DesiredVolume, ...] = ()
    empty_plans: tuple[EmptyPlan, ...] = ()

    @property
    def pending(self) -> bool:
        """True when at least one VM would move."""
        return any(v.action in MOVES for v in self.vms)


# --------------------------------------------------------------------------------------------
# Judging one VM
# --------------------------------------------------------------------------------------------


def _volume_verdict(
    ctx: VolumeContext, action: Action, finding: Finding | None = None
) -> VolumeVerdict:
    return VolumeVerdict(
        volume=ctx.want.volume,
        claim=(ctx.volume.claim or "") if ctx.volume else "",
        from_class=ctx.pvc.storage_class if ctx.pvc else None,
        to_class=ctx.want.storage_class,
        action=action,
        reason=finding.message if finding else "",
        rule=finding.rule if finding else "",
        target_name=ctx.want.target_name or "",
        size_bytes=ctx.target.size_bytes,
        volume_mode=ctx.target.volume_mode,
        access_modes=ctx.target.access_modes,
    )


def _order(vm: VMInfo, wants: Sequence[DesiredVolume]) -> list[DesiredVolume]:
    """The VM's volume order, then volumes it does not have (by name)."""
    position = {v.name: i for i, v in enumerate(vm.volumes)}
    return sorted(wants, key=lambda w: (position.get(w.volume, len(position)), w.volume))


def judge_vm(
    vm: VMInfo,
    wants: Sequence[DesiredVolume],
    snapshot: Snapshot,
    cluster_findings: Sequence[Finding] = (),
) -> VMVerdict:
    """The verdict for one existing VM, from its desired volumes (all from agreeing plans,
    so the first one's plan settings are the VM's). ``cluster_findings`` are the results of
    ``CLUSTER_RULES`` (computed once per diff)."""
    plan = wants[0].plan
    contexts = tuple(volume_context(w, vm, snapshot) for w in _order(vm, wants))
    base = vm_context(vm, snapshot, allow_gitops_managed=plan.allow_gitops_managed)
    verdict = VMVerdict(
        namespace=vm.namespace,
        name=vm.name,
        plan=plan.name,
        action=Action.IN_SYNC,
        volumes=(),
        running=base.running,
    )
    recovery = evaluate(RECOVERY_RULES, base)
    if recovery:
        volumes = tuple(_volume_verdict(c, Action.BLOCKED, recovery[0]) for c in contexts)
        return _with(verdict, Action.BLOCKED, volumes, recovery)
    in_progress = evaluate(IN_PROGRESS_RULES, base)
    if in_progress:
        volumes = tuple(_volume_verdict(c, Action.IN_PROGRESS, in_progress[0]) for c in contexts)
        return _with(verdict, Action.IN_PROGRESS, volumes, in_progress)
    in_sync = frozenset(c.want.volume for c in contexts if c.in_sync)
    if len(in_sync) == len(contexts):
        volumes = tuple(_volume_verdict(c, Action.IN_SYNC) for c in contexts)
        return _with(verdict, Action.IN_SYNC, volumes, ())
    moving = [c for c in contexts if c.want.volume not in in_sync]
    vm_ctx = vm_context(
        vm,
        snapshot,
        wanted=(c.want.volume for c in contexts),
        moving=(c.want.volume for c in moving),
        allow_gitops_managed=plan.allow_gitops_managed,
    )
    scene = _Scene(
        verdict=verdict,
        plan=plan,
        contexts=contexts,
        in_sync=in_sync,
        vm=vm_ctx,
        vm_findings=evaluate(VM_RULES, vm_ctx),
        per_volume={c.want.volume: evaluate(VOLUME_RULES, c, volume=c.want.volume) for c in moving},
    )
    return _judge_moves(scene, cluster_findings)


@dataclass(frozen=True)
class _Scene:
    """A VM with something to move, and what the VM and volume rules found."""

    verdict: VMVerdict
    plan: Plan
    contexts: tuple[VolumeContext, ...]
    in_sync: frozenset[str]
    vm: VMContext
    vm_findings: tuple[Finding, ...]
    per_volume: Mapping[str, tuple[Finding, ...]]


def _judge_moves(scene: _Scene, cluster_findings: Sequence[Finding]) -> VMVerdict:
    """Blocked, MoveLive or MoveOffline for a VM with at least one volume to move.

    Every rule runs: the VM's and each volume's, and the run-state rules over what they found,
    so a blocked VM lists every reason at once, in ``catalog.FIX_ORDER`` (what to fix first),
    not one round of fixes at a time."""
    vm_blocks = of_effect(scene.vm_findings, Effect.BLOCK)
    volume_blocks = {n: of_effect(f, Effect.BLOCK) for n, f in scene.per_volume.items()}
    live_blockers = _live_blockers(scene, cluster_findings)
    offline_blockers = [
        f for found in scene.per_volume.values() for f in of_effect(found, Effect.NO_OFFLINE)
    ]
    route, run_findings = decide(
        RunContext(
            mode=scene.plan.mode,
            allow_stop=scene.plan.allow_stop,
            running=scene.vm.running,
            live_blockers=tuple(live_blockers),
            offline_blockers=tuple(offline_blockers),
        )
    )
    if vm_blocks or any(volume_blocks.values()) or route is Route.BLOCKED:
        # The NoLive/NoOffline findings are reasons only when a run-state rule cites them.
        cited = [*live_blockers, *offline_blockers] if run_findings else []
        blocks = [*vm_blocks, *run_findings, *(f for b in volume_blocks.values() for f in b)]
        return _blocked(scene, volume_blocks, blocks, cited)

    live = route is Route.LIVE
    action = Action.MOVE_LIVE if live else Action.MOVE_OFFLINE
    volumes = tuple(
        _volume_verdict(c, Action.IN_SYNC)
        if c.want.volume in scene.in_sync
        else _volume_verdict(c, action, None if live else _why_offline(c, live_blockers))
        for c in scene.contexts
    )
    notes = of_effect(scene.vm_findings, Effect.NOTE)
    findings = [*([] if live else live_blockers), *notes]
    stop = action is Action.MOVE_OFFLINE and scene.vm.running
    return _with(scene.verdict, action, volumes, findings, stop_required=stop)


def in_fix_order(blocks: Sequence[Finding], cited: Sequence[Finding] = ()) -> list[Finding]:
    """``blocks`` in ``catalog.FIX_ORDER`` (stable: volumes stay in the VM's order), with the
    ``cited`` findings (what a run-state rule names as its cause) right after the last
    run-state finding."""
    ordered = sorted(blocks, key=lambda f: catalog.fix_rank(f.rule))
    run = [i for i, f in enumerate(ordered) if f.rule in RUN_RULE_IDS]
    at = run[-1] + 1 if run else len(ordered)
    return [*ordered[:at], *cited, *ordered[at:]]


def _live_blockers(scene: _Scene, cluster_findings: Sequence[Finding]) -> list[Finding]:
    """Why the VM cannot move live. A VM that is not running cannot move live whatever else
    is true, and then only that is worth saying."""
    if not scene.vm.running:
        return [f for f in scene.vm_findings if f.rule == VM_NOT_RUNNING]
    return [
        *cluster_findings,
        *of_effect(scene.vm_findings, Effect.NO_LIVE),
        *(f for found in scene.per_volume.values() for f in of_effect(found, Effect.NO_LIVE)),
    ]


def _why_offline(ctx: VolumeContext, live_blockers: Sequence[Finding]) -> Finding | None:
    """The volume's own live blocker if it has one, else the VM's first."""
    own = [f for f in live_blockers if f.volume == ctx.want.volume]
    first = own or list(live_blockers)
    return first[0] if first else None


def _blocked(
    scene: _Scene,
    volume_blocks: Mapping[str, Sequence[Finding]],
    blocks: Sequence[Finding],
    cited: Sequence[Finding],
) -> VMVerdict:
    """A Blocked VM with every reason (``in_fix_order``): blocked volumes carry their own
    findings, the others that would have moved carry the VM's first blocking finding (or
    ``vm-blocked`` when only a sibling volume is blocked)."""
    findings = in_fix_order(blocks, cited)
    vm_level = [f for f in findings if f.volume is None and f.effect is Effect.BLOCK]
    withheld = (
        vm_level[0]
        if vm_level
        else Finding(
            catalog.VM_BLOCKED.id,
            catalog.VM_BLOCKED.effect,
            None,
            "not moved: another volume of this VM is blocked, and a VM moves as a whole",
        )
    )
    volumes = []
    for c in scene.contexts:
        own = in_fix_order(volume_blocks.get(c.want.volume, ()))
        if c.want.volume in scene.in_sync:
            volumes.append(_volume_verdict(c, Action.IN_SYNC))
        elif own:
            joined = replace(own[0], message="; ".join(f.message for f in own))
            volumes.append(_volume_verdict(c, Action.BLOCKED, joined))
        else:
            volumes.append(_volume_verdict(c, Action.BLOCKED, withheld))
    return _with(scene.verdict, Action.BLOCKED, tuple(volumes), findings)


def _with(
    verdict: VMVerdict,
    action: Action,
    volumes: tuple[VolumeVerdict, ...],
    findings: Sequence[Finding],
    *,
    stop_required: bool = False,
) -> VMVerdict:
    return replace(
        verdict,
        action=action,
        volumes=volumes,
        findings=tuple(findings),
        stop_required=stop_required,
    )


def _missing_vm(plan: Plan, name: str, snapshot: Snapshot) -> VMVerdict:
    finding = catalog.vm_not_found(plan.namespace, name, plan.name, snapshot.vms)
    return VMVerdict(
        namespace=plan.namespace,
        name=name,
        plan=plan.name,
        action=Action.BLOCKED,
        volumes=(),
        findings=(finding,),
        exists=False,
    )


# --------------------------------------------------------------------------------------------
# diff
# --------------------------------------------------------------------------------------------


def diff(
    plans: Sequence[Plan],
    snapshot: Snapshot,
    *,
    allowed_namespaces: frozenset[str] | None = None,
    namespaces: frozenset[str] | None = None,
) -> Diff:
    """Judge every VM the plans select; see the module docstring for the aggregation.
    ``namespaces``: the cluster's namespaces, when known (``selection.empty_plans``)."""
    kept, refused = refuse_namespaces(plans, allowed_namespaces)
    desired, conflicts = resolve_desired(kept, snapshot)
    cluster_findings = evaluate(CLUSTER_RULES, ClusterContext(snapshot.kubevirt))

    by_vm: dict[tuple[str, str], list[DesiredVolume]] = {}
    for want in desired:
        by_vm.setdefault((want.namespace, want.vm), []).append(want)
    verdicts = {
        key: judge_vm(snapshot.vms[key], wants, snapshot, cluster_findings)
        for key, wants in by_vm.items()
    }
    for plan in kept:
        for selection in plan.virtual_machines:
            key = (plan.namespace, selection.name)
            if key not in snapshot.vms and key not in verdicts:
                verdicts[key] = _missing_vm(plan, selection.name, snapshot)

    ordered = tuple(verdicts[k] for k in sorted(verdicts))
    counts = Counter(v.action for v in ordered)
    return Diff(
        vms=ordered,
        problems=refused + conflicts,
        summary=MappingProxyType({a: counts[a] for a in Action}),
        desired=desired,
        empty_plans=empty_plans(kept, snapshot, namespaces),
    )
