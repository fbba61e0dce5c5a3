"""Cluster rules: KubeVirt's version and CR configuration for live moves (Effect NO_LIVE).
Facts behind each rule: reference/kubevirt-storage-migration.md."""

from __future__ import annotations

from reconciler.diff.context import ClusterContext
from reconciler.diff.rule import Rule
from reconciler.model.verdict import Effect

# Gates that must be listed explicitly before they went GA in v1.5.0.
VOLUME_UPDATE_GATES = ("VMLiveUpdateFeatures", "VolumesUpdateStrategy", "VolumeMigration")


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
    Rule(
        "kubevirt-not-found",
        Effect.NO_LIVE,
        "No KubeVirt CR: no live moves.",
        check=kubevirt_not_found,
    ),
    Rule(
        "kubevirt-version-unknown",
        Effect.NO_LIVE,
        "The KubeVirt CR reports no parseable version: no live moves.",
        check=kubevirt_version_unknown,
    ),
    Rule(
        "kubevirt-too-old",
        Effect.NO_LIVE,
        "KubeVirt older than v1.3.0: no live moves.",
        check=kubevirt_too_old,
    ),
    Rule(
        "feature-gates-missing",
        Effect.NO_LIVE,
        "KubeVirt v1.3/v1.4 without the VMLiveUpdateFeatures, VolumesUpdateStrategy and "
        "VolumeMigration gates.",
        check=feature_gates_missing,
    ),
    Rule(
        "rollout-strategy-not-live-update",
        Effect.NO_LIVE,
        "vmRolloutStrategy is not LiveUpdate (the default is Stage before v1.6).",
        check=rollout_strategy_not_live_update,
    ),
    Rule(
        "workload-update-no-live-migrate",
        Effect.NO_LIVE,
        "workloadUpdateMethods does not contain LiveMigrate.",
        check=workload_update_no_live_migrate,
    ),
)
