"""CDI's DataVolume webhook refusal is an API error: HTTP 422 with the upstream message.

cdi-apiserver (which serves CDI's webhooks upstream) does not run in the local environment,
so testenv installs its DataVolume validation as a ValidatingAdmissionPolicy
(testenv/admission.py) on the bare control plane and on the real engine; KubeVirt's own
webhooks are upstream virt-api's on the real engine. Every refusal is checked as a plain
request and as a server-side dry run (``dryRun=All``, what ``plan --server-dry-run`` sends),
next to the same object without the violation, which is accepted.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

import pykube
import pytest
import requests

CDI = "cdi.kubevirt.io/v1beta1"
DRY_RUN = {"dryRun": "All"}
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


def assert_refused(response: requests.Response, prefix: str, message: str) -> None:
    code, reason, text = refusal(response)
    assert (code, reason) == (422, "Invalid"), response.text
    assert text.endswith(prefix + message), text


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
