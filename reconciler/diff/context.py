"""What each kind of rule looks at: contexts, pure joins over one ``Snapshot``, built once per
VM and volume by ``judge`` and handed to the rule tables. Also the KubeVirt ``Version``."""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass

from reconciler.diff.target import CLAIM_KINDS, TargetSpec, is_in_sync, resolve_target
from reconciler.model.live import (
    DataVolumeInfo,
    KubeVirtInfo,
    MigrationInfo,
    PVCInfo,
    Snapshot,
    StorageClassInfo,
    StorageProfileInfo,
    VMIInfo,
    VMInfo,
    VMVolume,
)
from reconciler.model.plan import Mode
from reconciler.model.verdict import DesiredVolume, Finding

FINAL_VMI_PHASES = frozenset({"Succeeded", "Failed"})

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

    @property
    def in_sync(self) -> bool:
        """The claim already is what the plan wants (``target.is_in_sync``)."""
        return is_in_sync(self.volume, self.pvc, self.want)


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
        m for m in snapshot.migrations if m.namespace == vm.namespace and m.vmi_name == vm.name
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
