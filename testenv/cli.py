"""Command line for the test environment.

``python -m testenv build [--no-flux] [--apiserver-only]``
    Build (or find in the cache) everything the test suite runs, with progress lines:
    kube-apiserver, etcd and the CRDs, the Prometheus Pushgateway (for the metrics tests),
    Flux's source- and kustomize-controller (for the GitOps tests; ``--no-flux`` skips them,
    e.g. for ``demo`` or ``up`` only), and the real engine's upstream controllers
    (``testenv.real.build``, ~12 min cold on 2 cores; tests/env/test_real_engine.py runs
    them). ``--apiserver-only`` builds only kube-apiserver, etcd, the CRDs and the rest.
``python -m testenv up [--kubeconfig PATH] [--apiserver-only]``
    Start a control plane with the upstream KubeVirt, CDI and Kubernetes controllers and our
    node side (``testenv.real.engine``; ``--apiserver-only``: etcd, kube-apiserver and the
    CRDs, no controller at all), write an
    admin kubeconfig to PATH (default ``./.testenv/kubeconfig``), and keep it running until
    Ctrl-C or SIGTERM; then stop it cleanly and remove the kubeconfig (it would point at a
    dead server).
``python -m testenv demo [--copy-seconds-per-gib S] [--keep]``
    The seed scenario end to end on the real engine: a running and a
    stopped VM, and the reconciler run on ``plans/seed`` as a user would (validate, plan,
    apply, status, plan: one VM moved live through virt-controller's migration, one offline
    through cdi-controller's clone, both verified, then in sync).
"""

from __future__ import annotations

import argparse
import signal
import sys
import threading
from collections.abc import Sequence
from pathlib import Path
from types import FrameType

from testenv import demo
from testenv.binaries import (
    BuildError,
    MissingPrerequisiteError,
    ensure_all,
    ensure_flux,
    ensure_pushgateway,
)
from testenv.controlplane import ControlPlane, ControlPlaneError

DEFAULT_KUBECONFIG = Path(".testenv/kubeconfig")


def main(argv: Sequence[str] | None = None) -> int:
    """Run the CLI; return the process exit code (2 = environment/build problem)."""
    args = _parser().parse_args(argv)
    try:
        if args.command == "build":
            return _build(flux=not args.no_flux, real=not args.apiserver_only)
        if args.command == "demo":
            ensure_all(log=print)  # the real engine builds its own part when it starts
            return demo.run(copy_seconds_per_gib=args.copy_seconds_per_gib, keep=args.keep,
                            kubeconfig=DEFAULT_KUBECONFIG if args.keep else None,
                            wait_forever=_wait_for_signal)
        if args.apiserver_only:
            return _up_apiserver(args.kubeconfig)
        return _up_real(args.kubeconfig)
    except (MissingPrerequisiteError, BuildError, ControlPlaneError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m testenv", description=(
            "The local environment: etcd + kube-apiserver with the KubeVirt and CDI CRDs, "
            "and the real engine (upstream controllers, our node side)."
        ),
    )
    commands = parser.add_subparsers(dest="command", required=True)
    build = commands.add_parser("build", help="build the binaries and CRDs into the cache")
    build.add_argument("--no-flux", action="store_true",
                       help="skip Flux's source- and kustomize-controller (GitOps tests only)")
    build.add_argument("--apiserver-only", action="store_true",
                       help="skip the real engine's upstream KubeVirt, CDI, KWOK, "
                            "kube-scheduler and kube-controller-manager (~12 min cold)")
    up = commands.add_parser("up", help="run a control plane until Ctrl-C / SIGTERM")
    up.add_argument(
        "--kubeconfig",
        type=Path,
        default=DEFAULT_KUBECONFIG,
        help=f"where to write the admin kubeconfig (default: {DEFAULT_KUBECONFIG})",
    )
    up.add_argument("--apiserver-only", action="store_true",
                    help="etcd, kube-apiserver and the CRDs: no KubeVirt, CDI, CSI or "
                         "Kubernetes controller at all")
    demo_cmd = commands.add_parser("demo", help="the seed VMs moved by apply, end to end")
    demo_cmd.add_argument("--copy-seconds-per-gib", type=float, default=1.0,
                          help="the node side's copy speed (default 1.0 s per GiB, about a "
                               "fast array; 0 = instant)")
    demo_cmd.add_argument("--keep", action="store_true",
                          help=f"keep the cluster running afterwards (kubeconfig: "
                               f"{DEFAULT_KUBECONFIG})")
    return parser


def _build(*, flux: bool, real: bool = False) -> int:
    binaries = ensure_all(log=print)
    print(f"kube-apiserver: {binaries.kube_apiserver}")
    print(f"etcd:           {binaries.etcd}")
    print(f"CRDs:           {binaries.crd_dir}")
    print(f"pushgateway:    {ensure_pushgateway(log=print)}")
    if flux:
        controllers = ensure_flux(log=print)
        print(f"source-controller:    {controllers.source_controller}")
        print(f"kustomize-controller: {controllers.kustomize_controller}")
        print(f"Flux CRDs:            {', '.join(map(str, controllers.crd_dirs))}")
    if real:
        from testenv.real.build import ensure_real

        engine = ensure_real(log=print)
        for name in ("virt_controller", "virt_api", "kubevirt_manifests", "cdi_controller",
                     "cdi_crd_dir", "kwok", "kube_scheduler", "kube_controller_manager"):
            print(f"{name.replace('_', '-') + ':':25s}{getattr(engine, name)}")
    return 0


def _wait_for_signal() -> None:
    """Block until Ctrl-C or SIGTERM."""
    stop = threading.Event()

    def request_stop(signum: int, frame: FrameType | None) -> None:
        stop.set()

    previous = {sig: signal.signal(sig, request_stop) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        while not stop.wait(0.5):
            pass
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


def _up_apiserver(kubeconfig: Path) -> int:
    with ControlPlane(log=print) as control_plane:
        path = control_plane.write_kubeconfig(kubeconfig, control_plane.admin_token)
        try:
            _print_usage(control_plane, path)
            _wait_for_signal()
            print("stopping ...")
        finally:
            path.unlink(missing_ok=True)
    print("stopped")
    return 0


def _up_real(kubeconfig: Path) -> int:
    from testenv.real.engine import RealEngine

    with RealEngine(log=print) as engine:
        path = engine.control_plane.write_kubeconfig(kubeconfig, engine.control_plane.admin_token)
        try:
            _print_usage(engine.control_plane, path)
            print(f"  upstream: {', '.join(engine.processes)} (logs: {engine.workdir}/*.log)")
            _wait_for_signal()
            print("stopping ...")
        finally:
            path.unlink(missing_ok=True)
    print("stopped")
    return 0


def _print_usage(control_plane: ControlPlane, kubeconfig: Path) -> None:
    print(f"API server: {control_plane.server}")
    print(f"kubeconfig: {kubeconfig.resolve()}  (user admin, group system:masters)")
    print(f"logs:       {control_plane.workdir}/{{etcd,kube-apiserver}}.log")
    print(f"  export KUBECONFIG={kubeconfig.resolve()}")
    print("  kubectl get vm,vmi,vmim,dv -A")
    print("Press Ctrl-C (or send SIGTERM) to stop.", flush=True)
