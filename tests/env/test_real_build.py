"""Building the real engine: versions that must agree, and a refused module named clearly."""

from __future__ import annotations

from pathlib import Path

import pytest

from testenv.binaries import TOOLS_DIR, BuildError, module_version
from testenv.real import build

# What `go build` printed when the proxy refused CDI v1.66.0 on this machine.
REFUSED = (
    "go: downloading kubevirt.io/containerized-data-importer v1.66.0\n"
    "kubevirt.io/containerized-data-importer@v1.66.0: reading https://proxy.golang.org/"
    "kubevirt.io/containerized-data-importer/@v/v1.66.0.zip: 403 Forbidden\n"
    "\tserver response: This module version is not available.\n"
)


def test_a_refused_module_is_named_with_the_proxy_answer() -> None:
    assert build.proxy_refusal(REFUSED) == (
        "kubevirt.io/containerized-data-importer@v1.66.0 (403 Forbidden: This module version "
        "is not available.)"
    )
    assert build.proxy_refusal(
        "go: k8s.io/cri-streaming@v0.0.0: invalid version: unknown revision v0.0.0"
    ) == "k8s.io/cri-streaming@v0.0.0 (invalid version: unknown revision v0.0.0)"
    assert build.proxy_refusal("./main.go:3:2: undefined: x") is None


def test_the_scheduler_and_controller_manager_are_the_api_servers_version() -> None:
    assert build.kube_controllers_version() == module_version(
        TOOLS_DIR / "k8s/go.mod", "k8s.io/kubernetes"
    )


def test_every_upstream_binary_is_pinned_at_the_version_the_reference_found_buildable() -> None:
    versions = {name: binary.version for name, binary in build.go_binaries().items()}
    assert versions["virt-controller"] == versions["virt-api"] == "v1.8.4"
    assert versions["cdi-controller"] == "v1.65.0"
    assert versions["kwok"] == "v0.8.0"
    # CDI's CRDs come from CDI-api at the controller's version.
    assert module_version(TOOLS_DIR / "cdi/go.mod", build.CDI_API_MODULE) == "v1.65.0"


def test_a_version_mismatch_is_a_build_error(monkeypatch: pytest.MonkeyPatch) -> None:
    def skewed(path: Path, module: str) -> str:
        return "v1.35.0" if "kube-controllers" in str(path) else module_version(path, module)

    monkeypatch.setattr(build, "module_version", skewed)
    with pytest.raises(BuildError, match="must be the same version"):
        build.kube_controllers_version()
