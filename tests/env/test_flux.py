"""The test environment's Flux is a real one: it applies from Git, follows new commits on
request, and reverts drift, like source-controller and kustomize-controller v1.9 in a cluster.

Syncs are triggered with ``reconcile.fluxcd.io/requestedAt`` and waited for with deadlines;
the Kustomizations' own interval (10 min) never fires during a test.
"""

from __future__ import annotations

import json
from pathlib import Path

import psutil
import pykube
import pytest
import yaml

from testenv.binaries import MissingPrerequisiteError, ensure_flux
from testenv.controlplane import ControlPlane
from testenv.flux import Flux
from tests.support.flux import FluxEnv, MakeSync
from tests.support.kube import Eventually, condition, get_json

MANAGED_BY = "kustomize.toolkit.fluxcd.io/name"
SSA = "kustomize.toolkit.fluxcd.io/ssa"


def configmap(data: dict[str, str], name: str = "settings") -> str:
    return yaml.safe_dump(
        {"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": name}, "data": data}
    )


def live_data(api: pykube.HTTPClient, namespace: str, name: str = "settings") -> dict[str, str]:
    return dict(get_json(api, "v1", namespace, f"configmaps/{name}").get("data") or {})


def test_a_kustomization_applies_a_configmap_from_the_local_git_server(
    api: pykube.HTTPClient, namespace: str, flux_sync: MakeSync, eventually: Eventually
) -> None:
    sync = flux_sync({"settings.yaml": configmap({"colour": "blue"})})

    ks = sync.wait_applied(eventually)

    assert condition(ks, "Ready")["reason"] == "ReconciliationSucceeded"
    assert condition(sync.source(), "Ready")["status"] == "True"
    live = get_json(api, "v1", namespace, "configmaps/settings")
    assert live["data"] == {"colour": "blue"}
    assert live["metadata"]["labels"][MANAGED_BY] == sync.name
    inventory = [entry["id"] for entry in ks["status"]["inventory"]["entries"]]
    assert inventory == [f"{namespace}_settings__ConfigMap"]


def test_a_new_commit_is_applied_once_a_reconcile_is_requested(
    api: pykube.HTTPClient, namespace: str, flux_sync: MakeSync, eventually: Eventually
) -> None:
    sync = flux_sync({"settings.yaml": configmap({"colour": "blue"})})
    first = sync.wait_applied(eventually)["status"]["lastAppliedRevision"]

    sync.repo.commit({"settings.yaml": configmap({"colour": "green"})}, "green")
    assert live_data(api, namespace) == {"colour": "blue"}  # nothing polls Git by itself
    ks = sync.sync_now(eventually)

    assert ks["status"]["lastAppliedRevision"] == sync.repo.flux_revision() != first
    assert live_data(api, namespace) == {"colour": "green"}


def test_drift_on_an_applied_object_is_reverted_by_the_next_sync(
    api: pykube.HTTPClient, namespace: str, flux_sync: MakeSync, eventually: Eventually
) -> None:
    sync = flux_sync({"settings.yaml": configmap({"colour": "blue"})})
    sync.wait_applied(eventually)
    _edit_live(api, namespace, "someone-else", {"data": {"colour": "red", "extra": "x"}})

    sync.wait_applied(eventually, token=sync.reconcile())

    # Flux force-applies what Git says ("colour"); a field Git never had stays with the
    # manager that set it.
    assert live_data(api, namespace) == {"colour": "blue", "extra": "x"}


@pytest.mark.parametrize("manager", ["kubectl-annotate", "kubectl-edit", "kubectl"])
def test_flux_takes_over_and_drops_what_a_kubectl_manager_added(
    api: pykube.HTTPClient, namespace: str, flux_sync: MakeSync, eventually: Eventually,
    manager: str,
) -> None:
    """kustomize-controller hands every field of a manager whose name starts with "kubectl"
    to itself before applying, so a live-only addition is removed (why a live ``kubectl
    annotate`` of ``kustomize.toolkit.fluxcd.io/ssa`` cannot protect an object)."""
    sync = flux_sync({"settings.yaml": configmap({"colour": "blue"})})
    sync.wait_applied(eventually)
    _edit_live(api, namespace, manager, {"data": {"extra": "x"}})
    _edit_live(api, namespace, "other", {"data": {"kept": "y"}})

    sync.wait_applied(eventually, token=sync.reconcile())

    assert live_data(api, namespace) == {"colour": "blue", "kept": "y"}


def test_a_live_if_not_present_annotation_is_removed_and_protects_nothing(
    api: pykube.HTTPClient, namespace: str, flux_sync: MakeSync, eventually: Eventually
) -> None:
    """``kubectl annotate ... kustomize.toolkit.fluxcd.io/ssa=IfNotPresent``: Flux reads that
    annotation from Git only, takes over kubectl's fields and drops it; drift is reverted."""
    sync = flux_sync({"settings.yaml": configmap({"colour": "blue"})})
    sync.wait_applied(eventually)
    annotate = {"metadata": {"annotations": {SSA: "IfNotPresent"}}}
    _edit_live(api, namespace, "kubectl-annotate", annotate)
    _edit_live(api, namespace, "someone-else", {"data": {"colour": "red"}})

    sync.wait_applied(eventually, token=sync.reconcile())

    live = get_json(api, "v1", namespace, "configmaps/settings")
    assert live["data"] == {"colour": "blue"}
    assert SSA not in (live["metadata"].get("annotations") or {})


@pytest.mark.parametrize(
    ("key", "value"), [(SSA, "Ignore"), ("kustomize.toolkit.fluxcd.io/reconcile", "disabled")]
)
def test_a_live_skip_annotation_is_honoured_even_from_kubectl(
    api: pykube.HTTPClient, namespace: str, flux_sync: MakeSync, eventually: Eventually,
    key: str, value: str,
) -> None:
    """Flux checks ``ssa: Ignore`` and ``reconcile: disabled`` on the in-cluster object
    before anything else: the object is skipped, the annotation and the drift stay."""
    sync = flux_sync({"settings.yaml": configmap({"colour": "blue"})})
    sync.wait_applied(eventually)
    _edit_live(api, namespace, "kubectl-annotate", {"metadata": {"annotations": {key: value}}})
    _edit_live(api, namespace, "someone-else", {"data": {"colour": "red"}})

    sync.wait_applied(eventually, token=sync.reconcile())

    live = get_json(api, "v1", namespace, "configmaps/settings")
    assert live["data"] == {"colour": "red"}
    assert live["metadata"]["annotations"][key] == value


def test_if_not_present_added_in_git_to_an_existing_object_skips_it_without_reaching_it(
    api: pykube.HTTPClient, namespace: str, flux_sync: MakeSync, eventually: Eventually
) -> None:
    sync = flux_sync({"settings.yaml": configmap({"colour": "blue"})})
    sync.wait_applied(eventually)
    _edit_live(api, namespace, "someone-else", {"data": {"colour": "red"}})
    annotated = yaml.safe_load(configmap({"colour": "blue"}))
    annotated["metadata"]["annotations"] = {SSA: "IfNotPresent"}
    sync.repo.commit({"settings.yaml": yaml.safe_dump(annotated)}, "IfNotPresent")

    sync.sync_now(eventually)

    live = get_json(api, "v1", namespace, "configmaps/settings")
    assert live["data"] == {"colour": "red"}, "Flux skipped the existing object"
    assert SSA not in (live["metadata"].get("annotations") or {}), "and never wrote the annotation"


def _edit_live(api: pykube.HTTPClient, namespace: str, manager: str, patch: object) -> None:
    response = api.patch(
        url="configmaps/settings",
        namespace=namespace,
        headers={"Content-Type": "application/merge-patch+json"},
        params={"fieldManager": manager},
        data=json.dumps(patch),
    )
    api.raise_for_status(response)


def test_the_controllers_listen_on_loopback_only(flux: FluxEnv) -> None:
    for name, pid in flux.controllers.pids.items():
        group = [psutil.Process(pid), *psutil.Process(pid).children(recursive=True)]
        listening = [
            conn.laddr
            for proc in group
            for conn in proc.net_connections(kind="inet")
            if conn.status == psutil.CONN_LISTEN
        ]
        assert listening, f"{name} listens nowhere"
        assert {addr.ip for addr in listening} == {"127.0.0.1"}, (name, listening)
    assert flux.git.url.startswith("http://127.0.0.1:")


def test_stop_leaves_no_process_and_no_files(control_plane: ControlPlane) -> None:
    """A second Flux on the same API server (the session's keeps running): start, stop."""
    second = Flux(control_plane, log=lambda line: None)
    second.start()
    processes = [psutil.Process(pid) for pid in second.pids.values()]
    workdir = second.workdir
    assert all(p.is_running() for p in processes) and len(processes) == 2

    second.stop()
    second.stop()  # idempotent

    assert not any(p.is_running() and p.status() != psutil.STATUS_ZOMBIE for p in processes)
    assert workdir is not None and not workdir.exists()
    assert second.workdir is None and second.pids == {}


def test_without_go_building_flux_says_what_to_install(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """An empty cache forces a build; with no `go` on PATH the error names the fix."""
    monkeypatch.setenv("VMSR_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.setenv("PATH", str(tmp_path))

    with pytest.raises(MissingPrerequisiteError, match=r"Go toolchain not found on PATH.*1\.26"):
        ensure_flux(log=lambda line: None)
