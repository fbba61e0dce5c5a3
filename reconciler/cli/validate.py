"""``validate PATH...``: check plan files without a cluster (for the plans repo's CI)."""

from __future__ import annotations

import argparse
from typing import TextIO

from reconciler.cli.common import (
    add_command,
    add_output_option,
    add_plan_inputs,
    allowed_namespaces,
    dump_output,
    progress,
)
from reconciler.cli.version import versioned
from reconciler.kube.kubeconfig import context_namespace
from reconciler.model.errors import ExitCode
from reconciler.plans.load import read_plans
from reconciler.report.documents import API_VERSION


def add_parser(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    parser = add_command(
        commands,
        "validate",
        help="check plan files (no cluster needed; for the plans repo's CI)",
        description="Check plan files: schema, names, durations, windows and conflicts. "
        "Needs no cluster. Documents that are clearly not plans (any other API group: the VMs, "
        "StorageClasses and Kustomizations of a GitOps repository) are skipped with one note. "
        "Exit 0 when valid, 2 with file:line errors otherwise.",
    )
    add_plan_inputs(parser)
    parser.add_argument(
        "--kubeconfig",
        help="read this kubeconfig for its context's namespace, which a document without a "
        "namespace then acts in when -n is not given (kubectl's rule); no request is sent "
        "(default: none is read, so that CI gives the same answer everywhere; with --context "
        "alone, $KUBECONFIG or ~/.kube/config)",
    )
    parser.add_argument(
        "--context",
        help="the kubeconfig context whose namespace to use (default: the current-context, "
        "when --kubeconfig is given)",
    )
    add_output_option(parser, ("text", "json"), "text, or a ValidationReport document (json)")


def run(args: argparse.Namespace, out: TextIO, err: TextIO) -> ExitCode:
    """Load every plan (``PlanError`` on any problem, mapped by ``main``); print them."""
    found = read_plans(
        args.paths,
        allowed_namespaces=allowed_namespaces(args),
        namespace=args.namespace,
        default_namespace=None
        if args.namespace or not (args.kubeconfig or args.context)
        else context_namespace(args.kubeconfig, args.context),
    )
    if found.note:
        progress(err, f"note: {found.note}")
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
                for p in found.plans
            ],
            "skipped": [
                {
                    "file": s.source.file,
                    "line": s.source.line,
                    "apiVersion": s.api_version,
                    "kind": s.kind,
                }
                for s in found.skipped
            ],
        }
        out.write(dump_output(versioned(doc), args))
    else:
        for plan in found.plans:
            out.write(
                f"ok  {plan.source.file}:{plan.source.line}  {plan.name} "
                f"(namespace {plan.namespace})\n"
            )
        out.write(f"{len(found.plans)} plan(s) valid.\n")
    return ExitCode.OK
