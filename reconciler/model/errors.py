"""Errors a user can act on, and the exit codes the CLI maps them to.

A user mistake never becomes a traceback: it is raised as a ``UserError`` subclass carrying one
or more ``Problem`` values (where, what, what to do) and printed by the CLI.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass

from reconciler.model.plan import Source
from reconciler.model.text import clean


class ExitCode(enum.IntEnum):
    """Documented, distinct process exit codes (README "Exit codes")."""

    OK = 0  # converged / nothing to do / validation passed
    PENDING = 1  # `plan`: changes are pending (like `diff`, `terraform plan -detailed-exitcode`)
    BAD_INPUT = 2  # invalid plans, flags, templates or kubeconfig: nothing was applied
    VM_FAILED = 3  # at least one VM failed and was rolled back
    LOCKED = 4  # another run holds the Lease
    OUTSIDE_WINDOW = 5  # no plan's maintenance window is open: nothing started
    CLUSTER_ERROR = 6  # the API server could not be reached or refused us (RBAC, 5xx)
    # `plan`/`apply`: a plan selected no VM (no such namespace, no VM there, the selector
    # matched none, every match excluded): a typo in a plan must never read as "in sync"
    NOTHING_SELECTED = 7


@dataclass(frozen=True)
class Problem:
    """One thing wrong with the input: where it is, what is wrong, and how to fix it."""

    source: Source | None
    message: str
    hint: str = ""

    def __post_init__(self) -> None:
        # Messages echo plan values, template output and server text: never raw control
        # characters or terminal escapes, never megabytes (model.text).
        object.__setattr__(self, "message", clean(self.message))
        object.__setattr__(self, "hint", clean(self.hint))

    def __str__(self) -> str:
        where = f"{self.source}: " if self.source else ""
        hint = f"\n  hint: {self.hint}" if self.hint else ""
        return f"{where}{self.message}{hint}"


class UserError(Exception):
    """A mistake in what the user gave us. Printed without a traceback."""

    exit_code: ExitCode = ExitCode.BAD_INPUT

    def __init__(self, problems: list[Problem] | tuple[Problem, ...]) -> None:
        self.problems = tuple(problems)
        super().__init__("\n".join(str(p) for p in self.problems))


class PlanError(UserError):
    """One or more plan files are invalid. Nothing is applied."""


class TemplateError(UserError):
    """A template failed to render or rendered something unsafe. Nothing is applied."""


class ClusterError(Exception):
    """The cluster could not be observed or refused a request. ``subject`` is Kind/ns/name."""

    exit_code: ExitCode = ExitCode.CLUSTER_ERROR

    def __init__(self, subject: str, message: str, *, code: int | None = None) -> None:
        self.subject = clean(subject, 300)
        self.code = code
        message = clean(message)
        super().__init__(f"{self.subject}: {message}" if subject else message)
