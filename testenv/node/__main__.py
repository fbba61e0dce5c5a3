"""``python -m testenv.node --kubeconfig ADMIN --handler-kubeconfig HANDLER``: the node side
as a process (``testenv.real.engine`` starts it). It writes ``--ready-file`` once its first
LIST of everything is done, logs to stderr, and stops on SIGTERM or SIGINT. With
``--pod-network CIDR --metrics-socket PATH --metrics-cert CERT --metrics-key KEY`` CDI's
worker pods get IPs in CIDR and their metrics are served on PATH (``PodNetwork``)."""

from __future__ import annotations

import argparse
import logging
import signal
import sys
import threading
from pathlib import Path
from types import FrameType

import pykube

from testenv.node import PodNetwork, start
from testenv.node.runtime import SimConfig


def main(argv: list[str] | None = None) -> int:
    """Run the node side until a signal; return the exit code."""
    parser = argparse.ArgumentParser(prog="python -m testenv.node", description=__doc__)
    parser.add_argument("--kubeconfig", type=Path, required=True,
                        help="admin kubeconfig (pods, volumes, claims)")
    parser.add_argument("--handler-kubeconfig", type=Path, required=True,
                        help="kubeconfig of ServiceAccount kubevirt:kubevirt-handler")
    parser.add_argument("--ready-file", type=Path, help="written once synced")
    parser.add_argument("--copy-seconds-per-gib", type=float, default=0.0)
    parser.add_argument("--pod-network", help="CIDR of CDI worker pods' IPs")
    parser.add_argument("--metrics-socket", type=Path,
                        help="Unix socket the pod network hands the pods' port 8443 to")
    parser.add_argument("--metrics-cert", type=Path, help="its TLS certificate (PEM)")
    parser.add_argument("--metrics-key", type=Path, help="its TLS key (PEM)")
    args = parser.parse_args(argv)
    network_args = (args.pod_network, args.metrics_socket, args.metrics_cert, args.metrics_key)
    if any(network_args) and not all(network_args):
        parser.error("--pod-network, --metrics-socket, --metrics-cert and --metrics-key "
                     "go together")
    logging.basicConfig(level=logging.INFO, stream=sys.stderr,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    api = pykube.HTTPClient(pykube.KubeConfig.from_file(str(args.kubeconfig)))
    handler = pykube.HTTPClient(pykube.KubeConfig.from_file(str(args.handler_kubeconfig)))
    stop = threading.Event()

    def request_stop(signum: int, frame: FrameType | None) -> None:
        stop.set()

    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, request_stop)
    node = start(api, handler, SimConfig(copy_seconds_per_gib=args.copy_seconds_per_gib,
                                         progress_tick=0.05),
                 PodNetwork(*network_args) if all(network_args) else None)
    logging.getLogger("testenv.node").info("node side synced")
    if args.ready_file:
        args.ready_file.write_text("ready\n")
    try:
        while not stop.wait(1.0):
            for crash in node.sim.take_crashes():
                logging.getLogger("testenv.node").error("controller crash: %s", crash)
    finally:
        node.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
