"""Preflight rules, the machinery: a rule is a small pure function with a stable id.

Rules are organised as data (tables of ``Rule``, one module per kind of context:
``rules_cluster``, ``rules_vm``, ``rules_volume``, ``rules_run``; the complete list is
``catalog.CATALOG``) so the README, the JSON report and the metrics all speak the same ids. A
rule's check returns ``None`` when it has nothing to say, else the message for the user: what is
wrong and what to do. ``evaluate`` turns those messages into ``model.verdict.Finding`` values;
the ``Effect`` of each is documented on ``Effect``. Nothing here does I/O.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Generic, TypeVar

from reconciler.model.live import Condition
from reconciler.model.verdict import Effect, Finding


@dataclass(frozen=True)
class RuleInfo:
    """A rule as documented: stable id, effect, and a one-line summary for the README."""

    id: str
    effect: Effect
    summary: str


C = TypeVar("C")


@dataclass(frozen=True)
class Rule(RuleInfo, Generic[C]):
    """A rule with its check: ``check(context)`` returns the user's message, or None."""

    check: Callable[[C], str | None] = field(repr=False, compare=False, kw_only=True)

    def apply(self, context: C, volume: str | None = None) -> Finding | None:
        """The finding of this rule on ``context`` (about ``volume``, None: the VM), or None."""
        message = self.check(context)
        return None if message is None else Finding(self.id, self.effect, volume, message)


def evaluate(
    rules: Sequence[Rule[C]], context: C, *, volume: str | None = None
) -> tuple[Finding, ...]:
    """Apply ``rules`` in order; return every finding (a rule never depends on another).
    ``volume`` names the VM volume the context is about (volume rules), None otherwise."""
    return tuple(f for f in (rule.apply(context, volume) for rule in rules) if f is not None)


def of_effect(findings: Iterable[Finding], *effects: Effect) -> tuple[Finding, ...]:
    return tuple(f for f in findings if f.effect in effects)


def is_rwo(access_modes: Sequence[str]) -> bool:
    """KubeVirt's test (IsReadWriteOnceAccessMode): not shared by several nodes."""
    return not {"ReadWriteMany", "ReadOnlyMany"} & set(access_modes)


def condition(conditions: Iterable[Condition], type_: str) -> Condition | None:
    return next((c for c in conditions if c.type == type_), None)


def names(items: Iterable[str]) -> str:
    return ", ".join(items) or "none"


def rule_ids(findings: Iterable[Finding]) -> str:
    return ", ".join(f.rule for f in findings)
