"""Build (once) and locate the control-plane binaries and the generated CRDs.

Everything lands in ``${VMSR_CACHE_DIR:-~/.cache/vm-storage-reconciler}``, keyed so a
version bump never reuses a stale artefact:

- ``kube-<version>/kube-apiserver``    version from ``tools/k8s/go.mod``
- ``etcd-<version>/etcd``              version from ``tools/etcd/go.mod``
- ``controller-gen-<version>/controller-gen``  version from ``tools/crdgen/go.mod``
- ``crds-<hash>/*.yaml``               hash of tools/crdgen/go.{mod,sum} + testenv/crds.py
- ``source-controller-<version>/``     Flux source-controller + ``crds/`` (tools/flux-source)
- ``kustomize-controller-<version>/``  kustomize-controller + ``crds/`` (tools/flux-kustomize)
- ``pushgateway-<version>/pushgateway``  the Prometheus Pushgateway (tools/pushgateway)
- ``kustomize-<version>/kustomize``      kustomize, for deploy/ (tools/kustomize)
- ``promtool-<version>/promtool``        Prometheus's promtool, for the alert rules (tools/promtool)
- ``prometheus-operator-crds-<version>/``  the ServiceMonitor and PrometheusRule CRDs
  (tools/prometheus-operator; copied from the module, nothing built)

A warm call only checks that these paths exist and needs no Go toolchain. A cold call
builds what is missing with ``go build`` (``GOTOOLCHAIN=local CGO_ENABLED=0``), which
takes ~5-15 min for kube-apiserver on 2 cores. A file lock in the cache dir makes
concurrent callers wait for one build instead of building twice.

``ensure_flux`` does the same for the two Flux controllers the GitOps tests run
(``testenv.flux``); their CRDs are copied out of the upstream modules' ``config/crd/bases``
(located with ``go list -m``) at build time, so a warm run needs no Go either.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import os
import re
import shutil
import subprocess
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from testenv import crds

Log = Callable[[str], None]

REPO_ROOT = Path(__file__).resolve().parents[1]
TOOLS_DIR = REPO_ROOT / "tools"
MIN_GO = (1, 26)
_HEARTBEAT_SECONDS = 30.0


class MissingPrerequisiteError(EnvironmentError):
    """Something needed to build the test environment is not installed.

    The message says what is missing and how to get it.
    """


class BuildError(RuntimeError):
    """A build step ran but failed; the message carries the tail of its output."""


@dataclass(frozen=True)
class Binaries:
    """Paths of a complete, ready-to-run test environment."""

    kube_apiserver: Path
    etcd: Path
    crd_dir: Path


@dataclass(frozen=True)
class FluxBinaries:
    """Paths of the Flux controllers and the directories holding their CRDs."""

    source_controller: Path
    kustomize_controller: Path
    crd_dirs: tuple[Path, ...]


@dataclass(frozen=True)
class _GoBinary:
    """One binary built from a wrapper module in ``tools/``."""

    name: str
    cache_prefix: str
    module_dir: Path
    package: str
    version: str
    ldflags: str
    expected_minutes: str = "1-2"

    def path(self, cache: Path) -> Path:
        return cache / f"{self.cache_prefix}-{self.version}" / self.name


def cache_dir() -> Path:
    """The cache root: ``$VMSR_CACHE_DIR`` or ``~/.cache/vm-storage-reconciler``."""
    configured = os.environ.get("VMSR_CACHE_DIR")
    if configured:
        return Path(configured).expanduser()
    return Path.home() / ".cache" / "vm-storage-reconciler"


def ensure_all(log: Log = print) -> Binaries:
    """Return the binaries and CRD dir, building whatever is missing from the cache.

    Raises ``MissingPrerequisiteError`` if a build is needed and Go (>= 1.26) or the
    ``tools/`` wrapper modules are missing, and ``BuildError`` if a build fails.
    """
    cache = cache_dir()
    apiserver, etcd, controller_gen = _go_binaries()
    crd_dir = cache / f"crds-{crd_cache_key()}"
    wanted = (apiserver.path(cache), etcd.path(cache), crd_dir)
    if all(path.exists() for path in wanted):
        return Binaries(*wanted)

    cache.mkdir(parents=True, exist_ok=True)
    with _build_lock(cache / ".build.lock", log):
        # Re-check under the lock: another process may have built while we waited.
        for binary in (etcd, apiserver):
            if not binary.path(cache).exists():
                _go_build(binary, binary.path(cache), log)
        if not crd_dir.exists():
            if not controller_gen.path(cache).exists():
                _go_build(controller_gen, controller_gen.path(cache), log)
            _require_go()  # controller-gen loads packages through `go list`
            crds.generate(
                controller_gen=controller_gen.path(cache),
                module_dir=controller_gen.module_dir,
                out_dir=crd_dir,
                env=_go_env(),
                log=log,
            )
            log(f"CRDs written to {crd_dir}")
    return Binaries(*wanted)


def ensure_flux(log: Log = print) -> FluxBinaries:
    """Return Flux's source- and kustomize-controller and their CRDs, building what is missing.

    Same contract as ``ensure_all``: warm = only path checks; cold = ``go build`` from the
    wrapper modules ``tools/flux-source`` and ``tools/flux-kustomize`` under the shared
    build lock, ``MissingPrerequisiteError`` without Go, ``BuildError`` when a build fails.
    """
    cache = cache_dir()
    binaries = _flux_binaries()
    crd_dirs = tuple(_flux_crd_dir(binary, cache) for binary in binaries)
    if all(b.path(cache).exists() for b in binaries) and all(d.exists() for d in crd_dirs):
        return FluxBinaries(binaries[0].path(cache), binaries[1].path(cache), crd_dirs)

    cache.mkdir(parents=True, exist_ok=True)
    with _build_lock(cache / ".build.lock", log):
        for binary, crd_dir in zip(binaries, crd_dirs, strict=True):
            if not binary.path(cache).exists():
                _go_build(binary, binary.path(cache), log)
            if not crd_dir.exists():
                _copy_module_crds(binary, crd_dir, log)
    return FluxBinaries(binaries[0].path(cache), binaries[1].path(cache), crd_dirs)


def ensure_pushgateway(log: Log = print) -> Path:
    """Return the Prometheus Pushgateway binary (the metrics tests push to a real one),
    building it from ``tools/pushgateway`` when it is not cached. Same contract as
    ``ensure_all``: warm = a path check, no Go needed; cold = ``go build`` under the shared
    build lock (~1 min), ``MissingPrerequisiteError`` without Go."""
    cache = cache_dir()
    binary = _pushgateway_binary()
    target = binary.path(cache)
    if target.exists():
        return target
    cache.mkdir(parents=True, exist_ok=True)
    with _build_lock(cache / ".build.lock", log):
        if not target.exists():
            _go_build(binary, target, log)
    return target


def ensure_kustomize(log: Log = print) -> Path:
    """Return kustomize (deploy/'s overlays are built with it: the top-level manifests, the
    drift and dry-run tests), building it from ``tools/kustomize`` when it is not cached.
    Same contract as ``ensure_pushgateway``."""
    return _ensure_tool(_kustomize_binary(), log)


def ensure_promtool(log: Log = print) -> Path:
    """Return Prometheus's promtool (``check rules`` and ``test rules`` on deploy/'s alert
    rules), building it from ``tools/promtool`` when it is not cached. Same contract as
    ``ensure_pushgateway``; a cold build takes a few minutes (Prometheus is large)."""
    return _ensure_tool(_promtool_binary(), log)


MONITORING_CRDS = ("servicemonitors", "prometheusrules")


def ensure_monitoring_crds(log: Log = print) -> Path:
    """Return a directory with the Prometheus Operator's ServiceMonitor and PrometheusRule
    CRDs (deploy/components/monitoring is dry-run against them), copied out of the module
    ``tools/prometheus-operator`` pins (``example/prometheus-operator-crd``). Warm: a path
    check; cold: ``go mod download`` (~30 MB) under the shared build lock."""
    module = "github.com/prometheus-operator/prometheus-operator"
    module_dir = TOOLS_DIR / "prometheus-operator"
    version = module_version(module_dir / "go.mod", module)
    cache = cache_dir()
    target = cache / f"prometheus-operator-crds-{version}"
    if target.exists():
        return target
    cache.mkdir(parents=True, exist_ok=True)
    with _build_lock(cache / ".build.lock", log):
        if target.exists():
            return target
        go = _require_go()
        listed = subprocess.run(
            [go, "mod", "download", "-json", module],
            cwd=module_dir,
            env=_go_env(),
            capture_output=True,
            text=True,
            check=False,
        )
        if listed.returncode != 0:
            raise BuildError(f"go mod download {module} failed:\n{listed.stderr[-4000:]}")
        source = Path(json.loads(listed.stdout)["Dir"]) / "example/prometheus-operator-crd"
        tmp = Path(tempfile.mkdtemp(prefix=".monitoring-crds-", dir=cache))
        try:
            for name in MONITORING_CRDS:
                shutil.copyfile(source / f"monitoring.coreos.com_{name}.yaml", tmp / f"{name}.yaml")
            tmp.chmod(0o755)
            tmp.replace(target)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
        log(f"Prometheus Operator CRDs {version} copied to {target}")
    return target


def _ensure_tool(binary: _GoBinary, log: Log) -> Path:
    cache = cache_dir()
    target = binary.path(cache)
    if target.exists():
        return target
    cache.mkdir(parents=True, exist_ok=True)
    with _build_lock(cache / ".build.lock", log):
        if not target.exists():
            _go_build(binary, target, log)
    return target


def _kustomize_binary() -> _GoBinary:
    module = "sigs.k8s.io/kustomize/kustomize/v5"
    version = module_version(TOOLS_DIR / "kustomize/go.mod", module)
    return _GoBinary(
        name="kustomize",
        cache_prefix="kustomize",
        module_dir=TOOLS_DIR / "kustomize",
        package=module,  # the module root is package main
        version=version,
        # Without the stamp `kustomize version` says (devel).
        ldflags=f"-s -w -X sigs.k8s.io/kustomize/api/provenance.version={version}",
    )


def _promtool_binary() -> _GoBinary:
    module = "github.com/prometheus/prometheus"
    version = module_version(TOOLS_DIR / "promtool/go.mod", module)
    # Prometheus 3.x is tagged v0.3XX.Y in Go: v0.316.0 is Prometheus 3.16.0.
    minor = re.fullmatch(r"v0\.3(\d\d)\.(\d+)", version)
    stamp = f"3.{int(minor.group(1))}.{minor.group(2)}" if minor else version.lstrip("v")
    return _GoBinary(
        name="promtool",
        cache_prefix="promtool",
        module_dir=TOOLS_DIR / "promtool",
        package=f"{module}/cmd/promtool",
        version=version,
        ldflags=f"-s -w -X github.com/prometheus/common/version.Version={stamp}",
        expected_minutes="3-8",
    )


def _pushgateway_binary() -> _GoBinary:
    module = "github.com/prometheus/pushgateway"
    version = module_version(TOOLS_DIR / "pushgateway/go.mod", module)
    return _GoBinary(
        name="pushgateway",
        cache_prefix="pushgateway",
        module_dir=TOOLS_DIR / "pushgateway",
        package=module,  # the module root is package main
        version=version,
        # Without the stamp the gateway reports version "" on /api/v1/status.
        ldflags=f"-s -w -X github.com/prometheus/common/version.Version={version.lstrip('v')}",
    )


def _flux_binaries() -> tuple[_GoBinary, _GoBinary]:
    built = []
    for name, tools_dir in (
        ("source-controller", "flux-source"),
        ("kustomize-controller", "flux-kustomize"),
    ):
        module = f"github.com/fluxcd/{name}"
        built.append(
            _GoBinary(
                name=name,
                cache_prefix=name,
                module_dir=TOOLS_DIR / tools_dir,
                package=module,  # the module root is package main (upstream main.go)
                version=module_version(TOOLS_DIR / tools_dir / "go.mod", module),
                ldflags="-s -w",
                expected_minutes="3-6",
            )
        )
    return built[0], built[1]


def _flux_crd_dir(binary: _GoBinary, cache: Path) -> Path:
    return binary.path(cache).parent / "crds"


def _copy_module_crds(binary: _GoBinary, crd_dir: Path, log: Log) -> None:
    """Copy ``config/crd/bases/*.yaml`` of ``binary.package`` (a module) into ``crd_dir``.

    The module's directory in the Go module cache comes from ``go list -m -json``, run in
    the wrapper module so the pinned version is the one read. Written to a temp dir, then
    renamed, so a half-copied dir never looks complete.
    """
    go = _require_go()
    listed = subprocess.run(
        [go, "list", "-m", "-json", binary.package],
        cwd=binary.module_dir,
        env=_go_env(),
        capture_output=True,
        text=True,
        check=False,
    )
    if listed.returncode != 0:
        raise BuildError(f"go list -m {binary.package} failed:\n{listed.stderr[-4000:]}")
    module_root = json.loads(listed.stdout).get("Dir")
    if not module_root:
        raise BuildError(f"go list -m {binary.package}: module not in the Go module cache")
    sources = sorted((Path(module_root) / "config/crd/bases").glob("*.yaml"))
    if not sources:
        raise BuildError(f"no CRDs in {module_root}/config/crd/bases")
    tmp = Path(tempfile.mkdtemp(prefix=".crds-", dir=crd_dir.parent))
    try:
        for source in sources:
            shutil.copyfile(source, tmp / source.name)
        tmp.chmod(0o755)  # mkdtemp makes it 0700
        tmp.replace(crd_dir)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    log(f"{binary.name} CRDs ({len(sources)}) copied to {crd_dir}")


def crd_cache_key() -> str:
    """Hash of everything the generated CRDs depend on (12 hex chars)."""
    digest = hashlib.sha256()
    for path in (
        TOOLS_DIR / "crdgen/go.mod",
        TOOLS_DIR / "crdgen/go.sum",
        Path(crds.__file__),
    ):
        digest.update(path.name.encode() + b"\0" + _read_required(path) + b"\0")
    return digest.hexdigest()[:12]


def _go_binaries() -> tuple[_GoBinary, _GoBinary, _GoBinary]:
    kube_version = module_version(TOOLS_DIR / "k8s/go.mod", "k8s.io/kubernetes")
    major, minor = _major_minor(kube_version)
    stamp = "k8s.io/component-base/version"
    apiserver = _GoBinary(
        name="kube-apiserver",
        cache_prefix="kube",
        module_dir=TOOLS_DIR / "k8s",
        package="k8s.io/kubernetes/cmd/kube-apiserver",
        version=kube_version,
        # Without the stamp /version reports v0.0.0-master+$Format:%H$.
        ldflags=(
            f"-s -w -X {stamp}.gitVersion={kube_version}"
            f" -X {stamp}.gitMajor={major} -X {stamp}.gitMinor={minor}"
        ),
        expected_minutes="5-15",
    )
    etcd = _GoBinary(
        name="etcd",
        cache_prefix="etcd",
        module_dir=TOOLS_DIR / "etcd",
        # The module root of go.etcd.io/etcd/server/v3 is package main.
        package="go.etcd.io/etcd/server/v3",
        version=module_version(TOOLS_DIR / "etcd/go.mod", "go.etcd.io/etcd/server/v3"),
        ldflags="-s -w",
    )
    controller_gen = _GoBinary(
        name="controller-gen",
        cache_prefix="controller-gen",
        module_dir=TOOLS_DIR / "crdgen",
        package="sigs.k8s.io/controller-tools/cmd/controller-gen",
        version=module_version(TOOLS_DIR / "crdgen/go.mod", "sigs.k8s.io/controller-tools"),
        ldflags="-s -w",
    )
    return apiserver, etcd, controller_gen


def module_version(go_mod: Path, module: str) -> str:
    """The version ``go_mod`` requires for ``module`` (e.g. ``v1.36.3``)."""
    text = _read_required(go_mod).decode()
    match = re.search(rf"^\s*(?:require\s+)?{re.escape(module)}\s+(v\S+)", text, re.MULTILINE)
    if match is None:
        raise MissingPrerequisiteError(f"{go_mod} does not require {module}")
    return match.group(1)


def _major_minor(version: str) -> tuple[str, str]:
    match = re.fullmatch(r"v(\d+)\.(\d+)\.\d+.*", version)
    if match is None:
        raise BuildError(f"cannot parse Kubernetes version {version!r}")
    return match.group(1), match.group(2)


def _read_required(path: Path) -> bytes:
    try:
        return path.read_bytes()
    except FileNotFoundError:
        raise MissingPrerequisiteError(
            f"{path} is missing; it is part of the repository (tools/ wrapper modules)"
        ) from None


@contextmanager
def _build_lock(lock_path: Path, log: Log) -> Iterator[None]:
    with lock_path.open("a") as handle:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            log(f"waiting for another build to finish (lock {lock_path})")
            fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def _require_go() -> str:
    """Return the path of a usable ``go``; raise ``MissingPrerequisiteError`` otherwise."""
    go = shutil.which("go")
    hint = f"install Go >= {MIN_GO[0]}.{MIN_GO[1]} (https://go.dev/dl/) and put it on PATH"
    if go is None:
        raise MissingPrerequisiteError(f"Go toolchain not found on PATH: {hint}")
    out = subprocess.run([go, "version"], capture_output=True, text=True, check=False).stdout
    match = re.search(r"go(\d+)\.(\d+)", out)
    if match is None or (int(match.group(1)), int(match.group(2))) < MIN_GO:
        raise MissingPrerequisiteError(f"{go} reports {out.strip()!r}: {hint}")
    return go


def _go_env() -> dict[str, str]:
    # GOTOOLCHAIN=local: a go-line bump must fail here, not download a toolchain.
    return {**os.environ, "GOTOOLCHAIN": "local", "CGO_ENABLED": "0"}


def _go_build(binary: _GoBinary, target: Path, log: Log) -> None:
    """``go build`` one binary into ``target`` atomically (temp file, then rename)."""
    go = _require_go()
    _read_required(binary.module_dir / "go.sum")
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(prefix=f".{binary.name}-", dir=target.parent)
    os.close(fd)
    tmp = Path(tmp_name)
    cmd = [go, "build", "-trimpath", "-ldflags", binary.ldflags, "-o", str(tmp), binary.package]
    log(
        f"building {binary.name} {binary.version} from {binary.module_dir}"
        f" (a cold build takes ~{binary.expected_minutes} min on 2 cores)"
    )
    started = time.monotonic()
    try:
        output = _run_with_heartbeat(cmd, binary.module_dir, binary.name, started, log)
        if output is not None:
            raise BuildError(f"building {binary.name} failed:\n{output}")
        tmp.chmod(0o755)
        tmp.replace(target)
    finally:
        tmp.unlink(missing_ok=True)
    log(f"built {target} in {time.monotonic() - started:.0f}s")


def _run_with_heartbeat(
    cmd: list[str], cwd: Path, what: str, started: float, log: Log
) -> str | None:
    """Run ``cmd``, logging a progress line every 30 s; return None or the error output tail."""
    with tempfile.TemporaryFile(mode="w+") as output:
        proc = subprocess.Popen(
            cmd, cwd=cwd, env=_go_env(), stdout=output, stderr=subprocess.STDOUT, text=True
        )
        try:
            while True:
                try:
                    proc.wait(timeout=_HEARTBEAT_SECONDS)
                    break
                except subprocess.TimeoutExpired:
                    log(f"  still building {what} ({time.monotonic() - started:.0f}s elapsed)")
        finally:
            if proc.poll() is None:  # interrupted (e.g. Ctrl-C): do not leave go running
                proc.kill()
                proc.wait()
        if proc.returncode == 0:
            return None
        output.seek(0)
        return output.read()[-4000:]
