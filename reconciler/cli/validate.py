"""``validate PATH...``: check plan files without a cluster (for the plans repo's CI)."""

from __future__ import annotations

import argparse
from typing import TextIO

from reconciler.cli.common import add_command, add_plan_inputs, allowed_namespaces
from reconciler.model.errors import ExitCode
from reconciler.plans.load import load_plans
from reconciler.report.documents import API_VERSION, dump


def add_parser(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    parser = add_command(
        commands,
        "validate",
        help="check plan files (no cluster needed; for the plans repo's CI)",
        description="Check plan files: schema, names, durations, windows and conflicts. "
        "Needs no cluster. Exit 0 when valid, 2 with file:line errors otherwise.",
    )
    add_plan_inputs(parser)
    parser.add_argument("-o", "--output", choices=["text", "json"], default="text")


def run(args: argparse.Namespace, out: TextIO) -> ExitCode:
    """Load every plan (``PlanError`` on any problem, mapped by ``main``); print them."""
    plans = load_plans(
        args.paths, allowed_namespaces=allowed_namespaces(args), namespace=args.namespace
    )
    if args.output == "json":
        doc = {
            "apiVersion": API_VERSION,
            "kind": "ValidationReport",
            "valid": True,
            "plans": [
                {
                    "name": p.name,
                    "namespace": p.namespace,
                    "kind": p.origin_kind,
                    "file": p.source.file,
                    "line": p.source.line,
                }
                for p in plans
            ],
        }
        out.write(dump(doc, "json"))
    else:
        for plan in plans:
            out.write(
                f"ok  {plan.source.file}:{plan.source.line}  {plan.name} "
                f"(namespace {plan.namespace})\n"
            )
        out.write(f"{len(plans)} plan(s) valid.\n")
    return ExitCode.OK
