"""Preflight rules: can a VM's disks move, live or offline, and if not, what should the user do?

Every rule is a small pure function with a stable id, organised as data (tables of ``Rule``) so
the README, the JSON report and the metrics all speak the same ids. A rule's check returns
``None`` when it has nothing to say, else the message for the user: what is wrong and what to do.

A rule's ``Effect`` says what a finding does to the decision:

- ``BLOCK``: nothing of this VM moves until it is fixed.
- ``NO_LIVE``: live migration is impossible; an offline move may still be possible.
- ``NO_OFFLINE``: an offline clone is impossible; a live move may still be possible.
- ``IN_PROGRESS``: a move is already under way; leave the VM alone.
- ``NOTE``: informational, changes nothing.
- ``PROBLEM``: the plans are wrong; reported as a ``Problem`` and nothing is applied.

Rule tables, each applied in order to one kind of context:

- ``CLUSTER_RULES`` (``ClusterContext``): KubeVirt version and CR configuration for live moves.
- ``IN_PROGRESS_RULES`` and ``VM_RULES`` (``VMContext``): the VM as a whole.
- ``VOLUME_RULES`` (``VolumeContext``): one wanted volume that is not yet in sync.
- ``RUN_RULES`` (``RunContext``): the plan's mode and allowStop against the VM's run state.
- ``STANDALONE_RULES``: decided directly by ``diff`` (missing VM, conflicting plans, ...).

``CATALOG`` lists all of them. Facts behind each rule: reference/kubevirt-storage-migration.md.
Nothing here does I/O or imports pykube.
"""

from __future__ import annotations

import enum
import re
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Generic, TypeVar

from reconciler.model import (
    Condition,
    DataVolumeInfo,
    DesiredVolume,
    KubeVirtInfo,
    MigrationInfo,
    Mode,
    PVCInfo,
    Snapshot,
    StorageClassInfo,
    StorageProfileInfo,
    VMIInfo,
    VMInfo,
    VMVolume,
    VolumeMode,
)
from reconciler.plans import DEFAULT_CLASS

JOURNAL_ANNOTATION = "vmstorage.dev/journal"
CONTENT_TYPE_ANNOTATION = "cdi.kubevirt.io/storage.contentType"
CLAIM_KINDS = frozenset({"dataVolume", "persistentVolumeClaim"})
# Gates that must be listed explicitly before they went GA in v1.5.0.
VOLUME_UPDATE_GATES = ("VMLiveUpdateFeatures", "VolumesUpdateStrategy", "VolumeMigration")
FINAL_VMI_PHASES = frozenset({"Succeeded", "Failed"})
FINAL_MIGRATION_PHASES = frozenset({"Succeeded", "Failed"})
# The VM fields a move rewrites; a GitOps tool must ignore them or it reverts (cancels) the move.
MOVED_FIELDS = (
    ".spec.template.spec.volumes",
    ".spec.dataVolumeTemplates",
    ".spec.updateVolumesStrategy",
    ".spec.runStrategy",
)
# The plan field that accepts a GitOps-managed VM (named as users write it in plan files).
GITOPS_OPT_IN = "allowGitOpsManaged: true"


class Effect(enum.Enum):
    """What a finding does to the decision (see the module docstring)."""

    BLOCK = "Block"
    NO_LIVE = "NoLive"
    NO_OFFLINE = "NoOffline"
    IN_PROGRESS = "InProgress"
    NOTE = "Note"
    PROBLEM = "Problem"


@dataclass(frozen=True)
class Finding:
    """One rule's verdict on one subject: its id, its effect and the message for the user."""

    rule: str
    effect: Effect
    message: str

    def __str__(self) -> str:
        return f"{self.message} [{self.rule}]"


@dataclass(frozen=True)
class RuleInfo:
    """A rule as documented: stable id, effect, and a one-line summary for the README."""

    id: str
    effect: Effect
    summary: str


C = TypeVar("C")


@dataclass(frozen=True)
class Rule(RuleInfo, Generic[C]):
    """A rule with its check: ``check(context)`` returns the user's message, or None."""

    check: Callable[[C], str | None] = field(repr=False, compare=False, kw_only=True)

    def apply(self, context: C) -> Finding | None:
        message = self.check(context)
        return None if message is None else Finding(self.id, self.effect, message)


def evaluate(rules: Sequence[Rule[C]], context: C) -> tuple[Finding, ...]:
    """Apply ``rules`` in order; return every finding (a rule never depends on another)."""
    return tuple(f for f in (rule.apply(context) for rule in rules) if f is not None)


def of_effect(findings: Iterable[Finding], *effects: Effect) -> tuple[Finding, ...]:
    return tuple(f for f in findings if f.effect in effects)


# --------------------------------------------------------------------------------------------
# KubeVirt versions
# --------------------------------------------------------------------------------------------

_VERSION = re.compile(r"^v?(\d+)\.(\d+)(?:\.(\d+))?(-[0-9A-Za-z.-]+)?(\+[0-9A-Za-z.+-]*)?$")


@dataclass(frozen=True, order=True)
class Version:
    """A KubeVirt version. A pre-release sorts before its release (semver), so
    ``v1.5.0-rc.1`` does not count as v1.5: features that went GA in v1.5.0 still need their
    gates there. That errs on the safe side: listing a GA gate is harmless."""

    major: int
    minor: int
    patch: int = 0
    released: bool = True  # False for a pre-release such as -rc.1 or -alpha.0.123+abc

    @classmethod
    def parse(cls, text: str) -> Version | None:
        """``"v1.9.0"``, ``"1.4.2"``, ``"v1.5.0-rc.1"``; None for ``""`` or anything else."""
        match = _VERSION.match(text.strip())
        if match is None:
            return None
        major, minor, patch, pre, _build = match.groups()
        return cls(int(major), int(minor), int(patch or 0), pre is None)

    def at_least(self, major: int, minor: int) -> bool:
        return self >= Version(major, minor, 0, True)


# --------------------------------------------------------------------------------------------
# Contexts: what each kind of rule looks at
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class ClusterContext:
    """The KubeVirt CR (None when absent) and its parsed version (None when unknown)."""

    kubevirt: KubeVirtInfo | None

    @property
    def version(self) -> Version | None:
        return Version.parse(self.kubevirt.version) if self.kubevirt else None


@dataclass(frozen=True)
class TargetSpec:
    """The destination we would ask CDI for, resolved from the plan, the source claim and the
    target StorageProfile. ``volume_mode`` is "" and ``access_modes`` () only when neither the
    plan nor a source claim says. ``offered`` is False when the StorageProfile lists claim
    property sets and none of them fits the explicitly wanted mode/access."""

    storage_class: str
    volume_mode: str
    access_modes: tuple[str, ...]
    size_bytes: int
    offered: bool = True


@dataclass(frozen=True)
class VolumeContext:
    """One wanted volume of one VM. ``volume`` is None when the VM has no volume of that name;
    ``pvc``/``dv`` are the live claim and DataVolume of that name (None when absent)."""

    snapshot: Snapshot
    vm: VMInfo
    want: DesiredVolume
    volume: VMVolume | None
    pvc: PVCInfo | None
    dv: DataVolumeInfo | None
    target: TargetSpec

    @property
    def storage_class(self) -> StorageClassInfo | None:
        return self.snapshot.storage_classes.get(self.want.storage_class)

    @property
    def profile(self) -> StorageProfileInfo | None:
        return self.snapshot.storage_profiles.get(self.want.storage_class)

    @property
    def version(self) -> Version | None:
        kv = self.snapshot.kubevirt
        return Version.parse(kv.version) if kv else None


@dataclass(frozen=True)
class VMContext:
    """One VM the plans touch. ``claims`` maps each dataVolume/persistentVolumeClaim volume
    to its live PVC (None when missing); ``wanted`` are the volumes the plans name (in sync or
    not) and ``moving`` those this update would move."""

    vm: VMInfo
    vmi: VMIInfo | None
    claims: Mapping[str, PVCInfo | None]
    wanted: frozenset[str] = frozenset()
    moving: frozenset[str] = frozenset()
    migrations: tuple[MigrationInfo, ...] = ()
    allow_gitops_managed: bool = False

    @property
    def running(self) -> bool:
        """A VMI exists and is not final: stopping it is needed before an offline clone."""
        return self.vmi is not None and self.vmi.phase not in FINAL_VMI_PHASES


@dataclass(frozen=True)
class RunContext:
    """The plan's choices against the VM's state, after the other rules ran."""

    mode: Mode
    allow_stop: bool
    running: bool
    live_blockers: tuple[Finding, ...] = ()
    offline_blockers: tuple[Finding, ...] = ()


# --------------------------------------------------------------------------------------------
# Context builders (pure joins over the snapshot)
# --------------------------------------------------------------------------------------------


def volume_context(want: DesiredVolume, vm: VMInfo, snapshot: Snapshot) -> VolumeContext:
    """Join one desired volume with the VM's volume, its claim, DataVolume and target."""
    volume = next((v for v in vm.volumes if v.name == want.volume), None)
    claim = volume.claim if volume is not None and volume.kind in CLAIM_KINDS else None
    key = (vm.namespace, claim or "")
    pvc = snapshot.pvcs.get(key) if claim else None
    dv = snapshot.data_volumes.get(key) if claim else None
    profile = snapshot.storage_profiles.get(want.storage_class)
    return VolumeContext(
        snapshot=snapshot,
        vm=vm,
        want=want,
        volume=volume,
        pvc=pvc,
        dv=dv,
        target=resolve_target(want, pvc, profile, dv),
    )


def vm_context(
    vm: VMInfo,
    snapshot: Snapshot,
    *,
    wanted: Iterable[str] = (),
    moving: Iterable[str] = (),
    allow_gitops_managed: bool = False,
) -> VMContext:
    claims = {
        v.name: snapshot.pvcs.get((vm.namespace, v.claim or ""))
        for v in vm.volumes
        if v.kind in CLAIM_KINDS
    }
    migrations = tuple(
        m
        for m in snapshot.migrations
        if m.namespace == vm.namespace and m.vmi_name == vm.name
    )
    return VMContext(
        vm=vm,
        vmi=snapshot.vmis.get((vm.namespace, vm.name)),
        claims=claims,
        wanted=frozenset(wanted),
        moving=frozenset(moving),
        migrations=migrations,
        allow_gitops_managed=allow_gitops_managed,
    )


def target_size(pvc: PVCInfo, dv: DataVolumeInfo | None = None) -> int:
    """The size to request for a copy of ``pvc`` (made by DataVolume ``dv``, if any).

    Filesystem sources: the request of the source's DataVolume when there is one (KMC does the
    same): CDI's ``storage:`` API adds the filesystem overhead to it again, so the destination
    PVC comes out the size of the source PVC instead of ~6% larger on every move. Without a
    DataVolume, the PVC request. Block sources: the device is as large as the volume's
    *capacity*, which may exceed the request (provisioners round up), and a destination smaller
    than the source device fails in libvirt; so the larger of capacity and request. Never below
    the request, because CDI refuses a clone whose target request is below the source's.
    """
    if pvc.volume_mode == "Block":
        return max(pvc.request_bytes, pvc.capacity_bytes or 0)
    if dv is not None and dv.request_bytes:
        return min(dv.request_bytes, pvc.request_bytes) or pvc.request_bytes
    return pvc.request_bytes


def _offers(profile: StorageProfileInfo, mode: str, access: Sequence[str]) -> bool:
    """Some claim property set has ``mode`` and at least the ``access`` modes."""
    return any(
        set_mode == mode and set(access) <= set(set_access)
        for set_access, set_mode in profile.claim_property_sets
    )


def resolve_target(
    want: DesiredVolume,
    pvc: PVCInfo | None,
    profile: StorageProfileInfo | None,
    dv: DataVolumeInfo | None = None,
) -> TargetSpec:
    """Resolve Auto volumeMode / unset accessModes.

    Explicit values are kept and must be offered by the StorageProfile (when it lists claim
    property sets). Auto keeps the source's value when the profile offers it (or says nothing),
    else takes the profile's first fitting set, as CDI itself would.
    """
    source_mode = pvc.volume_mode if pvc else ""
    source_access = pvc.access_modes if pvc else ()
    explicit_mode = want.volume_mode is not VolumeMode.AUTO
    mode = want.volume_mode.value if explicit_mode else source_mode
    access = want.access_modes if want.access_modes is not None else source_access
    size = target_size(pvc, dv) if pvc else 0
    sets = profile.claim_property_sets if profile else ()
    if profile is None or not sets or not mode or _offers(profile, mode, access):
        return TargetSpec(want.storage_class, mode, tuple(access), size)
    # The wanted pair is not offered: let the Auto half follow the profile, in its order.
    for set_access, set_mode in sets:
        mode_fits = not explicit_mode or set_mode == mode
        access_fits = want.access_modes is None or set(access) <= set(set_access)
        if mode_fits and access_fits:
            chosen = tuple(access) if want.access_modes is not None else set_access
            return TargetSpec(want.storage_class, set_mode, chosen, size)
    return TargetSpec(want.storage_class, mode, tuple(access), size, offered=False)


def is_in_sync(ctx: VolumeContext) -> bool:
    """The claim already is what the plan wants: same resolved class, and the explicitly wanted
    volumeMode/accessModes (Auto/unset accept the claim's own)."""
    pvc, want = ctx.pvc, ctx.want
    if ctx.volume is None or ctx.volume.kind not in CLAIM_KINDS or pvc is None:
        return False
    if pvc.storage_class != want.storage_class:
        return False
    if want.volume_mode is not VolumeMode.AUTO and want.volume_mode.value != pvc.volume_mode:
        return False
    return want.access_modes is None or set(want.access_modes) == set(pvc.access_modes)


def is_rwo(access_modes: Sequence[str]) -> bool:
    """KubeVirt's test (IsReadWriteOnceAccessMode): not shared by several nodes."""
    return not {"ReadWriteMany", "ReadOnlyMany"} & set(access_modes)


def condition(conditions: Iterable[Condition], type_: str) -> Condition | None:
    return next((c for c in conditions if c.type == type_), None)


def _names(items: Iterable[str]) -> str:
    return ", ".join(items) or "none"


def _join(findings: Iterable[Finding]) -> str:
    return ", ".join(f.rule for f in findings)


# --------------------------------------------------------------------------------------------
# Cluster rules: KubeVirt version and configuration (Effect NO_LIVE)
# --------------------------------------------------------------------------------------------

def kubevirt_not_found(ctx: ClusterContext) -> str | None:
    if ctx.kubevirt is not None:
        return None
    return (
        "no KubeVirt CR was found (or the reconciler may not list kubevirts.kubevirt.io), so "
        "the storage live migration settings cannot be checked: grant read access to the "
        "KubeVirt CR, or let the VMs move offline (allowStop: true)"
    )


def kubevirt_version_unknown(ctx: ClusterContext) -> str | None:
    if ctx.kubevirt is None or ctx.version is not None:
        return None
    shown = ctx.kubevirt.version or "empty"
    return (
        f"the KubeVirt version is unknown (status.observedKubeVirtVersion is {shown}); live "
        "moves need a known version >= v1.3 to check the feature gates. Wait until the KubeVirt "
        "CR reports it (phase Deployed), or let the VMs move offline (allowStop: true)"
    )


def kubevirt_too_old(ctx: ClusterContext) -> str | None:
    kv, version = ctx.kubevirt, ctx.version
    if kv is None or version is None or version.at_least(1, 3):
        return None
    return (
        f"KubeVirt {kv.version} has no storage live "
        "migration (it arrived in v1.3.0): upgrade KubeVirt, or let the VMs move offline "
        "(allowStop: true)"
    )


def feature_gates_missing(ctx: ClusterContext) -> str | None:
    version = ctx.version
    if ctx.kubevirt is None or version is None or not version.at_least(1, 3):
        return None
    if version.at_least(1, 5):
        return None  # GA from v1.5.0: always on
    missing = [g for g in VOLUME_UPDATE_GATES if g not in ctx.kubevirt.feature_gates]
    if not missing:
        return None
    return (
        f"KubeVirt {ctx.kubevirt.version} needs the feature gates {', '.join(missing)} for "
        "storage live migration (they are GA from v1.5.0): add them to "
        "spec.configuration.developerConfiguration.featureGates of the KubeVirt CR"
    )


def rollout_strategy_not_live_update(ctx: ClusterContext) -> str | None:
    kv, version = ctx.kubevirt, ctx.version
    if kv is None or (version is not None and not version.at_least(1, 3)):
        return None
    # Default: Stage before v1.6.0, LiveUpdate from v1.6.0; unknown version -> must be explicit.
    default = "LiveUpdate" if version is not None and version.at_least(1, 6) else "Stage"
    if (kv.vm_rollout_strategy or default) == "LiveUpdate":
        return None
    if kv.vm_rollout_strategy:
        now = f"is {kv.vm_rollout_strategy}"
    else:
        now = "is unset, and the default before v1.6.0 (or for an unknown version) is Stage"
    return (
        f"the KubeVirt CR's spec.configuration.vmRolloutStrategy {now}: KubeVirt acts on a "
        "volume update only with LiveUpdate. Set spec.configuration.vmRolloutStrategy: "
        "LiveUpdate in the KubeVirt CR"
    )


def workload_update_no_live_migrate(ctx: ClusterContext) -> str | None:
    kv, version = ctx.kubevirt, ctx.version
    if kv is None or (version is not None and not version.at_least(1, 3)):
        return None
    if "LiveMigrate" in kv.workload_update_methods:
        return None
    methods = "[" + ", ".join(kv.workload_update_methods) + "]"
    return (
        f"the KubeVirt CR's spec.workloadUpdateStrategy.workloadUpdateMethods is {methods}: "
        "without LiveMigrate KubeVirt never starts the migration that copies the volumes. Add "
        "LiveMigrate to spec.workloadUpdateStrategy.workloadUpdateMethods"
    )


CLUSTER_RULES: tuple[Rule[ClusterContext], ...] = (
    Rule("kubevirt-not-found", Effect.NO_LIVE, "No KubeVirt CR: no live moves.",
         check=kubevirt_not_found),
    Rule("kubevirt-version-unknown", Effect.NO_LIVE,
         "The KubeVirt CR reports no parseable version: no live moves.",
         check=kubevirt_version_unknown),
    Rule("kubevirt-too-old", Effect.NO_LIVE, "KubeVirt older than v1.3.0: no live moves.",
         check=kubevirt_too_old),
    Rule("feature-gates-missing", Effect.NO_LIVE,
         "KubeVirt v1.3/v1.4 without the VMLiveUpdateFeatures, VolumesUpdateStrategy and "
         "VolumeMigration gates.", check=feature_gates_missing),
    Rule("rollout-strategy-not-live-update", Effect.NO_LIVE,
         "vmRolloutStrategy is not LiveUpdate (the default is Stage before v1.6).",
         check=rollout_strategy_not_live_update),
    Rule("workload-update-no-live-migrate", Effect.NO_LIVE,
         "workloadUpdateMethods does not contain LiveMigrate.",
         check=workload_update_no_live_migrate),
)


# --------------------------------------------------------------------------------------------
# VM rules
# --------------------------------------------------------------------------------------------


def journal_present(ctx: VMContext) -> str | None:
    if JOURNAL_ANNOTATION not in ctx.vm.annotations:
        return None
    return (
        f"a previous run's journal ({JOURNAL_ANNOTATION}) is on the VM: the next `apply` "
        "resumes or rolls back that move first; `status` shows where it stopped"
    )


def volume_migration_in_progress(ctx: VMContext) -> str | None:
    if ctx.vm.update_volumes_strategy != "Migration":
        return None
    change = condition(ctx.vmi.conditions, "VolumesChange") if ctx.vmi else None
    in_flight = [
        m.name
        for m in ctx.migrations
        if m.volume_update and m.phase not in FINAL_MIGRATION_PHASES
    ]
    if change is not None and change.status == "True":
        evidence = "the VMI has VolumesChange=True"
    elif in_flight:
        evidence = f"VirtualMachineInstanceMigration {', '.join(in_flight)} is in flight"
    else:
        return None
    return (
        f"a volume migration is under way ({evidence}): wait for it to finish; to cancel it, "
        "restore the VM's original volumes"
    )


def manual_recovery_required(ctx: VMContext) -> str | None:
    found = condition(ctx.vm.conditions, "ManualRecoveryRequired")
    if found is None or found.status != "True":
        return None
    why = found.message or found.reason or "an interrupted volume migration"
    return (
        f"the VM has ManualRecoveryRequired=True ({why}) and KubeVirt will not start it. "
        "Recover it first: restore the original claim names in spec.template.spec.volumes (and "
        "spec.dataVolumeTemplates); or, if the copy finished (the failed migration's "
        "migrationState.targetNodeDomainReadyTimestamp is set), remove "
        "spec.updateVolumesStrategy to keep the destination. Then run again"
    )


@dataclass(frozen=True)
class GitOpsOwner:
    """A GitOps controller that reconciles the VM, as far as its metadata tells."""

    tool: str  # "Argo CD" | "Flux Kustomization" | "Flux HelmRelease"
    name: str  # the Application / Kustomization / HelmRelease ("" when unknown)
    fix: str  # the exact ignore rule to add


_FLUX_SAFE_SSA = frozenset({"IfNotPresent", "Ignore"})


def _target(vm: VMInfo) -> str:
    return f"group: kubevirt.io, kind: VirtualMachine, name: {vm.name}, namespace: {vm.namespace}"


def _pointers() -> str:
    return ", ".join(path.replace(".", "/") for path in MOVED_FIELDS)


def gitops_owners(vm: VMInfo) -> tuple[GitOpsOwner, ...]:
    """Argo CD and Flux owners of ``vm`` that would revert (and so cancel) a move.

    Argo CD: the ``argocd.argoproj.io/tracking-id`` annotation, or the
    ``app.kubernetes.io/instance`` label together with any ``argocd.argoproj.io/`` key (the
    label alone is also set by Helm and others). Flux: the ``kustomize.toolkit.fluxcd.io/name``
    or ``helm.toolkit.fluxcd.io/name`` label; a Kustomization-applied VM annotated
    ``kustomize.toolkit.fluxcd.io/ssa: IfNotPresent|Ignore`` or ``.../reconcile: disabled`` is
    not overwritten by Flux, so it is not an owner here.
    """
    labels, annotations = vm.labels, vm.annotations
    owners = []
    tracking = annotations.get("argocd.argoproj.io/tracking-id")
    argo_keys = any(k.startswith("argocd.argoproj.io/") for k in (*labels, *annotations))
    instance = labels.get("app.kubernetes.io/instance")
    if tracking or (instance and argo_keys):
        app = tracking.split(":", 1)[0] if tracking else instance or ""
        fix = (
            f"in Application {app or '<app>'} add spec.ignoreDifferences: [{{{_target(vm)}, "
            f"jqPathExpressions: [{', '.join(MOVED_FIELDS)}]}}] and "
            "spec.syncPolicy.syncOptions: [RespectIgnoreDifferences=true] (without it a sync "
            "still applies the Git values)"
        )
        owners.append(GitOpsOwner("Argo CD", app, fix))
    kustomization = labels.get("kustomize.toolkit.fluxcd.io/name")
    flux_safe = (
        annotations.get("kustomize.toolkit.fluxcd.io/ssa") in _FLUX_SAFE_SSA
        or annotations.get("kustomize.toolkit.fluxcd.io/reconcile") == "disabled"
    )
    if kustomization and not flux_safe:
        where = f"{labels.get('kustomize.toolkit.fluxcd.io/namespace', '')}/{kustomization}"
        fix = (
            f"in Kustomization {where.lstrip('/')} add spec.driftIgnoreRules: [{{paths: "
            f"[{_pointers()}], target: {{{_target(vm)}}}}}], or annotate the VM in Git with "
            "kustomize.toolkit.fluxcd.io/ssa: IfNotPresent"
        )
        owners.append(GitOpsOwner("Flux Kustomization", kustomization, fix))
    release = labels.get("helm.toolkit.fluxcd.io/name")
    if release:
        where = f"{labels.get('helm.toolkit.fluxcd.io/namespace', '')}/{release}"
        fix = (
            f"in HelmRelease {where.lstrip('/')} add spec.driftDetection.ignore: [{{paths: "
            f"[{_pointers()}], target: {{{_target(vm)}}}}}] and change the chart's volumes "
            "before its next upgrade"
        )
        owners.append(GitOpsOwner("Flux HelmRelease", release, fix))
    return tuple(owners)


def gitops_managed(ctx: VMContext) -> str | None:
    if ctx.allow_gitops_managed:
        return None
    owners = gitops_owners(ctx.vm)
    if not owners:
        return None
    tools = " and ".join(f"{o.tool} {o.name}".strip() for o in owners)
    fixes = "; ".join(o.fix for o in owners)
    return (
        f"the VM is managed by {tools}, which would revert the moved volumes and so cancel the "
        f"migration (or leave the VM in ManualRecoveryRequired). To allow it: {fixes}; then set "
        f"{GITOPS_OPT_IN} in the plan"
    )


VM_NOT_RUNNING = "vm-not-running"


def vm_not_running(ctx: VMContext) -> str | None:
    if ctx.vmi is None:
        return "the VM is stopped (no VMI): KubeVirt copies volumes live only for a running VM"
    if ctx.vmi.phase == "Running":
        return None
    if not ctx.running:
        return (
            f"the VMI has ended (phase {ctx.vmi.phase}), so the VM is stopped: KubeVirt copies "
            "volumes live only for a running VM"
        )
    return (
        f"the VMI is in phase {ctx.vmi.phase or 'unknown'}, not Running: live migration needs a "
        "running VMI; wait until it is Running"
    )


def storage_not_live_migratable(ctx: VMContext) -> str | None:
    found = condition(ctx.vmi.conditions, "StorageLiveMigratable") if ctx.vmi else None
    if found is None or found.status != "False":
        return None
    why = ": ".join(p for p in (found.reason, found.message) if p) or "no reason given"
    return (
        f"the VMI reports StorageLiveMigratable=False ({why}): KubeVirt refuses to migrate its "
        "storage live. Remove the cause, or move it offline (allowStop: true or mode: Offline)"
    )


def rwo_volume_not_moved(ctx: VMContext) -> str | None:
    if not ctx.moving:
        return None
    left = [
        name
        for name, pvc in ctx.claims.items()
        if pvc is not None and is_rwo(pvc.access_modes) and name not in ctx.moving
    ]
    if not left:
        return None
    unplanned = [n for n in left if n not in ctx.wanted]
    described = ", ".join(
        n if n in unplanned else f"{n} (already on its target class)" for n in left
    )
    todo = f"add {', '.join(unplanned)} to the plan, or " if unplanned else ""
    return (
        f"volume {described} is ReadWriteOnce and not moved in this update, but KubeVirt "
        "moves every RWO volume of a VM in the same update ('The volume ... is RWO and not "
        f"included in the migration volumes'): {todo}let the VM move offline (allowStop: true "
        "or mode: Offline)"
    )


def running_field_deprecated(ctx: VMContext) -> str | None:
    if not ctx.vm.uses_running_field:
        return None
    return (
        "the VM uses the deprecated spec.running (KubeVirt warns about it); moves still work, "
        "but consider switching it to spec.runStrategy"
    )


IN_PROGRESS_RULES: tuple[Rule[VMContext], ...] = (
    Rule("journal-present", Effect.IN_PROGRESS,
         f"The VM carries our journal annotation {JOURNAL_ANNOTATION}: a move of ours is open.",
         check=journal_present),
    Rule("volume-migration-in-progress", Effect.IN_PROGRESS,
         "updateVolumesStrategy is Migration and the VMI has VolumesChange=True or a "
         "volume-update VMIM is in flight.", check=volume_migration_in_progress),
)

# Checked before anything else about a VM: after an interrupted migration the VM's spec may
# name a half-copied destination, so even a VM whose claims all sit on the target class is not
# "in sync" until it is recovered.
RECOVERY_RULES: tuple[Rule[VMContext], ...] = (
    Rule("manual-recovery-required", Effect.BLOCK,
         "The VM has ManualRecoveryRequired=True after an interrupted migration (even if its "
         "claims already name the target class).",
         check=manual_recovery_required),
)

VM_RULES: tuple[Rule[VMContext], ...] = (
    Rule("gitops-managed", Effect.BLOCK,
         "Argo CD or Flux manages the VM and would revert the move, unless the plan allows it.",
         check=gitops_managed),
    Rule(VM_NOT_RUNNING, Effect.NO_LIVE, "No VMI, or the VMI is not Running.",
         check=vm_not_running),
    Rule("storage-not-live-migratable", Effect.NO_LIVE,
         "The VMI has StorageLiveMigratable=False.", check=storage_not_live_migratable),
    Rule("rwo-volume-not-moved", Effect.NO_LIVE,
         "A RWO PVC/DataVolume volume of the VM is not moved in the same update.",
         check=rwo_volume_not_moved),
    Rule("running-field-deprecated", Effect.NOTE, "The VM uses the deprecated spec.running.",
         check=running_field_deprecated),
)


# --------------------------------------------------------------------------------------------
# Volume rules (one wanted volume that is not in sync)
# --------------------------------------------------------------------------------------------


def _claim_ref(ctx: VolumeContext) -> str:
    claim = ctx.volume.claim if ctx.volume else None
    return f"{ctx.vm.namespace}/{claim}"


def volume_not_found(ctx: VolumeContext) -> str | None:
    if ctx.volume is not None:
        return None
    have = _names(v.name for v in ctx.vm.volumes)
    return (
        f"the plan names volume {ctx.want.volume}, but VM {ctx.vm.namespace}/{ctx.vm.name} has "
        f"no such volume (it has: {have}); fix the volume name in the plan"
    )


def volume_not_a_claim(ctx: VolumeContext) -> str | None:
    if ctx.volume is None or ctx.volume.kind in CLAIM_KINDS:
        return None
    return (
        f"volume {ctx.volume.name} is a {ctx.volume.kind} volume; only dataVolume and "
        "persistentVolumeClaim volumes have a StorageClass. Remove it from the plan"
    )


def claim_not_found(ctx: VolumeContext) -> str | None:
    if ctx.volume is None or ctx.volume.kind not in CLAIM_KINDS or ctx.pvc is not None:
        return None
    if not ctx.volume.claim:
        return f"volume {ctx.volume.name} names no claim; fix the VM's volume"
    dv = f" (DataVolume phase {ctx.dv.phase or 'unknown'})" if ctx.dv else ""
    return (
        f"PVC {_claim_ref(ctx)} of volume {ctx.volume.name} does not exist{dv}: there is "
        "nothing to copy. Create or restore it, or fix the VM's volume"
    )


def claim_not_bound(ctx: VolumeContext) -> str | None:
    if ctx.pvc is None or ctx.pvc.phase == "Bound":
        return None
    return (
        f"PVC {_claim_ref(ctx)} is {ctx.pvc.phase or 'in no phase'}, not Bound: only a bound "
        "claim can be copied. Wait until it binds (WaitForFirstConsumer classes bind when the "
        "VM first starts) or fix its StorageClass"
    )


def datavolume_not_succeeded(ctx: VolumeContext) -> str | None:
    if ctx.dv is None or ctx.dv.phase == "Succeeded":
        return None
    progress = f", progress {ctx.dv.progress}" if ctx.dv.progress else ""
    return (
        f"DataVolume {_claim_ref(ctx)} is {ctx.dv.phase or 'in no phase'}{progress}, not "
        "Succeeded: its disk is not fully populated yet. Wait until CDI finishes"
    )


def source_size_unknown(ctx: VolumeContext) -> str | None:
    if ctx.pvc is None or ctx.target.size_bytes > 0:
        return None
    return (
        f"PVC {_claim_ref(ctx)} has no storage request or capacity, so the destination cannot "
        "be sized (it must be at least as large as the source); fix the claim"
    )


def storage_class_not_found(ctx: VolumeContext) -> str | None:
    if ctx.storage_class is not None:
        return None
    wanted = ctx.want.storage_class
    have = _names(sorted(ctx.snapshot.storage_classes))
    if wanted == DEFAULT_CLASS:
        return (
            "the plan asks for the cluster's default StorageClass, but no StorageClass is "
            "annotated storageclass.kubevirt.io/is-default-virt-class or "
            f"storageclass.kubernetes.io/is-default-class (classes: {have}); name the class in "
            "the plan or mark one default"
        )
    return (
        f"StorageClass {wanted} does not exist (classes: {have}); create it or fix "
        "storageClass in the plan"
    )


def _sets(profile: StorageProfileInfo) -> str:
    return ", ".join(f"{m} [{', '.join(a)}]" for a, m in profile.claim_property_sets)


def storage_profile_mismatch(ctx: VolumeContext) -> str | None:
    if ctx.target.offered or ctx.profile is None:
        return None
    wanted = f"{ctx.target.volume_mode or 'Auto'} [{', '.join(ctx.target.access_modes)}]"
    return (
        f"StorageProfile {ctx.profile.name} does not offer {wanted}; it offers: "
        f"{_sets(ctx.profile)}. Set volumeMode/accessModes in the plan to one of these, or to "
        "Auto to follow the profile"
    )


def _live_only_offline(what: str) -> str:
    return (
        f"{what}: KubeVirt cannot migrate its storage live, so the VM can only move offline "
        "(allowStop: true or mode: Offline)"
    )


def shareable_disk(ctx: VolumeContext) -> str | None:
    if ctx.volume is None or not ctx.volume.shareable:
        return None
    return _live_only_offline(f"disk {ctx.volume.name} is shareable")


def lun_disk(ctx: VolumeContext) -> str | None:
    if ctx.volume is None or ctx.volume.disk_type != "lun":
        return None
    return _live_only_offline(f"volume {ctx.volume.name} is attached as a LUN")


def virtiofs_filesystem(ctx: VolumeContext) -> str | None:
    if ctx.volume is None or not ctx.volume.filesystem:
        return None
    return _live_only_offline(f"volume {ctx.volume.name} is shared as a virtiofs filesystem")


def hotplug_volume(ctx: VolumeContext) -> str | None:
    kv, version = ctx.snapshot.kubevirt, ctx.version
    if ctx.volume is None or not ctx.volume.hotpluggable or kv is None or version is None:
        return None  # no CR / unknown version already rule live out (kubevirt-* rules)
    if version.at_least(1, 5):
        return None
    return (
        f"volume {ctx.volume.name} is hotplugged, and KubeVirt {kv.version} refuses "
        "hotplugged volumes in a volume migration (allowed from v1.5.0): upgrade KubeVirt, or "
        "move it offline (allowStop: true or mode: Offline)"
    )


def persistent_reservation(ctx: VolumeContext) -> str | None:
    if ctx.volume is None or not ctx.volume.persistent_reservation:
        return None
    return _live_only_offline(f"LUN {ctx.volume.name} uses SCSI persistent reservation")


def content_type_not_kubevirt(ctx: VolumeContext) -> str | None:
    pvc = ctx.pvc
    if pvc is None or pvc.volume_mode != "Block" or ctx.target.volume_mode != "Filesystem":
        return None
    content = pvc.annotations.get(CONTENT_TYPE_ANNOTATION)
    if content is None or content == "kubevirt":
        return None
    return (
        f"PVC {_claim_ref(ctx)} has {CONTENT_TYPE_ANNOTATION}: {content}, and CDI clones Block "
        "to Filesystem only for contentType kubevirt. Keep volumeMode Block (or Auto), or "
        "move it live"
    )


VOLUME_RULES: tuple[Rule[VolumeContext], ...] = (
    Rule("volume-not-found", Effect.BLOCK, "The plan names a volume the VM does not have.",
         check=volume_not_found),
    Rule("volume-not-a-claim", Effect.BLOCK,
         "The plan names a volume that is not a dataVolume/persistentVolumeClaim.",
         check=volume_not_a_claim),
    Rule("claim-not-found", Effect.BLOCK, "The volume's PVC does not exist.",
         check=claim_not_found),
    Rule("claim-not-bound", Effect.BLOCK, "The volume's PVC is not Bound.",
         check=claim_not_bound),
    Rule("datavolume-not-succeeded", Effect.BLOCK, "The volume's DataVolume is not Succeeded.",
         check=datavolume_not_succeeded),
    Rule("source-size-unknown", Effect.BLOCK,
         "The source PVC has no request/capacity to size the destination from.",
         check=source_size_unknown),
    Rule("storage-class-not-found", Effect.BLOCK, "The target StorageClass does not exist.",
         check=storage_class_not_found),
    Rule("storage-profile-mismatch", Effect.BLOCK,
         "The target StorageProfile does not offer the wanted volumeMode/accessModes.",
         check=storage_profile_mismatch),
    Rule("shareable-disk", Effect.NO_LIVE, "The disk is shareable.", check=shareable_disk),
    Rule("lun-disk", Effect.NO_LIVE, "The volume is a LUN disk.", check=lun_disk),
    Rule("virtiofs-filesystem", Effect.NO_LIVE, "The volume is a virtiofs filesystem.",
         check=virtiofs_filesystem),
    Rule("hotplug-volume", Effect.NO_LIVE, "The volume is hotplugged (KubeVirt < v1.5.0).",
         check=hotplug_volume),
    Rule("persistent-reservation", Effect.NO_LIVE, "The LUN uses SCSI persistent reservation.",
         check=persistent_reservation),
    Rule("content-type-not-kubevirt", Effect.NO_OFFLINE,
         "Block -> Filesystem clone of a PVC whose contentType is not kubevirt.",
         check=content_type_not_kubevirt),
)


# --------------------------------------------------------------------------------------------
# Run-state rules: the plan's mode / allowStop against the VM (Effect BLOCK)
# --------------------------------------------------------------------------------------------


def live_required(ctx: RunContext) -> str | None:
    if ctx.mode is not Mode.LIVE or not ctx.live_blockers:
        return None
    return (
        f"the plan's mode is Live, but the VM cannot move live ({_join(ctx.live_blockers)}): "
        "fix that, or set mode: Auto to move offline when allowed"
    )


def offline_needs_stop(ctx: RunContext) -> str | None:
    if ctx.mode is not Mode.OFFLINE or not ctx.running or ctx.allow_stop:
        return None
    return (
        "the plan's mode is Offline and the VM is running: set allowStop: true so the "
        "reconciler may stop it (its run strategy is restored afterwards), or stop it yourself"
    )


def stop_not_allowed(ctx: RunContext) -> str | None:
    if ctx.mode is not Mode.AUTO or not ctx.running or ctx.allow_stop or not ctx.live_blockers:
        return None
    return (
        f"the VM is running and cannot move live ({_join(ctx.live_blockers)}): set "
        "allowStop: true to let the reconciler stop it and move the disks offline, or fix that"
    )


def offline_impossible(ctx: RunContext) -> str | None:
    goes_offline = ctx.mode is Mode.OFFLINE or (ctx.mode is Mode.AUTO and ctx.live_blockers)
    if not goes_offline or not ctx.offline_blockers:
        return None
    return (
        f"the VM would move offline, but an offline copy is impossible "
        f"({_join(ctx.offline_blockers)}); see that reason"
    )


RUN_RULES: tuple[Rule[RunContext], ...] = (
    Rule("live-required", Effect.BLOCK, "mode: Live, but live is impossible.",
         check=live_required),
    Rule("offline-needs-stop", Effect.BLOCK,
         "mode: Offline on a running VM without allowStop.", check=offline_needs_stop),
    Rule("stop-not-allowed", Effect.BLOCK,
         "A running VM cannot move live and allowStop is false.", check=stop_not_allowed),
    Rule("offline-impossible", Effect.BLOCK,
         "The VM must move offline, but a volume cannot be cloned offline.",
         check=offline_impossible),
)


def decide(ctx: RunContext) -> tuple[bool | None, tuple[Finding, ...]]:
    """Live (True), offline (False) or blocked (None, with the run-state findings)."""
    findings = evaluate(RUN_RULES, ctx)
    if findings:
        return None, findings
    return (ctx.mode is not Mode.OFFLINE and not ctx.live_blockers), ()


# --------------------------------------------------------------------------------------------
# Standalone rules: decided directly by diff, listed here so the catalog is complete
# --------------------------------------------------------------------------------------------

VM_NOT_FOUND = RuleInfo("vm-not-found", Effect.BLOCK, "A VM the plan names does not exist.")
VM_BLOCKED = RuleInfo(
    "vm-blocked", Effect.BLOCK,
    "The volume could move, but another volume or the VM is blocked: a VM moves as a whole.",
)
NAMESPACE_NOT_ALLOWED = RuleInfo(
    "namespace-not-allowed", Effect.PROBLEM, "The plan's namespace is not in the allow-list."
)
CONFLICTING_TARGETS = RuleInfo(
    "conflicting-targets", Effect.PROBLEM,
    "Two plans want different targets for the same VM volume (with live labels).",
)
CONFLICTING_PLAN_SETTINGS = RuleInfo(
    "conflicting-plan-settings", Effect.PROBLEM,
    "Two plans move volumes of the same VM with different mode/allowStop/retention/window/"
    "timeout/allowGitOpsManaged.",
)
STANDALONE_RULES: tuple[RuleInfo, ...] = (
    VM_NOT_FOUND,
    VM_BLOCKED,
    NAMESPACE_NOT_ALLOWED,
    CONFLICTING_TARGETS,
    CONFLICTING_PLAN_SETTINGS,
)


def vm_not_found(namespace: str, name: str, plan: str) -> Finding:
    return Finding(
        VM_NOT_FOUND.id,
        VM_NOT_FOUND.effect,
        f"plan {plan} names VM {namespace}/{name}, which does not exist: fix the name in the "
        "plan's virtualMachines, or remove it",
    )


CATALOG: tuple[RuleInfo, ...] = (
    *CLUSTER_RULES,
    *RECOVERY_RULES,
    *IN_PROGRESS_RULES,
    *VM_RULES,
    *VOLUME_RULES,
    *RUN_RULES,
    *STANDALONE_RULES,
)
