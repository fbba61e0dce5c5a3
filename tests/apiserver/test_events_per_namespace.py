"""An Event refused in one namespace (a plan's namespace that does not exist: 404; RBAC not
granted there: 403) turns Events off in that namespace only: the VMs of every other namespace
still get theirs. Against the real API server (issue 18's report: one plan typo silenced every
Event of the run)."""

from __future__ import annotations

import pykube

from reconciler.kube.client import Cluster
from reconciler.kube.resources import EVENTS
from reconciler.publish.events import Events, Notice
from testenv.controlplane import ControlPlane
from tests.cluster.test_plan import create, fedora


def test_an_event_refused_in_one_namespace_leaves_the_others_on(
    api: pykube.HTTPClient, control_plane: ControlPlane, namespace: str
) -> None:
    create(api, fedora(namespace, running=False))
    cluster = Cluster(api)
    said: list[str] = []
    events = Events(cluster, holder="test", run_id="r1", warn=said.append)
    notice = Notice(reason="MoveBlocked", note="blocked for the test", rule="vm-not-found")

    events.emit(f"{namespace}-typo", "vm-fedora", notice)  # no such namespace: 404
    events.emit(f"{namespace}-typo", "vm-fedora", notice)  # said once, not retried
    events.emit(namespace, "vm-fedora", notice)

    assert len(said) == 1 and f"namespace {namespace}-typo" in said[0], said
    assert events.off == {f"{namespace}-typo"}
    # (only this tier's kube-apiserver: no controller reports the disk's import here)
    ours = [e for e in cluster.list_objects(EVENTS, namespace) if e.get("reason") == "MoveBlocked"]
    assert len(ours) == 1, ours
    assert ours[0]["regarding"]["name"] == "vm-fedora"
    assert events.sent == 1
