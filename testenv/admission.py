"""CDI's DataVolume webhook as a ValidatingAdmissionPolicy (CEL).

A real cluster runs CDI's validating webhooks in cdi-apiserver, which the local environment
does not run (KubeVirt's are upstream virt-api's, on the real engine). A refused request never
reaches etcd and the client gets HTTP 422 with the webhook's message, so the control plane
installs this policy instead (``ControlPlane.start()``; the real engine once its API server
is up), bound with ``validationActions: [Deny]``. The validation says ``reason: Invalid``, so
the API server answers 422 (the default, Forbidden, would be 403). The message is the
upstream text, behind the API server's prefix
``ValidatingAdmissionPolicy '<policy>' with binding '<binding>' denied request: `` (a
webhook's is ``admission webhook "<name>" denied the request: ``); the policy is named after
the upstream webhook, so the prefix still names it.

``datavolume-validator.cdi.kubevirt.io`` (CDI v1.65.0 ``datavolume-validate.go``, UPDATE of
DataVolumes): the spec is immutable, except that a multi-stage import (a ``vddk`` or
``imageio`` source with checkpoints) may change ``checkpoints`` and ``finalCheckpoint``.
Comparisons are CEL equality, not Go's semantic equality: ``""`` and an absent string field
compare equal (scalar spec fields are read with defaults), but ``1Gi`` and ``1073741824``
inside a nested spec do not. CREATE-time DataVolume checks are not expressed.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Mapping
from typing import Any

import pykube

API_VERSION = "admissionregistration.k8s.io/v1"

DV_POLICY = "datavolume-validator.cdi.kubevirt.io"

MSG_DV_SPEC = "Cannot update DataVolume Spec"


# -- the DataVolume policy --------------------------------------------------------------------

_DV_OBJECT_FIELDS = ("source", "sourceRef", "pvc", "storage", "preallocation")
_DV_STRING_FIELDS = ("priorityClassName", "serviceAccountName", "contentType")


def _dv_same(*, with_checkpoints: bool) -> str:
    terms = [f"object.spec.?{f} == oldObject.spec.?{f}" for f in _DV_OBJECT_FIELDS]
    terms += [f"object.spec.?{f}.orValue('') == oldObject.spec.?{f}.orValue('')"
              for f in _DV_STRING_FIELDS]
    if with_checkpoints:
        terms += [
            "object.spec.?checkpoints.orValue([]) == oldObject.spec.?checkpoints.orValue([])",
            "object.spec.?finalCheckpoint.orValue(false) == "
            "oldObject.spec.?finalCheckpoint.orValue(false)",
        ]
    return " && ".join(terms)


_DV_POLICY_SPEC: dict[str, Any] = {
    "failurePolicy": "Fail",
    "matchConstraints": {
        "resourceRules": [{
            "apiGroups": ["cdi.kubevirt.io"],
            "apiVersions": ["*"],
            "operations": ["UPDATE"],
            "resources": ["datavolumes"],
        }],
    },
    "variables": [
        {
            "name": "multiStage",
            "expression": (
                "has(object.spec.source) && "
                "(has(object.spec.source.vddk) || has(object.spec.source.imageio)) && "
                "size(object.spec.?checkpoints.orValue([])) > 0"
            ),
        },
    ],
    "validations": [
        {
            "expression": (
                f"variables.multiStage ? ({_dv_same(with_checkpoints=False)}) : "
                f"({_dv_same(with_checkpoints=True)})"
            ),
            # CDI's toRejectedAdmissionResponse prefixes each cause with a space; the API
            # server trims a policy's message, so that space cannot be reproduced.
            "message": MSG_DV_SPEC,
            "reason": "Invalid",
        },
    ],
}

POLICIES: Mapping[str, Mapping[str, Any]] = {DV_POLICY: _DV_POLICY_SPEC}


def manifests() -> list[dict[str, Any]]:
    """Every ValidatingAdmissionPolicy, then its ValidatingAdmissionPolicyBinding."""
    policies: list[dict[str, Any]] = []
    bindings: list[dict[str, Any]] = []
    labels = {"app.kubernetes.io/managed-by": "vmsr-testenv"}
    for name, spec in POLICIES.items():
        policies.append({
            "apiVersion": API_VERSION,
            "kind": "ValidatingAdmissionPolicy",
            "metadata": {"name": name, "labels": labels},
            "spec": json.loads(json.dumps(spec)),
        })
        bindings.append({
            "apiVersion": API_VERSION,
            "kind": "ValidatingAdmissionPolicyBinding",
            "metadata": {"name": name, "labels": labels},
            "spec": {"policyName": name, "validationActions": ["Deny"]},
        })
    return [*policies, *bindings]


# -- installation -----------------------------------------------------------------------------


class AdmissionError(RuntimeError):
    """A policy was rejected or is not enforced in time.

    (``status.typeChecking`` is written by kube-controller-manager, which does not run here;
    a policy that does not compile fails its probe instead: ``failurePolicy: Fail``.)"""


_PLURALS = {
    "ValidatingAdmissionPolicy": "validatingadmissionpolicies",
    "ValidatingAdmissionPolicyBinding": "validatingadmissionpolicybindings",
}
_PROBE_NAMESPACE = "default"
_PROBE_NAME = "vmsr-admission-probe"


def install(api: pykube.HTTPClient, *, timeout: float = 60.0,
            log: Callable[[str], None] = print) -> None:
    """Create the policies and bindings, then return once every one is enforced.

    The API server compiles policies asynchronously, so enforcement is proven, not assumed:
    the refusal is probed with ``dryRun=All`` requests until the server refuses them (an
    UPDATE rule needs a stored object: a probe DataVolume is created in ``default`` and
    deleted again; no controller runs yet, so nothing reacts to it).
    """
    for doc in manifests():
        response = api.post(url=_PLURALS[doc["kind"]], version=API_VERSION,
                            data=json.dumps(doc))
        if not response.ok:
            raise AdmissionError(f"{doc['kind']} {doc['metadata']['name']} rejected "
                                 f"({response.status_code}): {response.text[:2000]}")
    deadline = time.monotonic() + timeout
    dv_url = f"namespaces/{_PROBE_NAMESPACE}/datavolumes"
    dv = _create(api, dv_url, "cdi.kubevirt.io/v1beta1", _probe_dv())
    try:
        while not _refused(_request(api, "PATCH", f"{dv_url}/{_PROBE_NAME}",
                                    "cdi.kubevirt.io/v1beta1",
                                    {"spec": {"contentType": "archive"}}, dry_run=True),
                           MSG_DV_SPEC):
            if time.monotonic() > deadline:
                raise AdmissionError(f"admission policy {DV_POLICY} not enforced after "
                                     f"{timeout:.0f}s")
            time.sleep(0.05)  # the API server compiles policies asynchronously: poll it
    finally:
        api.delete(url=f"{dv_url}/{dv['metadata']['name']}", version=dv["apiVersion"])
    log(f"admission policies enforced: {', '.join(POLICIES)}")


def _refused(response: Any, message: str) -> bool:
    if response.status_code != 422:
        return False
    try:
        return message in str(response.json().get("message", ""))
    except ValueError:
        return False


def _request(api: pykube.HTTPClient, method: str, url: str, version: str, body: Any,
             *, dry_run: bool = False) -> Any:
    kwargs: dict[str, Any] = {"url": url, "version": version, "data": json.dumps(body)}
    if method == "PATCH":
        kwargs["headers"] = {"Content-Type": "application/merge-patch+json"}
    if dry_run:
        kwargs["params"] = {"dryRun": "All"}
    return api.request(method, **kwargs)


def _create(api: pykube.HTTPClient, url: str, version: str,
            body: dict[str, Any]) -> dict[str, Any]:
    response = _request(api, "POST", url, version, body)
    if not response.ok:
        raise AdmissionError(f"probe {body['kind']} not created ({response.status_code}): "
                             f"{response.text[:1000]}")
    created: dict[str, Any] = response.json()
    return created


def _probe_dv() -> dict[str, Any]:
    return {
        "apiVersion": "cdi.kubevirt.io/v1beta1",
        "kind": "DataVolume",
        "metadata": {"name": _PROBE_NAME},
        "spec": {"source": {"blank": {}},
                 "storage": {"resources": {"requests": {"storage": "1Gi"}}}},
    }

