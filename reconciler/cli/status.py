"""``status``: what a journal says is in flight, and each VM's last migration."""

from __future__ import annotations

import argparse
from typing import TextIO

from reconciler import engine
from reconciler.cli.common import (
    add_cluster_options,
    add_command,
    add_output_option,
    dump_output,
)
from reconciler.cli.version import versioned
from reconciler.model.errors import ExitCode
from reconciler.report.apply import status_document, status_rows
from reconciler.report.text import table


def add_parser(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    parser = add_command(
        commands,
        "status",
        help="show moves in flight (journals on VMs) and each VM's last migration",
        description="Reads the VMs of the plans' namespaces (and -n), or like kubectl get: "
        "with neither, the kubeconfig context's namespace; with -A, every namespace. Prints "
        "every open journal (step, since when, rolling back or not), the last migration record "
        "each VM keeps, and each VM a plan names that does not exist (with the VM it probably "
        "meant). Open moves in namespaces no plan names are shown too. Changes nothing.",
    )
    parser.add_argument(
        "paths",
        nargs="*",
        metavar="PATH",
        help="plan files or directories: their namespaces are shown",
    )
    where = parser.add_mutually_exclusive_group()
    where.add_argument(
        "-n",
        "--namespace",
        action="append",
        dest="namespaces",
        metavar="NS",
        help="a namespace to show (repeatable) (default: with no PATH, the kubeconfig "
        "context's namespace, else default)",
    )
    where.add_argument(
        "-A",
        "--all-namespaces",
        action="store_true",
        help="every namespace (one LIST of VMs across the cluster)",
    )
    add_cluster_options(parser)
    add_output_option(parser, ("text", "json", "yaml"), "text (a table), or a Status document")


def run(args: argparse.Namespace, out: TextIO, err: TextIO) -> ExitCode:
    entries = engine.status(
        args.paths,
        namespaces=args.namespaces or (),
        all_namespaces=args.all_namespaces,
        kubeconfig=args.kubeconfig,
        context=args.context,
    )
    if args.output != "text":
        out.write(dump_output(versioned(status_document(entries)), args))
    elif entries:
        out.write(table(status_rows(entries)) + "\n")
    else:
        out.write("No moves in flight and no migration records in these namespaces.\n")
    return ExitCode.PENDING if any(entry[2] is not None for entry in entries) else ExitCode.OK
