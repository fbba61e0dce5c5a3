"""``prune --older-than AGE``: delete the kept sources nothing uses any more."""

from __future__ import annotations

import argparse
import contextlib
import functools
import os
import signal
import socket
import threading
from collections.abc import Iterator
from datetime import UTC, datetime
from typing import TextIO

from reconciler import sources
from reconciler.apply.lease import LockHeld
from reconciler.cli.apply import add_lease_options
from reconciler.cli.common import (
    add_cluster_options,
    add_command,
    add_output_option,
    allowed_namespaces,
    dump_output,
    progress,
)
from reconciler.cli.sources import add_namespace_options
from reconciler.cli.version import versioned
from reconciler.model.errors import ExitCode
from reconciler.model.windows import SpecError, parse_duration
from reconciler.report.kept import prune_document, prune_text


def add_parser(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    parser = add_command(
        commands,
        "prune",
        help="delete kept sources that nothing uses, older than --older-than (try --dry-run)",
        description="Deletes the source disks moves kept (see `sources`) that were kept more "
        "than AGE ago, that no pod mounts, no VM (volumes, dataVolumeTemplates) or VMI refers "
        "to and no DataVolume clones, and that a destination of ours records as its move's "
        "source: anything else is left and said why. Run it with --dry-run first. It holds "
        "the Lease apply holds (so it never runs beside a move), checks each source again "
        "right before its delete, and journals the delete on the source first "
        "(vmstorage.dev/pruning): a prune killed in between is finished by the next one.",
    )
    add_namespace_options(parser)
    parser.add_argument(
        "--older-than",
        required=True,
        type=_age,
        metavar="AGE",
        help="only sources kept longer ago than this: 7d, 24h, 30m, or 0s for any age",
    )
    parser.add_argument(
        "--dry-run", action="store_true", help="print what would be deleted; change nothing"
    )
    add_lease_options(parser)
    add_cluster_options(parser)
    add_output_option(parser, ("text", "json", "yaml"), "text, or a PruneReport document")


def _age(text: str) -> float:
    if text.strip() in ("0", "0s"):
        return 0.0
    try:
        return parse_duration(text).total_seconds()
    except SpecError as exc:
        raise argparse.ArgumentTypeError(f"{exc.message} ({exc.hint})") from None


@contextlib.contextmanager
def _stop_on_sigterm() -> Iterator[threading.Event]:
    """SIGTERM stops the prune between two sources (none is left half-deleted)."""
    stop = threading.Event()
    if threading.current_thread() is not threading.main_thread():
        yield stop
        return
    previous = signal.signal(signal.SIGTERM, lambda _sig, _frame: stop.set())
    try:
        yield stop
    finally:
        signal.signal(signal.SIGTERM, previous)


def run(args: argparse.Namespace, out: TextIO, err: TextIO) -> ExitCode:
    with _stop_on_sigterm() as stop:
        try:
            report = sources.prune(
                older_than=args.older_than,
                dry_run=args.dry_run,
                namespaces=args.namespaces or (),
                all_namespaces=args.all_namespaces,
                allowed_namespaces=allowed_namespaces(args),
                kubeconfig=args.kubeconfig,
                context=args.context,
                lease_namespace=args.lease_namespace,
                lease_duration=args.lease_duration,
                holder=f"{socket.gethostname()}-{os.getpid()}-prune",
                progress=functools.partial(progress, err),
                stop=stop,
            )
        except LockHeld as exc:
            err.write(f"error: {exc}; nothing was deleted\n")
            return ExitCode.LOCKED
    now = datetime.now(UTC)
    if args.output != "text":
        doc = prune_document(
            dry_run=report.dry_run,
            older_than=report.older_than,
            deleted=report.deleted,
            resumed=report.resumed,
            left=report.left,
            now=now,
        )
        out.write(dump_output(versioned(doc), args))
    else:
        out.write(
            prune_text(
                dry_run=report.dry_run,
                deleted=report.deleted,
                resumed=report.resumed,
                left=report.left,
                now=now,
            )
        )
    return ExitCode.OK
