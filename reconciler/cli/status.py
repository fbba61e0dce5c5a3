"""``status``: what a journal says is in flight, and each VM's last migration."""

from __future__ import annotations

import argparse
from typing import TextIO

from reconciler import engine
from reconciler.cli.common import add_cluster_options, add_command
from reconciler.cli.version import versioned
from reconciler.model.errors import ExitCode
from reconciler.report.apply import status_document, status_rows
from reconciler.report.documents import dump
from reconciler.report.text import table


def add_parser(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    parser = add_command(
        commands,
        "status",
        help="show moves in flight (journals on VMs) and each VM's last migration",
        description="Reads the VMs of the given namespaces (or of the plans' namespaces) and "
        "prints every open journal (step, since when, rolling back or not) and the last "
        "migration record each VM keeps, and each VM a plan names that does not exist (with "
        "the VM it probably meant). Changes nothing. Exit 1 when a move is in flight.",
    )
    parser.add_argument(
        "paths",
        nargs="*",
        metavar="PATH",
        help="plan files or directories: their namespaces are shown",
    )
    parser.add_argument(
        "-n",
        "--namespace",
        action="append",
        dest="namespaces",
        metavar="NS",
        help="a namespace to show (repeatable)",
    )
    add_cluster_options(parser)
    parser.add_argument("-o", "--output", choices=["text", "json", "yaml"], default="text")


def run(args: argparse.Namespace, out: TextIO, err: TextIO) -> ExitCode:
    entries = engine.status(
        args.paths,
        namespaces=args.namespaces or (),
        kubeconfig=args.kubeconfig,
        context=args.context,
    )
    if args.output != "text":
        out.write(dump(versioned(status_document(entries)), args.output, pretty=out.isatty()))
    elif entries:
        out.write(table(status_rows(entries)) + "\n")
    else:
        out.write("No moves in flight and no migration records in these namespaces.\n")
    return ExitCode.PENDING if any(entry[2] is not None for entry in entries) else ExitCode.OK
