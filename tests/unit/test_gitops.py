"""GitOps facts the reconciler depends on: our field manager's name, the Flux ignore rule's
shape, and who a VM's managedFields say rewrote its volumes."""

from __future__ import annotations

from typing import Any

import pytest

from reconciler.diff.gitops import field_owners, flux_ignore_rule, pointers, volumes_writer
from reconciler.model import names
from tests.support.factories import vm

VOLUMES: dict[str, Any] = {"f:spec": {"f:template": {"f:spec": {"f:volumes": {}}}}}
FLUX_LABELS = {
    "kustomize.toolkit.fluxcd.io/name": "apps",
    "kustomize.toolkit.fluxcd.io/namespace": "flux-system",
}


def test_our_field_manager_never_starts_with_kubectl() -> None:
    """kustomize-controller hands every field of a manager whose name starts with "kubectl"
    (and of "before-first-apply" and its own pre-SSA name) to itself before each apply, and
    then drops what Git lacks (tests/env/test_flux.py shows it on a real controller). Our
    writes must never be taken over that way."""
    for prefix in ("kubectl", "before-first-apply", names.FLUX_KUSTOMIZE_MANAGER):
        assert not names.FIELD_MANAGER.startswith(prefix)


def test_the_flux_ignore_rule_names_the_moved_paths_as_json_pointers() -> None:
    rule = flux_ignore_rule(vm("vm-a", namespace="team"))

    assert rule == {
        "paths": [
            "/spec/template/spec/volumes",
            "/spec/dataVolumeTemplates",
            "/spec/updateVolumesStrategy",
            "/spec/runStrategy",
        ],
        "target": {
            "group": "kubevirt.io",
            "kind": "VirtualMachine",
            "name": "vm-a",
            "namespace": "team",
        },
    }
    assert all(p.startswith("/") and "." not in p for p in pointers())


def managed(*entries: tuple[str, str, dict[str, Any]]) -> list[dict[str, Any]]:
    return [{"manager": m, "operation": op, "fieldsV1": f} for m, op, f in entries]


def vm_obj(
    entries: list[dict[str, Any]],
    labels: dict[str, str] | None = None,
    annotations: dict[str, str] | None = None,
) -> dict[str, Any]:
    return {
        "metadata": {
            "name": "vm1",
            "namespace": "ns",
            "labels": labels or {},
            "annotations": annotations or {},
            "managedFields": entries,
        }
    }


@pytest.mark.parametrize(
    ("entries", "labels", "annotations", "expected"),
    [
        (
            managed(("kustomize-controller", "Apply", VOLUMES)),
            FLUX_LABELS,
            {},
            "Flux Kustomization flux-system/apps",
        ),
        (
            managed(("helm-controller", "Update", VOLUMES)),
            {"helm.toolkit.fluxcd.io/name": "vms", "helm.toolkit.fluxcd.io/namespace": "ns"},
            {},
            "Flux HelmRelease ns/vms",
        ),
        (
            managed(("argocd-controller", "Apply", VOLUMES)),
            {},
            {"argocd.argoproj.io/tracking-id": "shop:kubevirt.io/VirtualMachine:ns/vm1"},
            "Argo CD Application shop",
        ),
        (
            managed(("kubectl-edit", "Update", VOLUMES)),
            FLUX_LABELS,
            {},
            "field manager kubectl-edit",
        ),
        # Only we own the volumes (or nobody is recorded): nobody to name.
        (managed((names.FIELD_MANAGER, "Update", VOLUMES)), FLUX_LABELS, {}, ""),
        ([], FLUX_LABELS, {}, ""),
        # Another manager owns other fields only.
        (
            managed(("kustomize-controller", "Apply", {"f:spec": {"f:running": {}}})),
            FLUX_LABELS,
            {},
            "",
        ),
    ],
)
def test_volumes_writer_names_who_last_wrote_the_volumes(
    entries: list[dict[str, Any]],
    labels: dict[str, str],
    annotations: dict[str, str],
    expected: str,
) -> None:
    assert volumes_writer(vm_obj(entries, labels, annotations)) == expected


def test_field_owners_skip_subresource_entries() -> None:
    entries = managed(("virt-controller", "Update", VOLUMES))
    entries[0]["subresource"] = "status"

    assert field_owners(vm_obj(entries), ("f:spec", "f:template", "f:spec", "f:volumes")) == ()
