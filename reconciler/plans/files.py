"""Plan files on disk: which files a set of paths names. Reads directories, nothing else.

A file is taken as it is (any extension); a directory is searched recursively for ``*.yaml`` /
``*.yml`` files, skipping hidden files and directories (``.git``) and not following symlinked
directories (loops). Problems are ``Problem`` values, never exceptions, so ``load_plans`` can
report them together with every other mistake.
"""

from __future__ import annotations

import os
from collections.abc import Iterable
from pathlib import Path

from reconciler.model.errors import PlanError, Problem

PLAN_SUFFIXES = (".yaml", ".yml")


def plan_files(paths: Iterable[str | Path]) -> list[Path]:
    """Expand ``paths`` into the plan files ``load_plans`` reads, sorted and de-duplicated.

    A file is taken as it is (any extension). A directory is searched recursively for
    ``*.yaml`` / ``*.yml`` files; hidden files and directories (``.git``) are skipped and
    symlinked directories are not followed (loops), though the directory given may itself be
    a symlink (git-sync's checkout link). Raises ``PlanError`` for a path that does not
    exist, is not a file or directory, or is a directory without plan files.
    """
    files, problems = expand(paths)
    if problems:
        raise PlanError(problems)
    return files


def expand(paths: Iterable[str | Path]) -> tuple[list[Path], list[Problem]]:
    """The plan files under ``paths`` (sorted, de-duplicated by real path) and the problems
    found on the way (missing paths, unreadable directories, directories without plans)."""
    found: dict[str, Path] = {}
    problems: list[Problem] = []
    for raw in paths:
        path = Path(raw)
        try:
            if path.is_dir():
                files = _walk(path, problems)
                if not files:
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


def _walk(root: Path, problems: list[Problem]) -> list[Path]:
    def unreadable(exc: OSError) -> None:
        problems.append(Problem(None, f"{exc.filename}: cannot read: {exc.strerror or exc}"))

    files: list[Path] = []
    for directory, subdirs, names in os.walk(root, onerror=unreadable, followlinks=False):
        subdirs[:] = sorted(d for d in subdirs if not d.startswith("."))
        files.extend(
            Path(directory, name)
            for name in names
            if not name.startswith(".") and name.lower().endswith(PLAN_SUFFIXES)
        )
    return files
