"""Plans from Git: the commit a plans directory is at, or a clone of ``--git-repo`` in a cache.

The git edge: with ``kube.credentials`` the only module that starts processes, and only the
``git`` CLI. Two ways in:

- **a directory** (git-sync's checkout link, or any working tree): the plans are read where
  they are and the commit is ``git rev-parse HEAD`` of the repository holding them (None for a
  directory outside any repository);
- **``--git-repo URL --git-ref REF --git-path DIR``**: a shallow fetch of REF (a branch, tag or
  full commit SHA) into a cache directory keyed by the URL (``init`` once, then ``fetch
  --depth=1`` and a forced, detached checkout of what was fetched, untracked files removed),
  read at DIR inside it. The URL is passed on git's command line without its credentials: it
  is never stored in the cache's config, and ``FETCH_HEAD`` (which names it) is removed after
  use.

Credentials never reach a command line nor a message. An http(s) URL's userinfo is taken out
of it (``model.text.split_userinfo``); it, else ``--git-credentials-file`` (``user:token`` or a
token), else ``$VMSR_GIT_PASSWORD`` (with ``$VMSR_GIT_USERNAME``), is handed to git by a
credential helper that reads them from environment variables set in git's environment only,
configured through ``GIT_CONFIG_COUNT`` (not ``-c``), scoped to the remote's scheme and host
(a redirect to another host gets nothing), and alone (the user's helpers are reset, so none
of them stores the token). An ssh URL keeps its user name (ssh authenticates with keys; a
password in it is dropped). A URL with credentials on our own command line is visible in
``ps``: ``checkout`` warns once per process. Every message goes through
``model.text.redact_urls`` (userinfo and query values), git's own output included.

Bounded: every git command runs with a timeout in its own process group (all of it killed when
the time is up), stdin closed, no terminal prompt (``GIT_TERMINAL_PROMPT=0``; ssh in batch
mode unless ``GIT_SSH_COMMAND`` says otherwise), C locale; at most ``MAX_OUTPUT`` bytes of its
output are kept. The cache entry is bounded in size too (``--git-max-bytes``, default
``GIT_MAX_BYTES``): measured while git fetches and checks out (killed when over) and after, an
entry grown over it by earlier fetches is fetched afresh once, and a checkout that is over it
on its own is removed and refused. A ref or URL that starts with ``-`` (it would be read as an
option) is refused.

Errors: a REF the remote does not have, a DIR outside the checkout or missing, a URL or ref
that is not one, a credentials file that cannot be read, a repository over the size limit,
and git not installed are ``UserError`` (exit 2: no retry fixes them); a
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
import threading
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from reconciler.model.errors import ClusterError, Problem, UserError
from reconciler.model.text import parse_credentials, redact_urls, shown, split_userinfo

log = logging.getLogger(__name__)

GIT_TIMEOUT = 120.0
"""Seconds one git command may take by default (a fetch of a large repository included)."""
MAX_OUTPUT = 64 * 1024
"""Bytes of a git command's stdout and of its stderr that are kept (the rest is dropped)."""
GIT_MAX_BYTES = 50 * 2**20
"""Bytes a cache entry (the objects fetched and the checkout) may take by default."""
SIZE_POLL = 0.2
"""Seconds between two measures of a cache entry while git writes to it."""
DEFAULT_USERNAME = "x-access-token"
"""The user name sent with a lone token (GitHub, GitLab, Gitea and Bitbucket accept one)."""
USERNAME_ENV = "VMSR_GIT_USERNAME"
PASSWORD_ENV = "VMSR_GIT_PASSWORD"
_HELPER_USER = "VMSR_GIT_HELPER_USERNAME"
_HELPER_SECRET = "VMSR_GIT_HELPER_PASSWORD"
# git runs ``<helper> get`` (``store``, ``erase`` too) in a shell, the request on stdin: the
# answer comes from git's environment, never from a command line.
_HELPER = (
    '!f() { test "$1" = get || return 0; cat >/dev/null; '
    f'printf \'username=%s\\npassword=%s\\n\' "${_HELPER_USER}" "${_HELPER_SECRET}"; }}; f'
)
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


class GitError(ClusterError):
    """The remote could not be fetched (unreachable, refused, timed out): exit 6."""

    def __init__(self, what: str, message: str) -> None:
        super().__init__(f"git {redact_urls(what)}", redact_urls(message))


@dataclass(frozen=True)
class GitSpec:
    """``--git-repo URL --git-ref REF --git-path DIR``, the cache and the per-command timeout."""

    url: str
    ref: str = "main"
    path: str = "."
    cache: Path | None = None
    timeout: float = GIT_TIMEOUT
    credentials_file: Path | None = None
    """``user:token`` or a token on its first line (read at every fetch: a rotated Secret is
    picked up by the next run of a loop)."""
    max_bytes: int = GIT_MAX_BYTES


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
    remote = _remote(url, spec, progress)
    safe_url = redact_urls(remote.url)
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
            reused = (repo / ".git").is_dir()
            progress(f"Fetching {ref} from {safe_url}...")
            try:
                sha = _sync(repo, remote, ref, spec)
            except _TooLarge as too_large:
                shutil.rmtree(repo, ignore_errors=True)
                if not reused:
                    raise _too_large(spec, safe_url, ref, too_large.size) from None
                # Every fetch of a new commit adds its objects: an entry used for long can
                # outgrow the limit on its own. Once afresh; over it again is the repository.
                progress(
                    f"note: the git cache of {safe_url} grew over --git-max-bytes "
                    f"{_size(spec.max_bytes)}: fetching afresh"
                )
                try:
                    sha = _sync(repo, remote, ref, spec)
                except _TooLarge as again:
                    shutil.rmtree(repo, ignore_errors=True)
                    raise _too_large(spec, safe_url, ref, again.size) from None
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


def _sync(repo: Path, remote: _Remote, ref: str, spec: GitSpec) -> str:
    """Fetch ``ref`` into ``repo`` (made when missing) and check it out, within
    ``spec.max_bytes`` (``_TooLarge`` otherwise); the commit's SHA."""
    if not (repo / ".git").is_dir():
        shutil.rmtree(repo, ignore_errors=True)
        _run(["init", "--quiet", str(repo)], spec, "init")
    limit = _Limit(repo, spec.max_bytes)
    _fetch(repo, remote, ref, spec, limit)
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
        limit,
    )
    _run(["-C", str(repo), "clean", "--quiet", "-ffdx"], spec, "clean")
    limit.check()
    return sha


@dataclass(frozen=True)
class _Remote:
    """The URL git is given (no password in it) and the environment that holds the
    credentials (with the helper that hands them to git), if any."""

    url: str
    env: Mapping[str, str]


_warned: set[str] = set()
"""URLs (redacted) whose credentials on the command line were warned about (once a process:
the loop fetches every cycle)."""
_warned_lock = threading.Lock()


def _remote(url: str, spec: GitSpec, progress: Callable[[str], None]) -> _Remote:
    """``url`` without its credentials, and git's environment with them (``_HELPER``): from
    the URL's userinfo, else ``spec.credentials_file``, else ``$VMSR_GIT_PASSWORD``."""
    public, user, password = split_userinfo(url)
    scheme = public.split("://", 1)[0].lower() if "://" in public else ""
    secure_shell = "ssh" in scheme
    if password is not None or (user is not None and not secure_shell):
        safe = redact_urls(url)
        with _warned_lock:
            first = safe not in _warned
            _warned.add(safe)
        if first:
            progress(
                f"warning: --git-repo {safe} carries credentials: on a command line they are "
                "visible to every user of the machine (ps, /proc); use --git-credentials-file "
                f"or ${PASSWORD_ENV} instead"
            )
    if scheme not in ("http", "https"):
        if secure_shell and user:  # ssh's user name picks the key; ssh takes no password
            head, _, rest = public.partition("://")
            return _Remote(f"{head}://{user}@{rest}", {})
        return _Remote(public, {})
    if spec.credentials_file is not None:
        user, password = _read_credentials(spec.credentials_file)
    elif os.environ.get(PASSWORD_ENV):
        user, password = os.environ.get(USERNAME_ENV) or None, os.environ[PASSWORD_ENV]
    if user is None and password is None:
        return _Remote(public, {})
    if any(c in (user or "") + (password or "") for c in "\n\r\0"):
        raise UserError(
            [
                Problem(
                    None,
                    "the git credentials hold a line break or a NUL",
                    "git's credential protocol is line-based: give a user name and a token "
                    "without them",
                )
            ]
        )
    if password is None:  # https://TOKEN@host: the token as the user name, no password
        password = ""
    authority = public.split("://", 1)[1].split("/", 1)[0].split("?", 1)[0].split("#", 1)[0]
    scope = f"{scheme}://{authority}"
    env = dict(
        _config_env(
            [
                ("credential.helper", ""),  # the user's helpers: none of them sees the token
                (f"credential.{scope}.helper", _HELPER),
            ]
        )
    )
    env.update({_HELPER_USER: user or DEFAULT_USERNAME, _HELPER_SECRET: password})
    return _Remote(public, env)


def _config_env(entries: Sequence[tuple[str, str]]) -> Iterator[tuple[str, str]]:
    """``entries`` as git configuration in the environment (``GIT_CONFIG_COUNT``, git >= 2.31),
    after any the environment already holds: never on a command line."""
    try:
        count = int(os.environ.get("GIT_CONFIG_COUNT") or 0)
    except ValueError:
        count = 0
    for index, (key, value) in enumerate(entries, start=count):
        yield f"GIT_CONFIG_KEY_{index}", key
        yield f"GIT_CONFIG_VALUE_{index}", value
    yield "GIT_CONFIG_COUNT", str(count + len(entries))


def _read_credentials(path: Path) -> tuple[str | None, str]:
    try:
        with path.open(encoding="utf-8", errors="strict") as handle:
            text = handle.read(64 * 1024)
    except (OSError, UnicodeDecodeError) as exc:
        reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else "not UTF-8 text"
        raise UserError(
            [
                Problem(
                    None,
                    f"--git-credentials-file {shown(path, 200)}: cannot be read: {reason}",
                    "give a readable file holding user:token (or a token) on its first line",
                )
            ]
        ) from None
    try:
        return parse_credentials(text)
    except ValueError as exc:
        raise UserError(
            [
                Problem(
                    None,
                    f"--git-credentials-file {shown(path, 200)}: {exc}",
                    "put user:token (or a token) on its first line",
                )
            ]
        ) from None


class _TooLarge(Exception):
    """The cache entry took more than its limit (``size`` bytes when it was measured)."""

    def __init__(self, size: int) -> None:
        super().__init__(size)
        self.size = size


class _Limit:
    """At most ``max_bytes`` in ``root``: ``check`` raises ``_TooLarge`` beyond. ``pause``:
    how long to wait before the next check, so that measuring a large tree never takes more
    than a tenth of the time."""

    def __init__(self, root: Path, max_bytes: int) -> None:
        self.root = root
        self.max_bytes = max_bytes
        self.pause = SIZE_POLL

    def check(self) -> None:
        started = time.monotonic()
        size = _tree_bytes(self.root)
        self.pause = max(SIZE_POLL, 10 * (time.monotonic() - started))
        if size > self.max_bytes:
            raise _TooLarge(size)


def _tree_bytes(root: Path) -> int:
    """Bytes of the files under ``root`` (symlinks not followed; files that vanish while it
    is walked, such as git's temporary packs, not counted)."""
    total = 0
    for directory, _dirs, files in os.walk(root):
        for name in files:
            with contextlib.suppress(OSError):
                total += os.lstat(os.path.join(directory, name)).st_size
    return total


def _size(count: int) -> str:
    return f"{count / 2**20:.1f} MiB" if count >= 2**20 else f"{count:,} bytes"


def _too_large(spec: GitSpec, url: str, ref: str, size: int) -> UserError:
    return UserError(
        [
            Problem(
                None,
                f"--git-repo {url} at {shown(ref, 100)} takes more than --git-max-bytes "
                f"{_size(spec.max_bytes)} in the cache ({_size(size)} when measured, git "
                "stopped there); the cache entry was removed",
                f"raise the limit (e.g. --git-max-bytes {_suggest(max(size, spec.max_bytes))}), "
                "or keep the plans in a smaller repository",
            )
        ]
    )


def _suggest(size: int) -> str:
    mebibytes = 1
    while mebibytes * 2**20 < size * 2:
        mebibytes *= 2
    return f"{mebibytes}Mi"


_NO_REF = ("couldn't find remote ref", "not our ref", "invalid refspec", "no such remote ref")
_NO_REPO = ("does not appear to be a git repository", "not found", "no such file or directory")


def _fetch(repo: Path, remote: _Remote, ref: str, spec: GitSpec, limit: _Limit) -> None:
    url = remote.url
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
        _git(
            args,
            timeout=spec.timeout,
            what=f"fetch {ref} from {url}",
            env=remote.env,
            limit=limit,
        )
    except _Failed as failed:
        text = failed.stderr.lower()
        if any(s in text for s in _NO_REF):
            raise UserError(
                [
                    Problem(
                        None,
                        f"--git-ref {shown(ref, 100)}: {redact_urls(url)} has no such branch, "
                        "tag or commit",
                        "name a branch or tag the repository has, or a full 40-character SHA",
                    )
                ]
            ) from None
        if "repository" in text and any(s in text for s in _NO_REPO):
            raise UserError(
                [
                    Problem(
                        None,
                        f"--git-repo {redact_urls(url)}: no repository there "
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
        # Redacted whole (a password may hold the space), then shown up to the first space:
        # what follows it may be the rest of a token the redaction could not tell apart.
        safe = redact_urls(value)
        words = safe.split(maxsplit=1)
        echoed = shown(words[0], 100) + (" ..." if len(words) > 1 else "") if words else ""
        raise UserError([Problem(None, f"{flag} {echoed!r}: not valid", hint)])


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


def _run(args: list[str], spec: GitSpec, what: str, limit: _Limit | None = None) -> str:
    """``_git`` for the cache's own commands: any failure is a ``GitError``."""
    try:
        return _git(args, timeout=spec.timeout, what=what, limit=limit)
    except _Failed as failed:
        raise GitError(what, f"failed: {failed.said}") from None


def _git(
    args: list[str],
    *,
    timeout: float,
    what: str,
    env: Mapping[str, str] | None = None,
    limit: _Limit | None = None,
) -> str:
    """Run ``git args`` (``env`` added to its environment); stdout (at most ``MAX_OUTPUT``
    bytes). Raises ``_Failed`` (non-zero exit), ``_Missing`` (no git), ``GitError`` (timed
    out) and ``_TooLarge`` (``limit`` passed while it ran): its process group killed."""
    child = {k: v for k, v in os.environ.items() if k not in _REPO_ENV}
    child.update({"GIT_TERMINAL_PROMPT": "0", "GCM_INTERACTIVE": "never", "LC_ALL": "C"})
    if "GIT_SSH_COMMAND" not in child and "GIT_SSH" not in child:
        child["GIT_SSH_COMMAND"] = "ssh -o BatchMode=yes"
    child.update(env or {})
    log.debug("git %s", redact_urls(" ".join(args)))
    try:
        process = subprocess.Popen(
            ["git", *args],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            env=child,
            start_new_session=True,  # its own process group: a timeout kills its helpers too
        )
    except FileNotFoundError:
        raise _Missing() from None
    deadline = time.monotonic() + timeout
    while True:
        left = deadline - time.monotonic()
        try:
            # Waits are the pipes' (communicate); with a limit, cut into slices to measure
            # the cache entry between them (no output is lost across the slices).
            out, err = process.communicate(
                timeout=max(0.0, min(left, limit.pause) if limit else left)
            )
            break
        except subprocess.TimeoutExpired:
            too_large: _TooLarge | None = None
            if limit is not None:
                try:
                    limit.check()
                except _TooLarge as exc:
                    too_large = exc
            if too_large is None and time.monotonic() < deadline:
                continue
            with contextlib.suppress(ProcessLookupError):
                os.killpg(process.pid, signal.SIGKILL)
            process.communicate()
            if too_large is not None:
                raise too_large from None
            raise GitError(what, f"no answer within {timeout:g}s (killed)") from None
    if process.returncode != 0:
        raise _Failed(redact_urls(err[-MAX_OUTPUT:].decode("utf-8", "replace")))
    return out[:MAX_OUTPUT].decode("utf-8", "replace")
