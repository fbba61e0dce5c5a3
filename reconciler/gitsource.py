"""Plans from Git: the commit a plans directory is at, or a clone of ``--git-repo`` in a cache.

The git edge: with ``kube.credentials`` the only module that starts processes, and only the
``git`` CLI. Two ways in:

- **a directory** (git-sync's checkout link, or any working tree): the plans are read where
  they are and the commit is ``git rev-parse HEAD`` of the repository holding them (None for a
  directory outside any repository);
- **``--git-repo URL --git-ref REF --git-path DIR``**: a shallow fetch of REF (a branch, tag or
  full commit SHA) into a cache directory keyed by the URL (``init`` once, then ``fetch
  --depth=1`` and a forced, detached checkout of what was fetched, untracked files removed),
  read at DIR inside it. The URL is passed on the command line only: it is never stored in the
  cache's config, and ``FETCH_HEAD`` (which names it) is removed after use.

Bounded: every git command runs with a timeout in its own process group (all of it killed when
the time is up), stdin closed, no terminal prompt (``GIT_TERMINAL_PROMPT=0``; ssh in batch
mode unless ``GIT_SSH_COMMAND`` says otherwise), C locale; at most ``MAX_OUTPUT`` bytes of its
output are kept. Messages never carry credentials: ``redact`` strips the userinfo of every URL
in them (``https://user:token@host`` -> ``https://host``). A ref or URL that starts with ``-``
(it would be read as an option) is refused.

Errors: a REF the remote does not have, a DIR outside the checkout or missing, a URL or ref
that is not one, and git not installed are ``UserError`` (exit 2: no retry fixes them); a
remote that cannot be reached or refuses us, and a timeout, are ``GitError``, a
``ClusterError`` (exit 6: the environment, worth another try).
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import logging
import os
import re
import shutil
import signal
import subprocess
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

from reconciler.model.errors import ClusterError, Problem, UserError
from reconciler.model.text import shown

log = logging.getLogger(__name__)

GIT_TIMEOUT = 120.0
"""Seconds one git command may take by default (a fetch of a large repository included)."""
MAX_OUTPUT = 64 * 1024
"""Bytes of a git command's stdout and of its stderr that are kept (the rest is dropped)."""

_USERINFO = re.compile(r"(?i)\b([a-z][a-z0-9+.-]*://)[^/\s@]*@")
_SHA = re.compile(r"[0-9a-f]{40}|[0-9a-f]{64}")
_REPO_ENV = (
    "GIT_DIR",
    "GIT_WORK_TREE",
    "GIT_INDEX_FILE",
    "GIT_COMMON_DIR",
    "GIT_OBJECT_DIRECTORY",
    "GIT_ALTERNATE_OBJECT_DIRECTORIES",
    "GIT_NAMESPACE",
    "GIT_PREFIX",
)
"""Variables (set by git hooks, for one) that would point git at another repository."""


def redact(text: str) -> str:
    """``text`` with the userinfo of every ``scheme://user:secret@host`` URL removed."""
    return _USERINFO.sub(r"\1", text)


class GitError(ClusterError):
    """The remote could not be fetched (unreachable, refused, timed out): exit 6."""

    def __init__(self, what: str, message: str) -> None:
        super().__init__(f"git {redact(what)}", redact(message))


@dataclass(frozen=True)
class GitSpec:
    """``--git-repo URL --git-ref REF --git-path DIR``, the cache and the per-command timeout."""

    url: str
    ref: str = "main"
    path: str = "."
    cache: Path | None = None
    timeout: float = GIT_TIMEOUT


@dataclass(frozen=True)
class PlanSource:
    """Where the plans are read (``paths``) and the commit they come from (None: unknown, or
    not in a repository). Several repositories at different commits: their SHAs in path
    order, comma-separated. ``notes``: what could not be found out (for progress)."""

    paths: tuple[str | Path, ...]
    commit: str | None
    notes: tuple[str, ...] = ()


def default_cache() -> Path:
    """``$VMSR_GIT_CACHE``, else ``vm-storage-reconciler/git`` under ``$XDG_CACHE_HOME`` (or
    ``~/.cache``)."""
    explicit = os.environ.get("VMSR_GIT_CACHE")
    if explicit:
        return Path(explicit)
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "vm-storage-reconciler" / "git"


def resolve(
    paths: Sequence[str | Path],
    git: GitSpec | None = None,
    *,
    progress: Callable[[str], None] = lambda _m: None,
    timeout: float = GIT_TIMEOUT,
) -> PlanSource:
    """The plans' paths and commit: a fetch of ``git`` (then ``paths`` must be empty: the
    plans are ``git.path`` in the checkout), else the HEAD of each path's repository."""
    if git is not None:
        if paths:
            raise UserError(
                [
                    Problem(
                        None,
                        "plan paths and --git-repo given together",
                        "with --git-repo the plans are --git-path DIR inside the repository; "
                        "leave the paths out (or drop --git-repo to read a local checkout)",
                    )
                ]
            )
        root, commit = checkout(git, progress=progress)
        return PlanSource((root,), commit)
    commits: list[str] = []
    notes: list[str] = []
    for path in paths:
        sha, note = head_of(Path(path), timeout=timeout)
        if sha and sha not in commits:
            commits.append(sha)
        if note and note not in notes:
            notes.append(note)
    return PlanSource(tuple(paths), ",".join(commits) or None, tuple(notes))


def head_of(path: Path, *, timeout: float = GIT_TIMEOUT) -> tuple[str | None, str]:
    """(HEAD's SHA of the repository holding ``path``, or None; why not, when it matters).

    Outside any repository is no news (None, ""); a repository without commits, git missing
    or failing is said in the note, never an error: the plans can still be read."""
    directory = path if path.is_dir() else path.parent
    if not directory.is_dir():
        return None, ""  # load_plans reports the missing path
    try:
        out = _git(
            ["-C", str(directory), "rev-parse", "--verify", "--quiet", "HEAD^{commit}"],
            timeout=timeout,
            what=f"rev-parse in {directory}",
        )
    except _Failed as failed:
        if "not a git repository" in failed.stderr:
            return None, ""
        return None, f"the commit of {directory} is unknown: {shown(failed.said, 200)}"
    except _Missing:  # say so only where it matters: the directory is in a checkout
        inside = any(
            (d / ".git").exists() for d in (directory.resolve(), *directory.resolve().parents)
        )
        return None, f"the commit of {directory} is unknown: git is not installed" if inside else ""
    except GitError as exc:
        return None, f"the commit of {directory} is unknown: {exc}"
    sha = out.strip()
    return (sha, "") if _SHA.fullmatch(sha) else (None, f"{directory}: no commit at HEAD")


def checkout(
    spec: GitSpec, *, progress: Callable[[str], None] = lambda _m: None
) -> tuple[Path, str]:
    """Fetch ``spec.ref`` of ``spec.url`` into the cache and check it out; return (the plans
    directory inside the checkout, the commit's SHA)."""
    url, ref = spec.url.strip(), spec.ref.strip()
    _check_argument("--git-repo", url, "a URL or path of a repository, e.g. https://host/repo.git")
    _check_argument("--git-ref", ref, "a branch, a tag or a full commit SHA, e.g. main")
    safe_url = redact(url)
    cache = spec.cache or default_cache()
    key = hashlib.sha256(safe_url.encode()).hexdigest()[:16]
    repo = cache / key
    started = time.monotonic()
    try:
        cache.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise _cache_error(cache, exc) from exc
    with _locked(cache / f"{key}.lock", spec.timeout, safe_url):
        try:
            if not (repo / ".git").is_dir():
                shutil.rmtree(repo, ignore_errors=True)
                _run(["init", "--quiet", str(repo)], spec, "init")
            progress(f"Fetching {ref} from {safe_url}...")
            _fetch(repo, url, ref, spec)
            sha = _run(
                ["-C", str(repo), "rev-parse", "--verify", "--quiet", "FETCH_HEAD^{commit}"],
                spec,
                "rev-parse FETCH_HEAD",
            ).strip()
            (repo / ".git" / "FETCH_HEAD").unlink(missing_ok=True)  # it names the URL
            _run(
                [
                    "-C",
                    str(repo),
                    "-c",
                    "advice.detachedHead=false",
                    "checkout",
                    "--quiet",
                    "--force",
                    "--detach",
                    sha,
                ],
                spec,
                "checkout",
            )
            _run(["-C", str(repo), "clean", "--quiet", "-ffdx"], spec, "clean")
        except _Missing:
            raise UserError(
                [
                    Problem(
                        None,
                        "git is not installed",
                        "install git (the image needs it for "
                        "--git-repo), or check the plans out with git-sync and pass the path",
                    )
                ]
            ) from None
    root = _inside(repo, spec.path, safe_url, ref)
    progress(f"Plans from {safe_url} at {ref} ({sha[:12]}) in {time.monotonic() - started:.1f}s.")
    return root, sha


_NO_REF = ("couldn't find remote ref", "not our ref", "invalid refspec", "no such remote ref")
_NO_REPO = ("does not appear to be a git repository", "not found", "no such file or directory")


def _fetch(repo: Path, url: str, ref: str, spec: GitSpec) -> None:
    args = [
        "-C",
        str(repo),
        "fetch",
        "--quiet",
        "--no-tags",
        "--no-recurse-submodules",
        "--depth=1",
        url,
        ref,
    ]
    try:
        _git(args, timeout=spec.timeout, what=f"fetch {ref} from {url}")
    except _Failed as failed:
        text = failed.stderr.lower()
        if any(s in text for s in _NO_REF):
            raise UserError(
                [
                    Problem(
                        None,
                        f"--git-ref {shown(ref, 100)}: {redact(url)} has no such branch, tag or "
                        "commit",
                        "name a branch or tag the repository has, or a full 40-character SHA",
                    )
                ]
            ) from None
        if "repository" in text and any(s in text for s in _NO_REPO):
            raise UserError(
                [
                    Problem(
                        None,
                        f"--git-repo {redact(url)}: no repository there "
                        f"({shown(failed.said, 200)})",
                        "check the URL (https://host/org/repo.git, ssh://..., or a path)",
                    )
                ]
            ) from None
        raise GitError(f"fetch {url}", f"failed: {failed.said}") from None


def _inside(repo: Path, relative: str, url: str, ref: str) -> Path:
    """``repo/relative``, refused when it leaves the checkout or does not exist."""
    target = (repo / relative).resolve()
    if not target.is_relative_to(repo.resolve()):
        raise UserError(
            [
                Problem(
                    None,
                    f"--git-path {shown(relative, 100)} leads outside the repository",
                    "give a directory inside the repository, e.g. plans/ (or . for all of it)",
                )
            ]
        )
    if not target.exists():
        raise UserError(
            [
                Problem(
                    None,
                    f"--git-path {shown(relative, 100)}: no such file or directory in {url} at "
                    f"{shown(ref, 100)}",
                    "give a directory the repository has at that ref",
                )
            ]
        )
    return target


def _check_argument(flag: str, value: str, hint: str) -> None:
    if not value or value.startswith("-") or any(c.isspace() or ord(c) < 32 for c in value):
        raise UserError([Problem(None, f"{flag} {shown(value, 100)!r}: not valid", hint)])


def _cache_error(cache: Path, exc: OSError) -> UserError:
    return UserError(
        [
            Problem(
                None,
                f"the git cache {cache} cannot be used: {exc.strerror or exc}",
                "point --git-cache (or $VMSR_GIT_CACHE) at a writable directory",
            )
        ]
    )


_LOCK_RETRY = 0.1  # seconds between attempts to take a cache lock another run holds


@contextlib.contextmanager
def _locked(lock: Path, timeout: float, url: str) -> Iterator[None]:
    """One fetch per cache entry at a time (two loops, or a loop and a manual run)."""
    try:
        handle = lock.open("a")
    except OSError as exc:
        raise _cache_error(lock.parent, exc) from exc
    deadline = time.monotonic() + timeout
    with handle:
        while True:
            try:
                fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if time.monotonic() > deadline:
                    raise GitError(
                        f"fetch {url}", f"the cache is locked by another run for {timeout:g}s"
                    ) from None
                # flock has no timeout and a lock file no event to watch: retry, bounded by
                # the deadline (the other holder is a git fetch of at most `timeout` seconds).
                time.sleep(_LOCK_RETRY)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


class _Failed(Exception):
    """git exited non-zero; ``stderr`` as it said it (redacted), ``said`` its last line(s)."""

    def __init__(self, stderr: str) -> None:
        self.stderr = stderr
        lines = [line.strip() for line in stderr.strip().splitlines() if line.strip()]
        fatal = [line for line in lines if line.startswith(("fatal:", "error:"))]
        self.said = shown(" ".join(fatal[:2] or lines[-2:]), 500) or "(nothing)"
        super().__init__(self.said)


class _Missing(Exception):
    """The git executable is not installed."""


def _run(args: list[str], spec: GitSpec, what: str) -> str:
    """``_git`` for the cache's own commands: any failure is a ``GitError``."""
    try:
        return _git(args, timeout=spec.timeout, what=what)
    except _Failed as failed:
        raise GitError(what, f"failed: {failed.said}") from None


def _git(args: list[str], *, timeout: float, what: str) -> str:
    """Run ``git args``; stdout (at most ``MAX_OUTPUT`` bytes). Raises ``_Failed`` (non-zero
    exit), ``_Missing`` (no git) and ``GitError`` (timed out: its process group killed)."""
    env = {k: v for k, v in os.environ.items() if k not in _REPO_ENV}
    env.update({"GIT_TERMINAL_PROMPT": "0", "GCM_INTERACTIVE": "never", "LC_ALL": "C"})
    if "GIT_SSH_COMMAND" not in env and "GIT_SSH" not in env:
        env["GIT_SSH_COMMAND"] = "ssh -o BatchMode=yes"
    log.debug("git %s", redact(" ".join(args)))
    try:
        process = subprocess.Popen(
            ["git", *args],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            env=env,
            start_new_session=True,  # its own process group: a timeout kills its helpers too
        )
    except FileNotFoundError:
        raise _Missing() from None
    try:
        out, err = process.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGKILL)
        process.communicate()
        raise GitError(what, f"no answer within {timeout:g}s (killed)") from None
    if process.returncode != 0:
        raise _Failed(redact(err[-MAX_OUTPUT:].decode("utf-8", "replace")))
    return out[:MAX_OUTPUT].decode("utf-8", "replace")
