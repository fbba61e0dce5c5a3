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
    """Documented, distinct process exit codes: ``EXIT_CODE_TABLE`` says what each means, when
    a scheduled `apply` returns it, and what a Job does with it (docs/exit-codes.md)."""

    OK = 0  # done: valid, in sync, or (apply) did all it could; states are reported, not failed
    PENDING = 1  # `plan`: changes pending; `apply`: stopped by SIGTERM, or with
    # --detailed-exitcode work remains (blocked, in progress, --max-vms)
    BAD_INPUT = 2  # invalid plans, flags, templates or kubeconfig: nothing was applied
    VM_FAILED = 3  # at least one VM failed (rolled back, or its rollback could not finish)
    LOCKED = 4  # the Lease: lost mid-run (always); held by another run at the start
    # (only with --detailed-exitcode)
    OUTSIDE_WINDOW = 5  # --detailed-exitcode: no move could start, every window was shut
    CLUSTER_ERROR = 6  # the API server could not be reached or refused us (RBAC, 5xx)
    # `plan`/`apply`: a plan selected no VM (no such namespace, no VM there, the selector
    # matched none, every match excluded): a typo in a plan must never read as "in sync"
    NOTHING_SELECTED = 7


class JobAction(enum.Enum):
    """What the shipped CronJob does with a pod that exits with a code (its
    ``podFailurePolicy``): the Job succeeds, the pod is retried (counted against
    ``backoffLimit``), or the Job fails at once (``FailJob``)."""

    SUCCEED = "Succeed"
    RETRY = "Count"
    FAIL = "FailJob"


@dataclass(frozen=True)
class ExitCodeDoc:
    """One row of the exit-code table. ``scheduled``: a scheduled `apply` (or a `run --every`
    cycle) without ``--detailed-exitcode`` can end with it; ``job``: what the CronJob does
    with it (None: a scheduled run never returns it)."""

    code: ExitCode
    meaning: str
    scheduled: bool
    job: JobAction | None


EXIT_CODE_TABLE: tuple[ExitCodeDoc, ...] = (
    ExitCodeDoc(
        ExitCode.OK,
        "done. `validate`: the plans are valid; `plan`: in sync; `apply` (and each `run "
        "--every` cycle): it did all it could: every move it started is verified, and VMs "
        "blocked, outside their maintenance window, left for a later run (`--max-vms`) or a "
        "Lease held by another run at the start are states, reported in Events, metrics and "
        "the status ConfigMap, not failures; `cancel`: the move was rolled back, or none was "
        "in flight",
        True,
        JobAction.SUCCEED,
    ),
    ExitCodeDoc(
        ExitCode.PENDING,
        "changes pending. `plan`: volumes to move, blocked or in progress; `status`: a move is "
        "in flight; `apply`: stopped by SIGTERM or Ctrl-C before the end (the VM in flight "
        "journaled, the next run resumes it), and with `--detailed-exitcode` work remains (a "
        "VM blocked or in progress, left by `--max-vms`, or outside its window while others "
        "moved or were blocked); `cancel`: stopped before its rollback ended (journaled: the "
        "next apply or cancel finishes it)",
        True,
        JobAction.RETRY,
    ),
    ExitCodeDoc(
        ExitCode.BAD_INPUT,
        "bad input: invalid plans, flags, templates or kubeconfig (an exec credential plugin "
        "that is not installed too), no plans at all, a missing Lease namespace, or a server "
        "dry run refused an object (HTTP 400, 409, 422 only); an internal error before the "
        "cluster was contacted; output that could not be written (broken pipe, closed stdout, "
        "full disk); `cancel`: no such VM, or its move is past the point where it can be "
        "cancelled; nothing was changed",
        True,
        JobAction.FAIL,
    ),
    ExitCodeDoc(
        ExitCode.VM_FAILED,
        "a VM failed: rolled back, or its rollback could not finish (also a run stopped by "
        "3 failures in a row); see its Events; `cancel`: its rollback could not finish, or its "
        "journal was refused",
        True,
        JobAction.FAIL,
    ),
    ExitCodeDoc(
        ExitCode.LOCKED,
        "the Lease. Always: this run lost its Lease mid-run (it stalled past the Lease's "
        "expiry, or another runner took it over) and stopped with the VM in flight journaled; "
        "with `--detailed-exitcode` also: another run held the Lease at the start (nothing "
        "was changed); `cancel`: also when another run holds it (nothing was changed)",
        True,
        JobAction.FAIL,
    ),
    ExitCodeDoc(
        ExitCode.OUTSIDE_WINDOW,
        "only with `--detailed-exitcode`: no move could start, and only because maintenance "
        "windows were shut (nothing was changed)",
        False,
        None,
    ),
    ExitCodeDoc(
        ExitCode.CLUSTER_ERROR,
        "cluster error: the API server could not be reached, refused a request (401, 403, "
        "5xx; during `--server-dry-run` too; reads are retried first, writes only when a "
        "second delivery is harmless), answered with a redirect (never followed) or "
        "with something that is not the API's JSON, or the exec credential plugin failed or "
        "timed out; an internal error after the cluster was contacted",
        True,
        JobAction.RETRY,
    ),
    ExitCodeDoc(
        ExitCode.NOTHING_SELECTED,
        "`plan`, `apply`: a plan selected no VM (no such namespace, no VM there, the selector "
        "matched none, every match excluded): a typo in a plan never reads as in sync",
        True,
        JobAction.FAIL,
    ),
)


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
