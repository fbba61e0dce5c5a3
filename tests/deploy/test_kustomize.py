"""deploy/, proven: built with kustomize itself, against every supported Kubernetes' schemas and a
real API server, with nothing kept in step by hand.

- The top-level cronjob.yaml and loop-deployment.yaml are exactly what `make manifests` builds
  from deploy/overlays/default and deploy/overlays/loop, and each overlay's RoleBindings are
  exactly what deploy/generate.py writes from its allowed-namespaces.env: a hand edit, or a
  change to deploy/ without `make manifests`, fails here.
- The allowed namespaces are one list: the RoleBindings and the reconciler's
  VMSR_ALLOWED_NAMESPACES come out of the same line (also after adding a namespace to it).
- Every overlay passes the strict JSON schemas of every Kubernetes minor version the README
  supports (kubernetes-validate), and a server-side apply dry run (strict field validation, no
  warnings) on a fresh local API server with the KubeVirt, CDI and Prometheus Operator CRDs,
  from an empty cluster but for the namespaces the VMs live in.
- Plans delivered as a ConfigMap are read by the reconciler as the kubelet mounts them, and are
  never objects of their own.
"""

from __future__ import annotations

import importlib.util
import json
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType
from typing import Any

import kubernetes_validate  # type: ignore[import-untyped]
import pykube
import pytest
import yaml

from reconciler.cli.main import main
from testenv.binaries import ensure_kustomize, ensure_monitoring_crds
from testenv.controlplane import ControlPlane

ROOT = Path(__file__).resolve().parents[2]
DEPLOY = ROOT / "deploy"
OVERLAYS = sorted(p.name for p in (DEPLOY / "overlays").iterdir() if p.is_dir())
# README "Install": the Kubernetes versions the manifests support (the loop's native git-sync
# sidecar needs 1.29; 1.36 is the local control plane's).
SUPPORTED = [f"1.{minor}" for minor in range(29, 37)]
# Custom resources kubernetes-validate has no schema for: checked by the server dry run against
# the Prometheus Operator's CRDs, and by promtool (tests/deploy/test_alerts.py).
CUSTOM = {"ServiceMonitor", "PrometheusRule"}
FIELD_MANAGER = "vmsr-deploy-test"


def _generate() -> ModuleType:
    spec = importlib.util.spec_from_file_location("deploy_generate", DEPLOY / "generate.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


generate = _generate()


@pytest.fixture(scope="module")
def kustomize() -> Path:
    try:
        return ensure_kustomize(log=lambda message: print(message, file=sys.stderr))
    except Exception as error:  # a missing Go or a failed build fails the tests, with why
        pytest.fail(f"kustomize could not be built: {error}", pytrace=False)


def build(kustomize: Path, overlay: Path | str) -> list[dict[str, Any]]:
    path = overlay if isinstance(overlay, Path) else DEPLOY / "overlays" / overlay
    done = subprocess.run(
        [str(kustomize), "build", str(path)], capture_output=True, text=True, check=False
    )
    assert done.returncode == 0, done.stderr
    return [d for d in yaml.safe_load_all(done.stdout) if d]


def only(docs: list[dict[str, Any]], kind: str, **meta: str) -> dict[str, Any]:
    (found,) = [
        d
        for d in docs
        if d["kind"] == kind and all(d["metadata"].get(k) == v for k, v in meta.items())
    ]
    return found


def pod_spec(doc: dict[str, Any]) -> dict[str, Any]:
    template = doc["spec"]["jobTemplate"]["spec"] if doc["kind"] == "CronJob" else doc["spec"]
    spec: dict[str, Any] = template["template"]["spec"]
    return spec


def workload(docs: list[dict[str, Any]]) -> dict[str, Any]:
    (found,) = [d for d in docs if d["kind"] in ("CronJob", "Deployment")]
    return found


def env_of(docs: list[dict[str, Any]]) -> dict[str, str]:
    """The reconciler container's environment from its ConfigMaps (envFrom)."""
    (container,) = [c for c in pod_spec(workload(docs))["containers"] if c["name"] == "reconciler"]
    env: dict[str, str] = {}
    for source in container.get("envFrom", []):
        env |= only(docs, "ConfigMap", name=source["configMapRef"]["name"]).get("data", {})
    return env


def bound_namespaces(docs: list[dict[str, Any]]) -> list[str]:
    """Where the namespaced ClusterRole is bound (RoleBindings, in build order)."""
    return [
        d["metadata"]["namespace"]
        for d in docs
        if d["kind"] == "RoleBinding" and d["roleRef"]["name"] == "vm-storage-reconciler"
    ]


# --------------------------------------------------------------------------------------------
# Generated files do not drift
# --------------------------------------------------------------------------------------------


def test_the_top_level_manifests_are_the_overlays_built(kustomize: Path) -> None:
    for name, overlay in generate.TOP_LEVEL.items():
        assert (ROOT / name).read_text() == generate.top_level(kustomize, name), (
            f"{name} is not `kustomize build deploy/overlays/{overlay}`: run `make manifests`"
        )


def test_each_overlay_s_rolebindings_are_generated_from_its_list() -> None:
    found = generate.overlays()
    assert {p.name for p in found} == set(OVERLAYS) - {"loop-monitoring"}, "every list found"
    for overlay in found:
        assert (overlay / generate.OUTPUT).read_text() == generate.expected_rolebindings(overlay), (
            f"{overlay}/{generate.OUTPUT} drifted: run `python3 deploy/generate.py`"
        )


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_the_allowed_namespaces_are_one_list(kustomize: Path, overlay: str) -> None:
    docs = build(kustomize, overlay)
    allowed = env_of(docs)["VMSR_ALLOWED_NAMESPACES"].split(",")
    assert bound_namespaces(docs) == allowed
    sa = only(docs, "ServiceAccount")["metadata"]
    for binding in (d for d in docs if d["kind"] in ("RoleBinding", "ClusterRoleBinding")):
        assert binding["subjects"] == [
            {"kind": "ServiceAccount", "name": sa["name"], "namespace": sa["namespace"]}
        ]


def test_adding_a_namespace_is_one_line_and_one_command(kustomize: Path, tmp_path: Path) -> None:
    copy = tmp_path / "deploy"
    shutil.copytree(DEPLOY, copy, ignore=shutil.ignore_patterns("__pycache__"))
    overlay = copy / "overlays/default"
    env_file = overlay / generate.ENV_FILE
    env_file.write_text(env_file.read_text().replace("=mig-vm", "=mig-vm,tenant-b,tenant-c"))

    assert generate.main([str(overlay)]) == 0

    docs = build(kustomize, overlay)
    assert bound_namespaces(docs) == ["mig-vm", "tenant-b", "tenant-c"]
    assert env_of(docs)["VMSR_ALLOWED_NAMESPACES"] == "mig-vm,tenant-b,tenant-c"


@pytest.mark.parametrize(
    ("line", "why"),
    [
        ("VMSR_ALLOWED_NAMESPACES=", "not a namespace name"),
        ("VMSR_ALLOWED_NAMESPACES=a,,b", "not a namespace name"),
        ("VMSR_ALLOWED_NAMESPACES=Mig_VM", "not a namespace name"),
        ("VMSR_ALLOWED_NAMESPACES=a,b,a", "listed twice"),
        ("# nothing", "exactly one"),
    ],
)
def test_a_bad_list_is_refused(tmp_path: Path, line: str, why: str) -> None:
    (tmp_path / generate.ENV_FILE).write_text(line + "\n")
    with pytest.raises(generate.ConfigError, match=why):
        generate.allowed_namespaces(tmp_path / generate.ENV_FILE)


# --------------------------------------------------------------------------------------------
# Schemas of every supported Kubernetes
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("version", SUPPORTED)
def test_every_overlay_passes_the_schemas_of_every_supported_kubernetes(
    kustomize: Path, version: str
) -> None:
    checked = set()
    for overlay in OVERLAYS:
        for doc in build(kustomize, overlay):
            if doc["kind"] in CUSTOM:
                continue
            try:
                kubernetes_validate.validate(doc, version, strict=True)
            except kubernetes_validate.ValidationError as error:
                pytest.fail(f"{overlay}: {doc['kind']} on Kubernetes {version}: {error.message}")
            checked.add(doc["kind"])
    assert {"CronJob", "Deployment", "Service", "ClusterRole", "RoleBinding"} <= checked


def test_the_schema_check_can_fail(kustomize: Path) -> None:
    """The podFailurePolicy rule without `status` (as shipped before) is refused on 1.29."""
    cronjob = only(build(kustomize, "default"), "CronJob")
    rules = cronjob["spec"]["jobTemplate"]["spec"]["podFailurePolicy"]["rules"]
    (condition,) = next(r for r in rules if "onPodConditions" in r)["onPodConditions"]
    del condition["status"]
    with pytest.raises(kubernetes_validate.ValidationError, match="status"):
        kubernetes_validate.validate(cronjob, "1.29", strict=True)


# --------------------------------------------------------------------------------------------
# A server-side apply dry run on a fresh API server
# --------------------------------------------------------------------------------------------

PLURALS = {
    "CustomResourceDefinition": ("apiextensions.k8s.io/v1", "customresourcedefinitions"),
    "Namespace": ("v1", "namespaces"),
    "ServiceAccount": ("v1", "serviceaccounts"),
    "ConfigMap": ("v1", "configmaps"),
    "Service": ("v1", "services"),
    "ClusterRole": ("rbac.authorization.k8s.io/v1", "clusterroles"),
    "ClusterRoleBinding": ("rbac.authorization.k8s.io/v1", "clusterrolebindings"),
    "Role": ("rbac.authorization.k8s.io/v1", "roles"),
    "RoleBinding": ("rbac.authorization.k8s.io/v1", "rolebindings"),
    "CronJob": ("batch/v1", "cronjobs"),
    "Deployment": ("apps/v1", "deployments"),
    "ServiceMonitor": ("monitoring.coreos.com/v1", "servicemonitors"),
    "PrometheusRule": ("monitoring.coreos.com/v1", "prometheusrules"),
}


def server_side_apply(
    api: pykube.HTTPClient, doc: dict[str, Any], *, dry_run: bool
) -> tuple[int, str, str]:
    """``kubectl apply --server-side [--dry-run=server]`` of one object, strict: (HTTP status,
    body, the Warning header)."""
    version, plural = PLURALS[doc["kind"]]
    namespace = doc["metadata"].get("namespace")
    params = {"fieldManager": FIELD_MANAGER, "fieldValidation": "Strict", "force": "true"}
    if dry_run:
        params["dryRun"] = "All"
    response = api.patch(
        version=version,
        url=f"{plural}/{doc['metadata']['name']}",
        namespace=namespace,
        data=json.dumps(doc),
        headers={"Content-Type": "application/apply-patch+yaml"},
        params=params,
    )
    return response.status_code, response.text, response.headers.get("Warning", "")


@pytest.fixture(scope="module")
def empty_cluster() -> Iterator[pykube.HTTPClient]:
    """A fresh control plane (the KubeVirt and CDI CRDs the reconciler reads are installed at
    start) plus the Prometheus Operator's CRDs, and the namespace the example plans' VMs live
    in; nothing of ours."""
    with ControlPlane(log=lambda message: None) as plane:
        api = plane.api()
        for path in sorted(ensure_monitoring_crds().glob("*.yaml")):
            crd = yaml.safe_load(path.read_text())
            status, body, _ = server_side_apply(api, crd, dry_run=False)
            assert status in (200, 201), body
        deadline = time.monotonic() + 30
        while api.get(version="monitoring.coreos.com/v1", url="prometheusrules").status_code != 200:
            assert time.monotonic() < deadline, "the Prometheus Operator CRDs are not served"
            time.sleep(0.1)
        namespace = {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "mig-vm"}}
        assert server_side_apply(api, namespace, dry_run=False)[0] in (200, 201)
        yield api


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_every_overlay_passes_a_server_side_dry_run_from_an_empty_cluster(
    kustomize: Path, empty_cluster: pykube.HTTPClient, overlay: str
) -> None:
    docs = build(kustomize, overlay)
    kinds = {d["kind"] for d in docs}
    assert kinds <= set(PLURALS), f"a kind this test cannot send: {kinds - set(PLURALS)}"
    # kubectl's order: the namespace first (a dry run cannot create what the rest lands in)
    for doc in (d for d in docs if d["kind"] == "Namespace"):
        status, body, warning = server_side_apply(empty_cluster, doc, dry_run=False)
        assert status in (200, 201) and not warning, body
    for doc in docs:
        status, body, warning = server_side_apply(empty_cluster, doc, dry_run=True)
        where = f"{overlay}: {doc['kind']}/{doc['metadata']['name']}"
        assert status in (200, 201), f"{where}: HTTP {status}: {body}"
        assert not warning, f"{where}: {warning}"


# --------------------------------------------------------------------------------------------
# Plans from a ConfigMap
# --------------------------------------------------------------------------------------------


def mount_like_kubelet(data: dict[str, str], target: Path) -> None:
    """A configMap volume as the kubelet writes it: the keys are symlinks through ``..data``
    to a timestamped directory (hidden, like ``..data`` itself)."""
    stamped = target / "..2026_12_01_00_00_00.000000001"
    stamped.mkdir(parents=True)
    for key, value in data.items():
        (stamped / key).write_text(value)
    (target / "..data").symlink_to(stamped.name)
    for key in data:
        (target / key).symlink_to(f"..data/{key}")


def test_plans_from_a_configmap_are_read_where_the_cronjob_reads_them(
    kustomize: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    docs = build(kustomize, "plans-configmap")
    assert not {"StoragePlan", "VirtualMachineStorageMigrationPlan"} & {d["kind"] for d in docs}
    spec = pod_spec(workload(docs))
    (volume,) = [v for v in spec["volumes"] if "configMap" in v]
    plans = only(docs, "ConfigMap", name=volume["configMap"]["name"])
    (container,) = spec["containers"]
    (mount,) = [m for m in container["volumeMounts"] if m["name"] == volume["name"]]
    assert container["args"][:2] == ["apply", mount["mountPath"]], "apply reads the mount"
    assert not spec.get("initContainers"), "no git-sync"
    mount_like_kubelet(plans["data"], tmp_path / "plans")

    rc = main(["validate", str(tmp_path / "plans")])

    out, err = capsys.readouterr()
    assert rc == 0, err
    assert f"{len(plans['data'])} plan(s) valid." in out, out
