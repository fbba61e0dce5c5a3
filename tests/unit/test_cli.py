"""The CLI without a cluster: `validate`, bad input, help and exit codes."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from reconciler.cli.apply import exit_code
from reconciler.cli.main import main
from reconciler.model.errors import ExitCode
from reconciler.model.journal import Flow
from reconciler.model.outcome import ROLLED_BACK, ApplyReport, Outcome
from reconciler.model.verdict import Effect, EmptyPlan, Finding

ROOT = Path(__file__).resolve().parents[2]

GOOD = """\
apiVersion: vmstorage.dev/v1alpha1
kind: StoragePlan
metadata:
  name: fedora-to-ceph
spec:
  namespace: mig-vm
  storageClass: ceph-rbd
  virtualMachines:
    - name: vm-fedora
"""


def run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    rc = main(list(argv))
    out, err = capsys.readouterr()
    return rc, out, err


def write(tmp_path: Path, name: str, text: str) -> Path:
    path = tmp_path / name
    path.write_text(text)
    return path


def test_validate_accepts_the_shipped_example_plans(capsys: pytest.CaptureFixture[str]) -> None:
    rc, out, err = run(capsys, "validate", str(ROOT / "plans"))
    assert rc == 0, err
    assert "plan(s) valid." in out
    assert "fedora-to-ceph (namespace mig-vm)" in out


def test_validate_json_lists_plans_with_their_source(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = write(tmp_path, "p.yaml", GOOD)
    rc, out, _ = run(capsys, "validate", str(path), "-o", "json")
    doc = json.loads(out)
    assert rc == 0 and doc["valid"] is True
    assert doc["plans"] == [
        {
            "name": "fedora-to-ceph",
            "namespace": "mig-vm",
            "kind": "StoragePlan",
            "file": str(path),
            "line": 4,
        }
    ]


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        # malformed YAML: the parser's line
        ("apiVersion: vmstorage.dev/v1alpha1\nkind: [StoragePlan\n", "p.yaml:"),
        # wrong type: names the field and the type
        (
            GOOD.replace("storageClass: ceph-rbd", "storageClass: [ceph-rbd]"),
            "p.yaml:7: spec.storageClass",
        ),
        # unknown field with a suggestion
        (GOOD.replace("storageClass:", "storageclass:"), "did you mean 'storageClass'?"),
        # bad name
        (GOOD.replace("name: vm-fedora", "name: VM_Fedora"), "p.yaml:9: spec.virtualMachines[0]"),
        # bad duration
        (GOOD + "  timeout: 2 hours\n", "spec.timeout"),
    ],
)
def test_bad_plan_files_exit_2_naming_file_line_and_field(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], text: str, expected: str
) -> None:
    path = write(tmp_path, "p.yaml", text)
    rc, out, err = run(capsys, "validate", str(path))
    assert rc == 2
    assert out == ""
    assert expected in err
    assert "nothing was changed" in err
    assert "Traceback" not in err


def test_two_plans_with_different_targets_for_one_volume_conflict(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    write(tmp_path, "a.yaml", GOOD)
    write(
        tmp_path,
        "b.yaml",
        GOOD.replace("fedora-to-ceph", "fedora-to-nfs").replace("ceph-rbd", "nfs"),
    )
    rc, _, err = run(capsys, "validate", str(tmp_path))
    assert rc == 2
    assert "a.yaml" in err and "b.yaml" in err


def test_plan_with_a_bad_plan_file_exits_2_before_touching_any_cluster(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """The kubeconfig does not even exist: the plan error must come first."""
    path = write(tmp_path, "p.yaml", GOOD.replace("StoragePlan", "StoragePlna"))
    rc, _, err = run(capsys, "plan", str(path), "--kubeconfig", str(tmp_path / "missing"))
    assert rc == 2
    assert "StoragePlna" in err and "kubeconfig" not in err


def test_plan_with_an_unreadable_kubeconfig_is_bad_input(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = write(tmp_path, "p.yaml", GOOD)
    rc, _, err = run(capsys, "plan", str(path), "--kubeconfig", str(tmp_path / "missing"))
    assert rc == 2
    assert "cannot load a kubeconfig" in err and "--kubeconfig" in err


def test_missing_path_is_bad_input(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    rc, _, err = run(capsys, "validate", str(tmp_path / "nope"))
    assert rc == 2 and "nope" in err


def test_help_documents_every_exit_code(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exited:
        main(["--help"])
    out, _ = capsys.readouterr()
    assert exited.value.code == 0
    for code in range(8):  # the program's help: the whole table
        assert f"\n  {code}  " in out
    with pytest.raises(SystemExit):
        main(["plan", "--help"])
    out, _ = capsys.readouterr()
    for code in (0, 1, 2, 6, 7):  # a command's: only the codes it can return
        assert f"\n  {code}  " in out
    assert "--server-dry-run" in out and "--show-manifests" in out


def test_bad_plans_with_json_output_are_reported_as_data_too(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = write(tmp_path, "p.yaml", GOOD.replace("storageClass:", "storageclass:"))
    rc, out, err = run(capsys, "validate", str(path), "-o", "json")
    assert rc == 2 and "unknown field" in err
    doc = json.loads(out)
    assert doc["kind"] == "Problems"
    assert len(doc["problems"]) == err.count("error: ")
    problem = next(p for p in doc["problems"] if p["field"] == "spec.storageclass")
    assert (problem["file"], problem["line"]) == (str(path), 7)
    assert "did you mean 'storageClass'?" in problem["hint"]


def test_apply_exits_7_when_a_plan_selected_nothing_unless_a_vm_failed() -> None:
    """A typo in a plan never reads as done (issue 18 item 2); a failed VM still says 3."""
    empty = EmptyPlan(
        "mig-vmm", "p", Finding("namespace-not-found", Effect.NOTHING_SELECTED, None, "...")
    )
    assert exit_code(ApplyReport(empty_plans=(empty,))) is ExitCode.NOTHING_SELECTED
    failed = Outcome(migration_id="m", plan="p", flow=Flow.LIVE, result=ROLLED_BACK)
    assert exit_code(ApplyReport(outcomes=(failed,), empty_plans=(empty,))) is ExitCode.VM_FAILED
    assert exit_code(ApplyReport()) is ExitCode.OK
