"""Upstream admission refusals as ValidatingAdmissionPolicies (CEL), installed at start.

A real cluster runs KubeVirt's and CDI's validating webhooks; a refused request never
reaches etcd and the client gets HTTP 422 with the webhook's message. A bare kube-apiserver
has no webhooks, so ``ControlPlane.start()`` installs these policies instead
(admissionregistration.k8s.io/v1, GA since 1.30), one per upstream webhook, each bound
with ``validationActions: [Deny]``. Every validation says ``reason: Invalid``, so the API
server answers 422 (the default, Forbidden, would be 403). The message is the upstream
text, behind the API server's prefix
``ValidatingAdmissionPolicy '<policy>' with binding '<binding>' denied request: ``
(a webhook's is ``admission webhook "<name>" denied the request: ``); the policy names
are the upstream webhook names, so the prefix still names the webhook.

What each policy mirrors (KubeVirt v1.9.0, CDI v1.66.0):

- ``virtualmachine-validator.kubevirt.io`` (``vms-admitter.go``, CREATE/UPDATE of
  VirtualMachines not being deleted): the ``ValidateVirtualMachineSpec`` causes about
  ``dataVolumeTemplates`` (``pkg/storage/admitters/data-volume-template.go``: an empty
  name, missing or duplicate storage, an entry no volume references, each naming its
  index ``spec.dataVolumeTemplate[N]`` as upstream does) and about the run strategy
  (``running`` with ``runStrategy``, neither, an unknown strategy), joined with ", " as
  upstream joins causes. Then, on UPDATE only and only if the spec is otherwise valid,
  the storage admitter's snapshot lock (``vm-storage-status.go``): while
  ``status.snapshotInProgress`` names a snapshot, the template's volumes and the run
  state may not change.
- ``datavolume-validator.cdi.kubevirt.io`` (``datavolume-validate.go``, UPDATE of
  DataVolumes): the spec is immutable, except that a multi-stage import (a ``vddk`` or
  ``imageio`` source with checkpoints) may change ``checkpoints`` and ``finalCheckpoint``.

Not expressed (documented deviations): the other ``ValidateVirtualMachineSpec`` checks
(the VMI template, feature gates, instance types; ``WaitAsReceiver`` is accepted whatever
the DecentralizedLiveMigration gate says), the DataVolume template source checks
(external population, number of sources), the embedded-namespace check, and the
"..., and N more validation errors" cut after ten causes. Comparisons are CEL equality,
not Go's semantic equality: ``""`` and an absent string field compare equal (scalar spec
fields are read with defaults), but ``1Gi`` and ``1073741824`` inside a nested spec do not.
CREATE-time DataVolume checks stay in the simulator (``storage.validate_dv``).
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Mapping
from typing import Any

import pykube

API_VERSION = "admissionregistration.k8s.io/v1"

VM_POLICY = "virtualmachine-validator.kubevirt.io"
DV_POLICY = "datavolume-validator.cdi.kubevirt.io"

MSG_RUNNING_AND_STRATEGY = (
    "Running and RunStrategy are mutually exclusive. Note that Running is deprecated, "
    "please use RunStrategy instead"
)
MSG_STRATEGY_REQUIRED = "RunStrategy must be specified"
MSG_DV_SPEC = "Cannot update DataVolume Spec"
VALID_RUN_STRATEGIES = ("Halted", "Manual", "Always", "RerunOnFailure", "Once")
GATED_RUN_STRATEGIES = ("WaitAsReceiver",)


def _cel_string(text: str) -> str:
    """A CEL string literal (JSON escaping is valid CEL for these texts)."""
    return json.dumps(text)


def unreferenced_template_message(index: int) -> str:
    """The upstream cause for dataVolumeTemplates[index] that no volume references."""
    return (
        f"DataVolumeTemplate entry spec.dataVolumeTemplate[{index}] must be referenced in "
        "the VMI template's 'volumes' list"
    )


def snapshot_volumes_message(snapshot: str) -> str:
    """The upstream refusal of a volume edit while `snapshot` is in progress."""
    return f'Cannot update vm disks or volumes until snapshot "{snapshot}" completes'


def snapshot_running_message(snapshot: str) -> str:
    """The upstream refusal of a run-state change while `snapshot` is in progress."""
    return f'Cannot update vm running state until snapshot "{snapshot}" completes'


# -- the VirtualMachine policy ----------------------------------------------------------------

_TEMPLATE_CAUSE = (
    # One entry per dataVolumeTemplates index: "" when the entry is fine.
    "variables.indices.map(i, "
    "variables.templates[i].?metadata.?name.orValue('') == '' ? "
    "\"'name' field must not be empty for DataVolumeTemplate entry spec.dataVolumeTemplate[\""
    " + string(i) + \"].name.\" : "
    "!has(variables.templates[i].spec.pvc) && !has(variables.templates[i].spec.storage) ? "
    "'Missing Data volume PVC or Storage' : "
    "has(variables.templates[i].spec.pvc) && has(variables.templates[i].spec.storage) ? "
    "'Duplicate storage definition, both target storage and target pvc defined' : "
    "variables.volumes.exists(v, "
    "(has(v.persistentVolumeClaim) && "
    "v.persistentVolumeClaim.claimName == variables.templates[i].metadata.name) || "
    "(has(v.dataVolume) && v.dataVolume.name == variables.templates[i].metadata.name)) ? '' : "
    "'DataVolumeTemplate entry spec.dataVolumeTemplate[' + string(i) + "
    "\"] must be referenced in the VMI template's 'volumes' list\""
    ").filter(m, m != '')"
)

_RUN_CAUSES = (
    "(has(object.spec.running) && has(object.spec.runStrategy) ? "
    f"[{_cel_string(MSG_RUNNING_AND_STRATEGY)}] : []) + "
    "(!has(object.spec.running) && !has(object.spec.runStrategy) ? "
    f"[{_cel_string(MSG_STRATEGY_REQUIRED)}] : []) + "
    "(has(object.spec.runStrategy) && "
    f"!(object.spec.runStrategy in {json.dumps([*VALID_RUN_STRATEGIES, *GATED_RUN_STRATEGIES])})"
    " ? ['Invalid RunStrategy (' + object.spec.runStrategy + ')'] : [])"
)

_SAME_RUN_STATE = (
    "has(oldObject.spec.running) && has(object.spec.running) ? "
    "oldObject.spec.running == object.spec.running : "
    "has(oldObject.spec.runStrategy) && has(object.spec.runStrategy) ? "
    "oldObject.spec.runStrategy == object.spec.runStrategy : false"
)

_VM_POLICY_SPEC: dict[str, Any] = {
    "failurePolicy": "Fail",
    "matchConstraints": {
        "resourceRules": [{
            "apiGroups": ["kubevirt.io"],
            "apiVersions": ["*"],
            "operations": ["CREATE", "UPDATE"],
            "resources": ["virtualmachines"],
        }],
    },
    # vms-admitter: a VM being deleted is admitted as it is.
    "matchConditions": [
        {"name": "not-deleting", "expression": "!has(object.metadata.deletionTimestamp)"},
    ],
    "variables": [
        {"name": "templates", "expression": "object.spec.?dataVolumeTemplates.orValue([])"},
        {"name": "volumes", "expression": "object.spec.?template.?spec.?volumes.orValue([])"},
        {"name": "indices", "expression": "lists.range(size(variables.templates))"},
        {"name": "specCauses", "expression": f"{_TEMPLATE_CAUSE} + {_RUN_CAUSES}"},
        {
            "name": "snapshot",
            "expression": (
                "request.operation == 'UPDATE' && size(variables.specCauses) == 0 ? "
                "object.?status.?snapshotInProgress.orValue('') : ''"
            ),
        },
        {
            "name": "sameVolumes",
            "expression": (
                "request.operation != 'UPDATE' || variables.volumes == "
                "oldObject.spec.?template.?spec.?volumes.orValue([])"
            ),
        },
    ],
    "validations": [
        {
            "expression": "size(variables.specCauses) == 0",
            "messageExpression": "variables.specCauses.join(', ')",
            "reason": "Invalid",
        },
        {
            "expression": (
                f"variables.snapshot == '' || (variables.sameVolumes && ({_SAME_RUN_STATE}))"
            ),
            "messageExpression": (
                "(variables.sameVolumes ? 'Cannot update vm running state until snapshot \"' : "
                "'Cannot update vm disks or volumes until snapshot \"') + variables.snapshot + "
                "'\" completes'"
            ),
            "reason": "Invalid",
        },
    ],
}

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

POLICIES: Mapping[str, Mapping[str, Any]] = {
    VM_POLICY: _VM_POLICY_SPEC,
    DV_POLICY: _DV_POLICY_SPEC,
}


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
    each refusal is probed with ``dryRun=All`` requests until the server refuses them
    (UPDATE rules need a stored object: a probe VM and DataVolume are created in
    ``default`` and deleted again; no controller runs yet, so nothing reacts to them).
    """
    for doc in manifests():
        response = api.post(url=_PLURALS[doc["kind"]], version=API_VERSION,
                            data=json.dumps(doc))
        if not response.ok:
            raise AdmissionError(f"{doc['kind']} {doc['metadata']['name']} rejected "
                                 f"({response.status_code}): {response.text[:2000]}")
    deadline = time.monotonic() + timeout
    vm_url = f"namespaces/{_PROBE_NAMESPACE}/virtualmachines"
    dv_url = f"namespaces/{_PROBE_NAMESPACE}/datavolumes"
    vm = _create(api, vm_url, "kubevirt.io/v1", _probe_vm())
    dv = _create(api, dv_url, "cdi.kubevirt.io/v1beta1", _probe_dv())
    try:
        locked = _request(api, "PATCH", f"{vm_url}/{_PROBE_NAME}/status", "kubevirt.io/v1",
                          {"status": {"snapshotInProgress": _PROBE_NAME}})
        if not locked.ok:
            raise AdmissionError(f"probe VM status not written: {locked.text[:500]}")
        probes: list[tuple[str, Callable[[], Any], str]] = [
            ("running with runStrategy", lambda: _request(
                api, "POST", vm_url, "kubevirt.io/v1",
                {**_probe_vm(), "metadata": {"name": f"{_PROBE_NAME}-2"},
                 "spec": {**_probe_vm()["spec"], "running": False}}, dry_run=True),
             MSG_RUNNING_AND_STRATEGY),
            ("volume edit during a snapshot", lambda: _request(
                api, "PATCH", f"{vm_url}/{_PROBE_NAME}", "kubevirt.io/v1",
                {"spec": {"template": {"spec": {"volumes": []}}}}, dry_run=True),
             snapshot_volumes_message(_PROBE_NAME)),
            ("DataVolume spec update", lambda: _request(
                api, "PATCH", f"{dv_url}/{_PROBE_NAME}", "cdi.kubevirt.io/v1beta1",
                {"spec": {"contentType": "archive"}}, dry_run=True),
             MSG_DV_SPEC),
        ]
        pending = probes
        while pending:
            pending = [p for p in pending if not _refused(p[1](), p[2])]
            if pending and time.monotonic() > deadline:
                raise AdmissionError("admission policies not enforced after "
                                     f"{timeout:.0f}s: {', '.join(p[0] for p in pending)}")
            if pending:
                time.sleep(0.05)
    finally:
        for url, obj in ((vm_url, vm), (dv_url, dv)):
            api.delete(url=f"{url}/{obj['metadata']['name']}",
                       version=obj["apiVersion"])
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


def _probe_vm() -> dict[str, Any]:
    return {
        "apiVersion": "kubevirt.io/v1",
        "kind": "VirtualMachine",
        "metadata": {"name": _PROBE_NAME},
        "spec": {
            "runStrategy": "Halted",
            "template": {"spec": {
                "domain": {"devices": {"disks": [{"name": "root", "disk": {}}]}},
                "volumes": [{"name": "root", "persistentVolumeClaim": {"claimName": "root"}}],
            }},
        },
    }


def _probe_dv() -> dict[str, Any]:
    return {
        "apiVersion": "cdi.kubevirt.io/v1beta1",
        "kind": "DataVolume",
        "metadata": {"name": _PROBE_NAME},
        "spec": {"source": {"blank": {}},
                 "storage": {"resources": {"requests": {"storage": "1Gi"}}}},
    }

