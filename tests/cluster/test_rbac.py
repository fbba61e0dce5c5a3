"""cronjob.yaml, proven: its RBAC created as written in a real API server, a TokenRequest token
of its ServiceAccount, and the CronJob container's command and args run as written.

- The container's command is the image's ENTRYPOINT (Containerfile) plus the CronJob's args,
  with the volumes' mount paths pointed at local directories: ``/plans`` at a checkout laid out
  the way git-sync leaves one (``current`` -> ``.worktrees/<sha>``), ``/tmp`` at a temp dir.
  Its env is the container's (the downward-API namespace resolved) plus ``KUBECONFIG`` with the
  ServiceAccount's token, in place of the in-cluster token mount. It moves a running VM live
  and a stopped one offline in the allowed namespace, recording the checkout's commit; a second
  run is in sync.
- The same token cannot read Secrets anywhere, nor act in a namespace outside the allow-list
  (RBAC refuses: the namespaced role is bound per namespace), nor touch Leases or ConfigMaps
  outside its own namespace; the reconciler refuses plans for such a namespace up front.
- `plan` works with the shipped roles in one namespace and across two, and fails with a hint
  without them. The CronJob and Deployment pass the API server's strict validation, and their
  pods the `restricted` Pod Security level the namespace enforces.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import secrets
import shlex
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, ClassVar
from urllib.parse import parse_qs, urlsplit

import pykube
import pytest
import requests
import yaml

from reconciler.cli.main import main
from reconciler.model.names import JOURNAL_ANNOTATION, KEPT_SOURCE_LABEL
from testenv import seed
from testenv.controlplane import ControlPlane
from testenv.flux import KUSTOMIZE_API, SOURCE_API
from testenv.simulator import Fault, FaultAction, Simulator
from tests.cluster.test_git_plans import create_stopped
from tests.cluster.test_plan import _merge, fedora, settle
from tests.support.flux import FluxEnv
from tests.support.gitrepo import PlansRepo, git_sync
from tests.support.kube import Eventually, annotation, condition, get_json, vmi_running
from tests.support.moves import Disk, vm_manifest

ROOT = Path(__file__).resolve().parents[2]
KV = "kubevirt.io/v1"

pytestmark = pytest.mark.usefixtures("sim")

KINDS = {
    "Namespace": ("v1", "namespaces", False),
    "ServiceAccount": ("v1", "serviceaccounts", True),
    "ClusterRole": ("rbac.authorization.k8s.io/v1", "clusterroles", False),
    "ClusterRoleBinding": ("rbac.authorization.k8s.io/v1", "clusterrolebindings", False),
    "Role": ("rbac.authorization.k8s.io/v1", "roles", True),
    "RoleBinding": ("rbac.authorization.k8s.io/v1", "rolebindings", True),
    "CronJob": ("batch/v1", "cronjobs", True),
    "Deployment": ("apps/v1", "deployments", True),
    "Pod": ("v1", "pods", True),
    "Secret": ("v1", "secrets", True),
}
RBAC = ("Namespace", "ServiceAccount", "ClusterRole", "ClusterRoleBinding", "Role", "RoleBinding")


@pytest.fixture(scope="module", autouse=True)
def cluster_objects(api: pykube.HTTPClient) -> None:
    seed.seed_cluster(api)


def documents(name: str = "cronjob.yaml") -> list[dict[str, Any]]:
    return [d for d in yaml.safe_load_all((ROOT / name).read_text()) if d]


def shipped(kind: str, name: str = "cronjob.yaml") -> dict[str, Any]:
    """The only document of ``kind`` in ``name``."""
    (found,) = [d for d in documents(name) if d["kind"] == kind]
    return found


def cronjob_pod() -> dict[str, Any]:
    spec: dict[str, Any] = shipped("CronJob")["spec"]["jobTemplate"]["spec"]["template"]["spec"]
    return spec


def send(
    api: pykube.HTTPClient, doc: dict[str, Any], *, dry_run: bool = False
) -> requests.Response:
    version, plural, namespaced = KINDS[doc["kind"]]
    kwargs: dict[str, Any] = {"version": version, "url": plural, "data": json.dumps(doc)}
    if namespaced:
        kwargs["namespace"] = doc["metadata"]["namespace"]
    if dry_run:
        kwargs["params"] = {"dryRun": "All", "fieldValidation": "Strict"}
    response: requests.Response = api.post(**kwargs)
    return response


def create(api: pykube.HTTPClient, doc: dict[str, Any]) -> None:
    """Create ``doc`` as written; one that exists already (an earlier test) is fine."""
    response = send(api, doc)
    if response.status_code != 409:
        api.raise_for_status(response)


def allowed_namespaces() -> list[str]:
    """VMSR_ALLOWED_NAMESPACES of the CronJob's reconciler container (from its ConfigMap)."""
    (container,) = cronjob_pod()["containers"]
    (source,) = container["envFrom"]
    (config,) = [d for d in documents() if d["kind"] == "ConfigMap"
                 and d["metadata"]["name"] == source["configMapRef"]["name"]]  # fmt: skip
    return [n.strip() for n in str(config["data"]["VMSR_ALLOWED_NAMESPACES"]).split(",")]


def install_rbac(api: pykube.HTTPClient, also: tuple[str, ...] = ()) -> str:
    """Create cronjob.yaml's RBAC as written (the namespaces its RoleBindings name included),
    plus a copy of its per-namespace RoleBinding in each of ``also`` (what a user does to allow
    one more namespace); return the ServiceAccount's namespace."""
    docs = [d for d in documents() if d["kind"] in RBAC]
    shipped_namespaces = {d["metadata"]["name"] for d in docs if d["kind"] == "Namespace"}
    for doc in docs:
        if doc["kind"] == "Namespace":
            create(api, doc)
    bound = {d["metadata"]["namespace"] for d in docs if d["kind"] == "RoleBinding"}
    for name in sorted(bound - shipped_namespaces):  # the allowed namespaces hold the VMs
        create(api, {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": name}})
    for doc in docs:
        if doc["kind"] != "Namespace":
            create(api, doc)
    per_namespace = next(
        d for d in docs if d["kind"] == "RoleBinding" and d["roleRef"]["kind"] == "ClusterRole"
    )
    for namespace in also:
        copy = json.loads(json.dumps(per_namespace))
        copy["metadata"]["namespace"] = namespace
        create(api, copy)
    return str(shipped("ServiceAccount")["metadata"]["namespace"])


def identity(control_plane: ControlPlane, namespace: str, sa: str, tmp_path: Path) -> Path:
    """A kubeconfig with a TokenRequest token of ServiceAccount ``namespace/sa``."""
    token = control_plane.service_account_token(namespace, sa)
    return control_plane.write_kubeconfig(tmp_path / f"{sa}.kubeconfig", token)


def shipped_identity(
    api: pykube.HTTPClient,
    control_plane: ControlPlane,
    tmp_path: Path,
    eventually: Eventually,
    also: tuple[str, ...] = (),
) -> Path:
    """A kubeconfig for cronjob.yaml's ServiceAccount, once its RBAC is in force (the
    authorizer sees new bindings through an informer: a moment after they were created)."""
    sa_namespace = install_rbac(api, also)
    kubeconfig = identity(control_plane, sa_namespace,
                          shipped("ServiceAccount")["metadata"]["name"], tmp_path)  # fmt: skip
    token = pykube.HTTPClient(pykube.KubeConfig.from_file(str(kubeconfig)))
    probes = [
        *[{"version": KV, "url": "virtualmachines", "namespace": ns}
          for ns in (*allowed_namespaces(), *also)],
        {"version": "storage.k8s.io/v1", "url": "storageclasses"},
        {"version": "coordination.k8s.io/v1", "url": "leases/vm-storage-reconciler",
         "namespace": sa_namespace},
    ]  # fmt: skip
    eventually(
        lambda: all(token.get(**p).status_code in (200, 404) for p in probes),
        timeout=10,
        what="the shipped RBAC in force",
    )
    return kubeconfig


def plan_text(namespace: str, *vms: str, name: str = "rbac") -> str:
    listed = "".join(f"\n    - name: {vm}" for vm in vms)
    return (
        f"apiVersion: vmstorage.dev/v1alpha1\nkind: StoragePlan\nmetadata: {{name: {name}}}\n"
        f"spec:\n  namespace: {namespace}\n  storageClass: ceph-rbd\n  allowStop: true\n"
        f"  virtualMachines:{listed}\n"
    )


# --------------------------------------------------------------------------------------------
# The CronJob's own command, as written
# --------------------------------------------------------------------------------------------


def entrypoint() -> list[str]:
    """The image's ENTRYPOINT (exec form) from the Containerfile."""
    text = (ROOT / "Containerfile").read_text()
    (line,) = re.findall(r"^ENTRYPOINT\s+(\[.*\])\s*$", text, re.MULTILINE)
    command: list[str] = json.loads(line)
    return command


class CronJobCommand:
    """The reconciler container of a CronJob, runnable here: mount paths -> local dirs, its
    ConfigMaps (envFrom) read from ``configmaps`` (name -> object), ``env`` overrides on top.
    By default the CronJob and ConfigMaps of cronjob.yaml."""

    def __init__(
        self,
        mounts: dict[str, Path],
        kubeconfig: Path,
        *,
        cronjob: dict[str, Any] | None = None,
        configmaps: dict[str, dict[str, Any]] | None = None,
        env: dict[str, str] | None = None,
    ) -> None:
        cronjob = cronjob or shipped("CronJob")
        pod = cronjob["spec"]["jobTemplate"]["spec"]["template"]["spec"]
        (self.container,) = pod["containers"]
        self.namespace = cronjob["metadata"]["namespace"]
        self.paths = {m["mountPath"]: mounts[m["name"]] for m in self.container["volumeMounts"]}
        self.kubeconfig = kubeconfig
        self.configmaps = configmaps or {
            d["metadata"]["name"]: d for d in documents() if d["kind"] == "ConfigMap"
        }
        self.overrides = env or {}

    def local(self, text: str) -> str:
        """``text`` with every mount path replaced by its local directory, in one pass (a
        local directory may itself contain a mount path: /tmp)."""
        mounts = "|".join(re.escape(m) for m in sorted(self.paths, key=len, reverse=True))
        pattern = rf"(?<![\w/])({mounts})(?=/|$)"
        return re.sub(pattern, lambda m: str(self.paths[m.group(1)]), text)

    def argv(self, *extra: str) -> list[str]:
        command = self.container.get("command") or entrypoint()
        executable = Path(sys.executable).parent / command[0]  # the console script, installed
        assert executable.exists(), f"{command[0]} is not installed in {executable.parent}"
        args = [self.local(a) for a in [*command[1:], *self.container.get("args", [])]]
        return [str(executable), *args, *extra]

    def env(self) -> dict[str, str]:
        env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "KUBECONFIG": str(self.kubeconfig)}
        for source in self.container.get("envFrom", []):
            config = self.configmaps[source["configMapRef"]["name"]]
            env.update({k: self.local(str(v)) for k, v in config.get("data", {}).items()})
        for item in self.container.get("env", []):
            if "value" in item:
                env[item["name"]] = self.local(str(item["value"]))
                continue
            field = item["valueFrom"]["fieldRef"]["fieldPath"]
            assert field == "metadata.namespace", f"downward API field {field} not simulated"
            env[item["name"]] = self.namespace
        return env | self.overrides

    def run(self, *extra: str) -> subprocess.CompletedProcess[str]:
        done = subprocess.run(
            self.argv(*extra),
            env=self.env(),
            cwd=ROOT,
            capture_output=True,
            text=True,
            timeout=180,
            check=False,
        )
        return done

    def __str__(self) -> str:
        return shlex.join(self.argv())


# --------------------------------------------------------------------------------------------
# The default overlay, synced by Flux, and its CronJob's command with the token of the
# ServiceAccount Flux created: a scheduled run with moves, a blocked VM and a shut window
# --------------------------------------------------------------------------------------------


def deploy_tree() -> dict[str, str]:
    """deploy/ as files (path -> text), as a plans-and-config repository would hold it."""
    return {
        str(path.relative_to(ROOT)): path.read_text()
        for path in sorted((ROOT / "deploy").rglob("*"))
        if path.is_file() and "__pycache__" not in path.parts
    }


def flux_install(
    api: pykube.HTTPClient, flux: FluxEnv, namespace: str, eventually: Eventually, plans_url: str
) -> dict[str, Any]:
    """Commit deploy/ to the local Git server, with the default overlay edited only where the
    README says (the plans repository in git-sync.env; the image with the Kustomization's
    `images`, as kustomize's `images:` would), and let kustomize-controller apply
    deploy/overlays/default; return the Ready Kustomization."""
    files = deploy_tree()
    env = "deploy/overlays/default/git-sync.env"
    files[env] = re.sub(r"^GITSYNC_REPO=.*$", f"GITSYNC_REPO={plans_url}", files[env], flags=re.M)
    repo = flux.git.create_repository(f"{namespace}-deploy")
    repo.commit(files, "vm-storage-reconciler deploy/")
    source = {
        "apiVersion": SOURCE_API,
        "kind": "GitRepository",
        "metadata": {"name": "vm-storage-reconciler", "namespace": namespace},
        "spec": {
            "url": repo.url,
            "interval": "10m",
            "timeout": "20s",
            "ref": {"branch": repo.branch},
        },
    }
    kustomization = {
        "apiVersion": KUSTOMIZE_API,
        "kind": "Kustomization",
        "metadata": {"name": "vm-storage-reconciler", "namespace": namespace},
        "spec": {
            "interval": "10m",
            "path": "./deploy/overlays/default",
            # prune off: the objects outlive this test (others in this module use them)
            "prune": False,
            "timeout": "60s",
            "sourceRef": {"kind": "GitRepository", "name": "vm-storage-reconciler"},
            "images": [
                {
                    "name": "ghcr.io/example/vm-storage-reconciler",
                    "newName": "registry.example.com/vm-storage-reconciler",
                    "newTag": "0.1.0",
                }
            ],
        },
    }
    for body, (version, plural) in (
        (source, (SOURCE_API, "gitrepositories")),
        (kustomization, (KUSTOMIZE_API, "kustomizations")),
    ):
        api.raise_for_status(
            api.post(version=version, namespace=namespace, url=plural, data=json.dumps(body))
        )

    def ready() -> dict[str, Any] | None:
        ks = get_json(api, KUSTOMIZE_API, namespace, "kustomizations/vm-storage-reconciler")
        status = ks.get("status") or {}
        applied = status.get("lastAppliedRevision", "")
        if condition(ks, "Ready").get("status") == "True" and repo.head() in applied:
            return ks
        return None

    ks: dict[str, Any] = eventually(ready, timeout=120, what="Flux applied deploy/overlays/default")
    return ks


def test_flux_installs_the_default_overlay_and_its_cronjob_runs_with_the_flux_made_account(
    api: pykube.HTTPClient,
    control_plane: ControlPlane,
    flux: FluxEnv,
    namespace: str,
    tmp_path: Path,
    eventually: Eventually,
) -> None:
    """The issue's "done when": from a cluster without any of it, Flux syncs the default
    overlay unedited but for the image and the plans source; the CronJob Flux created, run
    as written with a token of the ServiceAccount Flux created, moves one VM live and one
    offline, leaves a blocked VM and one outside its window, exits 0 and reports both; the
    next run is in sync and counts the blocked VM's Event up."""
    (allowed,) = allowed_namespaces()
    create(api, {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": allowed}})
    plans = PlansRepo(tmp_path / "plans-repo")
    flux_install(api, flux, namespace, eventually, plans.url)
    cronjob = get_json(api, "batch/v1", "vm-storage-reconciler", "cronjobs/vm-storage-reconciler")
    sa = get_json(api, "v1", "vm-storage-reconciler", "serviceaccounts/vm-storage-reconciler")
    assert sa["metadata"]["labels"]["kustomize.toolkit.fluxcd.io/name"] == "vm-storage-reconciler"
    pod = cronjob["spec"]["jobTemplate"]["spec"]["template"]["spec"]
    (reconciler,) = pod["containers"]
    assert reconciler["image"] == "registry.example.com/vm-storage-reconciler:0.1.0"
    (git_sync_container,) = pod["initContainers"]
    (git_env,) = git_sync_container["envFrom"]
    git = get_json(
        api, "v1", "vm-storage-reconciler", f"configmaps/{git_env['configMapRef']['name']}"
    )
    assert git["data"]["GITSYNC_REPO"] == plans.url
    kubeconfig = flux_identity(api, control_plane, tmp_path, eventually)
    configmaps = {
        name: get_json(api, "v1", "vm-storage-reconciler", f"configmaps/{name}")
        for name in (s["configMapRef"]["name"] for s in reconciler["envFrom"])
    }
    (tmp_path / "tmp").mkdir()
    command = CronJobCommand(
        {"plans": tmp_path / "plans", "tmp": tmp_path / "tmp"},
        kubeconfig,
        cronjob=cronjob,
        configmaps=configmaps,
    )
    scenario = Scheduled(api, eventually, allowed, plans, tmp_path / "plans")

    result = scenario.run(command)

    assert not result.problems, "\n".join(result.problems)
    assert not [r for r in result.requests if r.status == 403 and r.key not in FALLBACKS]


def flux_identity(
    api: pykube.HTTPClient, control_plane: ControlPlane, tmp_path: Path, eventually: Eventually
) -> Path:
    """A kubeconfig with a token of the ServiceAccount Flux created, once the RBAC Flux
    applied is in force."""
    kubeconfig = identity(control_plane, "vm-storage-reconciler", "vm-storage-reconciler", tmp_path)
    token = pykube.HTTPClient(pykube.KubeConfig.from_file(str(kubeconfig)))
    eventually(
        lambda: (
            token.get(
                version=KV, url="virtualmachines", namespace=allowed_namespaces()[0]
            ).status_code
            == 200
        ),
        timeout=10,
        what="the RBAC Flux applied in force",
    )
    return kubeconfig


def status_of(response: Any) -> int:
    return int(response.status_code)


def test_the_shipped_token_cannot_read_secrets_nor_act_outside_the_allow_list(
    api: pykube.HTTPClient,
    control_plane: ControlPlane,
    namespace: str,
    tmp_path: Path,
    eventually: Eventually,
) -> None:
    (allowed,) = allowed_namespaces()
    kubeconfig = shipped_identity(api, control_plane, tmp_path, eventually)
    own = shipped("ServiceAccount")["metadata"]["namespace"]
    for where in (allowed, own, namespace):
        create(
            api,
            {
                "apiVersion": "v1",
                "kind": "Secret",
                "metadata": {"name": "db-password", "namespace": where},
                "stringData": {"password": "hunter2"},
            },
        )
    seed.create(api, fedora(namespace, "vm-outside", running=False))
    token = pykube.HTTPClient(pykube.KubeConfig.from_file(str(kubeconfig)))

    for where in (allowed, own, namespace):
        assert status_of(token.get(url="secrets/db-password", namespace=where)) == 403, where
        assert status_of(token.get(url="secrets", namespace=where)) == 403, where
    assert status_of(token.get(url="secrets")) == 403, "no Secrets across the cluster"
    assert status_of(token.get(url=f"namespaces/{allowed}/secrets/db-password")) == 403

    # a namespace outside the allow-list: nothing, by RBAC
    vm_url = "virtualmachines/vm-outside"
    assert status_of(token.get(version=KV, url=vm_url, namespace=namespace)) == 403
    assert status_of(token.get(version=KV, url="virtualmachines", namespace=namespace)) == 403
    patch = json.dumps([{"op": "add", "path": "/metadata/annotations", "value": {"x": "y"}}])
    response = token.patch(
        version=KV,
        url=vm_url,
        namespace=namespace,
        data=patch,
        headers={"Content-Type": "application/json-patch+json"},
    )
    assert status_of(response) == 403
    storage = {"resources": {"requests": {"storage": "1Gi"}}}
    dv = {
        "apiVersion": "cdi.kubevirt.io/v1beta1",
        "kind": "DataVolume",
        "metadata": {"name": "x", "namespace": namespace},
        "spec": {"source": {"blank": {}}, "storage": storage},
    }
    created = token.post(
        version="cdi.kubevirt.io/v1beta1",
        url="datavolumes",
        namespace=namespace,
        data=json.dumps(dv),
    )
    assert status_of(created) == 403
    assert status_of(token.get(url="pods", namespace=namespace)) == 403
    assert status_of(token.get(url="pods")) == 403, "pods: per allowed namespace only"
    # its own state only in its own namespace
    for kind, version in (("leases", "coordination.k8s.io/v1"), ("configmaps", "v1")):
        assert status_of(token.get(version=version, url=kind, namespace=own)) in (200, 403)
        assert status_of(token.get(version=version, url=kind, namespace=allowed)) == 403, kind
    # but it can do its work where allowed
    assert status_of(token.get(version=KV, url="virtualmachines", namespace=allowed)) == 200

    # the reconciler itself: the allow-list refuses the plan before any request (exit 2); with
    # the allow-list overridden on the command line, RBAC refuses (exit 6)
    (tmp_path / "plans").mkdir()
    (tmp_path / "plans" / "p.yaml").write_text(plan_text(namespace, "vm-outside"))
    (tmp_path / "tmp").mkdir()
    command = CronJobCommand({"plans": tmp_path / "plans", "tmp": tmp_path / "tmp"}, kubeconfig)
    argv = command.argv()
    argv[argv.index(command.local("/plans/current"))] = str(tmp_path / "plans")
    refused = subprocess.run(
        argv, env=command.env(), capture_output=True, text=True, timeout=120, check=False
    )
    assert refused.returncode == 2, refused.stderr
    assert "namespace-not-allowed" in refused.stderr or "not allowed" in refused.stderr
    forced = subprocess.run(
        [*argv, "--allow-namespace", namespace],
        env=command.env(),
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert forced.returncode == 6, forced.stderr
    assert "forbidden" in forced.stderr and "(HTTP 403)" in forced.stderr
    vm = get_json(api, KV, namespace, vm_url)
    assert not (vm["metadata"].get("annotations") or {}), "nothing was written"


def test_plan_works_with_exactly_the_shipped_rbac(
    api: pykube.HTTPClient,
    control_plane: ControlPlane,
    namespace: str,
    tmp_path: Path,
    eventually: Eventually,
    capsys: pytest.CaptureFixture[str],
) -> None:
    settle(api, eventually, fedora(namespace, "vm-fedora"))
    kubeconfig = shipped_identity(api, control_plane, tmp_path, eventually, also=(namespace,))
    path = tmp_path / "plan.yaml"
    path.write_text(plan_text(namespace, "vm-fedora"))

    rc = main(
        ["plan", str(path), "--kubeconfig", str(kubeconfig), "-o", "json", "--server-dry-run"]
    )

    out, err = capsys.readouterr()
    assert rc == 1, err
    report = json.loads(out)
    assert report["vms"][0]["action"] == "MoveLive", report["vms"][0]["reasons"]
    assert report["serverDryRunErrors"] == []


def test_plan_across_two_allowed_namespaces_lists_each_one(
    api: pykube.HTTPClient,
    control_plane: ControlPlane,
    namespace: str,
    tmp_path: Path,
    eventually: Eventually,
    capsys: pytest.CaptureFixture[str],
) -> None:
    other = control_plane.create_namespace("rbac-second")
    for where in (namespace, other):
        seed.create(api, fedora(where, "vm-fedora", running=False))
    kubeconfig = shipped_identity(api, control_plane, tmp_path, eventually, also=(namespace, other))
    (tmp_path / "a.yaml").write_text(plan_text(namespace, "vm-fedora", name="a"))
    (tmp_path / "b.yaml").write_text(plan_text(other, "vm-fedora", name="b"))

    rc = main(
        [
            "plan",
            str(tmp_path / "a.yaml"),
            str(tmp_path / "b.yaml"),
            "--kubeconfig",
            str(kubeconfig),
            "-o",
            "json",
        ]
    )

    out, err = capsys.readouterr()
    assert rc == 1, err
    assert sorted(v["namespace"] for v in json.loads(out)["vms"]) == sorted([namespace, other])


def test_plan_without_permissions_is_a_cluster_error_with_a_hint(
    control_plane: ControlPlane,
    namespace: str,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    kubeconfig = identity(control_plane, namespace, "nobody", tmp_path)
    path = tmp_path / "plan.yaml"
    path.write_text(plan_text(namespace, "vm-fedora"))
    rc = main(["plan", str(path), "--kubeconfig", str(kubeconfig)])
    _, err = capsys.readouterr()
    assert rc == 6
    assert "forbidden" in err and "(HTTP 403)" in err
    assert "RBAC in cronjob.yaml" in err
    assert "Traceback" not in err


# --------------------------------------------------------------------------------------------
# The manifests, as the API server sees them
# --------------------------------------------------------------------------------------------


def pod_from(template_spec: dict[str, Any], namespace: str) -> dict[str, Any]:
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"generateName": "vmsr-check-", "namespace": namespace},
        "spec": template_spec,
    }


def test_the_cronjob_and_deployment_pass_strict_validation_and_restricted_pod_security(
    api: pykube.HTTPClient, control_plane: ControlPlane
) -> None:
    install_rbac(api)
    namespace = shipped("Namespace")
    assert namespace["metadata"]["labels"]["pod-security.kubernetes.io/enforce"] == "restricted"
    cronjob, deployment = shipped("CronJob"), shipped("Deployment", "loop-deployment.yaml")
    for doc in (cronjob, deployment):
        probe = json.loads(json.dumps(doc))  # a name of its own: Flux may have made the real one
        probe["metadata"]["name"] = f"{doc['metadata']['name']}-check"
        response = send(api, probe, dry_run=True)
        assert response.status_code == 201, f"{doc['kind']}: {response.text}"
        assert not response.headers.get("Warning"), response.headers.get("Warning")

    pods = [
        cronjob["spec"]["jobTemplate"]["spec"]["template"]["spec"],
        deployment["spec"]["template"]["spec"],
    ]
    for spec in pods:
        response = send(api, pod_from(spec, namespace["metadata"]["name"]), dry_run=True)
        assert response.status_code == 201, response.text
        assert not response.headers.get("Warning"), response.headers.get("Warning")

    # the check can fail: the same pod without its security settings is refused
    loose = json.loads(json.dumps(pods[0]))
    loose.pop("securityContext")
    for container in [*loose["containers"], *loose["initContainers"]]:
        container.pop("securityContext")
    response = send(api, pod_from(loose, namespace["metadata"]["name"]), dry_run=True)
    assert response.status_code == 403 and "PodSecurity" in response.text, response.text


# --------------------------------------------------------------------------------------------
# The RBAC, proven both ways: every request the runs send is granted (no 403 but the designed
# fallbacks), every granted verb is sent by some run, and removing any one granted verb makes
# the run that uses it fail, on a 403
# --------------------------------------------------------------------------------------------

RBAC_FILE = ROOT / "deploy/base/rbac.yaml"
REQUEST = re.compile(r"^debug: reconciler\.kube\.client: ([A-Z]+) (\S+) -> (\d+) ", re.M)
METHODS = {"POST": "create", "PUT": "update", "PATCH": "patch"}
# A 403 the reconciler expects and works around, so no rule grants it: (group, resource, verb).
FALLBACKS: dict[tuple[str, str, str], str] = {
    ("", "namespaces", "list"): "which namespaces exist (a plan for a missing one): without "
    "it the reconciler asks per allowed namespace instead",
}


@dataclass(frozen=True)
class Grant:
    """One verb a role of deploy/base/rbac.yaml grants on one resource."""

    role: str  # Kind/name
    group: str
    resource: str  # a subresource as "datavolumes/source"
    verb: str
    names: tuple[str, ...] = ()

    @property
    def key(self) -> tuple[str, str, str]:
        return (self.group, self.resource, self.verb)

    def __str__(self) -> str:
        names = f" {'/'.join(self.names)}" if self.names else ""
        return f"{self.role.split('/')[1]}:{self.verb}:{self.resource}{names}"


def grants() -> list[Grant]:
    found = []
    for doc in yaml.safe_load_all(RBAC_FILE.read_text()):
        if not doc or doc["kind"] not in ("ClusterRole", "Role"):
            continue
        role = f"{doc['kind']}/{doc['metadata']['name']}"
        for rule in doc["rules"]:
            for group in rule["apiGroups"]:
                for resource in rule["resources"]:
                    for verb in rule["verbs"]:
                        names = tuple(rule.get("resourceNames", ()))
                        found.append(Grant(role, group, resource, verb, names))
    return found


@dataclass(frozen=True)
class Request:
    """One request a run sent, as RBAC sees it (from its --debug log)."""

    verb: str
    group: str
    resource: str
    namespace: str | None
    name: str | None
    status: int

    @property
    def key(self) -> tuple[str, str, str]:
        return (self.group, self.resource, self.verb)

    def allowed_by(self, grant: Grant) -> bool:
        return grant.key == self.key and (not grant.names or self.name in grant.names)


def requests_in(log: str) -> list[Request]:
    found = []
    for method, url, status in REQUEST.findall(log):
        parts = urlsplit(url)
        path = parts.path.strip("/").split("/")
        group, rest = ("", path[2:]) if path[0] == "api" else (path[1], path[3:])
        namespace = None
        if rest[0] == "namespaces" and len(rest) > 2:
            namespace, rest = rest[1], rest[2:]
        resource = rest[0] + (f"/{rest[2]}" if len(rest) > 2 else "")
        name = rest[1] if len(rest) > 1 else None
        watch = parse_qs(parts.query).get("watch", [""])[0] in ("1", "true")
        if method == "GET":
            verb = "watch" if watch else "get" if name else "list"
        elif method == "DELETE":
            verb = "delete" if name else "deletecollection"
        else:
            verb = METHODS[method]
        found.append(Request(verb, group, resource, namespace, name, int(status)))
    return found


@dataclass
class Result:
    """What a scenario saw: what went wrong (empty: all as it should), and every request."""

    problems: list[str]
    requests: list[Request]
    stderr: str

    def forbidden(self) -> list[Request]:
        return [r for r in self.requests if r.status == 403 and r.key not in FALLBACKS]


def expect(problems: list[str], ok: bool, what: str) -> None:
    if not ok:
        problems.append(what)


def plan_doc(namespace: str, name: str, vms: list[str], **spec: Any) -> str:
    body = {
        "apiVersion": "vmstorage.dev/v1alpha1",
        "kind": "StoragePlan",
        "metadata": {"name": name},
        "spec": {
            "namespace": namespace,
            "storageClass": "ceph-rbd",
            "virtualMachines": [{"name": vm} for vm in vms],
            **spec,
        },
    }
    return yaml.safe_dump(body, sort_keys=False)


def events_of(api: pykube.HTTPClient, namespace: str, vm: str) -> list[dict[str, Any]]:
    items = get_json(api, "events.k8s.io/v1", namespace, "events").get("items", [])
    return [e for e in items if e["regarding"]["name"] == vm]


class Scenario:
    """VMs in ``namespace``, plans for them committed to ``repo`` and checked out where the
    CronJob reads them (git-sync's layout), the CronJob's command run (with --debug: every
    request and its answer), and what must be true after."""

    name = ""

    def __init__(
        self,
        api: pykube.HTTPClient,
        eventually: Eventually,
        namespace: str,
        repo: PlansRepo,
        checkout: Path,
    ) -> None:
        self.api = api
        self.eventually = eventually
        self.ns = namespace
        self.repo = repo
        self.checkout = checkout
        self.suffix = secrets.token_hex(3)

    def vm(self, role: str) -> str:
        return f"{role}-{self.suffix}"

    def run(self, command: CronJobCommand) -> Result:
        self.prepare()
        git_sync(self.repo, self.checkout)
        reset_run_state(self.api, command.namespace)
        runs = [command.run("--debug") for _ in range(self.runs)]
        problems = self.check(runs)
        log = "".join(r.stderr for r in runs)
        for index, done in enumerate(runs):
            plain = [ln for ln in done.stderr.splitlines() if not ln.startswith("debug: ")]
            expect(
                problems,
                not [ln for ln in plain if "warning" in ln.lower()],
                f"run {index + 1} warned: {plain}",
            )
        return Result(problems, requests_in(log), log)

    runs = 1

    def prepare(self) -> None:
        raise NotImplementedError

    def check(self, runs: list[subprocess.CompletedProcess[str]]) -> list[str]:
        raise NotImplementedError

    def report(self, done: subprocess.CompletedProcess[str]) -> dict[str, Any]:
        try:
            report: dict[str, Any] = json.loads(done.stdout)
        except ValueError:
            return {}
        return report


def reset_run_state(api: pykube.HTTPClient, namespace: str) -> None:
    """No Lease and no status ConfigMap yet, so a run creates both (then reads and updates)."""
    for version, url in (
        ("coordination.k8s.io/v1", "leases/vm-storage-reconciler"),
        ("v1", "configmaps/vm-storage-reconciler-status"),
    ):
        api.delete(version=version, namespace=namespace, url=url)


class Scheduled(Scenario):
    """The scheduled run the issue asks for: a running VM moved live and a stopped one
    offline; a VM blocked (a shareable disk, no allowStop); one outside its window. Exit 0,
    reported; the next run is in sync and counts the blocked VM's Event up."""

    name = "scheduled"
    runs = 2

    def prepare(self) -> None:
        live, offline = self.vm("live"), self.vm("offline")
        blocked, later = self.vm("blocked"), self.vm("later")
        settle(self.api, self.eventually, fedora(self.ns, live))
        create_stopped(self.api, self.eventually, self.ns, offline)
        vm = fedora(self.ns, blocked)
        vm["spec"]["template"]["spec"]["domain"]["devices"]["disks"][0]["shareable"] = True
        settle(self.api, self.eventually, vm)
        create_stopped(self.api, self.eventually, self.ns, later)
        shut = (datetime.now(UTC) + timedelta(hours=12)).strftime("%H:%M")
        self.repo.commit(
            {
                "move.yaml": plan_doc(self.ns, "move", [live, offline], allowStop=True),
                "blocked.yaml": plan_doc(self.ns, "blocked", [blocked]),
                "later.yaml": plan_doc(
                    self.ns,
                    "later",
                    [later],
                    allowStop=True,
                    window={"start": shut, "duration": "1h", "timeZone": "UTC"},
                ),
            }
        )

    def check(self, runs: list[subprocess.CompletedProcess[str]]) -> list[str]:
        first, second = runs
        problems: list[str] = []
        live, offline = self.vm("live"), self.vm("offline")
        blocked, later = self.vm("blocked"), self.vm("later")
        expect(problems, first.returncode == 0, f"first run: exit {first.returncode}")
        report = self.report(first)
        flows = {o["name"]: (o["flow"], o["result"]) for o in report.get("outcomes", [])}
        expect(
            problems,
            flows == {live: ("live", "Succeeded"), offline: ("offline", "Succeeded")},
            f"outcomes {flows}",
        )
        expect(
            problems,
            [v["name"] for v in report.get("blocked", [])] == [blocked],
            f"blocked {report.get('blocked')}",
        )
        expect(
            problems,
            report.get("outsideWindow") == [f"{self.ns}/{later}"],
            f"outsideWindow {report.get('outsideWindow')}",
        )
        moves = {o["name"]: o.get("migrationId") for o in report.get("outcomes", [])}
        for vm in (live, offline):
            reasons = {e["reason"] for e in events_of(self.api, self.ns, vm)}
            expect(problems, {"MoveStarted", "MoveSucceeded"} <= reasons, f"{vm}: {reasons}")
            mark = kept_mark(self.api, self.ns, "datavolumes", f"{vm}-disk")
            expect(problems, mark == moves.get(vm), f"{vm}-disk not marked as a kept source")
        status = get_json(
            self.api, "v1", "vm-storage-reconciler", "configmaps/vm-storage-reconciler-status"
        )
        data = status.get("data") or {}
        expect(problems, data.get("result") == "Succeeded", f"status result {data.get('result')}")
        stored = json.loads(data.get("report.json") or "{}").get("report") or {}
        expect(
            problems,
            [v["name"] for v in stored.get("blocked", [])] == [blocked]
            and stored.get("outsideWindow") == [f"{self.ns}/{later}"],
            "the status ConfigMap reports the blocked VM and the shut window",
        )
        expect(problems, second.returncode == 0, f"second run: exit {second.returncode}")
        expect(problems, self.report(second).get("outcomes") == [], "second run: not in sync")
        (event,) = [
            e for e in events_of(self.api, self.ns, blocked) if e["reason"] == "MoveBlocked"
        ] or [{}]
        count = (event.get("series") or {}).get("count", 1)
        expect(problems, count >= 2, f"the MoveBlocked Event was not counted up ({count})")
        return problems


class Retention(Scenario):
    """Sources deleted and kept. retention: Delete: a running VM moved live (its source
    DataVolume deleted once the old launcher pod let go of it) and a running one with a plain
    PVC moved offline (stopped: the wait for its launcher pod to go is a real one; then the PVC
    deleted). retention: Keep: a stopped VM with a plain PVC moved offline, the PVC kept and
    marked as a kept source (for `sources` and `prune`)."""

    name = "retention"

    def pvc_vm(self, name: str, *, running: bool) -> None:
        disk = Disk("root", "pvc", f"{name}-root")
        pvc = disk.standalone(self.ns)
        assert pvc is not None
        send_as_admin(self.api, pvc)
        settle(self.api, self.eventually, vm_manifest(self.ns, name, [disk]))
        self.eventually(lambda: vmi_running(self.api, self.ns, name), what="VM runs")
        if not running:
            _merge(
                self.api,
                KV,
                self.ns,
                f"virtualmachines/{name}",
                {"spec": {"runStrategy": "Halted"}},
            )
            self.eventually(lambda: not vmi_running(self.api, self.ns, name), what="stopped")

    def prepare(self) -> None:
        running, stopped, kept = self.vm("keep-not"), self.vm("pvc"), self.vm("kept")
        settle(self.api, self.eventually, fedora(self.ns, running))
        self.pvc_vm(stopped, running=True)
        self.pvc_vm(kept, running=False)
        self.repo.commit(
            {
                "live.yaml": plan_doc(self.ns, "live", [running], retention="Delete"),
                "offline.yaml": plan_doc(
                    self.ns, "offline", [stopped], mode="Offline", allowStop=True,
                    retention="Delete",
                ),
                "keep.yaml": plan_doc(self.ns, "keep", [kept], allowStop=True),
            }
        )  # fmt: skip

    def check(self, runs: list[subprocess.CompletedProcess[str]]) -> list[str]:
        (done,) = runs
        problems: list[str] = []
        running, stopped, kept = self.vm("keep-not"), self.vm("pvc"), self.vm("kept")
        expect(problems, done.returncode == 0, f"exit {done.returncode}")
        outcomes = self.report(done).get("outcomes", [])
        results = {o["name"]: o["result"] for o in outcomes}
        expect(problems, results == dict.fromkeys((running, stopped, kept), "Succeeded"),
               f"{results}")  # fmt: skip
        moves = {o["name"]: o.get("migrationId") for o in outcomes}
        expect(problems, kept_mark(self.api, self.ns, "persistentvolumeclaims",
                                   f"{kept}-root") == moves.get(kept),
               f"{kept}-root is not marked as a kept source of its move")  # fmt: skip
        gone = [
            ("cdi.kubevirt.io/v1beta1", f"datavolumes/{running}-disk"),
            ("v1", f"persistentvolumeclaims/{stopped}-root"),
        ]
        for version, url in gone:
            obj = get_json(self.api, version, self.ns, url)
            expect(problems, not obj or "deletionTimestamp" in obj["metadata"], f"{url} kept")
        return problems


class RolledBack(Scenario):
    """An offline move whose clone fails for good: rolled back (the VM on its source, the
    destination DataVolume deleted), exit 3."""

    name = "rollback"

    def __init__(self, *args: Any, sim: Simulator, admin: Path, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.sim = sim
        self.admin = admin

    def prepare(self) -> None:
        vm = self.vm("fails")
        create_stopped(self.api, self.eventually, self.ns, vm)
        plans = plan_doc(self.ns, "move", [vm], allowStop=True)
        self.repo.commit({"move.yaml": plans})
        self.target = destination(self.admin, plans)  # its clone fails for good
        self.sim.faults.add("datavolumes", self.ns, self.target, Fault(FaultAction.FATAL))

    def check(self, runs: list[subprocess.CompletedProcess[str]]) -> list[str]:
        (done,) = runs
        self.sim.faults.clear("datavolumes", self.ns, self.target)
        problems: list[str] = []
        vm = self.vm("fails")
        expect(problems, done.returncode == 3, f"exit {done.returncode}")
        results = [o["result"] for o in self.report(done).get("outcomes", [])]
        expect(problems, results == ["RolledBack"], f"outcomes {results}")
        ours = [
            d["metadata"]["name"]
            for d in get_json(self.api, "cdi.kubevirt.io/v1beta1", self.ns, "datavolumes")["items"]
            if "vmstorage.dev/migration" in (d["metadata"].get("labels") or {})
            and "deletionTimestamp" not in d["metadata"]
        ]
        expect(problems, not ours, f"destinations left: {ours}")
        vm_now = get_json(self.api, KV, self.ns, f"virtualmachines/{vm}")
        expect(problems, annotation(vm_now, JOURNAL_ANNOTATION) is None, "journal left")
        return problems


def kept_mark(api: pykube.HTTPClient, namespace: str, plural: str, name: str) -> str | None:
    """The move id a kept source is marked with (its ``vmstorage.dev/kept-source`` label)."""
    version = "cdi.kubevirt.io/v1beta1" if plural == "datavolumes" else "v1"
    obj = get_json(api, version, namespace, f"{plural}/{name}")
    return (obj.get("metadata", {}).get("labels") or {}).get(KEPT_SOURCE_LABEL)


def send_as_admin(api: pykube.HTTPClient, obj: dict[str, Any]) -> None:
    version = obj["apiVersion"]
    plural = {"PersistentVolumeClaim": "persistentvolumeclaims", "DataVolume": "datavolumes"}[
        obj["kind"]
    ]
    api.raise_for_status(
        api.post(
            version=version,
            namespace=obj["metadata"]["namespace"],
            url=plural,
            data=json.dumps(obj),
        )
    )


def destination(admin: Path, plans: str) -> str:
    """The one destination DataVolume `plan` (as admin) names for ``plans``."""
    with tempfile.TemporaryDirectory() as tmp:
        (Path(tmp) / "p.yaml").write_text(plans)
        done = subprocess.run(
            [
                sys.executable,
                "-m",
                "reconciler",
                "plan",
                tmp,
                "-o",
                "json",
                "--kubeconfig",
                str(admin),
            ],
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
    (vm,) = json.loads(done.stdout)["vms"]
    (target,) = [v["target"] for v in vm["volumes"] if v.get("target")]
    return str(target)


# CDI authorizes a clone by asking whether the DataVolume's creator may create
# `datavolumes/source` in the source namespace (its clone webhook's SubjectAccessReview); the
# local environment has no CDI webhook, so this test stands one in with a
# ValidatingAdmissionPolicy that asks the API server's authorizer the same question.
CLONE_AUTHORIZATION = "vmsr-test-cdi-clone-authorization"


@pytest.fixture(scope="module", autouse=True)
def cdi_clone_authorization(api: pykube.HTTPClient, control_plane: ControlPlane) -> Iterator[None]:
    source_ns = "object.spec.source.pvc.?namespace.orValue(object.metadata.namespace)"
    policy = {
        "apiVersion": "admissionregistration.k8s.io/v1",
        "kind": "ValidatingAdmissionPolicy",
        "metadata": {"name": CLONE_AUTHORIZATION},
        "spec": {
            "failurePolicy": "Fail",
            "matchConstraints": {
                "resourceRules": [
                    {
                        "apiGroups": ["cdi.kubevirt.io"],
                        "apiVersions": ["*"],
                        "operations": ["CREATE"],
                        "resources": ["datavolumes"],
                    }
                ]
            },
            "matchConditions": [
                {
                    "name": "pvc-clone",
                    "expression": "has(object.spec.source) && has(object.spec.source.pvc)",
                }
            ],
            "variables": [{"name": "source", "expression": source_ns}],
            "validations": [
                {
                    "expression": "authorizer.group('cdi.kubevirt.io').resource('datavolumes')"
                    ".subresource('source').namespace(variables.source)"
                    ".check('create').allowed()",
                    "messageExpression": "'User: ' + request.userInfo.username + "
                    "' has insufficient permissions in clone source namespace ' + variables.source",
                    "reason": "Forbidden",
                }
            ],
        },
    }
    binding = {
        "apiVersion": "admissionregistration.k8s.io/v1",
        "kind": "ValidatingAdmissionPolicyBinding",
        "metadata": {"name": CLONE_AUTHORIZATION},
        "spec": {"policyName": CLONE_AUTHORIZATION, "validationActions": ["Deny"]},
    }
    version = "admissionregistration.k8s.io/v1"
    for body, plural in (
        (policy, "validatingadmissionpolicies"),
        (binding, "validatingadmissionpolicybindings"),
    ):
        response = api.post(version=version, url=plural, data=json.dumps(body))
        if response.status_code != 409:
            api.raise_for_status(response)
    # in force once a clone by an identity that may create DataVolumes, but not clone, is refused
    namespace = control_plane.create_namespace("clone-auth")
    token = identity(control_plane, namespace, "nobody", Path(tempfile.mkdtemp()))
    rbac = "rbac.authorization.k8s.io/v1"
    role: dict[str, Any] = {"apiVersion": rbac, "kind": "Role",
            "metadata": {"name": "dv-creator", "namespace": namespace},
            "rules": [{"apiGroups": ["cdi.kubevirt.io"], "resources": ["datavolumes"],
                       "verbs": ["create"]}]}  # fmt: skip
    binding_: dict[str, Any] = {"apiVersion": rbac, "kind": "RoleBinding",
                "metadata": {"name": "dv-creator", "namespace": namespace},
                "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role",
                            "name": "dv-creator"},
                "subjects": [{"kind": "ServiceAccount", "name": "nobody",
                              "namespace": namespace}]}  # fmt: skip
    for body, plural in ((role, "roles"), (binding_, "rolebindings")):
        api.raise_for_status(
            api.post(version=rbac, url=plural, namespace=namespace, data=json.dumps(body))
        )
    nobody = pykube.HTTPClient(pykube.KubeConfig.from_file(str(token)))
    dv = {
        "apiVersion": "cdi.kubevirt.io/v1beta1",
        "kind": "DataVolume",
        "metadata": {"name": "probe", "namespace": namespace},
        "spec": {
            "source": {"pvc": {"namespace": namespace, "name": "x"}},
            "storage": {"resources": {"requests": {"storage": "1Gi"}}},
        },
    }
    admin_dry_run = {"dryRun": "All"}
    deadline = time.monotonic() + 30
    while (
        "insufficient permissions"
        not in nobody.post(
            version="cdi.kubevirt.io/v1beta1",
            url="datavolumes",
            namespace=namespace,
            data=json.dumps(dv),
            params=admin_dry_run,
        ).text
    ):
        assert time.monotonic() < deadline, "the clone authorization policy is not enforced"
        time.sleep(0.2)
    yield
    for plural in ("validatingadmissionpolicybindings", "validatingadmissionpolicies"):
        api.delete(version=version, url=f"{plural}/{CLONE_AUTHORIZATION}")


class Rig:
    """The shipped RBAC (cronjob.yaml's roles) with a token of its ServiceAccount, and each
    scenario in a namespace of its own, allowed by a copy of the per-namespace RoleBinding
    (VMSR_ALLOWED_NAMESPACES overridden to it): the RBAC under test is the roles'."""

    SCENARIOS: ClassVar[dict[str, type[Scenario]]] = {
        s.name: s for s in (Scheduled, Retention, RolledBack)
    }

    def __init__(
        self,
        api: pykube.HTTPClient,
        control_plane: ControlPlane,
        sim: Simulator,
        eventually: Eventually,
        tmp_path: Path,
    ) -> None:
        self.api = api
        self.control_plane = control_plane
        self.sim = sim
        self.eventually = eventually
        self.tmp_path = tmp_path
        self.sa_namespace = install_rbac(api)
        self.kubeconfig = identity(
            control_plane, self.sa_namespace, "vm-storage-reconciler", tmp_path
        )
        self.token = pykube.HTTPClient(pykube.KubeConfig.from_file(str(self.kubeconfig)))

    def namespace(self) -> str:
        name = self.control_plane.create_namespace("rbac-proof")
        per_namespace = next(
            d
            for d in documents()
            if d["kind"] == "RoleBinding" and d["roleRef"]["kind"] == "ClusterRole"
        )
        copy = json.loads(json.dumps(per_namespace))
        copy["metadata"]["namespace"] = name
        create(self.api, copy)
        self.eventually(
            lambda: self.may("list", "kubevirt.io", "virtualmachines", name),
            timeout=10,
            what="the RoleBinding in force",
        )
        return name

    def may(
        self, verb: str, group: str, resource: str, namespace: str | None, name: str = ""
    ) -> bool:
        """SelfSubjectAccessReview as the ServiceAccount."""
        resource, _, sub = resource.partition("/")
        attributes = {
            "verb": verb,
            "group": group,
            "resource": resource,
            "subresource": sub,
            "name": name,
            **({"namespace": namespace} if namespace else {}),
        }
        review = {
            "apiVersion": "authorization.k8s.io/v1",
            "kind": "SelfSubjectAccessReview",
            "spec": {"resourceAttributes": attributes},
        }
        response = self.token.post(
            version="authorization.k8s.io/v1",
            url="selfsubjectaccessreviews",
            data=json.dumps(review),
        )
        self.token.raise_for_status(response)
        return bool(response.json()["status"].get("allowed"))

    def scope(self, grant: Grant, namespace: str) -> str | None:
        if grant.role == "ClusterRole/vm-storage-reconciler":
            return namespace
        if grant.role.startswith("Role/"):
            return self.sa_namespace
        return None

    @contextlib.contextmanager
    def without(self, grant: Grant, namespace: str) -> Iterator[None]:
        """The role with ``grant``'s verb taken out of its rule (an empty rule dropped), in
        force; put back afterwards."""
        kind, name = grant.role.split("/")
        url = f"{'clusterroles' if kind == 'ClusterRole' else 'roles'}/{name}"
        where = self.sa_namespace if kind == "Role" else None
        version = "rbac.authorization.k8s.io/v1"
        original = self.api.get(version=version, url=url, namespace=where).json()
        trimmed = json.loads(json.dumps(original))
        rules = []
        for rule in trimmed["rules"]:
            if (
                grant.group in rule["apiGroups"]
                and grant.resource in rule["resources"]
                and tuple(rule.get("resourceNames", ())) == grant.names
            ):
                rule["verbs"] = [v for v in rule["verbs"] if v != grant.verb]
            if rule["verbs"]:
                rules.append(rule)
        trimmed["rules"] = rules
        self._put(version, url, where, trimmed)
        args = (
            grant.verb,
            grant.group,
            grant.resource,
            self.scope(grant, namespace),
            grant.names[0] if grant.names else "",
        )
        self.eventually(lambda: not self.may(*args), timeout=10, what=f"{grant} taken away")
        try:
            yield
        finally:
            current = self.api.get(version=version, url=url, namespace=where).json()
            original["metadata"]["resourceVersion"] = current["metadata"]["resourceVersion"]
            self._put(version, url, where, original)
            self.eventually(lambda: self.may(*args), timeout=10, what=f"{grant} given back")

    def _put(self, version: str, url: str, namespace: str | None, body: dict[str, Any]) -> None:
        response = self.api.put(
            version=version, url=url, namespace=namespace, data=json.dumps(body)
        )
        self.api.raise_for_status(response)

    def run(self, scenario: str, namespace: str | None = None) -> Result:
        namespace = namespace or self.namespace()
        work = Path(tempfile.mkdtemp(dir=self.tmp_path))
        (work / "tmp").mkdir()
        kwargs: dict[str, Any] = {}
        if scenario == "rollback":
            kwargs = {"sim": self.sim, "admin": self.control_plane.kubeconfig}
        repo = PlansRepo(work / "repo")
        kind = self.SCENARIOS[scenario]
        case = kind(self.api, self.eventually, namespace, repo, work / "plans", **kwargs)
        command = CronJobCommand(
            {"plans": work / "plans", "tmp": work / "tmp"},
            self.kubeconfig,
            env={"VMSR_ALLOWED_NAMESPACES": namespace},
        )
        return case.run(command)


@pytest.fixture
def rig(
    api: pykube.HTTPClient,
    control_plane: ControlPlane,
    sim: Simulator,
    eventually: Eventually,
    tmp_path: Path,
) -> Rig:
    return Rig(api, control_plane, sim, eventually, tmp_path)


# Which scenario each granted verb matters to: the scenario that must fail without it.
KUBEVIRT = "kubevirt.io"
USED_BY: dict[tuple[str, str, str], str] = {
    **{(KUBEVIRT, "virtualmachines", v): "scheduled" for v in ("get", "list", "watch", "patch")},
    **{(KUBEVIRT, "virtualmachineinstances", v): "scheduled" for v in ("get", "list", "watch")},
    **{(KUBEVIRT, "virtualmachineinstancemigrations", v): "scheduled" for v in ("list", "watch")},
    ("", "persistentvolumeclaims", "get"): "retention",
    ("", "persistentvolumeclaims", "patch"): "retention",
    ("", "persistentvolumeclaims", "list"): "scheduled",
    ("", "persistentvolumeclaims", "watch"): "scheduled",
    ("", "persistentvolumeclaims", "delete"): "retention",
    **{("cdi.kubevirt.io", "datavolumes", v): "scheduled"
       for v in ("get", "list", "watch", "create", "patch")},
    ("cdi.kubevirt.io", "datavolumes", "delete"): "rollback",
    ("cdi.kubevirt.io", "datavolumes/source", "create"): "scheduled",
    ("", "pods", "list"): "retention",
    ("", "pods", "watch"): "retention",
    **{("events.k8s.io", "events", v): "scheduled" for v in ("create", "get", "update")},
    ("storage.k8s.io", "storageclasses", "list"): "scheduled",
    ("storage.k8s.io", "storageclasses", "watch"): "scheduled",
    ("cdi.kubevirt.io", "storageprofiles", "list"): "scheduled",
    ("kubevirt.io", "kubevirts", "list"): "scheduled",
    **{("coordination.k8s.io", "leases", v): "scheduled" for v in ("create", "get", "update")},
    **{("", "configmaps", v): "scheduled" for v in ("create", "get", "update")},
}  # fmt: skip
# Granted for a check the API server makes on our behalf, not for a request we send: CDI's
# clone authorization asks whether the creator of a clone DataVolume may create
# `datavolumes/source` in the source namespace (here: cdi_clone_authorization).
ON_BEHALF = {
    ("cdi.kubevirt.io", "datavolumes/source", "create"): (
        "cdi.kubevirt.io",
        "datavolumes",
        "create",
    )
}


def test_the_runs_use_exactly_the_shipped_rbac(rig: Rig) -> None:
    """Each scenario, run with the shipped roles as the CronJob runs it: all as it should be,
    no request refused (but the designed fallbacks), every request allowed by a granted verb;
    and every granted verb sent by the scenario USED_BY names (or, for a check made on our
    behalf, the request that triggers it)."""
    results = {name: rig.run(name) for name in Rig.SCENARIOS}
    every = grants()
    assert {g.key for g in every} == set(USED_BY), "every granted verb has its scenario"
    for name, result in results.items():
        assert not result.problems, f"{name}: " + "\n".join(result.problems)
        assert not result.forbidden(), f"{name}: refused {result.forbidden()}"
        for request in result.requests:
            if request.key not in FALLBACKS:
                assert any(request.allowed_by(g) for g in every), f"{name}: {request} ungranted"
    for grant in every:
        sent = results[USED_BY[grant.key]].requests
        trigger = ON_BEHALF.get(grant.key)
        if trigger:
            assert any(r.key == trigger for r in sent), f"{grant}: nothing triggers the check"
            continue
        assert any(r.allowed_by(grant) for r in sent), (
            f"{grant} is granted but {USED_BY[grant.key]} never sends it: unused, or used "
            "elsewhere (USED_BY)"
        )


ATTEMPTS = 10
"""Runs per removed verb, at most. A refused request fails a run at once; a refused WATCH only
when the wait it serves does not hold right after its LIST (then the watch is opened, refused,
and the run fails): verify, for one, often finds a finished move verified on arrival (the
destination PVCs Bound, the VM's status already written) and needs no watch. So a verb counts
as needed when one of these runs, each in a fresh namespace, fails on it: most fail the first
run; the PVC watch (verify's) within a few (one to four seen)."""


@pytest.mark.parametrize("grant", grants(), ids=str)
def test_removing_any_granted_verb_makes_a_run_fail(rig: Rig, grant: Grant) -> None:
    """The role with this one verb taken out: the scenario that uses it fails, on a 403."""
    namespace = rig.namespace()
    results = []
    with rig.without(grant, namespace):
        for attempt in range(ATTEMPTS):
            results.append(rig.run(USED_BY[grant.key], namespace if attempt == 0 else None))
            if results[-1].problems:
                break
    result = results[-1]
    assert result.problems, (
        f"nothing went wrong without {grant} in {len(results)} runs: it is not needed"
    )
    refused = [r for r in result.requests if r.status == 403 and r.key not in FALLBACKS]
    assert refused or "(HTTP 403)" in result.stderr, (
        f"without {grant} the run failed, but not on a 403: {result.problems}"
    )
    expected = ON_BEHALF.get(grant.key, grant.key)  # CDI's check refuses the clone's create
    assert expected in {r.key for r in refused}, f"refused were {refused}, not {grant}"


def test_a_missing_lease_namespace_is_bad_input_with_the_fix(
    api: pykube.HTTPClient,
    control_plane: ControlPlane,
    namespace: str,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """`apply` from a laptop, following the README, on a cluster without the Lease's namespace:
    exit 2 with what to do, not a bare 404 (exit 6)."""
    seed.create(api, fedora(namespace, "vm-fedora", running=False))
    path = tmp_path / "plan.yaml"
    path.write_text(plan_text(namespace, "vm-fedora"))
    missing = f"vmsr-missing-{secrets.token_hex(3)}"

    rc = main(["apply", str(path), "--kubeconfig", str(control_plane.kubeconfig),
               "--lease-namespace", missing])  # fmt: skip

    _, err = capsys.readouterr()
    assert rc == 2, err
    assert f"the Lease's namespace '{missing}' does not exist" in err, err
    assert f"kubectl create namespace {missing}" in err and "--lease-namespace" in err
    assert "nothing was changed" in err
    vm = get_json(api, KV, namespace, "virtualmachines/vm-fedora")
    assert annotation(vm, JOURNAL_ANNOTATION) is None
