"""``apply PATH...``: move the disks, one VM at a time, verified, rolled back on failure."""

from __future__ import annotations

import argparse
import contextlib
import functools
import os
import signal
import socket
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any, TextIO

from reconciler import engine
from reconciler.apply.context import Settings
from reconciler.apply.lease import DEFAULT_DURATION, MIN_DURATION, LeaseLost, LockHeld
from reconciler.cli import plan as plan_command
from reconciler.cli.common import (
    add_cluster_options,
    add_command,
    add_output_option,
    add_plan_inputs,
    add_reporting_options,
    allowed_namespaces,
    dump_output,
    git_spec,
    progress,
    reporting_options,
)
from reconciler.cli.version import versioned
from reconciler.model.errors import ExitCode
from reconciler.model.outcome import INTERRUPTED, ApplyReport
from reconciler.report.apply import apply_document, apply_text


def add_parser(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    parser = add_command(
        commands,
        "apply",
        help="move the disks: one VM at a time, journaled, verified, rolled back on failure",
        description="Finish (or roll back) every move a journal on a VM says is open, then "
        "move each VM the plans want elsewhere, one at a time, in (namespace, name) order: live "
        "(KubeVirt volume migration) or offline (stop, CDI clone, swap, start), verified before "
        "the next. A failure rolls the VM back and the run goes on; 3 failures in a row stop "
        "it. A Lease keeps a second run out (it exits 0; 4 with --detailed-exitcode). Progress "
        "goes to stderr; stdout has the report. Safe to kill at any point: the next run "
        "resumes from the journal.",
    )
    add_apply_options(parser, compact=True)
    parser.add_argument(
        "--dry-run", action="store_true", help="change nothing: the same as `plan --server-dry-run`"
    )
    parser.add_argument("--show-manifests", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--verbose", "-v", action="store_true", help=argparse.SUPPRESS)


def add_apply_options(parser: argparse.ArgumentParser, *, compact: bool) -> None:
    """What `apply` and `run` share: plan inputs (with --git-repo), cluster, output, limits.
    ``compact``: offer ``--compact`` (``run`` writes one compact JSON line per run anyway)."""
    add_plan_inputs(parser, git=True)
    add_cluster_options(parser)
    add_reporting_options(parser)
    if compact:
        add_output_option(
            parser, ("text", "json", "yaml"), "text, or an ApplyReport document (json | yaml)"
        )
    else:
        parser.add_argument(
            "-o",
            "--output",
            choices=["text", "json", "yaml"],
            default="text",
            help="text, or an ApplyReport per run: json (one compact line per run, a stream) "
            "or yaml",
        )
    parser.add_argument(
        "--detailed-exitcode",
        action="store_true",
        help="exit with the state left behind, not only with failures (like terraform's "
        "-detailed-exitcode): 1 work remains (blocked, in progress, --max-vms), 4 another run "
        "held the Lease, 5 every window was shut; without it these are exit 0 (reported in "
        "Events, metrics and the status ConfigMap)",
    )
    parser.add_argument(
        "--max-vms",
        type=_positive,
        metavar="N",
        help="start at most N new moves in this run (open journals are always finished first) "
        "(default: no limit)",
    )
    parser.add_argument(
        "--parallel",
        type=_lanes,
        default=1,
        metavar="N",
        help="move up to N VMs at once, each journaled, verified and rolled back on its own "
        "(default: 1, one VM at a time). Live moves start only while KubeVirt has a free "
        "migration slot (parallelMigrationsPerCluster, parallelOutboundMigrationsPerNode of "
        f"its CR), so none of ours waits in its queue; at most {MAX_PARALLEL}",
    )
    parser.add_argument(
        "--lease-namespace",
        default=os.environ.get("POD_NAMESPACE") or "vm-storage-reconciler",
        metavar="NS",
        help="namespace of the Lease that keeps runs apart (default: "
        "$POD_NAMESPACE, else vm-storage-reconciler)",
    )
    parser.add_argument(
        "--lease-duration",
        type=_lease_seconds,
        default=DEFAULT_DURATION,
        metavar="SECONDS",
        help="how long the Lease lasts unless renewed (renewed every third of it; a run "
        "that cannot renew it for two thirds of it stops writing; another run may take "
        f"it over once it expired) (default: {DEFAULT_DURATION})",
    )
    parser.add_argument(
        "--max-migration-attempts",
        type=_positive,
        default=3,
        metavar="N",
        help="failed KubeVirt migrations of one VM before it is rolled back",
    )
    parser.add_argument(
        "--templates",
        metavar="DIR",
        type=Path,
        help="directory of Jinja templates overriding the shipped ones one file at a time "
        "(default: none, the shipped templates)",
    )


MAX_PARALLEL = 20
"""The most lanes ``--parallel`` takes: KubeVirt's own defaults allow 5 migrations at once, and
every lane holds its own watches on the API server."""


def _lanes(text: str) -> int:
    value = _positive(text)
    if value > MAX_PARALLEL:
        raise argparse.ArgumentTypeError(
            f"at most {MAX_PARALLEL}: {value} (KubeVirt runs 5 migrations at once by default)"
        )
    return value


def _positive(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a whole number: {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1: {value}")
    return value


def add_lease_options(parser: argparse.ArgumentParser) -> None:
    """--allow-namespace, --lease-namespace and --lease-duration of the commands beside
    `apply` that take its Lease (`cancel`, `prune`)."""
    parser.add_argument(
        "--allow-namespace",
        action="append",
        metavar="NS",
        dest="allowed_namespaces",
        help="refuse any other namespace (repeatable; default: $VMSR_ALLOWED_NAMESPACES, "
        "comma-separated, else any)",
    )
    parser.add_argument(
        "--parallel",
        type=_lanes,
        default=1,
        metavar="N",
        help="move up to N VMs at once, each journaled, verified and rolled back on its own "
        "(default: 1, one VM at a time). Live moves start only while KubeVirt has a free "
        "migration slot (parallelMigrationsPerCluster, parallelOutboundMigrationsPerNode of "
        f"its CR), so none of ours waits in its queue; at most {MAX_PARALLEL}",
    )
    parser.add_argument(
        "--lease-namespace",
        default=os.environ.get("POD_NAMESPACE") or "vm-storage-reconciler",
        metavar="NS",
        help="namespace of the Lease apply holds (default: $POD_NAMESPACE, else "
        "vm-storage-reconciler)",
    )
    parser.add_argument(
        "--lease-duration",
        type=_lease_seconds,
        default=DEFAULT_DURATION,
        metavar="SECONDS",
        help="how long the Lease lasts unless renewed, as for apply",
    )


def _lease_seconds(text: str) -> int:
    value = _positive(text)
    if value < MIN_DURATION:
        raise argparse.ArgumentTypeError(f"must be at least {MIN_DURATION} seconds: {value}")
    return value


@contextlib.contextmanager
def stop_on_signals(err: TextIO) -> Iterator[threading.Event]:
    """SIGTERM (a CronJob pod being stopped) and a first Ctrl-C set the event: the run stops
    at the next step boundary or within a second of a wait, the journal kept for the next
    run; the line it then prints says what KubeVirt or CDI go on doing meanwhile. A second
    Ctrl-C quits at once (KeyboardInterrupt: still safe, like any crash)."""
    stop = threading.Event()
    if threading.current_thread() is not threading.main_thread():
        yield stop
        return

    def interrupt(_sig: int, _frame: object) -> None:
        if stop.is_set():
            raise KeyboardInterrupt
        stop.set()
        with contextlib.suppress(OSError, ValueError):
            err.write(
                "stopping at the next step (within a second of a wait); Ctrl-C again quits at "
                "once. A move in flight stays journaled: KubeVirt and CDI go on with what they "
                "were doing; the next apply resumes it, `cancel NAMESPACE/VM` rolls it back\n"
            )
            err.flush()

    previous = signal.signal(signal.SIGTERM, lambda _sig, _frame: stop.set())
    previous_int = signal.signal(signal.SIGINT, interrupt)
    try:
        yield stop
    finally:
        signal.signal(signal.SIGTERM, previous)
        signal.signal(signal.SIGINT, previous_int)


def exit_code(report: ApplyReport, *, detailed: bool = False) -> ExitCode:
    """The run's exit code (``model.errors.EXIT_CODE_TABLE``). Failures always fail: 3 a VM
    failed (rolled back or not). 1 the run was stopped (SIGTERM) before the end. Otherwise the
    run did all it could: 0, unless ``detailed`` (``--detailed-exitcode``) asks for the state
    left behind: 5 no move could start, and only because windows are shut; 1 work remains (a
    VM blocked or in progress, left by ``--max-vms``, or outside its window while others
    moved or were blocked); 0 everything selected is in sync."""
    if report.failed:
        return ExitCode.VM_FAILED
    if report.empty_plans:  # a typo in a plan never reads as done
        return ExitCode.NOTHING_SELECTED
    if any(o.result == INTERRUPTED for o in report.outcomes):
        return ExitCode.PENDING
    if not detailed:
        return ExitCode.OK
    blocked = any(v.action.value in ("Blocked", "InProgress") for v in report.verdicts)
    if report.outside_window and not (report.outcomes or report.pending or blocked):
        return ExitCode.OUTSIDE_WINDOW  # the windows alone kept every move from starting
    if report.pending or blocked or report.outside_window:
        return ExitCode.PENDING
    return ExitCode.OK


def engine_options(args: argparse.Namespace, err: TextIO) -> dict[str, Any]:
    """``engine.apply``'s keyword arguments from the options ``add_apply_options`` added
    (all but the paths and the stop event)."""
    return {
        "kubeconfig": args.kubeconfig,
        "context": args.context,
        "allowed_namespaces": allowed_namespaces(args),
        "namespace": args.namespace,
        "templates_dir": args.templates,
        "max_vms": args.max_vms,
        "parallel": args.parallel,
        "lease_namespace": args.lease_namespace,
        "holder": f"{socket.gethostname()}-{os.getpid()}",
        "settings": Settings(max_migration_attempts=args.max_migration_attempts),
        "progress": functools.partial(progress, err),
        "git": git_spec(args),
        **reporting_options(args, err),
        "lease_duration": args.lease_duration,
    }


def write_report(out: TextIO, args: argparse.Namespace, report: ApplyReport) -> None:
    if args.output != "text":
        out.write(dump_output(versioned(apply_document(report)), args))
    else:
        out.write(apply_text(report))


def run(args: argparse.Namespace, out: TextIO, err: TextIO) -> ExitCode:
    if args.dry_run:
        args.server_dry_run = True
        return plan_command.run(args, out, err)
    with stop_on_signals(err) as stop:
        try:
            report = engine.apply(
                args.paths,
                stop=stop,
                run_id=getattr(args, "run_id", None),
                **engine_options(args, err),
            )
        except LeaseLost as exc:
            # This run stalled past its Lease (frozen, cut off): a failure, whatever the flags.
            err.write(f"error: {exc}\n")
            return ExitCode.LOCKED
        except LockHeld as exc:
            # Another run holds the Lease: a state, not a failure (the other run is doing the
            # work); the report says so, the code only with --detailed-exitcode.
            err.write(f"skipped: {exc}; nothing was changed\n")
            write_report(out, args, ApplyReport(stopped_early=f"skipped: {exc}"))
            return ExitCode.LOCKED if args.detailed_exitcode else ExitCode.OK
    write_report(out, args, report)
    return exit_code(report, detailed=args.detailed_exitcode)
