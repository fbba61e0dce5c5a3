"""The node side of the real engine: what runs on a node, played by us; everything else
(virt-controller, virt-api, cdi-controller, the scheduler, the PV binder) is upstream code.

Three controllers on the simulator's framework (``testenv.simulator.core``: watches, a store,
one worker):

- ``handler.VirtHandler``: virt-handler's part of a VMI (Scheduled -> Running, the
  ``LiveMigratable``/``StorageLiveMigratable`` conditions recomputed as ``status.
  migratedVolumes`` appears, the migration hand-off on target and source, completion,
  failure and abort, shutdown), and the kubelet's end of virt-launcher pods. VMI status is
  written as ServiceAccount ``kubevirt:kubevirt-handler`` (virt-api's VMI mutator reverts
  status writes by anyone else), in the JSON shape KubeVirt's Go types give it:
  virt-controller patches VMI status with JSON-Patch ``test`` operations against its cached
  Go object.
- ``cdi.CdiWorkers``: the kubelet running CDI's worker pods (importer, upload server,
  clone source, populator prep): Running, then completed with a termination message, or
  failed and restarted (``restartPolicy: OnFailure``), or failed for good.
- ``csi.Provisioner``: a CSI external-provisioner for every StorageClass (dynamic PVs once
  the PV binder hands a claim to it; claims of CDI populators are skipped as a real
  provisioner skips them), the deleter, and the simulated disk content hash.

Knobs the node side decides (``sim.vmstorage.dev/`` annotations, as on the simulator):
``fault`` on a DataVolume (fail, fail-times:N, fatal, stall: its worker pod) or on a VM or
VMIM (fail, fail-times:N, fatal, stall: the migration), ``copy-seconds`` on a DataVolume,
``not-live-migratable`` on a VM template, ``migration-hold: target-ready`` on a VM or VMIM
(node side only: the migration stops once the target domain is ready, before the source
acknowledges it), and ``copy_seconds_per_gib``; and faults on objects
that do not exist yet, from ConfigMap ``kube-system/testenv-faults`` (``faults.FaultFeed``),
where key ``copy-seconds-per-gib`` also changes ``copy_seconds_per_gib`` while it is set.
"""

from __future__ import annotations

from typing import Any

from testenv.simulator.core import RESOURCES, ResourceInfo, SimConfig, Simulator

RESOURCES.setdefault("nodes", ResourceInfo("v1", "Node", False))


def start(api: Any, handler_api: Any, config: SimConfig | None = None) -> Simulator:
    """Start the node side on an admin client (pods, PVs, claims) and a client acting as
    virt-handler's ServiceAccount (VMI status); call ``stop()`` on the result."""
    from testenv.node import cdi, csi, faults, handler

    sim = Simulator(api, config, [handler.VirtHandler, cdi.CdiWorkers, csi.Provisioner,
                                     faults.FaultFeed])
    handler.attach_handler_client(sim, handler_api)
    sim.start()
    return sim
