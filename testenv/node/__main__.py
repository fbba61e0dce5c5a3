"""``python -m testenv.node --kubeconfig ADMIN --handler-kubeconfig HANDLER``: the node side
as a process (``testenv.real.engine`` starts it). It writes ``--ready-file`` once its first
LIST of everything is done, logs to stderr, and stops on SIGTERM or SIGINT."""

from __future__ import annotations

import argparse
import logging
import signal
import sys
import threading
from pathlib import Path
from types import FrameType

import pykube

from testenv.node import start
from testenv.simulator.core import SimConfig


def main(argv: list[str] | None = None) -> int:
    """Run the node side until a signal; return the exit code."""
    parser = argparse.ArgumentParser(prog="python -m testenv.node", description=__doc__)
    parser.add_argument("--kubeconfig", type=Path, required=True,
                        help="admin kubeconfig (pods, volumes, claims)")
    parser.add_argument("--handler-kubeconfig", type=Path, required=True,
                        help="kubeconfig of ServiceAccount kubevirt:kubevirt-handler")
    parser.add_argument("--ready-file", type=Path, help="written once synced")
    parser.add_argument("--copy-seconds-per-gib", type=float, default=0.0)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, stream=sys.stderr,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    api = pykube.HTTPClient(pykube.KubeConfig.from_file(str(args.kubeconfig)))
    handler = pykube.HTTPClient(pykube.KubeConfig.from_file(str(args.handler_kubeconfig)))
    stop = threading.Event()

    def request_stop(signum: int, frame: FrameType | None) -> None:
        stop.set()

    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, request_stop)
    sim = start(api, handler, SimConfig(copy_seconds_per_gib=args.copy_seconds_per_gib,
                                        progress_tick=0.05))
    logging.getLogger("testenv.node").info("node side synced")
    if args.ready_file:
        args.ready_file.write_text("ready\n")
    try:
        while not stop.wait(1.0):
            for crash in sim.take_crashes():
                logging.getLogger("testenv.node").error("controller crash: %s", crash)
    finally:
        sim.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
