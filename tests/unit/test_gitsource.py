"""Plans from Git (reconciler.gitsource) with real local repositories and the real git CLI.

A directory's commit (a plain checkout, a sub-directory, git-sync's worktree-and-link layout,
no repository at all); ``--git-repo`` fetches into a cache (a branch, a tag, a SHA; a new
commit changes the checkout, deleted files go); bad refs, paths and URLs are bad input, an
unreachable or hanging remote a GitError within its timeout, and no message or cache file
carries the credentials of the URL.

Issue 14: credentials reach git through a credential helper reading git's environment, never a
command line (git's argv, recorded by a wrapper ``git`` first on PATH, and every command git
runs, recorded by ``GIT_TRACE``), from the URL, ``--git-credentials-file`` or
``$VMSR_GIT_PASSWORD``, against a local git server that demands basic auth; the user's own
helpers never see them, a redirect to another host gets nothing. A repository is bounded in
size (``max_bytes``): one over it is refused and its cache entry removed, an entry grown over
it by earlier fetches is fetched afresh.
"""

from __future__ import annotations

import base64
import dataclasses
import os
import shutil
import socket
import threading
import time
from collections.abc import Iterator
from http.server import ThreadingHTTPServer
from pathlib import Path
from typing import ClassVar

import psutil
import pytest

from reconciler import engine, gitsource
from reconciler.gitsource import GitError, GitSpec, checkout, head_of, resolve
from reconciler.model.errors import UserError
from testenv.gitserver import GitServer, _Handler
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


# -- credentials: never on a command line (issue 14, item 11) -------------------------------

USER = "reader"
PASSWORD = "s3cr3t/p@ss:word"  # '/', '@' and ':' in it: all of them broke the old redaction


class _AuthHandler(_Handler):
    """git-http-backend behind basic auth: 401 until ``expected`` is sent; ``seen`` keeps the
    Authorization header of every request. ``redirect``: answer every request with a 302
    to that origin instead (what a hostile or moved remote does)."""

    expected: ClassVar[str] = ""
    seen: ClassVar[list[str | None]]
    redirect: ClassVar[str] = ""

    def _cgi(self) -> None:
        self.seen.append(self.headers.get("Authorization"))
        if self.redirect:
            self._read_body()
            self._reply(302, [("Location", self.redirect + self.path)], b"")
            return
        if self.headers.get("Authorization") != self.expected:
            self._read_body()
            self._reply(401, [("WWW-Authenticate", 'Basic realm="plans"')], b"")
            return
        super()._cgi()


def basic(user: str, password: str) -> str:
    return "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()


@dataclasses.dataclass
class Served:
    """One origin serving the plans repository (or redirecting); what it was sent."""

    origin: str
    seen: list[str | None]

    @property
    def url(self) -> str:
        return f"{self.origin}/plans.git"


class AuthServers:
    """The plans repository (commit ``sha``) served by origins that demand basic auth."""

    def __init__(self, root: Path, backend: str, sha: str) -> None:
        self.root, self.backend, self.sha = root, backend, sha
        self.servers: list[ThreadingHTTPServer] = []

    def serve(self, user: str = USER, password: str = PASSWORD, redirect: str = "") -> Served:
        seen: list[str | None] = []
        handler = type(
            "_BoundAuthHandler",
            (_AuthHandler,),
            {
                "project_root": self.root,
                "backend": self.backend,
                "expected": basic(user, password),
                "seen": seen,
                "redirect": redirect,
            },
        )
        server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
        server.daemon_threads = True
        threading.Thread(target=server.serve_forever, daemon=True).start()
        self.servers.append(server)
        return Served(f"http://127.0.0.1:{server.server_address[1]}", seen)


@pytest.fixture
def authed(tmp_path: Path) -> Iterator[AuthServers]:
    root = tmp_path / "served"
    with GitServer(root) as plain:  # creates and commits; the auth servers serve it
        sha = plain.create_repository("plans").commit({"plans/p.yaml": PLAN}, "plans")
        backend = plain._backend
    servers = AuthServers(root, backend, sha)
    try:
        yield servers
    finally:
        for server in servers.servers:
            server.shutdown()
            server.server_close()


@dataclasses.dataclass
class Recorded:
    """What git was run with: our ``git`` commands' argv (a wrapper first on PATH), every
    command git itself ran (``GIT_TRACE``), and a user's ``store`` helper's file."""

    argv: Path
    trace: Path
    stored: Path

    def lines(self) -> list[str]:
        return [
            line
            for path in (self.argv, self.trace)
            if path.exists()
            for line in path.read_text().splitlines()
        ]


@pytest.fixture
def recorded(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Recorded:
    real = shutil.which("git")
    assert real is not None
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    record = Recorded(tmp_path / "argv.log", tmp_path / "trace.log", tmp_path / "stored")
    wrapper = bin_dir / "git"
    wrapper.write_text(
        f"#!/bin/sh\nprintf '%s\\n' \"$*\" >> '{record.argv}'\nexec '{real}' \"$@\"\n"
    )
    wrapper.chmod(0o755)
    monkeypatch.setenv("PATH", f"{bin_dir}{os.pathsep}{os.environ['PATH']}")
    monkeypatch.setenv("GIT_TRACE", str(record.trace))
    user_config = tmp_path / "user.gitconfig"  # the user's own helper would store the token
    user_config.write_text(f"[credential]\n\thelper = store --file={record.stored}\n")
    monkeypatch.setenv("GIT_CONFIG_GLOBAL", str(user_config))
    monkeypatch.setenv("GIT_CONFIG_NOSYSTEM", "1")
    for name in (gitsource.USERNAME_ENV, gitsource.PASSWORD_ENV):
        monkeypatch.delenv(name, raising=False)
    return record


def leaks(secret: str, record: Recorded, said: list[str], cache: Path) -> list[str]:
    """Where ``secret`` shows: git's argv and trace, our messages, the user's helper, the
    cache."""
    found = [f"git ran with it: {line}" for line in record.lines() if secret in line]
    found += [f"said: {line}" for line in said if secret in line]
    if record.stored.exists():
        found.append(f"the user's helper stored it: {record.stored.read_text()!r}")
    for path in cache.rglob("*"):
        if path.is_file() and secret.encode() in path.read_bytes():
            found.append(f"in the cache: {path}")
    return found


@pytest.mark.parametrize("how", ["url", "url-plain", "file", "file-token", "env"])
def test_credentials_reach_git_by_its_environment_never_a_command_line(
    how: str,
    authed: AuthServers,
    recorded: Recorded,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    user, password = USER, PASSWORD
    if how == "file-token":  # a lone token: sent with the default user name
        user, password = gitsource.DEFAULT_USERNAME, "ghp_s3cr3t token"
    elif how == "url-plain":  # one the old redaction did hide, but not from git's argv
        password = "s3cr3t-plain"
    served = authed.serve(user, password)
    url = served.url
    secret_file = tmp_path / "git-credentials"
    if how.startswith("url"):
        url = served.url.replace("://", f"://{USER}:{password}@")
    elif how == "file":
        secret_file.write_text(f"{USER}:{PASSWORD}\n")
    elif how == "file-token":
        secret_file.write_text(password)
    else:
        monkeypatch.setenv(gitsource.USERNAME_ENV, USER)
        monkeypatch.setenv(gitsource.PASSWORD_ENV, PASSWORD)
    said: list[str] = []
    cache = tmp_path / "cache"
    spec = GitSpec(url=url, path="plans", cache=cache, timeout=30)
    if how.startswith("file"):
        spec = dataclasses.replace(spec, credentials_file=secret_file)

    root, sha = checkout(spec, progress=said.append)

    assert sha == authed.sha and (root / "p.yaml").is_file()
    assert basic(user, password) in served.seen, "the server got the credentials"
    ran, address = recorded.lines(), served.origin.split("://")[1]
    assert any(" fetch " in line and address in line for line in ran), "argv recorded"
    assert any("remote-http" in line and address in line for line in ran), "trace too"
    assert leaks(password, recorded, said, cache) == []
    warnings = [line for line in said if line.startswith("warning:")]
    if how.startswith("url"):
        assert warnings == [
            f"warning: --git-repo {served.url.replace('://', '://***@')} carries credentials: "
            "on a command line they are visible to every user of the machine (ps, /proc); use "
            f"--git-credentials-file or ${gitsource.PASSWORD_ENV} instead"
        ]
        checkout(spec, progress=said.append)
        assert len([line for line in said if line.startswith("warning:")]) == 1, "once"
    else:
        assert warnings == []


def test_without_credentials_the_server_refuses_and_nothing_is_prompted(
    authed: AuthServers, recorded: Recorded, tmp_path: Path
) -> None:
    with pytest.raises(GitError, match="terminal prompts disabled"):
        checkout(GitSpec(url=authed.serve().url, cache=tmp_path / "cache", timeout=30))


def test_a_redirect_to_another_host_gets_no_credentials(
    authed: AuthServers, recorded: Recorded, tmp_path: Path
) -> None:
    """The helper answers for the remote's scheme and host only: a remote that redirects git
    elsewhere (another port is another origin) sends it to a server asking for credentials,
    which gets none."""
    elsewhere = authed.serve()
    redirecting = authed.serve(redirect=elsewhere.origin)
    secret_file = tmp_path / "git-credentials"
    secret_file.write_text(f"{USER}:{PASSWORD}\n")
    spec = GitSpec(
        url=redirecting.url, cache=tmp_path / "cache", timeout=30, credentials_file=secret_file
    )

    with pytest.raises(GitError):
        checkout(spec)

    assert redirecting.seen and elsewhere.seen, "git followed the redirect"
    assert basic(USER, PASSWORD) not in elsewhere.seen + redirecting.seen


@pytest.mark.parametrize(
    ("text", "said"),
    [(None, "cannot be read"), ("", "no secret"), (f"{USER}:\n", "no secret")],
)
def test_a_credentials_file_that_cannot_be_used_is_bad_input(
    text: str | None, said: str, authed: AuthServers, tmp_path: Path
) -> None:
    secret_file = tmp_path / "git-credentials"
    if text is not None:
        secret_file.write_text(text)
    spec = GitSpec(url=authed.serve().url, cache=tmp_path / "cache", credentials_file=secret_file)
    with pytest.raises(UserError, match=f"--git-credentials-file .*git-credentials: .*{said}"):
        checkout(spec)


# -- size: a plans repository is bounded in bytes too (issue 14, item 13) --------------------

KIB, MIB = 2**10, 2**20


def commit_random(repo: PlansRepo, name: str, size: int) -> str:
    """Commit ``size`` random (incompressible) bytes as ``name``: as large in the pack as in
    the checkout."""
    (repo.path / name).write_bytes(os.urandom(size))
    return repo.commit({"plans/p.yaml": PLAN})


def entries(cache: Path) -> list[Path]:
    """The cache's entries (its lock files left out)."""
    return [p for p in cache.iterdir() if p.is_dir()] if cache.exists() else []


def test_a_repository_over_max_bytes_is_refused_and_its_cache_entry_removed(
    repo: PlansRepo, tmp_path: Path
) -> None:
    commit_random(repo, "blob.bin", 2 * MIB)
    cache = tmp_path / "cache"

    with pytest.raises(UserError) as caught:
        checkout(GitSpec(url=repo.url, path="plans", cache=cache, max_bytes=MIB))

    message = str(caught.value)
    assert f"--git-repo {repo.url} at main takes more than --git-max-bytes 1.0 MiB" in message
    assert "the cache entry was removed" in message
    assert "hint: raise the limit (e.g. --git-max-bytes " in message
    assert caught.value.exit_code == 2
    assert entries(cache) == [], "the cache entry is gone"
    root, _ = checkout(GitSpec(url=repo.url, path="plans", cache=cache, max_bytes=8 * MIB))
    assert (root / "p.yaml").is_file(), "under a higher limit the same repository is fetched"


def test_a_cache_entry_grown_over_the_limit_is_fetched_afresh(
    repo: PlansRepo, tmp_path: Path
) -> None:
    """Each fetch of a new commit adds its objects to the entry: after a few, a repository
    well within the limit would be refused for what earlier commits left behind."""
    cache = tmp_path / "cache"
    said: list[str] = []
    spec = GitSpec(url=repo.url, cache=cache, max_bytes=MIB)
    commit_random(repo, "blob.bin", 400 * KIB)  # ~800 KiB: objects and checkout
    checkout(spec)
    second = commit_random(repo, "blob.bin", 400 * KIB)  # ~1.2 MiB with the first's objects

    root, sha = checkout(spec, progress=said.append)

    assert sha == second
    assert any("grew over --git-max-bytes 1.0 MiB: fetching afresh" in line for line in said)
    (entry,) = entries(cache)
    assert gitsource._tree_bytes(entry) <= MIB
    assert (root / "blob.bin").stat().st_size == 400 * KIB
