"""`apply`'s requests over a growing namespace, on the real engine (issue 19 item 1): ``MOVED``
VMs moved out of 5, then out of 20, through the test proxy that counts every request. Each
kind of the namespace is listed once for the whole run (the watch-fed view,
``reconciler.observe.view``; its own tests against kube-apiserver alone are
tests/apiserver/test_watch_view.py), and the requests per moved VM do not grow with the
namespace.
"""

from __future__ import annotations

import json
from pathlib import Path
from urllib.parse import parse_qs

import pykube
import pytest

from reconciler.cli.main import main
from testenv import seed
from testenv.controlplane import ControlPlane
from tests.cluster.test_plan import create, dv_succeeded, fedora, plan_file
from tests.support.faultproxy import FaultProxy
from tests.support.kube import Eventually, get_json


@pytest.fixture(scope="module", autouse=True)
def cluster_objects(api: pykube.HTTPClient) -> None:
    seed.seed_cluster(api)


def running_fleet(
    eventually: Eventually, api: pykube.HTTPClient, namespace: str, vms: int
) -> list[str]:
    """``vms`` running Fedora VMs (the seed's shape) whose disks CDI imported (a VM
    created stopped on a WaitForFirstConsumer class never gets its disk bound)."""
    names = [f"vm-{i:02d}" for i in range(vms)]
    for name in names:
        create(api, fedora(namespace, name))
    for name in names:
        eventually(
            timeout=120,
            probe=lambda name=name: dv_succeeded(api, namespace, f"{name}-disk"),
            what=f"{name}'s disk",
        )
        eventually(
            timeout=120,
            probe=lambda name=name: vmi_phase(api, namespace, name) == "Running",
            what=f"{name}'s VMI Running",
        )
    return names


def vmi_phase(api: pykube.HTTPClient, namespace: str, name: str) -> str:
    found = get_json(api, "kubevirt.io/v1", namespace, f"virtualmachineinstances/{name}")
    return str((found.get("status") or {}).get("phase") or "")


def whole_namespace_lists(proxy: FaultProxy, namespace: str) -> int:
    """LISTs and watch-lists of a whole kind in ``namespace`` (no selector): what a fresh
    observation sends; `apply`'s waits select their objects by name or label."""
    count = 0
    for request in proxy.requests("GET", rf"/namespaces/{namespace}/[a-z]+$"):
        query = parse_qs(request.query)
        selected = "fieldSelector" in query or "labelSelector" in query
        resumed = "resourceVersion" in query and "sendInitialEvents" not in query
        if not selected and not resumed:
            count += 1
    return count


# 25 VMs imported through CDI's populators and started through the scheduler and KWOK before
# the two runs (50 of them, 10 and 40, went over the suite's 300 s at load 15).
@pytest.mark.timeout(600)
def test_apply_lists_each_kind_once_whatever_the_namespace_size(
    control_plane: ControlPlane,
    eventually: Eventually,
    api: pykube.HTTPClient,
    proxy: FaultProxy,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """``MOVED`` VMs moved out of 5, then out of 20 (four times the namespace): each kind of
    the namespace is listed once for the whole run (before the view: 8 LISTs of the whole
    namespace per VM moved, 5 of them namespaced), and the requests per moved VM do not grow
    with the namespace (within a few Lease renewals and retries)."""
    kubeconfig = proxy.kubeconfig(tmp_path / "via-proxy", control_plane.admin_token)
    per_vm: dict[int, float] = {}
    said: list[str] = []  # printed at the end: apply's report is read from captured stdout
    for vms in SIZES:
        namespace = control_plane.create_namespace(f"view-{vms}")
        names = running_fleet(eventually, api, namespace, vms)
        spec = "storageClass: ceph-rbd\nvirtualMachines:\n" + "".join(
            f"  - name: {name}\n" for name in names
        )
        path = plan_file(tmp_path, namespace, spec, name=f"move-{vms}")
        lease = control_plane.create_namespace("lease")
        argv = ["apply", str(path), "-o", "json", "--kubeconfig", str(kubeconfig)]
        code = main([*argv, "--lease-namespace", lease, "--max-vms", str(MOVED)])
        out, err = capsys.readouterr()
        assert code == 0, err
        report = json.loads(out)
        assert [o["result"] for o in report["outcomes"]] == ["Succeeded"] * MOVED, out + err

        lists = whole_namespace_lists(proxy, namespace)
        assert lists <= NAMESPACED_KINDS, f"{lists} whole-namespace lists: one a kind, not a VM"
        requests = len([s for s in proxy.seen if f"/namespaces/{namespace}/" in s.path])
        per_vm[vms] = requests / MOVED
        said.append(f"{vms} VMs: {lists} whole-namespace lists, {per_vm[vms]:.1f} requests per VM")
    print("\n".join(said))
    small, large = (per_vm[n] for n in SIZES)
    assert large <= small * 1.25 + 2, f"requests per VM grew with the namespace: {per_vm}"


MOVED = 3
SIZES = (5, 20)  # the namespace's VMs in the first run, then the second
NAMESPACED_KINDS = 5  # VMs, VMIs, PVCs, DataVolumes, migrations
