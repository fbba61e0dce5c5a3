"""Read YAML while keeping ``file:line`` and the field path of every value.

PyYAML's composer gives a node tree whose nodes carry marks; ``documents`` composes it, and
``Reader`` walks it with typed getters that record a ``Problem`` (where, what, how to fix)
instead of raising. A getter that finds a problem returns ``None`` so a caller can go on and
find the next problem: the user gets every mistake in one run.

Conventions, as in Kubernetes: a field set to ``null`` is the same as a field left out; field
names are case-sensitive; a key written twice is an error here (YAML would silently keep the
last one). Merge keys (``<<: *anchor``) are expanded, and a key written next to them overrides
the merged one.
"""

from __future__ import annotations

import difflib
from collections.abc import Callable, Collection, Iterator, Mapping
from dataclasses import dataclass, field
from typing import TypeVar

import yaml
from yaml.nodes import MappingNode, Node, ScalarNode, SequenceNode

from reconciler.model.errors import Problem
from reconciler.model.plan import Source

__all__ = [
    "Field",
    "MappingNode",
    "Node",
    "Reader",
    "ScalarNode",
    "SequenceNode",
    "describe",
    "documents",
    "expansion_problem",
    "join",
    "peek",
]

T = TypeVar("T")

_TAG = "tag:yaml.org,2002:"
_TYPE_NAMES = {
    "str": "a string",
    "int": "an integer",
    "float": "a number",
    "bool": "a boolean",
    "null": "null",
    "timestamp": "a date",
    "binary": "binary data",
    "merge": "a merge key",
    "value": "a value key",
}
_QUOTE_HINT = 'to use it as text, put it in quotes: "{value}"'


def documents(text: str, file: str) -> tuple[list[Node], list[Problem]]:
    """Compose every document of a YAML stream.

    Returns the non-empty documents read before any syntax error, and at most one problem for
    that error (the parser cannot resynchronise after one).
    """
    nodes: list[Node] = []
    stream: Iterator[Node] = yaml.compose_all(text, Loader=yaml.SafeLoader)
    try:
        for node in stream:
            if not (isinstance(node, ScalarNode) and node.tag == _TAG + "null"):
                nodes.append(node)
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        line = mark.line + 1 if mark is not None else 1
        what = exc.problem or exc.context or "syntax error"
        return nodes, [
            Problem(
                Source(file, line),
                f"invalid YAML: {what}",
                "check the indentation and quoting on this line and the one before; quote "
                "values that contain ': ' or ' #' or start with one of * & ! { [ % @ `",
            )
        ]
    except yaml.reader.ReaderError as exc:
        line = text.count("\n", 0, max(exc.position, 0)) + 1
        return nodes, [
            Problem(
                Source(file, line),
                f"invalid YAML: unacceptable character #x{exc.character:04x}",
                "plan files must be printable UTF-8 text; is this a binary file?",
            )
            if isinstance(exc.character, int)
            else Problem(Source(file, line), f"invalid YAML: {exc.reason}")
        ]
    except RecursionError:
        return nodes, [
            Problem(
                Source(file, 1),
                "invalid YAML: nested too deeply to read",
                "a plan is a few levels deep; check for runaway brackets",
            )
        ]
    return nodes, []


MAX_ALIAS_NODES = 100_000
"""How many values aliases (``*a``) and merge keys (``<<: *a``) may add to one document, in
total. A plan needs a few dozen; a 739-byte file of nested ``<<: [*a, *a, ...]`` expands to
billions, which reading node by node would walk for minutes."""


def expansion_problem(root: Node, file: str) -> Problem | None:
    """A problem when ``root`` expands, through aliases and merge keys, to more than
    ``MAX_ALIAS_NODES`` values beyond those written, or refers to itself; None otherwise.

    Linear in the nodes written: each node's expanded size is computed once (memoised by
    identity), so counting costs nothing like expanding. The problem names the line of the
    smallest node whose children together go over the bound: where the bomb is built.
    """
    sizes: dict[int, int] = {}
    open_: set[int] = set()
    cycle: list[Node] = []

    def size(node: Node) -> int:
        key = id(node)
        if key in sizes:
            return sizes[key]
        if key in open_:
            cycle.append(node)
            return 0
        open_.add(key)
        total = 1 + sum(size(child) for child in _children(node))
        open_.discard(key)
        sizes[key] = total
        return total

    try:
        expanded = size(root)
    except RecursionError:
        return Problem(Source(file, root.start_mark.line + 1), "invalid YAML: nested too deeply")
    if cycle:
        return Problem(
            Source(file, cycle[0].start_mark.line + 1),
            "an alias refers to a node that contains it (the value would be infinite)",
            "an anchor (&name) can only be used (*name) after the value it names is complete",
        )
    if expanded - len(sizes) <= MAX_ALIAS_NODES:
        return None
    node = root
    while True:
        big = [c for c in _children(node) if sizes[id(c)] - 1 > MAX_ALIAS_NODES]
        if not big:
            break
        node = big[0]
    return Problem(
        Source(file, node.start_mark.line + 1),
        f"aliases and merge keys here expand to {sizes[id(node)]:,} values, more than the "
        f"{MAX_ALIAS_NODES:,} a document may add through them",
        "write the values out, or use fewer nested aliases (*name) and merge keys (<<)",
    )


def _children(node: Node) -> Iterator[Node]:
    if isinstance(node, SequenceNode):
        yield from node.value
    elif isinstance(node, MappingNode):
        for key, value in node.value:
            yield key
            yield value


@dataclass(frozen=True)
class Field:
    """One field a mapping may hold. ``required`` fields that are missing (or null) are a
    problem whose hint is ``hint``."""

    required: bool = False
    hint: str = ""


@dataclass
class Reader:
    """Typed access to the nodes of one file; problems accumulate in ``problems``.

    ``path`` arguments are field paths such as ``spec.virtualMachines[0].name``.
    """

    file: str
    problems: list[Problem] = field(default_factory=list)
    _merging: set[int] = field(default_factory=set, repr=False)

    # ---- reporting ------------------------------------------------------------------------

    def source(self, node: Node, path: str) -> Source:
        """Where ``node`` starts (1-based line) and its field path."""
        return Source(self.file, node.start_mark.line + 1, path)

    def report(self, node: Node, path: str, message: str, hint: str = "") -> None:
        self.problems.append(Problem(self.source(node, path), message, hint))

    def type_error(self, node: Node, path: str, expected: str) -> None:
        got = describe(node)
        hint = ""
        if isinstance(node, ScalarNode) and expected == "a string" and node.tag != _TAG + "null":
            hint = _QUOTE_HINT.format(value=node.value)
        self.report(node, path, f"expected {expected}, got {got}", hint)

    # ---- structure ------------------------------------------------------------------------

    def mapping(
        self,
        node: Node,
        path: str,
        fields: Mapping[str, Field],
        *,
        misplaced: Mapping[str, str] | None = None,
        ignored: Collection[str] = (),
    ) -> dict[str, Node] | None:
        """The known, non-null fields of a mapping node, keyed by name.

        Reports: not a mapping, a key that is not a string, a key written twice, an unknown
        key (with "did you mean", or the hint in ``misplaced`` for a key that belongs
        elsewhere) and every missing required field. ``ignored`` keys are accepted and dropped.
        Returns None only when ``node`` is not a mapping.
        """
        if not isinstance(node, MappingNode):
            self.type_error(node, path, "a mapping")
            return None
        found: dict[str, Node] = {}
        for key_node, value_node in self._pairs(node, path):
            key = key_node.value
            where = join(path, key)
            if key in ignored:
                continue
            if key not in fields:
                self._unknown_field(key_node, where, key, fields, misplaced or {})
                continue
            if not _is_null(value_node):
                found[key] = value_node
        for name, spec in fields.items():
            if spec.required and name not in found:
                self.report(node, join(path, name), f"missing required field '{name}'", spec.hint)
        return found

    def sequence(self, node: Node, path: str) -> list[Node] | None:
        """The items of a list node; reports and returns None for anything else."""
        if not isinstance(node, SequenceNode):
            self.type_error(node, path, "a list")
            return None
        return list(node.value)

    def items(self, node: Node, path: str, read: Callable[[Node, str], T | None]) -> list[T] | None:
        """Apply ``read`` to every list item (with its indexed path); None if not a list or if
        any item failed (every item is read, so every item's problems are reported)."""
        values = self.sequence(node, path)
        if values is None:
            return None
        results = [read(item, f"{path}[{index}]") for index, item in enumerate(values)]
        return None if any(r is None for r in results) else [r for r in results if r is not None]

    # ---- scalars --------------------------------------------------------------------------

    def string(self, node: Node, path: str) -> str | None:
        """A YAML string (an unquoted ``no`` or ``0123`` is not one: it is reported)."""
        if isinstance(node, ScalarNode) and node.tag == _TAG + "str":
            return str(node.value)
        self.type_error(node, path, "a string")
        return None

    def text(self, node: Node, path: str) -> str | None:
        """Any scalar's text as written: for values with their own grammar (``01:00``, which
        YAML 1.1 would otherwise read as the sexagesimal integer 60)."""
        if isinstance(node, ScalarNode) and not _is_null(node):
            return str(node.value)
        self.type_error(node, path, "a string")
        return None

    def boolean(self, node: Node, path: str) -> bool | None:
        if isinstance(node, ScalarNode) and node.tag == _TAG + "bool":
            return bool(yaml.constructor.SafeConstructor.bool_values[node.value.lower()])
        self.report(
            node,
            path,
            f"expected a boolean, got {describe(node)}",
            "write true or false, without quotes",
        )
        return None

    def string_map(self, node: Node, path: str) -> dict[str, tuple[Node, str]] | None:
        """A mapping of strings to strings (labels): every pair whose value is a string, with
        its key node; other pairs are reported. None only when ``node`` is not a mapping."""
        if not isinstance(node, MappingNode):
            self.type_error(node, path, "a mapping")
            return None
        result: dict[str, tuple[Node, str]] = {}
        for key_node, value_node in self._pairs(node, path):
            value = self.string(value_node, join(path, key_node.value))
            if value is not None:
                result[key_node.value] = (key_node, value)
        return result

    # ---- internals ------------------------------------------------------------------------

    def _pairs(self, node: MappingNode, path: str) -> list[tuple[ScalarNode, Node]]:
        """String-keyed pairs with merge keys expanded; reports bad and repeated keys."""
        own = [(k, v) for k, v in node.value if not (isinstance(k, ScalarNode) and _is_merge(k))]
        merged = self._merged(node, path)
        seen: dict[str, ScalarNode] = {}
        pairs: dict[str, tuple[ScalarNode, Node]] = {}
        for key_node, value_node in own:
            if not (isinstance(key_node, ScalarNode) and key_node.tag == _TAG + "str"):
                scalar = isinstance(key_node, ScalarNode)
                self.report(
                    key_node,
                    path,
                    f"field names must be strings, got {describe(key_node)}",
                    _QUOTE_HINT.format(value=key_node.value) if scalar else "",
                )
                continue
            key = key_node.value
            if key in seen:
                first = seen[key].start_mark.line + 1
                self.report(
                    key_node,
                    join(path, key),
                    f"field '{key}' is set twice (first on line {first})",
                    "remove one of them: YAML would silently keep only the last",
                )
                continue
            seen[key] = key_node
            pairs[key] = (key_node, value_node)
        for key_node, value_node in merged:
            pairs.setdefault(key_node.value, (key_node, value_node))
        return list(pairs.values())

    def _merged(self, node: MappingNode, path: str) -> list[tuple[ScalarNode, Node]]:
        """The pairs brought in by ``<<`` merge keys, earlier sources first winning."""
        result: list[tuple[ScalarNode, Node]] = []
        for key_node, value_node in node.value:
            if not (isinstance(key_node, ScalarNode) and _is_merge(key_node)):
                continue
            sources = value_node.value if isinstance(value_node, SequenceNode) else [value_node]
            for source in sources:
                if not isinstance(source, MappingNode):
                    self.report(
                        value_node,
                        path,
                        f"a merge key (<<) needs a mapping or a list of mappings, "
                        f"got {describe(source)}",
                    )
                    continue
                if id(source) in self._merging:
                    self.report(value_node, path, "a merge key (<<) refers to its own mapping")
                    continue
                self._merging.add(id(source))
                taken = {k.value for k, _ in result}
                result.extend((k, v) for k, v in self._pairs(source, path) if k.value not in taken)
                self._merging.discard(id(source))
        return result

    def _unknown_field(
        self,
        key_node: Node,
        where: str,
        key: str,
        fields: Collection[str],
        misplaced: Mapping[str, str],
    ) -> None:
        names = sorted(fields)
        if key in misplaced:
            hint = misplaced[key]
        else:
            close = difflib.get_close_matches(key, names, n=1, cutoff=0.6)
            close = close or [n for n in names if n.lower() == key.lower()]
            guess = f"did you mean '{close[0]}'? " if close else ""
            hint = f"{guess}fields here: {', '.join(names)}"
        self.report(key_node, where, f"unknown field '{key}'", hint)


def peek(node: Node, key: str) -> str | None:
    """The string value of ``key`` in a mapping node, without validating anything (for
    routing a document by kind and for finding repeated names in a list)."""
    if not isinstance(node, MappingNode):
        return None
    for key_node, value_node in node.value:
        if (
            isinstance(key_node, ScalarNode)
            and key_node.tag == _TAG + "str"
            and key_node.value == key
            and isinstance(value_node, ScalarNode)
            and value_node.tag == _TAG + "str"
        ):
            return str(value_node.value)
    return None


def join(path: str, key: str) -> str:
    """``join("spec", "mode") == "spec.mode"``; the root path is ``""``."""
    return f"{path}.{key}" if path else key


def describe(node: Node) -> str:
    """How a node reads to a user: ``a list``, ``a boolean (no)``, ``an integer (0123)``."""
    if isinstance(node, MappingNode):
        return "a mapping"
    if isinstance(node, SequenceNode):
        return "a list"
    tag = str(node.tag)
    if tag.startswith(_TAG):
        name = _TYPE_NAMES.get(tag[len(_TAG) :], f"a value tagged !!{tag[len(_TAG) :]}")
    else:
        name = f"a value tagged {tag}"
    if tag == _TAG + "null":
        return name
    return f"{name} ({node.value})" if tag != _TAG + "str" else f"{name} ('{node.value}')"


def _is_null(node: Node) -> bool:
    return isinstance(node, ScalarNode) and node.tag == _TAG + "null"


def _is_merge(node: ScalarNode) -> bool:
    return node.tag == _TAG + "merge"
