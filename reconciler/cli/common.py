"""What the commands share: the program's texts, common options, and output helpers."""

from __future__ import annotations

import argparse
import io
import logging
import os
import re
import shutil
import sys
import textwrap
from collections.abc import Mapping
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, TextIO

from reconciler.cli.version import exit_codes_epilog
from reconciler.gitsource import GIT_MAX_BYTES, GIT_TIMEOUT, PASSWORD_ENV, USERNAME_ENV, GitSpec
from reconciler.model.errors import EXIT_CODE_TABLE, ExitCode, Problem, UserError
from reconciler.model.progress import fields_of
from reconciler.model.quantity import parse_quantity
from reconciler.model.text import redact_urls, shown, split_userinfo
from reconciler.publish.metrics import gateway_url, read_basic_auth
from reconciler.report.documents import dump
from reconciler.report.logs import KEYS, level_of, log_line

PROG = "vm-storage-reconciler"

EXAMPLES = """\
examples:
  vm-storage-reconciler validate plans/
  vm-storage-reconciler plan plans/ --kubeconfig ~/.kube/config
  vm-storage-reconciler plan plans/seed -o json --show-manifests
  vm-storage-reconciler plan plans/ --server-dry-run
  vm-storage-reconciler apply plans/
  vm-storage-reconciler status -A
  vm-storage-reconciler cancel apps/vm-fedora
  vm-storage-reconciler sources -A
  vm-storage-reconciler prune -n apps --older-than 7d --dry-run
"""
EXIT_CODES = exit_codes_epilog(EXIT_CODE_TABLE) + "\n" + EXAMPLES

_CLUSTER = (
    ExitCode.CLUSTER_ERROR,
    "cluster error: the API server could not be reached or refused a request (401, 403, 5xx), "
    "or the exec credential plugin failed; an internal error after the cluster was contacted",
)
_BAD_INPUT = (
    ExitCode.BAD_INPUT,
    "bad input: plans, flags or kubeconfig (nothing was changed); an internal error before the "
    "cluster was contacted; output that could not be written",
)
COMMAND_EXIT_CODES: dict[str, tuple[tuple[ExitCode, str], ...]] = {
    "validate": (
        (ExitCode.OK, "the plans are valid"),
        (
            ExitCode.BAD_INPUT,
            "invalid plans, paths or flags, each problem with file:line and a hint; output "
            "that could not be written",
        ),
    ),
    "plan": (
        (ExitCode.OK, "in sync: nothing to move"),
        (ExitCode.PENDING, "changes pending: volumes to move, blocked or in progress"),
        (
            ExitCode.BAD_INPUT,
            _BAD_INPUT[1] + "; or the server dry run refused an object (HTTP 400, 409, 422)",
        ),
        _CLUSTER,
        (ExitCode.NOTHING_SELECTED, "a plan selected no VM (the other plans are still shown)"),
    ),
    "apply": (
        (
            ExitCode.OK,
            "it did all it could: every move it started is verified; VMs blocked, outside "
            "their window, left by --max-vms, and a Lease held by another run at the start are "
            "states (Events, metrics, the status ConfigMap), not failures",
        ),
        (
            ExitCode.PENDING,
            "stopped by SIGTERM before the end (the VM in flight journaled); with "
            "--detailed-exitcode also: work remains (blocked, in progress, --max-vms)",
        ),
        (
            ExitCode.BAD_INPUT,
            _BAD_INPUT[1] + "; a missing Lease namespace; with --dry-run, the server dry run "
            "refused an object",
        ),
        (
            ExitCode.VM_FAILED,
            "a VM failed: rolled back, or its rollback could not finish (also a run stopped "
            "by 3 failures in a row); see its Events",
        ),
        (
            ExitCode.LOCKED,
            "this run lost its Lease mid-run and stopped (the VM in flight journaled); with "
            "--detailed-exitcode also: another run held the Lease at the start",
        ),
        (
            ExitCode.OUTSIDE_WINDOW,
            "only with --detailed-exitcode: no move could start, every selected VM's window "
            "was shut",
        ),
        _CLUSTER,
        (ExitCode.NOTHING_SELECTED, "a plan selected no VM (the other plans still acted)"),
    ),
    "run": (
        (
            ExitCode.OK,
            "stopped by SIGTERM or SIGINT (each run's own exit code is printed on stderr as it "
            "ends; a failed run never ends the loop)",
        ),
        (
            ExitCode.BAD_INPUT,
            "bad flags, a --metrics-port that cannot be bound, an unreadable "
            "--pushgateway-auth-file",
        ),
        (ExitCode.CLUSTER_ERROR, "an internal error of the loop after a run contacted the cluster"),
    ),
    "status": (
        (ExitCode.OK, "no move is in flight"),
        (ExitCode.PENDING, "a move is in flight (a journal on a VM)"),
        _BAD_INPUT,
        _CLUSTER,
    ),
    "sources": ((ExitCode.OK, "listed (also when there is none)"), _BAD_INPUT, _CLUSTER),
    "prune": (
        (
            ExitCode.OK,
            "every kept source old enough that nothing uses was deleted (with --dry-run: "
            "listed); those in use or not recorded by us are left, and said so",
        ),
        _BAD_INPUT,
        (
            ExitCode.LOCKED,
            "the Lease: another run holds it (nothing was deleted), or this run lost it mid-run "
            "(the source being deleted stays journaled for the next prune)",
        ),
        _CLUSTER,
    ),
    "cancel": (
        (ExitCode.OK, "the move was rolled back, or none was in flight"),
        (
            ExitCode.PENDING,
            "stopped (SIGTERM, Ctrl-C) before the rollback ended: it stays journaled, the next "
            "apply or cancel finishes it",
        ),
        (
            ExitCode.BAD_INPUT,
            "bad flags, no such VM, or a move past the point where it can be cancelled; "
            "nothing was changed",
        ),
        (ExitCode.VM_FAILED, "the rollback could not finish, or the journal was refused"),
        (
            ExitCode.LOCKED,
            "another run holds the Lease (nothing was changed), or this cancel lost it mid-run",
        ),
        _CLUSTER,
    ),
}
"""The exit codes each command can return, for its ``--help`` (a subset of
``EXIT_CODE_TABLE``; tests/unit/test_cli.py checks both)."""


def command_epilog(name: str) -> str:
    """``name --help``'s epilog: only the exit codes that command can return."""
    lines = ["exit codes:"]
    lines += [f"  {int(code)}  {meaning}" for code, meaning in COMMAND_EXIT_CODES[name]]
    return "\n".join(lines) + "\n"


class HelpFormatter(argparse.HelpFormatter):
    """``--help`` for people: descriptions wrapped to the terminal (at most 100 columns),
    the epilog's tables (indented lines) wrapped with a hanging indent, and every option's
    default shown (appended when its help does not already say it)."""

    def __init__(self, prog: str, **kwargs: Any) -> None:
        width = kwargs.pop("width", None) or shutil.get_terminal_size().columns - 2
        super().__init__(prog, width=max(min(width, 100), 40), **kwargs)

    def _split_lines(self, text: str, width: int) -> list[str]:
        return textwrap.wrap(" ".join(text.split()), width, break_on_hyphens=False)

    def _fill_text(self, text: str, width: int, indent: str) -> str:
        paragraphs = []
        for paragraph in text.strip("\n").split("\n\n"):
            lines = paragraph.splitlines()
            if any(line[:1].isspace() for line in lines):  # a table: line by line
                paragraphs.append("\n".join(_hanging(line, width, indent) for line in lines))
            else:
                paragraphs.append(
                    textwrap.fill(
                        " ".join(paragraph.split()),
                        width,
                        initial_indent=indent,
                        subsequent_indent=indent,
                        break_on_hyphens=False,
                    )
                )
        return "\n\n".join(paragraphs) + "\n"

    def _get_help_string(self, action: argparse.Action) -> str:
        text = action.help or ""
        default = action.default
        if (
            not action.option_strings
            or default in (None, False, argparse.SUPPRESS)
            or "default" in text
        ):
            return text
        return text + " (default: %(default)s)"


def _hanging(line: str, width: int, indent: str) -> str:
    """A table row (``  CODE  meaning``) wrapped under its meaning."""
    head = re.match(r"^(\s+\S+\s{2,})\S", line)
    if len(indent + line) <= width or head is None:
        return indent + line
    lead = indent + head.group(1)
    return textwrap.fill(
        line[len(head.group(1)) :],
        width,
        initial_indent=lead,
        subsequent_indent=" " * len(lead),
        break_on_hyphens=False,
    )


def add_command(
    commands: argparse._SubParsersAction[argparse.ArgumentParser],
    name: str,
    *,
    help: str,
    description: str,
) -> argparse.ArgumentParser:
    """A sub-command parser with its exit codes as epilog, the shared ``--debug`` and
    ``--log-format`` options, and ``HelpFormatter``."""
    parser = commands.add_parser(
        name,
        help=help,
        description=description,
        epilog=command_epilog(name),
        formatter_class=HelpFormatter,
    )
    parser.add_argument(
        "--debug",
        action="store_true",
        help="log every request and stage to stderr (standard logging, level DEBUG)",
    )
    parser.add_argument(
        "--log-format",
        choices=["text", "json"],
        default="text",
        help="stderr as text or JSON lines: one object per line with time, level, "
        "msg, runId, commit, namespace, vm, volume, step, migrationId (warnings of the "
        "standard logging module included)",
    )
    return parser


def add_output_option(parser: argparse.ArgumentParser, choices: tuple[str, ...], help: str) -> None:
    """``-o/--output`` (default text) and ``--compact``: JSON is indented, as kubectl prints
    it, unless ``--compact`` asks for one line."""
    parser.add_argument("-o", "--output", choices=choices, default="text", help=help)
    parser.add_argument(
        "--compact",
        action="store_true",
        help="with -o json: one line, no indentation (for line-oriented tools; faster for "
        "thousands of VMs)",
    )


def dump_output(document: Mapping[str, Any], args: argparse.Namespace) -> str:
    """``document`` as ``-o`` asks: JSON indented unless ``--compact``, or YAML."""
    return dump(document, args.output, pretty=not getattr(args, "compact", False))


def add_reporting_options(parser: argparse.ArgumentParser) -> None:
    """Where a run's metrics go besides the status ConfigMap and the Events (apply, run)."""
    parser.add_argument(
        "--pushgateway",
        metavar="URL",
        default=os.environ.get("VMSR_PUSHGATEWAY") or None,
        help="push the run's Prometheus metrics to this Pushgateway at the end of the run "
        "(default: $VMSR_PUSHGATEWAY; none). A user:password@ in it is sent as basic auth and "
        "never printed, but on the command line it is visible in ps: prefer "
        "--pushgateway-auth-file",
    )
    parser.add_argument(
        "--pushgateway-auth-file",
        metavar="PATH",
        type=Path,
        default=os.environ.get("VMSR_PUSHGATEWAY_AUTH_FILE") or None,
        help="basic auth for the Pushgateway: user:password on the file's first line, read at "
        "every push (default: $VMSR_PUSHGATEWAY_AUTH_FILE)",
    )
    parser.add_argument(
        "--pushgateway-job",
        metavar="JOB",
        default="vm-storage-reconciler",
        help="the job label of the push (default: vm-storage-reconciler)",
    )


def reporting_options(args: argparse.Namespace, err: TextIO) -> dict[str, object]:
    """``engine.apply``'s Pushgateway options from ``add_reporting_options``'s flags. An auth
    file that cannot be read or holds no ``user:password`` is a ``UserError`` now (each push
    reads it again); credentials in a ``--pushgateway`` given on the command line are warned
    about (visible in ps), in ``$VMSR_PUSHGATEWAY`` they are not."""
    url = args.pushgateway
    given = url and url != os.environ.get("VMSR_PUSHGATEWAY")  # on the command line
    if given and split_userinfo(gateway_url(url))[1] is not None:
        progress(
            err,
            f"warning: --pushgateway {redact_urls(gateway_url(url))} carries credentials: on "
            "a command line they are visible to every user of the machine (ps, /proc); use "
            "--pushgateway-auth-file or $VMSR_PUSHGATEWAY instead",
        )
    auth_file = args.pushgateway_auth_file
    if auth_file is not None:
        try:
            read_basic_auth(auth_file)
        except ValueError as exc:
            raise UserError(
                [
                    Problem(
                        None,
                        f"--pushgateway-auth-file {exc}",
                        "put user:password on the file's first line",
                    )
                ]
            ) from None
    return {
        "pushgateway": url,
        "pushgateway_job": args.pushgateway_job,
        "pushgateway_auth_file": auth_file,
    }


def add_plan_inputs(parser: argparse.ArgumentParser, *, git: bool = False) -> None:
    """PATH... and the namespace options; with ``git``, also ``--git-repo`` and its options
    (then PATH may be left out)."""
    parser.add_argument(
        "paths",
        nargs="*" if git else "+",
        metavar="PATH",
        help="plan files or directories (searched recursively); a directory in a Git checkout "
        "(git-sync's link) records its HEAD commit",
    )
    if git:
        add_git_options(parser)
    parser.add_argument(
        "--allow-namespace",
        action="append",
        metavar="NS",
        dest="allowed_namespaces",
        help="refuse plans for any other namespace (repeatable; default: "
        "$VMSR_ALLOWED_NAMESPACES, comma-separated, else any)",
    )
    parser.add_argument(
        "-n",
        "--namespace",
        metavar="NS",
        help="kubectl's rule for plan documents: one without a namespace (metadata.namespace "
        "of a KMC plan, spec.namespace of a StoragePlan) acts in NS; one naming another "
        "namespace is an error (default: the kubeconfig context's namespace, for documents "
        "without one)",
    )


def add_git_options(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group(
        "plans from Git",
        "instead of PATH: fetch REF of a repository with the git CLI (shallow, into a cache) "
        "and read the plans at --git-path in it; its commit goes into journals and the report",
    )
    group.add_argument(
        "--git-repo",
        metavar="URL",
        help="repository URL (https, ssh or a path). Credentials in it are never printed nor "
        "put on git's command line, but on ours they are visible in ps: prefer "
        f"--git-credentials-file or ${PASSWORD_ENV} (default: none, the plans are PATH)",
    )
    group.add_argument(
        "--git-ref", metavar="REF", default="main", help="branch, tag or full SHA (default: main)"
    )
    group.add_argument(
        "--git-path",
        metavar="DIR",
        default=".",
        help="plans directory inside the repository (default: all of it)",
    )
    group.add_argument(
        "--git-cache",
        metavar="DIR",
        type=Path,
        help="where the clone is kept (default: $VMSR_GIT_CACHE, else "
        "~/.cache/vm-storage-reconciler/git)",
    )
    group.add_argument(
        "--git-timeout",
        metavar="SECONDS",
        type=_seconds,
        default=GIT_TIMEOUT,
        help=f"limit for each git command (default: {GIT_TIMEOUT:g})",
    )
    group.add_argument(
        "--git-credentials-file",
        metavar="PATH",
        type=Path,
        default=os.environ.get("VMSR_GIT_CREDENTIALS_FILE") or None,
        help="https credentials for --git-repo: user:token, or a token, on the file's first "
        "line, read at every fetch and handed to git by a credential helper, never on a "
        f"command line (default: $VMSR_GIT_CREDENTIALS_FILE; else ${USERNAME_ENV} and "
        f"${PASSWORD_ENV}; else git's own)",
    )
    group.add_argument(
        "--git-max-bytes",
        metavar="SIZE",
        type=_bytes,
        default=GIT_MAX_BYTES,
        help="most the repository may take in the cache, its objects and checkout together "
        f"(bytes, or 200Mi, 1Gi; default: {GIT_MAX_BYTES // 2**20}Mi)",
    )


def git_spec(args: argparse.Namespace) -> GitSpec | None:
    """The ``--git-*`` options as a ``GitSpec`` (None without ``--git-repo``)."""
    if not getattr(args, "git_repo", None):
        return None
    return GitSpec(
        url=args.git_repo,
        ref=args.git_ref,
        path=args.git_path,
        cache=args.git_cache,
        timeout=args.git_timeout,
        credentials_file=args.git_credentials_file,
        max_bytes=args.git_max_bytes,
    )


def _bytes(text: str) -> int:
    try:
        value: int = parse_quantity(text)
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"not a size: {text!r} (bytes, or with a suffix: 200Mi, 1Gi)"
        ) from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1 byte: {text}")
    return value


def _seconds(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number of seconds: {text!r}") from None
    if not 0 < value <= 3600:
        raise argparse.ArgumentTypeError(f"must be more than 0 and at most 3600: {text}")
    return value


def add_cluster_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--kubeconfig",
        help="kubeconfig file (default: $KUBECONFIG, "
        "~/.kube/config, then the in-cluster ServiceAccount)",
    )
    parser.add_argument(
        "--context", help="kubeconfig context to use (default: the current-context)"
    )


def allowed_namespaces(args: argparse.Namespace) -> frozenset[str] | None:
    """The namespace allow-list from flags, else from $VMSR_ALLOWED_NAMESPACES; None = any
    (neither given). A blank entry (``--allow-namespace ''``, a set but blank variable, an
    empty item between commas) is a ``UserError``: it would silently mean "no restriction"
    or "nothing allowed", and an allow-list is a safety control."""
    if args.allowed_namespaces is not None:
        names = [n.strip() for n in args.allowed_namespaces]
        if not all(names):
            raise _blank("--allow-namespace ''", "pass a namespace name, or leave the flag out")
        return frozenset(names)
    env = os.environ.get("VMSR_ALLOWED_NAMESPACES")
    if env is None:
        return None
    names = [n.strip() for n in env.split(",")]
    if not all(names):
        raise _blank(
            f"VMSR_ALLOWED_NAMESPACES={shown(env, 80)!s}",
            "list namespaces separated by commas (a,b), or unset the variable for no restriction",
        )
    return frozenset(names)


def _blank(what: str, hint: str) -> UserError:
    return UserError([Problem(None, f"{what}: a blank namespace in the allow-list", hint)])


def progress(err: TextIO, message: str) -> None:
    """Progress for people goes to stderr, so stdout stays clean for -o json. A ``Line``'s
    fields reach JSON logs as keys (``JsonLines``)."""
    if isinstance(err, JsonLines):
        err.record(message)
        return
    err.write(message + "\n")
    err.flush()


class JsonLines(io.TextIOBase):
    """stderr under ``--log-format json``: whatever is written to it (progress, errors,
    hints) leaves as one JSON object per line (``report.logs``). ``fields`` (``runId``,
    ``commit``) go on every line; a commit named by a progress line sticks for later ones.
    A line opening with ``error:`` or ``warning:`` gets that level; an indented line (a hint
    under an error) the level of the line before."""

    def __init__(self, stream: TextIO, **fields: str | None) -> None:
        super().__init__()
        self.stream = stream
        self.fields: dict[str, str | None] = dict(fields)
        self._pending = ""
        self._level = "info"

    def writable(self) -> bool:
        return True

    def write(self, text: str) -> int:
        self._pending += text
        *lines, self._pending = self._pending.split("\n")
        for line in lines:
            self.record(line)
        return len(text)

    def record(self, message: str, level: str | None = None) -> None:
        fields = fields_of(message)
        if fields.get("commit"):
            self.fields["commit"] = fields["commit"]
        text = str(message)
        if level is None:
            found = level_of(text)
            if found is not None:
                level, text = found
            elif text.startswith((" ", "\t")):
                level, text = self._level, text.strip()
            else:
                level = "info"
        self._level = level
        merged = {**self.fields, **fields}
        self.stream.write(
            log_line(time=datetime.now(UTC), level=level, message=text, fields=merged) + "\n"
        )
        self.stream.flush()

    def flush(self) -> None:
        if self._pending:
            line, self._pending = self._pending, ""
            self.record(line)
        self.stream.flush()


class JsonFormatter(logging.Formatter):
    """Log records as ``report.logs`` JSON lines; structured fields from ``extra=``."""

    def __init__(self, **fields: str | None) -> None:
        super().__init__()
        self.fields = fields

    def format(self, record: logging.LogRecord) -> str:
        message = record.getMessage()
        if record.exc_info:
            message += "\n" + self.formatException(record.exc_info)
        extra = {k: getattr(record, k) for k in KEYS if isinstance(getattr(record, k, None), str)}
        return log_line(
            time=datetime.fromtimestamp(record.created, UTC),
            level=record.levelname.lower(),
            message=message,
            fields={**self.fields, **extra},
            logger=record.name,
        )


def configure_logging(
    debug: bool, stream: TextIO | None = None, *, log_format: str = "text", run_id: str = ""
) -> logging.Handler | None:
    """With ``debug``, the ``reconciler`` loggers write DEBUG and up to ``stream`` (stderr);
    without it they stay silent (a NullHandler), so what users see on stderr is unchanged;
    with ``log_format`` json, WARNING and up (DEBUG with ``debug``) as JSON lines.
    Returns the handler added, for the caller to remove (tests run many commands)."""
    logger = logging.getLogger("reconciler")
    if not debug and log_format != "json":
        return None
    handler = logging.StreamHandler(stream or sys.stderr)
    if log_format == "json":
        handler.setFormatter(JsonFormatter(runId=run_id or None))
        handler.setLevel(logging.DEBUG if debug else logging.WARNING)
    else:
        handler.setFormatter(logging.Formatter("debug: %(name)s: %(message)s"))
    logger.addHandler(handler)
    logger.setLevel(logging.DEBUG if debug else logging.WARNING)
    return handler
