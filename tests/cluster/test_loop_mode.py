"""Loop mode, as a process: ``python -m reconciler run --every 1s PLAN`` against the session's
real engine.

One loop lives through it all: its first cycle moves a VM; a cycle that finds the Lease held
is skipped; a cycle with broken plans fails, is reported, and the next one runs; a plan change
is picked up by the next cycle; and SIGTERM while a live migration is under way ends the
process promptly with exit 0, the Lease released and the VM's journal consistent, which the
next `apply` finishes.
"""

from __future__ import annotations

import json
import os
import re
import signal
import socket
import subprocess
import sys
import threading
from datetime import UTC, datetime
from pathlib import Path
from typing import IO, Any

import pykube
import pytest
import requests

from reconciler.cli.main import main
from reconciler.model import journal as journals
from reconciler.model.journal import Step
from reconciler.model.names import JOURNAL_ANNOTATION
from testenv import seed
from testenv.controlplane import ControlPlane
from tests.cluster.test_plan import _merge, fedora, plan_file, settle
from tests.support.kube import Eventually, annotation, get_json

ROOT = Path(__file__).resolve().parents[2]
KV = "kubevirt.io/v1"
COORDINATION = "coordination.k8s.io/v1"
FAULT = "sim.vmstorage.dev/fault"


@pytest.fixture(scope="module", autouse=True)
def cluster_objects(api: pykube.HTTPClient) -> None:
    seed.seed_cluster(api)


class Lines:
    """Everything a pipe says, line by line, read by a thread (so the process never blocks)."""

    def __init__(self, pipe: IO[str]) -> None:
        self.lines: list[str] = []
        self._lock = threading.Lock()
        self._thread = threading.Thread(target=self._read, args=(pipe,), daemon=True)
        self._thread.start()

    def _read(self, pipe: IO[str]) -> None:
        for line in pipe:
            with self._lock:
                self.lines.append(line.rstrip("\n"))

    def snapshot(self) -> list[str]:
        with self._lock:
            return list(self.lines)

    def count(self, text: str) -> int:
        return sum(text in line for line in self.snapshot())

    def reports(self) -> list[dict[str, Any]]:
        return [json.loads(line) for line in self.snapshot() if line.startswith("{")]

    def join(self) -> None:
        self._thread.join(timeout=10)


def start(args: list[str]) -> tuple[subprocess.Popen[str], Lines, Lines]:
    """``python -m reconciler ARGS`` in the background; its stdout and stderr, read."""
    process = subprocess.Popen(
        [sys.executable, "-m", "reconciler", *args], cwd=ROOT, env=dict(os.environ), text=True,
        stdout=subprocess.PIPE, stderr=subprocess.PIPE,
    )  # fmt: skip
    assert process.stdout is not None and process.stderr is not None
    return process, Lines(process.stdout), Lines(process.stderr)


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def hold_lease(api: pykube.HTTPClient, namespace: str, holder: str) -> None:
    spec = {"holderIdentity": holder, "leaseDurationSeconds": 600,
            "renewTime": datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")}  # fmt: skip
    _merge(api, COORDINATION, namespace, "leases/vm-storage-reconciler", {"spec": spec})


def plan_body(*vms: str) -> str:
    return "storageClass: ceph-rbd\nvirtualMachines:\n" + "".join(f"  - name: {v}\n" for v in vms)


def test_loop_mode_survives_cycles_and_stops_cleanly_on_sigterm(
    api: pykube.HTTPClient,
    control_plane: ControlPlane,
    namespace: str,
    tmp_path: Path,
    eventually: Eventually,
    capsys: pytest.CaptureFixture[str],
) -> None:
    settle(api, eventually, fedora(namespace, "vm-a"))
    stalled = fedora(namespace, "vm-b")
    stalled["metadata"]["annotations"] = {FAULT: "stall"}  # its live migration makes no progress
    settle(api, eventually, stalled)
    lease_ns = control_plane.create_namespace("lease")
    plans = plan_file(tmp_path, namespace, plan_body("vm-a"))
    port = free_port()
    process, out, err = start([
        "run", "--every", "1s", str(plans), "-o", "json",
        "--kubeconfig", str(control_plane.kubeconfig), "--lease-namespace", lease_ns,
        "--metrics-port", str(port),
    ])  # fmt: skip
    try:
        # 1. the first cycle moves vm-a; later cycles find nothing to do
        eventually(lambda: len(out.reports()) >= 2, timeout=60, what=f"two runs\n{err.lines}")
        first, second = out.reports()[:2]
        assert [(o["name"], o["result"]) for o in first["outcomes"]] == [("vm-a", "Succeeded")]
        assert second["outcomes"] == [], "in sync: nothing done"
        served = requests.get(f"http://127.0.0.1:{port}/metrics", timeout=5).text
        assert re.search(r"^vmsr_last_run_timestamp_seconds [1-9]", served, re.MULTILINE), served

        # 2. another runner holds the Lease: cycles are skipped, not the end of the loop
        hold_lease(api, lease_ns, "someone-else")
        eventually(lambda: err.count("skipped: another run holds the lock") >= 1, timeout=30,
                   what="a skipped run")  # fmt: skip
        hold_lease(api, lease_ns, "")
        reports = len(out.reports())
        eventually(lambda: len(out.reports()) > reports, timeout=30, what="runs again")

        # 3. broken plans (a bad commit): the cycle fails, is reported, the loop goes on
        plans.write_text("kind: StoragePlan\nspec: [not, a, mapping\n")
        eventually(lambda: err.count("error: Run ") >= 1, timeout=30, what="a failed run")
        assert process.poll() is None, "a failed run does not end the loop"

        # 4. the next cycle reads the fixed plans, which now want vm-b moved too
        plan_file(tmp_path, namespace, plan_body("vm-a", "vm-b"))

        def journal() -> journals.Journal | None:
            return journal_of(api, namespace, "vm-b")

        eventually(
            lambda: (j := journal()) is not None and j.step is Step.WAIT_MIGRATION,
            timeout=60,
            what=f"vm-b migrating\n{err.snapshot()[-20:]}",
        )

        # 5. SIGTERM mid-migration: a prompt, clean exit; the journal kept as written
        process.send_signal(signal.SIGTERM)
        rc = process.wait(timeout=30)
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
        out.join()
        err.join()
    said = "\n".join(err.lines[-30:])
    assert rc == 0, said
    assert "Stopped after" in said
    last = out.reports()[-1]
    (interrupted,) = [o for o in last["outcomes"] if o["name"] == "vm-b"]
    assert interrupted["result"] == "Interrupted", said
    kept = journal()
    assert kept is not None and kept.step is Step.WAIT_MIGRATION and not kept.rolling_back
    assert kept.id == interrupted["migrationId"]
    lease = get_json(api, COORDINATION, lease_ns, "leases/vm-storage-reconciler")
    assert lease["spec"].get("holderIdentity", "") == "", "the Lease was released"

    # the next runner finishes the journaled move
    _merge(api, KV, namespace, "virtualmachines/vm-b", {"metadata": {"annotations": {FAULT: None}}})
    resumed = next_apply(control_plane, plans, lease_ns, capsys)
    assert (resumed["name"], resumed["result"], resumed["resumed"]) == ("vm-b", "Succeeded", True)
    assert resumed["migrationId"] == kept.id


def journal_of(api: pykube.HTTPClient, namespace: str, vm: str) -> journals.Journal | None:
    text = annotation(get_json(api, KV, namespace, f"virtualmachines/{vm}"), JOURNAL_ANNOTATION)
    return journals.decode(text) if text else None


def next_apply(
    control_plane: ControlPlane, plans: Path, lease_ns: str, capsys: pytest.CaptureFixture[str]
) -> dict[str, Any]:
    """`apply` in-process; its only outcome."""
    rc = main([
        "apply", str(plans), "-o", "json", "--kubeconfig", str(control_plane.kubeconfig),
        "--lease-namespace", lease_ns,
    ])  # fmt: skip
    report = json.loads(capsys.readouterr().out)
    assert rc == 0, report
    (outcome,) = report["outcomes"]
    return dict(outcome)
