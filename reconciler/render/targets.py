"""Destination names: rendered from ``target-name.j2`` (or the plan's ``targetName``) and
checked against the cluster and each other. Pure."""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Protocol

from reconciler.model.errors import Problem, TemplateError
from reconciler.model.live import Snapshot, VMInfo
from reconciler.model.names import SOURCE_CLAIM_ANNOTATION
from reconciler.model.verdict import Action, VMVerdict, VolumeVerdict
from reconciler.render.bounds import MAX_NAME
from reconciler.render.sandbox import TARGET_NAME, Rendered, TemplateSet, render_text

_DNS1123 = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$")


def valid_name(name: object) -> bool:
    """A DNS-1123 name of at most 63 characters (what CDI accepts for a DataVolume)."""
    return isinstance(name, str) and len(name) <= MAX_NAME and bool(_DNS1123.match(name))


def target_name(
    templates: TemplateSet,
    *,
    namespace: str,
    vm: str,
    volume: str,
    claim: str,
    storage_class: str,
) -> str:
    """The destination claim name for moving ``claim`` to ``storage_class``, rendered from
    ``target-name.j2``: deterministic, DNS-1123, at most 63 characters."""
    context = {
        "namespace": namespace,
        "vm": vm,
        "volume": volume,
        "claim": claim,
        "storage_class": storage_class,
    }
    # The output is the bare name (no YAML to parse: this runs once per moved volume, and
    # thousands of YAML parses were the bulk of a large `plan`).
    template, _, text = render_text(templates, TARGET_NAME, context)
    name = text.strip()
    if not valid_name(name):
        out = Rendered(TARGET_NAME, template, name)
        raise out.error(
            f"{name!r} (for volume {volume} of VM {namespace}/{vm}) is not a "
            "DNS-1123 name of at most 63 characters",
            near="dns_label",
            hint="render only the name: lowercase letters, digits, '-' and '.', "
            "starting and ending alphanumeric; cut the base with the dns_label "
            "filter",
        )
    return name


@dataclass(frozen=True)
class Targets:
    """The destinations of one VM's moves, decided and checked, without the manifests."""

    target_names: Mapping[str, str]  # volume -> destination claim name (as in RenderedVM)
    reused_targets: frozenset[str] = frozenset()  # destinations that exist and are ours


def plan_targets(
    verdict: VMVerdict, vm: VMInfo, snapshot: Snapshot, templates: TemplateSet
) -> Targets:
    """Name and collision-check the destinations of ``verdict``'s moves (target-name.j2 only).

    What a preview needs, at a fraction of ``render_vm``'s cost; ``render_vm`` decides the same
    names with the same checks. Raises TemplateError like ``render_vm``.
    """
    moves = [v for v in verdict.volumes if v.action in (Action.MOVE_LIVE, Action.MOVE_OFFLINE)]
    names = target_names(moves, vm, templates)
    reused = check_targets(moves, names, vm, snapshot)
    return Targets({m.volume: names[m.volume] for m in moves}, frozenset(reused))


class HasTargets(Protocol):
    """A VM's rendering: ``Targets`` or a full ``move.RenderedVM``."""

    @property
    def target_names(self) -> Mapping[str, str]: ...


def check_distinct_targets(
    rendered: Mapping[tuple[str, str], HasTargets],
) -> None:
    """Raise TemplateError when two VMs of one run would create the same destination.

    ``render_vm`` checks one VM against the cluster; this checks VMs against each other.
    """
    seen: dict[tuple[str, str], str] = {}
    problems = []
    for (namespace, vm_name), rendered_vm in sorted(rendered.items()):
        for volume, name in sorted(rendered_vm.target_names.items()):
            owner = seen.setdefault((namespace, name), f"{vm_name}/{volume}")
            if owner != f"{vm_name}/{volume}":
                problems.append(
                    Problem(
                        None,
                        f"destination {namespace}/{name} is wanted by both {owner} and "
                        f"{vm_name}/{volume}",
                        hint="set volumes[].targetName in the plan for one "
                        "of them, or change target-name.j2 so names differ",
                    )
                )
    if problems:
        raise TemplateError(problems)


# -- names ------------------------------------------------------------------------------------


def target_names(
    moves: Sequence[VolumeVerdict], vm: VMInfo, templates: TemplateSet
) -> dict[str, str]:
    """volume -> destination: the plan's explicit name, else target-name.j2's."""
    names = {}
    for move in moves:
        if move.target_name:
            if not valid_name(move.target_name):
                raise TemplateError(
                    [
                        Problem(
                            None,
                            f"VM {vm.namespace}/{vm.name} volume {move.volume}: targetName "
                            f"{move.target_name!r} is not a DNS-1123 name of at most 63 characters",
                            hint="fix volumes[].targetName in the plan",
                        )
                    ]
                )
            names[move.volume] = move.target_name
        else:
            names[move.volume] = target_name(
                templates,
                namespace=vm.namespace,
                vm=vm.name,
                volume=move.volume,
                claim=move.claim,
                storage_class=move.to_class,
            )
    return names


def check_targets(
    moves: Sequence[VolumeVerdict], names: Mapping[str, str], vm: VMInfo, snapshot: Snapshot
) -> set[str]:
    """Raise TemplateError for destinations that collide; return those that are our leftovers.

    A destination collides with: another destination of this VM; a claim or dataVolumeTemplate
    any VM of the namespace refers to; a DataVolume or PVC that is not ours for this source
    (ours = annotated ``vmstorage.dev/source-claim: <this claim>``; a PVC also counts as ours
    when the same-name DataVolume is, since CDI made it).
    """
    problems: list[Problem] = []
    reused: set[str] = set()
    referenced = snapshot.claim_references
    seen: dict[str, str] = {}
    for move in moves:
        name = names[move.volume]
        where = f"VM {vm.namespace}/{vm.name} volume {move.volume}: destination {name!r}"
        hint = (
            "delete or rename that object, or set volumes[].targetName in the plan "
            "(or override target-name.j2) to choose another name"
        )
        if seen.setdefault(name, move.volume) != move.volume:
            problems.append(
                Problem(None, f"{where} is also the destination of volume {seen[name]}", hint=hint)
            )
            continue
        if (vm.namespace, name) in referenced:
            problems.append(
                Problem(
                    None,
                    f"{where} is already used by {referenced[(vm.namespace, name)]}",
                    hint=hint,
                )
            )
            continue
        holder = _foreign_holder(snapshot, vm.namespace, name, move.claim)
        if holder:
            problems.append(
                Problem(
                    None,
                    f"{where} collides with the existing {holder}, which "
                    "this tool did not create for this disk",
                    hint=hint,
                )
            )
        elif (vm.namespace, name) in snapshot.pvcs or (vm.namespace, name) in snapshot.data_volumes:
            reused.add(name)
    if problems:
        raise TemplateError(problems)
    return reused


def _foreign_holder(snapshot: Snapshot, namespace: str, name: str, claim: str) -> str:
    """'' when ``name`` is free or holds our leftover for ``claim``; else what holds it."""
    dv = snapshot.data_volumes.get((namespace, name))
    pvc = snapshot.pvcs.get((namespace, name))
    dv_ours = dv is not None and dv.annotations.get(SOURCE_CLAIM_ANNOTATION) == claim
    if dv is not None and not dv_ours:
        return f"DataVolume {namespace}/{name}"
    if pvc is not None and not dv_ours and pvc.annotations.get(SOURCE_CLAIM_ANNOTATION) != claim:
        return f"PersistentVolumeClaim {namespace}/{name}"
    return ""
