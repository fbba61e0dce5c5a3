"""Exit codes mean what the README says (issue 7, item 6): an unexpected exception is an
"internal error" (traceback only with --debug), exit 2 before any cluster client exists; a
broken pipe, a closed stdout or a full disk end quietly; no plans at all is bad input."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from reconciler.cli import validate
from reconciler.cli.main import main

ROOT = Path(__file__).resolve().parents[2]
PLANS = str(ROOT / "plans")


def run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    rc = main(list(argv))
    out, err = capsys.readouterr()
    return rc, out, err


def explode(*args: object, **kwargs: object) -> None:
    raise RuntimeError("something nobody expected")


def test_an_unexpected_exception_is_an_internal_error_exit_2_without_a_traceback(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(validate, "read_plans", explode)
    rc, out, err = run(capsys, "validate", PLANS)
    assert rc == 2
    assert err.startswith("error: internal error: RuntimeError: something nobody expected\n")
    assert "rerun with --debug" in err
    assert "Traceback" not in err
    assert out == ""


def test_debug_shows_the_traceback_of_an_internal_error(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(validate, "read_plans", explode)
    rc, _, err = run(capsys, "validate", PLANS, "--debug")
    assert rc == 2
    assert "Traceback (most recent call last)" in err
    assert "in explode" in err


def cli(*argv: str, **kwargs: Any) -> subprocess.CompletedProcess[bytes]:
    result: subprocess.CompletedProcess[bytes] = subprocess.run(
        [sys.executable, "-m", "reconciler", *argv], cwd=ROOT, timeout=60, check=False, **kwargs
    )
    return result


def test_a_broken_pipe_ends_quietly() -> None:
    process = subprocess.Popen(
        [sys.executable, "-m", "reconciler", "validate", PLANS],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    assert process.stdout is not None and process.stderr is not None
    process.stdout.close()  # the reader is gone before anything was written: `| head -0`
    err = process.stderr.read()
    assert process.wait(timeout=60) == 2
    assert err == b""


def test_a_closed_stdout_ends_quietly() -> None:
    result = subprocess.run(
        ["sh", "-c", f'exec "{sys.executable}" -m reconciler validate "{PLANS}" >&-'],
        cwd=ROOT,
        capture_output=False,
        stderr=subprocess.PIPE,
        timeout=60,
        check=False,
    )
    assert result.stderr == b""
    assert result.returncode == 0  # the plans are valid; there was just nowhere to say so


@pytest.mark.skipif(not Path("/dev/full").exists(), reason="needs /dev/full")
def test_a_full_disk_is_one_line_and_exit_2() -> None:
    with open("/dev/full", "w") as full:
        result = cli("validate", PLANS, stdout=full, stderr=subprocess.PIPE)
    assert result.returncode == 2
    assert result.stderr == b"error: cannot write the output: No space left on device\n"


@pytest.mark.parametrize("command", ["plan", "apply"])
def test_no_plans_at_all_is_bad_input_before_any_request(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], command: str
) -> None:
    empty = tmp_path / "empty.yaml"
    empty.write_text("---\n# nothing yet\n")
    kubeconfig = tmp_path / "kubeconfig"  # nothing listens there: a request would be exit 6
    kubeconfig.write_text(
        "clusters: [{name: c, cluster: {server: 'https://127.0.0.1:9'}}]\n"
        "users: [{name: u, user: {token: t}}]\n"
        "contexts: [{name: x, context: {cluster: c, user: u}}]\ncurrent-context: x\n"
    )
    rc, _, err = run(capsys, command, str(empty), "--kubeconfig", str(kubeconfig))
    assert rc == 2, err
    assert f"no plans in {empty}" in err
    assert "Observing" not in err
