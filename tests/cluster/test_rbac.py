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

import json
import os
import re
import secrets
import shlex
import subprocess
import sys
from pathlib import Path
from typing import Any

import pykube
import pytest
import requests
import yaml

from reconciler.cli.main import main
from reconciler.model.names import LAST_MIGRATION_ANNOTATION
from testenv import seed
from testenv.controlplane import ControlPlane
from tests.cluster.test_git_plans import create_stopped
from tests.cluster.test_plan import fedora, settle
from tests.support.gitrepo import PlansRepo, git_sync
from tests.support.kube import Eventually, annotation, get_json

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
    """The reconciler container of the CronJob, runnable here: mount paths -> local dirs."""

    def __init__(self, mounts: dict[str, Path], kubeconfig: Path) -> None:
        pod = cronjob_pod()
        (self.container,) = pod["containers"]
        self.namespace = shipped("CronJob")["metadata"]["namespace"]
        self.paths = {m["mountPath"]: mounts[m["name"]] for m in self.container["volumeMounts"]}
        self.kubeconfig = kubeconfig

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
        for source in self.container.get("envFrom", []):  # the ConfigMaps of the same file
            name = source["configMapRef"]["name"]
            (config,) = [d for d in documents() if d["kind"] == "ConfigMap"
                         and d["metadata"]["name"] == name]  # fmt: skip
            env.update({k: self.local(str(v)) for k, v in config.get("data", {}).items()})
        for item in self.container.get("env", []):
            if "value" in item:
                env[item["name"]] = self.local(str(item["value"]))
                continue
            field = item["valueFrom"]["fieldRef"]["fieldPath"]
            assert field == "metadata.namespace", f"downward API field {field} not simulated"
            env[item["name"]] = self.namespace
        return env

    def run(self, *extra: str) -> subprocess.CompletedProcess[str]:
        done = subprocess.run(self.argv(*extra), env=self.env(), cwd=ROOT, capture_output=True,
                              text=True, timeout=180, check=False)  # fmt: skip
        return done

    def __str__(self) -> str:
        return shlex.join(self.argv())


def test_the_cronjob_command_applies_with_exactly_the_shipped_rbac(
    api: pykube.HTTPClient, control_plane: ControlPlane, tmp_path: Path, eventually: Eventually
) -> None:
    (namespace,) = allowed_namespaces()
    kubeconfig = shipped_identity(api, control_plane, tmp_path, eventually)
    suffix = secrets.token_hex(3)
    live, offline = f"rbac-live-{suffix}", f"rbac-offline-{suffix}"
    settle(api, eventually, fedora(namespace, live))
    create_stopped(api, eventually, namespace, offline)
    repo = PlansRepo(tmp_path / "plans-repo")
    sha = repo.commit({"vms.yaml": plan_text(namespace, live, offline)})
    git_sync(repo, tmp_path / "plans")
    (tmp_path / "tmp").mkdir()
    command = CronJobCommand({"plans": tmp_path / "plans", "tmp": tmp_path / "tmp"}, kubeconfig)

    done = command.run()

    assert done.returncode == 0, f"{command}\n{done.stderr[-3000:]}"
    report = json.loads(done.stdout)
    flows = {o["name"]: (o["flow"], o["result"], o["commit"]) for o in report["outcomes"]}
    assert flows == {live: ("live", "Succeeded", sha), offline: ("offline", "Succeeded", sha)}
    assert report["commit"] == sha, "the git-sync checkout's HEAD"
    for vm in (live, offline):
        last = json.loads(annotation(get_json(api, KV, namespace, f"virtualmachines/{vm}"),
                                     LAST_MIGRATION_ANNOTATION) or "{}")  # fmt: skip
        assert (last["result"], last["commit"]) == ("Succeeded", sha)
    lease = get_json(api, "coordination.k8s.io/v1", command.namespace,
                     "leases/vm-storage-reconciler")  # fmt: skip
    assert lease and lease["spec"].get("holderIdentity", "") == "", "taken and released"
    # the publisher's writes, with the same token: Events on each VM, the status ConfigMap
    events = get_json(api, "events.k8s.io/v1", namespace, "events")["items"]
    for vm in (live, offline):
        reasons = {e["reason"] for e in events if e["regarding"]["name"] == vm}
        assert {"MoveStarted", "MoveSucceeded"} <= reasons, (vm, reasons, done.stderr[-2000:])
    status = get_json(api, "v1", command.namespace, "configmaps/vm-storage-reconciler-status")
    assert status and status["data"]["commit"] == sha, done.stderr[-2000:]
    assert "warning" not in done.stderr.lower(), done.stderr[-3000:]

    again = command.run()

    assert again.returncode == 0, again.stderr[-3000:]
    assert json.loads(again.stdout)["outcomes"] == [], "in sync"


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
        create(api, {"apiVersion": "v1", "kind": "Secret",
                     "metadata": {"name": "db-password", "namespace": where},
                     "stringData": {"password": "hunter2"}})  # fmt: skip
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
    response = token.patch(version=KV, url=vm_url, namespace=namespace, data=patch,
                           headers={"Content-Type": "application/json-patch+json"})  # fmt: skip
    assert status_of(response) == 403
    storage = {"resources": {"requests": {"storage": "1Gi"}}}
    dv = {"apiVersion": "cdi.kubevirt.io/v1beta1", "kind": "DataVolume",
          "metadata": {"name": "x", "namespace": namespace},
          "spec": {"source": {"blank": {}}, "storage": storage}}  # fmt: skip
    created = token.post(version="cdi.kubevirt.io/v1beta1", url="datavolumes", namespace=namespace,
                         data=json.dumps(dv))  # fmt: skip
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
    refused = subprocess.run(argv, env=command.env(), capture_output=True, text=True,
                             timeout=120, check=False)  # fmt: skip
    assert refused.returncode == 2, refused.stderr
    assert "namespace-not-allowed" in refused.stderr or "not allowed" in refused.stderr
    forced = subprocess.run([*argv, "--allow-namespace", namespace], env=command.env(),
                            capture_output=True, text=True, timeout=120, check=False)  # fmt: skip
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

    rc = main(["plan", str(path), "--kubeconfig", str(kubeconfig), "-o", "json",
               "--server-dry-run"])  # fmt: skip

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

    rc = main(["plan", str(tmp_path / "a.yaml"), str(tmp_path / "b.yaml"), "--kubeconfig",
               str(kubeconfig), "-o", "json"])  # fmt: skip

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
    return {"apiVersion": "v1", "kind": "Pod",
            "metadata": {"generateName": "vmsr-check-", "namespace": namespace},
            "spec": template_spec}  # fmt: skip


def test_the_cronjob_and_deployment_pass_strict_validation_and_restricted_pod_security(
    api: pykube.HTTPClient, control_plane: ControlPlane
) -> None:
    install_rbac(api)
    namespace = shipped("Namespace")
    assert namespace["metadata"]["labels"]["pod-security.kubernetes.io/enforce"] == "restricted"
    cronjob, deployment = shipped("CronJob"), shipped("Deployment", "loop-deployment.yaml")
    for doc in (cronjob, deployment):
        response = send(api, doc, dry_run=True)
        assert response.status_code == 201, f"{doc['kind']}: {response.text}"
        assert not response.headers.get("Warning"), response.headers.get("Warning")

    pods = [cronjob["spec"]["jobTemplate"]["spec"]["template"]["spec"],
            deployment["spec"]["template"]["spec"]]  # fmt: skip
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
