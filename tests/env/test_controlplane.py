"""The local control plane acts like a real cluster's API: health, version, CRDs, RBAC, tokens."""

from __future__ import annotations

import json
import socket
import time
from pathlib import Path

import psutil
import pykube
import pytest
import requests

from testenv import controlplane, crds
from testenv.binaries import Binaries, ensure_all, module_version
from testenv.controlplane import ControlPlane, ControlPlaneError

REPO = Path(__file__).resolve().parents[2]

# (group/version, plural, short names) for every CRD the control plane must serve.
SERVED = [
    ("kubevirt.io/v1", "virtualmachines", ["vm", "vms"]),
    ("kubevirt.io/v1", "virtualmachineinstances", ["vmi", "vmis"]),
    ("kubevirt.io/v1", "virtualmachineinstancemigrations", ["vmim", "vmims"]),
    ("kubevirt.io/v1", "kubevirts", ["kv", "kvs"]),
    ("cdi.kubevirt.io/v1beta1", "datavolumes", ["dv", "dvs"]),
    ("cdi.kubevirt.io/v1beta1", "storageprofiles", []),
]


def _get(url: str, control_plane: ControlPlane, token: str | None = None) -> requests.Response:
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    return requests.get(url, headers=headers, verify=str(control_plane.ca_file), timeout=10)


def test_readyz_is_ok(control_plane: ControlPlane) -> None:
    response = _get(f"{control_plane.server}/readyz?verbose", control_plane)

    assert response.status_code == 200
    assert response.text.rstrip().endswith("readyz check passed")


def test_version_is_the_pinned_kubernetes_release(control_plane: ControlPlane) -> None:
    pinned = module_version(REPO / "tools/k8s/go.mod", "k8s.io/kubernetes")

    version = _get(f"{control_plane.server}/version", control_plane).json()

    assert pinned == "v1.36.3"
    assert (version["gitVersion"], version["major"], version["minor"]) == ("v1.36.3", "1", "36")


@pytest.mark.parametrize(("group_version", "plural", "short_names"), SERVED)
def test_crd_is_served_with_its_short_names(
    api: pykube.HTTPClient, group_version: str, plural: str, short_names: list[str]
) -> None:
    response = api.get(version=group_version, url="")
    api.raise_for_status(response)

    resources = {r["name"]: r for r in response.json()["resources"]}

    assert plural in resources
    assert resources[plural].get("shortNames", []) == short_names


def test_only_the_kept_crds_are_installed(api: pykube.HTTPClient) -> None:
    response = api.get(version="apiextensions.k8s.io/v1", url="customresourcedefinitions")
    api.raise_for_status(response)

    names = {item["metadata"]["name"] for item in response.json()["items"]}
    # Flux's CRDs come with the `flux` fixture (tests/support/flux.py), which shares this
    # control plane: whether they are here depends on which tests ran first.
    ours = {name for name in names if not name.endswith(".toolkit.fluxcd.io")}

    assert ours == set(crds.KEPT)


def test_a_service_account_without_bindings_is_forbidden_and_admin_is_not(
    control_plane: ControlPlane, api: pykube.HTTPClient, namespace: str
) -> None:
    token = control_plane.service_account_token(namespace, "nobody")
    url = f"{control_plane.server}/apis/kubevirt.io/v1/namespaces/{namespace}/virtualmachines"

    as_sa = _get(url, control_plane, token)
    as_admin = _get(url, control_plane, control_plane.admin_token)

    assert as_sa.status_code == 403
    assert f"system:serviceaccount:{namespace}:nobody" in as_sa.json()["message"]
    assert as_admin.status_code == 200
    assert as_admin.json()["items"] == []


def test_a_role_binding_grants_the_service_account_access(
    control_plane: ControlPlane, api: pykube.HTTPClient, namespace: str
) -> None:
    token = control_plane.service_account_token(namespace, "reader")
    rbac = "rbac.authorization.k8s.io/v1"
    _create(api, rbac, namespace, "roles", _vm_reader_role())
    _create(api, rbac, namespace, "rolebindings", _binding("reader", namespace))
    url = f"{control_plane.server}/apis/kubevirt.io/v1/namespaces/{namespace}/virtualmachines"

    # The RBAC authorizer reads bindings from an informer cache: allow it to catch up.
    deadline = time.monotonic() + 10
    while (status := _get(url, control_plane, token).status_code) == 403:
        assert time.monotonic() < deadline, "binding never took effect"
        time.sleep(0.1)

    assert status == 200


def test_token_request_issues_a_token_that_authenticates_as_the_service_account(
    control_plane: ControlPlane, namespace: str
) -> None:
    token = control_plane.service_account_token(namespace, "whoami", expiration_seconds=600)
    review = {"apiVersion": "authentication.k8s.io/v1", "kind": "SelfSubjectReview"}

    response = requests.post(
        f"{control_plane.server}/apis/authentication.k8s.io/v1/selfsubjectreviews",
        headers={"Authorization": f"Bearer {token}"},
        json=review,
        verify=str(control_plane.ca_file),
        timeout=10,
    )

    assert response.status_code == 201
    user = response.json()["status"]["userInfo"]
    assert user["username"] == f"system:serviceaccount:{namespace}:whoami"
    assert f"system:serviceaccounts:{namespace}" in user["groups"]


def test_written_kubeconfig_authenticates_with_the_given_token(
    control_plane: ControlPlane, namespace: str, tmp_path: Path
) -> None:
    token = control_plane.service_account_token(namespace, "kubeconfig-user")
    path = control_plane.write_kubeconfig(tmp_path / "kubeconfig", token)
    client = pykube.HTTPClient(pykube.KubeConfig.from_file(str(path)))

    own_namespace = client.get(url=f"namespaces/{namespace}")
    virtual_machines = client.get(
        version="kubevirt.io/v1", namespace=namespace, url="virtualmachines"
    )

    assert own_namespace.status_code == 403
    assert virtual_machines.status_code == 403


def test_create_namespace_returns_unique_names(control_plane: ControlPlane) -> None:
    first = control_plane.create_namespace("unique")
    second = control_plane.create_namespace("unique")

    assert first != second
    assert first.startswith("unique-")
    assert control_plane.api().get(url=f"namespaces/{second}").status_code == 200


def test_stop_leaves_no_processes_and_no_temp_dir() -> None:
    plane = ControlPlane(ensure_all(log=lambda _: None), log=lambda _: None)
    plane.start()
    pids = plane.pids
    workdir = plane.workdir
    assert workdir is not None and workdir.is_dir()
    assert set(pids) == {"etcd", "kube-apiserver"}
    assert all(psutil.pid_exists(pid) for pid in pids.values())

    plane.stop()

    assert not any(psutil.pid_exists(pid) for pid in pids.values())
    assert not workdir.exists()
    leftovers = [p for p in psutil.Process().children(recursive=True) if p.pid in pids.values()]
    assert leftovers == []
    plane.stop()  # idempotent


def test_start_failure_reports_the_apiserver_log(tmp_path: Path) -> None:
    binaries = ensure_all(log=lambda _: None)
    broken = tmp_path / "kube-apiserver"
    broken.write_text("#!/bin/sh\necho 'simulated: bad flag' >&2\nexit 1\n")
    broken.chmod(0o755)
    plane = ControlPlane(
        Binaries(kube_apiserver=broken, etcd=binaries.etcd, crd_dir=binaries.crd_dir),
        log=lambda _: None,
    )

    expected = r"(?s)kube-apiserver exited with code 1.*simulated: bad flag"
    with pytest.raises(ControlPlaneError, match=expected) as failure:
        plane.start()

    assert failure.value.component == "kube-apiserver"
    assert plane.workdir is None
    assert plane.pids == {}


def _create(
    api: pykube.HTTPClient, version: str, namespace: str, plural: str, body: dict[str, object]
) -> None:
    response = api.post(version=version, namespace=namespace, url=plural, data=json.dumps(body))
    api.raise_for_status(response)


def _vm_reader_role() -> dict[str, object]:
    return {
        "apiVersion": "rbac.authorization.k8s.io/v1",
        "kind": "Role",
        "metadata": {"name": "vm-reader"},
        "rules": [
            {
                "apiGroups": ["kubevirt.io"],
                "resources": ["virtualmachines"],
                "verbs": ["get", "list"],
            }
        ],
    }


def _binding(service_account: str, namespace: str) -> dict[str, object]:
    return {
        "apiVersion": "rbac.authorization.k8s.io/v1",
        "kind": "RoleBinding",
        "metadata": {"name": "vm-reader"},
        "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": "vm-reader"},
        "subjects": [
            {"kind": "ServiceAccount", "name": service_account, "namespace": namespace}
        ],
    }


def test_a_port_taken_between_picking_and_binding_starts_again_on_other_ports(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Another process binds the API server's port after it was picked (another engine
    starting beside this one): the start tries again on new ports instead of failing."""
    picked = controlplane._free_ports
    said: list[str] = []
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        busy = int(taken.getsockname()[1])
        calls: list[list[int]] = []

        def first_one_taken(count: int) -> list[int]:
            ports = picked(count)
            if not calls:
                ports[-1] = busy  # the API server's
            calls.append(ports)
            return ports

        monkeypatch.setattr(controlplane, "_free_ports", first_one_taken)
        with ControlPlane(log=said.append) as plane:
            assert plane.server is not None and not plane.server.endswith(f":{busy}")
    assert len(calls) == 2, calls
    assert any("taken meanwhile" in line for line in said), said
