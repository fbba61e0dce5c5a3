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
  plans, mapped onto the same model (mode Auto, allowStop false, no window, the default timeout,
  ``origin_kind`` = the KMC kind). Only the listed volumes move (``Plan.storage_class`` is
  None); a ``destinationPVC`` without ``storageClassName`` targets ``DEFAULT_CLASS``. A
  multi-namespace plan becomes one ``Plan`` per ``spec.namespaces[]`` entry, named
  ``<plan>-<namespace>`` (the name KMC gives the per-namespace plans it creates).
- ``v1`` ``List`` whose ``items`` are any of the above (what ``kubectl get -o yaml`` prints).

Documents that are clearly not plans, of a kind no plan has and an API group that is not a
plan's (a VirtualMachine, a StorageClass, a Kustomization, a core ``v1`` ConfigMap: a GitOps
repository mixes them with the plans), are skipped, not errors: ``read_plans`` returns them as
``Skipped`` and ``skipped_note`` says so in one line. A document of a plan's group with an
unknown kind (``vmstorage.dev/v1alpha1`` ``StorageClass``), or of a plan's kind in another
group, is still an error: it is a plan with a typo.

Checks across plans are ``crosscheck.check_across``; which files a path names is ``files``.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from difflib import SequenceMatcher
from pathlib import Path

from reconciler.model.errors import PlanError, Problem
from reconciler.model.plan import Plan, Source
from reconciler.plans import kmc, native
from reconciler.plans.crosscheck import check_across
from reconciler.plans.fields import NameRule, Scope, close_match
from reconciler.plans.files import expand, read_plan_file
from reconciler.plans.located_yaml import (
    Field,
    MappingNode,
    Node,
    Reader,
    ScalarNode,
    describe,
    documents,
    expansion_problem,
    join,
)

_Read = Callable[[Reader, MappingNode, str, Scope], list[Plan]]
_READERS: dict[tuple[str, str], _Read] = {
    (native.API_VERSION, native.KIND): native.read_storage_plan,
    (kmc.API_VERSION, kmc.KIND): kmc.read_kmc_plan,
    (kmc.API_VERSION, kmc.MULTI_KIND): kmc.read_kmc_multi_plan,
}
ACCEPTED_KINDS: tuple[tuple[str, str], ...] = tuple(_READERS)
"""(apiVersion, kind) of every plan document accepted (``v1 List`` of them is also read)."""

_ACCEPTED_HINT = (
    "plan documents are: apiVersion vmstorage.dev/v1alpha1 kind StoragePlan; apiVersion "
    "migrations.kubevirt.io/v1alpha1 kind VirtualMachineStorageMigrationPlan or "
    "MultiNamespaceVirtualMachineStorageMigrationPlan"
)
_PLAN_GROUPS = frozenset(api.split("/")[0] for api, _ in ACCEPTED_KINDS)
"""The API groups of plan documents (vmstorage.dev, migrations.kubevirt.io)."""
MONOREPO_HINT = (
    "to read only the plans, point at their directory (docs/plans.md, "
    '"Plans in a GitOps repository")'
)
_STARTS_A_PLAN = (
    "this starts a kubevirt-migration-controller plan; here every plan in the repository is "
    "applied by `apply`: delete this document"
)
_NOT_PLAN_HINTS = {
    "VirtualMachineStorageMigration": _STARTS_A_PLAN,
    "MultiNamespaceVirtualMachineStorageMigration": _STARTS_A_PLAN,
}


@dataclass(frozen=True)
class Skipped:
    """A document that is clearly not a plan (another API group, not a plan's kind): where it
    is and what it is. Skipped, not an error."""

    source: Source
    api_version: str
    kind: str


@dataclass(frozen=True)
class PlanSet:
    """What ``read_plans`` found: the plans, sorted by (namespace, name), and the documents
    skipped because they are clearly not plans, in file order."""

    plans: tuple[Plan, ...]
    skipped: tuple[Skipped, ...] = ()

    @property
    def note(self) -> str:
        """One line about the skipped documents ("" when none was)."""
        return skipped_note(self.skipped)


# --------------------------------------------------------------------------------------------
# Public API
# --------------------------------------------------------------------------------------------


def load_plans(
    paths: Sequence[str | Path],
    *,
    allowed_namespaces: frozenset[str] | None = None,
    namespace: str | None = None,
    default_namespace: str | None = None,
) -> tuple[Plan, ...]:
    """Read, validate and cross-check every plan under ``paths``.

    ``allowed_namespaces``: when set, a plan acting in any other namespace is a problem.
    ``namespace`` (``-n``): kubectl's rule for every namespaced document: one without a
    namespace acts in this one, one that names another is a problem.
    ``default_namespace`` (the kubeconfig context's namespace): a document without a
    namespace acts in it when ``namespace`` is not given; one naming another is fine.
    Returns the plans sorted by (namespace, name). Raises ``PlanError`` with every problem
    found (sorted by file and line) if there is any; then no plan is returned at all.
    Documents that are clearly not plans are skipped (``read_plans`` says which).
    """
    return read_plans(
        paths,
        allowed_namespaces=allowed_namespaces,
        namespace=namespace,
        default_namespace=default_namespace,
    ).plans


def read_plans(
    paths: Sequence[str | Path],
    *,
    allowed_namespaces: frozenset[str] | None = None,
    namespace: str | None = None,
    default_namespace: str | None = None,
) -> PlanSet:
    """``load_plans``, and the documents it skipped because they are clearly not plans."""
    scope = _scope(allowed_namespaces, namespace, default_namespace)
    files, problems = expand(paths)
    plans: list[Plan] = []
    skipped: list[Skipped] = []
    for path in files:
        found, file_problems = _load_file(path, scope, skipped)
        plans.extend(found)
        problems.extend(file_problems)
    problems.extend(check_across(plans))
    if problems:
        raise PlanError(sorted(problems, key=_problem_order))
    return PlanSet(
        tuple(sorted(plans, key=lambda plan: (plan.namespace, plan.name))), tuple(skipped)
    )


def skipped_note(skipped: Sequence[Skipped], *, most: int = 4) -> str:
    """One line for the documents skipped as not plans, by kind, the most common first:
    ``skipped 12 documents that are not plans: 10 VirtualMachine (kubevirt.io/v1), ...``."""
    if not skipped:
        return ""
    kinds = Counter((s.kind, s.api_version) for s in skipped)
    ranked = sorted(kinds.items(), key=lambda item: (-item[1], item[0]))
    shown = [f"{count} {kind} ({api})" for (kind, api), count in ranked[:most]]
    if len(ranked) > most:
        shown.append(f"{len(ranked) - most} more kind(s)")
    noun = "document that is not a plan" if len(skipped) == 1 else "documents that are not plans"
    return f"skipped {len(skipped)} {noun} (other API groups): {', '.join(shown)}; " + MONOREPO_HINT


def parse_plans(
    text: str,
    file: str = "<string>",
    *,
    allowed_namespaces: frozenset[str] | None = None,
    namespace: str | None = None,
) -> tuple[Plan, ...]:
    """``load_plans`` for one YAML text (e.g. stdin); ``file`` names it in problems."""
    plans, problems = _parse_text(text, file, _scope(allowed_namespaces, namespace), [])
    problems.extend(check_across(plans))
    if problems:
        raise PlanError(sorted(problems, key=_problem_order))
    return tuple(sorted(plans, key=lambda plan: (plan.namespace, plan.name)))


def _scope(
    allowed: frozenset[str] | None, namespace: str | None, default: str | None = None
) -> Scope:
    """The run's namespace scope; a ``namespace`` that is no namespace name is bad input (a
    ``default`` that is none, from a kubeconfig, is ignored: the API server would refuse it)."""
    if namespace is not None and not NameRule.LABEL.matches(namespace):
        raise PlanError(
            [
                Problem(
                    None,
                    f"-n/--namespace: invalid namespace '{namespace}': not a "
                    f"{NameRule.LABEL.value}",
                    NameRule.LABEL.rule,
                )
            ]
        )
    if default is not None and not NameRule.LABEL.matches(default):
        default = None
    return Scope(allowed=allowed, namespace=namespace, default=default)


def _load_file(
    path: Path, scope: Scope, skipped: list[Skipped]
) -> tuple[list[Plan], list[Problem]]:
    name = str(path)
    data, problem = read_plan_file(path)
    if data is None:
        return [], [problem] if problem is not None else []
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
        return _parse_text(text, name, scope, skipped)
    except Exception as exc:  # a bug must still not turn bad input into a traceback
        return [], [
            Problem(
                Source(name, 1),
                f"could not validate this file: internal error {type(exc).__name__}: {exc}",
                "this is a bug in vm-storage-reconciler; please report it with this file",
            )
        ]


def _parse_text(
    text: str, file: str, scope: Scope, skipped: list[Skipped]
) -> tuple[list[Plan], list[Problem]]:
    nodes, problems = documents(text, file)
    reader = Reader(file)
    plans: list[Plan] = []
    for node in nodes:
        bomb = expansion_problem(node, file)
        if bomb is not None:
            problems.append(bomb)
            continue
        plans.extend(_document(reader, node, "", scope, skipped))
    return plans, problems + reader.problems


def _problem_order(problem: Problem) -> tuple[str, int, str, str]:
    if problem.source is None:
        return ("", 0, "", problem.message)
    return (problem.source.file, problem.source.line, problem.source.path, problem.message)


# --------------------------------------------------------------------------------------------
# Documents
# --------------------------------------------------------------------------------------------


def _document(
    r: Reader,
    node: Node,
    path: str,
    scope: Scope,
    skipped: list[Skipped],
    *,
    in_list: bool = False,
) -> list[Plan]:
    """Route one document by apiVersion/kind; returns its plans, or none if it has problems
    or is clearly not a plan (then it goes to ``skipped``). ``in_list``: an item of a ``v1
    List``, which may not be a List itself."""
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
        plans = _READERS[api, kind](r, node, path, scope)
    elif (api, kind) == ("v1", "List") and in_list:
        r.report(
            kind_node,
            join(path, "kind"),
            "a List inside a List is not read",
            "list the plans themselves in items (as kubectl get -o yaml prints them)",
        )
        return []
    elif (api, kind) == ("v1", "List"):
        plans = _list(r, node, path, scope, skipped)
    elif not_a_plan(api, kind):
        skipped.append(Skipped(r.source(kind_node, join(path, "kind")), api, kind))
        return []
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


def not_a_plan(api: str, kind: str) -> bool:
    """Clearly not a plan document: neither a plan's kind nor a plan's API group (nor a
    group spelled close to one: ``vmstorage.io`` is a typo, not another API)."""
    if kind in {k for _, k in ACCEPTED_KINDS}:
        return False
    group = api.split("/", 1)[0] if "/" in api else ""  # "v1": the core group
    return all(SequenceMatcher(None, group, ours).ratio() < 0.8 for ours in _PLAN_GROUPS)


_LIST = {"apiVersion": Field(True), "kind": Field(True), "items": Field(True)}


def _list(
    r: Reader, node: MappingNode, path: str, scope: Scope, skipped: list[Skipped]
) -> list[Plan]:
    top = r.mapping(node, path, _LIST, ignored=("metadata",))
    if top is None or "items" not in top:
        return []
    items = r.sequence(top["items"], join(path, "items"))
    plans: list[Plan] = []
    for index, item in enumerate(items or []):
        where = f"{join(path, 'items')}[{index}]"
        plans.extend(_document(r, item, where, scope, skipped, in_list=True))
    return plans


def _raw_field(node: MappingNode, name: str) -> Node | None:
    """The value of ``name`` in ``node`` without validating anything else (for routing)."""
    for key, value in node.value:
        if isinstance(key, ScalarNode) and key.value == name and key.tag.endswith(":str"):
            return None if value.tag.endswith(":null") else value
    return None
