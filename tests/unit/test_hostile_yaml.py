"""Hostile YAML (issue 7, item 2): alias and merge-key expansion is bounded, nested Lists are
refused, and the error names the line."""

from __future__ import annotations

from pathlib import Path

import pytest

from reconciler.model.errors import PlanError, Problem
from reconciler.plans.load import load_plans, parse_plans
from reconciler.plans.located_yaml import MAX_ALIAS_NODES

PLAN = (
    "{apiVersion: vmstorage.dev/v1alpha1, kind: StoragePlan, metadata: {name: p}, "
    "spec: {namespace: ns, storageClass: sc, virtualMachines: [{name: vm}]}}"
)


def merge_bomb(levels: int = 9, width: int = 9) -> str:
    """A ~700-byte plan whose nested ``<<: [*a, *a, ...]`` expand to width**levels keys."""
    lines = [
        "apiVersion: vmstorage.dev/v1alpha1",
        "kind: StoragePlan",
        "metadata: {name: bomb}",
        "x0: &a0 {k: v}",
    ]
    for level in range(1, levels + 1):
        refs = ", ".join([f"*a{level - 1}"] * width)
        lines.append(f"x{level}: &a{level} {{<<: [{refs}]}}")
    lines.append(f"spec: {{<<: *a{levels}, namespace: ns, storageClass: sc}}")
    return "\n".join(lines) + "\n"


def list_bomb(levels: int = 9, width: int = 9) -> str:
    """A ~1 KB List of Lists of aliases: width**levels plans once expanded."""
    lines = ["apiVersion: v1", "kind: List", "items:", f"- &l0 {PLAN}"]
    for level in range(1, levels + 1):
        refs = ", ".join([f"*l{level - 1}"] * width)
        lines.append(f"- &l{level} {{apiVersion: v1, kind: List, items: [{refs}]}}")
    return "\n".join(lines) + "\n"


def only_problem(text: str) -> Problem:
    with pytest.raises(PlanError) as caught:
        parse_plans(text, "bomb.yaml")
    (problem,) = caught.value.problems
    return problem


def test_a_merge_key_bomb_stops_with_an_error_naming_its_line() -> None:
    text = merge_bomb()
    assert len(text) < 800
    problem = only_problem(text)
    assert problem.source is not None and problem.source.file == "bomb.yaml"
    assert 5 <= problem.source.line <= 13  # one of the x<N> lines that build it
    assert "aliases and merge keys here expand to" in problem.message
    assert f"more than the {MAX_ALIAS_NODES:,}" in problem.message


def test_a_list_of_aliased_lists_stops_with_an_error_naming_its_line(tmp_path: Path) -> None:
    text = list_bomb()
    assert len(text) < 1100
    path = tmp_path / "bomb.yaml"
    path.write_text(text)
    with pytest.raises(PlanError) as caught:
        load_plans([path])
    (problem,) = caught.value.problems
    assert problem.source is not None and problem.source.line > 4
    assert "expand to" in problem.message


def test_a_list_inside_a_list_is_refused() -> None:
    text = "apiVersion: v1\nkind: List\nitems:\n- apiVersion: v1\n  kind: List\n  items: []\n"
    problem = only_problem(text)
    assert problem.message == "a List inside a List is not read"
    assert problem.source is not None and (problem.source.line, problem.source.path) == (
        5,
        "items[0].kind",
    )


def test_an_alias_inside_its_own_anchor_is_refused() -> None:
    text = (
        "apiVersion: vmstorage.dev/v1alpha1\nkind: StoragePlan\nmetadata: {name: p}\n"
        "spec: &s {namespace: ns, storageClass: sc, x: *s}\n"
    )
    problem = only_problem(text)
    assert "refers to a node that contains it" in problem.message
    assert problem.source is not None and problem.source.line == 4


def test_modest_aliases_and_merge_keys_still_work() -> None:
    one = (
        "apiVersion: vmstorage.dev/v1alpha1\nkind: StoragePlan\nmetadata: {name: one}\n"
        "spec: {<<: &d {namespace: ns, storageClass: sc}, virtualMachines: &vms [{name: a}]}\n"
    )
    assert [p.name for p in parse_plans(one)] == ["one"]
    listed = f"apiVersion: v1\nkind: List\nitems:\n- &p {PLAN}\n- *p\n"
    with pytest.raises(PlanError, match="defined twice"):  # read twice, like written twice
        parse_plans(listed)
