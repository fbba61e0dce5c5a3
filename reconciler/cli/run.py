"""``run --every 15m PATH...``: `apply` on a schedule (loop mode, for a Deployment).

Every cycle is an `apply` (``reconciler.loop``): the same inputs and options, the plans read
(or fetched) again each time. Each cycle's report goes to stdout as it ends (``-o json``: one
compact ApplyReport per line), skipped and failed cycles to stderr; the loop never exits on
its own. SIGTERM or SIGINT ends it cleanly (exit 0): at once between cycles, at the next step
boundary during one, the VM in flight journaled for the next runner.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import signal
import threading
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from typing import TextIO

from reconciler import engine
from reconciler.cli.apply import add_apply_options, engine_options, exit_code, write_report
from reconciler.cli.common import add_command
from reconciler.cli.serve import Health, serve
from reconciler.cli.version import versioned
from reconciler.loop import Cycle, Loop
from reconciler.model.errors import ExitCode, Problem, UserError
from reconciler.model.outcome import ApplyReport
from reconciler.model.text import clean
from reconciler.model.windows import SpecError, format_duration, parse_duration
from reconciler.report.apply import apply_document
from reconciler.report.documents import dump


def add_parser(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    parser = add_command(
        commands,
        "run",
        help="apply again and again (loop mode, for a Deployment): run --every 15m PATH...",
        description="Run `apply` now and then every DURATION after the previous run ended, "
        "until SIGTERM: each run reads the plans again (fetches them again with --git-repo), "
        "takes the Lease for its duration (a run that finds it held is skipped) and survives "
        "failures (the next run is tried all the same). SIGTERM stops at the next step "
        "boundary with the VM in flight journaled, and exits 0.",
    )
    parser.add_argument(
        "--every",
        required=True,
        type=_interval,
        metavar="DURATION",
        help="pause between the end of one run and the start of the next: 30s, 15m, 1h",
    )
    parser.add_argument(
        "--metrics-port",
        type=_port,
        metavar="PORT",
        default=os.environ.get("VMSR_METRICS_PORT") or None,
        help="serve the last run's Prometheus metrics on :PORT/metrics, and the probes "
        "/healthz (the loop runs) and /readyz (the last run reached the API server) (default: "
        "$VMSR_METRICS_PORT; none)",
    )
    add_apply_options(parser, compact=False)


def _port(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a port number: {text!r}") from None
    if not 1 <= value <= 65535:
        raise argparse.ArgumentTypeError(f"a port is 1-65535: {value}")
    return value


def _interval(text: str) -> float:
    try:
        return parse_duration(text).total_seconds()
    except SpecError as exc:
        raise argparse.ArgumentTypeError(f"{exc.message} ({exc.hint})") from None


@contextlib.contextmanager
def _stopped_by_signals(loop: Loop) -> Iterator[None]:
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = {
        sig: signal.signal(sig, lambda _sig, _frame: loop.stop())
        for sig in (signal.SIGTERM, signal.SIGINT)
    }
    try:
        yield
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


def run(args: argparse.Namespace, out: TextIO, err: TextIO) -> ExitCode:
    options = engine_options(args, err)
    options["holder"] = f"{options['holder']}-loop"
    every = float(args.every)
    metrics = None
    health = Health()
    if args.metrics_port is not None:
        try:
            metrics = serve(args.metrics_port, health)
        except OSError as exc:
            raise UserError(
                [
                    Problem(
                        None,
                        f"--metrics-port {args.metrics_port}: {exc.strerror or exc}",
                        "pick a free port",
                    )
                ]
            ) from exc
        options["metrics"] = metrics  # every cycle records into the served registry

    def apply_once(stop: threading.Event) -> ApplyReport:
        return engine.apply(args.paths, stop=stop, **options)

    def heard(cycle: Cycle, following: float | None) -> None:
        health.heard(cycle.error)
        _report(out, err, args, cycle, following)

    loop = Loop(every, apply_once, heard)
    err.write(
        f"Loop mode: a run now, then {format_duration(timedelta(seconds=every))} after "
        "each run ends; SIGTERM stops.\n"
    )
    err.flush()
    try:
        with _stopped_by_signals(loop):
            cycles = loop.run()
    finally:
        health.stopped()
        if metrics is not None:
            metrics.close()
    err.write(f"Stopped after {cycles} run(s).\n")
    return ExitCode.OK


def _report(
    out: TextIO, err: TextIO, args: argparse.Namespace, cycle: Cycle, following: float | None
) -> None:
    then = (
        "stopping"
        if following is None
        else "next run at "
        + (datetime.now(UTC) + timedelta(seconds=following)).isoformat(timespec="seconds")
    )
    head = f"Run {cycle.number} ({cycle.seconds:.1f}s)"
    if cycle.report is not None:
        if args.output == "json":
            out.write(dump(versioned(apply_document(cycle.report)), "json", pretty=False))
        else:
            write_report(out, args, cycle.report)
        out.flush()
        code = exit_code(cycle.report, detailed=args.detailed_exitcode)
        err.write(f"{head}: exit code {int(code)}; {then}.\n")
    elif cycle.skipped:
        err.write(f"{head} skipped: {clean(cycle.skipped)}; {then}.\n")
    else:
        error = cycle.error
        problems = getattr(error, "problems", None)
        text = "; ".join(str(p) for p in problems) if problems else f"{error}"
        kind = "" if problems or hasattr(error, "exit_code") else "internal error: "
        err.write(f"error: {head} failed: {kind}{clean(text)}; {then}.\n")
    err.flush()
