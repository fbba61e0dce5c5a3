"""Who holds a claim now: the VMs, VMIs and pods that refer to it, read afresh. Used before a
claim is deleted (a leftover destination, a source under retention Delete) and by `sources`."""

from __future__ import annotations

from collections.abc import Mapping

from reconciler.apply.read import Obj, PodState, pod_state, vm_state, vmi_state
from reconciler.kube.client import Cluster
from reconciler.kube.resources import PODS, VIRTUAL_MACHINES, VMIS


def pods(cluster: Cluster, namespace: str) -> dict[str, PodState]:
    """The namespace's pods by name."""
    return {state.name: state for state in map(pod_state, cluster.list_objects(PODS, namespace))}


def mounting(pods: Mapping[str, PodState], claim: str) -> list[str]:
    """Pods that are not terminated and mount ``claim``: they must let go before a delete.
    A pod the claim itself controls is not one: CDI's importer or upload server filling it
    (e.g. a host-assisted clone whose source went away: it never ends) goes with the claim."""
    return sorted(
        name
        for name, pod in pods.items()
        if not pod.ended and claim in pod.claims and pod.controlling_claim != claim
    )


def pinned_by(pods: Mapping[str, PodState], claim: str) -> list[str]:
    """Completed pods, scheduled to a node, that still list ``claim``. Kubernetes'
    pvc-protection counts them (podUsesPVCForDeletion ignores the phase), so a deleted claim
    stays Terminating until they are removed: after a live migration the source virt-launcher
    pod is left Succeeded, owned by the VMI, until the VM stops."""
    return sorted(
        name for name, pod in pods.items() if pod.ended and pod.node and claim in pod.claims
    )


def pods_of(state: Mapping[str, Obj]) -> dict[str, PodState]:
    """A watch's pods (name -> object) read."""
    return {name: pod_state(pod) for name, pod in state.items()}


def users_of(cluster: Cluster, namespace: str, claims: set[str]) -> dict[str, str]:
    """claim -> who refers to it now ("used by VirtualMachine ns/x", "mounted by pod p"): a
    VM (this one included; its volumes or its dataVolumeTemplates), a VMI, or a pod that is
    not terminated and mounts it."""
    users: dict[str, str] = {}
    for raw in cluster.list_objects(VIRTUAL_MACHINES, namespace):
        vm = vm_state(raw)
        names = set(vm.claims.values()) | set(vm.templates)
        for claim in sorted(claims & names):
            users.setdefault(claim, f"used by VirtualMachine {namespace}/{vm.name}")
    for raw in cluster.list_objects(VMIS, namespace):
        vmi = vmi_state(raw)
        for claim in sorted(claims & set(vmi.claims.values())):
            users.setdefault(claim, f"used by VirtualMachineInstance {namespace}/{vmi.name}")
    found = pods(cluster, namespace)
    for claim in sorted(claims):
        holders = mounting(found, claim)
        if holders:
            users.setdefault(claim, f"mounted by pod {', '.join(holders)}")
    return users


def held_by_completed_pods(cluster: Cluster, namespace: str, claims: set[str]) -> dict[str, str]:
    """claim -> the completed pods that keep it from going once deleted (``pinned_by``)."""
    found = pods(cluster, namespace)
    return {c: ", ".join(held) for c in sorted(claims) if (held := pinned_by(found, c))}
