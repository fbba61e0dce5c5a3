"""The KubeVirt/CDI webhook refusals are API errors: HTTP 422 with the upstream message.

Installed by testenv at control-plane start as ValidatingAdmissionPolicies
(testenv/admission.py). Every refusal is checked as a plain request and as a server-side
dry run (``dryRun=All``, what ``plan --server-dry-run`` sends), next to the same object
without the violation, which is accepted.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

import pykube
import pytest
import requests

from testenv import admission
from testenv.node.runtime import Simulator
from testenv.simulator.snapshot import SOURCE_FINALIZER
from tests.support.kube import Eventually

KUBEVIRT = "kubevirt.io/v1"
CDI = "cdi.kubevirt.io/v1beta1"
SNAPSHOT = "snapshot.kubevirt.io/v1beta1"
DRY_RUN = {"dryRun": "All"}
VM_PREFIX = (
    "ValidatingAdmissionPolicy 'virtualmachine-validator.kubevirt.io' with binding "
    "'virtualmachine-validator.kubevirt.io' denied request: "
)
DV_PREFIX = (
    "ValidatingAdmissionPolicy 'datavolume-validator.cdi.kubevirt.io' with binding "
    "'datavolume-validator.cdi.kubevirt.io' denied request: "
)

Send = Callable[..., requests.Response]


@pytest.fixture
def send(api: pykube.HTTPClient, namespace: str) -> Send:
    """One raw request in the test's namespace: (method, version, url, body, dry_run)."""

    def call(method: str, version: str, url: str, body: Any = None, *,
             dry_run: bool = False) -> requests.Response:
        kwargs: dict[str, Any] = {"version": version, "namespace": namespace, "url": url}
        if body is not None:
            kwargs["data"] = json.dumps(body)
        if method == "PATCH":
            kwargs["headers"] = {"Content-Type": "application/merge-patch+json"}
        if dry_run:
            kwargs["params"] = DRY_RUN
        response: requests.Response = api.request(method, **kwargs)
        return response

    return call


def refusal(response: requests.Response) -> tuple[int, str, str]:
    """(status code, reason, message) of a refused request."""
    body = response.json()
    return response.status_code, body.get("reason", ""), body.get("message", "")


def vm(name: str, *, templates: tuple[str, ...] = ("root-dv",),
       volumes: tuple[str, ...] = ("root-dv",), **spec: Any) -> dict[str, Any]:
    """A VM with one dataVolumeTemplate per name in `templates` and one DataVolume volume
    per name in `volumes`."""
    return {
        "apiVersion": KUBEVIRT,
        "kind": "VirtualMachine",
        "metadata": {"name": name},
        "spec": {
            "runStrategy": "Halted",
            "dataVolumeTemplates": [
                {"metadata": {"name": t},
                 "spec": {"source": {"blank": {}},
                          "storage": {"resources": {"requests": {"storage": "1Gi"}}}}}
                for t in templates
            ],
            "template": {"spec": {
                "domain": {"devices": {"disks": [{"name": v, "disk": {}} for v in volumes]}},
                "volumes": [{"name": v, "dataVolume": {"name": v}} for v in volumes],
            }},
            **spec,
        },
    }


def assert_refused(response: requests.Response, prefix: str, message: str) -> None:
    code, reason, text = refusal(response)
    assert (code, reason) == (422, "Invalid"), response.text
    assert text.endswith(prefix + message), text


# ============================================================================ VirtualMachine


@pytest.mark.cluster
def test_unreferenced_data_volume_template_is_refused(send: Send) -> None:
    body = vm("vm1", templates=("root-dv", "data-dv"), volumes=("root-dv",))
    for dry_run in (True, False):
        response = send("POST", KUBEVIRT, "virtualmachines", body, dry_run=dry_run)
        assert_refused(response, VM_PREFIX, admission.unreferenced_template_message(1))
        assert (refusal(response)[2] ==
                'virtualmachines.kubevirt.io "vm1" is forbidden: ' + VM_PREFIX +
                "DataVolumeTemplate entry spec.dataVolumeTemplate[1] must be referenced in "
                "the VMI template's 'volumes' list")
    assert send("GET", KUBEVIRT, "virtualmachines/vm1").status_code == 404

    fixed = vm("vm1", templates=("root-dv", "data-dv"), volumes=("root-dv", "data-dv"))
    assert send("POST", KUBEVIRT, "virtualmachines", fixed, dry_run=True).status_code == 201
    assert send("POST", KUBEVIRT, "virtualmachines", fixed).status_code == 201
    # An update that renames a volume but not its template is refused the same way; the
    # same rename of both in one request (a move, or its rollback) is accepted.
    half = {"spec": {"template": {"spec": {"volumes": [
        {"name": "root-dv", "dataVolume": {"name": "root-dv"}},
        {"name": "data-dv", "dataVolume": {"name": "data-dv-mig"}}]}}}}
    assert_refused(send("PATCH", KUBEVIRT, "virtualmachines/vm1", half, dry_run=True),
                   VM_PREFIX, admission.unreferenced_template_message(1))
    stored = send("GET", KUBEVIRT, "virtualmachines/vm1").json()
    both = {"spec": {**half["spec"], "dataVolumeTemplates": [
        stored["spec"]["dataVolumeTemplates"][0],
        {**stored["spec"]["dataVolumeTemplates"][1], "metadata": {"name": "data-dv-mig"}}]}}
    assert send("PATCH", KUBEVIRT, "virtualmachines/vm1", both).status_code == 200


@pytest.mark.cluster
def test_running_with_run_strategy_is_refused(send: Send) -> None:
    body = vm("vm1", running=False)
    for dry_run in (True, False):
        assert_refused(send("POST", KUBEVIRT, "virtualmachines", body, dry_run=dry_run),
                       VM_PREFIX,
                       "Running and RunStrategy are mutually exclusive. Note that Running is "
                       "deprecated, please use RunStrategy instead")
    assert send("GET", KUBEVIRT, "virtualmachines/vm1").status_code == 404

    assert send("POST", KUBEVIRT, "virtualmachines", vm("vm1")).status_code == 201
    assert_refused(send("PATCH", KUBEVIRT, "virtualmachines/vm1", {"spec": {"running": True}},
                        dry_run=True),
                   VM_PREFIX, admission.MSG_RUNNING_AND_STRATEGY)
    legacy = vm("vm2")
    del legacy["spec"]["runStrategy"]
    assert_refused(send("POST", KUBEVIRT, "virtualmachines", legacy, dry_run=True),
                   VM_PREFIX, admission.MSG_STRATEGY_REQUIRED)
    legacy["spec"]["running"] = False
    assert send("POST", KUBEVIRT, "virtualmachines", legacy).status_code == 201


@pytest.mark.cluster
def test_volume_edit_during_a_snapshot_is_refused(
        send: Send, sim: Simulator, eventually: Eventually) -> None:
    assert send("POST", KUBEVIRT, "virtualmachines", vm("vm1")).status_code == 201
    snapshot = {"apiVersion": SNAPSHOT, "kind": "VirtualMachineSnapshot",
                "metadata": {"name": "snap1",
                             "annotations": {"sim.vmstorage.dev/fault": "stall"}},
                "spec": {"source": {"apiGroup": "kubevirt.io", "kind": "VirtualMachine",
                                    "name": "vm1"}}}
    assert send("POST", SNAPSHOT, "virtualmachinesnapshots", snapshot).status_code == 201

    def locked() -> dict[str, Any] | None:
        current: dict[str, Any] = send("GET", KUBEVIRT, "virtualmachines/vm1").json()
        held = (current.get("status") or {}).get("snapshotInProgress") == "snap1"
        finalizers = current["metadata"].get("finalizers") or []
        return current if held and SOURCE_FINALIZER in finalizers else None

    stored = eventually(locked, what="VM locked by snap1")
    snap = eventually(lambda: (s := send("GET", SNAPSHOT, "virtualmachinesnapshots/snap1")
                               .json()).get("status") and s, what="snapshot status")
    assert (snap["status"]["phase"], snap["status"]["readyToUse"]) == ("InProgress", False)
    assert snap["status"]["sourceUID"] == stored["metadata"]["uid"]

    rename = {"spec": {
        "dataVolumeTemplates": [{**stored["spec"]["dataVolumeTemplates"][0],
                                 "metadata": {"name": "root-dv-mig"}}],
        "template": {"spec": {"volumes": [
            {"name": "root-dv", "dataVolume": {"name": "root-dv-mig"}}]}}}}
    for dry_run in (True, False):
        assert_refused(send("PATCH", KUBEVIRT, "virtualmachines/vm1", rename, dry_run=dry_run),
                       VM_PREFIX, 'Cannot update vm disks or volumes until snapshot "snap1" '
                       "completes")
    assert_refused(send("PATCH", KUBEVIRT, "virtualmachines/vm1",
                        {"spec": {"runStrategy": "Always"}}, dry_run=True),
                   VM_PREFIX, admission.snapshot_running_message("snap1"))
    labels = {"metadata": {"labels": {"edited": "during-snapshot"}}}
    assert send("PATCH", KUBEVIRT, "virtualmachines/vm1", labels).status_code == 200

    release = {"metadata": {"annotations": {"sim.vmstorage.dev/fault": None}}}
    assert send("PATCH", SNAPSHOT, "virtualmachinesnapshots/snap1", release).status_code == 200

    def done() -> dict[str, Any] | None:
        current: dict[str, Any] = send("GET", SNAPSHOT, "virtualmachinesnapshots/snap1").json()
        st = current.get("status") or {}
        return current if st.get("phase") == "Succeeded" and st.get("readyToUse") else None

    eventually(done, what="snapshot Succeeded")

    def unlocked() -> bool:
        current = send("GET", KUBEVIRT, "virtualmachines/vm1").json()
        return ("snapshotInProgress" not in (current.get("status") or {})
                and SOURCE_FINALIZER not in (current["metadata"].get("finalizers") or []))

    eventually(unlocked, what="VM lock released")
    assert send("PATCH", KUBEVIRT, "virtualmachines/vm1", rename).status_code == 200


# ============================================================================ DataVolume


def blank_dv(name: str) -> dict[str, Any]:
    return {"apiVersion": CDI, "kind": "DataVolume", "metadata": {"name": name},
            "spec": {"source": {"blank": {}},
                     "storage": {"resources": {"requests": {"storage": "1Gi"}}}}}


@pytest.mark.cluster
def test_data_volume_spec_update_is_refused(send: Send) -> None:
    assert send("POST", CDI, "datavolumes", blank_dv("dv1")).status_code == 201
    grow = {"spec": {"storage": {"resources": {"requests": {"storage": "2Gi"}}}}}
    for dry_run in (True, False):
        assert_refused(send("PATCH", CDI, "datavolumes/dv1", grow, dry_run=dry_run),
                       DV_PREFIX, "Cannot update DataVolume Spec")
    stored = send("GET", CDI, "datavolumes/dv1").json()
    assert stored["spec"]["storage"]["resources"]["requests"]["storage"] == "1Gi"
    # Metadata (and status, through its subresource) stay writable; an unchanged spec too.
    annotate = {"metadata": {"annotations": {"note": "ok"}}}
    assert send("PATCH", CDI, "datavolumes/dv1", annotate).status_code == 200
    same = {"spec": {"contentType": "kubevirt"} if stored["spec"].get("contentType") else {}}
    assert send("PATCH", CDI, "datavolumes/dv1", same).status_code == 200


@pytest.mark.cluster
def test_multi_stage_import_may_change_only_its_checkpoints(send: Send) -> None:
    body = {"apiVersion": CDI, "kind": "DataVolume", "metadata": {"name": "warm"},
            "spec": {"source": {"vddk": {"url": "https://vcenter.example", "uuid": "42",
                                         "backingFile": "[ds] vm/vm.vmdk",
                                         "thumbprint": "aa:bb", "secretRef": "vddk"}},
                     "storage": {"resources": {"requests": {"storage": "1Gi"}}},
                     "checkpoints": [{"previous": "", "current": "snap-1"}]}}
    assert send("POST", CDI, "datavolumes", body).status_code == 201
    more = {"spec": {"checkpoints": [{"previous": "", "current": "snap-1"},
                                     {"previous": "snap-1", "current": "snap-2"}],
                     "finalCheckpoint": True}}
    assert send("PATCH", CDI, "datavolumes/warm", more).status_code == 200
    moved = {"spec": {"source": {"vddk": {"url": "https://elsewhere.example"}}}}
    assert_refused(send("PATCH", CDI, "datavolumes/warm", moved, dry_run=True),
                   DV_PREFIX, "Cannot update DataVolume Spec")
