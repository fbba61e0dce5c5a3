"""Command line for the test environment.

``python -m testenv build``
    Build (or find in the cache) kube-apiserver, etcd and the CRDs, with progress lines.
``python -m testenv up [--kubeconfig PATH]``
    Start a control plane, write an admin kubeconfig to PATH (default
    ``./.testenv/kubeconfig``), and keep it running until Ctrl-C or SIGTERM; then stop it
    cleanly and remove the kubeconfig (it would point at a dead server).
"""

from __future__ import annotations

import argparse
import signal
import sys
import threading
from collections.abc import Sequence
from pathlib import Path
from types import FrameType

from testenv.binaries import BuildError, MissingPrerequisiteError, ensure_all
from testenv.controlplane import ControlPlane, ControlPlaneError

DEFAULT_KUBECONFIG = Path(".testenv/kubeconfig")


def main(argv: Sequence[str] | None = None) -> int:
    """Run the CLI; return the process exit code (2 = environment/build problem)."""
    args = _parser().parse_args(argv)
    try:
        if args.command == "build":
            return _build()
        return _up(args.kubeconfig)
    except (MissingPrerequisiteError, BuildError, ControlPlaneError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m testenv", description="Local etcd + kube-apiserver with KubeVirt CRDs."
    )
    commands = parser.add_subparsers(dest="command", required=True)
    commands.add_parser("build", help="build the binaries and CRDs into the cache")
    up = commands.add_parser("up", help="run a control plane until Ctrl-C / SIGTERM")
    up.add_argument(
        "--kubeconfig",
        type=Path,
        default=DEFAULT_KUBECONFIG,
        help=f"where to write the admin kubeconfig (default: {DEFAULT_KUBECONFIG})",
    )
    return parser


def _build() -> int:
    binaries = ensure_all(log=print)
    print(f"kube-apiserver: {binaries.kube_apiserver}")
    print(f"etcd:           {binaries.etcd}")
    print(f"CRDs:           {binaries.crd_dir}")
    return 0


def _up(kubeconfig: Path) -> int:
    stop = threading.Event()

    def request_stop(signum: int, frame: FrameType | None) -> None:
        stop.set()

    previous = {sig: signal.signal(sig, request_stop) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        with ControlPlane(log=print) as control_plane:
            path = control_plane.write_kubeconfig(kubeconfig, control_plane.admin_token)
            # TODO(lead): start the simulator here, e.g.
            #     simulator = testenv.simulator.start(control_plane.api(), ...)
            # and stop it in the `finally` below, before the control plane stops.
            try:
                _print_usage(control_plane, path)
                while not stop.wait(0.5):
                    pass
                print("stopping control plane ...")
            finally:
                path.unlink(missing_ok=True)
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
    print("stopped")
    return 0


def _print_usage(control_plane: ControlPlane, kubeconfig: Path) -> None:
    print(f"API server: {control_plane.server}")
    print(f"kubeconfig: {kubeconfig.resolve()}  (user admin, group system:masters)")
    print(f"logs:       {control_plane.workdir}/{{etcd,kube-apiserver}}.log")
    print(f"  export KUBECONFIG={kubeconfig.resolve()}")
    print("  kubectl get vm,vmi,vmim,dv -A")
    print("Press Ctrl-C (or send SIGTERM) to stop.", flush=True)
