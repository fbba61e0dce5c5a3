"""`apply --git-repo`: plans fetched from a real local git repository, their commit recorded.

A new commit changes what the next run does; every journal, outcome, last-migration record and
report names the commit its move was started under; a move journaled under an older commit is
finished first, and the report says which commit started it.

Issue 14: a repository over ``--git-max-bytes`` is bad input before anything is written, its
cache entry removed; ``--git-credentials-file`` (and a URL's userinfo, warned about) fetch
from a server demanding basic auth with the secret on no command line and in no output.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Any

import pykube
import pytest

from reconciler.apply import failpoint
from reconciler.cli.main import main
from reconciler.model import journal as journals
from reconciler.model.names import JOURNAL_ANNOTATION, LAST_MIGRATION_ANNOTATION
from testenv import seed
from testenv.controlplane import ControlPlane
from tests.cluster.test_plan import _merge, fedora, settle
from tests.support.gitrepo import PlansRepo
from tests.support.kube import Eventually, annotation, get_json
from tests.unit.test_gitsource import (
    PASSWORD,
    USER,
    AuthServers,
    Recorded,
    authed,
    basic,
    leaks,
    recorded,
)

__all__ = ["authed", "recorded"]  # fixtures, imported for pytest


ROOT = Path(__file__).resolve().parents[2]
KV = "kubevirt.io/v1"


@pytest.fixture(scope="module", autouse=True)
def cluster_objects(api: pykube.HTTPClient) -> None:
    seed.seed_cluster(api)


def plan(namespace: str, *vms: str) -> str:
    listed = "".join(f"\n    - name: {vm}" for vm in vms)
    return (
        textwrap.dedent(f"""\
        apiVersion: vmstorage.dev/v1alpha1
        kind: StoragePlan
        metadata: {{name: to-ceph}}
        spec:
          namespace: {namespace}
          storageClass: ceph-rbd
          mode: Offline
          allowStop: true
          virtualMachines:""")
        + listed
        + "\n"
    )


def create_stopped(
    api: pykube.HTTPClient, eventually: Eventually, namespace: str, name: str
) -> None:
    """A seed-like VM whose disk was imported (it ran once), now stopped: it moves offline."""
    settle(api, eventually, fedora(namespace, name))
    _merge(api, KV, namespace, f"virtualmachines/{name}", {"spec": {"runStrategy": "Halted"}})
    eventually(
        lambda: not get_json(api, KV, namespace, f"virtualmachineinstances/{name}"),
        what=f"{name} stopped",
    )


class GitApply:
    def __init__(
        self,
        api: pykube.HTTPClient,
        control_plane: ControlPlane,
        namespace: str,
        tmp_path: Path,
        eventually: Eventually,
        capsys: pytest.CaptureFixture[str],
    ) -> None:
        self.api, self.control_plane, self.ns = api, control_plane, namespace
        self.eventually, self.capsys = eventually, capsys
        self.repo = PlansRepo(tmp_path / "plans-repo")
        self.cache = tmp_path / "git-cache"

    def vm(self, name: str) -> dict[str, Any]:
        return get_json(self.api, KV, self.ns, f"virtualmachines/{name}")

    def create_stopped(self, name: str) -> None:
        create_stopped(self.api, self.eventually, self.ns, name)

    def argv(self, lease_namespace: str) -> list[str]:
        return [
            "apply", "--git-repo", self.repo.url, "--git-ref", "main", "--git-path", "plans",
            "--git-cache", str(self.cache), "-o", "json",
            "--kubeconfig", str(self.control_plane.kubeconfig),
            "--lease-namespace", lease_namespace,
        ]  # fmt: skip

    def apply(self) -> tuple[int, dict[str, Any], str]:
        rc = main(self.argv(self.control_plane.create_namespace("lease")))
        out, err = self.capsys.readouterr()
        return rc, json.loads(out) if out.strip().startswith("{") else {}, err

    def killed_apply(self, at: str) -> subprocess.CompletedProcess[str]:
        env = {**os.environ, failpoint.ENV: at}
        argv = [sys.executable, "-m", "reconciler",
                *self.argv(self.control_plane.create_namespace("lease"))]  # fmt: skip
        return subprocess.run(
            argv, env=env, cwd=ROOT, capture_output=True, text=True, timeout=120, check=False
        )

    def journal(self, name: str) -> journals.Journal | None:
        text = annotation(self.vm(name), JOURNAL_ANNOTATION)
        return journals.decode(text) if text else None

    def last(self, name: str) -> dict[str, Any]:
        return dict(json.loads(annotation(self.vm(name), LAST_MIGRATION_ANNOTATION) or "{}"))


@pytest.fixture
def ctx(
    api: pykube.HTTPClient,
    control_plane: ControlPlane,
    namespace: str,
    tmp_path: Path,
    eventually: Eventually,
    capsys: pytest.CaptureFixture[str],
) -> GitApply:
    return GitApply(api, control_plane, namespace, tmp_path, eventually, capsys)


def by_vm(report: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {o["name"]: o for o in report["outcomes"]}


def test_a_new_commit_changes_what_the_next_run_does(ctx: GitApply) -> None:
    ctx.create_stopped("vm-a")
    ctx.create_stopped("vm-b")
    first = ctx.repo.commit({"plans/move.yaml": plan(ctx.ns, "vm-a"), "README": "plans"})

    rc, report, err = ctx.apply()

    assert rc == 0, err
    assert report["commit"] == first
    assert by_vm(report)["vm-a"]["commit"] == first
    assert ctx.last("vm-a")["commit"] == first, "the last-migration record names the commit"
    assert "vm-b" not in by_vm(report), "not in the plans yet"

    second = ctx.repo.commit({"plans/move.yaml": plan(ctx.ns, "vm-a", "vm-b")}, "add vm-b")
    rc, report, err = ctx.apply()

    assert rc == 0, err
    assert report["commit"] == second
    assert set(by_vm(report)) == {"vm-b"}, "vm-a is in sync; the new commit moved vm-b"
    assert (by_vm(report)["vm-b"]["result"], by_vm(report)["vm-b"]["commit"]) == (
        "Succeeded",
        second,
    )
    assert ctx.last("vm-b")["commit"] == second


def test_a_move_journaled_under_an_older_commit_is_finished_first(ctx: GitApply) -> None:
    ctx.create_stopped("vm-a")
    ctx.create_stopped("vm-b")
    first = ctx.repo.commit({"plans/move.yaml": plan(ctx.ns, "vm-a")})

    killed = ctx.killed_apply("offline/after:create-targets")

    assert killed.returncode == -9, killed.stderr[-2000:]
    journal = ctx.journal("vm-a")
    assert journal is not None and journal.commit == first, "the journal names its commit"

    second = ctx.repo.commit({"plans/move.yaml": plan(ctx.ns, "vm-b")}, "vm-b instead")
    rc, report, err = ctx.apply()

    assert rc == 0, err
    assert report["commit"] == second
    outcomes = report["outcomes"]
    assert [o["name"] for o in outcomes] == ["vm-a", "vm-b"], "the open move came first"
    resumed = outcomes[0]
    assert (resumed["result"], resumed["resumed"], resumed["commit"]) == ("Succeeded", True, first)
    assert f"move {journal.id} was started at commit {first[:12]}" in err
    assert f"(this run: {second[:12]})" in err
    assert outcomes[1]["commit"] == second
    assert ctx.journal("vm-a") is None
    assert ctx.last("vm-a")["commit"] == first


def test_a_bad_ref_is_bad_input_and_nothing_is_written(ctx: GitApply) -> None:
    ctx.repo.commit({"plans/move.yaml": plan(ctx.ns, "vm-a")})
    argv = ctx.argv(ctx.control_plane.create_namespace("lease"))
    argv[argv.index("main")] = "no-such-branch"

    rc = main(argv)
    out, err = ctx.capsys.readouterr()

    assert rc == 2, err
    assert "--git-ref no-such-branch" in err and "has no such branch, tag or commit" in err
    assert json.loads(out)["kind"] == "Problems"


def test_a_repository_over_git_max_bytes_is_bad_input_and_nothing_is_written(
    ctx: GitApply,
) -> None:
    """Issue 14, item 13: a plans repository was bounded by time only."""
    (ctx.repo.path / "video.bin").write_bytes(os.urandom(3 * 2**20))
    ctx.repo.commit({"plans/move.yaml": plan(ctx.ns, "vm-a")})
    lease = ctx.control_plane.create_namespace("lease")

    rc = main([*ctx.argv(lease), "--git-max-bytes", "1Mi"])
    out, err = ctx.capsys.readouterr()

    assert rc == 2, err
    assert (
        f"error: --git-repo {ctx.repo.url} at main takes more than --git-max-bytes 1.0 MiB" in err
    )
    assert "hint: raise the limit (e.g. --git-max-bytes " in err
    assert json.loads(out)["kind"] == "Problems"
    assert [p for p in ctx.cache.iterdir() if p.is_dir()] == [], "the cache entry is removed"
    assert get_json(ctx.api, "coordination.k8s.io/v1", lease, "leases")["items"] == []
    assert get_json(ctx.api, "v1", lease, "configmaps/vm-storage-reconciler-status") == {}


def test_plans_from_a_repository_behind_basic_auth_keep_the_secret_off_every_command_line(
    ctx: GitApply, authed: AuthServers, recorded: Recorded, tmp_path: Path
) -> None:
    """Issue 14, item 11: `apply --git-repo` with ``--git-credentials-file``, then with the
    credentials in the URL (warned about): the plans are fetched, and the secret is in no
    output, no git command line (ours or git's own) and not stored by the user's helper."""
    served = authed.serve(USER, PASSWORD)
    secret_file = tmp_path / "git-credentials"
    secret_file.write_text(f"{USER}:{PASSWORD}\n")
    lease = ctx.control_plane.create_namespace("lease")
    argv = ctx.argv(lease)
    argv[argv.index(ctx.repo.url)] = served.url  # its plans/p.yaml is no valid plan: the
    # run stops after the fetch (exit 2), which is as far as this test needs to go

    main([*argv, "--git-credentials-file", str(secret_file)])
    from_file, err_file = ctx.capsys.readouterr()
    argv[argv.index(served.url)] = served.url.replace("://", f"://{USER}:{PASSWORD}@")
    main(argv)
    from_url, err_url = ctx.capsys.readouterr()

    assert basic(USER, PASSWORD) in served.seen
    for out, err in ((from_file, err_file), (from_url, err_url)):
        assert f"Plans from {served.url} at main ({authed.sha[:12]})" in err, err
        assert leaks(PASSWORD, recorded, [out, err], ctx.cache) == []
    assert "carries credentials" not in err_file
    assert (
        f"warning: --git-repo {served.url.replace('://', '://***@')} carries credentials"
    ) in err_url
