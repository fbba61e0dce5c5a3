"""The image, built and run: deploy/image/build.sh (Debian's buildah on an mmdebstrap base,
cached), then its entrypoint run with `buildah run` for `--version`, `validate` and `plan`
against the real engine, each compared with what the host prints.

Never skipped silently: a machine where buildah cannot run fails this test with the reason;
only ``VMSR_SKIP_IMAGE_TEST=1`` skips it, explicitly. A warm build (base and layers cached,
nothing changed) takes seconds; a cold one a few minutes (the base, then pip).
"""

from __future__ import annotations

import base64
import json
import os
import shutil
import subprocess
import sys
import tomllib
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pykube
import pytest
import yaml

from testenv import seed
from testenv.controlplane import ControlPlane
from testenv.real.engine import RealEngine
from tests.support.kube import Eventually

# One worker builds and runs the image (tests/conftest.py puts a module with a test on the
# real engine in one group): two would both unpack it, and build.sh holds a lock.

ROOT = Path(__file__).resolve().parents[2]
BUILD = ROOT / "deploy/image/build.sh"
OPT_OUT = "VMSR_SKIP_IMAGE_TEST"
BUILD_TIMEOUT = 1800  # a cold build on a busy 2-core machine: the base, then pip


@dataclass
class Image:
    name: str
    storage: list[str]
    config: dict[str, Any]
    size: int
    container: str

    def run(
        self, *args: str, mounts: dict[Path, str] | None = None
    ) -> subprocess.CompletedProcess[str]:
        """The image's ENTRYPOINT with ``args`` (its user, env and working directory), on the
        host's network (the local API server listens on 127.0.0.1)."""
        volumes = [f"--volume={host}:{inside}:ro" for host, inside in (mounts or {}).items()]
        command = [
            "buildah", *self.storage, "run", "--isolation", "chroot", "--network", "host",
            *volumes, self.container, "--", *self.config["Entrypoint"], *args,
        ]  # fmt: skip
        return subprocess.run(command, capture_output=True, text=True, timeout=300, check=False)


def _buildah(storage: list[str], *args: str) -> str:
    done = subprocess.run(
        ["buildah", *storage, *args], capture_output=True, text=True, timeout=300, check=False
    )
    assert done.returncode == 0, f"buildah {' '.join(args)}: {done.stderr}"
    return done.stdout


@pytest.fixture(scope="module")
def image() -> Iterator[Image]:
    if os.environ.get(OPT_OUT) == "1":
        pytest.skip(f"{OPT_OUT}=1: the image smoke test is switched off explicitly")
    missing = [tool for tool in ("buildah", "mmdebstrap") if shutil.which(tool) is None]
    if missing:
        pytest.fail(
            f"cannot build the image here: {', '.join(missing)} not installed "
            f"(apt-get install buildah mmdebstrap; .ci/run does). To skip this test on "
            f"purpose, set {OPT_OUT}=1.",
            pytrace=False,
        )
    built = subprocess.run(
        [str(BUILD)], capture_output=True, text=True, timeout=BUILD_TIMEOUT, check=False
    )
    if built.returncode != 0:
        pytest.fail(
            f"deploy/image/build.sh failed (exit {built.returncode}); set {OPT_OUT}=1 to skip "
            f"this test on purpose:\n{built.stderr[-4000:]}",
            pytrace=False,
        )
    print(built.stderr, file=sys.stderr)  # the build's timings, for the log
    name = built.stdout.split()[-1]
    storage = subprocess.run(
        [str(BUILD), "--print-storage"], capture_output=True, text=True, check=True
    ).stdout.split()
    (inspected,) = (json.loads(_buildah(storage, "inspect", "--type", "image", name)),)
    shown = json.loads(_buildah(storage, "images", "--json", name))[0]["size"]  # "253 MB"
    number, unit = shown.split()
    size = int(float(number) * {"B": 1, "kB": 1e3, "MB": 1e6, "GB": 1e9}[unit])
    container = _buildah(storage, "from", "--pull-never", name).strip()
    try:
        yield Image(name, storage, inspected["OCIv1"]["config"], size, container)
    finally:
        _buildah(storage, "rm", container)


def containerfile_entrypoint() -> list[str]:
    text = (ROOT / "Containerfile").read_text()
    (line,) = [ln for ln in text.splitlines() if ln.startswith("ENTRYPOINT ")]
    entry: list[str] = json.loads(line.removeprefix("ENTRYPOINT "))
    return entry


def host(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    """The same command line with the host's installed console script."""
    script = Path(sys.executable).parent / containerfile_entrypoint()[0]
    return subprocess.run(
        [str(script), *args], cwd=cwd, capture_output=True, text=True, timeout=300, check=False
    )


def test_the_image_is_labelled_and_runs_the_cli_as_the_pods_user(image: Image) -> None:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    labels = image.config["Labels"]
    assert labels["org.opencontainers.image.version"] == project["version"]
    revision = labels["org.opencontainers.image.revision"].removesuffix("-dirty")
    built_from = subprocess.run(  # this checkout's HEAD, or (others commit meanwhile) before it
        ["git", "-C", str(ROOT), "merge-base", "--is-ancestor", revision, "HEAD"], check=False
    )
    assert built_from.returncode == 0, f"revision {revision} is not this checkout's"
    assert labels["org.opencontainers.image.source"].startswith("https://")
    assert image.config["User"] == "65532:65532", "the pods' runAsUser/runAsGroup"
    assert image.config["Entrypoint"] == containerfile_entrypoint()
    whoami = subprocess.run(
        ["buildah", *image.storage, "run", "--isolation", "chroot", image.container, "--", "id"],
        capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip
    assert whoami.stdout.startswith("uid=65532 gid=65532"), whoami
    print(f"image {image.name}: {image.size / 1e6:.0f} MB", file=sys.stderr)
    assert image.size < 400e6, "the Debian base keeps it small"


@pytest.fixture(scope="module")
def control_plane(real_engine: RealEngine) -> ControlPlane:
    """The real engine's control plane: the image's ``plan`` reads VMs upstream virt-controller
    runs and DataVolumes upstream cdi-controller imported."""
    return real_engine.control_plane


@pytest.fixture(scope="module")
def api(real_engine: RealEngine) -> pykube.HTTPClient:
    """Admin client of the real engine."""
    return real_engine.api()


@pytest.fixture(scope="module")
def workdir(tmp_path_factory: pytest.TempPathFactory, control_plane: ControlPlane) -> Path:
    """A directory readable by the image's user, as the commands' working directory: the
    repository's plans, and a self-contained kubeconfig (the CA inline) for the local API
    server."""
    where = tmp_path_factory.mktemp("image")
    where.chmod(0o755)
    shutil.copytree(ROOT / "plans", where / "plans")
    config = yaml.safe_load(control_plane.kubeconfig.read_text())
    for cluster in config["clusters"]:
        ca = Path(cluster["cluster"].pop("certificate-authority", control_plane.ca_file))
        cluster["cluster"]["certificate-authority-data"] = base64.b64encode(
            ca.read_bytes()
        ).decode()
    (where / "kubeconfig").write_text(yaml.safe_dump(config))
    (where / "kubeconfig").chmod(0o644)  # the image runs as 65532; a test-only admin token
    return where


def test_version_and_validate_print_what_the_host_prints(image: Image, workdir: Path) -> None:
    mounts = {workdir / "plans": "/tmp/plans"}
    for args in (
        ["--version"],
        ["validate", "plans/seed"],
        ["validate", "plans/seed", "-o", "json"],
    ):
        inside = image.run(*args, mounts=mounts)
        outside = host(*args, cwd=workdir)
        assert (inside.returncode, inside.stdout) == (outside.returncode, outside.stdout), (
            args,
            inside.stderr,
        )
    assert image.run("--version").stdout.split() == ["vm-storage-reconciler", project_version()]


def project_version() -> str:
    return str(tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["version"])


def test_plan_against_the_local_api_server_prints_what_the_host_prints(
    image: Image, workdir: Path, api: pykube.HTTPClient, eventually: Eventually
) -> None:
    seed.seed(api)  # mig-vm/vm-fedora (running) and mig-vm/vm-archive (stopped)
    args = ["plan", "plans/seed", "--kubeconfig", "kubeconfig", "-o", "json"]

    def settled() -> bool:
        done = host(*args, cwd=workdir)
        actions = {vm["name"]: vm["action"] for vm in json.loads(done.stdout or "{}")["vms"]}
        return actions == {"vm-fedora": "MoveLive", "vm-archive": "MoveOffline"}

    eventually(settled, timeout=60, what="the seed VMs running and imported")
    mounts = {workdir / "plans": "/tmp/plans", workdir / "kubeconfig": "/tmp/kubeconfig"}

    inside = image.run(*args, mounts=mounts)
    outside = host(*args, cwd=workdir)

    assert inside.returncode == outside.returncode == 1, inside.stderr  # changes pending
    assert json.loads(inside.stdout) == json.loads(outside.stdout)
    text = image.run(*args[:-2], mounts=mounts)
    assert text.stdout == host(*args[:-2], cwd=workdir).stdout
    assert "VM mig-vm/vm-fedora (running, plan fedora-to-ceph): live" in text.stdout
