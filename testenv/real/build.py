"""Build (once) and locate what the real engine runs: upstream KubeVirt, CDI, KWOK and the
Kubernetes scheduler and controller manager, plus KubeVirt's and CDI's generated manifests.

Everything lands in the cache of ``testenv.binaries`` (``~/.cache/vm-storage-reconciler``),
keyed so a version bump never reuses a stale artefact:

- ``kubevirt-<version>/{virt-controller,virt-api}``        tools/kubevirt (kubevirt.io/kubevirt)
- ``kubevirt-manifests-<hash>/manifests.yaml``   virt-operator's CRDs, RBAC and virt-api's
  webhook configurations, printed by tools/kubevirt/manifests (hash of go.mod, go.sum, main.go)
- ``cdi-<version>/cdi-controller``               tools/cdi (kubevirt.io/containerized-data-importer)
- ``cdi-manifests-<hash>/manifests.yaml``        cdi-operator's RBAC for cdi-controller, printed
  by tools/cdi/manifests
- ``cdi-crds-<hash>/*.yaml``                     controller-gen over CDI-api at the same version
  (hash of tools/cdi/go.{mod,sum}, controller-gen's version and this file)
- ``kwok-<version>/kwok``                        tools/kwok (sigs.k8s.io/kwok)
- ``kube-<version>/{kube-scheduler,kube-controller-manager}``  tools/kube-controllers, whose
  Kubernetes version must be tools/k8s's (the API server's)

Same contract as ``testenv.binaries.ensure_all``: warm = path checks only, no Go needed; cold
= ``go build`` under the shared build lock with a progress line per binary, about 12 min on 2
cores in all. When the Go module proxy refuses a module the ``BuildError`` names it.
"""

from __future__ import annotations

import hashlib
import os
import re
import subprocess
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

from testenv import binaries
from testenv.binaries import TOOLS_DIR, BuildError, Log, _GoBinary, cache_dir, module_version

KUBEVIRT_MODULE = "kubevirt.io/kubevirt"
CDI_MODULE = "kubevirt.io/containerized-data-importer"
CDI_API_MODULE = "kubevirt.io/containerized-data-importer-api"
KWOK_MODULE = "sigs.k8s.io/kwok"
KUBERNETES_MODULE = "k8s.io/kubernetes"

CDI_API_PACKAGES = (
    f"{CDI_API_MODULE}/pkg/apis/core/v1beta1",
    # cdi-controller watches forklift's populator sources too.
    f"{CDI_API_MODULE}/pkg/apis/forklift/v1beta1",
)


@dataclass(frozen=True)
class RealBinaries:
    """Paths of everything the real engine runs beside etcd and kube-apiserver."""

    virt_controller: Path
    virt_api: Path
    kubevirt_manifests: Path  # one YAML stream
    cdi_controller: Path
    cdi_manifests: Path  # one YAML stream
    cdi_crd_dir: Path
    kwok: Path
    kube_scheduler: Path
    kube_controller_manager: Path
    kubevirt_version: str
    cdi_version: str
    kwok_version: str
    kube_version: str


def go_binaries() -> dict[str, _GoBinary]:
    """The upstream binaries of the real engine, by name, in build order (small first)."""
    kubevirt = module_version(TOOLS_DIR / "kubevirt/go.mod", KUBEVIRT_MODULE)
    cdi = module_version(TOOLS_DIR / "cdi/go.mod", CDI_MODULE)
    kwok = module_version(TOOLS_DIR / "kwok/go.mod", KWOK_MODULE)
    kube = kube_controllers_version()
    major, minor = kube.lstrip("v").split(".")[:2]
    kube_stamp = "k8s.io/component-base/version"
    kube_ldflags = (
        f"-s -w -X {kube_stamp}.gitVersion={kube}"
        f" -X {kube_stamp}.gitMajor={major} -X {kube_stamp}.gitMinor={minor}"
    )
    kubevirt_ldflags = (
        f"-s -w -X kubevirt.io/client-go/version.gitVersion={kubevirt}"
        " -X kubevirt.io/client-go/version.gitTreeState=clean"
    )
    found = [
        _GoBinary("cdi-controller", "cdi", TOOLS_DIR / "cdi",
                  f"{CDI_MODULE}/cmd/cdi-controller", cdi,
                  f"-s -w -X {CDI_MODULE}/pkg/version.gitVersion={cdi}", "1-3"),
        _GoBinary("virt-controller", "kubevirt", TOOLS_DIR / "kubevirt",
                  f"{KUBEVIRT_MODULE}/cmd/virt-controller", kubevirt, kubevirt_ldflags, "2-4"),
        _GoBinary("virt-api", "kubevirt", TOOLS_DIR / "kubevirt",
                  f"{KUBEVIRT_MODULE}/cmd/virt-api", kubevirt, kubevirt_ldflags, "1-2"),
        _GoBinary("kwok", "kwok", TOOLS_DIR / "kwok", f"{KWOK_MODULE}/cmd/kwok", kwok,
                  f"-s -w -X sigs.k8s.io/kwok/pkg/consts.Version={kwok.lstrip('v')}", "2-3"),
        _GoBinary("kube-scheduler", "kube", TOOLS_DIR / "kube-controllers",
                  f"{KUBERNETES_MODULE}/cmd/kube-scheduler", kube, kube_ldflags, "3-5"),
        _GoBinary("kube-controller-manager", "kube", TOOLS_DIR / "kube-controllers",
                  f"{KUBERNETES_MODULE}/cmd/kube-controller-manager", kube, kube_ldflags, "2-4"),
    ]
    return {binary.name: binary for binary in found}


def kube_controllers_version() -> str:
    """The Kubernetes version of tools/kube-controllers; BuildError unless it is the API
    server's (tools/k8s): a scheduler or controller manager of another minor would speak a
    different API."""
    controllers = module_version(TOOLS_DIR / "kube-controllers/go.mod", KUBERNETES_MODULE)
    apiserver = module_version(TOOLS_DIR / "k8s/go.mod", KUBERNETES_MODULE)
    if controllers != apiserver:
        raise BuildError(
            f"tools/kube-controllers builds Kubernetes {controllers} but tools/k8s (the API "
            f"server) {apiserver}: they must be the same version"
        )
    return controllers


def manifests_dir(cache: Path, wrapper: str = "kubevirt") -> Path:
    """Where the manifests printed by tools/<wrapper>/manifests are cached."""
    return cache / f"{wrapper}-manifests-{_hash(TOOLS_DIR / wrapper, 'manifests/main.go')}"


def cdi_crd_dir(cache: Path) -> Path:
    """Where the CDI CRDs of the current tools/cdi are cached."""
    gen = binaries._go_binaries()[2]
    extra = f"{gen.version}\0{Path(__file__).read_text()}"
    return cache / f"cdi-crds-{_hash(TOOLS_DIR / 'cdi', extra=extra)}"


def _hash(module_dir: Path, *files: str, extra: str = "") -> str:
    digest = hashlib.sha256(extra.encode())
    for name in ("go.mod", "go.sum", *files):
        digest.update(name.encode() + b"\0" + (module_dir / name).read_bytes() + b"\0")
    return digest.hexdigest()[:12]


def ensure_real(log: Log = print) -> RealBinaries:
    """Return the real engine's binaries and manifests, building whatever is missing.

    Raises ``MissingPrerequisiteError`` without Go (cold only) and ``BuildError`` when a
    build fails, naming the module when the Go module proxy refused one.
    """
    cache = cache_dir()
    built = go_binaries()
    manifests = manifests_dir(cache) / "manifests.yaml"
    cdi_manifests = manifests_dir(cache, "cdi") / "manifests.yaml"
    crds = cdi_crd_dir(cache)
    if not all(b.path(cache).exists() for b in built.values()) or not all(
            p.exists() for p in (manifests, cdi_manifests, crds)):
        cache.mkdir(parents=True, exist_ok=True)
        started = time.monotonic()
        with binaries._build_lock(cache / ".build.lock", log):
            missing = [b for b in built.values() if not b.path(cache).exists()]
            for index, binary in enumerate(missing, 1):
                log(f"[{index}/{len(missing)}] {binary.name} ({binary.package}@{binary.version})")
                _build(binary, log)
            if not manifests.exists():
                _write_manifests("kubevirt", KUBEVIRT_MODULE, "kubevirt", manifests, log)
            if not cdi_manifests.exists():
                _write_manifests("cdi", CDI_MODULE, "cdi", cdi_manifests, log)
            if not crds.exists():
                _write_cdi_crds(crds, log)
        log(f"real engine built in {time.monotonic() - started:.0f}s")
    return RealBinaries(
        virt_controller=built["virt-controller"].path(cache),
        virt_api=built["virt-api"].path(cache),
        kubevirt_manifests=manifests,
        cdi_controller=built["cdi-controller"].path(cache),
        cdi_manifests=cdi_manifests,
        cdi_crd_dir=crds,
        kwok=built["kwok"].path(cache),
        kube_scheduler=built["kube-scheduler"].path(cache),
        kube_controller_manager=built["kube-controller-manager"].path(cache),
        kubevirt_version=built["virt-controller"].version,
        cdi_version=built["cdi-controller"].version,
        kwok_version=built["kwok"].version,
        kube_version=built["kube-scheduler"].version,
    )


def _build(binary: _GoBinary, log: Log) -> None:
    try:
        binaries._go_build(binary, binary.path(cache_dir()), log)
    except BuildError as error:
        refused = proxy_refusal(str(error))
        if refused is None:
            raise
        raise BuildError(
            f"building {binary.name}: the Go module proxy refused {refused} "
            f"(wrapper module {binary.module_dir.relative_to(TOOLS_DIR.parent)})"
        ) from error


_REFUSAL = re.compile(
    r"(?P<module>[\w.\-/~]+@v[\w.\-+]+): (?:reading (?P<url>\S+): (?P<status>\d{3}[^\n]*)"
    r"(?:\n\s*server response:\s*(?P<response>[^\n]*))?|(?P<other>invalid version:[^\n]*))"
)


def proxy_refusal(output: str) -> str | None:
    """The first module version the Go module proxy refused in ``go`` output, as
    ``module@version (403 Forbidden: This module version is not available.)``; None if the
    output shows no refusal (a compile error, say)."""
    match = _REFUSAL.search(output)
    if match is None:
        return None
    if match["other"]:
        return f"{match['module']} ({match['other'].strip()})"
    reason = match["status"].strip()
    if match["response"]:
        reason += f": {match['response'].strip()}"
    return f"{match['module']} ({reason})"


def _write_manifests(wrapper: str, module: str, namespace: str, target: Path,
                     log: Log) -> None:
    """Build tools/<wrapper>/manifests and write what it prints to ``target`` atomically."""
    module_dir = TOOLS_DIR / wrapper
    target.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix=f".{wrapper}-manifests-", dir=target.parent) as tmp:
        program = _GoBinary(f"{wrapper}-manifests", f"{wrapper}-manifests", module_dir,
                            "./manifests", module_version(module_dir / "go.mod", module),
                            "-s -w", "1-5")
        _build_to(program, Path(tmp) / "manifests", log)
        out = Path(tmp) / "manifests.yaml"
        with out.open("wb") as handle:
            run = subprocess.run([str(Path(tmp) / "manifests"), "-namespace", namespace],
                                 stdout=handle, stderr=subprocess.PIPE, check=False)
        if run.returncode != 0:
            raise BuildError(f"tools/{wrapper}/manifests failed: "
                             f"{run.stderr.decode()[-4000:]}")
        out.replace(target)
    log(f"{wrapper} manifests written to {target}")


def _build_to(binary: _GoBinary, target: Path, log: Log) -> None:
    try:
        binaries._go_build(binary, target, log)
    except BuildError as error:
        refused = proxy_refusal(str(error))
        if refused is None:
            raise
        raise BuildError(f"building {binary.name}: the Go module proxy refused {refused}") \
            from error


def _write_cdi_crds(target: Path, log: Log) -> None:
    """controller-gen over CDI-api at the version tools/cdi pins; every CRD it emits."""
    gen = binaries._go_binaries()[2]
    cache = cache_dir()
    if not gen.path(cache).exists():
        binaries._go_build(gen, gen.path(cache), log)
    binaries._require_go()
    target.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix=".cdi-crds-", dir=target.parent) as tmp:
        out = Path(tmp) / "crds"
        cmd = [str(gen.path(cache)), "crd", *(f"paths={p}" for p in CDI_API_PACKAGES),
               f"output:crd:dir={out}"]
        log(f"generating CDI CRDs: {' '.join(cmd[1:])}")
        run = subprocess.run(cmd, cwd=TOOLS_DIR / "cdi", env=binaries._go_env(),
                             capture_output=True, text=True, check=False)
        if run.returncode != 0:
            refused = proxy_refusal(run.stderr)
            what = f"the Go module proxy refused {refused}" if refused else run.stderr[-4000:]
            raise BuildError(f"controller-gen over CDI-api failed: {what}")
        written = sorted(out.glob("*.yaml"))
        if not written:
            raise BuildError("controller-gen over CDI-api wrote no CRD")
        out.chmod(0o755)
        os.replace(out, target)
    log(f"CDI CRDs ({len(written)}) written to {target}")
