"""The GitOps write-back, end to end with a real Flux: `apply` moves a Flux-managed VM (the plan
opts in, the Kustomization has the printed ignore rule), the report (JSON and text) and a
``GitOpsWriteBack`` Event give the change to commit; committed to the application repository
as given, Flux applies a manifest that agrees with the cluster (no drift: Flux writes nothing),
also once the ignore rule is removed, and `plan` says in sync.

Two ways a user commits it, one per test: the JSON patch applied to the VM's manifest file (a
live move), and the kustomize ``patches`` entry added to the repository's kustomization (an
offline move of a stopped VM, which has no ``updateVolumesStrategy`` to write back).
"""

from __future__ import annotations

import json
from typing import Any

import jsonpatch
import yaml

from reconciler.cli.main import main
from tests.cluster.test_flux_gitops import (
    ALLOW,
    FluxVM,
    apply_printed_rule,
    cluster_objects,
    ctx,
    sync_and_check,
)
from tests.support.kube import get_json

__all__ = ["cluster_objects", "ctx"]  # fixtures, imported for pytest

OFFLINE = (
    "storageClass: ceph-rbd\nmode: Offline\nallowGitOpsManaged: true\n"
    "virtualMachines:\n  - name: vm-fedora\n"
)


def write_back_events(ctx: FluxVM) -> list[dict[str, Any]]:
    items = get_json(ctx.api, "events.k8s.io/v1", ctx.ns, "events")["items"]
    return [e for e in items if e["reason"] == "GitOpsWriteBack"]


def converged(ctx: FluxVM, target: str) -> None:
    """Flux applies the head (with and without the ignore rule) and changes nothing; `plan`
    finds the VM in sync."""
    version = ctx.vm()["metadata"]["resourceVersion"]
    ks = sync_and_check(ctx, target)
    assert ks["status"]["lastAppliedRevision"] == ctx.sync.repo.flux_revision()
    assert ctx.vm()["metadata"]["resourceVersion"] == version, "no drift: Flux wrote nothing"
    ctx.set_ignore(None)  # Git and the cluster agree: the rule can go
    sync_and_check(ctx, target)
    assert ctx.vm()["metadata"]["resourceVersion"] == version
    rc, plan_report, err = ctx.run("plan", ALLOW)
    assert rc == 0, err
    assert plan_report["vms"][0]["action"] == "InSync"


def test_the_reported_json_patch_committed_to_the_manifest_makes_git_agree(ctx: FluxVM) -> None:
    sync = ctx.create()
    vmi_uid = ctx.vmi()["metadata"]["uid"]
    apply_printed_rule(ctx)

    rc, report, err = ctx.run("apply", ALLOW)

    (outcome,) = report["outcomes"]
    assert (rc, outcome["result"], outcome["flow"]) == (0, "Succeeded", "live"), err
    target = ctx.claim()
    wb = outcome["writeBack"]
    assert wb["owners"] == [f"Flux Kustomization {ctx.ns}/{sync.name}"]
    assert wb["volumes"] == [
        {
            "volume": "datavolumedisk1",
            "claimField": "dataVolume.name",
            "from": "vm-fedora-disk",
            "to": target,
            "dataVolumeTemplate": target,
            "storageClass": "ceph-rbd",
        }
    ]
    assert wb["updateVolumesStrategy"] == "Migration"
    (event,) = write_back_events(ctx)
    assert (event["type"], event["action"]) == ("Warning", "WriteBack")
    assert f"vm-fedora-disk -> {target}" in event["note"]
    patch = json.dumps(wb["jsonPatch"], separators=(",", ":"))
    where = f"(all of it in ConfigMap {ctx.lease_ns}/vm-storage-reconciler-status)"
    assert patch in event["note"] or event["note"].endswith(where), event["note"]

    # The user's commit: the patch applied to the manifest file in the application repo.
    ctx.commit(jsonpatch.apply_patch(ctx.manifest, wb["jsonPatch"]), "write-back: vm-fedora")

    converged(ctx, target)
    assert ctx.vmi()["metadata"]["uid"] == vmi_uid, "the guest never restarted"


def test_the_reported_kustomize_patch_added_to_the_repo_makes_git_agree(ctx: FluxVM) -> None:
    ctx.create()
    halted = json.loads(json.dumps(ctx.manifest))
    halted["spec"]["runStrategy"] = "Halted"
    ctx.commit(halted, "stop vm-fedora")
    ctx.sync.sync_now(ctx.eventually)
    ctx.eventually(lambda: not ctx.vmi(), what="VMI gone")
    apply_printed_rule(ctx)

    rc = main([*ctx._argv("apply", OFFLINE), "-o", "text"])  # the text report
    text, err = ctx.capsys.readouterr()

    assert rc == 0, err
    target = ctx.claim()
    assert f"Write-back: vm-fedora is applied from Git by Flux Kustomization {ctx.ns}/" in text
    assert f"name: {target}  # was: vm-fedora-disk" in text
    assert "updateVolumesStrategy" not in text, "an offline move adds no strategy"
    document = json.loads(
        get_json(ctx.api, "v1", ctx.lease_ns, "configmaps/vm-storage-reconciler-status")["data"][
            "report.json"
        ]
    )
    (outcome,) = document["report"]["outcomes"]
    entry = outcome["writeBack"]["kustomizePatch"]

    # The user's commit: the patches entry in a kustomization next to the manifest.
    kustomization = {
        "apiVersion": "kustomize.config.k8s.io/v1beta1",
        "kind": "Kustomization",
        "resources": ["vm.yaml"],
        "patches": [entry],
    }
    ctx.commit(
        ctx.manifest,
        "write-back as a kustomize patch",
        **{"kustomization.yaml": yaml.safe_dump(kustomization)},
    )

    converged(ctx, target)
    assert ctx.vm()["spec"]["runStrategy"] == "Halted"
