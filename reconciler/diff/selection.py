"""Plans that select nothing, and why. Pure.

A plan whose namespace is misspelled, whose selector matches no VM, or whose every match is
excluded would otherwise print ``Plan: 0 VM(s)`` and read as "in sync". ``empty_plans`` says,
per plan, that it selected nothing and the first reason that holds (``catalog.SELECTION_RULES``
in order): no such namespace (only when the caller knows the cluster's namespaces), no VM
there, none of the named VMs exists, no VM matched the selector, every match excluded by the
selector's NotIn/DoesNotExist, or no selected VM has a disk to move. Each message says what to
do, with a "did you mean" where a typo is likely.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence

from reconciler.diff import catalog
from reconciler.diff.desired import matches, selected_vms, wants_for_vm
from reconciler.diff.rule import RuleInfo
from reconciler.model.live import Snapshot, VMInfo
from reconciler.model.plan import LabelSelector, Plan
from reconciler.model.verdict import EmptyPlan, Finding

SHOWN = 5  # VMs named in one message, at most

# Requirements that pick VMs (a VM must meet them to be a match) and those that exclude some.
_EXCLUDING = frozenset({"NotIn", "DoesNotExist"})


def empty_plans(
    plans: Sequence[Plan], snapshot: Snapshot, namespaces: frozenset[str] | None = None
) -> tuple[EmptyPlan, ...]:
    """One ``EmptyPlan`` per plan that selects no VM with a disk to move, in plan order.

    ``namespaces``: the cluster's namespaces when the caller looked them up (None: unknown, so
    an empty namespace and a missing one cannot be told apart, and the message says both)."""
    found = []
    for plan in plans:
        finding = _why_empty(plan, snapshot, namespaces)
        if finding is not None:
            found.append(EmptyPlan(namespace=plan.namespace, plan=plan.name, finding=finding))
    return tuple(found)


def _finding(rule: RuleInfo, plan: Plan, why: str) -> Finding:
    return Finding(rule.id, rule.effect, None, f"plan {plan.name} selects no VM: {why}")


def _why_empty(plan: Plan, snapshot: Snapshot, namespaces: frozenset[str] | None) -> Finding | None:
    here = {name: vm for (ns, name), vm in snapshot.vms.items() if ns == plan.namespace}
    chosen = [(here[name], sel) for name, sel in selected_vms(plan, snapshot) if name in here]
    if any(wants_for_vm(plan, vm, sel, snapshot) for vm, sel in chosen):
        return None
    if namespaces is not None and plan.namespace not in namespaces:
        near = catalog.did_you_mean(catalog.closest(plan.namespace, namespaces))
        return _finding(
            catalog.NAMESPACE_NOT_FOUND,
            plan,
            f"namespace {plan.namespace} does not exist{near}; fix the plan's namespace",
        )
    if not here:
        maybe = " (or the namespace does not exist)" if namespaces is None else ""
        return _finding(
            catalog.NAMESPACE_EMPTY,
            plan,
            f"namespace {plan.namespace} has no VirtualMachine{maybe}; check the plan's "
            "namespace, or remove the plan if its VMs are gone",
        )
    if chosen:
        names = _listed(vm.name for vm, _ in chosen)
        return _finding(
            catalog.NO_DISK_TO_MOVE,
            plan,
            f"it matches {names}, but none has a PVC or DataVolume disk for it to move "
            "(only containerDisk, cloud-init and the like); select the VMs whose disks "
            "should move",
        )
    missing = _missing_names(plan, here)
    if plan.selector is None:
        return _finding(
            catalog.NAMED_VMS_NOT_FOUND,
            plan,
            f"{missing}; fix the names in virtualMachines",
        )
    excluded = _excluded(plan.selector, here.values())
    if excluded:
        return _finding(
            catalog.EVERY_MATCH_EXCLUDED,
            plan,
            f"{_listed(excluded)} match{'es' if len(excluded) == 1 else ''} its selector's "
            "labels, but its matchExpressions "
            f"exclude each ({_reasons(excluded)}){'; ' + missing if missing else ''}; relabel "
            "the VMs, or fix the NotIn/DoesNotExist expressions",
        )
    return _finding(
        catalog.SELECTOR_MATCHED_NONE,
        plan,
        f"no VM of the {len(here)} in namespace {plan.namespace} matches its selector"
        f"{_label_hint(plan.selector, here.values())}{'; ' + missing if missing else ''}; "
        "fix the selector, or label the VMs",
    )


def _listed(names: Iterable[str]) -> str:
    """``"VM a, b and 3 more"``."""
    shown = sorted(names)
    more = f" and {len(shown) - SHOWN} more" if len(shown) > SHOWN else ""
    noun = "VM" if len(shown) == 1 else "VMs"
    return f"{noun} {', '.join(shown[:SHOWN])}{more}"


def _missing_names(plan: Plan, here: Mapping[str, VMInfo]) -> str:
    """What the plan's named VMs that do not exist are (each with a "did you mean"), or ""."""
    missing = [s.name for s in plan.virtual_machines if s.name not in here]
    if not missing:
        return ""
    parts = [f"{n}{catalog.did_you_mean(catalog.closest(n, here))}" for n in missing[:SHOWN]]
    more = f" and {len(missing) - SHOWN} more" if len(missing) > SHOWN else ""
    verb = "does" if len(missing) == 1 else "do"
    return (
        f"the VM{'s' if len(missing) > 1 else ''} it names ({', '.join(parts)}{more}) {verb} not "
        f"exist in namespace {plan.namespace}"
    )


def _picking(selector: LabelSelector) -> LabelSelector:
    """The selector without its excluding expressions (NotIn, DoesNotExist)."""
    return LabelSelector(
        match_labels=selector.match_labels,
        match_expressions=tuple(e for e in selector.match_expressions if e[1] not in _EXCLUDING),
    )


def _excluded(selector: LabelSelector, vms: Iterable[VMInfo]) -> dict[str, str]:
    """VM name -> the first excluding expression that leaves it out, for every VM that meets
    the selector's picking requirements (then, for an empty plan, none meets the rest)."""
    picking = _picking(selector)
    excluded = {}
    for vm in vms:
        if not matches(picking, vm.labels):
            continue
        for key, operator, values in selector.match_expressions:
            one = LabelSelector(match_expressions=((key, operator, values),))
            if operator in _EXCLUDING and not matches(one, vm.labels):
                excluded[vm.name] = f"{key}={vm.labels[key]}"
                break
    return excluded


def _reasons(excluded: Mapping[str, str]) -> str:
    shown = sorted(excluded.items())[:SHOWN]
    return ", ".join(f"{name}: {label}" for name, label in shown)


def _label_hint(selector: LabelSelector, vms: Iterable[VMInfo]) -> str:
    """For each matchLabels pair no VM carries: the values VMs here do carry for that key
    (closest first), or the closest keys when no VM has the key at all."""
    vms = list(vms)
    hints = []
    for key, value in selector.match_labels:
        if any(vm.labels.get(key) == value for vm in vms):
            continue
        values = {vm.labels[key] for vm in vms if key in vm.labels}
        if values:
            near = catalog.closest(value, values) or sorted(values)[:SHOWN]
            shown = " or ".join(f"{key}={v}" for v in near)
            hints.append(f"none has {key}={value}; did you mean {shown}?")
            continue
        keys = catalog.closest(key, {k for vm in vms for k in vm.labels})
        guess = f"; did you mean {' or '.join(keys)}?" if keys else ""
        hints.append(f"no VM here has label {key}{guess}")
    return f" ({'; '.join(hints)})" if hints else ""
