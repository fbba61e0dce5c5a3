"""The objects the real engine creates beside the generated manifests: the KubeVirt and CDI
CRs with the status their operators would write, fake nodes labelled the way virt-handler's
node labeller labels a node, KWOK's stages, and virt-api's webhooks registered by URL.

Each is ours (written from the upstream types and behaviour), not copied from upstream files.
"""

from __future__ import annotations

import base64
import copy
from collections.abc import Iterable
from typing import Any

KUBEVIRT_NAMESPACE = "kubevirt"
CDI_NAMESPACE = "cdi"

FEATURE_GATES: tuple[str, ...] = (
    # What a cluster using the features of our tests and demo enables. Volume migration
    # (VolumesUpdateStrategy, VolumeMigration, VMLiveUpdateFeatures) is GA in v1.8.
    "PersistentReservation",  # LUN disks with reservation: true
    "EnableVirtioFsStorageVolumes",  # filesystems: virtiofs on a PVC
    "HotplugVolumes",  # hotpluggable volumes
    "DeclarativeHotplugVolumes",
    "ExpandDisks",
    "Snapshot",
    "VMExport",
)

CPU_MODEL = "Skylake-Client-IBRS"
"""The host-model CPU the fake nodes report (virt-handler's node labeller would find one)."""


def kubevirt_cr(feature_gates: Iterable[str] = FEATURE_GATES) -> dict[str, Any]:
    """The KubeVirt CR: live updates, live migration as the workload update method."""
    return {
        "apiVersion": "kubevirt.io/v1",
        "kind": "KubeVirt",
        "metadata": {"name": "kubevirt", "namespace": KUBEVIRT_NAMESPACE},
        "spec": {
            "certificateRotateStrategy": {},
            "configuration": {
                "vmRolloutStrategy": "LiveUpdate",
                "developerConfiguration": {"featureGates": list(feature_gates)},
            },
            "workloadUpdateStrategy": {"workloadUpdateMethods": ["LiveMigrate"]},
            "imagePullPolicy": "IfNotPresent",
        },
    }


def kubevirt_status(version: str, generation: int, now: str) -> dict[str, Any]:
    """What virt-operator writes once every component is deployed. The workload updater
    acts only when ``phase`` is Deployed and the observed and target deployment IDs match;
    without ``defaultArchitecture`` the VMI mutator leaves ``spec.architecture`` empty and
    the VMI create is denied."""
    deployment_id = "vmsr-real-engine"
    registry = "vmsr.invalid/kubevirt"

    def condition(type_: str, status: str, reason: str, message: str) -> dict[str, Any]:
        return {"type": type_, "status": status, "reason": reason, "message": message,
                "lastProbeTime": now, "lastTransitionTime": now}

    return {
        "phase": "Deployed",
        "conditions": [
            condition("Available", "True", "AllComponentsReady", "All components are ready."),
            condition("Progressing", "False", "AllComponentsReady", "All components are ready."),
            condition("Degraded", "False", "AllComponentsReady", "All components are ready."),
            condition("Created", "True", "AllResourcesCreated", "All resources were created."),
        ],
        "operatorVersion": version,
        "observedKubeVirtVersion": version,
        "targetKubeVirtVersion": version,
        "observedKubeVirtRegistry": registry,
        "targetKubeVirtRegistry": registry,
        "observedDeploymentID": deployment_id,
        "targetDeploymentID": deployment_id,
        "observedDeploymentConfig": "{}",
        "targetDeploymentConfig": "{}",
        "observedGeneration": generation,
        "defaultArchitecture": "amd64",
        "outdatedVirtualMachineInstanceWorkloads": 0,
    }


def cdi_cr() -> dict[str, Any]:
    """The CDI CR (cluster-scoped) as cdi-operator's default install creates it."""
    return {
        "apiVersion": "cdi.kubevirt.io/v1beta1",
        "kind": "CDI",
        "metadata": {"name": "cdi"},
        "spec": {
            "config": {"featureGates": ["HonorWaitForFirstConsumer"]},
            "imagePullPolicy": "IfNotPresent",
            "infra": {}, "workload": {},
        },
    }


def cdi_status(version: str, now: str) -> dict[str, Any]:
    """What cdi-operator writes once deployed (cdi-controller refuses to work without an
    active CDI: a CR whose phase is not Error)."""

    def condition(type_: str, status: str, reason: str) -> dict[str, Any]:
        return {"type": type_, "status": status, "reason": reason, "message": "",
                "lastHeartbeatTime": now, "lastTransitionTime": now}

    return {
        "phase": "Deployed",
        "operatorVersion": version,
        "observedVersion": version,
        "targetVersion": version,
        "conditions": [condition("Available", "True", "Completed"),
                       condition("Progressing", "False", "Completed"),
                       condition("Degraded", "False", "Completed")],
    }


NODE_ALLOCATABLE: dict[str, str] = {
    "cpu": "32",
    "memory": "256Gi",
    "ephemeral-storage": "100Gi",
    "pods": "110",
    "devices.kubevirt.io/kvm": "1k",
    "devices.kubevirt.io/tun": "1k",
    "devices.kubevirt.io/vhost-net": "1k",
    # virt-handler's device controller serves the pr-helper socket as a device plugin when
    # the PersistentReservation gate is on (device_controller.go), and virt-controller's
    # launcher pod for a LUN disk with reservation requests it (template.go PrDevice).
    "devices.kubevirt.io/pr-helper": "1k",
}


def fake_node(name: str) -> dict[str, Any]:
    """A node for KWOK to keep alive, with the labels virt-handler's node labeller would
    give it (schedulable, q35, its host-model CPU, which makes it a migration target of
    the others) and the device-plugin resources virt-launcher pods request."""
    return {
        "apiVersion": "v1",
        "kind": "Node",
        "metadata": {
            "name": name,
            "labels": {
                "kubernetes.io/arch": "amd64",
                "kubernetes.io/os": "linux",
                "kubernetes.io/hostname": name,
                "type": "kwok",
                "kubevirt.io/schedulable": "true",
                "machine-type.node.kubevirt.io/q35": "true",
                f"host-model-cpu.node.kubevirt.io/{CPU_MODEL}": "true",
                f"cpu-model-migration.node.kubevirt.io/{CPU_MODEL}": "true",
                f"cpu-model.node.kubevirt.io/{CPU_MODEL}": "true",
                "cpu-vendor.node.kubevirt.io/Intel": "true",
            },
            "annotations": {"kwok.x-k8s.io/node": "fake", "node.alpha.kubernetes.io/ttl": "0"},
        },
        "spec": {},
    }


def _condition_yaml(type_: str, status: str, reason: str, message: str) -> str:
    return (f"- type: {type_}\n  status: \"{status}\"\n  reason: {reason}\n"
            f"  message: \"{message}\"\n  lastHeartbeatTime: {{{{ $now | Quote }}}}\n"
            f"  lastTransitionTime: {{{{ $now | Quote }}}}\n")


_NODE_CONDITIONS = "".join([
    _condition_yaml("Ready", "True", "KubeletReady", "kubelet is posting ready status"),
    _condition_yaml("MemoryPressure", "False", "KubeletHasSufficientMemory",
                    "kubelet has sufficient memory available"),
    _condition_yaml("DiskPressure", "False", "KubeletHasNoDiskPressure",
                    "kubelet has no disk pressure"),
    _condition_yaml("PIDPressure", "False", "KubeletHasSufficientPID",
                    "kubelet has sufficient PID available"),
    _condition_yaml("NetworkUnavailable", "False", "RouteCreated", "routes created"),
])

_NODE_STATUS = (
    "{{ $now := Now }}\n"
    "conditions:\n" + _NODE_CONDITIONS
    + "addresses:\n- type: InternalIP\n  address: {{ NodeIP | Quote }}\n"
    "- type: Hostname\n  address: {{ .metadata.name | Quote }}\n"
    "allocatable:\n" + "".join(f"  {k}: \"{v}\"\n" for k, v in NODE_ALLOCATABLE.items())
    + "capacity:\n" + "".join(f"  {k}: \"{v}\"\n" for k, v in NODE_ALLOCATABLE.items())
    + "nodeInfo:\n  architecture: amd64\n  operatingSystem: linux\n"
    "  kubeletVersion: fake\n  containerRuntimeVersion: fake\n  kernelVersion: fake\n"
    "  osImage: fake\n  machineID: \"\"\n  systemUUID: \"\"\n  bootID: \"\"\n"
    "  kubeProxyVersion: fake\n"
    "phase: Running\n"
)

_POD_RUNNING = """{{ $now := Now }}
conditions:
- type: PodReadyToStartContainers
  status: "True"
  lastProbeTime: null
  lastTransitionTime: {{ $now | Quote }}
- type: Initialized
  status: "True"
  lastProbeTime: null
  lastTransitionTime: {{ $now | Quote }}
- type: Ready
  status: "True"
  lastProbeTime: null
  lastTransitionTime: {{ $now | Quote }}
- type: ContainersReady
  status: "True"
  lastProbeTime: null
  lastTransitionTime: {{ $now | Quote }}
- type: PodScheduled
  status: "True"
  lastProbeTime: null
  lastTransitionTime: {{ $now | Quote }}
{{ range .spec.readinessGates }}
- type: {{ .conditionType | Quote }}
  status: "True"
  lastProbeTime: null
  lastTransitionTime: {{ $now | Quote }}
{{ end }}
containerStatuses:
{{ range .spec.containers }}
- name: {{ .name | Quote }}
  image: {{ .image | Quote }}
  imageID: {{ .image | Quote }}
  ready: true
  started: true
  restartCount: 0
  state:
    running:
      startedAt: {{ $now | Quote }}
{{ end }}
{{ if .spec.initContainers }}
initContainerStatuses:
{{ range .spec.initContainers }}
- name: {{ .name | Quote }}
  image: {{ .image | Quote }}
  imageID: {{ .image | Quote }}
  ready: true
  restartCount: 0
  state:
    terminated:
      exitCode: 0
      reason: Completed
      startedAt: {{ $now | Quote }}
      finishedAt: {{ $now | Quote }}
{{ end }}
{{ end }}
hostIP: {{ NodeIPWith .spec.nodeName | Quote }}
podIP: {{ PodIPWith .spec.nodeName false ( or .metadata.uid "" ) ( or .metadata.name "" ) \
( or .metadata.namespace "" ) | Quote }}
phase: Running
startTime: {{ $now | Quote }}
"""


def kwok_stages() -> list[dict[str, Any]]:
    """KWOK's stages here: nodes become Ready at once and stay so (KWOK renews their
    Leases); a scheduled pod runs at once, except CDI's worker pods (label
    ``cdi.kubevirt.io``: the node side runs and completes them); a deleted pod goes away at
    once (the kubelet's final delete), except KubeVirt's (label ``kubevirt.io``: the node
    side shuts the guest down first)."""
    return [
        _stage("vmsr-node-ready", "Node", [
            {"key": '.status.conditions.[] | select( .type == "Ready" ) | .status',
             "operator": "NotIn", "values": ["True"]},
        ], {"statusTemplate": _NODE_STATUS}),
        _stage("vmsr-node-heartbeat", "Node", [
            {"key": ".status.phase", "operator": "In", "values": ["Running"]},
        ], {"statusTemplate": _NODE_STATUS}, delay_ms=60_000),
        _stage("vmsr-pod-running", "Pod", [
            {"key": ".metadata.deletionTimestamp", "operator": "DoesNotExist"},
            {"key": ".spec.nodeName", "operator": "Exists"},
            {"key": ".status.phase", "operator": "In", "values": ["Pending"]},
            {"key": '.metadata.labels["cdi.kubevirt.io"]', "operator": "DoesNotExist"},
        ], {"statusTemplate": _POD_RUNNING}),
        _stage("vmsr-pod-delete", "Pod", [
            {"key": ".metadata.deletionTimestamp", "operator": "Exists"},
            {"key": '.metadata.labels["kubevirt.io"]', "operator": "DoesNotExist"},
        ], {"delete": True}),
    ]


def _stage(name: str, kind: str, expressions: list[dict[str, Any]], next_: dict[str, Any],
           *, delay_ms: int = 0) -> dict[str, Any]:
    spec: dict[str, Any] = {
        "resourceRef": {"apiGroup": "v1", "kind": kind},
        "selector": {"matchExpressions": expressions},
        "next": next_,
    }
    if delay_ms:
        spec["delay"] = {"durationMilliseconds": delay_ms}
    return {"apiVersion": "kwok.x-k8s.io/v1alpha1", "kind": "Stage", "metadata": {"name": name},
            "spec": spec}


def webhook_by_url(config: dict[str, Any], port: int, ca_bundle: bytes) -> dict[str, Any]:
    """A copy of a generated webhook configuration calling ``https://127.0.0.1:<port>``
    instead of the virt-api Service (same paths), trusting ``ca_bundle``."""
    out = copy.deepcopy(config)
    out.pop("status", None)
    out["metadata"].pop("creationTimestamp", None)
    for hook in out.get("webhooks") or []:
        client = hook["clientConfig"]
        path = (client.pop("service", None) or {}).get("path") or "/"
        client["url"] = f"https://127.0.0.1:{port}{path}"
        client["caBundle"] = base64.b64encode(ca_bundle).decode()
    return out
