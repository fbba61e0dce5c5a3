"""`apply` and `status` where a new user trips (issue 18 items 2-4), and a VM being deleted
(issue 14 item 13), on the real engine (upstream KubeVirt and CDI controllers).

Each test builds its VMs in its own namespace and runs the CLI in-process as admin, like
tests/cluster/test_apply.py (whose ``Apply`` helper it uses).
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pykube
import pytest

from reconciler.cli.main import main
from testenv import seed
from testenv.controlplane import ControlPlane
from tests.cluster.test_apply import Apply, volume_claim
from tests.cluster.test_plan import _merge, create, fedora, plan_file, run_plan
from tests.support.kube import Eventually, get_json

KV = "kubevirt.io/v1"
HOLD = "test.vmstorage.dev/hold"  # a finalizer nobody removes: the VM stays Terminating


@pytest.fixture(scope="module", autouse=True)
def cluster_objects(api: pykube.HTTPClient) -> None:
    seed.seed_cluster(api)


@pytest.fixture
def ctx(
    api: pykube.HTTPClient,
    control_plane: ControlPlane,
    namespace: str,
    tmp_path: Path,
    eventually: Eventually,
    capsys: pytest.CaptureFixture[str],
) -> Apply:
    return Apply(api, control_plane, namespace, tmp_path, eventually, capsys)


def run(ctx: Apply, *argv: str | Path) -> tuple[int, str, str]:
    """The CLI as admin (``apply`` gets the test's Lease namespace); (rc, stdout, stderr)."""
    args = [*map(str, argv), "--kubeconfig", str(ctx.control_plane.kubeconfig)]
    if argv[0] == "apply":
        args += ["--lease-namespace", ctx.lease_ns]
    rc = main(args)
    out, err = ctx.capsys.readouterr()
    return rc, out, err


def blocked_vm(ctx: Apply) -> None:
    """The issue's VM: running, applied by Argo CD, with a shareable disk."""
    vm = fedora(ctx.ns)
    vm["metadata"]["annotations"] = {
        "argocd.argoproj.io/tracking-id": "vms:kubevirt.io/VirtualMachine:ns/vm-fedora"
    }
    vm["spec"]["template"]["spec"]["domain"]["devices"]["disks"][0]["shareable"] = True
    ctx.settle(vm)


# --------------------------------------------------------------------------------------------
# item 4: apply's line for a blocked VM
# --------------------------------------------------------------------------------------------


def test_apply_names_every_rule_id_and_the_first_thing_to_do_for_a_blocked_vm(
    ctx: Apply,
) -> None:
    blocked_vm(ctx)
    rc, out, err = run(ctx, "apply", plan_file(ctx.tmp_path, ctx.ns))
    assert (
        f"VM {ctx.ns}/vm-fedora: blocked [stop-not-allowed, shareable-disk, gitops-managed]; "
        "first: the VM is running and cannot move live (shareable-disk): set allowStop: true"
    ) in out
    assert "see `plan`" not in out
    assert rc == 0, err  # a blocked VM is a state, not a failure (issue 17)
    assert volume_claim(ctx.vm()) == "vm-fedora-disk", "nothing moved"


# --------------------------------------------------------------------------------------------
# issue 14 item 13: a VM being deleted
# --------------------------------------------------------------------------------------------


@pytest.fixture
def terminating(ctx: Apply) -> Iterator[None]:
    """vm-fedora (its disk imported) deleted while a finalizer holds it: Terminating, its VMI
    stopped by KubeVirt. The finalizer is removed afterwards, so the VM goes."""
    vm = fedora(ctx.ns)
    vm["metadata"]["finalizers"] = [HOLD]
    ctx.settle(vm)
    response = ctx.api.delete(version=KV, namespace=ctx.ns, url="virtualmachines/vm-fedora")
    ctx.api.raise_for_status(response)
    ctx.eventually(
        lambda: (
            ctx.vm()["metadata"].get("deletionTimestamp")
            and not get_json(ctx.api, KV, ctx.ns, "virtualmachineinstances/vm-fedora")
        ),
        what="VM Terminating, VMI gone",
    )
    yield
    _merge(ctx.api, KV, ctx.ns, "virtualmachines/vm-fedora", {"metadata": {"finalizers": None}})


@pytest.mark.usefixtures("terminating")
def test_a_vm_being_deleted_is_blocked_by_plan_and_never_moved_by_apply(ctx: Apply) -> None:
    """On 2d06030 this VM (stopped by its deletion) moved offline and was reported Succeeded."""
    path = plan_file(ctx.tmp_path, ctx.ns)
    rc, report, _ = run_plan(ctx.capsys, ctx.control_plane, path, "-o", "json")
    assert isinstance(report, dict)
    (vm,) = report["vms"]
    assert (rc, vm["action"]) == (1, "Blocked")
    assert vm["reasons"][0]["rule"] == "vm-deleting"
    assert "is being deleted" in vm["reasons"][0]["message"] and HOLD in vm["reasons"][0]["message"]

    rc, out, err = run(ctx, "apply", path, "-o", "json")
    doc: dict[str, Any] = json.loads(out)
    assert rc == 0, err
    assert doc["outcomes"] == [], "nothing was moved"
    (blocked,) = doc["blocked"]
    assert blocked["reasons"][0]["rule"] == "vm-deleting"
    assert volume_claim(ctx.vm()) == "vm-fedora-disk"
    assert list(ctx.dvs()) == ["vm-fedora-disk"], "no target DataVolume was created"


# --------------------------------------------------------------------------------------------
# item 3: status for a VM that does not exist
# --------------------------------------------------------------------------------------------


def test_status_says_a_named_vm_is_missing_and_suggests_what_it_probably_meant(
    ctx: Apply,
) -> None:
    create(ctx.api, fedora(ctx.ns, running=False))
    misspelled = plan_file(
        ctx.tmp_path, ctx.ns, "storageClass: ceph-rbd\nvirtualMachines:\n  - name: vm-fedra\n"
    )
    rc, out, _ = run(ctx, "status", misspelled)
    assert rc == 0
    assert f"{ctx.ns}/vm-fedra  missing" in out
    assert "which does not exist (did you mean vm-fedora?)" in out
    assert "stopped" not in out

    wrong_namespace = plan_file(ctx.tmp_path, f"{ctx.ns}-x", name="elsewhere")
    rc, out, _ = run(ctx, "status", wrong_namespace, "-o", "json")
    (vm,) = json.loads(out)["vms"]
    assert (vm["name"], vm["exists"], vm["missing"]["rule"]) == ("vm-fedora", False, "vm-not-found")
    assert f"(did you mean {ctx.ns}/vm-fedora?)" in vm["missing"]["message"]


# --------------------------------------------------------------------------------------------
# item 2: apply on a plan that selects nothing
# --------------------------------------------------------------------------------------------


def test_apply_exits_7_and_says_why_when_a_plan_selects_nothing(ctx: Apply) -> None:
    ctx.settle(fedora(ctx.ns))
    good = plan_file(ctx.tmp_path, ctx.ns, name="good")
    typo = plan_file(ctx.tmp_path, f"{ctx.ns}-x", name="typo")
    rc, out, err = run(ctx, "apply", good, typo, "-o", "json")
    doc = json.loads(out)
    assert rc == 7, err
    assert [o["result"] for o in doc["outcomes"]] == ["Succeeded"], "the other plan still acts"
    (empty,) = doc["nothingSelected"]
    assert empty["plan"] == "typo"
    assert empty["rule"] in ("namespace-not-found", "namespace-empty")
    assert doc["summary"]["plansSelectingNothing"] == 1
