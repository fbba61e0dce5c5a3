"""Every command of README.md and docs/*.md, run or checked, so none goes stale.

The blocks are read by tests/support/docs_blocks.py (its docstring has the convention). Here:

- each block with ``vm-storage-reconciler`` commands runs, in the order of its page, on the
  real engine: the scenario its marker names seeded where upstream virt-controller, virt-api
  and cdi-controller act on it (a ``lab`` on ``docs_engine``, holding nothing of an earlier
  block), in a fresh working directory that holds what the docs' commands name: ``plans/`` (a
  copy of the repository's), ``typo/``, ``back/``, ``gitops/`` and ``.testenv/kubeconfig``
  (what ``python -m testenv demo --keep`` writes). Each command must exit with the code the
  docs show (``$ echo $?``; without one, 0 or 1: any other code must be shown) and print every
  line the docs show after it, compared without ids, times, ages and column widths
  (``docs_blocks.normalize``);
- the deploy commands are run on a copy of deploy/: ``cp -r`` of an overlay, ``generate.py``
  on it, and every ``kubectl apply|delete -k DIR`` as ``kustomize build DIR``.

An engine of its own (``docs_engine``), not the session's: the docs' commands name the seed's
namespace ``mig-vm`` and act in every namespace (``apply`` finishes open moves everywhere,
``status -A``), and earlier tests fill the session's engine. One engine for all the blocks,
emptied between them (the seed's namespaces deleted: kube-controller-manager's namespace
controller and virt-controller's finalizers take the VMs with them): an engine takes 16 s to
start on an idle machine, over a minute on a loaded one. The test asks for ``real_engine``
only to join a real-engine xdist group (one busy engine per worker).

A scenario is built as the demo builds it (``testenv.seed``, ``testenv.demo.wait_for_vms``),
then settled: CDI's populators have deleted their prime claims (``populated``), so the claims
the commands observe are the seed's alone; and settled again after each command of a block.

The pure checks (links, the convention, flags, make targets, testenv's and the scripts'
options) are in tests/unit/test_docs_links.py.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pykube
import pytest

from testenv import seed
from testenv.binaries import ensure_kustomize
from testenv.demo import cdi_transient_claims, wait_for_vms
from testenv.node.runtime import FAULT_ANNOTATION
from testenv.real.engine import RealEngine
from tests.support.docs_blocks import (
    PROG,
    ROOT,
    SCENARIOS,
    Block,
    Command,
    blocks,
    commands,
    normalize,
    pages,
    rel,
)
from tests.support.engines import running_engine
from tests.support.kube import Eventually
from tests.support.lab import Lab

# The files the docs' commands name besides the repository's own.
TYPO_SUBSTITUTIONS = {
    "fedora-to-ceph.yaml": ("namespace: mig-vm", "namespace: mig-vmm"),
    "archive-to-ceph.yaml": ("tier: archive", "tier: archve"),
}
KMC_USER_GUIDE_PLAN = """\
apiVersion: migrations.kubevirt.io/v1alpha1
kind: VirtualMachineStorageMigrationPlan
metadata:
  name: test-plan
spec:
  virtualMachines:
  - name: simple-vm
    targetMigrationPVCs:
    - volumeName: dv-disk
      destinationPVC:
        name: test-pvc
        storageClassName: storageclass-b
"""
GITOPS_FILES = {
    "apps/mig-vm/vms.yaml": (
        "apiVersion: v1\nkind: Namespace\nmetadata: {name: mig-vm}\n---\n"
        + json.dumps(seed.fedora_vm())
        + "\n---\n"
        + json.dumps(seed.archive_vm())
        + "\n"
    ),
    "apps/mig-vm/kustomization.yaml": (
        "apiVersion: kustomize.config.k8s.io/v1beta1\nkind: Kustomization\nresources: [vms.yaml]\n"
    ),
    "infra/ceph-rbd.yaml": json.dumps(seed.storage_classes()[1]) + "\n",
}


def workdir_for(path: Path, kubeconfig: Path | None) -> Path:
    """A working directory with every file the docs' commands name."""
    shutil.copytree(ROOT / "plans", path / "plans")
    (path / "plans" / "test-plan.yaml").write_text(KMC_USER_GUIDE_PLAN)
    for name, (old, new) in TYPO_SUBSTITUTIONS.items():
        text = (ROOT / "plans" / "seed" / name).read_text()
        assert old in text, f"plans/seed/{name} no longer holds {old!r}"
        (path / "typo").mkdir(exist_ok=True)
        (path / "typo" / name).write_text(text.replace(old, new))
    (path / "back").mkdir()
    for name in TYPO_SUBSTITUTIONS:
        text = (ROOT / "plans" / "seed" / name).read_text()
        back = text.replace("storageClass: ceph-rbd", "storageClass: local-hostpath")
        back = back.replace("-to-ceph", "-back")
        assert back != text
        (path / "back" / name.replace("-to-ceph", "-back")).write_text(back)
    for name, text in GITOPS_FILES.items():
        (path / "gitops" / name).parent.mkdir(parents=True, exist_ok=True)
        (path / "gitops" / name).write_text(text)
    (path / "gitops" / "vm-storage").mkdir()
    shutil.copy(ROOT / "plans/seed/fedora-to-ceph.yaml", path / "gitops/vm-storage")
    # a Git checkout, as the repository the docs' commands run in (`Plans at commit ...`)
    git = ["git", "-c", "user.name=docs", "-c", "user.email=docs@example.com"]
    for args in (["init", "-q"], ["add", "-A"], ["commit", "-qm", "the docs' files"]):
        subprocess.run([*git, *args], cwd=path, check=True, capture_output=True)
    if kubeconfig is not None:
        (path / ".testenv").mkdir()
        shutil.copy(kubeconfig, path / ".testenv" / "kubeconfig")
    return path


@dataclass
class Done:
    code: int
    output: str  # stdout and stderr, as a terminal shows them


def run(command: Command, cwd: Path) -> Done:
    """The command as a user types it (``vm-storage-reconciler`` is this checkout's CLI)."""
    argv = [sys.executable, "-m", "reconciler", *command.argv[1:]]
    env = {**os.environ, "KUBECONFIG": str(cwd / ".testenv" / "kubeconfig"), "COLUMNS": "100"}
    proc = subprocess.Popen(
        argv, cwd=cwd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
    )
    try:
        return _wait(command, proc)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()


def _wait(command: Command, proc: subprocess.Popen[str]) -> Done:
    if not command.interrupted:
        out, _ = proc.communicate(timeout=240)
        return Done(proc.returncode, out)
    # Ctrl-C once the lines shown before it are printed (read line by line until then)
    wanted = [normalize(x) for x in command.output[: _ctrl_c(command)] if x.strip()]
    assert wanted, f"{command.where}: ^C needs the lines printed before it"

    seen: list[str] = []
    assert proc.stdout is not None
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and not all(
        any(w in normalize(s) for s in seen) for w in wanted
    ):
        line = proc.stdout.readline()
        if not line:
            break
        seen.append(line)
    proc.send_signal(signal.SIGINT)
    rest, _ = proc.communicate(timeout=60)
    return Done(proc.returncode, "".join(seen) + "^C" + rest)


def _ctrl_c(command: Command) -> int:
    return next(i for i, line in enumerate(command.output) if line.startswith("^C"))


def check(command: Command, done: Done) -> None:
    shown = f"{command.where}: $ {command.text}\nexit {done.code}, printed:\n{done.output}"
    if command.exit_code is not None:
        assert done.code == command.exit_code, shown
    else:
        assert done.code in (0, 1), shown  # a code other than these is shown with echo $?
    printed = [normalize(line) for line in done.output.splitlines()]
    printed_all = " ".join(printed)
    for line in command.output:
        if not line.strip():
            continue
        want = normalize(line.removeprefix("^C"))
        assert any(want in p for p in printed) or want in printed_all, (
            f"{command.where}: the docs show a line the command does not print:\n  {line}\n" + shown
        )


# ---- the scenarios ---------------------------------------------------------------------


def build(scenario: str, lab: Lab, cwd: Path, eventually: Eventually) -> None:
    """The cluster state ``scenario`` names (``SCENARIOS``), settled (``populated``)."""
    api = lab.api
    if scenario == "seed-blocked":
        vm = seed.fedora_vm()
        vm["metadata"]["annotations"] = {
            "argocd.argoproj.io/tracking-id": "vms:kubevirt.io/VirtualMachine:mig-vm/vm-fedora"
        }
        vm["spec"]["template"]["spec"]["domain"]["devices"]["disks"][0]["shareable"] = True
        for obj in (seed.namespace(seed.NAMESPACE), seed.namespace(seed.LEASE_NAMESPACE), vm):
            seed.create(api, obj)
        seed.create(api, seed.archive_vm())
    else:
        seed.seed(api)
    wait_for_vms(api, timeout=120)
    if scenario in ("seed-moved", "cancel", "kept"):
        _must(cwd, f"{PROG} apply plans/seed --kubeconfig .testenv/kubeconfig")
    if scenario == "cancel":
        patch = {"metadata": {"annotations": {FAULT_ANNOTATION: "stall"}}}
        response = api.patch(
            version="kubevirt.io/v1",
            namespace=seed.NAMESPACE,
            url=f"virtualmachines/{seed.VM_NAME}",
            data=json.dumps(patch),
            headers={"Content-Type": "application/merge-patch+json"},
        )
        api.raise_for_status(response)
    if scenario == "kept":
        _must(cwd, f"{PROG} apply back/ --kubeconfig .testenv/kubeconfig")
        pod = {
            "apiVersion": "v1",
            "kind": "Pod",
            "metadata": {"name": "backup", "namespace": seed.NAMESPACE},
            "spec": {
                "containers": [{"name": "backup", "image": "busybox"}],
                "volumes": [
                    {"name": "disk", "persistentVolumeClaim": {"claimName": seed.ARCHIVE_DV}}
                ],
            },
        }
        response = api.post(
            version="v1", namespace=seed.NAMESPACE, url="pods", data=json.dumps(pod)
        )
        api.raise_for_status(response)
    settle(api, eventually)


def settle(api: pykube.HTTPClient, eventually: Eventually) -> None:
    """Wait for ``populated``: a scenario once built, and a block's state after each command
    (an ``apply`` returns once the VM runs verified on its targets, a moment before CDI has
    deleted the prime claims that filled them, which the next ``plan`` would count)."""
    eventually(lambda: populated(api), timeout=POPULATED_WITHIN, what="CDI's prime claims gone")


POPULATED_WITHIN = 120.0
"""Seconds for CDI to delete the prime claims of DataVolumes that have Succeeded (it deletes
each once the claim it filled is Bound and the prime Lost: a reconcile or two)."""


def populated(api: pykube.HTTPClient) -> bool:
    """No claim of the seed's namespace is one CDI deletes itself once it has filled its
    target (``cdi_transient_claims``), a moment after the DataVolume reports Succeeded, so a
    command run at once would count it among the claims."""
    return not cdi_transient_claims(api)


def _must(cwd: Path, text: str) -> None:
    block = Block(ROOT / "README.md", 0, "sh", [text], None)
    (command,) = commands(block)
    done = run(command, cwd)
    assert done.code == 0, f"setting the scenario up: $ {text}\n{done.output}"


# ---- the tests ---------------------------------------------------------------------------


def cli_blocks() -> list[Block]:
    return [b for page in pages() for b in blocks(page) if any(c.is_cli for c in commands(b))]


EMPTIED_WITHIN = 180.0
"""Seconds for the namespace controller to delete a block's namespaces (VMs wait for
virt-controller to stop their VMIs and drop its finalizer)."""


@pytest.fixture(scope="module")
def docs_engine(real_engine: RealEngine) -> Iterator[RealEngine]:
    """An engine for the docs' blocks alone (see the module docstring)."""
    del real_engine  # only its xdist group
    with running_engine("the docs' real engine") as engine:
        yield engine


@pytest.fixture
def lab(docs_engine: RealEngine, tmp_path: Path, eventually: Eventually) -> Iterator[Lab]:
    """The docs' engine with nothing of an earlier block in it, instant copies."""
    api = docs_engine.api()
    names = (seed.NAMESPACE, seed.LEASE_NAMESPACE)
    for name in names:
        response = api.delete(url=f"namespaces/{name}")
        if response.status_code != 404:
            api.raise_for_status(response)
    eventually(
        lambda: all(api.get(url=f"namespaces/{n}").status_code == 404 for n in names),
        timeout=EMPTIED_WITHIN,
        what=f"namespaces {names} deleted",
    )
    with Lab(docs_engine, tmp_path / "lab", copy_seconds_per_gib=0.0) as started:
        yield started


@pytest.mark.usefixtures("docs_engine")  # so it joins a real-engine group (``lab`` comes late)
@pytest.mark.parametrize("block", cli_blocks(), ids=lambda b: b.where)
def test_the_commands_of_a_block_print_what_the_docs_show(
    block: Block, tmp_path: Path, request: pytest.FixtureRequest, eventually: Eventually
) -> None:
    scenario = block.scenario or "none"
    assert scenario in SCENARIOS, f"{block.where}: unknown scenario {scenario!r}"
    if scenario == "none":
        cwd = workdir_for(tmp_path / "work", None)
    else:
        lab: Lab = request.getfixturevalue("lab")
        kubeconfig = lab.cp.write_kubeconfig(tmp_path / "admin.kubeconfig", lab.cp.admin_token)
        cwd = workdir_for(tmp_path / "work", kubeconfig)
        build(scenario, lab, cwd, eventually)
    for command in commands(block):
        assert command.is_cli, f"{command.where}: a block runs only {PROG} commands"
        check(command, run(command, cwd))
        if scenario != "none":  # as a reader's next command would, after CDI's clean-up
            settle(lab.api, eventually)


def deploy_commands() -> list[Command]:
    return [
        c
        for page in pages()
        for b in blocks(page)
        for c in commands(b)
        if c.argv[:1] in (["cp"], ["python3"], ["kubectl"]) and any("deploy/" in a for a in c.argv)
    ]


def test_the_install_commands_build_on_a_copy_of_deploy(tmp_path: Path) -> None:
    """`cp -r` an overlay, `generate.py` on it and `kubectl apply|delete -k` as kustomize
    builds, in the order the docs give them, on a copy of deploy/."""
    found = deploy_commands()
    assert found, "the docs no longer show how to install"
    shutil.copytree(ROOT / "deploy", tmp_path / "deploy")
    kustomize = ensure_kustomize(log=lambda _: None)
    for command in found:
        argv = command.argv
        if argv[0] == "cp":
            assert argv[1:2] == ["-r"], command.where
            shutil.rmtree(tmp_path / argv[3], ignore_errors=True)
            shutil.copytree(tmp_path / argv[2], tmp_path / argv[3])
            continue
        if argv[0] == "python3":
            done = subprocess.run(
                [sys.executable, *argv[1:]],
                cwd=tmp_path,
                capture_output=True,
                text=True,
                check=False,
            )
        else:
            assert argv[1] in ("apply", "delete") and argv[2] == "-k", command.where
            done = subprocess.run(
                [str(kustomize), "build", argv[3]],
                cwd=tmp_path,
                capture_output=True,
                text=True,
                check=False,
            )
        assert done.returncode == 0, f"{command.where}: $ {command.text}\n{done.stderr}"


def test_every_page_with_cli_blocks_is_found() -> None:
    """The parametrisation above reads the pages: a page whose blocks it missed would go
    untested (a guard against a broken reader, not the docs)."""
    found = {rel(b.page) for b in cli_blocks()}
    assert "README.md" in found
