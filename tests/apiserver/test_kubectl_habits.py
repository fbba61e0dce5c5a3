"""Issue 18 item 8 against the real API server: kubectl's habits.

`status` with no arguments shows the kubeconfig context's namespace and `status -A` every
namespace, as `kubectl get` does; a plan document without a namespace acts in the context's
namespace when `-n` is not given; `-o json` is indented (`--compact`: one line), also when
stdout is not a terminal. No KubeVirt or CDI controller needed: status reads annotations, and
plan only judges.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pykube
import pytest
import yaml

from reconciler.cli.main import main
from reconciler.model import journal as journals
from reconciler.model.journal import Flow, LastMigration
from reconciler.model.names import LAST_MIGRATION_ANNOTATION
from testenv.controlplane import ControlPlane
from tests.cluster.test_plan import create, fedora


def with_namespace(control_plane: ControlPlane, tmp_path: Path, namespace: str) -> Path:
    """The admin kubeconfig, its context set to ``namespace`` (kubectl config set-context
    --current --namespace=...)."""
    config: dict[str, Any] = yaml.safe_load(Path(control_plane.kubeconfig).read_text())
    for context in config["contexts"]:
        context["context"]["namespace"] = namespace
    path = tmp_path / "kubeconfig"
    path.write_text(yaml.safe_dump(config))
    return path


def moved(namespace: str, move: str) -> dict[str, Any]:
    vm = fedora(namespace, running=False)
    record = LastMigration(
        id=move,
        plan=f"{namespace}/p",
        flow=Flow.OFFLINE,
        result="Succeeded",
        finished="2026-12-06T10:05:00+00:00",
        started="2026-12-06T10:00:00+00:00",
        volumes={"datavolumedisk1": "vm-fedora-disk-mig-abcde"},
    )
    vm["metadata"]["annotations"] = {LAST_MIGRATION_ANNOTATION: journals.encode_last(record)}
    return vm


def status(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    rc = main(["status", *argv])
    out, err = capsys.readouterr()
    return rc, out, err


def test_status_without_arguments_shows_the_contexts_namespace_and_dash_a_every_one(
    api: pykube.HTTPClient,
    control_plane: ControlPlane,
    namespace: str,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    other = control_plane.create_namespace("habits-other")
    create(api, moved(namespace, "aaaaaaaaaaaa"))
    create(api, moved(other, "bbbbbbbbbbbb"))
    config = str(with_namespace(control_plane, tmp_path, namespace))

    rc, out, err = status(capsys, "--kubeconfig", config)
    assert rc == 0, err
    assert f"{namespace}/vm-fedora" in out and "aaaaaaaaaaaa" in out
    assert other not in out, "no arguments: the context's namespace only (kubectl get)"

    rc, out, err = status(capsys, "-A", "--kubeconfig", config, "-o", "json")
    assert rc == 0, err
    assert out.startswith('{\n  "apiVersion"'), "indented, though stdout is no terminal"
    shown = {(vm["namespace"], vm["lastMigration"]["migrationId"]) for vm in json.loads(out)["vms"]}
    assert {(namespace, "aaaaaaaaaaaa"), (other, "bbbbbbbbbbbb")} <= shown

    rc, out, _ = status(capsys, "-A", "--kubeconfig", config, "-o", "json", "--compact")
    assert out.count("\n") == 1 and json.loads(out)["kind"] == "Status"

    with pytest.raises(SystemExit) as exited:
        main(["status", "-A", "-n", namespace, "--kubeconfig", config])
    assert exited.value.code == 2, "-A and -n exclude each other, as for kubectl"
    assert "not allowed with argument" in capsys.readouterr().err


def test_a_plan_without_a_namespace_acts_in_the_contexts_namespace(
    api: pykube.HTTPClient,
    control_plane: ControlPlane,
    namespace: str,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    create(api, fedora(namespace, running=False))
    path = tmp_path / "p.yaml"
    path.write_text(
        "apiVersion: vmstorage.dev/v1alpha1\nkind: StoragePlan\nmetadata: {name: p}\n"
        "spec: {storageClass: ceph-rbd, virtualMachines: [{name: vm-fedora}]}\n"
    )
    config = str(with_namespace(control_plane, tmp_path, namespace))

    rc = main(["plan", str(path), "--kubeconfig", config, "-o", "json"])
    out, err = capsys.readouterr()
    assert rc == 1, err  # something to do (or blocked): not bad input
    (vm,) = json.loads(out)["vms"]
    assert (vm["namespace"], vm["name"]) == (namespace, "vm-fedora")

    rc = main(["plan", str(path), "--kubeconfig", str(control_plane.kubeconfig)])
    _, err = capsys.readouterr()
    assert rc == 2 and "missing required field 'namespace'" in err, "no context namespace"
