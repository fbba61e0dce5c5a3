"""KubeVirt/CDI CRDs for the test control plane: generation and post-processing.

The schemas come from the real Go API types: ``controller-gen crd`` runs over
``kubevirt.io/api/core/v1``, ``kubevirt.io/api/snapshot/v1beta1`` and
``containerized-data-importer-api/.../core/v1beta1``
(versions pinned in ``tools/crdgen/go.mod``). controller-gen emits every kind it finds;
only the kinds in ``KEPT`` are installed.

KubeVirt's Go types carry no kubebuilder subresource/printer-column/short-name markers,
because KubeVirt's virt-operator adds them in code
(``pkg/virt-operator/resource/generate/components/crds.go``). ``postprocess`` adds the
same names, columns and subresources here. What upstream does, and therefore what we do:

- VirtualMachine, VirtualMachineInstanceMigration, KubeVirt, VirtualMachineSnapshot:
  ``subresources.status``.
- VirtualMachineInstance: **no** status subresource (upstream ``NewVirtualMachineInstanceCrd``
  sets none; virt-handler writes VMI status through the main resource).
- Upstream also serves ``v1alpha3`` with the same schema; only ``v1`` is generated here
  (likewise VirtualMachineSnapshot: upstream also serves ``v1alpha1``; only ``v1beta1`` here).

CDI's types do carry markers, so DataVolume and StorageProfile come out of controller-gen
complete; ``EXPECTED`` still checks them so a marker change upstream fails loudly here
instead of silently changing the API under test.

This module's own source is part of the cache key of the generated CRDs (see
``testenv.binaries``), so editing it regenerates them.
"""

from __future__ import annotations

import copy
import subprocess
import tempfile
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from testenv import fastyaml

KUBEVIRT_API_PACKAGE = "kubevirt.io/api/core/v1"
SNAPSHOT_API_PACKAGE = "kubevirt.io/api/snapshot/v1beta1"
CDI_API_PACKAGE = "kubevirt.io/containerized-data-importer-api/pkg/apis/core/v1beta1"


@dataclass(frozen=True)
class PrinterColumn:
    """One ``additionalPrinterColumns`` entry (priority 0 unless given)."""

    name: str
    type: str
    json_path: str
    description: str = ""
    priority: int = 0

    def to_api(self) -> dict[str, Any]:
        """Return the apiextensions/v1 ``CustomResourceColumnDefinition`` dict."""
        column: dict[str, Any] = {"name": self.name, "type": self.type, "jsonPath": self.json_path}
        if self.description:
            column["description"] = self.description
        if self.priority:
            column["priority"] = self.priority
        return column


@dataclass(frozen=True)
class CrdShape:
    """What the installed CRD must look like beyond its schema.

    ``override`` False means controller-gen already produces these values from markers
    in the Go types; they are then only checked, not written.
    """

    short_names: tuple[str, ...]
    status_subresource: bool
    printer_columns: tuple[PrinterColumn, ...] = ()
    labels: Mapping[str, str] | None = None
    override: bool = True


_AGE = PrinterColumn("Age", "date", ".metadata.creationTimestamp")
_PHASE = PrinterColumn("Phase", "string", ".status.phase")


def _ready(priority: int = 0) -> PrinterColumn:
    return PrinterColumn(
        "Ready", "string", ".status.conditions[?(@.type=='Ready')].status", priority=priority
    )


# Keyed by CRD name. Values mirror virt-operator's crds.go (KubeVirt) and the CDI markers.
EXPECTED: Mapping[str, CrdShape] = {
    "virtualmachines.kubevirt.io": CrdShape(
        short_names=("vm", "vms"),
        status_subresource=True,
        printer_columns=(
            _AGE,
            PrinterColumn(
                "Status", "string", ".status.printableStatus", "Human Readable Status"
            ),
            _ready(),
        ),
        labels={"kubevirt.io": ""},
    ),
    "virtualmachineinstances.kubevirt.io": CrdShape(
        short_names=("vmi", "vmis"),
        status_subresource=False,
        printer_columns=(
            _AGE,
            _PHASE,
            PrinterColumn("IP", "string", ".status.interfaces[0].ipAddress"),
            PrinterColumn("NodeName", "string", ".status.nodeName"),
            _ready(),
            PrinterColumn(
                "Live-Migratable",
                "string",
                ".status.conditions[?(@.type=='LiveMigratable')].status",
                priority=1,
            ),
            PrinterColumn(
                "Paused", "string", ".status.conditions[?(@.type=='Paused')].status", priority=1
            ),
        ),
        labels={"kubevirt.io": ""},
    ),
    "virtualmachineinstancemigrations.kubevirt.io": CrdShape(
        short_names=("vmim", "vmims"),
        status_subresource=True,
        printer_columns=(
            PrinterColumn(
                "Phase", "string", ".status.phase", "The current phase of VM instance migration"
            ),
            PrinterColumn(
                "VMI", "string", ".spec.vmiName", "The name of the VMI to perform the migration on"
            ),
        ),
        labels={"kubevirt.io": ""},
    ),
    "kubevirts.kubevirt.io": CrdShape(
        short_names=("kv", "kvs"),
        status_subresource=True,
        printer_columns=(_AGE, _PHASE),
        labels={"operator.kubevirt.io": ""},
    ),
    "virtualmachinesnapshots.snapshot.kubevirt.io": CrdShape(
        short_names=("vmsnapshot", "vmsnapshots"),
        status_subresource=True,
        printer_columns=(
            PrinterColumn("SourceKind", "string", ".spec.source.kind"),
            PrinterColumn("SourceName", "string", ".spec.source.name"),
            _PHASE,
            PrinterColumn("ReadyToUse", "boolean", ".status.readyToUse"),
            PrinterColumn("CreationTime", "date", ".status.creationTime"),
            PrinterColumn("Error", "string", ".status.error.message"),
        ),
        labels={"kubevirt.io": ""},
    ),
    "datavolumes.cdi.kubevirt.io": CrdShape(
        short_names=("dv", "dvs"), status_subresource=True, override=False
    ),
    "storageprofiles.cdi.kubevirt.io": CrdShape(
        short_names=(), status_subresource=True, override=False
    ),
}

KEPT: tuple[str, ...] = tuple(EXPECTED)


class CrdGenerationError(RuntimeError):
    """controller-gen failed, or its output does not match ``EXPECTED``."""


def postprocess(crd: dict[str, Any], shape: CrdShape) -> dict[str, Any]:
    """Return a copy of ``crd`` with ``shape`` applied (pure; the input is not modified).

    Applies to every version: upstream uses identical columns and subresources for all.
    Raises ``CrdGenerationError`` if the result does not match ``shape``.
    """
    out: dict[str, Any] = copy.deepcopy(crd)
    if shape.override:
        names = out["spec"]["names"]
        names["shortNames"] = list(shape.short_names)
        names["categories"] = ["all"]
        if shape.labels:
            out["metadata"].setdefault("labels", {}).update(shape.labels)
        for version in out["spec"]["versions"]:
            version["additionalPrinterColumns"] = [c.to_api() for c in shape.printer_columns]
            if shape.status_subresource:
                version["subresources"] = {"status": {}}
            else:
                version.pop("subresources", None)
    _check(out, shape)
    return out


def _check(crd: dict[str, Any], shape: CrdShape) -> None:
    name = crd["metadata"]["name"]
    short_names = tuple(crd["spec"]["names"].get("shortNames", ()))
    if short_names != shape.short_names:
        raise CrdGenerationError(f"{name}: shortNames {short_names}, expected {shape.short_names}")
    for version in crd["spec"]["versions"]:
        has_status = "status" in (version.get("subresources") or {})
        if has_status != shape.status_subresource:
            raise CrdGenerationError(
                f"{name}/{version['name']}: status subresource {has_status}, "
                f"expected {shape.status_subresource}"
            )


def generate(
    *,
    controller_gen: Path,
    module_dir: Path,
    out_dir: Path,
    env: Mapping[str, str] | None = None,
    log: Callable[[str], None] = print,
) -> list[Path]:
    """Run controller-gen in ``module_dir`` and write the post-processed ``KEPT`` CRDs.

    ``out_dir`` must not exist yet; it is created atomically (written to a sibling temp
    dir, then renamed), so a present ``out_dir`` always holds a complete set.
    ``controller-gen`` loads packages through ``go list``, so ``go`` must be on PATH
    (``env``, if given, is the environment for that; default: inherited).
    Returns the written files, one YAML document per CRD.
    """
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix=".crdgen-", dir=out_dir.parent) as tmp:
        raw_dir = Path(tmp) / "raw"
        final_dir = Path(tmp) / "final"
        final_dir.mkdir()
        _run_controller_gen(controller_gen, module_dir, raw_dir, env, log)
        by_name = _load_by_name(raw_dir)
        missing = [name for name in KEPT if name not in by_name]
        if missing:
            raise CrdGenerationError(f"controller-gen produced no CRD for {', '.join(missing)}")
        for name in KEPT:
            crd = postprocess(by_name[name], EXPECTED[name])
            (final_dir / f"{name}.yaml").write_text(fastyaml.dump(crd, sort_keys=False))
        final_dir.rename(out_dir)
    return sorted(out_dir.glob("*.yaml"))


def _run_controller_gen(
    controller_gen: Path,
    module_dir: Path,
    raw_dir: Path,
    env: Mapping[str, str] | None,
    log: Callable[[str], None],
) -> None:
    # allowDangerousTypes: KubeVirt's TokenBucketRateLimiter.QPS is a float32; upstream's
    # own schema types it as a number too.
    cmd = [
        str(controller_gen),
        "crd:allowDangerousTypes=true",
        f"paths={KUBEVIRT_API_PACKAGE}",
        f"paths={SNAPSHOT_API_PACKAGE}",
        f"paths={CDI_API_PACKAGE}",
        f"output:crd:dir={raw_dir}",
    ]
    log(f"generating CRDs: {' '.join(cmd[1:])}")
    proc = subprocess.run(
        cmd, cwd=module_dir, env=env, capture_output=True, text=True, check=False
    )
    if proc.returncode != 0:
        raise CrdGenerationError(
            f"controller-gen failed (exit {proc.returncode}) in {module_dir}:\n"
            f"{proc.stderr[-4000:]}"
        )


def _load_by_name(raw_dir: Path) -> dict[str, dict[str, Any]]:
    crds: dict[str, dict[str, Any]] = {}
    for path in sorted(raw_dir.glob("*.yaml")):
        for doc in fastyaml.load_all(path.read_text()):
            if doc.get("kind") == "CustomResourceDefinition":
                crds[doc["metadata"]["name"]] = doc
    return crds


def load_all(crd_dir: Path) -> list[dict[str, Any]]:
    """Load every CRD document in ``crd_dir`` (sorted by file name)."""
    docs: list[dict[str, Any]] = []
    for path in sorted(crd_dir.glob("*.yaml")):
        docs.extend(fastyaml.load_all(path.read_text()))
    return docs
