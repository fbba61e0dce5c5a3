"""The pre-commit hook this repository offers plans repositories (.pre-commit-hooks.yaml), tried
as a plans repository would: `pre-commit try-repo` in a real throwaway git repository, one good
commit (the hook passes) and one bad commit (it fails with the file:line error).

pre-commit installs this package into an environment of its own (`language: python`), with its
dependencies from PyPI, so a cold run needs PyPI. `try-repo` always builds that environment in a
temporary store (pre-commit's design: PRE_COMMIT_HOME holds only its database here), so what
makes warm runs quick is pip's wheel cache; both are kept outside the repository, in
~/.cache/vm-storage-reconciler/{pip,pre-commit} (or under $VMSR_CACHE_DIR). About 9 s warm.
Nothing here is skipped: if pre-commit or git cannot run, the test fails with the reason.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
HOOK = "vm-storage-reconciler-validate"
CACHE = Path(os.environ.get("VMSR_CACHE_DIR") or Path.home() / ".cache" / "vm-storage-reconciler")

GOOD = """\
apiVersion: vmstorage.dev/v1alpha1
kind: StoragePlan
metadata:
  name: fedora-to-ceph
spec:
  namespace: mig-vm
  storageClass: ceph-rbd
  mode: Live
  virtualMachines:
    - name: vm-fedora
"""
BAD = GOOD.replace("mode: Live", "mode: Sometimes")


def _pre_commit() -> str:
    """pre-commit from the venv of this interpreter (the dev extras), else from PATH."""
    beside = Path(sys.executable).with_name("pre-commit")
    found = str(beside) if beside.exists() else shutil.which("pre-commit")
    if found is None:
        pytest.fail(
            "pre-commit is not installed: it is in the dev extras (pip install -e '.[dev]', "
            "or make lint)"
        )
    return found


def _env(home: Path) -> dict[str, str]:
    env = {
        **os.environ,
        "PRE_COMMIT_HOME": str(CACHE / "pre-commit"),
        "PIP_CACHE_DIR": str(CACHE / "pip"),
        "PRE_COMMIT_COLOR": "never",
        # A git identity and config of the test's own, whatever the machine has.
        "HOME": str(home),
        "GIT_CONFIG_NOSYSTEM": "1",
        "GIT_AUTHOR_NAME": "Plans Author",
        "GIT_AUTHOR_EMAIL": "plans@example.invalid",
        "GIT_COMMITTER_NAME": "Plans Author",
        "GIT_COMMITTER_EMAIL": "plans@example.invalid",
    }
    env.pop("VIRTUAL_ENV", None)  # pre-commit builds its own environment
    return env


def _run(argv: list[str], cwd: Path, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    if shutil.which(argv[0]) is None and not Path(argv[0]).exists():
        pytest.fail(f"{argv[0]} is not installed; this test needs it")
    return subprocess.run(
        argv, cwd=cwd, env=env, capture_output=True, text=True, timeout=280, check=False
    )


def _git(repo: Path, env: dict[str, str], *args: str) -> str:
    done = _run(["git", *args], repo, env)
    assert done.returncode == 0, f"git {' '.join(args)} failed:\n{done.stdout}{done.stderr}"
    return done.stdout


def test_the_hook_passes_a_good_commit_and_fails_a_bad_one_naming_file_and_line(
    tmp_path: Path,
) -> None:
    pre_commit = _pre_commit()
    env = _env(tmp_path / "home")
    (tmp_path / "home").mkdir()
    repo = tmp_path / "plans-repo"
    (repo / "plans").mkdir(parents=True)
    _git(repo, env, "init", "-q", "-b", "main")
    plan = repo / "plans" / "fedora-to-ceph.yaml"

    plan.write_text(GOOD)
    _git(repo, env, "add", "plans/fedora-to-ceph.yaml")
    _git(repo, env, "commit", "-q", "-m", "good plan")
    good = _run([pre_commit, "try-repo", str(ROOT), HOOK, "--all-files"], repo, env)
    assert good.returncode == 0, f"the hook failed on a good plan:\n{good.stdout}{good.stderr}"
    assert "vm-storage-reconciler validate" in good.stdout
    assert "Passed" in good.stdout

    plan.write_text(BAD)
    _git(repo, env, "commit", "-q", "-am", "bad plan")
    # The files of the bad commit, as CI checks a pushed commit.
    bad = _run(
        [pre_commit, "try-repo", str(ROOT), HOOK, "--from-ref", "HEAD~1", "--to-ref", "HEAD"],
        repo,
        env,
    )
    assert bad.returncode == 1, f"the hook did not fail on a bad plan:\n{bad.stdout}{bad.stderr}"
    assert "Failed" in bad.stdout
    assert "error: plans/fedora-to-ceph.yaml:8: spec.mode: invalid mode 'Sometimes'" in bad.stdout
    assert "hint: one of: Auto, Live, Offline" in bad.stdout
    assert "1 problem; nothing was changed." in bad.stdout


def test_the_configs_are_valid_for_pre_commit(tmp_path: Path) -> None:
    pre_commit = _pre_commit()
    env = _env(tmp_path)
    for command, name in (
        ("validate-config", ".pre-commit-config.yaml"),
        ("validate-manifest", ".pre-commit-hooks.yaml"),
    ):
        done = _run([pre_commit, command, str(ROOT / name)], ROOT, env)
        assert done.returncode == 0, f"{name}:\n{done.stdout}{done.stderr}"
