"""Hostile kubeconfigs (issue 7, item 3): every broken kubeconfig is a clear message and exit
2, before any request; a missing exec plugin too; KUBECONFIG with several paths is merged the
way kubectl merges it (missing files skipped)."""

from __future__ import annotations

import base64
from pathlib import Path
from typing import Any

import pytest
import yaml

from reconciler.cli.main import main
from reconciler.kube.connect import load_client
from reconciler.model.errors import UserError

PLAN = """\
apiVersion: vmstorage.dev/v1alpha1
kind: StoragePlan
metadata: {name: p}
spec: {namespace: ns, storageClass: new, virtualMachines: [{name: vm1}]}
"""
# Nothing listens on port 9 (discard) of 127.0.0.1: a request that got sent would fail with
# "cannot reach" (exit 6), so exit 2 proves the kubeconfig was refused before any request.
SERVER = "https://127.0.0.1:9"


def config(
    cluster: dict[str, Any] | None = None,
    user: dict[str, Any] | None = None,
    **top: Any,
) -> dict[str, Any]:
    return {
        "apiVersion": "v1",
        "kind": "Config",
        "clusters": [{"name": "c", "cluster": cluster or {"server": SERVER}}],
        "users": [{"name": "u", "user": user if user is not None else {"token": "t"}}],
        "contexts": [{"name": "ctx", "context": {"cluster": "c", "user": "u"}}],
        "current-context": "ctx",
        **top,
    }


def plan(tmp_path: Path, text: str, *extra: str) -> tuple[int, str]:
    kubeconfig = tmp_path / "kubeconfig"
    kubeconfig.write_text(text)
    plan_path = tmp_path / "plan.yaml"
    plan_path.write_text(PLAN)
    rc = main(["plan", str(plan_path), "--kubeconfig", str(kubeconfig), *extra])
    return rc, str(kubeconfig)


def dump(doc: Any) -> str:
    return yaml.safe_dump(doc)


PEM = "-----BEGIN CERTIFICATE-----\nMIIB\n-----END CERTIFICATE-----\n"
CASES = {
    "invalid-yaml": ("clusters: [\n  - {name: c\n", "invalid YAML"),
    "empty": ("", "no current-context is set"),
    "list-shaped": (dump([config()]), "expected a mapping (kind: Config), got a list"),
    "clusters-not-a-list": (dump(config() | {"clusters": {"c": {}}}), "clusters must be a list"),
    "unknown-context-in-file": (dump(config() | {"current-context": "nope"}), "no such context"),
    "missing-ca-file": (
        dump(config({"server": SERVER, "certificate-authority": "/nonexistent/ca.crt"})),
        "certificate-authority '/nonexistent/ca.crt': no such file",
    ),
    "missing-client-cert": (
        dump(config(user={"client-certificate": "missing.crt", "client-key": "missing.key"})),
        "client-certificate",
    ),
    "bad-base64-ca": (
        dump(config({"server": SERVER, "certificate-authority-data": "not*base64!"})),
        "certificate-authority-data is not base64",
    ),
    "base64-but-not-pem": (
        dump(
            config(
                {
                    "server": SERVER,
                    "certificate-authority-data": base64.b64encode(b"hello").decode(),
                }
            )
        ),
        "does not hold a PEM certificate",
    ),
    "malformed-server": (dump(config({"server": "htp:/127.0.0.1"})), "is not an http(s) URL"),
    "server-bad-port": (dump(config({"server": "https://127.0.0.1:99999"})), "http(s) URL"),
    "no-server": (dump(config({"certificate-authority-data": "eA=="})), "no server URL"),
    "exec-missing": (
        dump(
            config(
                user={
                    "exec": {
                        "apiVersion": "client.authentication.k8s.io/v1beta1",
                        "command": "kubelogin-that-is-not-installed",
                        "installHint": "install kubelogin from your SSO portal",
                    }
                }
            )
        ),
        "the exec credential plugin 'kubelogin-that-is-not-installed' is not installed",
    ),
    "exec-bad-api-version": (
        dump(config(user={"exec": {"apiVersion": "v9", "command": "true"}})),
        "exec apiVersion 'v9' is not supported",
    ),
    "context-names-missing-user": (
        dump(
            config() | {"contexts": [{"name": "ctx", "context": {"cluster": "c", "user": "ghost"}}]}
        ),
        "names user 'ghost', which is not defined",
    ),
}


@pytest.mark.parametrize(("text", "expected"), CASES.values(), ids=CASES.keys())
def test_a_broken_kubeconfig_is_bad_input_with_a_clear_message(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], text: str, expected: str
) -> None:
    rc, _ = plan(tmp_path, text)
    err = capsys.readouterr().err
    assert rc == 2, err
    assert "cannot load a kubeconfig" in err
    assert expected in err
    assert "Traceback" not in err
    assert "Observing the cluster" not in err  # refused before any request
    if "kubelogin" in expected:  # kubectl's installHint is the hint
        assert "install kubelogin from your SSO portal" in err


def test_an_unknown_context_flag_lists_the_contexts(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    rc, _ = plan(tmp_path, dump(config()), "--context", "prod")
    err = capsys.readouterr().err
    assert rc == 2
    assert "--context prod: no such context" in err
    assert "contexts defined: ctx" in err


def test_a_missing_kubeconfig_flag_path_is_bad_input(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    (tmp_path / "plan.yaml").write_text(PLAN)
    rc = main(["plan", str(tmp_path / "plan.yaml"), "--kubeconfig", str(tmp_path / "nope")])
    assert rc == 2
    assert "no such file" in capsys.readouterr().err


def test_kubeconfig_paths_merge_like_kubectl_and_missing_files_are_skipped(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    (tmp_path / "certs").mkdir()
    (tmp_path / "certs" / "ca.crt").write_text(PEM)
    first = tmp_path / "first"
    first.write_text(
        dump(
            {
                "current-context": "work",
                "contexts": [
                    {"name": "work", "context": {"cluster": "work", "user": "me"}},
                    {"name": "home", "context": {"cluster": "home", "user": "me"}},
                ],
                "users": [{"name": "me", "user": {"token": "first-token"}}],
            }
        )
    )
    second = tmp_path / "certs" / "second"
    second.write_text(
        dump(
            {
                "current-context": "home",  # the first file's current-context wins
                "clusters": [
                    {
                        "name": "work",
                        "cluster": {
                            "server": "https://work:6443",
                            "certificate-authority": "ca.crt",
                        },
                    },
                    {"name": "home", "cluster": {"server": "https://home:6443"}},
                ],
                "users": [{"name": "me", "user": {"token": "second-token"}}],  # first wins
            }
        )
    )
    missing = tmp_path / "missing"
    monkeypatch.setenv("KUBECONFIG", f"{first}:{missing}:{second}")
    api = load_client()
    assert api.config.current_context == "work"
    assert api.url == "https://work:6443"
    assert api.config.user["token"] == "first-token"
    # a relative path is relative to the file that names it
    assert api.config.cluster["certificate-authority"].filename() == str(
        tmp_path / "certs" / "ca.crt"
    )
    assert load_client(context="home").url == "https://home:6443"


def test_kubeconfig_paths_that_all_do_not_exist_are_bad_input(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("KUBECONFIG", f"{tmp_path / 'a'}:{tmp_path / 'b'}")
    with pytest.raises(UserError, match="none of these files exist"):
        load_client()
