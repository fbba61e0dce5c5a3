"""What the commands share: the program's texts, common options, and output helpers."""

from __future__ import annotations

import argparse
import logging
import os
import sys
from typing import TextIO

from reconciler.model.errors import Problem, UserError
from reconciler.model.text import shown

PROG = "vm-storage-reconciler"

EXIT_CODES = """\
exit codes:
  0  converged: every selected volume is already on its target (validate: plans are valid)
  1  changes pending: `plan` found volumes to move, in progress or blocked
  2  bad input: invalid plan files, flags, templates or kubeconfig, no plans, or a
     server dry run refused an object (400/409/422); nothing was changed
  3  a VM failed and was rolled back (apply)
  4  another run holds the lock (apply)
  5  outside every plan's maintenance window (apply)
  6  cluster error: the API server could not be reached, refused a request (401, 403,
     5xx), redirected, or answered nonsense; or the exec credential plugin failed

examples:
  vm-storage-reconciler validate plans/
  vm-storage-reconciler plan plans/ --kubeconfig ~/.kube/config
  vm-storage-reconciler plan plans/seed -o json --show-manifests
  vm-storage-reconciler plan plans/ --server-dry-run
"""


def add_command(
    commands: argparse._SubParsersAction[argparse.ArgumentParser],
    name: str,
    *,
    help: str,
    description: str,
) -> argparse.ArgumentParser:
    """A sub-command parser with the shared epilog and the shared ``--debug`` option."""
    parser = commands.add_parser(
        name,
        help=help,
        description=description,
        epilog=EXIT_CODES,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument(
        "--debug",
        action="store_true",
        help="log every request and stage to stderr (standard logging, level DEBUG)",
    )
    return parser


def add_plan_inputs(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "paths", nargs="+", metavar="PATH", help="plan files or directories (searched recursively)"
    )
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
        "namespace is an error",
    )


def add_cluster_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--kubeconfig",
        help="kubeconfig file (default: $KUBECONFIG, "
        "~/.kube/config, then the in-cluster ServiceAccount)",
    )
    parser.add_argument("--context", help="kubeconfig context to use")


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
    """Progress for people goes to stderr, so stdout stays clean for -o json."""
    err.write(message + "\n")
    err.flush()


def configure_logging(debug: bool, stream: TextIO | None = None) -> logging.Handler | None:
    """With ``debug``, the ``reconciler`` loggers write DEBUG and up to ``stream`` (stderr);
    without it they stay silent (a NullHandler), so what users see on stderr is unchanged.
    Returns the handler added, for the caller to remove (tests run many commands)."""
    logger = logging.getLogger("reconciler")
    if not debug:
        return None
    handler = logging.StreamHandler(stream or sys.stderr)
    handler.setFormatter(logging.Formatter("debug: %(name)s: %(message)s"))
    logger.addHandler(handler)
    logger.setLevel(logging.DEBUG)
    return handler
