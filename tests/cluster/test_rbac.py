"""`plan` runs with exactly the ClusterRole shipped in cronjob.yaml, and fails cleanly without."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pykube
import pytest
import yaml

from reconciler.cli.main import main
from testenv import seed
from testenv.controlplane import ControlPlane
from tests.support.kube import vmi_running

ROOT = Path(__file__).resolve().parents[2]

pytestmark = pytest.mark.usefixtures("sim")


def shipped(kind: str) -> dict[str, Any]:
    """The first document of ``kind`` in cronjob.yaml."""
    docs = [d for d in yaml.safe_load_all((ROOT / "cronjob.yaml").read_text()) if d]
    found: dict[str, Any] = next(d for d in docs if d["kind"] == kind)
    return found


def post(
    api: pykube.HTTPClient,
    version: str,
    url: str,
    body: dict[str, Any],
    namespace: str | None = None,
) -> None:
    kwargs: dict[str, Any] = {"version": version, "url": url, "data": json.dumps(body)}
    if namespace:
        kwargs["namespace"] = namespace
    response = api.post(**kwargs)
    if response.status_code != 409:
        api.raise_for_status(response)


def identity(control_plane: ControlPlane, namespace: str, sa: str, tmp_path: Path) -> Path:
    token = control_plane.service_account_token(namespace, sa)
    return control_plane.write_kubeconfig(tmp_path / f"{sa}.kubeconfig", token)


def plan_file(tmp_path: Path, namespace: str) -> Path:
    path = tmp_path / "plan.yaml"
    path.write_text(
        "apiVersion: vmstorage.dev/v1alpha1\nkind: StoragePlan\nmetadata: {name: rbac}\n"
        f"spec:\n  namespace: {namespace}\n  storageClass: ceph-rbd\n"
        "  virtualMachines: [{name: vm-fedora}]\n"
    )
    return path


def test_plan_works_with_exactly_the_shipped_cluster_role(
    api: pykube.HTTPClient,
    control_plane: ControlPlane,
    namespace: str,
    tmp_path: Path,
    eventually: Any,
    capsys: pytest.CaptureFixture[str],
) -> None:
    seed.seed_cluster(api)
    seed.create(api, seed.fedora_vm(namespace, "vm-fedora", "vm-fedora-disk"))
    eventually(lambda: vmi_running(api, namespace, "vm-fedora"), what="VMI vm-fedora Running")
    role = shipped("ClusterRole")
    role["metadata"]["name"] = f"vmsr-{namespace}"
    post(api, "rbac.authorization.k8s.io/v1", "clusterroles", role)
    post(
        api,
        "rbac.authorization.k8s.io/v1",
        "clusterrolebindings",
        {
            "apiVersion": "rbac.authorization.k8s.io/v1",
            "kind": "ClusterRoleBinding",
            "metadata": {"name": f"vmsr-{namespace}"},
            "roleRef": {
                "apiGroup": "rbac.authorization.k8s.io",
                "kind": "ClusterRole",
                "name": role["metadata"]["name"],
            },
            "subjects": [{"kind": "ServiceAccount", "name": "reconciler", "namespace": namespace}],
        },
    )
    kubeconfig = identity(control_plane, namespace, "reconciler", tmp_path)

    rc = main(
        [
            "plan",
            str(plan_file(tmp_path, namespace)),
            "--kubeconfig",
            str(kubeconfig),
            "-o",
            "json",
            "--server-dry-run",
        ]
    )
    out, err = capsys.readouterr()
    assert rc == 1, err
    report = json.loads(out)
    assert report["vms"][0]["action"] == "MoveLive", report["vms"][0]["reasons"]
    assert report["serverDryRunErrors"] == []


def test_plan_without_permissions_is_a_cluster_error_with_a_hint(
    control_plane: ControlPlane,
    namespace: str,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    kubeconfig = identity(control_plane, namespace, "nobody", tmp_path)
    rc = main(["plan", str(plan_file(tmp_path, namespace)), "--kubeconfig", str(kubeconfig)])
    _, err = capsys.readouterr()
    assert rc == 6
    assert "forbidden" in err and "(HTTP 403)" in err
    assert "RBAC in cronjob.yaml" in err
    assert "Traceback" not in err
