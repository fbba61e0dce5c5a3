"""`make test` relies on pytest-xdist's ``--dist loadgroup`` sending every test of an
``xdist_group`` to one worker (tests/conftest.py puts each real-engine module in one group, so
its engine and module fixtures start once). pytest 9.2 with pytest-xdist 3.8 silently ignores
every group (xdist renames ``Node._nodeid``, pytest 9.2 reads ``Node._id``): this runs a
grouped module on 3 workers with the installed versions and fails if the group was split."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

MODULE = """
import os
import pytest

@pytest.mark.xdist_group("one")
@pytest.mark.parametrize("case", range(6))
def test_grouped(case):
    with open(os.environ["WORKERS_FILE"], "a") as out:
        out.write(os.environ["PYTEST_XDIST_WORKER"] + "\\n")
"""


def test_a_group_runs_on_one_worker(tmp_path: Path) -> None:
    (tmp_path / "test_grouped.py").write_text(MODULE)
    workers = tmp_path / "workers.txt"
    pytest = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider"]
    done = subprocess.run(
        [*pytest, "-n", "3", "--dist", "loadgroup", "--rootdir", str(tmp_path), str(tmp_path)],
        cwd=tmp_path,
        env={"WORKERS_FILE": str(workers), "PATH": "/usr/bin:/bin"},
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    ran_on = workers.read_text().split()
    assert len(ran_on) == 6, ran_on
    assert len(set(ran_on)) == 1, f"the group was split over workers {sorted(set(ran_on))}"
