"""Desired state against the live VMs: which volume of which VM each plan wants where. Pure.

``resolve_desired`` expands each plan against the live VMs of its namespace (explicit VMs
united with selector matches) into one ``DesiredVolume`` per VM volume, and reports plans that
only conflict once live labels are known (the same two field lists the cross-file check uses:
``model.plan.TARGET_FIELDS`` and ``PLAN_SETTINGS``). ``refuse_namespaces`` applies the
namespace allow-list.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from reconciler.diff import catalog
from reconciler.diff.target import CLAIM_KINDS
from reconciler.model.errors import Problem
from reconciler.model.live import Snapshot, VMInfo
from reconciler.model.plan import (
    DEFAULT_CLASS,
    PLAN_SETTINGS,
    TARGET_FIELDS,
    LabelSelector,
    Plan,
    Source,
    VMSelection,
    VolumeMode,
    VolumeTarget,
    field_list,
    plan_settings,
)
from reconciler.model.verdict import DesiredVolume


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


def wants_for_vm(
    plan: Plan, vm: VMInfo, selection: VMSelection | None, snapshot: Snapshot
) -> list[tuple[DesiredVolume, Source]]:
    """One DesiredVolume per claim volume of ``vm`` (plan default or per-volume override),
    plus one per override naming a volume the VM lacks or that is not a claim (so the diff can
    block it with a reason). Each comes with the most specific Source that asked for it."""
    overrides: dict[str, VolumeTarget] = {v.name: v for v in selection.volumes} if selection else {}
    fallback = selection.source if selection else plan.source
    wants = []
    names = [v.name for v in vm.volumes if v.kind in CLAIM_KINDS]
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
    return tuple(getattr(want, attribute) for attribute in TARGET_FIELDS)


def _describe(want: DesiredVolume) -> str:
    parts = [want.storage_class]
    if want.volume_mode is not VolumeMode.AUTO:
        parts.append(f"volumeMode {want.volume_mode.value}")
    if want.access_modes is not None:
        parts.append(f"accessModes {list(want.access_modes)}")
    if want.target_name:
        parts.append(f"targetName {want.target_name}")
    return ", ".join(parts)


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
            for want, source in wants_for_vm(plan, vm, selection, snapshot):
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
                        f"{plan.name} -> {_describe(want)} [{catalog.CONFLICTING_TARGETS.id}]",
                        hint="narrow one plan's selector or virtualMachines so that only one "
                        "plan selects this VM, or give both the same target",
                    )
                )
    wants = {k: v for k, v in chosen.items() if k not in conflicted}
    problems += _settings_conflicts(wants, conflicted)
    return tuple(w for _, (w, _) in sorted(wants.items(), key=lambda kv: kv[0])), tuple(problems)


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
                if w.plan is not first.plan and plan_settings(w.plan) != plan_settings(first.plan)
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
                f"move volumes of VM {ns}/{vm} but disagree on {field_list(PLAN_SETTINGS)} "
                f"[{catalog.CONFLICTING_PLAN_SETTINGS.id}]",
                hint="a VM moves once, under one plan's settings: make them agree, or select "
                "the VM in one plan only",
            )
        )
        for key in [k for k in wants if k[:2] == (ns, vm)]:
            del wants[key]
            conflicted.add(key)
    return problems


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
                f"not touch (allowed: {allowed}) [{catalog.NAMESPACE_NOT_ALLOWED.id}]",
                hint="add the namespace to the allow-list (and the reconciler's RBAC), or move "
                "the plan to a repository whose reconciler owns that namespace",
            )
        )
    return tuple(kept), tuple(problems)
