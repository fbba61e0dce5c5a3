"""`apply` on the real engine: upstream KubeVirt and CDI controllers, our node side.

Each test builds its VM in its own namespace, runs `apply` in-process as admin, and asserts on
the cluster afterwards: the VM's volumes, the disks' content markers (the node side's: no data
lost), the journal gone and the last-migration record, what was created and deleted.
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
from testenv.node.runtime import CONTENT_HASH_ANNOTATION
from tests.cluster.test_plan import _merge, fedora, plan_file, settle
from tests.support.kube import Eventually, annotation, get_json, vmi_running

KV = "kubevirt.io/v1"
CDI = "cdi.kubevirt.io/v1beta1"
JOURNAL = "vmstorage.dev/journal"
LAST = "vmstorage.dev/last-migration"


@pytest.fixture(scope="module", autouse=True)
def cluster_objects(api: pykube.HTTPClient) -> None:
    seed.seed_cluster(api)


class Apply:
    """A namespace with VMs, and `apply` run on a plan for it."""

    def __init__(
        self,
        api: pykube.HTTPClient,
        control_plane: ControlPlane,
        namespace: str,
        tmp_path: Path,
        eventually: Eventually,
        capsys: pytest.CaptureFixture[str],
    ) -> None:
        self.api, self.control_plane, self.ns = api, control_plane, namespace
        self.tmp_path, self.eventually, self.capsys = tmp_path, eventually, capsys
        self.lease_ns = control_plane.create_namespace("lease")

    def settle(self, vm: dict[str, Any]) -> None:
        settle(self.api, self.eventually, vm)

    def vm(self, name: str = "vm-fedora") -> dict[str, Any]:
        return get_json(self.api, KV, self.ns, f"virtualmachines/{name}")

    def vmi(self, name: str = "vm-fedora") -> dict[str, Any]:
        return get_json(self.api, KV, self.ns, f"virtualmachineinstances/{name}")

    def pvc(self, name: str) -> dict[str, Any]:
        return get_json(self.api, "v1", self.ns, f"persistentvolumeclaims/{name}")

    def dvs(self) -> dict[str, dict[str, Any]]:
        items = get_json(self.api, CDI, self.ns, "datavolumes")["items"]
        return {d["metadata"]["name"]: d for d in items}

    def content(self, claim: str) -> str | None:
        return annotation(self.pvc(claim), CONTENT_HASH_ANNOTATION)

    def apply(self, *args: str, body: str = "") -> tuple[int, dict[str, Any], str]:
        path = plan_file(self.tmp_path, self.ns, body)
        argv = [
            "apply",
            str(path),
            "-o",
            "json",
            "--kubeconfig",
            str(self.control_plane.kubeconfig),
            "--lease-namespace",
            self.lease_ns,
            *args,
        ]
        rc = main(argv)
        out, err = self.capsys.readouterr()
        return rc, json.loads(out) if out.strip().startswith("{") else {}, err


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


def volume_claim(vm: dict[str, Any], volume: str = "datavolumedisk1") -> str:
    for v in vm["spec"]["template"]["spec"]["volumes"]:
        if v["name"] == volume:
            return str(
                (v.get("dataVolume") or {}).get("name") or v["persistentVolumeClaim"]["claimName"]
            )
    raise AssertionError(f"no volume {volume}")


def test_running_vm_moves_live_and_is_verified(ctx: Apply) -> None:
    ctx.settle(fedora(ctx.ns))
    before_uid = ctx.vmi()["metadata"]["uid"]
    source_hash = ctx.content("vm-fedora-disk")
    assert source_hash

    rc, report, err = ctx.apply()

    assert rc == 0, err
    (outcome,) = report["outcomes"]
    assert (outcome["result"], outcome["flow"]) == ("Succeeded", "live"), err
    target = volume_claim(ctx.vm())
    assert target.startswith("vm-fedora-disk-mig-")
    assert ctx.vmi()["metadata"]["uid"] == before_uid, "same VMI: the guest never rebooted"
    assert ctx.content(target) == source_hash, "the migration carried the content"
    assert ctx.pvc(target)["spec"]["storageClassName"] == "ceph-rbd"
    assert [t["metadata"]["name"] for t in ctx.vm()["spec"]["dataVolumeTemplates"]] == [target]
    assert annotation(ctx.vm(), JOURNAL) is None, "the journal is removed on completion"
    last = json.loads(annotation(ctx.vm(), LAST) or "{}")
    assert (last["result"], last["volumes"]) == ("Succeeded", {"datavolumedisk1": target})
    assert "vm-fedora-disk" in ctx.dvs(), "retention Keep leaves the source"


def test_stopped_vm_moves_offline_and_stays_stopped(ctx: Apply) -> None:
    ctx.settle(fedora(ctx.ns))
    _merge(ctx.api, KV, ctx.ns, "virtualmachines/vm-fedora", {"spec": {"runStrategy": "Halted"}})
    ctx.eventually(lambda: not ctx.vmi(), what="VMI gone")
    source_hash = ctx.content("vm-fedora-disk")

    rc, report, err = ctx.apply()

    assert rc == 0, err
    (outcome,) = report["outcomes"]
    assert (outcome["result"], outcome["flow"]) == ("Succeeded", "offline"), err
    target = volume_claim(ctx.vm())
    assert ctx.content(target) == source_hash, "the clone carried the content"
    assert ctx.vm()["spec"]["runStrategy"] == "Halted"
    assert not ctx.vmi()


def test_running_vm_moves_offline_with_allow_stop_and_runs_again(ctx: Apply) -> None:
    ctx.settle(fedora(ctx.ns))
    source_hash = ctx.content("vm-fedora-disk")
    body = (
        "storageClass: ceph-rbd\nmode: Offline\nallowStop: true\nvirtualMachines:\n"
        "  - name: vm-fedora\n"
    )

    rc, report, err = ctx.apply(body=body)

    assert rc == 0, err
    assert report["outcomes"][0]["flow"] == "offline"
    target = volume_claim(ctx.vm())
    assert ctx.content(target) == source_hash
    assert ctx.vm()["spec"]["runStrategy"] == "Always"
    assert vmi_running(ctx.api, ctx.ns, "vm-fedora")


def test_retention_delete_removes_the_source_after_verification(ctx: Apply) -> None:
    ctx.settle(fedora(ctx.ns))
    body = "storageClass: ceph-rbd\nretention: Delete\nvirtualMachines:\n  - name: vm-fedora\n"

    rc, report, err = ctx.apply(body=body)

    assert rc == 0, err
    assert report["outcomes"][0]["result"] == "Succeeded", err
    assert err.index("verified:") < err.index("deleted source"), "deleted only after verify"
    target = volume_claim(ctx.vm())
    last = json.loads(annotation(ctx.vm(), LAST) or "{}")
    assert last["sourcesDeleted"] == ["vm-fedora-disk"]
    dvs = ctx.dvs()
    assert target in dvs
    assert "vm-fedora-disk" not in dvs or dvs["vm-fedora-disk"]["metadata"].get(
        "deletionTimestamp"
    ), "the source DataVolume is deleted"
