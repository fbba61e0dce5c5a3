"""Checks across valid plans: what no single file can reveal. Pure.

Plan names are unique per namespace; plans that name the same VM must agree (each with the
first of them) on how it
moves (``model.plan.PLAN_SETTINGS``) and on the target of every volume both cover
(``model.plan.TARGET_FIELDS``); a ``targetName`` is used by one volume per namespace. VMs
picked by a selector can only be compared against the cluster, so overlaps through selectors
are the diff's job (``diff.desired``), which compares the same two field lists.
"""

from __future__ import annotations

import enum
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import timedelta

from reconciler.model.errors import Problem
from reconciler.model.plan import (
    PLAN_SETTINGS,
    TARGET_FIELDS,
    Plan,
    Source,
    VMSelection,
    VolumeMode,
    VolumeTarget,
    Window,
)
from reconciler.model.windows import format_duration, format_window


@dataclass(frozen=True)
class _Target:
    """What one plan wants for one volume: exactly ``TARGET_FIELDS`` (tests/unit/test_model.py)."""

    storage_class: str
    volume_mode: VolumeMode
    access_modes: tuple[str, ...] | None
    target_name: str | None


_OTHER_VOLUMES = "*"


def check_across(plans: Sequence[Plan]) -> list[Problem]:
    """Problems between valid plans (given in file order, so "first" is the earlier one)."""
    problems = _duplicate_plans(plans)
    by_vm: dict[tuple[str, str], list[tuple[Plan, VMSelection]]] = {}
    for plan in plans:
        for vm in plan.virtual_machines:
            by_vm.setdefault((plan.namespace, vm.name), []).append((plan, vm))
    for (namespace, vm_name), entries in by_vm.items():
        # Each later plan against the first only: agreeing is transitive, so this finds a
        # conflict whenever there is one, and 3,000 plans naming one VM give at most one
        # problem per later plan (not one per pair: 1 GB of output).
        first = entries[0]
        for later in entries[1:]:
            problems.extend(_vm_conflicts(namespace, vm_name, first, later))
    problems.extend(_target_name_collisions(plans))
    return problems


def _duplicate_plans(plans: Sequence[Plan]) -> list[Problem]:
    problems = []
    first: dict[tuple[str, str], Plan] = {}
    for plan in plans:
        key = (plan.namespace, plan.name)
        if key in first:
            problems.append(
                Problem(
                    plan.source,
                    f"plan '{plan.name}' for namespace '{plan.namespace}' is defined twice "
                    f"(first at {_at(first[key].source)})",
                    "plan names must be unique within a namespace: rename one",
                )
            )
        else:
            first[key] = plan
    return problems


def _vm_conflicts(
    namespace: str, vm: str, a: tuple[Plan, VMSelection], b: tuple[Plan, VMSelection]
) -> list[Problem]:
    (plan_a, sel_a), (plan_b, sel_b) = a, b
    problems = []
    settings = _differences(PLAN_SETTINGS, plan_a, plan_b)
    if settings:
        problems.append(
            Problem(
                sel_b.source,
                f"VM {namespace}/{vm} is in plan '{plan_a.name}' ({_at(sel_a.source)}) and plan "
                f"'{plan_b.name}' with different settings: {settings}",
                "a VM moves as a whole under one set of settings: make the plans agree, or "
                "keep the VM in one plan",
            )
        )
    volumes_a = {v.name: v for v in sel_a.volumes}
    volumes_b = {v.name: v for v in sel_b.volumes}
    for key in [*sorted(volumes_a.keys() | volumes_b.keys()), _OTHER_VOLUMES]:
        target_a = _target(plan_a, volumes_a.get(key))
        target_b = _target(plan_b, volumes_b.get(key))
        if target_a is None or target_b is None or target_a == target_b:
            continue
        what = f"volume '{key}' of VM" if key != _OTHER_VOLUMES else "the other volumes of VM"
        verb = "gets" if key != _OTHER_VOLUMES else "get"
        where_a = volumes_a[key].source if key in volumes_a else sel_a.source
        where_b = volumes_b[key].source if key in volumes_b else sel_b.source
        problems.append(
            Problem(
                where_b,
                f"{what} {namespace}/{vm} {verb} different targets from plan '{plan_a.name}' "
                f"({_at(where_a)}) and plan '{plan_b.name}': "
                f"{_differences(TARGET_FIELDS, target_a, target_b)}",
                "a volume can have only one target: remove the VM from one plan, or make the "
                "plans agree",
            )
        )
    return problems


def _target(plan: Plan, volume: VolumeTarget | None) -> _Target | None:
    """What ``plan`` wants for a volume of one of its VMs: the entry for it when the plan
    lists it (``volume``), else the plan's defaults. None when the plan does not move it."""
    if volume is None:
        if plan.storage_class is None:
            return None
        return _Target(plan.storage_class, plan.volume_mode, plan.access_modes, None)
    storage_class = volume.storage_class or plan.storage_class
    if storage_class is None:
        return None
    return _Target(
        storage_class,
        volume.volume_mode or plan.volume_mode,
        volume.access_modes if volume.access_modes is not None else plan.access_modes,
        volume.target_name,
    )


def _target_name_collisions(plans: Sequence[Plan]) -> list[Problem]:
    problems = []
    first: dict[tuple[str, str], tuple[str, str, Plan, Source]] = {}
    for plan in plans:
        for vm in plan.virtual_machines:
            for volume in vm.volumes:
                if volume.target_name is None:
                    continue
                key = (plan.namespace, volume.target_name)
                if key not in first:
                    first[key] = (vm.name, volume.name, plan, volume.source)
                    continue
                vm0, volume0, plan0, source0 = first[key]
                if (vm0, volume0) != (vm.name, volume.name):
                    problems.append(
                        Problem(
                            volume.source,
                            f"targetName '{volume.target_name}' is used for volume "
                            f"'{volume.name}' of VM '{vm.name}' and for volume '{volume0}' "
                            f"of VM '{vm0}' (plan '{plan0.name}', {_at(source0)})",
                            f"target claim names must be unique in namespace '{plan.namespace}'",
                        )
                    )
    return problems


def _differences(fields: Mapping[str, str], a: object, b: object) -> str:
    """``"storageClass 'x' vs 'y', mode 'Live' vs 'Offline'"`` for the fields that differ."""
    parts = []
    for attribute, label in fields.items():
        value_a, value_b = getattr(a, attribute), getattr(b, attribute)
        if value_a != value_b:
            parts.append(f"{label} {_show(value_a)} vs {_show(value_b)}")
    return ", ".join(parts)


def _show(value: object) -> str:
    if value is None:
        return "(unset)"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, enum.Enum):
        return f"'{value.value}'"
    if isinstance(value, Window):
        return f"'{format_window(value)}'"
    if isinstance(value, timedelta):
        return format_duration(value)
    if isinstance(value, tuple):
        return f"[{', '.join(value)}]"
    return f"'{value}'"


def _at(source: Source) -> str:
    return f"{source.file}:{source.line}"
