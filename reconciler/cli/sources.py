"""``sources``: the source disks moves kept, with their VM, move, age, class and size."""

from __future__ import annotations

import argparse
from datetime import UTC, datetime
from typing import TextIO

from reconciler import sources
from reconciler.cli.common import (
    add_cluster_options,
    add_command,
    add_output_option,
    dump_output,
)
from reconciler.cli.version import versioned
from reconciler.model.errors import ExitCode
from reconciler.report.kept import sources_document, sources_rows, sources_summary
from reconciler.report.text import table


def add_namespace_options(parser: argparse.ArgumentParser) -> None:
    """``-n NS`` (repeatable) or ``-A``, as kubectl get takes them."""
    where = parser.add_mutually_exclusive_group()
    where.add_argument(
        "-n",
        "--namespace",
        action="append",
        dest="namespaces",
        metavar="NS",
        help="a namespace (repeatable) (default: the kubeconfig context's namespace, else default)",
    )
    where.add_argument(
        "-A", "--all-namespaces", action="store_true", help="every namespace (one LIST per kind)"
    )


def add_parser(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    parser = add_command(
        commands,
        "sources",
        help="list the source disks moves kept (retention Keep), with VM, move, age, size",
        description="Lists every source disk a move kept (retention Keep, or a Delete that had "
        "to keep one) in the namespaces, as kubectl get picks them: each one's VM, move id, "
        "age, StorageClass and size, and what uses it now. Every move's, not only the last "
        "one's: each kept source carries its move's record (label and annotation "
        "vmstorage.dev/kept-source), and the sources of moves made before that are found "
        "through their destinations' records. Changes nothing; `prune` deletes those nothing "
        "uses.",
    )
    add_namespace_options(parser)
    add_cluster_options(parser)
    add_output_option(parser, ("text", "json", "yaml"), "text (a table), or a KeptSources document")


def run(args: argparse.Namespace, out: TextIO, err: TextIO) -> ExitCode:
    found = sources.sources(
        namespaces=args.namespaces or (),
        all_namespaces=args.all_namespaces,
        kubeconfig=args.kubeconfig,
        context=args.context,
    )
    now = datetime.now(UTC)
    if args.output != "text":
        out.write(dump_output(versioned(sources_document(found, now)), args))
    elif found:
        out.write(table(sources_rows(found, now)) + "\n" + sources_summary(found) + "\n")
    else:
        out.write("No kept sources in these namespaces.\n")
    return ExitCode.OK
