"""The step registry (``apply.machine.STEPS``): every ``Step`` of every flow has exactly one
function, checked when the module is imported (``IncompleteSteps``, not an ``assert`` that
``python -O`` would drop). And the failure ids: one catalog (``model.failures``), which every
``StepFailed`` of `apply` names."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

import reconciler.apply
from reconciler.apply import machine, migration, source_steps, target_steps, verify, vm_steps
from reconciler.apply.context import MoveRun
from reconciler.apply.machine import STEPS, IncompleteSteps, registry
from reconciler.model.failures import FAILURES, Failure
from reconciler.model.journal import FORWARD, ROLLBACK, Journal, Step

TABLES = (vm_steps.STEPS, target_steps.STEPS, source_steps.STEPS, migration.STEPS, verify.STEPS)


def test_every_step_of_every_sequence_has_a_function() -> None:
    every = {s for flows in (FORWARD, ROLLBACK) for steps in flows.values() for s in steps}
    assert every == set(Step), "a Step that no sequence takes"
    assert set(STEPS) == set(Step)
    assert all(callable(fn) for fn in STEPS.values())
    assert all(isinstance(step, Step) for table in TABLES for step in table)


def test_each_step_module_owns_its_steps() -> None:
    assert STEPS[Step.SWAP] is vm_steps.STEPS[Step.SWAP]
    assert STEPS[Step.WAIT_MIGRATION] is migration.STEPS[Step.WAIT_MIGRATION]
    assert STEPS[Step.DELETE_SOURCES] is source_steps.STEPS[Step.DELETE_SOURCES]
    assert STEPS[Step.VERIFY] is verify.STEPS[Step.VERIFY]


def _noop(run: MoveRun, journal: Journal) -> Journal:
    return journal


def test_a_missing_step_is_refused_by_name() -> None:
    without_verify = [t for t in TABLES if Step.VERIFY not in t]
    with pytest.raises(IncompleteSteps, match="no implementation: verify"):
        registry(without_verify)


def test_a_step_implemented_twice_is_refused_by_name() -> None:
    with pytest.raises(IncompleteSteps, match="two implementations: swap"):
        registry([*TABLES, {Step.SWAP: _noop}])


def test_the_registry_is_checked_when_machine_is_imported() -> None:
    source = Path(machine.__file__).read_text()
    tree = ast.parse(source)
    assert not any(isinstance(node, ast.Assert) for node in ast.walk(tree)), "no assert"
    assigned = [
        node
        for node in tree.body
        if isinstance(node, ast.AnnAssign)
        and isinstance(node.target, ast.Name)
        and node.target.id == "STEPS"
    ]
    assert assigned, "STEPS is assigned at module level"
    call = assigned[0].value
    assert isinstance(call, ast.Call) and isinstance(call.func, ast.Name)
    assert call.func.id == "registry", "built (and so checked) by registry() at import"


def test_every_failure_id_is_described() -> None:
    assert set(FAILURES) == set(Failure)
    assert all(text.strip().endswith(".") for text in FAILURES.values())
    assert len({f.value for f in Failure}) == len(Failure), "ids are unique"


def _step_failures(path: Path) -> list[tuple[int, ast.expr]]:
    """The first argument of every ``StepFailed(...)`` call in the file."""
    found = []
    for node in ast.walk(ast.parse(path.read_text())):
        if (
            isinstance(node, ast.Call)
            and isinstance(node.func, ast.Name)
            and node.func.id == "StepFailed"
            and node.args
        ):
            found.append((node.lineno, node.args[0]))
    return found


def test_every_failure_apply_raises_is_from_the_catalog() -> None:
    """No rule id spelled as a string literal in `apply`: each is ``Failure.X`` (or a
    parameter typed ``Failure``, which mypy checks)."""
    package = Path(reconciler.apply.__file__).parent
    literals = []
    named = 0
    for path in sorted(package.glob("*.py")):
        for line, arg in _step_failures(path):
            if isinstance(arg, ast.Constant):
                literals.append(f"{path.name}:{line}: {arg.value!r}")
            elif (
                isinstance(arg, ast.Attribute)
                and isinstance(arg.value, ast.Name)
                and arg.value.id == "Failure"
            ):
                assert arg.attr in Failure.__members__, f"{path.name}:{line}: {arg.attr}"
                named += 1
    assert literals == []
    assert named > 20, "the walk found the step failures"
