"""Hostile plan files (issue 7, item 1): only regular files inside a plans directory are read,
symlinks escaping it are refused without reading them, plan files are size-capped, and a
symlink loop says so."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from reconciler.cli.main import main
from reconciler.model.errors import PlanError
from reconciler.plans.files import MAX_PLAN_BYTES, plan_files
from reconciler.plans.load import load_plans

GOOD = """\
apiVersion: vmstorage.dev/v1alpha1
kind: StoragePlan
metadata:
  name: good
spec:
  namespace: mig-vm
  storageClass: ceph-rbd
  virtualMachines:
    - name: vm-fedora
"""
SECRET = "eyJhbGciOiJSUzI1NiJ9.c2VjcmV0LXRva2VuLXZhbHVl.c2lnbmF0dXJl"


def run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    rc = main(list(argv))
    out, err = capsys.readouterr()
    return rc, out, err


def plans_dir(tmp_path: Path) -> Path:
    root = tmp_path / "plans"
    root.mkdir()
    (root / "good.yaml").write_text(GOOD)
    return root


def messages(paths: list[Path]) -> list[str]:
    with pytest.raises(PlanError) as caught:
        load_plans(paths)
    return [p.message for p in caught.value.problems]


@pytest.mark.parametrize("device", ["/dev/zero", "/dev/urandom"])
def test_a_symlink_to_a_device_inside_a_directory_is_refused_not_read(
    tmp_path: Path, device: str
) -> None:
    root = plans_dir(tmp_path)
    (root / "zero.yaml").symlink_to(device)
    assert messages([root]) == [f"{root / 'zero.yaml'}: not a regular file"]


def test_a_fifo_inside_a_directory_is_refused_without_blocking(tmp_path: Path) -> None:
    root = plans_dir(tmp_path)
    os.mkfifo(root / "pipe.yaml")  # opening it for reading would wait for a writer forever
    assert messages([root]) == [f"{root / 'pipe.yaml'}: not a regular file"]


def test_a_symlink_escaping_the_root_is_refused_and_its_content_never_echoed(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    token = tmp_path / "serviceaccount" / "token"
    token.parent.mkdir()
    token.write_text(SECRET)
    root = plans_dir(tmp_path)
    (root / "token.yaml").symlink_to(token)
    for output in ("text", "json"):
        rc, out, err = run(capsys, "validate", str(root), "-o", output)
        assert rc == 2
        assert SECRET not in out + err
        assert "secret" not in (out + err).lower()
        assert "symlink that leads outside" in err
    doc = json.loads(out)
    assert [p["message"] for p in doc["problems"]] == [
        f"{root / 'token.yaml'}: a symlink that leads outside {root}; refused (not read)"
    ]


def test_a_symlink_inside_the_root_is_read(tmp_path: Path) -> None:
    root = plans_dir(tmp_path)
    (root / "sub").mkdir()
    (root / "sub" / "alias.yml").symlink_to(root / "good.yaml")
    assert [p.name for p in load_plans([root])] == ["good"]


def test_a_plan_file_over_the_size_cap_is_refused(tmp_path: Path) -> None:
    root = plans_dir(tmp_path)
    big = root / "big.yaml"
    big.write_text(GOOD + "# padding\n" * (MAX_PLAN_BYTES // 10 + 1))
    (found,) = messages([root])
    assert found.startswith(f"{big}: 1.0 MB, more than the 1 MiB a plan file may have")
    with pytest.raises(PlanError):
        load_plans([big])  # named on the command line: the same cap


def test_a_symlink_loop_says_symlink_loop(tmp_path: Path) -> None:
    root = plans_dir(tmp_path)
    (root / "a.yaml").symlink_to(root / "b.yaml")
    (root / "b.yaml").symlink_to(root / "a.yaml")
    assert messages([root]) == [
        f"{root / 'a.yaml'}: symlink loop",
        f"{root / 'b.yaml'}: symlink loop",
    ]
    with pytest.raises(PlanError) as caught:
        plan_files([root / "a.yaml"])
    assert [p.message for p in caught.value.problems] == [f"{root / 'a.yaml'}: symlink loop"]
