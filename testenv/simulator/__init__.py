"""Simulated cluster controllers (CSI provisioner, CDI, KubeVirt) for a bare kube-apiserver.

`start(api)` builds every known controller and starts them; see `core` for the framework.
Modules: `storage` (StorageProfiles, CSI provisioner, pvc/pv-protection, DataVolumes),
`cdi_populator`, `pods` (virt-launcher Pods, kubelet/pod-GC parts), `kubevirt` (VM, VMI),
`kubevirt_migration` (workload updater, migrations), `kubevirt_rules` (pure rules),
`snapshot` (VirtualMachineSnapshot lock).

Every knob, in one place. `sim:` stands for the annotation prefix `sim.vmstorage.dev/`;
"retried" means the phase stays `*InProgress`, `Running=False reason=Error`, `restartCount`
rises and a Warning `ImportFailed`/`CloneFailed` Event is recorded per attempt.

| knob | on | effect |
|---|---|---|
| `sim:fault: fail` | DataVolume | every fill attempt fails, retried, until removed |
| `sim:fault: fail-times:N` | DataVolume | N attempts fail (retried), then success |
| `sim:fault: fatal` | DataVolume | the DataVolume goes `Failed` |
| `sim:fault: stall` | DataVolume | progress freezes until the annotation is removed |
| `sim:fault: fail` or `fatal` | VM, VMIM | every migration fails at Running; retried |
| `sim:fault: fail-times:N` | VM, VMIM | the next N migrations fail |
| `sim:fault: stall` | VM, VMIM | no copy progress (aborted after `progressTimeout`) |
| `sim:fault: stall` | VirtualMachineSnapshot | stays InProgress (VM volumes locked) |
| `sim.faults.add(kind, ns, name, Fault)` | test code | the same faults, no annotation |
| `sim:copy-seconds` | DataVolume | seconds the fill takes |
| `sim:claim-property-sets` | StorageClass | JSON claimPropertySets of its StorageProfile |
| `sim:capacity-overhead` | StorageClass | e.g. `-1%`: Block PVs that much smaller |
| `sim:not-live-migratable` | VM template | `<Reason>[: <message>]`: not migratable |
| `sim:version` | KubeVirt CR | the KubeVirt version simulated |
| `sim:migration-backoff-seconds` | KubeVirt CR | retry back-off base (20 s, doubling) |
| `sim:content-hash` | PVC (output) | disk content: "" blank, sha256(URL), copied |
| `vmRolloutStrategy` | KubeVirt CR `spec.configuration` | LiveUpdate (default < v1.6: Stage) |
| `developerConfiguration.featureGates` | same | the three volume-migration gates < v1.5 |
| `workloadUpdateMethods` | CR `spec.workloadUpdateStrategy` | LiveMigrate; Evict alone: evict |
| `migrations.parallelMigrationsPerCluster` | CR `spec.configuration` | 5; more stay Pending |
| `migrations.parallelOutboundMigrationsPerNode` | same | 2 per source node |
| `migrations.progressTimeout` | same | 150 s without progress: abort |
| CSIDriver named like the provisioner | cluster | the class uses CDI populators |
| `cdi.kubevirt.io/storage.usePopulator` | DataVolume | `true`/`false` wins over the CSIDriver |
| `cdi.kubevirt.io/allowClaimAdoption` | DataVolume | adopt a same-name PVC |
| `cdi.kubevirt.io/storage.bind.immediate.requested` | DataVolume | bypass WFFC |
| `cdi.kubevirt.io/permissiveClone` | DataVolume | allow a smaller clone target |
| `cdi.kubevirt.io/clone-strategy` | StorageClass | clone strategy (default csi-clone) |
| `SimConfig.copy_seconds_per_gib` | Python | copy speed (0 = instant) |
| `SimConfig.nodes` | Python | node names (round-robin; migrate to next) |
| `SimConfig.progress_tick` | Python | seconds per progress step / phase dwell |
| `SimConfig.kubevirt_version` | Python | default version (v1.9.0) |
| `SimConfig.migration_backoff_base` | Python | default back-off base (20 s) |
| `SimConfig.retry_base`, `retry_max` | Python | a controller's retry after an API error |

A controller that raises (not an API error) is recorded (`Simulator.take_crashes()`); the
`sim` test fixture fails the running test with its traceback.
"""

from __future__ import annotations

import importlib
import importlib.util
from collections.abc import Sequence
from typing import Any

from testenv.node.runtime import (
    RESOURCES,
    ApiError,
    Client,
    Controller,
    ControllerCrash,
    Fault,
    FaultAction,
    Faults,
    Key,
    SimConfig,
    Simulator,
    Store,
    content_hash,
)

__all__ = [
    "RESOURCES",
    "ApiError",
    "Client",
    "Controller",
    "ControllerCrash",
    "Fault",
    "FaultAction",
    "Faults",
    "Key",
    "SimConfig",
    "Simulator",
    "Store",
    "all_controllers",
    "content_hash",
    "start",
]


def all_controllers() -> list[type[Controller]]:
    """The storage controllers, plus the KubeVirt ones when that module exists, and the
    VirtualMachineSnapshot controller."""
    from testenv.simulator import pods, storage

    found: list[type[Controller]] = [*storage.CONTROLLERS, *pods.CONTROLLERS]
    for name in ("kubevirt", "kubevirt_migration"):
        if importlib.util.find_spec(f"testenv.simulator.{name}") is not None:
            found.extend(importlib.import_module(f"testenv.simulator.{name}").CONTROLLERS)
    from testenv.simulator import snapshot

    found.extend(snapshot.CONTROLLERS)
    return found


def start(
    api: Any,
    config: SimConfig | None = None,
    controllers: Sequence[type[Controller]] | None = None,
) -> Simulator:
    """Build a simulator on a pykube `HTTPClient`, start it and return it (call `stop()`)."""
    sim = Simulator(api, config, all_controllers() if controllers is None else controllers)
    sim.start()
    return sim
