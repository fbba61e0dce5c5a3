"""Messages stay readable (issue 7, item 8): echoed values are escaped and cut, conflict
reports are linear, a duration too large for the clock is an error on its field, unicode
digits are not digits, ``timeZone: ""`` is an error, and a blank allow-list is an error."""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from reconciler.cli.main import main
from reconciler.model.errors import ClusterError, PlanError, Problem
from reconciler.plans.load import parse_plans


def run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    rc = main(list(argv))
    out, err = capsys.readouterr()
    return rc, out, err


def plan(spec: str = "", name: str = "p", vm: str = "vm1", storage_class: str = "new") -> str:
    return (
        f"apiVersion: vmstorage.dev/v1alpha1\nkind: StoragePlan\nmetadata: {{name: {name}}}\n"
        f"spec:\n  namespace: ns\n  storageClass: {storage_class}\n"
        f"  virtualMachines: [{{name: {vm}}}]\n{spec}"
    )


def problems(text: str) -> list[Problem]:
    with pytest.raises(PlanError) as caught:
        parse_plans(text, "p.yaml")
    return list(caught.value.problems)


def test_terminal_escapes_in_plan_values_are_shown_escaped(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / "p.yaml"
    path.write_text(plan(vm='"vm\\e]0;pwned\\a\\e[2J\\u202e"'))
    rc, _, err = run(capsys, "validate", str(path))
    assert rc == 2
    assert "\x1b" not in err and "\x07" not in err and "\u202e" not in err
    assert "vm\\x1b]0;pwned\\x07\\x1b[2J\\u202e" in err


def test_long_values_are_cut_in_messages() -> None:
    (problem,) = problems(plan(vm="v" * 100_000))
    assert len(problem.message) < 2100
    assert "more characters)" in problem.message


def test_cluster_messages_are_escaped_and_cut() -> None:
    error = ClusterError("VirtualMachine/ns/vm", "denied: \x1b[31m" + "x" * 10_000)
    assert "\x1b" not in str(error) and "\\x1b[31m" in str(error)
    assert len(str(error)) < 2200


def test_conflicts_are_linear_one_problem_per_later_plan() -> None:
    text = "---\n".join(plan(name=f"p{i}", storage_class=f"class-{i}") for i in range(3000))
    started = time.monotonic()
    found = problems(text)
    assert time.monotonic() - started < 30
    assert len(found) == 2999
    assert all("plan 'p0'" in p.message for p in found)
    assert sum(len(str(p)) for p in found) < 2_000_000


def test_a_duration_too_large_for_the_clock_is_an_error_on_its_field_and_others_remain() -> None:
    found = problems(plan("  timeout: 99999999999999999999d\n  mode: Sometimes\n"))
    assert [(p.source.path if p.source else "", p.message) for p in found] == [
        ("spec.timeout", "invalid timeout '99999999999999999999d': longer than ten years (3650d)"),
        ("spec.mode", "invalid mode 'Sometimes'"),
    ]


@pytest.mark.parametrize(
    ("spec", "path"),
    [
        ('  timeout: "\u0664h"\n', "spec.timeout"),  # ARABIC-INDIC DIGIT FOUR
        ('  window: {start: "\u0661\u0662:00", duration: 1h}\n', "spec.window.start"),
        ('  window: {start: "01:00", duration: "\uff11h"}\n', "spec.window.duration"),  # FULLWIDTH
    ],
)
def test_unicode_digits_are_not_digits(spec: str, path: str) -> None:
    (problem,) = problems(plan(spec))
    assert problem.source is not None and problem.source.path == path


def test_an_empty_time_zone_is_an_error() -> None:
    (problem,) = problems(plan('  window: {start: "01:00", duration: 1h, timeZone: ""}\n'))
    assert problem.source is not None and problem.source.path == "spec.window.timeZone"
    assert "empty" in problem.hint


@pytest.mark.parametrize("flag", ["", " "])
def test_a_blank_allow_namespace_flag_is_an_error(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], flag: str
) -> None:
    path = tmp_path / "p.yaml"
    path.write_text(plan())
    rc, _, err = run(capsys, "validate", str(path), "--allow-namespace", flag)
    assert rc == 2
    assert "--allow-namespace '': a blank namespace in the allow-list" in err


@pytest.mark.parametrize("value", ["", " ", "ns,", ",ns"])
def test_a_blank_allowed_namespaces_variable_is_an_error(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch, value: str
) -> None:
    path = tmp_path / "p.yaml"
    path.write_text(plan())
    monkeypatch.setenv("VMSR_ALLOWED_NAMESPACES", value)
    rc, _, err = run(capsys, "validate", str(path))
    assert rc == 2
    assert "a blank namespace in the allow-list" in err
    monkeypatch.setenv("VMSR_ALLOWED_NAMESPACES", "ns")
    assert run(capsys, "validate", str(path))[0] == 0
    monkeypatch.delenv("VMSR_ALLOWED_NAMESPACES")
    assert run(capsys, "validate", str(path))[0] == 0
