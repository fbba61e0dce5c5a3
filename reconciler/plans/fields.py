"""Typed readers for the fields plan formats share: names, closed vocabularies, access modes,
durations, maintenance windows and label selectors.

Every reader takes a ``Reader``, a node and its field path, records a ``Problem`` that teaches
the fix (the rule broken, the valid values, a "did you mean") and returns None on a problem.
"""

from __future__ import annotations

import difflib
import enum
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import timedelta
from typing import TypeVar

from reconciler.model.plan import LabelSelector, Source, Window
from reconciler.model.windows import (
    MAX_WINDOW,
    SpecError,
    format_duration,
    parse_duration,
    parse_time_zone,
    parse_window_start,
)
from reconciler.plans.located_yaml import Field, Node, Reader, SequenceNode, join, peek

__all__ = [
    "OPERATORS",
    "NameRule",
    "Scope",
    "close_match",
    "fix_name",
    "read_access_modes",
    "read_choice",
    "read_duration",
    "read_enum",
    "read_name",
    "read_namespace",
    "read_plan_name",
    "read_scoped_namespace",
    "read_selector",
    "read_window",
    "report_repeats",
]

E = TypeVar("E", bound=enum.Enum)

_LABEL = re.compile(r"[a-z0-9]([-a-z0-9]*[a-z0-9])?")
_DNS1035 = re.compile(r"[a-z]([-a-z0-9]*[a-z0-9])?")
_SUBDOMAIN = re.compile(r"[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*")
_LABEL_NAME = re.compile(r"[A-Za-z0-9]([-A-Za-z0-9_.]*[A-Za-z0-9])?")

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
OPERATORS = ("In", "NotIn", "Exists", "DoesNotExist")


class NameRule(enum.Enum):
    """The Kubernetes name grammars plans use."""

    LABEL = "DNS-1123 label"  # namespaces, volume names, claim names
    SUBDOMAIN = "DNS-1123 subdomain"  # plans, VMs, StorageClasses
    # What the KMC CRDs allow for VM and destination PVC names: ^[a-z]([-a-z0-9]*[a-z0-9])?$,
    # at most 63 (a DNS-1123 label that starts with a letter).
    DNS1035 = "DNS-1035 label"

    @property
    def max_length(self) -> int:
        return 253 if self is NameRule.SUBDOMAIN else 63

    @property
    def rule(self) -> str:
        chars = "lowercase letters, digits and '-'"
        if self is NameRule.SUBDOMAIN:
            chars = "lowercase letters, digits, '-' and '.'"
        if self is NameRule.DNS1035:
            return (
                f"use at most {self.max_length} {chars}, starting with a letter and ending with "
                "a letter or digit"
            )
        return f"use at most {self.max_length} {chars}, starting and ending with a letter or digit"

    def matches(self, value: str) -> bool:
        pattern = {NameRule.LABEL: _LABEL, NameRule.SUBDOMAIN: _SUBDOMAIN}.get(self, _DNS1035)
        return len(value) <= self.max_length and pattern.fullmatch(value) is not None


@dataclass(frozen=True)
class Scope:
    """What the command line says about namespaces, for every document of a run.

    ``allowed``: ``--allow-namespace`` (None: any). ``namespace``: ``-n/--namespace``, kubectl's
    rule: a namespaced document without a namespace lands in it, and a document that names a
    different one is an error. ``default``: the kubeconfig context's namespace, kubectl's
    other rule: without ``-n``, a document without a namespace lands in it (one naming
    another namespace is fine).
    """

    allowed: frozenset[str] | None = None
    namespace: str | None = None
    default: str | None = None


def read_name(
    r: Reader,
    node: Node,
    path: str,
    what: str,
    rule: NameRule = NameRule.SUBDOMAIN,
    *,
    why: str = "",
) -> str | None:
    """A Kubernetes name; a problem says which rule it breaks and suggests a fixed spelling.

    ``why`` names who enforces the rule (and when), appended to the hint."""
    value = r.string(node, path)
    if value is None or rule.matches(value):
        return value
    if len(value) > rule.max_length:
        message = f"invalid {what} '{value}': {len(value)} characters, more than {rule.max_length}"
    else:
        message = f"invalid {what} '{value}': not a {rule.value}"
    suggestion = fix_name(value, rule)
    guess = f"did you mean '{suggestion}'? " if suggestion else ""
    r.report(node, path, message, guess + rule.rule + (f" ({why})" if why else ""))
    return None


def fix_name(value: str, rule: NameRule) -> str | None:
    """The closest valid name (lowercased, bad characters as '-'), if it differs."""
    allowed = "a-z0-9.-" if rule is NameRule.SUBDOMAIN else "a-z0-9-"
    fixed = re.sub(f"[^{allowed}]+", "-", value.lower()).strip("-.")[: rule.max_length]
    if rule is NameRule.DNS1035:
        fixed = fixed.lstrip("-0123456789")
    fixed = fixed.rstrip("-.")
    return fixed if fixed and fixed != value and rule.matches(fixed) else None


def read_namespace(r: Reader, node: Node, path: str, allowed: frozenset[str] | None) -> str | None:
    """A namespace name, refused when ``allowed`` is set and does not contain it."""
    namespace = read_name(r, node, path, "namespace", NameRule.LABEL)
    if namespace is None or allowed is None or namespace in allowed:
        return namespace
    r.report(node, path, f"namespace '{namespace}' is not allowed here", _allowed_hint(allowed))
    return None


def _allowed_hint(allowed: frozenset[str]) -> str:
    if allowed:
        return f"this run may act only in: {', '.join(sorted(allowed))}"
    return "this run may act in no namespace"


def read_scoped_namespace(
    r: Reader,
    scope: Scope,
    node: Node | None,
    path: str,
    *,
    holder: Node,
    what: str,
) -> str | None:
    """The namespace a namespaced document acts in, by kubectl's rule.

    ``node`` is the document's own namespace field (None when it has none) at ``path``;
    ``holder`` is the mapping that would hold it (where a missing namespace is reported) and
    ``what`` names the document kind in the hint. The document's namespace wins when it agrees
    with ``-n``; without one, ``-n`` is used, else the kubeconfig context's namespace; with
    none of them, a problem says how to set one.
    """
    if node is not None:
        namespace = read_namespace(r, node, path, scope.allowed)
        if namespace is not None and scope.namespace is not None and namespace != scope.namespace:
            r.report(
                node,
                path,
                f"the namespace from the document '{namespace}' does not match the namespace "
                f"'{scope.namespace}' given with -n/--namespace",
                f"kubectl refuses this too: pass --namespace={namespace}, or remove {path} so "
                f"the document lands in '{scope.namespace}'",
            )
            return None
        return namespace
    given = scope.namespace if scope.namespace is not None else scope.default
    if given is None:
        r.report(
            holder,
            path,
            "missing required field 'namespace'",
            f"{what} acts in one namespace: set {path}, or pass -n/--namespace NAMESPACE "
            "(as with kubectl, a document without a namespace lands in the given one, else "
            "in the kubeconfig context's namespace)",
        )
        return None
    if scope.allowed is not None and given not in scope.allowed:
        origin = "-n/--namespace" if scope.namespace is not None else "the kubeconfig context"
        r.report(
            holder,
            path,
            f"namespace '{given}' (from {origin}) is not allowed here",
            _allowed_hint(scope.allowed),
        )
        return None
    return given


def read_plan_name(
    r: Reader, meta: Mapping[str, Node] | None, meta_node: Node | None, meta_path: str
) -> tuple[str | None, Source]:
    """metadata.name, and the ``Source`` a plan points at: its name (or metadata, or line 1
    of the file, when the name is missing). Also checks metadata.labels / annotations."""
    name_path = join(meta_path, "name")
    for key in ("labels", "annotations"):
        if meta is not None and key in meta:
            r.string_map(meta[key], join(meta_path, key))
    if meta is None or "name" not in meta:
        anchor = r.source(meta_node, name_path) if meta_node is not None else Source(r.file, 1)
        return None, anchor
    node = meta["name"]
    return read_name(r, node, name_path, "plan name"), r.source(node, name_path)


def read_choice(r: Reader, node: Node, path: str, what: str, values: Sequence[str]) -> str | None:
    """A string from a closed set; a problem lists the set and guesses the intended value."""
    value = r.string(node, path)
    if value is None or value in values:
        return value
    close = close_match(value, values)
    guess = f"did you mean '{close}'? " if close else ""
    r.report(node, path, f"invalid {what} '{value}'", f"{guess}one of: {', '.join(values)}")
    return None


def read_enum(r: Reader, node: Node, path: str, kind: type[E], what: str) -> E | None:
    """A member of ``kind`` written as its value (``Live`` for ``Mode.LIVE``)."""
    value = read_choice(r, node, path, what, [member.value for member in kind])
    return kind(value) if value is not None else None


def read_access_modes(
    r: Reader, node: Node, path: str, values: Sequence[str]
) -> tuple[str, ...] | None:
    """A non-empty list of distinct access modes out of ``values``."""
    modes = r.items(node, path, lambda n, p: read_choice(r, n, p, "access mode", values))
    if modes is None:
        return None
    if not modes:
        r.report(node, path, "accessModes is empty", "list at least one mode, or leave it out")
        return None
    if len(set(modes)) != len(modes):
        r.report(node, path, "accessModes lists a mode twice", "list each mode once")
        return None
    return tuple(modes)


def read_duration(r: Reader, node: Node, path: str, what: str) -> timedelta | None:
    """A positive duration such as ``1h30m``; ``what`` names it in the problem."""
    text = r.text(node, path)
    if text is None:
        return None
    try:
        return parse_duration(text)
    except SpecError as exc:
        message = exc.message.replace("invalid duration", f"invalid {what}", 1)
        r.report(node, path, message, exc.hint)
        return None


def read_window(r: Reader, node: Node, path: str) -> Window | None:
    """``{start, duration, timeZone}``; each part's problem points at that part."""
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
        duration = read_duration(r, fields["duration"], join(path, "duration"), "window duration")
        if duration is not None and duration >= MAX_WINDOW:
            r.report(
                fields["duration"],
                join(path, "duration"),
                f"window duration {format_duration(duration)} is a week or longer",
                "such a window is always open: remove spec.window instead",
            )
    zone = "UTC"
    if "timeZone" in fields:
        written = r.string(fields["timeZone"], join(path, "timeZone"))
        if written is not None:  # "" is an error, not UTC: leave the field out for UTC
            zone = written
            try:
                parse_time_zone(zone)
            except SpecError as exc:
                r.report(fields["timeZone"], join(path, "timeZone"), exc.message, exc.hint)
    if len(r.problems) != before or start is None or duration is None:
        return None
    days, clock = start
    return Window(start=clock, duration=duration, time_zone=zone, days=days)


def read_selector(r: Reader, node: Node, path: str) -> LabelSelector | None:
    """A label selector. ``{}`` is valid and, as everywhere in Kubernetes, matches every VM."""
    fields = r.mapping(node, path, _SELECTOR)
    if fields is None:
        return None
    before = len(r.problems)
    labels: list[tuple[str, str]] = []
    if "matchLabels" in fields:
        labels_path = join(path, "matchLabels")
        for key, (key_node, value) in (
            r.string_map(fields["matchLabels"], labels_path) or {}
        ).items():
            where = join(labels_path, key)
            _label_key(r, key_node, where, key)
            _label_value(r, key_node, where, value)
            labels.append((key, value))
    expressions: list[tuple[str, str, tuple[str, ...]]] = []
    if "matchExpressions" in fields:
        expressions_path = join(path, "matchExpressions")
        read = r.items(
            fields["matchExpressions"], expressions_path, lambda n, p: _expression(r, n, p)
        )
        expressions = read or []
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
        operator = read_choice(r, fields["operator"], join(path, "operator"), "operator", OPERATORS)
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


def report_repeats(r: Reader, node: Node, path: str, *, key: str, what: str, where: str) -> None:
    """Report list items whose ``key`` repeats an earlier item's (each repeat at its item).

    Works on the raw nodes, so a repeated entry is reported even when an entry is invalid.
    """
    if not isinstance(node, SequenceNode):
        return
    first: dict[str, int] = {}
    for index, item in enumerate(node.value):
        name = peek(item, key)
        if name is None:
            continue
        if name in first:
            r.report(
                item,
                f"{path}[{index}]",
                f"{what} '{name}' is listed twice {where} (first on line {first[name]})",
                "merge the two entries into one",
            )
        else:
            first[name] = item.start_mark.line + 1


def close_match(value: str, choices: Sequence[str]) -> str | None:
    """The likely intended choice: the same word in another case, or a close spelling."""
    for choice in choices:
        if choice.lower() == value.lower():
            return choice
    close = difflib.get_close_matches(value, list(choices), n=1, cutoff=0.6)
    return close[0] if close else None
