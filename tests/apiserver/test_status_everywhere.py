"""`status PLANS` shows every open move it may see, also in a namespace no plan names any more
(issue 14 case 6: `apply` finishes such a move whatever the plans say, so `status` must not
read "nothing open" meanwhile). Against the real API server; no KubeVirt or CDI controller
needed: status only reads the VMs' annotations.
"""

from __future__ import annotations

import json
from pathlib import Path

import pykube
import pytest

from reconciler.cli.main import main
from reconciler.model import journal as journals
from reconciler.model.journal import Flow, Journal, Step, VolumeMove
from reconciler.model.names import JOURNAL_ANNOTATION
from testenv.controlplane import ControlPlane
from tests.cluster.test_plan import create, fedora, plan_file


def open_journal(namespace: str) -> str:
    return journals.encode(
        Journal(
            id="0a1b2c3d4e5f",
            plan=f"{namespace}/gone",
            flow=Flow.OFFLINE,
            step=Step.WAIT_TARGETS,
            volumes=(VolumeMove("root", "vm-fedora-disk", "t", True, "a", "ceph-rbd", 1 << 30),),
            run_strategy="Always",
            was_running=True,
            started="2026-12-06T10:00:00+00:00",
            deadline="2026-12-06T11:00:00+00:00",
            retention="Keep",
        )
    )


def test_status_of_plans_shows_an_open_move_in_a_namespace_they_no_longer_name(
    api: pykube.HTTPClient,
    control_plane: ControlPlane,
    namespace: str,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    elsewhere = control_plane.create_namespace("left-the-plans")
    vm = fedora(elsewhere, running=False)
    vm["metadata"].setdefault("annotations", {})[JOURNAL_ANNOTATION] = open_journal(elsewhere)
    create(api, vm)
    create(api, fedora(namespace, running=False))  # the plan's own VM, nothing open on it
    path = plan_file(tmp_path, namespace)

    try:
        rc = main(
            ["status", str(path), "-o", "json", "--kubeconfig", str(control_plane.kubeconfig)]
        )
    finally:  # a later `apply` would find (and refuse) this hand-made journal
        api.delete(version="kubevirt.io/v1", namespace=elsewhere, url="virtualmachines")

    out, err = capsys.readouterr()
    doc = json.loads(out)
    assert rc == 1, f"an open move is work pending: {err}"
    (entry,) = [vm for vm in doc["vms"] if vm["namespace"] == elsewhere]
    assert entry["inFlight"]["migrationId"] == "0a1b2c3d4e5f", entry
    assert entry["inFlight"]["step"] == "wait-targets"
