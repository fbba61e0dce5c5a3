"""The node side of the real engine: what runs on a node, played by us; everything else
(virt-controller, virt-api, cdi-controller, the scheduler, the PV binder) is upstream code.

Three controllers on the simulator's framework (``testenv.node.runtime``: watches, a store,
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
  failed and restarted (``restartPolicy: OnFailure``), or failed for good; each pod an IP
  on the engine's pod network (``PodNetwork``), where a running importer or clone source
  serves its copy's progress to cdi-controller (``metrics``, the container's :8443).
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

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from testenv.node.metrics import MetricsServer
from testenv.node.runtime import RESOURCES, ResourceInfo, SimConfig, Simulator

RESOURCES.setdefault("nodes", ResourceInfo("v1", "Node", False))


@dataclass(frozen=True)
class PodNetwork:
    """Where worker pods live (``cdi.serve_metrics``): their IPs' network, and the Unix
    socket the engine's pod network hands their port 8443 to, served with ``cert``/``key``."""

    cidr: str
    socket: Path
    cert: Path
    key: Path


@dataclass
class NodeSide:
    """The running node side: its simulator (controllers, store, crashes) and the worker
    containers' metrics server, if any."""

    sim: Simulator
    metrics: MetricsServer | None = None

    def stop(self) -> None:
        """Stop the controllers, then the metrics server (its socket removed)."""
        self.sim.stop()
        if self.metrics is not None:
            self.metrics.close()


def start(api: Any, handler_api: Any, config: SimConfig | None = None,
          pod_network: PodNetwork | None = None) -> NodeSide:
    """Start the node side on an admin client (pods, PVs, claims) and a client acting as
    virt-handler's ServiceAccount (VMI status), CDI's worker pods on ``pod_network``
    (without it they get no IP, and no progress); call ``stop()`` on the result."""
    from testenv.node import cdi, csi, faults, handler

    sim = Simulator(api, config, [handler.VirtHandler, cdi.CdiWorkers, csi.Provisioner,
                                     faults.FaultFeed])
    handler.attach_handler_client(sim, handler_api)
    node = NodeSide(sim)
    if pod_network is not None:
        node.metrics = cdi.serve_metrics(sim, pod_network.cidr, pod_network.socket,
                                         pod_network.cert, pod_network.key)
    try:
        sim.start()
    except BaseException:
        node.stop()
        raise
    return node
