"""What cronjob.yaml, loop-deployment.yaml and the Containerfile promise, read from the files.

The API server's own view (strict validation, Pod Security, the RBAC in force running the
CronJob's command) is tests/cluster/test_rbac.py; these are the promises no server checks: one
run at a time, no retry of what a retry cannot fix, a deadline above the longest move, the
checkout where the reconciler reads it, least privilege, the image's user and entrypoint.
"""

from __future__ import annotations

import re
import tomllib
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
import yaml

from reconciler.apply.begin import default_timeout
from reconciler.apply.context import Settings
from reconciler.kube import resources
from reconciler.model.errors import ExitCode
from reconciler.model.journal import ROLLBACK
from reconciler.plans.load import load_plans

ROOT = Path(__file__).resolve().parents[2]
GIB = 1 << 30


def docs(name: str) -> list[dict[str, Any]]:
    return [d for d in yaml.safe_load_all((ROOT / name).read_text()) if d]


def one(file: str, kind: str, **meta: str) -> dict[str, Any]:
    (found,) = [
        d
        for d in docs(file)
        if d["kind"] == kind and all(d["metadata"].get(k) == v for k, v in meta.items())
    ]
    return found


def cronjob() -> dict[str, Any]:
    return one("cronjob.yaml", "CronJob")


def job_spec() -> dict[str, Any]:
    spec: dict[str, Any] = cronjob()["spec"]["jobTemplate"]["spec"]
    return spec


def pods() -> dict[str, dict[str, Any]]:
    return {
        "cronjob": job_spec()["template"]["spec"],
        "deployment": one("loop-deployment.yaml", "Deployment")["spec"]["template"]["spec"],
    }


def reconciler(pod: dict[str, Any]) -> dict[str, Any]:
    (container,) = [c for c in pod["containers"] if c["name"] == "reconciler"]
    return dict(container)


def test_one_run_at_a_time_and_a_missed_run_is_skipped() -> None:
    spec = cronjob()["spec"]
    assert spec["concurrencyPolicy"] == "Forbid"
    assert 0 < spec["startingDeadlineSeconds"] <= 3600
    assert job_spec()["backoffLimit"] <= 1
    assert job_spec()["template"]["spec"]["restartPolicy"] == "Never"


def test_what_a_retry_cannot_fix_fails_the_job() -> None:
    rules = job_spec()["podFailurePolicy"]["rules"]
    fail = [r["onExitCodes"] for r in rules if r["action"] == "FailJob" and "onExitCodes" in r]
    assert all(codes["containerName"] == "reconciler" for codes in fail)
    assert all(codes["operator"] == "In" for codes in fail)
    final = {code for codes in fail for code in codes["values"]}
    assert {ExitCode.BAD_INPUT, ExitCode.LOCKED, ExitCode.OUTSIDE_WINDOW} <= final
    assert ExitCode.CLUSTER_ERROR not in final and ExitCode.PENDING not in final, "worth a retry"
    disruptions = [r for r in rules if r["action"] == "Ignore"]
    assert disruptions and disruptions[0]["onPodConditions"] == [{"type": "DisruptionTarget"}]


def rollback_budget() -> timedelta:
    waits = max(len(steps) for steps in ROLLBACK.values())
    return timedelta(seconds=Settings().rollback_timeout * waits)


def test_the_deadline_is_above_the_longest_single_vm_move() -> None:
    deadline = timedelta(seconds=job_spec()["activeDeadlineSeconds"])
    plans = load_plans([ROOT / "plans"])
    longest = max(p.timeout for p in plans if p.timeout is not None)
    assert deadline > longest + rollback_budget(), "the example plans' timeouts"
    assert deadline > default_timeout(500 * GIB) + rollback_budget(), "a 500 GiB VM by default"
    grace = job_spec()["template"]["spec"]["terminationGracePeriodSeconds"]
    assert grace >= Settings().tick * 10, "time to reach a step boundary after SIGTERM"


def test_git_sync_checks_out_once_where_the_reconciler_reads() -> None:
    pod = pods()["cronjob"]
    (sync,) = pod["initContainers"]
    flags = dict(a.removeprefix("--").partition("=")[::2] for a in sync["args"])
    assert "one-time" in flags and flags["depth"] == "1"
    root, link = flags["root"], flags["link"]
    container = reconciler(pod)
    assert container["args"][:2] == ["apply", f"{root}/{link}"]
    sync_mount = next(m for m in sync["volumeMounts"] if m["mountPath"] == root)
    mount = next(m for m in container["volumeMounts"] if m["name"] == sync_mount["name"])
    assert mount["mountPath"] == root, "same path: the worktree's .git file names it"
    assert mount.get("readOnly") is True


@pytest.mark.parametrize("which", ["cronjob", "deployment"])
def test_every_container_is_restricted_and_bounded(which: str) -> None:
    pod = pods()[which]
    security = pod["securityContext"]
    assert security["runAsNonRoot"] is True and security["runAsUser"] > 0
    assert security["seccompProfile"] == {"type": "RuntimeDefault"}
    for container in [*pod.get("initContainers", []), *pod["containers"]]:
        context = container["securityContext"]
        assert context["allowPrivilegeEscalation"] is False, container["name"]
        assert context["readOnlyRootFilesystem"] is True, container["name"]
        assert context["capabilities"] == {"drop": ["ALL"]}, container["name"]
        assert {"cpu", "memory"} <= set(container["resources"]["requests"]), container["name"]
        assert "memory" in container["resources"]["limits"], container["name"]
    assert pod["serviceAccountName"] == one("cronjob.yaml", "ServiceAccount")["metadata"]["name"]


def rbac_rules() -> dict[str, list[dict[str, Any]]]:
    found: dict[str, list[dict[str, Any]]] = {}
    for doc in docs("cronjob.yaml"):
        if doc["kind"] in ("ClusterRole", "Role"):
            found[f"{doc['kind']}/{doc['metadata']['name']}"] = doc["rules"]
    return found


def granted(rules: list[dict[str, Any]]) -> dict[tuple[str, str], set[str]]:
    """(apiGroup, resource) -> verbs."""
    out: dict[tuple[str, str], set[str]] = {}
    for rule in rules:
        for group in rule["apiGroups"]:
            for resource in rule["resources"]:
                out.setdefault((group, resource), set()).update(rule["verbs"])
    return out


def group_of(resource: resources.Resource) -> str:
    return resource.api_version.rpartition("/")[0]


USED = [v for v in vars(resources).values() if isinstance(v, resources.Resource)]
STATE = {resources.LEASES, resources.CONFIG_MAPS}  # the run's own, in its own namespace


def test_no_wildcards_no_secrets_and_only_what_the_code_names() -> None:
    known = {(group_of(r), r.plural) for r in USED} | {("cdi.kubevirt.io", "datavolumes/source")}
    for role, rules in rbac_rules().items():
        for rule in rules:
            for field in ("apiGroups", "resources", "verbs"):
                assert "*" not in rule[field], (role, rule)
            assert "secrets" not in rule["resources"], role
        extra = set(granted(rules)) - known
        assert not extra, f"{role} grants what reconciler/kube/resources.py never names: {extra}"
    verbs = {v for rules in rbac_rules().values() for r in rules for v in r["verbs"]}
    assert verbs <= {"get", "list", "watch", "create", "update", "patch", "delete"}


def test_every_resource_the_code_names_is_granted_in_the_right_scope() -> None:
    roles = rbac_rules()
    namespaced = granted(roles["ClusterRole/vm-storage-reconciler"])
    cluster = granted(roles["ClusterRole/vm-storage-reconciler-cluster"])
    state = granted(roles["Role/vm-storage-reconciler-state"])
    for resource in USED:
        key = (group_of(resource), resource.plural)
        if resource in STATE:
            assert key in state and key not in namespaced, resource.kind
        elif not resource.namespaced or resource is resources.KUBEVIRTS:
            assert key in cluster and key not in namespaced, resource.kind
        else:
            assert key in namespaced, resource.kind
    assert namespaced[("", "pods")] == {"get", "list", "watch"}, "pods: read only"
    assert cluster == {
        ("storage.k8s.io", "storageclasses"): {"list", "watch"},
        ("cdi.kubevirt.io", "storageprofiles"): {"list", "watch"},
        ("kubevirt.io", "kubevirts"): {"list"},
    }, "cluster-wide: reads only"


def test_the_namespaced_role_is_bound_per_allowed_namespace_only() -> None:
    bindings = [
        d for d in docs("cronjob.yaml") if d["kind"] in ("RoleBinding", "ClusterRoleBinding")
    ]
    to_namespaced = [b for b in bindings if b["roleRef"]["name"] == "vm-storage-reconciler"]
    assert all(b["kind"] == "RoleBinding" for b in to_namespaced), "never across the cluster"
    env = {e["name"]: e.get("value") for e in reconciler(pods()["cronjob"])["env"]}
    allowed = {n.strip() for n in env["VMSR_ALLOWED_NAMESPACES"].split(",")}
    assert {b["metadata"]["namespace"] for b in to_namespaced} == allowed
    sa = one("cronjob.yaml", "ServiceAccount")["metadata"]
    for binding in bindings:
        assert binding["subjects"] == [
            {"kind": "ServiceAccount", "name": sa["name"], "namespace": sa["namespace"]}
        ]
    state = one("cronjob.yaml", "RoleBinding", name="vm-storage-reconciler-state")
    assert state["metadata"]["namespace"] == sa["namespace"], "Lease and status: its own only"


def containerfile() -> str:
    return (ROOT / "Containerfile").read_text()


def test_the_image_runs_the_cli_as_the_pods_user() -> None:
    text = containerfile()
    assert re.search(r"^FROM python:3\.11-slim\s*$", text, re.MULTILINE)
    assert re.search(r"pip install --no-cache-dir \.", text)
    assert "git" in re.search(r"apt-get install[^\n]*", text).group(0)  # type: ignore[union-attr]
    (user,) = re.findall(r"^USER\s+(\d+)(?::(\d+))?\s*$", text, re.MULTILINE)
    for pod in pods().values():
        assert int(user[0]) == pod["securityContext"]["runAsUser"]
        assert int(user[1]) == pod["securityContext"]["runAsGroup"]
    (entry,) = re.findall(r'^ENTRYPOINT \["([^"]+)"\]\s*$', text, re.MULTILINE)
    scripts = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["scripts"]
    assert entry in scripts
    image = reconciler(pods()["cronjob"])["image"]
    assert reconciler(pods()["deployment"])["image"] == image


def test_the_deployment_runs_loop_mode_beside_a_git_sync_sidecar() -> None:
    deployment = one("loop-deployment.yaml", "Deployment")
    assert deployment["spec"]["replicas"] == 1
    assert deployment["spec"]["strategy"] == {"type": "Recreate"}
    pod = pods()["deployment"]
    args = reconciler(pod)["args"]
    assert args[:2] == ["run", "--every"]
    first, sidecar = pod["initContainers"]
    assert "--one-time" in first["args"] and "restartPolicy" not in first
    assert sidecar["restartPolicy"] == "Always" and "--one-time" not in sidecar["args"]
    assert f"{flag(sidecar, 'root')}/{flag(sidecar, 'link')}" in args
    assert deployment["metadata"]["namespace"] == cronjob()["metadata"]["namespace"]


def flag(container: dict[str, Any], name: str) -> str:
    (value,) = [a.partition("=")[2] for a in container["args"] if a.startswith(f"--{name}=")]
    return str(value)
