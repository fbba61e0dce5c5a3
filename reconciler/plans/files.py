"""Plan files on disk: which files a set of paths names, and reading one safely.

A file is taken as it is (any extension); a directory is searched recursively for ``*.yaml`` /
``*.yml`` files, skipping hidden files and directories (``.git``) and not following symlinked
directories (loops). Inside a directory only regular files are read: a symlink to a device
(``/dev/zero``), a FIFO or a socket is refused (it would hang or exhaust memory), and so is a
file symlink that resolves outside the directory given (its content is never read, so a link
to a ServiceAccount token cannot be echoed in an error). A file is read without blocking and
at most ``MAX_PLAN_BYTES`` long. Problems are ``Problem`` values, never exceptions, so
``load_plans`` can report them together with every other mistake.
"""

from __future__ import annotations

import errno
import os
import stat
from collections.abc import Iterable
from pathlib import Path

from reconciler.model.errors import PlanError, Problem

PLAN_SUFFIXES = (".yaml", ".yml")
MAX_PLAN_BYTES = 1 << 20
"""A plan file is a few KB; a 5 MB one took 18 s and 540 MB to read. One MiB is plenty."""

_LOOP = "symlink loop"


def plan_files(paths: Iterable[str | Path]) -> list[Path]:
    """Expand ``paths`` into the plan files ``load_plans`` reads, sorted and de-duplicated.

    A file is taken as it is (any extension). A directory is searched recursively for
    ``*.yaml`` / ``*.yml`` files; hidden files and directories (``.git``) are skipped and
    symlinked directories are not followed (loops), though the directory given may itself be
    a symlink (git-sync's checkout link). Raises ``PlanError`` for a path that does not
    exist, is not a file or directory, or is a directory without plan files, and for entries
    of a directory that are not regular files or are symlinks leading outside it.
    """
    files, problems = expand(paths)
    if problems:
        raise PlanError(problems)
    return files


def expand(paths: Iterable[str | Path]) -> tuple[list[Path], list[Problem]]:
    """The plan files under ``paths`` (sorted, de-duplicated by real path) and the problems
    found on the way (missing paths, unreadable directories, directories without plans,
    special files and escaping symlinks inside directories)."""
    found: dict[str, Path] = {}
    problems: list[Problem] = []
    for raw in paths:
        path = Path(raw)
        try:
            if path.is_dir():
                before = len(problems)
                files = _walk(path, problems)
                if not files and len(problems) == before:
                    problems.append(
                        Problem(
                            None,
                            f"{path}: no *.yaml or *.yml files in this directory",
                            "point at the directory that holds the plan files (hidden "
                            "directories such as .git are skipped)",
                        )
                    )
            elif path.is_file():
                files = [path]
            elif _is_loop(path):
                problems.append(Problem(None, f"{path}: {_LOOP}", "fix or remove the link"))
                continue
            elif path.exists():
                problems.append(Problem(None, f"{path}: not a regular file or directory"))
                continue
            else:
                problems.append(
                    Problem(None, f"{path}: no such file or directory", "check the path")
                )
                continue
        except OSError as exc:
            problems.append(Problem(None, f"{path}: cannot read: {exc.strerror or exc}"))
            continue
        for file in files:
            found.setdefault(os.path.realpath(file), file)
    return sorted(found.values(), key=str), problems


def read_plan_file(path: Path) -> tuple[bytes | None, Problem | None]:
    """The bytes of one plan file, or the problem that kept it from being read.

    Opened without blocking (a FIFO swapped in after ``expand`` cannot hang the run), checked
    to be a regular file on the open descriptor, and refused when over ``MAX_PLAN_BYTES``.
    """
    name = str(path)
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | getattr(os, "O_CLOEXEC", 0))
    except OSError as exc:
        if exc.errno == errno.ELOOP:
            return None, Problem(None, f"{name}: {_LOOP}", "fix or remove the link")
        return None, Problem(None, f"{name}: cannot read: {exc.strerror or exc}")
    with os.fdopen(fd, "rb") as file:
        info = os.fstat(file.fileno())
        if not stat.S_ISREG(info.st_mode):
            return None, Problem(None, f"{name}: not a regular file", _SPECIAL_HINT)
        if info.st_size > MAX_PLAN_BYTES:
            return None, _too_large(name, info.st_size)
        try:
            data = file.read(MAX_PLAN_BYTES + 1)
        except OSError as exc:
            return None, Problem(None, f"{name}: cannot read: {exc.strerror or exc}")
        if len(data) > MAX_PLAN_BYTES:  # grew while we read it
            return None, _too_large(name, len(data))
        return data, None


_SPECIAL_HINT = (
    "only regular files are read as plans; remove the device, FIFO or socket (or the "
    "symlink to it) from the plans directory"
)


def _too_large(name: str, size: int) -> Problem:
    return Problem(
        None,
        f"{name}: {size / 1e6:.1f} MB, more than the {MAX_PLAN_BYTES >> 20} MiB a plan file "
        "may have",
        "a plan is a few KB: split it, or check that this is the file you meant",
    )


def _is_loop(path: Path) -> bool:
    try:
        os.stat(path)
    except OSError as exc:
        return exc.errno == errno.ELOOP
    return False


def _walk(root: Path, problems: list[Problem]) -> list[Path]:
    def unreadable(exc: OSError) -> None:
        problems.append(Problem(None, f"{exc.filename}: cannot read: {exc.strerror or exc}"))

    real_root = os.path.realpath(root)
    files: list[Path] = []
    for directory, subdirs, names in os.walk(root, onerror=unreadable, followlinks=False):
        subdirs[:] = sorted(d for d in subdirs if not d.startswith("."))
        for name in sorted(names):
            if name.startswith(".") or not name.lower().endswith(PLAN_SUFFIXES):
                continue
            path = Path(directory, name)
            problem = _entry_problem(path, real_root, root)
            if problem is None:
                files.append(path)
            else:
                problems.append(problem)
    return files


def _entry_problem(path: Path, real_root: str, root: Path) -> Problem | None:
    """Why a directory entry named like a plan is not read, or None to read it."""
    try:
        info = os.stat(path)
    except OSError as exc:
        if exc.errno == errno.ELOOP:
            return Problem(None, f"{path}: {_LOOP}", "fix or remove the link")
        return Problem(None, f"{path}: cannot read: {exc.strerror or exc}")
    if not stat.S_ISREG(info.st_mode):
        return Problem(None, f"{path}: not a regular file", _SPECIAL_HINT)
    if os.path.islink(path):
        real = os.path.realpath(path)
        if os.path.commonpath([real, real_root]) != real_root:
            return Problem(
                None,
                f"{path}: a symlink that leads outside {root}; refused (not read)",
                "plan files must live inside the plans directory: copy the file in instead "
                "of linking to it",
            )
    return None
