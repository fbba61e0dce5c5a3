"""Issue 18 item 8, the parts without a cluster: kubectl's habits.

Each command's ``--help`` lists only the exit codes it can return and shows every default;
descriptions are wrapped; ``-o json`` is indented (``--compact`` for one line); the
kubeconfig context's namespace is where a document without one acts when ``-n`` is not given.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import pytest
import yaml

from reconciler.cli.common import COMMAND_EXIT_CODES, HelpFormatter
from reconciler.cli.main import build_parser, main
from reconciler.kube.kubeconfig import context_namespace
from reconciler.model.errors import EXIT_CODE_TABLE
from reconciler.plans.load import load_plans

COMMANDS = ("validate", "plan", "apply", "run", "status", "sources", "prune", "cancel")
KMC_PLAN = """\
apiVersion: migrations.kubevirt.io/v1alpha1
kind: VirtualMachineStorageMigrationPlan
metadata: {name: test-plan}
spec:
  virtualMachines:
    - name: simple-vm
      targetMigrationPVCs:
        - volumeName: dv-disk
          destinationPVC: {name: test-pvc, storageClassName: storageclass-b}
"""


def help_of(capsys: pytest.CaptureFixture[str], *argv: str) -> str:
    with pytest.raises(SystemExit) as exited:
        main([*argv, "--help"])
    assert exited.value.code == 0
    return capsys.readouterr().out


def subparsers() -> dict[str, argparse.ArgumentParser]:
    parser = build_parser()
    (commands,) = [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)]
    return dict(commands.choices)


def codes_listed(text: str) -> list[int]:
    section = text.split("exit codes:\n", 1)[1]
    return [int(line.split()[0]) for line in section.splitlines() if line[2:3].isdigit()]


@pytest.mark.parametrize(
    ("command", "codes"),
    [
        ("validate", [0, 2]),
        ("plan", [0, 1, 2, 6, 7]),
        ("apply", [0, 1, 2, 3, 4, 5, 6, 7]),
        ("run", [0, 2, 6]),
        ("status", [0, 1, 2, 6]),
        ("cancel", [0, 1, 2, 3, 4, 6]),
        ("sources", [0, 2, 6]),
        ("prune", [0, 2, 4, 6]),
    ],
)
def test_each_commands_help_lists_only_the_exit_codes_it_can_return(
    capsys: pytest.CaptureFixture[str], command: str, codes: list[int]
) -> None:
    assert codes_listed(help_of(capsys, command)) == codes


def test_every_command_has_its_codes_and_they_are_in_the_one_table(
    capsys: pytest.CaptureFixture[str],
) -> None:
    assert set(COMMAND_EXIT_CODES) == set(subparsers()) == set(COMMANDS)
    table = {row.code for row in EXIT_CODE_TABLE}
    for rows in COMMAND_EXIT_CODES.values():
        assert {code for code, _ in rows} <= table
    assert codes_listed(help_of(capsys)) == sorted(int(c) for c in table)  # the program's


def test_every_default_is_shown(capsys: pytest.CaptureFixture[str]) -> None:
    missing = []
    for name, parser in subparsers().items():
        formatter = HelpFormatter(parser.prog)
        for action in parser._actions:
            takes_value = action.option_strings and action.nargs != 0 and not action.required
            if takes_value and "default" not in formatter._get_help_string(action):
                missing.append(f"{name} {action.option_strings[-1]}")
    assert missing == []
    text = help_of(capsys, "apply")
    assert "failed KubeVirt migrations of one VM before it is rolled back (default: 3)" in " ".join(
        text.split()
    )


@pytest.mark.parametrize("command", ("", *COMMANDS))
def test_help_is_wrapped_to_the_terminal(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch, command: str
) -> None:
    monkeypatch.setenv("COLUMNS", "80")
    text = help_of(capsys, *([command] if command else []))
    long = [line for line in text.splitlines() if len(line) > 80]
    assert long == []


def test_json_is_indented_unless_compact(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / "p.yaml"
    path.write_text(KMC_PLAN)
    assert main(["validate", "-n", "apps", str(path), "-o", "json"]) == 0
    indented = capsys.readouterr().out
    assert indented.startswith('{\n  "apiVersion"')
    assert main(["validate", "-n", "apps", str(path), "-o", "json", "--compact"]) == 0
    compact = capsys.readouterr().out
    assert compact.count("\n") == 1 and json.loads(compact) == json.loads(indented)


def kubeconfig(tmp_path: Path, namespace: str | None) -> Path:
    context: dict[str, str] = {"cluster": "c", "user": "u"}
    if namespace:
        context["namespace"] = namespace
    path = tmp_path / "kubeconfig"
    path.write_text(
        yaml.safe_dump(
            {
                "apiVersion": "v1",
                "kind": "Config",
                "clusters": [{"name": "c", "cluster": {"server": "https://127.0.0.1:1"}}],
                "users": [{"name": "u", "user": {"token": "t"}}],
                "contexts": [
                    {"name": "main", "context": context},
                    {"name": "other", "context": {"cluster": "c", "namespace": "other"}},
                ],
                "current-context": "main",
            }
        )
    )
    return path


def test_the_kubeconfig_contexts_namespace(tmp_path: Path) -> None:
    path = str(kubeconfig(tmp_path, "apps"))
    assert context_namespace(path, None) == "apps"
    assert context_namespace(path, "other") == "other"
    assert context_namespace(path, "nope") is None  # the client says what is wrong
    assert context_namespace(str(kubeconfig(tmp_path, None)), None) is None
    assert context_namespace(str(tmp_path / "missing"), None) is None


def test_a_document_without_a_namespace_acts_in_the_contexts_unless_n_says_otherwise(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / "p.yaml"
    path.write_text(KMC_PLAN + "---\n" + KMC_PLAN.replace("test-plan}", "there, namespace: db}"))
    (plan, there) = load_plans([path], default_namespace="apps")
    assert (plan.namespace, there.namespace) == ("apps", "db"), "a document's own wins"
    config = str(kubeconfig(tmp_path, "apps"))

    assert main(["validate", str(path), "--kubeconfig", config]) == 0
    assert "test-plan (namespace apps)" in capsys.readouterr().out
    assert main(["validate", str(path), "--kubeconfig", config, "-n", "web"]) == 2, (
        "-n wins, and a document naming another namespace is refused (kubectl's rule)"
    )
    assert "does not match the namespace 'web'" in capsys.readouterr().err
    assert main(["validate", str(path)]) == 2, "validate reads no kubeconfig unless asked"
    assert "missing required field 'namespace'" in capsys.readouterr().err
