"""virt-launcher pods as real Pod objects, and the kubelet / pod GC parts they need.

KubeVirt runs each VMI in a virt-launcher pod, and during a live migration in two (the
source pod on the old node, a target pod on the new one). Kubernetes and CDI decide whether
a claim is in use from those pods, so the simulator creates them in the API server and
derives "in use" from them, never from its own state:

- a claim is in use while a pod that is scheduled (`spec.nodeName`) and not terminated
  (phase not Succeeded/Failed) mounts it (`spec.volumes[].persistentVolumeClaim`), as the
  CDI (`GetPodsUsingPVCs`) checks it; the pvc-protection controller counts every scheduled
  pod that lists the claim, completed ones too (`pins`);
- the VMI controller creates the launcher pod when the VMI is scheduled, the migration
  controller a target pod per migration; a source pod is left Succeeded after a successful
  migration and deleted when its migration is garbage-collected (5 newest finished per VMI);
- no kubelet and no garbage collector run here: `LauncherPodController` finishes the
  deletion of a deleting pod (grace period 0), deletes pods whose VMI is gone, and fails a
  running VMI whose active pod was deleted (an eviction).

Pod shape (upstream `pkg/virt-controller/services/template.go`): labels `kubevirt.io:
virt-launcher`, `kubevirt.io/created-by: <vmi uid>`, `vm.kubevirt.io/name`; a controller
ownerReference to the VMI; one volume per claim; status written through `pods/status`.
"""

from __future__ import annotations

import copy
import secrets
from collections.abc import Iterable, Mapping
from typing import Any, ClassVar

from testenv.node.runtime import (
    ApiError,
    Controller,
    Key,
    Simulator,
    Store,
    is_deleting,
    key_of,
    now_rfc3339,
    owner_reference,
)

POD = "pods"
VMI = "virtualmachineinstances"
APP_LABEL = "kubevirt.io"
LAUNCHER = "virt-launcher"
CREATED_BY_LABEL = "kubevirt.io/created-by"
VM_NAME_LABEL = "vm.kubevirt.io/name"
MIGRATION_JOB_LABEL = "kubevirt.io/migrationJobUID"
TERMINATED = frozenset({"Succeeded", "Failed"})


def pod_phase(pod: Mapping[str, Any]) -> str:
    """The pod's phase ("Pending" until written)."""
    return str((pod.get("status") or {}).get("phase") or "Pending")


def pod_claims(pod: Mapping[str, Any]) -> set[str]:
    """Claims the pod mounts."""
    return {str(v["persistentVolumeClaim"].get("claimName", ""))
            for v in (pod.get("spec") or {}).get("volumes") or []
            if v.get("persistentVolumeClaim")}


def mounts(pod: Mapping[str, Any], claim: str) -> bool:
    """podUsesPVC: a scheduled, not terminated pod with the claim among its volumes."""
    return (bool((pod.get("spec") or {}).get("nodeName"))
            and pod_phase(pod) not in TERMINATED and claim in pod_claims(pod))


def pins(pod: Mapping[str, Any], claim: str) -> bool:
    """pvc-protection's podUsesPVCForDeletion: a scheduled pod with the claim among its
    volumes, *whatever its phase*: a completed pod (the source virt-launcher pod a
    migration leaves Succeeded) holds a deleting claim until the pod itself is removed."""
    return bool((pod.get("spec") or {}).get("nodeName")) and claim in pod_claims(pod)


def claim_pinners(store: Store, namespace: str, claim: str) -> list[str]:
    """Names of the pods that keep a deleting claim from going (see `pins`), sorted."""
    return [p["metadata"]["name"] for p in store.list(POD, namespace) if pins(p, claim)]


def claim_users(store: Store, namespace: str, claim: str) -> list[str]:
    """Names of the pods that hold a claim (see `mounts`), sorted."""
    return [p["metadata"]["name"] for p in store.list(POD, namespace) if mounts(p, claim)]


def launcher_pods(store: Store, vmi: Mapping[str, Any]) -> list[dict[str, Any]]:
    """Every virt-launcher pod of a VMI (by the created-by label), oldest name first."""
    meta = vmi["metadata"]
    return store.list(POD, meta["namespace"], {APP_LABEL: LAUNCHER,
                                               CREATED_BY_LABEL: meta["uid"]})


def active_pod(store: Store, vmi: Mapping[str, Any], node: str) -> dict[str, Any] | None:
    """The VMI's not terminated launcher pod on `node`, if any."""
    for pod in launcher_pods(store, vmi):
        if (pod.get("spec") or {}).get("nodeName") == node and pod_phase(pod) not in TERMINATED \
                and not is_deleting(pod):
            return pod
    return None


def create_launcher_pod(sim: Simulator, vmi: Mapping[str, Any], node: str,
                        claims: Mapping[str, str], *, migration_uid: str = "") -> dict[str, Any]:
    """Create a Running virt-launcher pod for `vmi` on `node`, mounting `claims`
    (volume name -> claim name)."""
    meta = vmi["metadata"]
    owner = _owner_vm_name(vmi)
    labels = {APP_LABEL: LAUNCHER, CREATED_BY_LABEL: meta["uid"], VM_NAME_LABEL: owner}
    if migration_uid:
        labels[MIGRATION_JOB_LABEL] = migration_uid
    volumes = [{"name": name, "persistentVolumeClaim": {"claimName": claim}}
               for name, claim in sorted(claims.items())]
    mounts_ = [{"name": name, "mountPath": f"/var/run/kubevirt-private/vmi-disks/{name}"}
               for name, _ in sorted(claims.items())]
    version = sim.config.kubevirt_version
    body = {
        "metadata": {"name": f"virt-launcher-{meta['name']}-{secrets.token_hex(3)[:5]}",
                     "namespace": meta["namespace"], "labels": labels,
                     "ownerReferences": [owner_reference(vmi)]},
        "spec": {
            "nodeName": node,
            "restartPolicy": "Never",
            "terminationGracePeriodSeconds": 30,
            "containers": [{"name": "compute",
                            "image": f"quay.io/kubevirt/virt-launcher:{version}",
                            "volumeMounts": mounts_}],
            "volumes": volumes,
        },
    }
    created = sim.client.create(POD, body)
    return set_pod_phase(sim, created, "Running")


def set_pod_phase(sim: Simulator, pod: Mapping[str, Any], phase: str) -> dict[str, Any]:
    """Write the pod's phase (and a Ready condition) through pods/status."""
    if pod_phase(pod) == phase:
        return dict(pod)
    now = now_rfc3339()
    ready = "True" if phase == "Running" else "False"
    status: dict[str, Any] = {"phase": phase,
                              "conditions": [{"type": "Ready", "status": ready,
                                              "lastTransitionTime": now}]}
    if phase == "Running":
        status["startTime"] = now
    meta = pod["metadata"]
    try:
        return sim.client.patch_status(POD, meta["namespace"], meta["name"], {"status": status})
    except ApiError as err:
        if err.code == 404:
            return dict(pod)
        raise


def finish_pods(sim: Simulator, vmi: Mapping[str, Any], phase: str = "Succeeded",
                *, except_pod: str = "") -> None:
    """Mark every not terminated launcher pod of the VMI (but `except_pod`) `phase`."""
    for pod in launcher_pods(sim.store, vmi):
        if pod["metadata"]["name"] != except_pod and pod_phase(pod) not in TERMINATED:
            set_pod_phase(sim, pod, phase)


def delete_pod(sim: Simulator, namespace: str, name: str) -> None:
    """Delete a pod for good (grace period 0: no kubelet waits for containers here)."""
    sim.client.delete(POD, namespace, name, grace_period=0)


def _owner_vm_name(vmi: Mapping[str, Any]) -> str:
    for ref in vmi["metadata"].get("ownerReferences") or []:
        if ref.get("kind") == "VirtualMachine":
            return str(ref.get("name", ""))
    return str(vmi["metadata"]["name"])


class LauncherPodController(Controller):
    """The kubelet and garbage-collector parts for pods (every deleting pod is removed).

    - a deleting pod is removed (grace period 0); if it was the active pod of a running,
      not deleting VMI (an eviction), the VMI fails first, as virt-handler reports it;
    - a pod whose owning VMI is gone is deleted (the GC of dependents)."""

    watches: ClassVar[tuple[str, ...]] = (POD, VMI)

    def keys_for(self, resource: str, obj: dict[str, Any]) -> Iterable[Key]:
        if resource == POD:
            return [key_of(POD, obj)]
        return [key_of(POD, p) for p in self.sim.store.list(
            POD, obj["metadata"]["namespace"], {CREATED_BY_LABEL: obj["metadata"]["uid"]})]

    def reconcile(self, key: Key) -> None:
        pod = self.sim.store.get(*key)
        if pod is None:
            return
        if (pod["metadata"].get("labels") or {}).get(APP_LABEL) != LAUNCHER:
            if is_deleting(pod):  # the kubelet's part for any pod: containers stopped
                delete_pod(self.sim, key[1], key[2])
            return
        namespace, name = key[1], key[2]
        owner = next((r for r in pod["metadata"].get("ownerReferences") or []
                      if r.get("kind") == "VirtualMachineInstance"), None)
        vmi = self.sim.store.get(VMI, namespace, owner["name"]) if owner else None
        if vmi is not None and vmi["metadata"]["uid"] != (owner or {}).get("uid"):
            vmi = None
        if vmi is None:
            delete_pod(self.sim, namespace, name)
            return
        if not is_deleting(pod):
            return
        node = (vmi.get("status") or {}).get("nodeName")
        running = (vmi.get("status") or {}).get("phase") == "Running"
        if running and not is_deleting(vmi) and (pod.get("spec") or {}).get("nodeName") == node:
            self._fail_vmi(vmi)
        delete_pod(self.sim, namespace, name)

    def _fail_vmi(self, vmi: dict[str, Any]) -> None:
        """The active launcher pod went away under a running VMI: the guest is gone."""
        status = copy.deepcopy(vmi.get("status") or {})
        status["phase"] = "Failed"
        history = list(status.get("phaseTransitionTimestamps") or [])
        history.append({"phase": "Failed", "phaseTransitionTimestamp": now_rfc3339()})
        status["phaseTransitionTimestamps"] = history
        conditions = [c for c in status.get("conditions") or [] if c.get("type") != "Ready"]
        conditions.append({"type": "Ready", "status": "False", "reason": "PodTerminating",
                           "message": "virt-launcher pod is terminating",
                           "lastTransitionTime": now_rfc3339()})
        status["conditions"] = conditions
        meta = vmi["metadata"]
        self.sim.client.merge_patch(VMI, meta["namespace"], meta["name"], {
            "metadata": {"resourceVersion": meta["resourceVersion"]}, "status": status})
        self.sim.client.event(vmi, "Warning", "Stopped",
                              "The VirtualMachineInstance crashed (its virt-launcher pod was "
                              "deleted).")


CONTROLLERS: tuple[type[Controller], ...] = (LauncherPodController,)
