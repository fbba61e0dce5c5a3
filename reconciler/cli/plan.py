"""``plan PATH...``: what would move, how, and what is blocked; changes nothing."""

from __future__ import annotations

import argparse
import functools
from pathlib import Path
from typing import TextIO

from reconciler import engine
from reconciler.cli.common import (
    add_cluster_options,
    add_command,
    add_output_option,
    add_plan_inputs,
    allowed_namespaces,
    dump_output,
    git_spec,
    progress,
)
from reconciler.cli.version import versioned
from reconciler.model.errors import ExitCode
from reconciler.report.documents import plan_document
from reconciler.report.text import manifests_text, plan_text


def add_parser(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    parser = add_command(
        commands,
        "plan",
        help="show what would move, how, and what is blocked (changes nothing)",
        description="Observe the cluster (one LIST per kind), diff it against the plans and "
        "print a per-VM preview. Writes nothing; --server-dry-run sends every rendered object "
        "with dryRun=All so admission and schema errors show now, not during apply.",
    )
    add_plan_inputs(parser, git=True)
    add_cluster_options(parser)
    add_output_option(
        parser, ("text", "json", "yaml"), "text (a table per VM), or a PlanReport document"
    )
    parser.add_argument(
        "--show-manifests",
        action="store_true",
        help="include the DataVolumes and VM JSON patches that apply would send",
    )
    parser.add_argument(
        "--server-dry-run",
        action="store_true",
        help="send every DataVolume create and VM patch with dryRun=All",
    )
    parser.add_argument(
        "--templates",
        metavar="DIR",
        type=Path,
        help="directory of Jinja templates overriding the shipped ones one file at a time "
        "(default: none, the shipped templates)",
    )
    parser.add_argument("--verbose", "-v", action="store_true", help="list in-sync VMs in full")


def run(args: argparse.Namespace, out: TextIO, err: TextIO) -> ExitCode:
    """Run ``engine.plan``, print its result; exit 0 converged, 1 pending, 2 dry run refused,
    7 a plan selected no VM."""
    result = engine.plan(
        args.paths,
        kubeconfig=args.kubeconfig,
        context=args.context,
        allowed_namespaces=allowed_namespaces(args),
        namespace=args.namespace,
        templates_dir=args.templates,
        manifests=args.show_manifests,
        server_dry_run=args.server_dry_run,
        progress=functools.partial(progress, err),
        git=git_spec(args),
    )
    write(out, args, result)
    if result.dry_run_errors:
        return ExitCode.BAD_INPUT
    if result.empty_plans:
        return ExitCode.NOTHING_SELECTED
    return ExitCode.OK if result.converged else ExitCode.PENDING


def write(out: TextIO, args: argparse.Namespace, result: engine.PlanResult) -> None:
    """The plan on stdout, as text for people or as a PlanReport document for machines."""
    manifests = result.manifests if args.show_manifests else None
    if args.output != "text":
        doc = plan_document(
            result.verdicts,
            manifests=manifests,
            dry_run_errors=result.dry_run_errors,
            windows=result.windows,
            empty_plans=result.empty_plans,
        )
        out.write(dump_output(versioned(doc), args))  # indented unless --compact
        return
    out.write(
        plan_text(
            result.verdicts,
            verbose=args.verbose,
            windows=result.windows,
            empty_plans=result.empty_plans,
        )
    )
    if manifests:
        out.write(manifests_text(manifests))
    for line in result.dry_run_errors:
        out.write(f"server dry run: {line}\n")
    if args.server_dry_run and not result.dry_run_errors:
        out.write("Server dry run: every DataVolume and VM patch was accepted.\n")
