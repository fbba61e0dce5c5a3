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

import difflib
import enum
import os
import re
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import TypeVar

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
from reconciler.model import (
    LabelSelector,
    Mode,
    Plan,
    Retention,
    Source,
    VMSelection,
    VolumeMode,
    VolumeTarget,
    Window,
)
from reconciler.windows import (
    MAX_WINDOW,
    SpecError,
    format_duration,
    format_window,
    next_window_start,
    parse_duration,
    parse_time_zone,
    parse_window,
    parse_window_start,
    window_closes_at,
    window_open,
)

__all__ = [
    "ACCEPTED_KINDS",
    "DEFAULT_CLASS",
    "SpecError",
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

E = TypeVar("E", bound=enum.Enum)
T = TypeVar("T")

DEFAULT_CLASS = "<default>"
"""Target class meaning "the cluster's default StorageClass", resolved by the diff.

Only KMC plans produce it (a ``destinationPVC`` without ``storageClassName``). It is not a
valid StorageClass name, so it can never collide with a real class. KMC creates the target
DataVolume without a class, so CDI picks the class: the virt default
(``storageclass.kubevirt.io/is-default-virt-class``) if one exists, else the Kubernetes
default. The diff should resolve it the same way, and block the volume when there is none.
"""

STORAGE_PLAN_API = "vmstorage.dev/v1alpha1"
KMC_API = "migrations.kubevirt.io/v1alpha1"
STORAGE_PLAN = "StoragePlan"
KMC_PLAN = "VirtualMachineStorageMigrationPlan"
KMC_MULTI_PLAN = "MultiNamespaceVirtualMachineStorageMigrationPlan"
ACCEPTED_KINDS: tuple[tuple[str, str], ...] = (
    (STORAGE_PLAN_API, STORAGE_PLAN),
    (KMC_API, KMC_PLAN),
    (KMC_API, KMC_MULTI_PLAN),
)
PLAN_SUFFIXES = (".yaml", ".yml")
DEFAULT_TIMEOUT = timedelta(hours=2)

_ACCEPTED_HINT = (
    "plan documents are: apiVersion vmstorage.dev/v1alpha1 kind StoragePlan; apiVersion "
    "migrations.kubevirt.io/v1alpha1 kind VirtualMachineStorageMigrationPlan or "
    "MultiNamespaceVirtualMachineStorageMigrationPlan"
)
_NOT_PLAN_HINTS = {
    "VirtualMachineStorageMigration": "this starts a kubevirt-migration-controller plan; "
    "here every plan in the repository is applied by `apply`: delete this document",
    "MultiNamespaceVirtualMachineStorageMigration": "this starts a kubevirt-migration-"
    "controller plan; here every plan in the repository is applied by `apply`: delete "
    "this document",
}
ACCESS_MODES = ("ReadWriteOnce", "ReadWriteMany", "ReadOnlyMany", "ReadWriteOncePod")
_KMC_ACCESS_MODES = ("ReadWriteOnce", "ReadOnlyMany", "ReadWriteMany", "Auto")
_KMC_VOLUME_MODES = {
    "Filesystem": VolumeMode.FILESYSTEM,
    "Block": VolumeMode.BLOCK,
    "Auto": VolumeMode.AUTO,
}
_KMC_RETENTION = {"keepSource": Retention.KEEP, "deleteSource": Retention.DELETE}
# Fields the API server sets on a KMC object; accepted (and ignored) so that a plan exported
# with `kubectl get -o yaml` loads as it is.
_SERVER_METADATA = (
    "uid",
    "resourceVersion",
    "generation",
    "creationTimestamp",
    "deletionTimestamp",
    "deletionGracePeriodSeconds",
    "managedFields",
    "finalizers",
    "ownerReferences",
    "selfLink",
    "generateName",
)

# ---- names ---------------------------------------------------------------------------------

_LABEL = re.compile(r"[a-z0-9]([-a-z0-9]*[a-z0-9])?")
_SUBDOMAIN = re.compile(r"[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*")
_LABEL_NAME = re.compile(r"[A-Za-z0-9]([-A-Za-z0-9_.]*[A-Za-z0-9])?")


class NameRule(enum.Enum):
    """The Kubernetes name grammars plans use: (pattern, max length, rule for the hint)."""

    LABEL = "DNS-1123 label"
    SUBDOMAIN = "DNS-1123 subdomain"

    @property
    def max_length(self) -> int:
        return 63 if self is NameRule.LABEL else 253

    @property
    def rule(self) -> str:
        chars = "lowercase letters, digits and '-'"
        if self is NameRule.SUBDOMAIN:
            chars = "lowercase letters, digits, '-' and '.'"
        return f"use at most {self.max_length} {chars}, starting and ending with a letter or digit"

    def matches(self, value: str) -> bool:
        pattern = _LABEL if self is NameRule.LABEL else _SUBDOMAIN
        return len(value) <= self.max_length and pattern.fullmatch(value) is not None


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
    if (api, kind) == (STORAGE_PLAN_API, STORAGE_PLAN):
        plans = _storage_plan(r, node, path, allowed)
    elif (api, kind) == (KMC_API, KMC_PLAN):
        plans = _kmc_plan(r, node, path, allowed)
    elif (api, kind) == (KMC_API, KMC_MULTI_PLAN):
        plans = _kmc_multi_plan(r, node, path, allowed)
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
        close = _close(kind, list(expected))
        hint = (f"did you mean '{close}'? " if close else "") + _ACCEPTED_HINT
    r.report(kind_node, join(path, "kind"), f"unknown kind '{kind}' (apiVersion '{api}')", hint)


def _list(r: Reader, node: MappingNode, path: str, allowed: frozenset[str] | None) -> list[Plan]:
    fields = {"apiVersion": Field(True), "kind": Field(True), "items": Field(True)}
    top = r.mapping(node, path, fields, ignored=("metadata",))
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
# StoragePlan
# --------------------------------------------------------------------------------------------

_SP_TOP = {
    "apiVersion": Field(True),
    "kind": Field(True),
    "metadata": Field(True, "add metadata: {name: <plan name>}"),
    "spec": Field(True, "add spec: {namespace: ..., storageClass: ..., virtualMachines: ...}"),
}
_SP_META = {
    "name": Field(True, "name the plan: metadata.name, a DNS-1123 subdomain"),
    "labels": Field(),
    "annotations": Field(),
}
_SP_SPEC = {
    "namespace": Field(True, "the namespace whose VMs this plan moves; a plan acts in one"),
    "storageClass": Field(),
    "virtualMachines": Field(),
    "selector": Field(),
    "volumeMode": Field(),
    "accessModes": Field(),
    "mode": Field(),
    "allowStop": Field(),
    "retention": Field(),
    "window": Field(),
    "timeout": Field(),
    "allowGitOpsManaged": Field(),
}
_SP_SPEC_MISPLACED = {
    "name": "the plan's name goes in metadata.name",
    "retentionPolicy": "a StoragePlan says retention: Keep or Delete",
}
_SP_VM = {"name": Field(True, "the VirtualMachine's metadata.name"), "volumes": Field()}
_SP_VM_MISPLACED = {
    "targetMigrationPVCs": "that is the kubevirt-migration-controller format; a StoragePlan "
    "lists volumes: [{name: <volume>, storageClass: <class>}]",
}
_SP_VOLUME = {
    "name": Field(True, "the VM's volume name (spec.template.spec.volumes[].name)"),
    "storageClass": Field(),
    "volumeMode": Field(),
    "accessModes": Field(),
    "targetName": Field(),
}
_WINDOW = {
    "start": Field(True, "when the window opens, e.g. start: 'Sat 01:00'"),
    "duration": Field(True, "how long the window stays open, e.g. duration: 4h"),
    "timeZone": Field(),
}
_SELECTOR = {"matchLabels": Field(), "matchExpressions": Field()}
_EXPRESSION = {
    "key": Field(True, "the label key to test"),
    "operator": Field(True, "one of In, NotIn, Exists, DoesNotExist"),
    "values": Field(),
}
_OPERATORS = ("In", "NotIn", "Exists", "DoesNotExist")


def _storage_plan(
    r: Reader, node: MappingNode, path: str, allowed: frozenset[str] | None
) -> list[Plan]:
    top = r.mapping(node, path, _SP_TOP)
    if top is None:
        return []
    meta_path, spec_path = join(path, "metadata"), join(path, "spec")
    meta = (
        r.mapping(
            top["metadata"],
            meta_path,
            _SP_META,
            misplaced={
                "namespace": "a StoragePlan names the namespace it acts in with spec.namespace"
            },
        )
        if "metadata" in top
        else None
    )
    name, name_source = _plan_name(r, meta, top.get("metadata"), meta_path)
    _metadata_maps(r, meta or {}, meta_path)
    spec_node = top.get("spec")
    if spec_node is None:
        return []
    spec = r.mapping(spec_node, spec_path, _SP_SPEC, misplaced=_SP_SPEC_MISPLACED)
    if spec is None:
        return []

    def opt(key: str, read: Callable[[Node, str], T | None]) -> T | None:
        return read(spec[key], join(spec_path, key)) if key in spec else None

    namespace = opt("namespace", lambda n, p: _namespace(r, n, p, allowed))
    storage_class = opt("storageClass", lambda n, p: _name(r, n, p, "StorageClass name"))
    vms = opt("virtualMachines", lambda n, p: _sp_vms(r, n, p))
    selector = opt("selector", lambda n, p: _selector(r, n, p))
    plan = Plan(
        name=name or "",
        namespace=namespace or "",
        source=name_source,
        storage_class=storage_class,
        volume_mode=opt("volumeMode", lambda n, p: _enum(r, n, p, VolumeMode, "volumeMode"))
        or VolumeMode.AUTO,
        access_modes=opt("accessModes", lambda n, p: _access_modes(r, n, p, ACCESS_MODES)),
        virtual_machines=tuple(vms or ()),
        selector=selector,
        mode=opt("mode", lambda n, p: _enum(r, n, p, Mode, "mode")) or Mode.AUTO,
        allow_stop=bool(opt("allowStop", r.boolean)),
        retention=opt("retention", lambda n, p: _enum(r, n, p, Retention, "retention"))
        or Retention.KEEP,
        window=opt("window", lambda n, p: _window(r, n, p)),
        timeout=opt("timeout", lambda n, p: _duration(r, n, p, "timeout")) or DEFAULT_TIMEOUT,
        allow_gitops_managed=bool(opt("allowGitOpsManaged", r.boolean)),
        origin_kind=STORAGE_PLAN,
    )
    # A list or selector that failed to read has its own problem; do not pile on.
    if not ("virtualMachines" in spec and vms is None) and not (
        "selector" in spec and selector is None
    ):
        _check_selection(r, spec_node, spec, spec_path, plan)
    return [plan]


def _plan_name(
    r: Reader, meta: Mapping[str, Node] | None, meta_node: Node | None, meta_path: str
) -> tuple[str | None, Source]:
    """metadata.name and the Source plans point at (the name, or metadata when missing)."""
    name_path = join(meta_path, "name")
    if meta is None or "name" not in meta:
        anchor = meta_node
        return None, r.source(anchor, name_path) if anchor is not None else Source(r.file, 1)
    node = meta["name"]
    return _name(r, node, name_path, "plan name"), r.source(node, name_path)


def _metadata_maps(r: Reader, meta: Mapping[str, Node], meta_path: str) -> None:
    """labels and annotations: string maps (not used, but a typo should not pass)."""
    for key in ("labels", "annotations"):
        if key in meta:
            r.string_map(meta[key], join(meta_path, key))


def _sp_vms(r: Reader, node: Node, path: str) -> list[VMSelection] | None:
    read = r.each(node, path, lambda n, p: _sp_vm(r, n, p))
    if read is None:
        return None
    _no_duplicates(r, read[0], "VM", "in this plan", "merge the two entries into one")
    return read[0] if read[1] else None


def _sp_vm(r: Reader, node: Node, path: str) -> VMSelection | None:
    fields = r.mapping(node, path, _SP_VM, misplaced=_SP_VM_MISPLACED)
    if fields is None:
        return None
    name = _name(r, fields["name"], join(path, "name"), "VM name") if "name" in fields else None
    volumes: list[VolumeTarget] | None = []
    if "volumes" in fields:
        read = r.each(fields["volumes"], join(path, "volumes"), lambda n, p: _sp_volume(r, n, p))
        if read is not None:
            _no_duplicates(r, read[0], "volume", f"in VM '{name}'", "merge the two entries")
        volumes = read[0] if read is not None and read[1] else None
    if name is None or volumes is None:
        return None
    return VMSelection(name=name, source=r.source(node, path), volumes=tuple(volumes))


def _sp_volume(r: Reader, node: Node, path: str) -> VolumeTarget | None:
    fields = r.mapping(node, path, _SP_VOLUME)
    if fields is None:
        return None
    before = len(r.problems)

    def opt(key: str, read: Callable[[Node, str], T | None]) -> T | None:
        return read(fields[key], join(path, key)) if key in fields else None

    volume = VolumeTarget(
        name=opt("name", lambda n, p: _name(r, n, p, "volume name", NameRule.LABEL)) or "",
        source=r.source(node, path),
        storage_class=opt("storageClass", lambda n, p: _name(r, n, p, "StorageClass name")),
        volume_mode=opt("volumeMode", lambda n, p: _enum(r, n, p, VolumeMode, "volumeMode")),
        access_modes=opt("accessModes", lambda n, p: _access_modes(r, n, p, ACCESS_MODES)),
        target_name=opt("targetName", lambda n, p: _name(r, n, p, "targetName", NameRule.LABEL)),
    )
    return volume if len(r.problems) == before else None


def _check_selection(
    r: Reader, spec_node: Node, spec: Mapping[str, Node], spec_path: str, plan: Plan
) -> None:
    """The plan must select VMs, and every selected disk must have a target class."""
    if not plan.virtual_machines and plan.selector is None:
        r.report(
            spec.get("virtualMachines", spec_node),
            join(spec_path, "virtualMachines") if "virtualMachines" in spec else spec_path,
            "the plan selects no VMs",
            "list VMs by name in spec.virtualMachines and/or by label in spec.selector",
        )
        return
    if plan.storage_class is not None:
        return
    no_class = "set spec.storageClass (the target for every disk of the selected VMs)"
    if plan.selector is not None:
        r.report(
            spec["selector"],
            join(spec_path, "selector"),
            "the VMs matched by spec.selector have no target StorageClass",
            no_class,
        )
    for vm in plan.virtual_machines:
        if not vm.volumes:
            r.problems.append(
                Problem(
                    vm.source,
                    f"VM '{vm.name}' has no target StorageClass",
                    "set spec.storageClass, or list the VM's volumes with a storageClass each",
                )
            )
        for volume in vm.volumes:
            if volume.storage_class is None:
                r.problems.append(
                    Problem(
                        volume.source,
                        f"volume '{volume.name}' of VM '{vm.name}' has no target StorageClass",
                        "give the volume a storageClass, or set spec.storageClass",
                    )
                )


# --------------------------------------------------------------------------------------------
# kubevirt-migration-controller plans
# --------------------------------------------------------------------------------------------

_KMC_TOP = {
    "apiVersion": Field(True),
    "kind": Field(True),
    "metadata": Field(True, "add metadata: {name: ..., namespace: ...}"),
    "spec": Field(True, "add spec: {virtualMachines: [...]}"),
}
_KMC_META = {
    "name": Field(True, "name the plan: metadata.name, a DNS-1123 subdomain"),
    "namespace": Field(
        True, "KMC plans are namespaced: set metadata.namespace to the VMs' namespace"
    ),
    "labels": Field(),
    "annotations": Field(),
}
_KMC_MULTI_META = {k: v for k, v in _KMC_META.items() if k != "namespace"}
_KMC_SPEC = {
    "virtualMachines": Field(True, "list the VMs: virtualMachines: [{name, targetMigrationPVCs}]"),
    "retentionPolicy": Field(),
}
_KMC_MULTI_SPEC = {
    "namespaces": Field(True, "list the namespaces: namespaces: [{name, virtualMachines}]"),
    "retentionPolicy": Field(),
}
_KMC_NAMESPACE = {"name": Field(True, "the namespace's name"), **_KMC_SPEC}
_KMC_VM = {
    "name": Field(True, "the VirtualMachine's metadata.name"),
    "targetMigrationPVCs": Field(
        True, "list the volumes to move: targetMigrationPVCs: [{volumeName, destinationPVC}]"
    ),
}
_KMC_TARGET = {
    "volumeName": Field(True, "the VM's volume name (spec.template.spec.volumes[].name)"),
    "destinationPVC": Field(True, "describe the target: destinationPVC: {storageClassName: ...}"),
}
_KMC_DESTINATION = {
    "name": Field(),
    "storageClassName": Field(),
    "accessModes": Field(),
    "volumeMode": Field(),
}


def _kmc_plan(
    r: Reader, node: MappingNode, path: str, allowed: frozenset[str] | None
) -> list[Plan]:
    top = r.mapping(node, path, _KMC_TOP, ignored=("status",))
    if top is None:
        return []
    meta_path, spec_path = join(path, "metadata"), join(path, "spec")
    meta = None
    if "metadata" in top:
        meta = r.mapping(top["metadata"], meta_path, _KMC_META, ignored=_SERVER_METADATA)
    name, source = _plan_name(r, meta, top.get("metadata"), meta_path)
    _metadata_maps(r, meta or {}, meta_path)
    namespace = None
    if meta is not None and "namespace" in meta:
        namespace = _namespace(r, meta["namespace"], join(meta_path, "namespace"), allowed)
    spec = r.mapping(top["spec"], spec_path, _KMC_SPEC) if "spec" in top else None
    if spec is None:
        return []
    retention = _kmc_retention(r, spec, spec_path) or Retention.KEEP
    vms = _kmc_vms(r, spec, spec_path)
    return [
        _kmc_to_plan(
            name=name or "",
            namespace=namespace or "",
            source=source,
            vms=vms,
            retention=retention,
            kind=KMC_PLAN,
        )
    ]


def _kmc_multi_plan(
    r: Reader, node: MappingNode, path: str, allowed: frozenset[str] | None
) -> list[Plan]:
    top = r.mapping(node, path, _KMC_TOP, ignored=("status",))
    if top is None:
        return []
    meta_path, spec_path = join(path, "metadata"), join(path, "spec")
    meta = None
    if "metadata" in top:
        # The CR's own namespace is ignored: each spec.namespaces[] entry names its own.
        ignored = (*_SERVER_METADATA, "namespace")
        meta = r.mapping(top["metadata"], meta_path, _KMC_MULTI_META, ignored=ignored)
    name, _ = _plan_name(r, meta, top.get("metadata"), meta_path)
    _metadata_maps(r, meta or {}, meta_path)
    spec = r.mapping(top["spec"], spec_path, _KMC_MULTI_SPEC) if "spec" in top else None
    if spec is None or "namespaces" not in spec:
        return []
    # deleteSource at the top overrides every namespace; keepSource or unset defers to them.
    overall = _kmc_retention(r, spec, spec_path)
    entries_path = join(spec_path, "namespaces")
    entries = r.sequence(spec["namespaces"], entries_path)
    if entries is None:
        return []
    if not entries:
        r.report(
            spec["namespaces"],
            entries_path,
            "the plan lists no namespaces",
            "list them: namespaces: [{name: <namespace>, virtualMachines: [...]}]",
        )
    plans: list[Plan] = []
    seen: dict[str, Node] = {}
    for index, entry in enumerate(entries):
        entry_path = f"{entries_path}[{index}]"
        fields = r.mapping(entry, entry_path, _KMC_NAMESPACE)
        if fields is None or "name" not in fields:
            continue
        ns_path = join(entry_path, "name")
        namespace = _namespace(r, fields["name"], ns_path, allowed)
        if namespace is not None and namespace in seen:
            first = seen[namespace].start_mark.line + 1
            r.report(
                fields["name"],
                ns_path,
                f"namespace '{namespace}' is listed twice in this plan (first on line {first})",
                "merge the two entries into one",
            )
        elif namespace is not None:
            seen[namespace] = fields["name"]
        retention = _kmc_retention(r, fields, entry_path) or Retention.KEEP
        if overall is Retention.DELETE:
            retention = Retention.DELETE
        vms = _kmc_vms(r, fields, entry_path)
        child = f"{name}-{namespace}"
        if name is not None and namespace is not None and not NameRule.SUBDOMAIN.matches(child):
            r.report(
                fields["name"],
                ns_path,
                f"the per-namespace plan name '{child}' (<plan>-<namespace>) is not a valid "
                f"{NameRule.SUBDOMAIN.value}",
                f"shorten metadata.name; {NameRule.SUBDOMAIN.rule}",
            )
        source = r.source(entry, entry_path)
        plans.append(
            _kmc_to_plan(
                name=child,
                namespace=namespace or "",
                source=source,
                vms=vms,
                retention=retention,
                kind=KMC_MULTI_PLAN,
            )
        )
    return plans


def _kmc_to_plan(
    *,
    name: str,
    namespace: str,
    source: Source,
    vms: list[VMSelection],
    retention: Retention,
    kind: str,
) -> Plan:
    return Plan(
        name=name,
        namespace=namespace,
        source=source,
        storage_class=None,  # KMC moves only the volumes it lists
        virtual_machines=tuple(vms),
        mode=Mode.AUTO,
        allow_stop=False,  # KMC never stops a running VM
        retention=retention,
        origin_kind=kind,
    )


def _kmc_retention(r: Reader, spec: Mapping[str, Node], path: str) -> Retention | None:
    if "retentionPolicy" not in spec:
        return None
    value = _choice(
        r,
        spec["retentionPolicy"],
        join(path, "retentionPolicy"),
        "retentionPolicy",
        tuple(_KMC_RETENTION),
    )
    return _KMC_RETENTION[value] if value is not None else None


def _kmc_vms(r: Reader, spec: Mapping[str, Node], path: str) -> list[VMSelection]:
    if "virtualMachines" not in spec:
        return []
    vms_path = join(path, "virtualMachines")
    read = r.each(spec["virtualMachines"], vms_path, lambda n, p: _kmc_vm(r, n, p))
    if read is None:
        return []
    vms, complete = read
    if complete and not vms:
        r.report(
            spec["virtualMachines"],
            vms_path,
            "the plan selects no VMs",
            "list them: virtualMachines: [{name: <vm>, targetMigrationPVCs: [...]}]",
        )
    _no_duplicates(r, vms, "VM", "in this plan", "merge the two entries into one")
    return vms


def _kmc_vm(r: Reader, node: Node, path: str) -> VMSelection | None:
    fields = r.mapping(node, path, _KMC_VM)
    if fields is None:
        return None
    name = _name(r, fields["name"], join(path, "name"), "VM name") if "name" in fields else None
    volumes: list[VolumeTarget] | None = None
    if "targetMigrationPVCs" in fields:
        targets_path = join(path, "targetMigrationPVCs")
        read = r.each(
            fields["targetMigrationPVCs"], targets_path, lambda n, p: _kmc_volume(r, n, p)
        )
        if read is not None and read[1] and not read[0]:
            r.report(
                fields["targetMigrationPVCs"],
                targets_path,
                f"VM '{name}' lists no volumes to move",
                "list them: targetMigrationPVCs: [{volumeName: <volume>, destinationPVC: {...}}]",
            )
        if read is not None:
            _no_duplicates(r, read[0], "volume", f"in VM '{name}'", "merge the two entries")
        volumes = read[0] if read is not None and read[1] else None
    if name is None or not volumes:
        return None
    return VMSelection(name=name, source=r.source(node, path), volumes=tuple(volumes))


def _kmc_volume(r: Reader, node: Node, path: str) -> VolumeTarget | None:
    fields = r.mapping(node, path, _KMC_TARGET)
    if fields is None:
        return None
    before = len(r.problems)
    name = None
    if "volumeName" in fields:
        name = _name(
            r, fields["volumeName"], join(path, "volumeName"), "volume name", NameRule.LABEL
        )
    dest_path = join(path, "destinationPVC")
    dest = (
        r.mapping(fields["destinationPVC"], dest_path, _KMC_DESTINATION)
        if ("destinationPVC" in fields)
        else None
    )
    dest = dest or {}

    def opt(key: str, read: Callable[[Node, str], T | None]) -> T | None:
        return read(dest[key], join(dest_path, key)) if key in dest else None

    modes = opt("accessModes", lambda n, p: _access_modes(r, n, p, _KMC_ACCESS_MODES))
    concrete = tuple(m for m in modes or () if m != "Auto")  # Auto: the StorageProfile decides
    mode_name = opt(
        "volumeMode", lambda n, p: _choice(r, n, p, "volumeMode", tuple(_KMC_VOLUME_MODES))
    )
    volume = VolumeTarget(
        name=name or "",
        source=r.source(node, path),
        storage_class=opt("storageClassName", lambda n, p: _name(r, n, p, "StorageClass name"))
        or DEFAULT_CLASS,
        volume_mode=_KMC_VOLUME_MODES[mode_name] if mode_name is not None else None,
        access_modes=concrete or None,
        target_name=opt(
            "name", lambda n, p: _name(r, n, p, "destination PVC name", NameRule.LABEL)
        ),
    )
    return volume if len(r.problems) == before else None


# --------------------------------------------------------------------------------------------
# Field readers shared by the formats
# --------------------------------------------------------------------------------------------


def _name(
    r: Reader, node: Node, path: str, what: str, rule: NameRule = NameRule.SUBDOMAIN
) -> str | None:
    """A Kubernetes name; problems say which rule it breaks and suggest a fixed spelling."""
    value = r.string(node, path)
    if value is None or rule.matches(value):
        return value
    if len(value) > rule.max_length:
        message = f"invalid {what} '{value}': {len(value)} characters, more than {rule.max_length}"
    else:
        message = f"invalid {what} '{value}': not a {rule.value}"
    suggestion = _fix_name(value, rule)
    guess = f"did you mean '{suggestion}'? " if suggestion else ""
    r.report(node, path, message, guess + rule.rule)
    return None


def _fix_name(value: str, rule: NameRule) -> str | None:
    allowed = "a-z0-9-" if rule is NameRule.LABEL else "a-z0-9.-"
    fixed = re.sub(f"[^{allowed}]+", "-", value.lower()).strip("-.")[: rule.max_length]
    fixed = fixed.rstrip("-.")
    return fixed if fixed and fixed != value and rule.matches(fixed) else None


def _namespace(r: Reader, node: Node, path: str, allowed: frozenset[str] | None) -> str | None:
    namespace = _name(r, node, path, "namespace", NameRule.LABEL)
    if namespace is None or allowed is None or namespace in allowed:
        return namespace
    hint = (
        f"this run may act only in: {', '.join(sorted(allowed))}"
        if allowed
        else "this run may act in no namespace"
    )
    r.report(node, path, f"namespace '{namespace}' is not allowed here", hint)
    return None


def _choice(r: Reader, node: Node, path: str, what: str, values: Sequence[str]) -> str | None:
    """A string from a closed set; problems list the set and guess the intended value."""
    value = r.string(node, path)
    if value is None or value in values:
        return value
    close = _close(value, list(values))
    guess = f"did you mean '{close}'? " if close else ""
    r.report(node, path, f"invalid {what} '{value}'", f"{guess}one of: {', '.join(values)}")
    return None


def _enum(r: Reader, node: Node, path: str, kind: type[E], what: str) -> E | None:
    value = _choice(r, node, path, what, [member.value for member in kind])
    return kind(value) if value is not None else None


def _access_modes(
    r: Reader, node: Node, path: str, values: Sequence[str]
) -> tuple[str, ...] | None:
    modes = r.items(node, path, lambda n, p: _choice(r, n, p, "access mode", values))
    if modes is None:
        return None
    if not modes:
        r.report(node, path, "accessModes is empty", "list at least one mode, or leave it out")
        return None
    if len(set(modes)) != len(modes):
        r.report(node, path, "accessModes lists a mode twice", "list each mode once")
        return None
    return tuple(modes)


def _duration(r: Reader, node: Node, path: str, what: str) -> timedelta | None:
    text = r.text(node, path)
    if text is None:
        return None
    try:
        return parse_duration(text)
    except SpecError as exc:
        r.report(
            node, path, exc.message.replace("invalid duration", f"invalid {what}", 1), exc.hint
        )
        return None


def _window(r: Reader, node: Node, path: str) -> Window | None:
    fields = r.mapping(node, path, _WINDOW)
    if fields is None:
        return None
    before = len(r.problems)
    start = None
    if "start" in fields:
        text = r.text(fields["start"], join(path, "start"))
        if text is not None:
            try:
                start = parse_window_start(text)
            except SpecError as exc:
                r.report(fields["start"], join(path, "start"), exc.message, exc.hint)
    duration = None
    if "duration" in fields:
        duration = _duration(r, fields["duration"], join(path, "duration"), "window duration")
        if duration is not None and duration >= MAX_WINDOW:
            r.report(
                fields["duration"],
                join(path, "duration"),
                f"window duration {format_duration(duration)} is a week or longer",
                "such a window is always open: remove spec.window instead",
            )
    zone = "UTC"
    if "timeZone" in fields:
        zone = r.string(fields["timeZone"], join(path, "timeZone")) or zone
        try:
            parse_time_zone(zone)
        except SpecError as exc:
            r.report(fields["timeZone"], join(path, "timeZone"), exc.message, exc.hint)
    if len(r.problems) != before or start is None or duration is None:
        return None
    days, clock = start
    return Window(start=clock, duration=duration, time_zone=zone, days=days)


def _selector(r: Reader, node: Node, path: str) -> LabelSelector | None:
    """A label selector; ``{}`` is valid and, as in Kubernetes, matches every VM."""
    fields = r.mapping(node, path, _SELECTOR)
    if fields is None:
        return None
    before = len(r.problems)
    labels: list[tuple[str, str]] = []
    if "matchLabels" in fields:
        for key, (key_node, value) in (
            r.string_map(fields["matchLabels"], join(path, "matchLabels")) or {}
        ).items():
            where = join(join(path, "matchLabels"), key)
            _label_key(r, key_node, where, key)
            _label_value(r, key_node, where, value)
            labels.append((key, value))
    expressions = []
    if "matchExpressions" in fields:
        expressions = (
            r.items(
                fields["matchExpressions"],
                join(path, "matchExpressions"),
                lambda n, p: _expression(r, n, p),
            )
            or []
        )
    if len(r.problems) != before:
        return None
    return LabelSelector(match_labels=tuple(sorted(labels)), match_expressions=tuple(expressions))


def _expression(r: Reader, node: Node, path: str) -> tuple[str, str, tuple[str, ...]] | None:
    fields = r.mapping(node, path, _EXPRESSION)
    if fields is None:
        return None
    before = len(r.problems)
    key = r.string(fields["key"], join(path, "key")) if "key" in fields else None
    if key is not None:
        _label_key(r, fields["key"], join(path, "key"), key)
    operator = None
    if "operator" in fields:
        operator = _choice(r, fields["operator"], join(path, "operator"), "operator", _OPERATORS)
    values: list[str] = []
    if "values" in fields:
        values_path = join(path, "values")
        for index, item in enumerate(r.sequence(fields["values"], values_path) or []):
            value = r.string(item, f"{values_path}[{index}]")
            if value is not None:
                _label_value(r, item, f"{values_path}[{index}]", value)
                values.append(value)
    if operator in ("In", "NotIn") and not values:
        r.report(
            node,
            join(path, "values"),
            f"operator {operator} needs values",
            "list at least one value: values: [a, b]",
        )
    if operator in ("Exists", "DoesNotExist") and values:
        r.report(
            fields["values"],
            join(path, "values"),
            f"operator {operator} takes no values",
            "remove values, or use In / NotIn",
        )
    if len(r.problems) != before or key is None or operator is None:
        return None
    return (key, operator, tuple(values))


def _label_key(r: Reader, node: Node, path: str, key: str) -> None:
    prefix, _, name = key.rpartition("/")
    bad_prefix = "/" in key and not NameRule.SUBDOMAIN.matches(prefix)
    if bad_prefix or len(name) > 63 or not _LABEL_NAME.fullmatch(name):
        r.report(
            node,
            path,
            f"invalid label key '{key}'",
            "a label key is an optional DNS subdomain prefix and '/', then at most 63 letters, "
            "digits, '-', '_' or '.', starting and ending with a letter or digit",
        )


def _label_value(r: Reader, node: Node, path: str, value: str) -> None:
    if value and (len(value) > 63 or not _LABEL_NAME.fullmatch(value)):
        r.report(
            node,
            path,
            f"invalid label value '{value}'",
            "a label value is empty or at most 63 letters, digits, '-', '_' or '.', starting "
            "and ending with a letter or digit",
        )


def _no_duplicates(
    r: Reader,
    entries: Sequence[VMSelection] | Sequence[VolumeTarget],
    what: str,
    where: str,
    hint: str,
) -> None:
    seen: dict[str, Source] = {}
    for entry in entries:
        if entry.name in seen:
            r.problems.append(
                Problem(
                    entry.source,
                    f"{what} '{entry.name}' is listed twice {where} (first on line "
                    f"{seen[entry.name].line})",
                    hint,
                )
            )
        else:
            seen[entry.name] = entry.source


def _close(value: str, choices: list[str]) -> str | None:
    """The likely intended choice: same letters in another case, or a close spelling."""
    for choice in choices:
        if choice.lower() == value.lower():
            return choice
    close = difflib.get_close_matches(value, choices, n=1, cutoff=0.6)
    return close[0] if close else None


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
        target_a = _target(plan_a, volumes_a.get(key), key)
        target_b = _target(plan_b, volumes_b.get(key), key)
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


def _target(plan: Plan, volume: VolumeTarget | None, key: str) -> _Target | None:
    """What ``plan`` wants for volume ``key`` of one of its VMs (None: not its concern)."""
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
