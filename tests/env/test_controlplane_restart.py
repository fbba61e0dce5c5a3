"""``ControlPlane.restart_apiserver()``: a new kube-apiserver on the same port, nothing lost.

Clients that must survive an API server restart (the reconciler's watches) are tested against
this; here is what it promises: the same URL, certificate and credentials, every object and
resourceVersion kept (etcd runs on), CRDs served at once, the old process gone, and a watch
resumed from before the restart told to relist (410), as a real restarted API server does.
"""

from __future__ import annotations

import json

import psutil
import pykube
import requests

from testenv.controlplane import ControlPlane


def test_restart_keeps_the_address_the_credentials_and_every_object(
    control_plane: ControlPlane, namespace: str
) -> None:
    api = control_plane.api()
    body = {"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "kept"}}
    created = api.post(url="configmaps", namespace=namespace, data=json.dumps(body))
    api.raise_for_status(created)
    version = created.json()["metadata"]["resourceVersion"]
    server, old_pid = control_plane.server, control_plane.pids["kube-apiserver"]
    certificate = control_plane.ca_file.read_bytes()

    control_plane.restart_apiserver()

    assert control_plane.server == server
    assert control_plane.pids["kube-apiserver"] != old_pid
    assert not psutil.pid_exists(old_pid), "the old kube-apiserver is gone"
    assert control_plane.ca_file.read_bytes() == certificate, "clients' CA stays valid"
    fresh = control_plane.api()
    kept = fresh.get(url="configmaps/kept", namespace=namespace)
    fresh.raise_for_status(kept)
    assert kept.json()["metadata"]["resourceVersion"] == version
    vms = fresh.get(version="kubevirt.io/v1", url="virtualmachines", namespace=namespace)
    assert vms.status_code == 200, "CRDs are served (their caches warm) when it returns"

    watch = requests.get(
        f"{server}/api/v1/namespaces/{namespace}/configmaps",
        params={"watch": "1", "resourceVersion": version, "timeoutSeconds": "5"},
        headers={"Authorization": f"Bearer {control_plane.admin_token}"},
        verify=str(control_plane.ca_file),
        stream=True,
        timeout=10,
    )
    first = json.loads(next(watch.iter_lines()))
    watch.close()
    assert (first["type"], first["object"]["code"]) == ("ERROR", 410), (
        "the new watch cache starts at the current revision: a watch resumed from before "
        "the restart is told to relist, as on a real cluster"
    )


def test_the_session_api_client_works_after_a_restart(
    api: pykube.HTTPClient, control_plane: ControlPlane
) -> None:
    """The shared admin client's pooled connections to the old process are replaced."""
    control_plane.restart_apiserver()

    response = api.get(url="namespaces")

    assert response.status_code == 200
