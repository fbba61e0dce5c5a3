"""``cancel [PLAN...] [NAMESPACE/]VM``: roll back a VM's move in flight (``apply.cancel``)."""

from __future__ import annotations

import argparse
import functools
import getpass
import os
import socket
from datetime import datetime
from pathlib import Path
from typing import TextIO

from reconciler.apply.cancel import Cancelled, NothingToCancel
from reconciler.apply.context import Settings
from reconciler.apply.lease import LeaseLost, LockHeld
from reconciler.cli.apply import add_lease_options, stop_on_signals
from reconciler.cli.common import (
    add_cluster_options,
    add_command,
    add_output_option,
    allowed_namespaces,
    dump_output,
    progress,
)
from reconciler.cli.version import versioned
from reconciler.engine import cancel
from reconciler.kube.kubeconfig import context_namespace
from reconciler.model.errors import ExitCode, Problem, UserError
from reconciler.model.outcome import FAILED, INTERRUPTED, ROLLED_BACK, ApplyReport, Outcome
from reconciler.plans.load import load_plans
from reconciler.report.apply import apply_document


def add_parser(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    parser = add_command(
        commands,
        "cancel",
        help="roll back a VM's move in flight (live: KubeVirt cancels the migration)",
        description="Rolls the open move of VM back through its journal, as apply rolls back "
        "a failed move: a live move by reverting the volumes (KubeVirt's cancellation: the "
        "guest stays on its source disks, same VMI), an offline move back to its source disks "
        "and its original run strategy; the destinations it created are deleted. It takes the "
        "Lease apply holds (another run holding it: exit 4, nothing changed; stop that run "
        "first, with SIGTERM or Ctrl-C: its move stays journaled), and treats the journal as "
        "untrusted like apply. A move past the point where nothing can be lost (live: its "
        "migration finished; offline: the VM started on its new disks) is not cancelled: "
        "the next apply finishes it. Safe to kill: the next apply or cancel finishes the "
        "rollback. If a plan still selects the VM, apply moves it again once its backoff "
        "ends: change the plan to keep it where it is.",
    )
    parser.add_argument(
        "plans",
        nargs="*",
        metavar="PLAN",
        help="plan files or directories: the VM must be in a namespace they act in (and is "
        "looked for in theirs when they act in one only)",
    )
    parser.add_argument(
        "vm",
        metavar="VM",
        help="the VM as NAMESPACE/NAME, or NAME (in -n NAMESPACE, else the plans' namespace, "
        "else the kubeconfig context's)",
    )
    parser.add_argument(
        "-n",
        "--namespace",
        metavar="NS",
        help="the VM's namespace (default: the one of the plans given, else the kubeconfig "
        "context's)",
    )
    add_lease_options(parser)
    add_cluster_options(parser)
    add_output_option(parser, ("text", "json", "yaml"), "text, or an ApplyReport document")


def _problem(message: str, hint: str) -> UserError:
    return UserError([Problem(None, message, hint)])


def target_of(args: argparse.Namespace) -> tuple[str, str]:
    """(namespace, VM) from the arguments: ``NS/VM``; else ``-n``; else the one namespace of
    the plans given; else the kubeconfig context's. Checked against the allow-list and the
    plans' namespaces. ``UserError`` (exit 2) when it cannot be told."""
    plans, vm = args.plans, args.vm
    namespace: str | None = args.namespace
    if "/" in vm:
        given, _, vm = vm.partition("/")
        if namespace and namespace != given:
            raise _problem(
                f"{args.vm} names namespace {given}, -n names {namespace}",
                "name the namespace once",
            )
        namespace = given
    if not vm or "/" in vm:
        raise _problem(f"not a VM: {args.vm!r}", "name it as NAMESPACE/NAME or NAME")
    allowed = allowed_namespaces(args)
    in_plans: set[str] = set()
    if plans:
        loaded = load_plans(
            [Path(p) for p in plans],
            allowed_namespaces=allowed,
            namespace=args.namespace,
            default_namespace=None
            if args.namespace
            else context_namespace(args.kubeconfig, args.context),
        )
        in_plans = {p.namespace for p in loaded}
        if namespace is None and len(in_plans) == 1:
            namespace = next(iter(in_plans))
    namespace = namespace or context_namespace(args.kubeconfig, args.context)
    if not namespace:
        raise _problem(
            f"which namespace is VM {vm} in?",
            "name it as NAMESPACE/NAME, or pass -n NAMESPACE"
            + (" (the plans act in several)" if len(in_plans) > 1 else ""),
        )
    if plans and namespace not in in_plans:
        raise _problem(
            f"no plan given acts in namespace {namespace}",
            f"the plans act in {', '.join(sorted(in_plans)) or 'no namespace'}",
        )
    if allowed is not None and namespace not in allowed:
        raise _problem(
            f"namespace {namespace} is not allowed (--allow-namespace, $VMSR_ALLOWED_NAMESPACES)",
            "cancel only in the namespaces this reconciler may act in",
        )
    return namespace, vm


def who() -> str:
    """Who cancels: ``user@host`` (in the journal's rollback reason and the record)."""
    try:
        user = getpass.getuser()
    except (KeyError, OSError):
        user = "unknown"
    return f"{user}@{socket.gethostname()}"


def exit_code(outcome: Outcome) -> ExitCode:
    """0 rolled back; 3 the rollback could not finish or the journal was refused; 1 stopped
    before the rollback ended (SIGTERM, Ctrl-C: it stays journaled)."""
    if outcome.result == ROLLED_BACK:
        return ExitCode.OK
    if outcome.result == INTERRUPTED:
        return ExitCode.PENDING
    return ExitCode.VM_FAILED


def report_text(done: Cancelled) -> str:
    o = done.outcome
    key = f"{o.namespace}/{o.vm}"
    if o.result == ROLLED_BACK:
        back = ", ".join(f"{volume}={source}" for volume, source, _ in o.volumes)
        lines = [
            f"VM {key}: move {o.migration_id} ({o.flow}) cancelled and rolled back in "
            f"{o.seconds:.1f}s: back on {back}; the destinations it created are deleted."
        ]
        if o.rule != "cancelled":  # it was rolling back already, for its own reason
            lines[0] += f" (It was rolling back already: {o.reason} [{o.rule}].)"
        if done.moves_again_after is not None:
            lines.append(
                "If a plan still selects it, apply moves it again after "
                f"{_when(done.moves_again_after)} (its backoff): change the plan to keep it "
                "where it is."
            )
        return "\n".join(lines) + "\n"
    if o.result == INTERRUPTED:
        return (
            f"VM {key}: stopped before the rollback of move {o.migration_id} ended; it stays "
            "journaled: the next apply or cancel finishes it.\n"
        )
    assert o.result == FAILED
    return (
        f"VM {key}: the cancel of move {o.migration_id or '?'} failed: {o.reason} [{o.rule}]; "
        "the journal is kept: fix what is named, then run cancel (or apply) again.\n"
    )


def _when(moment: datetime) -> str:
    return moment.isoformat(timespec="seconds")


def run(args: argparse.Namespace, out: TextIO, err: TextIO) -> ExitCode:
    namespace, vm = target_of(args)
    with stop_on_signals(err) as stop:
        try:
            done = cancel(
                namespace,
                vm,
                who=who(),
                kubeconfig=args.kubeconfig,
                context=args.context,
                lease_namespace=args.lease_namespace,
                holder=f"{socket.gethostname()}-{os.getpid()}",
                lease_duration=args.lease_duration,
                settings=Settings(),
                progress=functools.partial(progress, err),
                stop=stop,
            )
        except LeaseLost as exc:
            err.write(f"error: {exc}\n")
            return ExitCode.LOCKED
        except LockHeld as exc:
            err.write(
                f"error: {exc}; nothing was changed: stop that run first (SIGTERM or Ctrl-C: "
                "its move stays journaled), then cancel again\n"
            )
            return ExitCode.LOCKED
        except NothingToCancel as exc:
            if args.output == "text":
                out.write(f"{exc}.\n")
            else:
                out.write(dump_output(versioned(apply_document(ApplyReport())), args))
            return ExitCode.OK
    if args.output != "text":
        report = ApplyReport(outcomes=(done.outcome,))
        out.write(dump_output(versioned(apply_document(report)), args))
    else:
        out.write(report_text(done))
    return exit_code(done.outcome)
