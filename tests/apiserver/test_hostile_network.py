"""Hostile input from the network (issue 7, items 3-6): exec credential plugins, redirects,
odd bodies and refusals, against a small fake API server on 127.0.0.1 (a real socket server,
``tests/support/fakeapi.py``) and, where the real thing can say it, the local control plane.

Every case ends in a clear message and its documented exit code: 6 for the cluster and its
credentials, 2 for our own objects refused by a server dry run; never a traceback or 1.
"""

from __future__ import annotations

import json
import stat
import time
from pathlib import Path

import pytest
import yaml

from reconciler import engine
from reconciler.cli.main import main
from reconciler.kube import credentials
from reconciler.kube.connect import load_client
from reconciler.kube.resources import VIRTUAL_MACHINES
from reconciler.kube.watch import Observer, Stream
from reconciler.model.errors import ClusterError
from testenv.controlplane import ControlPlane
from tests.support.fakeapi import (
    NS,
    Answer,
    FakeAPI,
    cluster_lists,
    kubeconfig,
    list_path,
    plan_file,
    pvc,
    vm,
)

EXEC_V1 = "client.authentication.k8s.io/v1"


def run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    rc = main(list(argv))
    out, err = capsys.readouterr()
    return rc, out, err


def script(path: Path, body: str) -> Path:
    path.write_text("#!/bin/sh\n" + body)
    path.chmod(path.stat().st_mode | stat.S_IXUSR)
    return path


def exec_user(command: Path) -> dict[str, object]:
    return {"exec": {"apiVersion": EXEC_V1, "command": str(command)}}


def plan_args(tmp_path: Path, kube: Path, *extra: str) -> list[str]:
    return ["plan", str(plan_file(tmp_path)), "--kubeconfig", str(kube), *extra]


# --------------------------------------------------------------------------------------------
# 3. exec credential plugins
# --------------------------------------------------------------------------------------------


def test_an_exec_plugin_token_is_used_and_the_plugin_runs_once(
    control_plane: ControlPlane, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    counter = tmp_path / "runs"
    credential = json.dumps(
        {
            "apiVersion": EXEC_V1,
            "kind": "ExecCredential",
            "status": {"token": control_plane.admin_token},
        }
    )
    plugin = script(tmp_path / "plugin", f"echo run >> {counter}\necho '{credential}'\n")
    kube = tmp_path / "kubeconfig"
    kube.write_text(control_plane.kubeconfig.read_text())
    doc = yaml.safe_load(kube.read_text())
    doc["users"][0]["user"] = exec_user(plugin)
    kube.write_text(yaml.safe_dump(doc))
    rc, _, err = run(capsys, *plan_args(tmp_path, kube))
    # observed the real cluster: no namespace ns there, so the plan selects nothing (exit 7)
    assert rc == 7, err
    assert "8 requests" in err
    assert counter.read_text().count("run") == 1  # cached, not once per request


def test_an_exec_plugin_that_fails_is_a_cluster_error_with_its_message(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    plugin = script(
        tmp_path / "sso", "echo 'error: the SSO session expired, run sso login' >&2\nexit 3\n"
    )
    with FakeAPI(cluster_lists()) as api:
        kube = kubeconfig(tmp_path / "kubeconfig", api.url, exec_user(plugin))
        rc, _, err = run(capsys, *plan_args(tmp_path, kube))
        assert api.seen == []  # no request went out without credentials
    assert rc == 6
    assert "failed (exit 3): error: the SSO session expired, run sso login" in err
    assert "Traceback" not in err


def test_an_exec_plugin_that_never_returns_is_killed_after_the_timeout(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(credentials, "EXEC_TIMEOUT", 0.5)
    pidfile = tmp_path / "pid"
    plugin = script(tmp_path / "hang", f"sleep 300 &\necho $! > {pidfile}\nwait\n")
    with FakeAPI(cluster_lists()) as api:
        kube = kubeconfig(tmp_path / "kubeconfig", api.url, exec_user(plugin))
        started = time.monotonic()
        rc, _, err = run(capsys, *plan_args(tmp_path, kube))
    assert time.monotonic() - started < 30
    assert rc == 6
    assert "no answer within 0.5s (killed)" in err
    assert not alive(int(pidfile.read_text()))  # its whole process group was killed


def alive(pid: int) -> bool:
    """Running (a killed orphan may stay a zombie until init reaps it: that is not alive)."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except FileNotFoundError:
        return False
    return fields[0] != "Z"


def test_an_exec_plugin_printing_garbage_is_a_cluster_error(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    plugin = script(tmp_path / "plugin", "printf 'Please log in: \\033[31mhttps://sso\\n'\n")
    with FakeAPI(cluster_lists()) as api:
        kube = kubeconfig(tmp_path / "kubeconfig", api.url, exec_user(plugin))
        rc, _, err = run(capsys, *plan_args(tmp_path, kube))
    assert rc == 6
    assert "did not print an ExecCredential" in err
    assert "\x1b" not in err and "\\x1b[31m" in err  # escaped, not interpreted


# --------------------------------------------------------------------------------------------
# 4. redirects: never followed, credentials never leave the server
# --------------------------------------------------------------------------------------------


def test_a_redirect_is_not_followed_and_the_token_stays_home(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    with FakeAPI(default=Answer.json({"kind": "List", "items": []})) as elsewhere:
        moved = Answer(302, b"", {"Location": elsewhere.url + "/api/v1/steal"})
        with FakeAPI(default=moved) as api:
            kube = kubeconfig(tmp_path / "kubeconfig", api.url)
            rc, _, err = run(capsys, *plan_args(tmp_path, kube))
            assert api.seen and all(
                s.headers.get("Authorization") == "Bearer fake-secret-token" for s in api.seen
            )
        assert elsewhere.seen == []  # nothing, and so no token, reached the other host
    assert rc == 6
    assert "HTTP 302, a redirect to " + elsewhere.url + "/api/v1/steal" in err
    assert "redirects are not followed" in err


def test_a_watch_does_not_follow_a_redirect_either(tmp_path: Path) -> None:
    with FakeAPI(default=Answer.json({"kind": "List", "items": []})) as elsewhere:
        moved = Answer(307, b"", {"Location": elsewhere.url + "/apis/kubevirt.io/v1/x"})
        with FakeAPI(default=moved) as api:
            client = load_client(str(kubeconfig(tmp_path / "kubeconfig", api.url)))
            stream = Stream("vms", VIRTUAL_MACHINES, NS)
            with Observer(client, [stream]) as observer, pytest.raises(ClusterError) as caught:
                observer.wait(lambda state: True, time.monotonic() + 30, what="the VMs")
        assert elsewhere.seen == []
    assert "HTTP 307, a redirect to" in str(caught.value)


# --------------------------------------------------------------------------------------------
# 5. bodies that are not what the API promises: exit 6 with what came, in short
# --------------------------------------------------------------------------------------------

LOGIN_PAGE = b"<html><head><title>Sign in</title></head><body>" + b"x" * 5000 + b"</body></html>"
DEEP = b'{"kind":"List","items":[' + b"[" * 100_000 + b"]" * 100_000 + b"]}"
BODIES = {
    "html-login-page": (
        Answer(200, LOGIN_PAGE, {"Content-Type": "text/html"}),
        "not JSON (text/html): <html><head><title>Sign in",
    ),
    "list-not-object": (Answer.json([1, 2, 3]), "expected a JSON object, got a list"),
    "items-not-a-list": (Answer.json({"items": {"a": 1}}), "items is not a list"),
    "items-not-objects": (Answer.json({"items": [1, "two"]}), "items[0] is not an object"),
    "deep-json": (Answer(200, DEEP), "nested too deeply"),
    "object-of-odd-shape": (
        Answer.json({"items": [{"metadata": {"name": "p", "namespace": NS}, "spec": "x"}]}),
        "persistentvolumeclaims ns/p: an object of unexpected shape",
    ),
}


@pytest.mark.parametrize(("answer", "expected"), BODIES.values(), ids=BODIES.keys())
def test_an_unexpected_body_is_a_cluster_error_in_short(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], answer: Answer, expected: str
) -> None:
    routes = cluster_lists() | {list_path("persistentvolumeclaims"): answer}
    with FakeAPI(routes) as api:
        rc, _, err = run(capsys, *plan_args(tmp_path, kubeconfig(tmp_path / "kc", api.url)))
    assert rc == 6, err
    assert expected in err
    assert "Traceback" not in err
    assert len(err) < 2500


def test_odd_cluster_objects_block_their_vm_and_the_others_go_on(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    no_storage = vm(
        "vm-template",
        claim="dv-template",
        dataVolumeTemplates=[
            {"metadata": {"name": "dv-template"}, "spec": {"source": {"blank": {}}}}
        ],
    )
    no_storage["spec"]["template"]["spec"]["volumes"] = [
        {"name": "rootdisk", "dataVolume": {"name": "dv-template"}}
    ]
    vms = [vm("vm1"), vm("vm-huge", claim="huge"), no_storage]
    pvcs = [pvc("disk1"), pvc("huge", size="1e400"), pvc("dv-template")]
    text = (
        "apiVersion: vmstorage.dev/v1alpha1\nkind: StoragePlan\nmetadata: {name: fake}\n"
        f"spec:\n  namespace: {NS}\n  storageClass: new\n"
        "  virtualMachines: [{name: vm1}, {name: vm-huge}, {name: vm-template}]\n"
    )
    with FakeAPI(cluster_lists(vms, pvcs)) as api:
        kube = kubeconfig(tmp_path / "kc", api.url)
        path = plan_file(tmp_path, text)
        args = ["plan", str(path), "--kubeconfig", str(kube), "--show-manifests"]
        rc, text, err = run(capsys, *args)
        assert rc == 1, err
        assert "VM ns/vm1 (stopped, plan fake): offline" in text
        rc, out, err = run(capsys, *args, "-o", "json")
    assert rc == 1, err
    report = {v["name"]: v for v in json.loads(out)["vms"]}
    assert report["vm1"]["action"] == "MoveOffline"
    assert report["vm-huge"]["action"] == "Blocked"
    assert report["vm-template"]["action"] == "Blocked"
    rules = {r["rule"] for v in ("vm-huge", "vm-template") for r in report[v]["reasons"]}
    assert "source-size-unknown" in rules
    assert "datavolume-template-unsized" in rules


# --------------------------------------------------------------------------------------------
# 6. server dry run: only 400/409/422 are refusals of our objects
# --------------------------------------------------------------------------------------------

DV_POST = ("POST", f"/apis/cdi.kubevirt.io/v1beta1/namespaces/{NS}/datavolumes")
VM_PATCH = ("PATCH", f"/apis/kubevirt.io/v1/namespaces/{NS}/virtualmachines/vm1")


def status(code: int, message: str) -> Answer:
    return Answer.json({"kind": "Status", "code": code, "message": message}, status=code)


@pytest.mark.parametrize(
    ("code", "exit_code"),
    [(400, 2), (409, 2), (422, 2), (401, 6), (403, 6), (500, 6), (503, 6)],
)
def test_server_dry_run_refusals_are_bad_input_and_the_rest_cluster_errors(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], code: int, exit_code: int
) -> None:
    routes = cluster_lists() | {
        DV_POST: Answer.json({"kind": "DataVolume"}, status=201),
        VM_PATCH: status(code, f"answer {code}"),
    }
    with FakeAPI(routes) as api:
        kube = kubeconfig(tmp_path / "kc", api.url)
        rc, out, err = run(capsys, *plan_args(tmp_path, kube, "--server-dry-run"))
    assert rc == exit_code, out + err
    assert f"answer {code} (HTTP {code})" in out + err


def test_server_dry_run_against_an_unreachable_server_is_a_cluster_error(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    with FakeAPI(cluster_lists()) as api:
        kube = kubeconfig(tmp_path / "kc", api.url)
        api.routes[DV_POST] = Answer(200, b"", {"Connection": "close", "Content-Length": "99"})
        rc, _, err = run(capsys, *plan_args(tmp_path, kube, "--server-dry-run"))
    assert rc == 6, err


def test_an_internal_error_after_the_cluster_was_read_is_exit_6(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    def explode(*args: object, **kwargs: object) -> None:
        raise KeyError("a field the diff did not expect")

    monkeypatch.setattr(engine, "diff", explode)
    with FakeAPI(cluster_lists()) as api:
        rc, _, err = run(capsys, *plan_args(tmp_path, kubeconfig(tmp_path / "kc", api.url)))
    assert rc == 6
    assert "error: internal error: KeyError: 'a field the diff did not expect'" in err
    assert "Traceback" not in err


def test_plan_with_no_plans_is_bad_input_before_any_request(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    empty = tmp_path / "empty.yaml"
    empty.write_text("# nothing yet\n")
    with FakeAPI(cluster_lists()) as api:
        kube = kubeconfig(tmp_path / "kc", api.url)
        for command in ("plan", "apply"):
            rc, _, err = run(capsys, command, str(empty), "--kubeconfig", str(kube))
            assert rc == 2, err
            assert "no plans" in err
        assert api.seen == []
