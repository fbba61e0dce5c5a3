"""Desired (plans) x live (snapshot) -> per-VM verdicts. Pure: plain data in, plain data out.

Two steps:

1. ``resolve_desired`` expands each plan against the live VMs of its namespace (explicit VMs
   united with selector matches) into one ``DesiredVolume`` per VM volume, and reports plans
   that only conflict once live labels are known.
2. ``diff`` judges every VM that has desired volumes with the rules of ``reconciler.rules``
   and aggregates the volumes' verdicts into one ``VMVerdict`` per VM.

Aggregation, per VM (a VM moves only as a whole):

- a move of ours (or anyone's volume migration) is already under way -> InProgress, and no
  other rule is consulted: the executor resumes or rolls it back from the journal;
- every wanted volume already on its target -> InSync (whatever else is true of the VM);
- any Block finding (VM-level or on a wanted volume), or a run-state rule refusing the move
  (mode Live but live impossible, running without allowStop, ...) -> Blocked with all reasons;
  volumes that could have moved are withheld (rule ``vm-blocked`` or the VM's blocking rule);
- otherwise MoveLive when every moving volume can move live, else MoveOffline
  (``stop_required`` when the VM is running).

Target names are left "" unless the plan sets ``targetName`` (render decides names).
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from types import MappingProxyType

from reconciler import rules
from reconciler.errors import Problem
from reconciler.model import (
    Action,
    DesiredVolume,
    LabelSelector,
    Plan,
    Snapshot,
    Source,
    VMInfo,
    VMSelection,
    VMVerdict,
    VolumeMode,
    VolumeTarget,
    VolumeVerdict,
)
from reconciler.plans import DEFAULT_CLASS
from reconciler.rules import Effect, Finding

MOVES = (Action.MOVE_LIVE, Action.MOVE_OFFLINE)
Tagged = list[tuple[str | None, Finding]]  # (the volume it concerns, None for the VM), finding


@dataclass(frozen=True)
class Diff:
    """The result of one diff.

    ``vms`` is in stable (namespace, name) order. ``problems`` are plan errors (the CLI
    refuses to act on any of them). ``summary`` counts VMs by action (every Action present,
    zero included). ``desired`` are the resolved assignments the verdicts were judged from.
    """

    vms: tuple[VMVerdict, ...]
    problems: tuple[Problem, ...] = ()
    summary: Mapping[Action, int] = field(
        default_factory=lambda: MappingProxyType(dict.fromkeys(Action, 0)), hash=False
    )
    desired: tuple[DesiredVolume, ...] = ()

    @property
    def pending(self) -> bool:
        """True when at least one VM would move."""
        return any(v.action in MOVES for v in self.vms)


# --------------------------------------------------------------------------------------------
# Selection
# --------------------------------------------------------------------------------------------


def matches(selector: LabelSelector, labels: Mapping[str, str]) -> bool:
    """Kubernetes label-selector semantics; an empty selector matches every object."""
    if any(labels.get(key) != value for key, value in selector.match_labels):
        return False
    for key, operator, values in selector.match_expressions:
        present = key in labels
        if operator == "In":
            ok = present and labels[key] in values
        elif operator == "NotIn":
            ok = not present or labels[key] not in values
        elif operator == "Exists":
            ok = present
        elif operator == "DoesNotExist":
            ok = not present
        else:
            ok = False  # plans.py rejects unknown operators; never select on one
        if not ok:
            return False
    return True


def selected_vms(plan: Plan, snapshot: Snapshot) -> tuple[tuple[str, VMSelection | None], ...]:
    """The plan's VMs: explicit names first (in plan order, even if missing), then selector
    matches among the live VMs of the plan's namespace (by name), each once."""
    chosen: dict[str, VMSelection | None] = {}
    for selection in plan.virtual_machines:
        chosen.setdefault(selection.name, selection)
    if plan.selector is not None:
        live = sorted(vm for (ns, vm) in snapshot.vms if ns == plan.namespace)
        for name in live:
            if name not in chosen and matches(
                plan.selector, snapshot.vms[(plan.namespace, name)].labels
            ):
                chosen[name] = None
    return tuple(chosen.items())


def default_class(snapshot: Snapshot) -> str | None:
    """The class CDI gives a DataVolume without storageClassName: the one annotated
    ``storageclass.kubevirt.io/is-default-virt-class`` first, else the cluster default."""
    virt = sorted(n for n, sc in snapshot.storage_classes.items() if sc.is_default_virt)
    return virt[0] if virt else snapshot.default_storage_class


def _resolve_class(storage_class: str, snapshot: Snapshot) -> str:
    """The default class for the sentinel (left as the sentinel when there is none, so the
    storage-class-not-found rule explains it)."""
    if storage_class == DEFAULT_CLASS:
        return default_class(snapshot) or DEFAULT_CLASS
    return storage_class


def _wants_for_vm(
    plan: Plan, vm: VMInfo, selection: VMSelection | None, snapshot: Snapshot
) -> list[tuple[DesiredVolume, Source]]:
    """One DesiredVolume per claim volume of ``vm`` (plan default or per-volume override),
    plus one per override naming a volume the VM lacks or that is not a claim (so the diff can
    block it with a reason). Each comes with the most specific Source that asked for it."""
    overrides: dict[str, VolumeTarget] = {v.name: v for v in selection.volumes} if selection else {}
    fallback = selection.source if selection else plan.source
    wants = []
    names = [v.name for v in vm.volumes if v.kind in rules.CLAIM_KINDS]
    names += [n for n in overrides if n not in names]
    for name in names:
        override = overrides.get(name)
        storage_class = (override.storage_class if override else None) or plan.storage_class
        if storage_class is None:
            continue  # the plan moves only volumes with an explicit class
        want = DesiredVolume(
            namespace=plan.namespace,
            vm=vm.name,
            volume=name,
            storage_class=_resolve_class(storage_class, snapshot),
            volume_mode=(override.volume_mode if override else None) or plan.volume_mode,
            access_modes=(
                override.access_modes
                if override and override.access_modes is not None
                else plan.access_modes
            ),
            target_name=override.target_name if override else None,
            plan=plan,
        )
        wants.append((want, override.source if override else fallback))
    return wants


def _target_of(want: DesiredVolume) -> tuple[object, ...]:
    return (want.storage_class, want.volume_mode, want.access_modes, want.target_name)


def _describe(want: DesiredVolume) -> str:
    parts = [want.storage_class]
    if want.volume_mode is not VolumeMode.AUTO:
        parts.append(f"volumeMode {want.volume_mode.value}")
    if want.access_modes is not None:
        parts.append(f"accessModes {list(want.access_modes)}")
    if want.target_name:
        parts.append(f"targetName {want.target_name}")
    return ", ".join(parts)


def _settings(plan: Plan) -> tuple[object, ...]:
    """The per-VM settings a VM moves under; plans sharing a VM must agree on them."""
    return (
        plan.mode,
        plan.allow_stop,
        plan.retention,
        plan.window,
        plan.timeout,
        plan.allow_gitops_managed,
    )


def resolve_desired(
    plans: Sequence[Plan], snapshot: Snapshot
) -> tuple[tuple[DesiredVolume, ...], tuple[Problem, ...]]:
    """Expand the plans into desired volumes, sorted by (namespace, vm, volume).

    Explicit VMs that do not exist yield nothing here (``diff`` blocks them, rule
    ``vm-not-found``). Two plans wanting different targets for one VM volume, or sharing a VM
    with different per-VM settings, are Problems naming both plans' sources; the conflicting
    volumes (or the whole VM) are left out.
    """
    chosen: dict[tuple[str, str, str], tuple[DesiredVolume, Source]] = {}
    conflicted: set[tuple[str, str, str]] = set()
    problems: list[Problem] = []
    for plan in plans:
        for name, selection in selected_vms(plan, snapshot):
            vm = snapshot.vms.get((plan.namespace, name))
            if vm is None:
                continue
            for want, source in _wants_for_vm(plan, vm, selection, snapshot):
                key = (want.namespace, want.vm, want.volume)
                if key not in chosen:
                    chosen[key] = (want, source)
                    continue
                first, first_source = chosen[key]
                if first.plan == plan or _target_of(first) == _target_of(want):
                    continue
                conflicted.add(key)
                problems.append(
                    Problem(
                        source,
                        f"plans {first.plan.name} ({first_source}) and {plan.name} ({source}) "
                        f"want different targets for volume {want.volume} of VM "
                        f"{want.namespace}/{want.vm}: {first.plan.name} -> {_describe(first)}, "
                        f"{plan.name} -> {_describe(want)} [{rules.CONFLICTING_TARGETS.id}]",
                        hint="narrow one plan's selector or virtualMachines so that only one "
                        "plan selects this VM, or give both the same target",
                    )
                )
    wants = {k: v for k, v in chosen.items() if k not in conflicted}
    problems += _settings_conflicts(wants, conflicted)
    return tuple(w for _, (w, _) in sorted(wants.items(), key=lambda kv: kv[0])), tuple(
        problems
    )


def _settings_conflicts(
    wants: dict[tuple[str, str, str], tuple[DesiredVolume, Source]],
    conflicted: set[tuple[str, str, str]],
) -> list[Problem]:
    """Plans sharing one VM must agree on how it moves; drop the VM's volumes when they don't."""
    by_vm: dict[tuple[str, str], list[tuple[DesiredVolume, Source]]] = {}
    for (ns, vm, _), entry in wants.items():
        by_vm.setdefault((ns, vm), []).append(entry)
    problems = []
    for (ns, vm), entries in by_vm.items():
        first, first_source = entries[0]
        other = next(
            (
                (w, s)
                for w, s in entries
                if w.plan is not first.plan and _settings(w.plan) != _settings(first.plan)
            ),
            None,
        )
        if other is None:
            continue
        want, source = other
        problems.append(
            Problem(
                source,
                f"plans {first.plan.name} ({first_source}) and {want.plan.name} ({source}) both "
                f"move volumes of VM {ns}/{vm} but disagree on mode, allowStop, retention, "
                f"window, timeout or allowGitOpsManaged [{rules.CONFLICTING_PLAN_SETTINGS.id}]",
                hint="a VM moves once, under one plan's settings: make them agree, or select "
                "the VM in one plan only",
            )
        )
        for key in [k for k in wants if k[:2] == (ns, vm)]:
            del wants[key]
            conflicted.add(key)
    return problems


# --------------------------------------------------------------------------------------------
# Judging one VM
# --------------------------------------------------------------------------------------------


def _volume_verdict(
    ctx: rules.VolumeContext, action: Action, finding: Finding | None = None
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


def _where(volume: str, finding: Finding) -> str:
    return f"volume {volume}: {finding}"


def judge_vm(
    vm: VMInfo,
    wants: Sequence[DesiredVolume],
    snapshot: Snapshot,
    cluster_findings: Sequence[Finding] = (),
) -> VMVerdict:
    """The verdict for one existing VM, from its desired volumes (all from agreeing plans,
    so the first one's plan settings are the VM's). ``cluster_findings`` are the results of
    ``rules.CLUSTER_RULES`` (computed once per diff)."""
    plan = wants[0].plan
    contexts = tuple(rules.volume_context(w, vm, snapshot) for w in _order(vm, wants))
    base = rules.vm_context(vm, snapshot, allow_gitops_managed=plan.allow_gitops_managed)
    verdict = VMVerdict(
        namespace=vm.namespace,
        name=vm.name,
        plan=plan.name,
        action=Action.IN_SYNC,
        volumes=(),
        running=base.running,
    )
    recovery = rules.evaluate(rules.RECOVERY_RULES, base)
    if recovery:
        volumes = tuple(_volume_verdict(c, Action.BLOCKED, recovery[0]) for c in contexts)
        return _with(verdict, Action.BLOCKED, volumes, [str(f) for f in recovery])
    in_progress = rules.evaluate(rules.IN_PROGRESS_RULES, base)
    if in_progress:
        volumes = tuple(_volume_verdict(c, Action.IN_PROGRESS, in_progress[0]) for c in contexts)
        return _with(verdict, Action.IN_PROGRESS, volumes, [str(f) for f in in_progress])
    in_sync = frozenset(c.want.volume for c in contexts if rules.is_in_sync(c))
    if len(in_sync) == len(contexts):
        volumes = tuple(_volume_verdict(c, Action.IN_SYNC) for c in contexts)
        return _with(verdict, Action.IN_SYNC, volumes, [])
    moving = [c for c in contexts if c.want.volume not in in_sync]
    vm_ctx = rules.vm_context(
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
        vm_findings=rules.evaluate(rules.VM_RULES, vm_ctx),
        per_volume={c.want.volume: rules.evaluate(rules.VOLUME_RULES, c) for c in moving},
    )
    return _judge_moves(scene, cluster_findings)


@dataclass(frozen=True)
class _Scene:
    """A VM with something to move, and what the VM and volume rules found."""

    verdict: VMVerdict
    plan: Plan
    contexts: tuple[rules.VolumeContext, ...]
    in_sync: frozenset[str]
    vm: rules.VMContext
    vm_findings: tuple[Finding, ...]
    per_volume: Mapping[str, tuple[Finding, ...]]


def _judge_moves(scene: _Scene, cluster_findings: Sequence[Finding]) -> VMVerdict:
    """Blocked, MoveLive or MoveOffline for a VM with at least one volume to move."""
    vm_blocks = rules.of_effect(scene.vm_findings, Effect.BLOCK)
    volume_blocks = {n: rules.of_effect(f, Effect.BLOCK) for n, f in scene.per_volume.items()}
    if vm_blocks or any(volume_blocks.values()):
        reasons = [str(f) for f in vm_blocks] + [
            _where(name, f) for name, found in volume_blocks.items() for f in found
        ]
        return _blocked(scene, volume_blocks, vm_blocks, reasons=reasons)

    tagged_live = _live_blockers(scene, cluster_findings)
    tagged_offline: Tagged = [
        (name, f)
        for name, found in scene.per_volume.items()
        for f in rules.of_effect(found, Effect.NO_OFFLINE)
    ]
    live, run_findings = rules.decide(
        rules.RunContext(
            mode=scene.plan.mode,
            allow_stop=scene.plan.allow_stop,
            running=scene.vm.running,
            live_blockers=tuple(f for _, f in tagged_live),
            offline_blockers=tuple(f for _, f in tagged_offline),
        )
    )
    if live is None:
        reasons = [str(f) for f in run_findings] + _lines(tagged_live + tagged_offline)
        return _blocked(scene, {}, run_findings, reasons=reasons)

    action = Action.MOVE_LIVE if live else Action.MOVE_OFFLINE
    volumes = tuple(
        _volume_verdict(c, Action.IN_SYNC)
        if c.want.volume in scene.in_sync
        else _volume_verdict(c, action, None if live else _why_offline(c, tagged_live))
        for c in scene.contexts
    )
    notes = [str(f) for f in rules.of_effect(scene.vm_findings, Effect.NOTE)]
    reasons = ([] if live else _lines(tagged_live)) + notes
    stop = action is Action.MOVE_OFFLINE and scene.vm.running
    return _with(scene.verdict, action, volumes, reasons, stop_required=stop)


def _live_blockers(scene: _Scene, cluster_findings: Sequence[Finding]) -> Tagged:
    """Why the VM cannot move live. A VM that is not running cannot move live whatever else
    is true, and then only that is worth saying."""
    if not scene.vm.running:
        return [(None, f) for f in scene.vm_findings if f.rule == rules.VM_NOT_RUNNING]
    return (
        [(None, f) for f in cluster_findings]
        + [(None, f) for f in rules.of_effect(scene.vm_findings, Effect.NO_LIVE)]
        + [
            (name, f)
            for name, found in scene.per_volume.items()
            for f in rules.of_effect(found, Effect.NO_LIVE)
        ]
    )


def _lines(tagged: Tagged) -> list[str]:
    return [_where(name, f) if name else str(f) for name, f in tagged]


def _why_offline(ctx: rules.VolumeContext, tagged_live: Tagged) -> Finding | None:
    """The volume's own live blocker if it has one, else the VM's first."""
    own = [f for name, f in tagged_live if name == ctx.want.volume]
    first = own or [f for _, f in tagged_live]
    return first[0] if first else None


def _blocked(
    scene: _Scene,
    volume_blocks: Mapping[str, Sequence[Finding]],
    vm_blocks: Sequence[Finding],
    *,
    reasons: list[str],
) -> VMVerdict:
    """A Blocked VM: blocked volumes carry their own findings, the others that would have
    moved carry the VM's blocking finding (or ``vm-blocked`` when a sibling is blocked)."""
    withheld = vm_blocks[0] if vm_blocks else Finding(
        rules.VM_BLOCKED.id,
        rules.VM_BLOCKED.effect,
        "not moved: another volume of this VM is blocked, and a VM moves as a whole",
    )
    volumes = []
    for c in scene.contexts:
        own = volume_blocks.get(c.want.volume, ())
        if c.want.volume in scene.in_sync:
            volumes.append(_volume_verdict(c, Action.IN_SYNC))
        elif own:
            joined = Finding(own[0].rule, own[0].effect, "; ".join(f.message for f in own))
            volumes.append(_volume_verdict(c, Action.BLOCKED, joined))
        else:
            volumes.append(_volume_verdict(c, Action.BLOCKED, withheld))
    return _with(scene.verdict, Action.BLOCKED, tuple(volumes), reasons)


def _with(
    verdict: VMVerdict,
    action: Action,
    volumes: tuple[VolumeVerdict, ...],
    reasons: list[str],
    *,
    stop_required: bool = False,
) -> VMVerdict:
    return replace(
        verdict, action=action, volumes=volumes, reasons=tuple(reasons), stop_required=stop_required
    )


def _missing_vm(plan: Plan, name: str) -> VMVerdict:
    finding = rules.vm_not_found(plan.namespace, name, plan.name)
    return VMVerdict(
        namespace=plan.namespace,
        name=name,
        plan=plan.name,
        action=Action.BLOCKED,
        volumes=(),
        reasons=(str(finding),),
    )


# --------------------------------------------------------------------------------------------
# diff
# --------------------------------------------------------------------------------------------


def refuse_namespaces(
    plans: Sequence[Plan], allowed_namespaces: frozenset[str] | None
) -> tuple[tuple[Plan, ...], tuple[Problem, ...]]:
    """Split the plans into those inside the allow-list (None = all) and Problems for the
    rest."""
    if allowed_namespaces is None:
        return tuple(plans), ()
    kept, problems = [], []
    allowed = ", ".join(sorted(allowed_namespaces)) or "none"
    for plan in plans:
        if plan.namespace in allowed_namespaces:
            kept.append(plan)
            continue
        problems.append(
            Problem(
                plan.source,
                f"plan {plan.name} targets namespace {plan.namespace}, which this reconciler may "
                f"not touch (allowed: {allowed}) [{rules.NAMESPACE_NOT_ALLOWED.id}]",
                hint="add the namespace to the allow-list (and the reconciler's RBAC), or move "
                "the plan to a repository whose reconciler owns that namespace",
            )
        )
    return tuple(kept), tuple(problems)


def diff(
    plans: Sequence[Plan],
    snapshot: Snapshot,
    *,
    allowed_namespaces: frozenset[str] | None = None,
) -> Diff:
    """Judge every VM the plans select; see the module docstring for the aggregation."""
    kept, refused = refuse_namespaces(plans, allowed_namespaces)
    desired, conflicts = resolve_desired(kept, snapshot)
    cluster_findings = rules.evaluate(rules.CLUSTER_RULES, rules.ClusterContext(snapshot.kubevirt))

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
                verdicts[key] = _missing_vm(plan, selection.name)

    ordered = tuple(verdicts[k] for k in sorted(verdicts))
    counts = Counter(v.action for v in ordered)
    return Diff(
        vms=ordered,
        problems=refused + conflicts,
        summary=MappingProxyType({a: counts[a] for a in Action}),
        desired=desired,
    )
