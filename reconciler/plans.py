"""Load and validate plan files into ``model.Plan`` values.

Pure except for reading files. ``load_plans`` expands files and directories, reads every YAML
document, validates it, checks the plans against each other, and either returns all plans
sorted by (namespace, name) or raises ``PlanError`` listing *every* problem found, each with
``file:line``, the field path, what is wrong and how to fix it. Nothing here raises anything
else for bad input: an unreadable file, a binary file or broken YAML is a ``Problem`` too.

Accepted documents (any number per file, separated by ``---``; empty documents are skipped):

- ``vmstorage.dev/v1alpha1`` ``StoragePlan``: the native format (docs/plans.md).
- ``migrations.kubevirt.io/v1alpha1`` ``VirtualMachineStorageMigrationPlan`` and
  ``MultiNamespaceVirtualMachineStorageMigrationPlan``: kubevirt-migration-controller (KMC)
  plans, mapped onto the same model (mode Auto, allowStop false, no window, timeout 2h,
  ``origin_kind`` = the KMC kind). Only the listed volumes move (``Plan.storage_class`` is
  None); a ``destinationPVC`` without ``storageClassName`` targets ``DEFAULT_CLASS``. A
  multi-namespace plan becomes one ``Plan`` per ``spec.namespaces[]`` entry, named
  ``<plan>-<namespace>`` (the name KMC gives the per-namespace plans it creates).
- ``v1`` ``List`` whose ``items`` are any of the above (what ``kubectl get -o yaml`` prints).

Checks across plans: plan names are unique per namespace; two plans that name the same VM must
agree on how it moves (mode, allowStop, retention, window, timeout, allowGitOpsManaged) and on
the target of every volume both cover (storageClass, volumeMode, accessModes, targetName); a
``targetName`` is used by one volume per namespace. VMs picked by a selector can only be
compared against the cluster, so overlaps through selectors are the diff's job.
"""

from __future__ import annotations

import enum
import os
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path

from reconciler import plan_kmc, plan_native
from reconciler.errors import PlanError, Problem
from reconciler.located_yaml import (
    Field,
    MappingNode,
    Node,
    Reader,
    ScalarNode,
    describe,
    documents,
    join,
)
from reconciler.model import Plan, Source, VMSelection, VolumeMode, VolumeTarget, Window
from reconciler.plan_fields import close_match
from reconciler.plan_kmc import DEFAULT_CLASS
from reconciler.windows import (
    SpecError,
    format_duration,
    format_window,
    next_window_start,
    parse_duration,
    parse_window,
    window_closes_at,
    window_open,
)

__all__ = [
    "ACCEPTED_KINDS",
    "DEFAULT_CLASS",
    "PLAN_SUFFIXES",
    "SpecError",
    "check_across",
    "format_duration",
    "format_window",
    "load_plans",
    "next_window_start",
    "parse_duration",
    "parse_plans",
    "parse_window",
    "plan_files",
    "window_closes_at",
    "window_open",
]

PLAN_SUFFIXES = (".yaml", ".yml")

_Read = Callable[[Reader, MappingNode, str, frozenset[str] | None], list[Plan]]
_READERS: dict[tuple[str, str], _Read] = {
    (plan_native.API_VERSION, plan_native.KIND): plan_native.read_storage_plan,
    (plan_kmc.API_VERSION, plan_kmc.KIND): plan_kmc.read_kmc_plan,
    (plan_kmc.API_VERSION, plan_kmc.MULTI_KIND): plan_kmc.read_kmc_multi_plan,
}
ACCEPTED_KINDS: tuple[tuple[str, str], ...] = tuple(_READERS)
"""(apiVersion, kind) of every plan document accepted (``v1 List`` of them is also read)."""

_ACCEPTED_HINT = (
    "plan documents are: apiVersion vmstorage.dev/v1alpha1 kind StoragePlan; apiVersion "
    "migrations.kubevirt.io/v1alpha1 kind VirtualMachineStorageMigrationPlan or "
    "MultiNamespaceVirtualMachineStorageMigrationPlan"
)
_STARTS_A_PLAN = (
    "this starts a kubevirt-migration-controller plan; here every plan in the repository is "
    "applied by `apply`: delete this document"
)
_NOT_PLAN_HINTS = {
    "VirtualMachineStorageMigration": _STARTS_A_PLAN,
    "MultiNamespaceVirtualMachineStorageMigration": _STARTS_A_PLAN,
}


# --------------------------------------------------------------------------------------------
# Public API
# --------------------------------------------------------------------------------------------


def plan_files(paths: Iterable[str | Path]) -> list[Path]:
    """Expand ``paths`` into the plan files ``load_plans`` reads, sorted and de-duplicated.

    A file is taken as it is (any extension). A directory is searched recursively for
    ``*.yaml`` / ``*.yml`` files; hidden files and directories (``.git``) are skipped and
    symlinked directories are not followed (loops), though the directory given may itself be
    a symlink (git-sync's checkout link). Raises ``PlanError`` for a path that does not
    exist, is not a file or directory, or is a directory without plan files.
    """
    files, problems = _expand(paths)
    if problems:
        raise PlanError(problems)
    return files


def load_plans(
    paths: Sequence[str | Path], *, allowed_namespaces: frozenset[str] | None = None
) -> tuple[Plan, ...]:
    """Read, validate and cross-check every plan under ``paths``.

    ``allowed_namespaces``: when set, a plan acting in any other namespace is a problem.
    Returns the plans sorted by (namespace, name). Raises ``PlanError`` with every problem
    found (sorted by file and line) if there is any; then no plan is returned at all.
    """
    files, problems = _expand(paths)
    plans: list[Plan] = []
    for path in files:
        found, file_problems = _load_file(path, allowed_namespaces)
        plans.extend(found)
        problems.extend(file_problems)
    problems.extend(check_across(plans))
    if problems:
        raise PlanError(sorted(problems, key=_problem_order))
    return tuple(sorted(plans, key=lambda plan: (plan.namespace, plan.name)))


def parse_plans(
    text: str, file: str = "<string>", *, allowed_namespaces: frozenset[str] | None = None
) -> tuple[Plan, ...]:
    """``load_plans`` for one YAML text (e.g. stdin); ``file`` names it in problems."""
    plans, problems = _parse_text(text, file, allowed_namespaces)
    problems.extend(check_across(plans))
    if problems:
        raise PlanError(sorted(problems, key=_problem_order))
    return tuple(sorted(plans, key=lambda plan: (plan.namespace, plan.name)))


# --------------------------------------------------------------------------------------------
# Files
# --------------------------------------------------------------------------------------------


def _expand(paths: Iterable[str | Path]) -> tuple[list[Path], list[Problem]]:
    found: dict[str, Path] = {}
    problems: list[Problem] = []
    for raw in paths:
        path = Path(raw)
        try:
            if path.is_dir():
                files = _walk(path, problems)
                if not files:
                    problems.append(
                        Problem(
                            None,
                            f"{path}: no *.yaml or *.yml files in this directory",
                            "point at the directory that holds the plan files (hidden "
                            "directories such as .git are skipped)",
                        )
                    )
            elif path.is_file():
                files = [path]
            elif path.exists():
                problems.append(Problem(None, f"{path}: not a regular file or directory"))
                continue
            else:
                problems.append(
                    Problem(None, f"{path}: no such file or directory", "check the path")
                )
                continue
        except OSError as exc:
            problems.append(Problem(None, f"{path}: cannot read: {exc.strerror or exc}"))
            continue
        for file in files:
            found.setdefault(os.path.realpath(file), file)
    return sorted(found.values(), key=str), problems


def _walk(root: Path, problems: list[Problem]) -> list[Path]:
    def unreadable(exc: OSError) -> None:
        problems.append(Problem(None, f"{exc.filename}: cannot read: {exc.strerror or exc}"))

    files: list[Path] = []
    for directory, subdirs, names in os.walk(root, onerror=unreadable, followlinks=False):
        subdirs[:] = sorted(d for d in subdirs if not d.startswith("."))
        files.extend(
            Path(directory, name)
            for name in names
            if not name.startswith(".") and name.lower().endswith(PLAN_SUFFIXES)
        )
    return files


def _load_file(path: Path, allowed: frozenset[str] | None) -> tuple[list[Plan], list[Problem]]:
    name = str(path)
    try:
        data = path.read_bytes()
    except OSError as exc:
        return [], [Problem(None, f"{name}: cannot read: {exc.strerror or exc}")]
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        line = data.count(b"\n", 0, exc.start) + 1
        return [], [
            Problem(
                Source(name, line),
                f"not UTF-8 text (byte 0x{data[exc.start]:02x} at offset {exc.start})",
                "plan files are UTF-8 YAML; is a binary file in the plans directory?",
            )
        ]
    try:
        return _parse_text(text, name, allowed)
    except Exception as exc:  # a bug must still not turn bad input into a traceback
        return [], [
            Problem(
                Source(name, 1),
                f"could not validate this file: internal error {type(exc).__name__}: {exc}",
                "this is a bug in vm-storage-reconciler; please report it with this file",
            )
        ]


def _parse_text(
    text: str, file: str, allowed: frozenset[str] | None
) -> tuple[list[Plan], list[Problem]]:
    nodes, problems = documents(text, file)
    reader = Reader(file)
    plans: list[Plan] = []
    for node in nodes:
        plans.extend(_document(reader, node, "", allowed))
    return plans, problems + reader.problems


def _problem_order(problem: Problem) -> tuple[str, int, str, str]:
    if problem.source is None:
        return ("", 0, "", problem.message)
    return (problem.source.file, problem.source.line, problem.source.path, problem.message)


# --------------------------------------------------------------------------------------------
# Documents
# --------------------------------------------------------------------------------------------


def _document(r: Reader, node: Node, path: str, allowed: frozenset[str] | None) -> list[Plan]:
    """Route one document by apiVersion/kind; returns its plans, or none if it has problems."""
    if not isinstance(node, MappingNode):
        r.report(
            node,
            path,
            f"a plan document must be a mapping (apiVersion, kind, metadata, spec), "
            f"got {describe(node)}",
            "start each document with 'apiVersion:' and separate documents with '---'",
        )
        return []
    api_node, kind_node = _raw_field(node, "apiVersion"), _raw_field(node, "kind")
    if api_node is None or kind_node is None:
        missing = "apiVersion" if api_node is None else "kind"
        r.report(node, join(path, missing), f"missing required field '{missing}'", _ACCEPTED_HINT)
        return []
    api = r.string(api_node, join(path, "apiVersion"))
    kind = r.string(kind_node, join(path, "kind"))
    if api is None or kind is None:
        return []
    before = len(r.problems)
    if (api, kind) in _READERS:
        plans = _READERS[api, kind](r, node, path, allowed)
    elif (api, kind) == ("v1", "List"):
        plans = _list(r, node, path, allowed)
    else:
        _unknown_kind(r, path, api_node=api_node, kind_node=kind_node, api=api, kind=kind)
        return []
    return plans if len(r.problems) == before else []


def _unknown_kind(
    r: Reader, path: str, *, api_node: Node, kind_node: Node, api: str, kind: str
) -> None:
    expected = {k: a for a, k in ACCEPTED_KINDS}
    if kind in expected:
        r.report(
            api_node,
            join(path, "apiVersion"),
            f"kind {kind} needs apiVersion {expected[kind]}, got '{api}'",
            f"write: apiVersion: {expected[kind]}",
        )
        return
    hint = _NOT_PLAN_HINTS.get(kind, "")
    if not hint:
        close = close_match(kind, list(expected))
        hint = (f"did you mean '{close}'? " if close else "") + _ACCEPTED_HINT
    r.report(kind_node, join(path, "kind"), f"unknown kind '{kind}' (apiVersion '{api}')", hint)


_LIST = {"apiVersion": Field(True), "kind": Field(True), "items": Field(True)}


def _list(r: Reader, node: MappingNode, path: str, allowed: frozenset[str] | None) -> list[Plan]:
    top = r.mapping(node, path, _LIST, ignored=("metadata",))
    if top is None or "items" not in top:
        return []
    items = r.sequence(top["items"], join(path, "items"))
    plans: list[Plan] = []
    for index, item in enumerate(items or []):
        plans.extend(_document(r, item, f"{join(path, 'items')}[{index}]", allowed))
    return plans


def _raw_field(node: MappingNode, name: str) -> Node | None:
    """The value of ``name`` in ``node`` without validating anything else (for routing)."""
    for key, value in node.value:
        if isinstance(key, ScalarNode) and key.value == name and key.tag.endswith(":str"):
            return None if value.tag.endswith(":null") else value
    return None


# --------------------------------------------------------------------------------------------
# Across plans
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class _Target:
    """What one plan wants for one volume (the fields two plans must agree on)."""

    storage_class: str
    volume_mode: VolumeMode
    access_modes: tuple[str, ...] | None
    target_name: str | None


_TARGET_FIELDS = {
    "storage_class": "storageClass",
    "volume_mode": "volumeMode",
    "access_modes": "accessModes",
    "target_name": "targetName",
}
_BEHAVIOUR_FIELDS = {
    "mode": "mode",
    "allow_stop": "allowStop",
    "retention": "retention",
    "window": "window",
    "timeout": "timeout",
    "allow_gitops_managed": "allowGitOpsManaged",
}
_OTHER_VOLUMES = "*"


def check_across(plans: Sequence[Plan]) -> list[Problem]:
    """Problems between valid plans (given in file order, so "first" is the earlier one)."""
    problems = _duplicate_plans(plans)
    by_vm: dict[tuple[str, str], list[tuple[Plan, VMSelection]]] = {}
    for plan in plans:
        for vm in plan.virtual_machines:
            by_vm.setdefault((plan.namespace, vm.name), []).append((plan, vm))
    for (namespace, vm_name), entries in by_vm.items():
        for later in range(1, len(entries)):
            for earlier in range(later):
                problems.extend(_vm_conflicts(namespace, vm_name, entries[earlier], entries[later]))
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
    settings = _differences(_BEHAVIOUR_FIELDS, plan_a, plan_b)
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
                f"{_differences(_TARGET_FIELDS, target_a, target_b)}",
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
