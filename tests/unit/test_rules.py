"""Every preflight rule, one parametrized table per kind of context.

Each row: the rule id it is about (``None`` = the rule must stay silent), the input built from
the small factories, and a substring the user's message must contain.
"""

from __future__ import annotations

import re
from dataclasses import replace
from typing import Any

import pytest

from reconciler.diff.catalog import CATALOG, FIX_ORDER, SELECTION_RULES
from reconciler.diff.context import (
    ClusterContext,
    RunContext,
    Version,
    VMContext,
    VolumeContext,
    vm_context,
    volume_context,
)
from reconciler.diff.gitops import gitops_owners
from reconciler.diff.rule import evaluate, is_rwo
from reconciler.diff.rules_cluster import CLUSTER_RULES, VOLUME_UPDATE_GATES
from reconciler.diff.rules_run import decide
from reconciler.diff.rules_vm import IN_PROGRESS_RULES, RECOVERY_RULES, VM_RULES
from reconciler.diff.rules_volume import VOLUME_RULES
from reconciler.diff.target import is_in_sync, target_size
from reconciler.model.live import Condition, KubeVirtInfo, PVCInfo, VMVolume
from reconciler.model.names import CONTENT_TYPE_ANNOTATION, JOURNAL_ANNOTATION
from reconciler.model.plan import DEFAULT_CLASS, Mode, VolumeMode
from reconciler.model.verdict import Effect, Finding, Route
from reconciler.report.text import finding_line
from tests.support.factories import (
    RWO,
    RWX,
    GiB,
    SnapshotPart,
    cond,
    desired,
    dv,
    healthy,
    kubevirt,
    migration,
    profile,
    pvc,
    snapshot,
    storage_class,
    vm,
    vmi,
    volume,
)

# Rule ids exercised in this module; the catalog test checks that none is left untested.
COVERED: set[str] = set()


def cases(*rows: tuple[str | None, object, str]) -> list[Any]:
    """pytest params from (rule id or None, input, message substring), recording coverage."""
    params = []
    for i, (rule, given, needle) in enumerate(rows):
        if rule:
            COVERED.add(rule)
        params.append(pytest.param(rule, given, needle, id=f"{rule or 'silent'}-{i}"))
    return params


def only(findings: tuple[Finding, ...], rule: str | None, needle: str) -> None:
    """``rule`` found (with ``needle`` in its message) or, for None, nothing found."""
    if rule is None:
        assert findings == (), [str(f) for f in findings]
        return
    found = {f.rule: f for f in findings}
    assert rule in found, [str(f) for f in findings]
    assert needle in found[rule].message


# --------------------------------------------------------------------------------------------
# Versions
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("v1.9.0", Version(1, 9, 0)),
        ("1.4.2", Version(1, 4, 2)),
        ("v1.5", Version(1, 5, 0)),
        ("v1.5.0-rc.1", Version(1, 5, 0, released=False)),
        ("v1.6.0-alpha.0.123+abcdef", Version(1, 6, 0, released=False)),
        ("v1.3.1+build.5", Version(1, 3, 1)),
        (" v1.9.0 ", Version(1, 9, 0)),
        ("", None),
        ("devel", None),
        ("v1", None),
    ],
)
def test_version_parse(text: str, expected: Version | None) -> None:
    assert Version.parse(text) == expected


@pytest.mark.parametrize(
    ("text", "major", "minor", "expected"),
    [
        ("v1.5.0", 1, 5, True),
        ("v1.5.0-rc.1", 1, 5, False),  # a pre-release is not yet the release
        ("v1.4.9", 1, 5, False),
        ("v2.0.0", 1, 6, True),
        ("v1.10.0", 1, 6, True),
    ],
)
def test_version_at_least(text: str, major: int, minor: int, expected: bool) -> None:
    parsed = Version.parse(text)
    assert parsed is not None
    assert parsed.at_least(major, minor) is expected


# --------------------------------------------------------------------------------------------
# Cluster rules: KubeVirt CR and version
# --------------------------------------------------------------------------------------------

ALL_GATES = VOLUME_UPDATE_GATES


@pytest.mark.parametrize(
    ("rule", "given", "needle"),
    cases(
        (None, kubevirt("v1.9.0"), ""),
        (None, kubevirt("v1.6.0"), ""),  # LiveUpdate is the default from v1.6
        (None, kubevirt("v1.4.2", gates=ALL_GATES, rollout="LiveUpdate"), ""),
        (None, kubevirt("v1.5.0", rollout="LiveUpdate"), ""),  # gates GA from v1.5
        ("kubevirt-not-found", None, "no KubeVirt CR"),
        ("kubevirt-version-unknown", kubevirt(""), "observedKubeVirtVersion is empty"),
        ("kubevirt-version-unknown", kubevirt("devel"), "is devel"),
        ("kubevirt-too-old", kubevirt("v1.2.3"), "arrived in v1.3.0"),
        (
            "feature-gates-missing",
            kubevirt("v1.3.0", rollout="LiveUpdate"),
            "VMLiveUpdateFeatures, VolumesUpdateStrategy, VolumeMigration",
        ),
        (
            "feature-gates-missing",
            kubevirt(
                "v1.4.2", gates=("VolumesUpdateStrategy", "VolumeMigration"), rollout="LiveUpdate"
            ),
            "needs the feature gates VMLiveUpdateFeatures for",
        ),
        (
            "feature-gates-missing",
            kubevirt("v1.5.0-rc.1", rollout="LiveUpdate"),
            "developerConfiguration.featureGates",
        ),
        ("rollout-strategy-not-live-update", kubevirt("v1.5.0"), "is unset"),
        ("rollout-strategy-not-live-update", kubevirt("v1.4.2", gates=ALL_GATES), "Stage"),
        ("rollout-strategy-not-live-update", kubevirt("v1.9.0", rollout="Stage"), "is Stage"),
        ("workload-update-no-live-migrate", kubevirt("v1.9.0", methods=()), "is []"),
        (
            "workload-update-no-live-migrate",
            kubevirt("v1.9.0", methods=("Evict",)),
            "is [Evict]: without LiveMigrate",
        ),
    ),
)
def test_cluster_rules(rule: str | None, given: KubeVirtInfo | None, needle: str) -> None:
    only(evaluate(CLUSTER_RULES, ClusterContext(given)), rule, needle)


@pytest.mark.parametrize(
    ("given", "expected"),
    [
        # Too old: the configuration details do not matter.
        (kubevirt("v1.2.0", methods=()), {"kubevirt-too-old"}),
        # Unknown version: the rollout strategy must then be explicit.
        (kubevirt(""), {"kubevirt-version-unknown", "rollout-strategy-not-live-update"}),
        (kubevirt("", rollout="LiveUpdate"), {"kubevirt-version-unknown"}),
        (None, {"kubevirt-not-found"}),
        (
            kubevirt("v1.3.0", methods=()),
            {
                "feature-gates-missing",
                "rollout-strategy-not-live-update",
                "workload-update-no-live-migrate",
            },
        ),
    ],
)
def test_cluster_rules_report_every_problem_once(
    given: KubeVirtInfo | None, expected: set[str]
) -> None:
    found = evaluate(CLUSTER_RULES, ClusterContext(given))
    assert [f.rule for f in found] == [r.id for r in CLUSTER_RULES if r.id in expected]
    assert all(f.effect is Effect.NO_LIVE for f in found)


# --------------------------------------------------------------------------------------------
# VM rules
# --------------------------------------------------------------------------------------------

ARGO = {"argocd.argoproj.io/tracking-id": "shop:kubevirt.io/VirtualMachine:ns/vm1"}
FLUX_KS = {
    "kustomize.toolkit.fluxcd.io/name": "apps",
    "kustomize.toolkit.fluxcd.io/namespace": "flux-system",
}
FLUX_HELM = {"helm.toolkit.fluxcd.io/name": "vms", "helm.toolkit.fluxcd.io/namespace": "ns"}
TWO_DISKS = (volume("rootdisk"), volume("data"))


def flux_ssa(value: str, *, manager: str | None) -> dict[str, Any]:
    """VM keyword arguments: Flux-labelled, annotated ``kustomize.toolkit.fluxcd.io/ssa: value``
    by field manager ``manager`` (None: no managedFields at all)."""
    key = "kustomize.toolkit.fluxcd.io/ssa"
    meta: dict[str, Any] = {"annotations": {key: value}}
    if manager is not None:
        fields: dict[str, Any] = {"f:metadata": {"f:annotations": {f"f:{key}": {}}}}
        meta["managedFields"] = [{"manager": manager, "operation": "Apply", "fieldsV1": fields}]
    return {"labels": FLUX_KS, "annotations": {key: value}, "raw": {"metadata": meta}}


def scene(
    *,
    vm_kw: dict[str, Any] | None = None,
    vmi_phase: str | None = "Running",
    vmi_conditions: tuple[Condition, ...] = (),
    extra: tuple[SnapshotPart, ...] = (),
    wanted: tuple[str, ...] = ("rootdisk",),
    moving: tuple[str, ...] = ("rootdisk",),
    allow_gitops: bool = False,
) -> VMContext:
    """A VMContext for vm1 built through the same join diff uses."""
    the_vm = vm(**(vm_kw or {}))
    parts: list[SnapshotPart] = [the_vm, pvc(), pvc("data-dv")]
    if vmi_phase is not None:
        parts.append(vmi(phase=vmi_phase, conditions=vmi_conditions))
    snap = snapshot(*parts, *extra)
    return vm_context(the_vm, snap, wanted=wanted, moving=moving, allow_gitops_managed=allow_gitops)


@pytest.mark.parametrize(
    ("rule", "given", "needle"),
    cases(
        (None, scene(), ""),
        (
            "journal-present",
            scene(vm_kw={"annotations": {JOURNAL_ANNOTATION: "{}"}}),
            "resumes or rolls back",
        ),
        (
            "volume-migration-in-progress",
            scene(
                vm_kw={"update_volumes_strategy": "Migration"},
                vmi_conditions=(cond("VolumesChange", "True", message="migrate volumes"),),
            ),
            "VolumesChange=True",
        ),
        (
            "volume-migration-in-progress",
            scene(vm_kw={"update_volumes_strategy": "Migration"}, extra=(migration(),)),
            "kubevirt-workload-update-vm1 is in flight",
        ),
        (
            "volume-migration-in-progress",
            scene(vm_kw={"update_volumes_strategy": "Migration"}, extra=(migration(phase=""),)),
            "in flight",
        ),
        # After a successful migration the strategy stays Migration: not in progress.
        (
            None,
            scene(
                vm_kw={"update_volumes_strategy": "Migration"},
                extra=(migration(phase="Succeeded"),),
            ),
            "",
        ),
        (
            None,
            scene(
                vm_kw={"update_volumes_strategy": "Migration"}, extra=(migration(phase="Failed"),)
            ),
            "",
        ),
        # A plain (non volume-update) migration, or one of another VMI, is not ours to wait for.
        (
            None,
            scene(
                vm_kw={"update_volumes_strategy": "Migration"},
                extra=(migration(volume_update=False),),
            ),
            "",
        ),
        (
            None,
            scene(vm_kw={"update_volumes_strategy": "Migration"}, extra=(migration("vm2"),)),
            "",
        ),
        (None, scene(vmi_conditions=(cond("VolumesChange", "True"),)), ""),
        (
            None,
            scene(
                vm_kw={"update_volumes_strategy": "Migration"},
                vmi_conditions=(
                    cond("VolumesChange", "False", reason="VolumesChangeCancellation"),
                ),
            ),
            "",
        ),
    ),
)
def test_in_progress_rules(rule: str | None, given: VMContext, needle: str) -> None:
    found = evaluate(IN_PROGRESS_RULES, given)
    only(found, rule, needle)
    assert all(f.effect is Effect.IN_PROGRESS for f in found)


@pytest.mark.parametrize(
    ("rule", "given", "needle"),
    cases(
        (None, scene(), ""),
        (
            "manual-recovery-required",
            scene(
                vm_kw={
                    "conditions": (
                        cond(
                            "ManualRecoveryRequired",
                            message="VMI was removed or was final during the volume migration",
                        ),
                    )
                }
            ),
            "restore the original claim names in spec.template.spec.volumes",
        ),
        (
            "manual-recovery-required",
            scene(vm_kw={"conditions": (cond("ManualRecoveryRequired", reason="Interrupted"),)}),
            "remove spec.updateVolumesStrategy to keep the destination",
        ),
        (None, scene(vm_kw={"conditions": (cond("ManualRecoveryRequired", "False"),)}), ""),
        (
            "gitops-managed",
            scene(vm_kw={"annotations": ARGO}),
            "spec.ignoreDifferences: [{group: kubevirt.io, kind: VirtualMachine, name: vm1, "
            "namespace: ns, jqPathExpressions: [.spec.template.spec.volumes, "
            ".spec.dataVolumeTemplates, .spec.updateVolumesStrategy, .spec.runStrategy]}]",
        ),
        (
            "gitops-managed",
            scene(vm_kw={"annotations": ARGO}),
            "syncOptions: [RespectIgnoreDifferences=true]",
        ),
        ("gitops-managed", scene(vm_kw={"annotations": ARGO}), "Application shop"),
        ("gitops-managed", scene(vm_kw={"annotations": ARGO}), "allowGitOpsManaged: true"),
        (
            "gitops-managed",
            scene(
                vm_kw={
                    "labels": {"app.kubernetes.io/instance": "shop"},
                    "annotations": {"argocd.argoproj.io/sync-wave": "2"},
                }
            ),
            "managed by Argo CD shop",
        ),
        (
            "gitops-managed",
            scene(vm_kw={"labels": FLUX_KS}),
            "in Kustomization flux-system/apps add spec.ignore: [{paths: "
            "[/spec/template/spec/volumes, /spec/dataVolumeTemplates, /spec/updateVolumesStrategy, "
            "/spec/runStrategy], target: {group: kubevirt.io, kind: VirtualMachine, name: vm1, "
            "namespace: ns}}]",
        ),
        (
            "gitops-managed",
            scene(vm_kw={"labels": FLUX_KS}),
            "namespace: ns}}] (kustomize-controller v1.9.0 and later). Flux before v1.9 has no "
            "field-level ignore: suspend the Kustomization for the move, or annotate the VM "
            "kustomize.toolkit.fluxcd.io/reconcile: disabled, or set "
            "kustomize.toolkit.fluxcd.io/ssa: IfNotPresent on the VM in Git (Flux then skips the "
            "existing VM but the annotation never reaches it, so this check cannot see it; set "
            "live, Flux ignores it, and with kubectl removes it: it takes over the fields of "
            "every field manager whose name starts with kubectl); then set allowGitOpsManaged: "
            "true in the plan",
        ),
        (  # a live IfNotPresent that Flux did not write (kubectl annotate) protects nothing
            "gitops-managed",
            scene(vm_kw=flux_ssa("IfNotPresent", manager="kubectl-annotate")),
            "in Kustomization flux-system/apps add spec.ignore",
        ),
        ("gitops-managed", scene(vm_kw=flux_ssa("IfNotPresent", manager=None)), "spec.ignore"),
        (
            "gitops-managed",
            scene(vm_kw={"labels": FLUX_HELM}),
            "in HelmRelease ns/vms add spec.driftDetection.ignore",
        ),
        # Not owned, or owned but safe / allowed:
        (None, scene(vm_kw={"labels": {"app.kubernetes.io/instance": "shop"}}), ""),
        # IfNotPresent written by Flux (so it is in Git); Ignore by anyone (Flux honours it live)
        (None, scene(vm_kw=flux_ssa("IfNotPresent", manager="kustomize-controller")), ""),
        (None, scene(vm_kw=flux_ssa("Ignore", manager="kubectl-annotate")), ""),
        (
            None,
            scene(
                vm_kw={
                    "labels": FLUX_KS,
                    "annotations": {"kustomize.toolkit.fluxcd.io/reconcile": "disabled"},
                }
            ),
            "",
        ),
        (None, scene(vm_kw={"annotations": ARGO}, allow_gitops=True), ""),
        (
            "vm-deleting",
            scene(vm_kw={"raw": {"metadata": {"deletionTimestamp": "2026-05-01T10:00:00Z"}}}),
            "being deleted (deletionTimestamp 2026-05-01T10:00:00Z): a VM on its way out is "
            "never moved",
        ),
        (
            "vm-deleting",
            scene(vm_kw={"raw": {"metadata": {"deletionTimestamp": "t", "finalizers": ["a/b"]}}}),
            "finalizer a/b keeps it until removed",
        ),
        (None, scene(vm_kw={"raw": {"metadata": {"deletionTimestamp": None}}}), ""),
        ("vm-not-running", scene(vmi_phase=None), "the VM is stopped (no VMI)"),
        ("vm-not-running", scene(vmi_phase="Scheduling"), "phase Scheduling, not Running"),
        ("vm-not-running", scene(vmi_phase="Succeeded"), "has ended (phase Succeeded)"),
        (
            "storage-not-live-migratable",
            scene(
                vmi_conditions=(
                    cond(
                        "StorageLiveMigratable",
                        "False",
                        reason="DisksNotLiveMigratable",
                        message="cannot migrate VMI: PVC data is not shared",
                    ),
                )
            ),
            "(DisksNotLiveMigratable: cannot migrate VMI: PVC data is not shared)",
        ),
        (None, scene(vmi_conditions=(cond("StorageLiveMigratable", "True"),)), ""),
        (
            "rwo-volume-not-moved",
            scene(vm_kw={"volumes": TWO_DISKS}),
            "volume data is ReadWriteOnce and not moved",
        ),
        (
            "rwo-volume-not-moved",
            scene(vm_kw={"volumes": TWO_DISKS}),
            "add data to the plan, or let the VM move offline",
        ),
        (
            "rwo-volume-not-moved",
            scene(vm_kw={"volumes": TWO_DISKS}, wanted=("rootdisk", "data")),
            "data (already on its target class) is ReadWriteOnce and not moved in this update, "
            "but KubeVirt moves every RWO volume of a VM in the same update ('The volume ... is "
            "RWO and not included in the migration volumes'): let the VM move offline",
        ),
        (None, scene(vm_kw={"volumes": TWO_DISKS}, moving=("rootdisk", "data")), ""),
        (None, scene(vm_kw={"volumes": TWO_DISKS}, extra=(pvc("data-dv", access_modes=RWX),)), ""),
        (None, scene(vm_kw={"volumes": TWO_DISKS}, moving=()), ""),  # nothing moves
        # Non-claim volumes (cloudInit, containerDisk) never count.
        (None, scene(vm_kw={"volumes": (volume(), volume("ci", kind="cloudInitNoCloud"))}), ""),
        (
            "running-field-deprecated",
            scene(vm_kw={"uses_running_field": True}),
            "deprecated spec.running",
        ),
    ),
)
def test_vm_rules(rule: str | None, given: VMContext, needle: str) -> None:
    only(evaluate((*RECOVERY_RULES, *VM_RULES), given), rule, needle)


def test_gitops_owners_names_every_owner() -> None:
    owners = gitops_owners(vm(labels={**FLUX_KS, **FLUX_HELM}, annotations=ARGO))
    assert [(o.tool, o.name) for o in owners] == [
        ("Argo CD", "shop"),
        ("Flux Kustomization", "apps"),
        ("Flux HelmRelease", "vms"),
    ]


# --------------------------------------------------------------------------------------------
# Volume rules
# --------------------------------------------------------------------------------------------


def vol_scene(
    *parts: SnapshotPart,
    want_volume: str = "rootdisk",
    to: str = "new",
    volume_mode: VolumeMode = VolumeMode.AUTO,
    access_modes: tuple[str, ...] | None = None,
    vm_volumes: tuple[VMVolume, ...] | None = None,
) -> VolumeContext:
    """A VolumeContext for one wanted volume of vm1 in the healthy scene plus ``parts``."""
    the_vm = vm(volumes=vm_volumes)
    snap = healthy(the_vm, *parts)
    want = desired(want_volume, to, volume_mode=volume_mode, access_modes=access_modes)
    return volume_context(want, the_vm, snap)


def without(ctx: VolumeContext, *, pvc_gone: bool = False, dv_gone: bool = False) -> VolumeContext:
    """``ctx`` rebuilt over its snapshot without vm1's rootdisk PVC and/or DataVolume."""
    key = ("ns", "rootdisk-dv")
    snap = ctx.snapshot
    smaller = replace(
        snap,
        pvcs={k: v for k, v in snap.pvcs.items() if not (pvc_gone and k == key)},
        data_volumes={k: v for k, v in snap.data_volumes.items() if not (dv_gone and k == key)},
    )
    return volume_context(ctx.want, ctx.vm, smaller)


NO_PVC = without(vol_scene(), pvc_gone=True)
NO_PVC_DV_IMPORTING = without(vol_scene(dv(phase="ImportInProgress")), pvc_gone=True)
BLOCK_ARCHIVE = pvc(volume_mode="Block", annotations={CONTENT_TYPE_ANNOTATION: "archive"})
BLOCK_KUBEVIRT = pvc(volume_mode="Block", annotations={CONTENT_TYPE_ANNOTATION: "kubevirt"})
ZERO = PVCInfo("ns", "rootdisk-dv", "old", 0, None, "Filesystem", RWO, "Bound")


def unsized_template() -> VolumeContext:
    """vm1's rootdisk comes from a dataVolumeTemplate with neither spec.storage nor spec.pvc
    (schema-valid; the API server accepts it)."""
    template = {"metadata": {"name": "rootdisk-dv"}, "spec": {"source": {"blank": {}}}}
    the_vm = vm(
        volumes=(volume(from_template=True),), raw={"spec": {"dataVolumeTemplates": [template]}}
    )
    return volume_context(desired("rootdisk", "new"), the_vm, healthy(the_vm))


@pytest.mark.parametrize(
    ("rule", "given", "needle"),
    cases(
        (None, vol_scene(), ""),
        (
            "volume-not-found",
            vol_scene(want_volume="datadisk"),
            "has no such volume (it has: rootdisk)",
        ),
        (
            "volume-not-a-claim",
            vol_scene(want_volume="cd", vm_volumes=(volume(), volume("cd", kind="containerDisk"))),
            "cd is a containerDisk volume",
        ),
        ("claim-not-found", NO_PVC, "PVC ns/rootdisk-dv of volume rootdisk does not exist"),
        ("claim-not-found", NO_PVC_DV_IMPORTING, "(DataVolume phase ImportInProgress)"),
        ("claim-not-bound", vol_scene(pvc(phase="Pending")), "is Pending, not Bound"),
        ("claim-not-bound", vol_scene(pvc(phase="Lost")), "is Lost"),
        (
            "datavolume-not-succeeded",
            vol_scene(dv(phase="ImportInProgress", progress="45.20%")),
            "is ImportInProgress, progress 45.20%, not Succeeded",
        ),
        (
            "datavolume-not-succeeded",
            vol_scene(dv(phase="WaitForFirstConsumer", progress="N/A")),
            "WaitForFirstConsumer",
        ),
        # The DataVolume of a Succeeded import may be garbage-collected: the PVC is enough.
        (None, without(vol_scene(), dv_gone=True), ""),
        ("source-size-unknown", vol_scene(ZERO), "cannot be sized"),
        (
            "datavolume-template-unsized",
            unsized_template(),
            "dataVolumeTemplate rootdisk-dv of VM ns/vm1 has neither spec.storage nor spec.pvc",
        ),
        (
            "storage-class-not-found",
            vol_scene(to="fast"),
            "StorageClass fast does not exist (classes: new, old)",
        ),
        (
            "storage-class-not-found",
            vol_scene(to=DEFAULT_CLASS),
            "no StorageClass is annotated storageclass.kubevirt.io/is-default-virt-class or "
            "storageclass.kubernetes.io/is-default-class",
        ),
        (
            "storage-profile-mismatch",
            vol_scene(
                profile("new", (RWX, "Block"), (RWO, "Block")), volume_mode=VolumeMode.FILESYSTEM
            ),
            "does not offer Filesystem [ReadWriteOnce]; it offers: Block [ReadWriteMany], "
            "Block [ReadWriteOnce]",
        ),
        (
            "storage-profile-mismatch",
            vol_scene(profile("new", (RWO, "Filesystem")), access_modes=RWX),
            "does not offer Filesystem [ReadWriteMany]",
        ),
        # Auto follows the profile; a profile without claim property sets says nothing.
        (None, vol_scene(profile("new", (RWX, "Block")), volume_mode=VolumeMode.AUTO), ""),
        (None, vol_scene(profile("new"), volume_mode=VolumeMode.BLOCK, access_modes=RWX), ""),
        (
            "shareable-disk",
            vol_scene(vm_volumes=(volume(shareable=True),)),
            "disk rootdisk is shareable",
        ),
        ("lun-disk", vol_scene(vm_volumes=(volume(disk_type="lun"),)), "attached as a LUN"),
        (
            "virtiofs-filesystem",
            vol_scene(vm_volumes=(volume(filesystem=True, disk_type=None),)),
            "virtiofs filesystem",
        ),
        (
            "persistent-reservation",
            vol_scene(vm_volumes=(volume(disk_type="lun", persistent_reservation=True),)),
            "SCSI persistent reservation",
        ),
        (
            "hotplug-volume",
            vol_scene(
                kubevirt("v1.4.2", gates=ALL_GATES, rollout="LiveUpdate"),
                vm_volumes=(volume(hotpluggable=True),),
            ),
            "KubeVirt v1.4.2 refuses hotplugged volumes",
        ),
        (
            "hotplug-volume",
            vol_scene(kubevirt("v1.5.0-rc.1"), vm_volumes=(volume(hotpluggable=True),)),
            "allowed from v1.5.0",
        ),
        (None, vol_scene(kubevirt("v1.5.0"), vm_volumes=(volume(hotpluggable=True),)), ""),
        (
            "content-type-not-kubevirt",
            vol_scene(BLOCK_ARCHIVE, volume_mode=VolumeMode.FILESYSTEM),
            "cdi.kubevirt.io/storage.contentType: archive",
        ),
        (None, vol_scene(BLOCK_KUBEVIRT, volume_mode=VolumeMode.FILESYSTEM), ""),
        (None, vol_scene(pvc(volume_mode="Block"), volume_mode=VolumeMode.FILESYSTEM), ""),
        (None, vol_scene(BLOCK_ARCHIVE, volume_mode=VolumeMode.AUTO), ""),  # stays Block
    ),
)
def test_volume_rules(rule: str | None, given: VolumeContext, needle: str) -> None:
    only(evaluate(VOLUME_RULES, given), rule, needle)


@pytest.mark.parametrize(
    ("rule", "effect"),
    [
        ("shareable-disk", Effect.NO_LIVE),
        ("content-type-not-kubevirt", Effect.NO_OFFLINE),
        ("claim-not-found", Effect.BLOCK),
        ("storage-profile-mismatch", Effect.BLOCK),
    ],
)
def test_volume_rule_effects(rule: str, effect: Effect) -> None:
    assert next(r for r in VOLUME_RULES if r.id == rule).effect is effect


# --------------------------------------------------------------------------------------------
# Target resolution: size, volumeMode, accessModes, in sync
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("source", "expected"),
    [
        (pvc(size=10 * GiB, capacity=11 * GiB), 10 * GiB),  # Filesystem: the request
        (pvc(size=10 * GiB, capacity=11 * GiB, volume_mode="Block"), 11 * GiB),  # Block: capacity
        # A Block capacity below the request: CDI refuses a clone smaller than the request.
        (pvc(size=10 * GiB, capacity=9 * GiB, volume_mode="Block"), 10 * GiB),
        (pvc(size=10 * GiB, phase="Pending", volume_mode="Block"), 10 * GiB),  # no capacity yet
    ],
)
def test_target_size(source: PVCInfo, expected: int) -> None:
    assert target_size(source) == expected


def test_target_size_of_a_datavolume_disk_is_its_request_not_the_inflated_pvc() -> None:
    """CDI's storage API grew the PVC by the filesystem overhead; asking for the PVC's size
    again would grow the disk by ~6% on every move."""
    inflated = pvc(size=int(30 * GiB / 0.94), capacity=int(30 * GiB / 0.94))
    assert target_size(inflated, dv(size=30 * GiB)) == 30 * GiB
    assert target_size(inflated, None) == inflated.request_bytes
    block = pvc(size=30 * GiB, capacity=31 * GiB, volume_mode="Block")
    assert target_size(block, dv(size=30 * GiB)) == 31 * GiB


@pytest.mark.parametrize(
    ("parts", "mode", "access", "expected"),
    [
        # No profile: Auto keeps the source's Filesystem/RWO.
        ((), VolumeMode.AUTO, None, ("Filesystem", RWO, True)),
        ((profile("new", (RWO, "Filesystem")),), VolumeMode.AUTO, None, ("Filesystem", RWO, True)),
        # The source's pair is not offered: Auto takes the profile's first set, like CDI.
        (
            (profile("new", (RWX, "Block"), (RWO, "Block")),),
            VolumeMode.AUTO,
            None,
            ("Block", RWX, True),
        ),
        # Explicit mode, Auto access: keep the source's access if offered with that mode.
        (
            (profile("new", (RWX, "Block"), (RWO, "Block")),),
            VolumeMode.BLOCK,
            None,
            ("Block", RWO, True),
        ),
        ((profile("new", (RWX, "Block")),), VolumeMode.BLOCK, None, ("Block", RWX, True)),
        # Explicit access, Auto mode: the first set that offers that access.
        (
            (profile("new", (RWO, "Filesystem"), (RWX, "Block")),),
            VolumeMode.AUTO,
            RWX,
            ("Block", RWX, True),
        ),
        # Explicit and not offered.
        (
            (profile("new", (RWX, "Block")),),
            VolumeMode.FILESYSTEM,
            None,
            ("Filesystem", RWO, False),
        ),
        ((profile("new", (RWX, "Block")),), VolumeMode.BLOCK, RWO, ("Block", RWO, False)),
    ],
)
def test_resolve_target(
    parts: tuple[SnapshotPart, ...],
    mode: VolumeMode,
    access: tuple[str, ...] | None,
    expected: tuple[str, tuple[str, ...], bool],
) -> None:
    target = vol_scene(*parts, volume_mode=mode, access_modes=access).target
    assert (target.volume_mode, target.access_modes, target.offered) == expected
    assert target.size_bytes == 10 * GiB


@pytest.mark.parametrize(
    ("ctx", "expected"),
    [
        (vol_scene(to="old"), True),
        (vol_scene(to="new"), False),
        (vol_scene(to="old", volume_mode=VolumeMode.FILESYSTEM), True),
        (vol_scene(to="old", volume_mode=VolumeMode.BLOCK), False),  # same class, mode change
        (vol_scene(to="old", access_modes=RWO), True),
        (vol_scene(to="old", access_modes=RWX), False),
        (NO_PVC, False),
        (vol_scene(to="old", want_volume="nosuch"), False),
    ],
)
def test_is_in_sync(ctx: VolumeContext, expected: bool) -> None:
    assert is_in_sync(ctx.volume, ctx.pvc, ctx.want) is expected
    assert ctx.in_sync is expected


@pytest.mark.parametrize(
    ("modes", "expected"),
    [
        (("ReadWriteOnce",), True),
        (("ReadWriteOncePod",), True),
        ((), True),
        (("ReadWriteMany",), False),
        (("ReadWriteOnce", "ReadOnlyMany"), False),
    ],
)
def test_is_rwo(modes: tuple[str, ...], expected: bool) -> None:
    assert is_rwo(modes) is expected


# --------------------------------------------------------------------------------------------
# Run-state rules
# --------------------------------------------------------------------------------------------

SHAREABLE = Finding("shareable-disk", Effect.NO_LIVE, "x", "disk x is shareable")
STOPPED = Finding("vm-not-running", Effect.NO_LIVE, None, "the VM is stopped")
ARCHIVE = Finding("content-type-not-kubevirt", Effect.NO_OFFLINE, "x", "contentType archive")
LIVE, OFFLINE, BLOCKED = Route.LIVE, Route.OFFLINE, Route.BLOCKED


def run(
    mode: Mode = Mode.AUTO,
    *,
    allow_stop: bool = False,
    running: bool = True,
    live: tuple[Finding, ...] = (),
    offline: tuple[Finding, ...] = (),
) -> RunContext:
    if not running and not live:
        live = (STOPPED,)
    return RunContext(mode, allow_stop, running, live, offline)


RUN_CASES = [
    pytest.param(None, run(), LIVE, id="auto-running-live"),
    pytest.param(None, run(running=False), OFFLINE, id="auto-stopped-offline"),
    pytest.param(
        None,
        run(live=(SHAREABLE,), allow_stop=True),
        OFFLINE,
        id="auto-running-no-live-allow-stop-offline",
    ),
    pytest.param(None, run(offline=(ARCHIVE,)), LIVE, id="auto-live-ignores-offline-blocker"),
    pytest.param(None, run(Mode.LIVE), LIVE, id="live-running-live"),
    pytest.param(
        None, run(Mode.OFFLINE, allow_stop=True), OFFLINE, id="offline-running-allow-stop"
    ),
    pytest.param(None, run(Mode.OFFLINE, running=False), OFFLINE, id="offline-stopped"),
    pytest.param(None, run(Mode.LIVE, offline=(ARCHIVE,)), LIVE, id="live-ignores-offline"),
    pytest.param("stop-not-allowed", run(live=(SHAREABLE,)), BLOCKED, id="stop-not-allowed"),
    pytest.param(
        "live-required", run(Mode.LIVE, live=(SHAREABLE,)), BLOCKED, id="live-required-blocker"
    ),
    pytest.param(
        "live-required", run(Mode.LIVE, running=False), BLOCKED, id="live-required-stopped"
    ),
    pytest.param("offline-needs-stop", run(Mode.OFFLINE), BLOCKED, id="offline-needs-stop"),
    pytest.param(
        "offline-impossible",
        run(running=False, offline=(ARCHIVE,)),
        BLOCKED,
        id="offline-impossible-stopped",
    ),
    pytest.param(
        "offline-impossible",
        run(Mode.OFFLINE, allow_stop=True, offline=(ARCHIVE,)),
        BLOCKED,
        id="offline-impossible-mode-offline",
    ),
]
COVERED.update(str(p.values[0]) for p in RUN_CASES if p.values[0])


@pytest.mark.parametrize(("rule", "given", "expected"), RUN_CASES)
def test_run_rules(rule: str | None, given: RunContext, expected: Route) -> None:
    route, findings = decide(given)
    assert route is expected
    assert [f.rule for f in findings] == ([rule] if rule else [])


@pytest.mark.parametrize(
    ("given", "needle"),
    [
        (run(live=(SHAREABLE,)), "cannot move live (shareable-disk): set allowStop: true"),
        (
            run(Mode.LIVE, running=False),
            "mode is Live, but the VM cannot move live "
            "(vm-not-running): fix that, or set mode: Auto",
        ),
        (run(Mode.OFFLINE), "set allowStop: true so the reconciler may stop it"),
        (run(running=False, offline=(ARCHIVE,)), "(content-type-not-kubevirt)"),
    ],
)
def test_run_rule_messages_say_what_to_do(given: RunContext, needle: str) -> None:
    _, findings = decide(given)
    assert needle in findings[0].message


# --------------------------------------------------------------------------------------------
# The catalog
# --------------------------------------------------------------------------------------------

TESTED_IN_TEST_DIFF = {
    "vm-not-found",
    "vm-blocked",
    "namespace-not-allowed",
    "conflicting-targets",
    "conflicting-plan-settings",
    # tests/unit/test_diff.py, "Plans that select nothing"
    "namespace-not-found",
    "namespace-empty",
    "named-vms-not-found",
    "selector-matched-none",
    "every-match-excluded",
    "no-disk-to-move",
}


def test_catalog_ids_are_unique_kebab_case_and_documented() -> None:
    ids = [r.id for r in CATALOG]
    assert len(ids) == len(set(ids))
    assert all(re.fullmatch(r"[a-z]+(-[a-z]+)*", i) for i in ids)
    assert all(r.summary.endswith(".") for r in CATALOG)


def test_every_rule_has_a_test() -> None:
    # COVERED is filled while the tables above are built, at import time.
    untested = {r.id for r in CATALOG} - COVERED - TESTED_IN_TEST_DIFF
    assert untested == set()


def test_every_block_rule_has_its_place_in_the_fix_order() -> None:
    """A blocked VM lists its reasons in FIX_ORDER: a new Block rule must be placed there."""
    blocks = {r.id for r in CATALOG if r.effect is Effect.BLOCK} - {"manual-recovery-required"}
    assert blocks <= set(FIX_ORDER), blocks - set(FIX_ORDER)
    assert set(FIX_ORDER) <= {r.id for r in CATALOG}
    assert FIX_ORDER[0] == "vm-deleting" and FIX_ORDER.index("gitops-managed") > FIX_ORDER.index(
        "stop-not-allowed"
    ), "nothing matters for a VM being deleted; the GitOps opt-in is the last edit to make"


def test_selection_rules_say_nothing_was_selected() -> None:
    assert {r.effect for r in SELECTION_RULES} == {Effect.NOTHING_SELECTED}


def test_finding_text_ends_with_rule_id() -> None:
    # Findings are data; report.text is the one place that turns them into the text users read.
    assert finding_line(STOPPED) == "the VM is stopped [vm-not-running]"
    assert finding_line(SHAREABLE) == "volume x: disk x is shareable [shareable-disk]"


def test_healthy_factory_scene_is_silent() -> None:
    """The factories' default scene passes every rule (so each table row isolates one rule)."""
    snap = healthy()
    the_vm = snap.vms[("ns", "vm1")]
    ctx = vm_context(the_vm, snap, wanted=("rootdisk",), moving=("rootdisk",))
    assert evaluate(CLUSTER_RULES, ClusterContext(snap.kubevirt)) == ()
    assert evaluate(VM_RULES, ctx) == ()
    assert evaluate(VOLUME_RULES, vol_scene()) == ()
    assert storage_class("new") in snap.storage_classes.values()
