"""Plans from Git (reconciler.gitsource) with real local repositories and the real git CLI.

A directory's commit (a plain checkout, a sub-directory, git-sync's worktree-and-link layout,
no repository at all); ``--git-repo`` fetches into a cache (a branch, a tag, a SHA; a new
commit changes the checkout, deleted files go); bad refs, paths and URLs are bad input, an
unreachable or hanging remote a GitError within its timeout, and no message or cache file
carries the credentials of the URL.
"""

from __future__ import annotations

import socket
import time
from collections.abc import Iterator
from pathlib import Path

import psutil
import pytest

from reconciler import engine
from reconciler.gitsource import GitError, GitSpec, checkout, head_of, redact, resolve
from reconciler.model.errors import UserError
from tests.support.gitrepo import PlansRepo, git, git_sync

PLAN = "apiVersion: vmstorage.dev/v1alpha1\nkind: StoragePlan\nmetadata: {name: p}\n"


@pytest.fixture
def repo(tmp_path: Path) -> PlansRepo:
    return PlansRepo(tmp_path / "plans-repo")


def spec(repo: PlansRepo, tmp_path: Path, **kwargs: object) -> GitSpec:
    return GitSpec(url=repo.url, cache=tmp_path / "cache", **kwargs)  # type: ignore[arg-type]


def test_a_plain_directory_has_no_commit(tmp_path: Path) -> None:
    (tmp_path / "p.yaml").write_text(PLAN)
    assert head_of(tmp_path) == (None, "")
    assert resolve([tmp_path]).commit is None


def test_a_checkout_and_its_sub_directories_record_head(repo: PlansRepo) -> None:
    sha = repo.commit({"team/p.yaml": PLAN})
    assert head_of(repo.path)[0] == sha
    assert head_of(repo.path / "team")[0] == sha
    assert head_of(repo.path / "team" / "p.yaml")[0] == sha, "a file: its directory's repo"


def test_git_sync_layout_records_the_synced_commit(repo: PlansRepo, tmp_path: Path) -> None:
    first = repo.commit({"p.yaml": PLAN})
    link = git_sync(repo, tmp_path / "plans")
    assert link.is_symlink() and (link / "p.yaml").is_file()
    assert resolve([link]).commit == first
    second = repo.commit({"q.yaml": PLAN})
    git_sync(repo, tmp_path / "plans")
    assert resolve([link]).commit == second, "the link moved to the new worktree"


def test_a_repository_without_commits_says_so(tmp_path: Path) -> None:
    git("init", "--quiet", str(tmp_path / "empty"))
    sha, note = head_of(tmp_path / "empty")
    assert sha is None and note


def test_several_repositories_give_every_commit(tmp_path: Path) -> None:
    a, b = PlansRepo(tmp_path / "a"), PlansRepo(tmp_path / "b")
    sha_a, sha_b = a.commit({"a.yaml": PLAN}), b.commit({"b.yaml": PLAN})
    assert resolve([a.path, b.path, a.path]).commit == f"{sha_a},{sha_b}"


def test_fetch_checks_out_the_branch_and_a_new_commit_changes_it(
    repo: PlansRepo, tmp_path: Path
) -> None:
    first = repo.commit({"plans/a.yaml": PLAN, "plans/old.yaml": PLAN})
    root, sha = checkout(spec(repo, tmp_path, path="plans"))
    assert sha == first
    assert sorted(p.name for p in root.iterdir()) == ["a.yaml", "old.yaml"]

    second = repo.commit({"plans/b.yaml": PLAN, "plans/old.yaml": None})
    (root / "stray.yaml").write_text("left by someone")
    root2, sha2 = checkout(spec(repo, tmp_path, path="plans"))
    assert (root2, sha2) == (root, second), "same cache entry, new commit"
    assert sorted(p.name for p in root.iterdir()) == ["a.yaml", "b.yaml"], "deleted and stray gone"


def test_fetch_by_tag_and_by_full_sha(repo: PlansRepo, tmp_path: Path) -> None:
    first = repo.commit({"p.yaml": "one"})
    repo.tag("v1")
    repo.commit({"p.yaml": "two"})
    root, sha = checkout(spec(repo, tmp_path, ref="v1"))
    assert (sha, (root / "p.yaml").read_text()) == (first, "one")
    root, sha = checkout(spec(repo, tmp_path, ref=first))
    assert (sha, (root / "p.yaml").read_text()) == (first, "one")


def test_the_cache_keeps_no_url(repo: PlansRepo, tmp_path: Path) -> None:
    repo.commit({"p.yaml": PLAN})
    root, _ = checkout(spec(repo, tmp_path))
    assert not (root / ".git" / "FETCH_HEAD").exists()
    assert repo.url not in (root / ".git" / "config").read_text()


def test_an_unknown_ref_is_bad_input(repo: PlansRepo, tmp_path: Path) -> None:
    repo.commit({"p.yaml": PLAN})
    with pytest.raises(UserError, match=r"--git-ref nope: .* has no such branch, tag or commit"):
        checkout(spec(repo, tmp_path, ref="nope"))
    with pytest.raises(UserError, match="no such branch"):
        checkout(spec(repo, tmp_path, ref="0" * 40))


def test_no_repository_at_the_url_is_bad_input(tmp_path: Path) -> None:
    missing = GitSpec(url=str(tmp_path / "nothing-here"), cache=tmp_path / "cache")
    with pytest.raises(UserError, match="no repository there"):
        checkout(missing)


@pytest.mark.parametrize("path", ["../..", "/etc", "sub/../../.."])
def test_a_git_path_outside_the_checkout_is_refused(
    repo: PlansRepo, tmp_path: Path, path: str
) -> None:
    repo.commit({"sub/p.yaml": PLAN})
    with pytest.raises(UserError, match="leads outside the repository"):
        checkout(spec(repo, tmp_path, path=path))


def test_a_missing_git_path_is_bad_input(repo: PlansRepo, tmp_path: Path) -> None:
    repo.commit({"p.yaml": PLAN})
    with pytest.raises(UserError, match="--git-path plans: no such file or directory"):
        checkout(spec(repo, tmp_path, path="plans"))


@pytest.mark.parametrize(
    ("url", "ref"),
    [
        ("--upload-pack=touch /tmp/x", "main"),
        ("https://h/r.git", "--upload-pack=x"),
        ("https://h/r.git", "main\nHEAD"),
        ("", "main"),
    ],
)
def test_options_in_disguise_are_refused(tmp_path: Path, url: str, ref: str) -> None:
    with pytest.raises(UserError, match="not valid"):
        checkout(GitSpec(url=url, ref=ref, cache=tmp_path / "cache"))


def test_paths_and_git_repo_together_are_refused(repo: PlansRepo, tmp_path: Path) -> None:
    with pytest.raises(UserError, match="plan paths and --git-repo given together"):
        resolve([tmp_path], spec(repo, tmp_path))


def test_no_paths_and_no_git_repo_is_bad_input() -> None:
    with pytest.raises(UserError, match="no plans given"):
        engine.plan_source([], None)


@pytest.mark.parametrize(
    ("text", "shown"),
    [
        ("https://user:s3cret@host/r.git", "https://host/r.git"),
        ("fatal: unable to access 'http://tok@127.0.0.1:1/x.git/'", "'http://127.0.0.1:1/x.git/'"),
        ("ssh://git@host:22/r and HTTPS://a:b@c/d", "ssh://host:22/r and HTTPS://c/d"),
        ("https://host/org/repo@v1 git@host:org/r.git", "https://host/org/repo@v1 git@host:org/r"),
    ],
)
def test_redact_strips_userinfo_only(text: str, shown: str) -> None:
    assert shown in redact(text)
    assert "s3cret" not in redact(text) and ":b@" not in redact(text)


@pytest.fixture
def silent_server() -> Iterator[int]:
    """A TCP port that accepts connections (the kernel's backlog) and never answers."""
    with socket.socket() as server:
        server.bind(("127.0.0.1", 0))
        server.listen(8)
        yield int(server.getsockname()[1])


def test_a_hanging_remote_is_killed_at_the_timeout_and_no_secret_shows(
    silent_server: int, tmp_path: Path
) -> None:
    url = f"http://reader:s3cret-token@127.0.0.1:{silent_server}/plans.git"
    started = time.monotonic()
    with pytest.raises(GitError) as caught:
        checkout(GitSpec(url=url, cache=tmp_path / "cache", timeout=1.0))
    took = time.monotonic() - started
    assert took < 10, f"the timeout was not enforced ({took:.1f}s)"
    message = str(caught.value)
    assert "no answer within 1s (killed)" in message
    assert "s3cret" not in message and "reader" not in message, message
    assert f"127.0.0.1:{silent_server}" in message
    leftovers = [
        p
        for p in psutil.process_iter(["cmdline"])
        if str(silent_server) in " ".join(p.info["cmdline"] or ())
    ]
    assert not leftovers, f"git processes left behind: {leftovers}"


def test_an_unreachable_remote_is_a_git_error_without_the_secret(tmp_path: Path) -> None:
    with socket.socket() as probe:  # a port nobody listens on
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    url = f"https://reader:s3cret-token@127.0.0.1:{port}/plans.git"
    with pytest.raises(GitError) as caught:
        checkout(GitSpec(url=url, cache=tmp_path / "cache", timeout=20))
    assert caught.value.exit_code == 6
    assert "s3cret" not in str(caught.value) and "reader" not in str(caught.value)


def test_without_git_a_checkout_says_so_and_a_plain_directory_stays_quiet(
    repo: PlansRepo, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    repo.commit({"p.yaml": PLAN})
    (tmp_path / "plain").mkdir()
    monkeypatch.setenv("PATH", str(tmp_path / "no-binaries-here"))
    sha, note = head_of(repo.path)
    assert sha is None and "git is not installed" in note
    assert head_of(tmp_path / "plain") == (None, "")
    with pytest.raises(UserError, match="git is not installed"):
        checkout(spec(repo, tmp_path))
