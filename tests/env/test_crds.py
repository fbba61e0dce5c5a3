"""The generated KubeVirt/CDI CRDs validate like a real cluster's: schema, pruning, subresources.

Messages are asserted verbatim: they are what kube-apiserver v1.36 returns for these
CRDs, so the reconciler's error handling is tested against real text. CDI's DataVolume
webhook refusal (a ValidatingAdmissionPolicy standing in for it) is in test_admission.py.
"""

from __future__ import annotations

import copy
import json
from typing import Any

import pykube
import pytest
import requests

KUBEVIRT = "kubevirt.io/v1"
CDI = "cdi.kubevirt.io/v1beta1"
STRICT = {"fieldValidation": "Strict"}


def vm_fedora(name: str = "vm-fedora") -> dict[str, Any]:
    """The classic KubeVirt example VM with a DataVolume template (stopped)."""
    return {
        "apiVersion": KUBEVIRT,
        "kind": "VirtualMachine",
        "metadata": {"name": name, "labels": {"kubevirt.io/vm": name}},
        "spec": {
            "runStrategy": "Halted",
            "dataVolumeTemplates": [
                {
                    "metadata": {"name": f"{name}-rootdisk"},
                    "spec": {
                        "source": {
                            "registry": {"url": "docker://quay.io/containerdisks/fedora:latest"}
                        },
                        "storage": {
                            "storageClassName": "standard",
                            "resources": {"requests": {"storage": "5Gi"}},
                        },
                    },
                }
            ],
            "template": {
                "metadata": {"labels": {"kubevirt.io/vm": name}},
                "spec": {
                    "domain": {
                        "cpu": {"cores": 1},
                        "devices": {
                            "disks": [{"name": "rootdisk", "disk": {"bus": "virtio"}}],
                            "interfaces": [{"name": "default", "masquerade": {}}],
                        },
                        "resources": {"requests": {"memory": "2Gi"}},
                    },
                    "networks": [{"name": "default", "pod": {}}],
                    "volumes": [{"name": "rootdisk", "dataVolume": {"name": f"{name}-rootdisk"}}],
                },
            },
        },
    }


def _post(
    api: pykube.HTTPClient,
    namespace: str,
    plural: str,
    body: dict[str, Any],
    *,
    version: str = KUBEVIRT,
    params: dict[str, str] | None = None,
) -> requests.Response:
    return api.post(  # type: ignore[no-any-return]
        version=version, namespace=namespace, url=plural, data=json.dumps(body), params=params
    )


def _created(response: requests.Response) -> dict[str, Any]:
    assert response.status_code == 201, response.text
    body: dict[str, Any] = response.json()
    return body


def test_unknown_field_with_strict_validation_is_rejected_naming_the_field(
    api: pykube.HTTPClient, namespace: str
) -> None:
    vm = vm_fedora()
    vm["spec"]["template"]["spec"]["domain"]["devicez"] = {}

    response = _post(api, namespace, "virtualmachines", vm, params=STRICT)

    assert response.status_code == 400
    assert response.json()["reason"] == "BadRequest"
    assert response.json()["message"] == (
        'VirtualMachine in version "v1" cannot be handled as a VirtualMachine: '
        'strict decoding error: unknown field "spec.template.spec.domain.devicez"'
    )


def test_unknown_field_with_warn_validation_is_pruned_with_a_warning(
    api: pykube.HTTPClient, namespace: str
) -> None:
    vm = vm_fedora()
    vm["spec"]["template"]["spec"]["domain"]["devicez"] = {}

    response = _post(api, namespace, "virtualmachines", vm, params={"fieldValidation": "Warn"})

    stored = _created(response)
    assert response.headers["Warning"] == (
        '299 - "unknown field \\"spec.template.spec.domain.devicez\\""'
    )
    assert "devicez" not in stored["spec"]["template"]["spec"]["domain"]


@pytest.mark.parametrize(
    ("field", "value", "message"),
    [
        (
            "runStrategy",
            5,
            'Invalid value: "integer": spec.runStrategy in body must be of type string: "integer"',
        ),
        (
            "running",
            "yes",
            'Invalid value: "string": spec.running in body must be of type boolean: "string"',
        ),
    ],
)
def test_wrong_type_is_rejected_with_the_field_path(
    api: pykube.HTTPClient, namespace: str, field: str, value: object, message: str
) -> None:
    vm = vm_fedora()
    vm["spec"][field] = value

    response = _post(api, namespace, "virtualmachines", vm)

    assert response.status_code == 422
    status = response.json()
    assert status["reason"] == "Invalid"
    causes = {cause["field"]: cause for cause in status["details"]["causes"]}
    assert causes[f"spec.{field}"]["reason"] == "FieldValueTypeInvalid"
    assert causes[f"spec.{field}"]["message"] == message


def test_valid_vm_with_data_volume_template_is_stored_unpruned(
    api: pykube.HTTPClient, namespace: str
) -> None:
    vm = vm_fedora()

    stored = _created(_post(api, namespace, "virtualmachines", vm, params=STRICT))

    # Embedded ObjectMeta is preserve-unknown-fields: a pruned template name would be fatal.
    assert stored["spec"]["dataVolumeTemplates"] == vm["spec"]["dataVolumeTemplates"]
    assert stored["spec"]["template"] == vm["spec"]["template"]
    assert stored["metadata"]["generation"] == 1


def test_data_volume_with_storage_api_is_accepted(api: pykube.HTTPClient, namespace: str) -> None:
    dv = {
        "apiVersion": CDI,
        "kind": "DataVolume",
        "metadata": {"name": "blank"},
        "spec": {
            "source": {"blank": {}},
            "storage": {
                "accessModes": ["ReadWriteOnce"],
                "volumeMode": "Block",
                "storageClassName": "fast",
                "resources": {"requests": {"storage": "1Gi"}},
            },
        },
    }

    response = _post(api, namespace, "datavolumes", dv, version=CDI, params=STRICT)

    assert _created(response)["spec"] == dv["spec"]


def test_status_patch_changes_status_only(api: pykube.HTTPClient, namespace: str) -> None:
    _created(_post(api, namespace, "virtualmachines", vm_fedora()))
    patch = {"spec": {"runStrategy": "Always"}, "status": {"printableStatus": "Provisioning"}}

    response = api.patch(
        version=KUBEVIRT,
        namespace=namespace,
        url="virtualmachines/vm-fedora/status",
        headers={"Content-Type": "application/merge-patch+json"},
        data=json.dumps(patch),
    )
    api.raise_for_status(response)

    patched = response.json()
    assert patched["status"]["printableStatus"] == "Provisioning"
    assert patched["spec"]["runStrategy"] == "Halted"
    assert patched["metadata"]["generation"] == 1


def test_main_resource_update_ignores_status(api: pykube.HTTPClient, namespace: str) -> None:
    _created(_post(api, namespace, "virtualmachines", vm_fedora()))
    current = api.get(version=KUBEVIRT, namespace=namespace, url="virtualmachines/vm-fedora")
    api.raise_for_status(current)
    update = copy.deepcopy(current.json())
    stored = update.get("status")
    update["spec"]["runStrategy"] = "Always"
    update["status"] = {"printableStatus": "Running", "ready": True}
    response = api.put(
        version=KUBEVIRT,
        namespace=namespace,
        url="virtualmachines/vm-fedora",
        data=json.dumps(update),
    )
    api.raise_for_status(response)

    updated = response.json()
    assert updated["spec"]["runStrategy"] == "Always"
    assert updated.get("status") == stored, "the status sent with the main resource is ignored"
    assert updated["metadata"]["generation"] == 2


def test_vmi_has_no_status_subresource_like_upstream(
    api: pykube.HTTPClient, namespace: str
) -> None:
    vmi = {
        "apiVersion": KUBEVIRT,
        "kind": "VirtualMachineInstance",
        "metadata": {"name": "vmi"},
        "spec": {"domain": {"devices": {}}},
        "status": {"phase": "Scheduling"},
    }

    stored = _created(_post(api, namespace, "virtualmachineinstances", vmi))
    status_endpoint = api.get(
        version=KUBEVIRT, namespace=namespace, url="virtualmachineinstances/vmi/status"
    )

    # virt-handler writes VMI status through the main resource, so it is kept there.
    assert stored["status"] == {"phase": "Scheduling"}
    assert status_endpoint.status_code == 404


def test_storage_profile_is_cluster_scoped_with_status(api: pykube.HTTPClient) -> None:
    name = "vmsr-test-profile"
    # A StorageClass of the same name, as CDI keeps one profile per class.
    sc = {
        "apiVersion": "storage.k8s.io/v1",
        "kind": "StorageClass",
        "metadata": {"name": name},
        "provisioner": "vmsr.example",
    }
    api.post(version="storage.k8s.io/v1", url="storageclasses", data=json.dumps(sc))
    profile = {"apiVersion": CDI, "kind": "StorageProfile", "metadata": {"name": name}, "spec": {}}
    _created(api.post(version=CDI, url="storageprofiles", data=json.dumps(profile)))
    try:
        patched = api.patch(
            version=CDI,
            url=f"storageprofiles/{name}/status",
            headers={"Content-Type": "application/merge-patch+json"},
            data=json.dumps({"status": {"storageClass": "fast", "cloneStrategy": "csi-clone"}}),
        )
        api.raise_for_status(patched)

        wanted = {"storageClass": "fast", "cloneStrategy": "csi-clone"}
        assert patched.json()["status"] == wanted
    finally:
        api.delete(version=CDI, url=f"storageprofiles/{name}")
        api.delete(version="storage.k8s.io/v1", url=f"storageclasses/{name}")
