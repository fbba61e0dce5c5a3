"""Real local git repositories for the plans-from-Git tests: a plans repository to commit to,
and a checkout laid out the way git-sync v4 leaves one.

``PlansRepo(path)`` is a repository with a work tree on branch ``main``; ``commit(files)``
writes (or, for ``None``, deletes) files and commits, returning the SHA. ``url`` is its
``file://`` URL (what ``--git-repo`` takes). ``git_sync(repo, root)`` mirrors git-sync's
``--root=ROOT --link=current --depth=1``: ROOT is a repository of its own, each synced commit a
detached worktree ``ROOT/.worktrees/<sha>`` (whose ``.git`` file names ``ROOT/.git``), and
``ROOT/current`` a relative symlink to it, swapped atomically on every sync.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from collections.abc import Mapping
from pathlib import Path

_AUTHOR = ("-c", "user.name=vmsr test", "-c", "user.email=test@vmstorage.invalid")


def git(*args: str, cwd: Path | None = None) -> str:
    """Run git (no global or system config: the user's settings must not matter)."""
    env = {**os.environ, "GIT_CONFIG_GLOBAL": os.devnull, "GIT_CONFIG_NOSYSTEM": "1"}
    for name in ("GIT_DIR", "GIT_WORK_TREE", "GIT_INDEX_FILE"):
        env.pop(name, None)
    done = subprocess.run(
        ["git", *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=60, check=False
    )
    if done.returncode != 0:
        raise AssertionError(f"git {' '.join(args)} failed: {done.stderr.strip()}")
    return done.stdout


class PlansRepo:
    """A repository with a work tree, on branch ``main``."""

    def __init__(self, path: Path) -> None:
        if shutil.which("git") is None:
            raise AssertionError("git is not installed: the plans-from-Git tests need it")
        self.path = path
        path.mkdir(parents=True, exist_ok=True)
        git("init", "--quiet", "--initial-branch=main", str(path))

    @property
    def url(self) -> str:
        return self.path.resolve().as_uri()

    def commit(self, files: Mapping[str, str | None], message: str = "plans") -> str:
        for relative, text in files.items():
            target = self.path / relative
            if text is None:
                target.unlink(missing_ok=True)
            else:
                target.parent.mkdir(parents=True, exist_ok=True)
                target.write_text(text)
        git("add", "--all", cwd=self.path)
        git(*_AUTHOR, "commit", "--quiet", "--allow-empty", "-m", message, cwd=self.path)
        return self.head()

    def tag(self, name: str) -> None:
        git("tag", name, cwd=self.path)

    def head(self) -> str:
        return git("rev-parse", "HEAD", cwd=self.path).strip()


def git_sync(repo: PlansRepo, root: Path, link: str = "current") -> Path:
    """Sync ``repo``'s ``main`` into ``root`` as git-sync v4 does; return ``root/link``."""
    root.mkdir(parents=True, exist_ok=True)
    if not (root / ".git").exists():
        git("init", "--quiet", str(root))
    git("fetch", "--quiet", "--depth=1", repo.url, "main", cwd=root)
    sha = git("rev-parse", "FETCH_HEAD", cwd=root).strip()
    worktree = root / ".worktrees" / sha
    if not worktree.exists():
        git("worktree", "add", "--quiet", "--detach", str(worktree), sha, cwd=root)
    staging = root / f".{link}.tmp"
    staging.unlink(missing_ok=True)
    staging.symlink_to(Path(".worktrees") / sha)
    staging.replace(root / link)
    return root / link
