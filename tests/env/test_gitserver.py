"""The local Git server serves its repositories over smart HTTP, as a Git host would."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest
import requests

from testenv.gitserver import GitServer, GitServerError


def git(*args: str) -> str:
    return subprocess.run(
        ["git", *args], capture_output=True, text=True, check=True, timeout=60
    ).stdout


def test_a_commit_is_served_to_clones_and_fetches(tmp_path: Path) -> None:
    with GitServer(tmp_path / "srv") as server:
        repo = server.create_repository("fleet")
        first = repo.commit({"apps/cm.yaml": "one\n"}, "first")
        git("clone", "--quiet", repo.url, str(tmp_path / "clone"))
        second = repo.commit({"apps/cm.yaml": "two\n", "old.yaml": None}, "second")
        git("-C", str(tmp_path / "clone"), "pull", "--quiet")

        assert (tmp_path / "clone/apps/cm.yaml").read_text() == "two\n"
        assert git("-C", str(tmp_path / "clone"), "rev-parse", "HEAD").strip() == second
        assert first != second
        assert repo.flux_revision() == f"main@sha1:{second}"
        assert repo.url.startswith("http://127.0.0.1:")


def test_an_unknown_repository_is_not_found_and_nothing_is_served_after_stop(
    tmp_path: Path,
) -> None:
    server = GitServer(tmp_path / "srv")
    server.start()
    url = server.url
    missing = requests.get(f"{url}/nope.git/info/refs?service=git-upload-pack", timeout=10)
    server.stop()

    assert missing.status_code == 404
    with pytest.raises(requests.ConnectionError):
        requests.get(f"{url}/", timeout=2)


def test_a_repository_name_must_be_a_plain_name(tmp_path: Path) -> None:
    with GitServer(tmp_path / "srv") as server, pytest.raises(GitServerError, match="use"):
        server.create_repository("../escape")
