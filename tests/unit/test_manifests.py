"""What cronjob.yaml, loop-deployment.yaml and the Containerfile promise, read from the files.

Both manifests are built from deploy/ by kustomize (`make manifests`; tests/deploy checks they
do not drift). The API server's own view (strict validation, Pod Security, the RBAC in force
running the CronJob's command) is tests/cluster/test_rbac.py and tests/deploy; these are the
promises no server checks: one run at a time, the Job's verdict on each exit code as the
exit-code table says, a deadline above the longest move, the checkout where the reconciler
reads it, least privilege, the image's user and entrypoint, the loop's probes.
"""

from __future__ import annotations

import json
import re
import tomllib
import urllib.error
import urllib.request
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
import yaml

from reconciler import __version__ as reconciler_version
from reconciler.apply.begin import default_timeout
from reconciler.apply.context import Settings
from reconciler.cli.apply import exit_code
from reconciler.cli.main import main
from reconciler.cli.serve import Health, serve
from reconciler.cli.version import version
from reconciler.kube import resources
from reconciler.model.errors import EXIT_CODE_TABLE, ClusterError, ExitCode, JobAction
from reconciler.model.journal import ROLLBACK, Flow
from reconciler.model.outcome import INTERRUPTED, ROLLED_BACK, ApplyReport, Outcome
from reconciler.model.verdict import Action, VMVerdict
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


def failure_policy() -> tuple[set[int], list[dict[str, Any]]]:
    """The CronJob's FailJob exit codes, and its other rules."""
    rules = job_spec()["podFailurePolicy"]["rules"]
    fail = [r["onExitCodes"] for r in rules if r["action"] == "FailJob" and "onExitCodes" in r]
    assert all(codes["containerName"] == "reconciler" for codes in fail)
    assert all(codes["operator"] == "In" for codes in fail)
    others = [r for r in rules if r["action"] != "FailJob" or "onExitCodes" not in r]
    return {code for codes in fail for code in codes["values"]}, others


def test_the_job_follows_the_exit_code_table() -> None:
    """The podFailurePolicy is the table's (model.errors.EXIT_CODE_TABLE): FailJob exactly for
    the codes no retry changes, a retry for the rest, success for 0; and the CronJob runs
    without --detailed-exitcode, so the codes that only flag returns never reach it."""
    final, others = failure_policy()
    table = {int(row.code): row for row in EXIT_CODE_TABLE}
    assert set(table) == {int(code) for code in ExitCode}, "one row per exit code"
    assert final == {c for c, row in table.items() if row.job is JobAction.FAIL}
    assert {c for c, row in table.items() if row.job is JobAction.RETRY} == {1, 6}
    assert table[0].job is JobAction.SUCCEED
    not_scheduled = {c for c, row in table.items() if not row.scheduled}
    assert not_scheduled == {ExitCode.OUTSIDE_WINDOW} and not final & not_scheduled
    assert all(row.job is not None for row in table.values() if row.scheduled)
    args = reconciler(pods()["cronjob"])["args"]
    assert args[0] == "apply" and "--detailed-exitcode" not in args
    assert job_spec()["backoffLimit"] == 1, "RETRY: one more try, then the next schedule"
    (disruptions,) = others
    assert disruptions["action"] == "Ignore"
    # status "True": required by the podFailurePolicy schema of Kubernetes 1.27-1.29
    assert disruptions["onPodConditions"] == [{"type": "DisruptionTarget", "status": "True"}]


def test_a_scheduled_run_that_did_what_it_could_exits_0() -> None:
    """Blocked VMs, shut windows, --max-vms leftovers: 0 by default, the detail with
    --detailed-exitcode; a failed VM and an interrupted run fail either way."""
    blocked = VMVerdict("ns", "vm1", "p", Action.BLOCKED, ())
    states = [
        ApplyReport(verdicts=(blocked,)),
        ApplyReport(outside_window=("ns/vm1",)),
        ApplyReport(pending=("ns/vm1",)),
    ]
    for report in states:
        assert exit_code(report) is ExitCode.OK, report
    states.append(ApplyReport(verdicts=(blocked,), outside_window=("ns/vm2",)))
    detailed = [exit_code(r, detailed=True) for r in states]
    # the last: a shut window and a blocked VM, so not the windows alone
    assert detailed == [
        ExitCode.PENDING,
        ExitCode.OUTSIDE_WINDOW,
        ExitCode.PENDING,
        ExitCode.PENDING,
    ]
    assert exit_code(states[-1]) is ExitCode.OK
    failed = Outcome(migration_id="m", plan="p", flow=Flow.LIVE, result=ROLLED_BACK)
    stopped = Outcome(migration_id="m", plan="p", flow=Flow.LIVE, result=INTERRUPTED)
    for detail in (False, True):
        assert exit_code(ApplyReport(outcomes=(failed,)), detailed=detail) is ExitCode.VM_FAILED
        assert exit_code(ApplyReport(outcomes=(stopped,)), detailed=detail) is ExitCode.PENDING


def test_the_exit_code_table_of_the_docs_is_the_model_s() -> None:
    """docs/exit-codes.md lists every code with the table's own words (one table), and the
    README's one-line summary names every code in order."""
    page = (ROOT / "docs" / "exit-codes.md").read_text()
    table = page[page.index("| code |") :]
    rows = re.findall(r"^\| (\d+) \| (.+) \| ([a-z ]+) \|$", table[: table.index("\n\n")], re.M)
    job: dict[JobAction | None, str] = {JobAction.SUCCEED: "succeeds", None: "never returned"}
    job |= {JobAction.RETRY: "retried once", JobAction.FAIL: "fails at once"}
    assert {int(code): (meaning, action) for code, meaning, action in rows} == {
        int(row.code): (row.meaning, job[row.job]) for row in EXIT_CODE_TABLE
    }
    readme = (ROOT / "README.md").read_text()
    summary = readme[readme.index("### Exit codes") :].split("\n\n")[1]
    assert [int(c) for c in re.findall(r"(?:: |, )(\d) ", " ".join(summary.split()))] == [
        int(row.code) for row in EXIT_CODE_TABLE
    ]


def test_the_version_is_one(capsys: pytest.CaptureFixture[str]) -> None:
    """--version, every -o json document and the image label say pyproject.toml's version."""
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    assert version() == reconciler_version == project["version"]
    with pytest.raises(SystemExit) as exited:
        main(["--version"])
    assert exited.value.code == 0
    assert capsys.readouterr().out == f"vm-storage-reconciler {project['version']}\n"
    assert main(["validate", str(ROOT / "plans/seed"), "-o", "json"]) == 0
    document = json.loads(capsys.readouterr().out)
    assert list(document)[:3] == ["apiVersion", "kind", "reconcilerVersion"]
    assert document["reconcilerVersion"] == project["version"]


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
    assert namespaced[("", "pods")] == {"list", "watch"}, "pods: read only"
    assert cluster == {
        ("storage.k8s.io", "storageclasses"): {"list", "watch"},
        ("cdi.kubevirt.io", "storageprofiles"): {"list"},
        ("kubevirt.io", "kubevirts"): {"list"},
    }, "cluster-wide: reads only"


def test_the_namespaced_role_is_bound_per_allowed_namespace_only() -> None:
    bindings = [
        d for d in docs("cronjob.yaml") if d["kind"] in ("RoleBinding", "ClusterRoleBinding")
    ]
    to_namespaced = [b for b in bindings if b["roleRef"]["name"] == "vm-storage-reconciler"]
    assert all(b["kind"] == "RoleBinding" for b in to_namespaced), "never across the cluster"
    allowed = set(allowed_namespaces())
    assert {b["metadata"]["namespace"] for b in to_namespaced} == allowed
    sa = one("cronjob.yaml", "ServiceAccount")["metadata"]
    for binding in bindings:
        assert binding["subjects"] == [
            {"kind": "ServiceAccount", "name": sa["name"], "namespace": sa["namespace"]}
        ]
    state = one("cronjob.yaml", "RoleBinding", name="vm-storage-reconciler-state")
    assert state["metadata"]["namespace"] == sa["namespace"], "Lease and status: its own only"


def allowed_namespaces(file: str = "cronjob.yaml") -> list[str]:
    """VMSR_ALLOWED_NAMESPACES as the reconciler container gets it (envFrom its ConfigMap)."""
    pod = pods()["cronjob" if file == "cronjob.yaml" else "deployment"]
    (source,) = reconciler(pod)["envFrom"]
    config = one(file, "ConfigMap", name=source["configMapRef"]["name"])
    return [n.strip() for n in config["data"]["VMSR_ALLOWED_NAMESPACES"].split(",")]


def containerfile() -> str:
    return (ROOT / "Containerfile").read_text()


def test_the_image_runs_the_cli_as_the_pods_user() -> None:
    text = containerfile()
    assert re.search(r"^ARG BASE=\S+$", text, re.MULTILINE), "the base is a build argument"
    assert re.findall(r"^FROM \$\{BASE\}", text, re.MULTILINE), "built on it"
    assert "--require-hashes" in text and "deploy/image/requirements.lock" in text, "pinned"
    for label in ("source", "version", "revision"):
        assert f"org.opencontainers.image.{label}=" in text, label
    (user,) = re.findall(r"^USER\s+(\d+)(?::(\d+))?\s*$", text, re.MULTILINE)
    for pod in pods().values():
        assert int(user[0]) == pod["securityContext"]["runAsUser"]
        assert int(user[1]) == pod["securityContext"]["runAsGroup"]
    (entry,) = re.findall(r'^ENTRYPOINT \["([^"]+)"\]\s*$', text, re.MULTILINE)
    scripts = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["scripts"]
    assert entry in scripts
    image = reconciler(pods()["cronjob"])["image"]
    assert reconciler(pods()["deployment"])["image"] == image


def test_the_image_lock_pins_every_runtime_dependency() -> None:
    """requirements.lock names every dependency in pyproject.toml, each with a hash."""
    lock = (ROOT / "deploy/image/requirements.lock").read_text()
    pinned = dict(
        re.findall(r"^([a-z0-9-]+)==(\S+) \\\n    --hash=sha256:[0-9a-f]{64}$", lock, re.M)
    )
    assert len(pinned) == lock.count("==")
    for requirement in tomllib.loads((ROOT / "pyproject.toml").read_text())["project"][
        "dependencies"
    ]:
        name = re.split(r"[<>=!~\[ ]", requirement, maxsplit=1)[0].lower().replace("_", "-")
        assert name in pinned, f"{name} is not in deploy/image/requirements.lock: run lock.py"


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
    assert allowed_namespaces("loop-deployment.yaml") == allowed_namespaces()


def test_the_loop_serves_metrics_and_probes_on_its_named_port() -> None:
    """--metrics-port is the container's port "metrics"; the probes ask /healthz and /readyz
    there, the Service targets it and publishes the pod also while it is not ready; and what
    the CLI serves on that port answers those paths."""
    container = reconciler(pods()["deployment"])
    args = container["args"]
    port = int(args[args.index("--metrics-port") + 1])
    (named,) = container["ports"]
    assert (named["name"], named["containerPort"]) == ("metrics", port)
    probes = {k: container[k]["httpGet"] for k in ("livenessProbe", "readinessProbe")}
    assert probes == {
        "livenessProbe": {"path": "/healthz", "port": "metrics"},
        "readinessProbe": {"path": "/readyz", "port": "metrics"},
    }
    service = one("loop-deployment.yaml", "Service")
    assert [p["targetPort"] for p in service["spec"]["ports"]] == ["metrics"]
    assert service["spec"]["publishNotReadyAddresses"] is True
    labels = one("loop-deployment.yaml", "Deployment")["spec"]["template"]["metadata"]["labels"]
    assert service["spec"]["selector"].items() <= labels.items()

    health = Health()
    served = serve(0, health, "127.0.0.1")
    try:
        url = f"http://127.0.0.1:{served.server.server_port}"
        assert answer(f"{url}/healthz") == 200
        assert answer(f"{url}/readyz") == 503, "not ready before a run reached the API server"
        health.heard(None)
        assert answer(f"{url}/readyz") == 200
        health.heard(ClusterError("", "connection refused"))
        assert answer(f"{url}/readyz") == 503
        assert answer(f"{url}/metrics") == 200
        health.stopped()
        assert answer(f"{url}/healthz") == 503
    finally:
        served.close()


def answer(url: str) -> int:
    try:
        with urllib.request.urlopen(url, timeout=5) as response:
            return int(response.status)
    except urllib.error.HTTPError as exc:
        return int(exc.code)


def flag(container: dict[str, Any], name: str) -> str:
    (value,) = [a.partition("=")[2] for a in container["args"] if a.startswith(f"--{name}=")]
    return str(value)
