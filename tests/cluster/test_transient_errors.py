"""Transient API errors (issue 18 item 10): `apply` through a proxy that injects them.

One 503 on a LIST, or a connection dropped on a GET, used to end the run with exit 6. Reads
are now sent again (``kube.retry``), and so is a write whose precondition makes a second
delivery harmless (a JSON patch with a ``test``); a write without one that got a 503 after the
API server acted on it is never sent again: the run stops with its journal, and the next run
reads before it acts.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pykube
import pytest

from reconciler.cli.main import main
from testenv import seed
from testenv.controlplane import ControlPlane
from tests.cluster.test_plan import fedora, plan_file, settle
from tests.support.faultproxy import Fault, FaultProxy
from tests.support.kube import Eventually, annotation, get_json

KV = "kubevirt.io/v1"
JOURNAL = "vmstorage.dev/journal"
LAST = "vmstorage.dev/last-migration"


@pytest.fixture(scope="module", autouse=True)
def cluster_objects(api: pykube.HTTPClient) -> None:
    seed.seed_cluster(api)


class Run:
    def __init__(
        self,
        api: pykube.HTTPClient,
        control_plane: ControlPlane,
        namespace: str,
        tmp_path: Path,
        eventually: Eventually,
        capsys: pytest.CaptureFixture[str],
        proxy: FaultProxy,
    ) -> None:
        self.api, self.ns, self.tmp_path, self.capsys = api, namespace, tmp_path, capsys
        self.eventually, self.proxy = eventually, proxy
        self.lease_ns = control_plane.create_namespace("lease")
        self.kubeconfig = proxy.kubeconfig(tmp_path / "via-proxy", control_plane.admin_token)
        self.direct = control_plane.kubeconfig

    def vm(self) -> dict[str, Any]:
        return get_json(self.api, KV, self.ns, "virtualmachines/vm-fedora")

    def apply(self, *, direct: bool = False) -> tuple[int, dict[str, Any], str]:
        path = plan_file(self.tmp_path, self.ns)
        kubeconfig = self.direct if direct else self.kubeconfig
        rc = main(
            [
                "apply",
                str(path),
                "-o",
                "json",
                "--kubeconfig",
                str(kubeconfig),
                "--lease-namespace",
                self.lease_ns,
                "--allow-namespace",
                self.ns,
            ]
        )
        out, err = self.capsys.readouterr()
        return rc, json.loads(out) if out.strip().startswith("{") else {}, err


@pytest.fixture
def run(
    api: pykube.HTTPClient,
    control_plane: ControlPlane,
    namespace: str,
    tmp_path: Path,
    eventually: Eventually,
    capsys: pytest.CaptureFixture[str],
    proxy: FaultProxy,
) -> Run:
    return Run(api, control_plane, namespace, tmp_path, eventually, capsys, proxy)


def moved(run: Run, report: dict[str, Any], err: str) -> None:
    (outcome,) = report["outcomes"]
    assert outcome["result"] == "Succeeded", err
    vm = run.vm()
    assert annotation(vm, JOURNAL) is None
    assert json.loads(annotation(vm, LAST) or "{}")["result"] == "Succeeded"


def test_a_503_on_a_list_and_a_dropped_get_are_survived(run: Run) -> None:
    settle(run.api, run.eventually, fedora(run.ns))
    vms = rf"/namespaces/{run.ns}/virtualmachines$"
    listed = run.proxy.add(Fault("GET", vms, "answer", 503, retry_after="1"))
    dropped = run.proxy.add(Fault("GET", rf"{vms[:-1]}/vm-fedora$", "drop"))
    watch = run.proxy.add(
        Fault("GET", rf"/namespaces/{run.ns}/virtualmachineinstances$", "answer", 503, watch=True)
    )

    rc, report, err = run.apply()

    assert rc == 0, err
    moved(run, report, err)
    assert (listed.times, dropped.times, watch.times) == (0, 0, 0), "every fault was hit"
    # the watch-fed view's watch-list of the same path is a WATCH, which the fault spares
    lists = [s for s in run.proxy.requests("GET", vms) if "watch=" not in s.query]
    assert [s.outcome for s in lists[:2]] == ["answered 503", "forwarded"], lists[:3]
    gets = run.proxy.requests("GET", rf"{vms[:-1]}/vm-fedora$")
    assert [s.outcome for s in gets[:2]] == ["dropped", "forwarded"], gets[:3]


def test_a_create_that_got_a_503_is_not_sent_again_and_the_next_run_adopts_it(
    run: Run,
) -> None:
    settle(run.api, run.eventually, fedora(run.ns))
    creates = rf"/namespaces/{run.ns}/datavolumes$"
    run.proxy.add(Fault("POST", creates, "answer-after", 503))

    rc, _, err = run.apply()

    assert rc == 6, err
    assert "HTTP 503" in err
    posts = run.proxy.requests("POST", creates)
    assert [s.outcome for s in posts] == ["forwarded, answered 503"], "never sent twice"
    journal = json.loads(annotation(run.vm(), JOURNAL) or "{}")
    assert journal["step"] == "create-targets", "the run stopped with its journal"

    rc, report, err = run.apply()

    assert rc == 0, err
    moved(run, report, err)
    assert report["outcomes"][0]["resumed"] is True
    assert [s.outcome for s in run.proxy.requests("POST", creates)][1:] == ["forwarded"]


def test_a_journal_write_that_landed_but_got_a_503_is_sent_again_and_recognised(
    run: Run,
) -> None:
    """A preconditioned patch (it tests the journal it replaces) is retried; the retry fails
    its test because the first one landed, and the runner recognises its own journal there
    instead of taking it for another runner's."""
    settle(run.api, run.eventually, fedora(run.ns))
    vm = rf"/namespaces/{run.ns}/virtualmachines/vm-fedora$"
    # the move's second VM patch: its journal, from step create-targets to wait-targets
    run.proxy.add(Fault("PATCH", vm, "answer-after", 503, skip=1))

    rc, report, err = run.apply()

    assert rc == 0, err
    moved(run, report, err)
    patches = run.proxy.requests("PATCH", vm)
    assert patches[1].outcome == "forwarded, answered 503"
    assert b"vmstorage.dev~1journal" in patches[1].body, "a journal write"
    assert patches[2].body == patches[1].body, "the same preconditioned patch sent again"
    assert "journal was rewritten by someone else" not in err
