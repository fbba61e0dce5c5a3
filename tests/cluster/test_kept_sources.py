"""Issue 18 item 6 against the real API server: kept sources pile up, `sources` lists them and
`prune` deletes those nothing uses.

A VM with a dataVolumeTemplate disk and a plain PVC is moved twice with retention Keep (to
ceph-rbd and back), so four sources are kept by two moves: the VM's last-migration record
names only the second move, `sources` lists all four with their VM, move, age, class and
size. `prune` refuses what a pod mounts and what no destination of ours records (a forged
mark), `--dry-run` changes nothing, a held Lease stops it (exit 4), a prune killed between its
journal and the delete is finished by the next one, and the VM's own disks are never touched.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pykube
import pytest

from reconciler.cli.main import main
from reconciler.model.kept import KeptRecord, encode_record
from reconciler.model.names import (
    KEPT_SOURCE_ANNOTATION,
    KEPT_SOURCE_LABEL,
    PRUNING_ANNOTATION,
)
from reconciler.sources import FAILPOINT
from testenv.controlplane import ControlPlane
from tests.cluster.test_apply import CDI, cluster_objects
from tests.support.kube import Eventually, annotation
from tests.support.moves import Disk, Moves, disks_of, moves_ctx
from tests.support.node_faults import NodeSide

__all__ = ["cluster_objects"]  # the module fixture that seeds the classes and the KubeVirt CR

ROOT = Path(__file__).resolve().parents[2]
TO_CEPH = "storageClass: ceph-rbd\nvirtualMachines:\n  - name: vm1\n"
BACK = "storageClass: local-hostpath\nvirtualMachines:\n  - name: vm1\n"


@pytest.fixture
def ctx(
    api: pykube.HTTPClient,
    control_plane: ControlPlane,
    namespace: str,
    tmp_path: Path,
    eventually: Eventually,
    capsys: pytest.CaptureFixture[str],
    node_side: NodeSide,
) -> Iterator[Moves]:
    with moves_ctx(api, control_plane, namespace, tmp_path, eventually, capsys, node_side) as moves:
        yield moves


def cli(ctx: Moves, *argv: str) -> tuple[int, str, str]:
    rc = main([*argv, "--kubeconfig", str(ctx.control_plane.kubeconfig)])
    out, err = ctx.capsys.readouterr()
    return rc, out, err


def kept(ctx: Moves) -> dict[str, dict[str, Any]]:
    rc, out, err = cli(ctx, "sources", "-n", ctx.ns, "-o", "json")
    assert rc == 0, err
    return {s["name"]: s for s in json.loads(out)["sources"]}


def prune(ctx: Moves, *argv: str) -> tuple[int, dict[str, Any], str]:
    rc, out, err = cli(
        ctx, "prune", "-n", ctx.ns, "--lease-namespace", ctx.lease_ns, "-o", "json", *argv
    )
    return rc, json.loads(out) if out.startswith("{") else {}, err


def exists(ctx: Moves, name: str) -> bool:
    """The DataVolume or PVC exists and is not being deleted."""
    return not ctx.gone_or_deleting(name) or not ctx.gone_or_deleting(
        name, "persistentvolumeclaims"
    )


def test_sources_lists_every_moves_kept_sources_and_prune_deletes_what_nothing_uses(
    ctx: Moves,
) -> None:
    ctx.make(
        "vm1",
        [Disk("root", "template", "vm1-root"), Disk("data", "pvc", "vm1-data")],
        running=False,
    )
    rc, first, err = ctx.apply_files(("to-ceph", TO_CEPH))
    assert rc == 0, err
    after_first = disks_of(ctx.vm("vm1"))
    rc, second, err = ctx.apply_files(("back", BACK))
    assert rc == 0, err
    (one,), (two,) = first["outcomes"], second["outcomes"]
    assert ctx.last("vm1")["id"] == two["migrationId"], "the VM's record: the last move only"
    in_use = disks_of(ctx.vm("vm1"))

    # -- sources: both moves' kept sources, from the marks on the sources themselves
    found = kept(ctx)
    expected = {
        "vm1-root": (one["migrationId"], "local-hostpath", "DataVolume"),
        "vm1-data": (one["migrationId"], "local-hostpath", "PersistentVolumeClaim"),
        after_first["root"]: (two["migrationId"], "ceph-rbd", "DataVolume"),
        after_first["data"]: (two["migrationId"], "ceph-rbd", "DataVolume"),
    }
    assert {n: (s["migrationId"], s["storageClass"], s["kind"]) for n, s in found.items()} == (
        expected
    )
    for source in found.values():
        assert (source["vm"], source["why"]) == ("vm1", "retention Keep")
        # the PVC's capacity: a DataVolume's claim holds CDI's filesystem overhead too
        assert 2 << 30 <= source["sizeBytes"] < 3 << 30, source
        assert source["marked"] and source["prunable"], source
        assert 0 <= source["ageSeconds"] < 600
    assert not set(in_use.values()) & set(found), "the VM's own disks are not kept sources"
    assert ctx.last("vm1")["sourcesKept"] == {
        after_first["root"]: "retention Keep",
        after_first["data"]: "retention Keep",
    }

    rc, out, err = cli(ctx, "sources", "-n", ctx.ns)
    assert rc == 0, err
    header, *rows, summary = out.splitlines()
    assert header.split() == ["SOURCE", "KIND", "VM", "MOVE", "AGE", "CLASS", "SIZE", "STATE"]
    assert f"{ctx.ns}/vm1-data " in out and " PVC " in out and " 2Gi " in out  # a plain PVC
    assert len(rows) == 4 and all("kept: retention Keep" in r for r in rows), out
    assert re.match(r"4 kept source\(s\); 4 that nothing uses \(8\.\dGi\)", summary), summary

    found = leave_some(ctx, one["migrationId"], after_first)
    would = dry_runs(ctx, found, in_use, after_first)
    lease_held(ctx, found)
    crash_and_resume(ctx, would, in_use)


def leave_some(ctx: Moves, first_move: str, after_first: dict[str, str]) -> dict[str, Any]:
    """What prune must leave: a source a pod mounts, and a mark no destination of ours
    backs; and a source kept before marks existed, which only its destination records."""
    ctx.holder_pod("backup", "vm1-data")
    forged = KeptRecord("vm1", "0123456789ab", f"{ctx.ns}/x", "2020-01-01T00:00:00+00:00", "x")
    ctx.post(
        "persistentvolumeclaims",
        {
            "apiVersion": "v1",
            "kind": "PersistentVolumeClaim",
            "metadata": {
                "name": "precious",
                "labels": {KEPT_SOURCE_LABEL: forged.move},
                "annotations": {KEPT_SOURCE_ANNOTATION: encode_record(forged)},
            },
            "spec": {
                "accessModes": ["ReadWriteOnce"],
                "resources": {"requests": {"storage": "1Gi"}},
                "storageClassName": "local-hostpath",
            },
        },
    )
    ctx.json_patch(
        "datavolumes/vm1-root",
        [
            {"op": "remove", "path": "/metadata/labels/vmstorage.dev~1kept-source"},
            {"op": "remove", "path": "/metadata/annotations/vmstorage.dev~1kept-source"},
        ],
        version=CDI,
    )
    found = kept(ctx)
    assert found["vm1-data"]["usedBy"] == "mounted by pod backup"
    assert not found["vm1-data"]["prunable"]
    assert found["precious"]["refused"].startswith("not recorded as a source by us")
    legacy = found["vm1-root"]
    assert (legacy["marked"], legacy["migrationId"], legacy["vm"], legacy["prunable"]) == (
        False,
        first_move,
        "vm1",
        True,
    )
    assert legacy["recordedBy"] == f"DataVolume {ctx.ns}/{after_first['root']}"
    return found


def dry_runs(
    ctx: Moves, found: dict[str, Any], in_use: dict[str, str], after_first: dict[str, str]
) -> list[str]:
    """A dry run says what it would delete and changes nothing; the names it would delete."""
    rc, report, err = prune(ctx, "--older-than", "1h", "--dry-run")
    assert rc == 0, err
    assert report["deleted"] == [] and len(report["left"]) == 5
    rc, report, err = prune(ctx, "--older-than", "0s", "--dry-run")
    assert rc == 0, err
    would = sorted(s["name"] for s in report["deleted"])
    assert would == sorted(["vm1-root", after_first["root"], after_first["data"]])
    assert {s["name"]: s["reason"] for s in report["left"]} == {
        "vm1-data": "in use: mounted by pod backup",
        "precious": found["precious"]["refused"],
    }
    assert all(exists(ctx, name) for name in [*found, *in_use.values()]), (
        "a dry run deletes nothing"
    )
    rc, text, err = cli(
        ctx, "prune", "-n", ctx.ns, "--older-than", "0s", "--dry-run", "--lease-namespace", "x"
    )
    assert rc == 0, err
    assert re.fullmatch(
        r"Prune \(dry run\): 3 kept source\(s\) would be deleted \(6\.\dGi\), 2 left; "
        r"nothing was changed\.",
        text.splitlines()[-1],
    ), text
    return would


def lease_held(ctx: Moves, found: dict[str, Any]) -> None:
    """Another run holds the Lease: exit 4, nothing deleted."""
    now = datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")
    held = {"holderIdentity": "another-apply", "leaseDurationSeconds": 600, "renewTime": now}
    response = ctx.api.patch(  # the Lease apply left (released: no holder)
        version="coordination.k8s.io/v1",
        namespace=ctx.lease_ns,
        url="leases/vm-storage-reconciler",
        data=json.dumps({"spec": held}),
        headers={"Content-Type": "application/merge-patch+json"},
    )
    ctx.api.raise_for_status(response)
    rc, _, err = prune(ctx, "--older-than", "0s")
    assert rc == 4 and "held by another-apply" in err and "nothing was deleted" in err, err
    assert all(exists(ctx, name) for name in found)
    ctx.api.delete(
        version="coordination.k8s.io/v1",
        namespace=ctx.lease_ns,
        url="leases/vm-storage-reconciler",
    )


def crash_and_resume(ctx: Moves, would: list[str], in_use: dict[str, str]) -> None:
    """A prune killed between its journal and the delete leaves the journal on the source;
    the next prune finishes that delete first, then the rest, and leaves what it must."""
    killed = subprocess.run(
        [
            sys.executable,
            "-m",
            "reconciler",
            "prune",
            "-n",
            ctx.ns,
            "--older-than",
            "0s",
            "--lease-namespace",
            ctx.lease_ns,
            "--lease-duration",
            "6",
            "--kubeconfig",
            str(ctx.control_plane.kubeconfig),
        ],
        env={**os.environ, "VMSR_FAILPOINT": FAILPOINT},
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert killed.returncode == -9, killed
    journaled = [n for n, s in kept(ctx).items() if s["pruning"]]
    assert journaled == [sorted(would)[0]], "the first source to delete carries the journal"
    (first_to_go,) = journaled
    assert exists(ctx, first_to_go)
    rc, out, _ = cli(ctx, "sources", "-n", ctx.ns)
    assert "pruning since " in out and "was interrupted; the next prune finishes it" in out
    ctx.eventually(
        lambda: (
            cli(
                ctx,
                "prune",
                "-n",
                ctx.lease_ns,
                "--older-than",
                "0s",
                "--lease-namespace",
                ctx.lease_ns,
            )[0]
            == 0
        ),
        timeout=20,
        what="the killed prune's Lease to expire",
    )
    rc, report, err = prune(ctx, "--older-than", "0s")
    assert rc == 0, err
    assert [s["name"] for s in report["resumed"]] == [first_to_go], err
    assert "resuming prune " in err
    assert sorted(s["name"] for s in [*report["deleted"], *report["resumed"]]) == would
    for name in would:
        ctx.eventually(lambda n=name: not exists(ctx, n), what=f"{name} pruned")
    for name in ["vm1-data", "precious", *in_use.values()]:
        assert exists(ctx, name), f"{name} must be left"
    assert disks_of(ctx.vm("vm1")) == in_use
    left = kept(ctx)
    assert set(left) == {"vm1-data", "precious"}
    # its move's destination was pruned: vm1-data is still ours by its own mark
    assert left["vm1-data"]["recordedBy"] == "its mark, written by vm-storage-reconciler"
    assert left["vm1-data"]["refused"] == "in use: mounted by pod backup"
    assert annotation(ctx.vm("vm1"), "vmstorage.dev/journal") is None


def test_a_prune_journal_on_a_source_in_use_again_is_rolled_back(ctx: Moves) -> None:
    """A prune killed after its journal, and the source mounted again before the next prune:
    the next prune leaves the source and removes the journal (it never deletes a disk in use)."""
    ctx.make("vm1", [Disk("data", "pvc", "vm1-data")], running=False)
    rc, _, err = ctx.apply_files(("to-ceph", TO_CEPH))
    assert rc == 0, err
    pvc = ctx.pvc("vm1-data")
    ctx.json_patch(
        "persistentvolumeclaims/vm1-data",
        [
            {
                "op": "add",
                "path": "/metadata/annotations/vmstorage.dev~1pruning",
                "value": json.dumps({"id": "feedfacecafe", "at": "2026-12-01T00:00:00+00:00"}),
            }
        ],
        version="v1",
    )
    assert pvc["metadata"]["labels"][KEPT_SOURCE_LABEL]
    ctx.holder_pod("restore", "vm1-data")

    rc, report, err = prune(ctx, "--older-than", "0s")

    assert rc == 0, err
    assert report["resumed"] == [] and report["deleted"] == []
    (left,) = report["left"]
    assert (left["name"], left["reason"]) == ("vm1-data", "in use: mounted by pod restore")
    assert PRUNING_ANNOTATION not in (ctx.pvc("vm1-data")["metadata"].get("annotations") or {})
    assert exists(ctx, "vm1-data")
    assert timedelta(0) <= timedelta(seconds=left["ageSeconds"]) < timedelta(minutes=10)
