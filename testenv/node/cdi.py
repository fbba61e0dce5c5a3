"""The kubelet's part of CDI's worker pods (cdi-controller v1.65 creates them; KWOK leaves
pods labelled ``cdi.kubevirt.io`` to us).

- ``importer``: Running, then after the copy ``Succeeded`` with the termination message
  the importer writes (``{"message": "Import Complete", ...}``), its disk content set on
  its claim (and PV): "" for a blank disk, sha256 of the endpoint for an import.
- ``cdi-clone-source`` (``<target uid>-source-pod``) and ``cdi-upload-server`` on the
  target: both Running (the upload server Ready), the source copies, then both
  ``Succeeded``, the source claim's content carried to the target.
- ``size-detection-*`` (an ``importer``-labelled pod on a clone's source): ``Succeeded``
  with the source image's virtual size in bytes as its termination message (what
  ``qemu-img`` reports; here the source disk minus the filesystem overhead).
- ``cdi-populator-prep`` and anything else: Running (CDI deletes them when done).

A worker pod's containers start only once the kubelet can mount its claims: each Bound to its
PV (until then the pod stays Pending). A populator's worker pod comes with ``nodeName`` set
(CDI's ``SetNodeNameIfPopulator``), before its prime claim is bound; the content it writes
goes on the prime claim and its PV, and travels with the PV when CDI rebinds it to the target
claim (``cc.Rebind``). The target claim gets it at once too (``csi.handed_to``): CDI reports
the DataVolume Succeeded as soon as the target is bound, before the node side could mirror
the PV's content onto it.

A copy takes ``sim.vmstorage.dev/copy-seconds`` of its DataVolume, else its size x
``copy_seconds_per_gib``. Faults, ``sim.vmstorage.dev/fault`` on the DataVolume: ``fail``
(every attempt: the container exits 1 and restarts, ``restartPolicy: OnFailure``, so CDI
shows Running=False/Error and a rising ``status.restartCount``: for a clone, the source pod's
restarts, which cdi-controller's clone-controller copies to the target claim's
``storage.pod.restarts``), ``fail-times:N``, ``fatal`` (the importer exits with a
checksum-mismatch termination message, the one permanent import failure of CDI v1.65: the
DataVolume goes Failed; a clone has no permanent failure in CDI, so on a clone's source pod
``fatal`` fails and restarts as ``fail`` does), ``stall`` (no progress until the annotation
goes). A failed container is restarted after ``RESTART_DELAY``, not the kubelet's back-off
(10 s, doubling).

Progress, as cdi-controller reads it: every worker pod gets a ``podIP`` from the pod network
``serve_metrics`` is given (the engine's, reachable from cdi-controller's network namespace
only), and a running ``importer`` or ``cdi-clone-source`` container serves its progress there
(``testenv.node.metrics``): ``kubevirt_cdi_import_progress_total`` or
``kubevirt_cdi_clone_progress_total``, a counter of percent labelled ``ownerUID`` with its
``OWNER_UID`` environment variable, as CDI v1.65's worker does
(``pkg/monitoring/metrics/cdi-importer``, ``cdi-cloner``). It is the share of the attempt's
copy time elapsed, updated once a second as the worker's is: 0 at each (re)start of the
container, frozen while ``stall`` holds (the copy then resumes where it stopped), 100 when
done. cdi-controller scrapes it every 2-3 s while the pod runs (the import populator, the
host-assisted clone phase, or the DataVolume controller's own pods) and shows it as the
DataVolume's ``status.progress``. Without
``serve_metrics`` worker pods get no ``podIP``: cdi-controller then skips the scrape
(``GetMetricsURL``) and the progress stays ``N/A``; a ``podIP`` it cannot reach would be
worse, as the DataVolume controller writes no DataVolume status at all when its scrape
fails.
"""

from __future__ import annotations

import hashlib
import ipaddress
import json
import math
import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

from testenv.node import rules
from testenv.node.csi import handed_to
from testenv.node.metrics import MetricsServer
from testenv.node.runtime import (
    CONTENT_HASH_ANNOTATION,
    GI,
    Controller,
    FaultAction,
    Key,
    Simulator,
    annotations_of,
    content_hash,
    is_deleting,
    now_rfc3339,
)
from testenv.quantity import to_bytes

POD = "pods"
PVC = "persistentvolumeclaims"
PV = "persistentvolumes"
DV = "datavolumes"
CDI_LABEL = "cdi.kubevirt.io"
SOURCE_POD_SUFFIX = "-source-pod"
COPY_SECONDS_ANNOTATION = "sim.vmstorage.dev/copy-seconds"
RESTART_DELAY = 1.0
"""Seconds a failed worker container waits before the kubelet restarts it."""
TERMINAL = frozenset({"Succeeded", "Failed"})
SIZE_DETECTION_PREFIX = "size-detection-"
COPIERS = frozenset({"importer", "cdi-clone-source"})
PROGRESS_METRICS = {
    "importer": ("kubevirt_cdi_import_progress_total", "The import progress in percentage"),
    "cdi-clone-source": ("kubevirt_cdi_clone_progress_total", "The clone progress in percentage"),
}
"""The progress counter a copier's container serves, by its ``cdi.kubevirt.io`` label."""
OWNER_UID_ENV = "OWNER_UID"
OWNER_UID_ANNOTATION = "cdi.kubevirt.io/ownerUID"


@dataclass(frozen=True)
class _Clock:
    """One attempt's copy, from its container's ``start`` (monotonic): ``copied`` seconds of
    ``duration`` as of ``since``, whether a stall held then (no time is copied while it
    does), and ``reported``, what was copied at the last whole second from ``start`` before
    ``since``. Immutable: the worker replaces it, the metrics server's threads read it."""

    start: float
    since: float
    copied: float = 0.0
    duration: float = 0.0
    stalled: bool = False
    reported: float = 0.0

    def _copied_at(self, at: float) -> float:  # at >= since
        return self.copied + (0.0 if self.stalled else max(0.0, at - self.since))

    def _tick(self, now: float) -> float:
        return self.start + math.floor(now - self.start)

    def _reported_at(self, now: float) -> float:
        tick = self._tick(now)
        return self._copied_at(tick) if tick >= self.since else self.reported

    def advanced(self, now: float, *, stalled: bool, duration: float) -> _Clock:
        """The clock at ``now``, from which on ``stalled`` holds."""
        return _Clock(start=self.start, since=now, copied=self._copied_at(now),
                      duration=duration, stalled=stalled, reported=self._reported_at(now))

    def left(self) -> float:
        return self.duration - self.copied

    def percent(self, now: float) -> float | None:
        """The container's progress counter at ``now``: updated once a second from its start,
        as CDI's ``ProgressReader.timedUpdateProgress`` does (a value that changed on every
        scrape would make cdi-controller write the claim, reconcile and scrape again, in a
        loop); None before its first update."""
        if now - self.start < 1.0:
            return None
        if self.duration <= 0:
            return 100.0
        return min(100.0, 100.0 * self._reported_at(now) / self.duration)


def _phase(pod: Mapping[str, Any]) -> str:
    return str((pod.get("status") or {}).get("phase") or "Pending")


def _claims(pod: Mapping[str, Any]) -> list[str]:
    return [str(v["persistentVolumeClaim"].get("claimName"))
            for v in (pod.get("spec") or {}).get("volumes") or []
            if v.get("persistentVolumeClaim")]


def _env(pod: Mapping[str, Any], name: str) -> str:
    for container in (pod.get("spec") or {}).get("containers") or []:
        for env in container.get("env") or []:
            if env.get("name") == name:
                return str(env.get("value") or "")
    return ""


class CdiWorkers(Controller):
    """The kubelet running CDI's worker pods (see the module docstring)."""

    watches: ClassVar[tuple[str, ...]] = (POD, DV, PVC, PV)

    def __init__(self, sim: Simulator) -> None:
        super().__init__(sim)
        self._started: dict[str, float] = {}  # pod uid -> when this attempt started
        self._clocks: dict[str, _Clock] = {}  # pod uid -> its attempt's copy (copiers)
        self._uids: dict[tuple[str, str], str] = {}  # (namespace, name) -> uid of pods run
        self.pod_network: ipaddress.IPv4Network | None = None  # set by serve_metrics
        self._pod_ips: dict[str, str] = {}  # pod uid -> its podIP
        self._at_ip: dict[str, tuple[str, str, str]] = {}  # podIP -> (namespace, name, uid)
        self._ip_cursor = 0

    def keys_for(self, resource: str, obj: dict[str, Any]) -> Iterable[Key]:
        meta = obj.get("metadata") or {}
        if resource == POD:
            if CDI_LABEL in (meta.get("labels") or {}):
                return [(POD, meta.get("namespace", ""), meta["name"])]
            return []
        if resource in (PVC, PV):  # a claim bound: the pods waiting to mount it
            namespace, claim = meta.get("namespace", ""), meta.get("name", "")
            if resource == PV:
                ref = (obj.get("spec") or {}).get("claimRef") or {}
                namespace, claim = ref.get("namespace", ""), ref.get("name", "")
            return [(POD, p["metadata"]["namespace"], p["metadata"]["name"])
                    for p in self.sim.store.list(POD, namespace) if claim and CDI_LABEL in (
                        p["metadata"].get("labels") or {}) and claim in _claims(p)]
        # a DataVolume changed (a stall lifted): look at every worker pod again
        return [(POD, p["metadata"]["namespace"], p["metadata"]["name"])
                for p in self.sim.store.list(POD) if CDI_LABEL in (
                    p["metadata"].get("labels") or {})]

    def reconcile(self, key: Key) -> None:
        _, namespace, name = key
        pod = self.sim.store.get(POD, namespace, name)
        if pod is None or is_deleting(pod) or _phase(pod) in TERMINAL:
            self._forget(namespace, name)
            return
        if not (pod.get("spec") or {}).get("nodeName"):
            return  # not scheduled yet
        uid = pod["metadata"]["uid"]
        state = self._container_state(pod)
        if "running" not in state:
            if "terminated" in state:  # a failed attempt: the kubelet restarts it
                finished = self._started.get(uid, 0.0)
                if time.monotonic() - finished < RESTART_DELAY:
                    self.sim.enqueue(self, key, RESTART_DELAY)
                    return
            elif not self._volumes_ready(pod):
                return  # the kubelet waits to mount them; a claim or PV event wakes us
            if self._uids.get((namespace, name), uid) != uid:  # an earlier pod of that name
                self._forget(namespace, name)  # went while we did not look
            self._uids[(namespace, name)] = uid
            self._run(pod)
            self._started[uid] = time.monotonic()
            self._clocks[uid] = _Clock(self._started[uid], self._started[uid])  # from 0
            self.sim.enqueue(self, key, 0.05)
            return
        kind = pod["metadata"]["labels"].get(CDI_LABEL)
        if name.startswith(SIZE_DETECTION_PREFIX):
            self._detect_size(pod)
        elif kind in COPIERS:
            self._copy(pod, kind)
        elif kind == "cdi-upload-server":
            self._upload_server(pod)

    def _volumes_ready(self, pod: Mapping[str, Any]) -> bool:
        """Whether the kubelet can mount every claim of the pod: each exists, is not being
        deleted and is Bound to a PV bound to it. Until then a pod's containers do not start
        (the kubelet's volume manager waits, the pod stays Pending): CDI gives a populator's
        worker pod its prime claim's selected node as ``nodeName`` (``SetNodeNameIfPopulator``),
        so the pod is on a node before its claim is bound, and the copy must land on the PV
        that CDI then hands to the target claim."""
        namespace = pod["metadata"]["namespace"]
        for name in _claims(pod):
            pvc = self.sim.store.get(PVC, namespace, name)
            if pvc is None or is_deleting(pvc) or \
                    (pvc.get("status") or {}).get("phase") != "Bound":
                return False
            pv = self.sim.store.get(PV, "", str((pvc.get("spec") or {}).get("volumeName") or ""))
            if pv is None or ((pv.get("spec") or {}).get("claimRef") or {}).get(
                    "uid") != pvc["metadata"].get("uid"):
                return False
        return True

    # -- copies --------------------------------------------------------------------------

    def _copy(self, pod: dict[str, Any], kind: str) -> None:
        meta = pod["metadata"]
        key = (POD, meta["namespace"], meta["name"])
        target = self._target_claim(pod, kind)
        dv, unseen = self._data_volume(target) if target else (None, True)
        if unseen:
            # The claim the copy writes, or its DataVolume, is not in our cache yet (each
            # resource has its own watch, and the pod's event may come first): without them
            # the copy would take no time (no copy-seconds) and carry no content.
            self.sim.enqueue(self, key, 0.2)
            return
        fault = None
        stalled = dv is not None and self.sim.faults.take(
            DV, dv["metadata"]["namespace"], dv["metadata"]["name"], "stall", dv) is not None
        now = time.monotonic()
        started = self._started.setdefault(meta["uid"], now)
        clock = self._clocks.get(meta["uid"]) or _Clock(started, started)
        clock = clock.advanced(now, stalled=stalled, duration=self._copy_seconds(dv, target))
        self._clocks[meta["uid"]] = clock
        if stalled:  # no progress; a DataVolume change (the stall lifted) wakes us earlier
            self.sim.enqueue(self, key, 0.5)
            return
        left = clock.left()
        if left > 0:
            self.sim.enqueue(self, key, left)
            return
        if dv is not None:
            dv_meta = dv["metadata"]
            taken = self.sim.faults.take(DV, dv_meta["namespace"], dv_meta["name"], "fail", dv)
            fault = taken.action if taken else None
        if fault is FaultAction.FATAL and kind == "importer":
            # v1.65 fails a DataVolume for good only on a fatal importer error reported in
            # the termination message of a container that exited 0 (a checksum mismatch);
            # anything else is retried. A clone has no such failure (a clone DataVolume never
            # goes Failed, clone-controller-base.go): its source pod fails and restarts below.
            reason = "Unable to process data: checksum mismatch (injected fault: fatal)"
            self._terminate(pod, exit_code=0, phase="Succeeded",
                            message=json.dumps({"message": reason}))
            return
        if fault is not None:
            self._terminate(pod, exit_code=1, phase="Running",
                            message="Unable to process data: injected fault")
            self._started[meta["uid"]] = time.monotonic()
            self.sim.enqueue(self, key, RESTART_DELAY)
            return
        if target is not None:
            self._set_content(target, self._content(pod, kind))
        message = {"message": "Import Complete", "preallocationApplied": False} \
            if kind == "importer" else {"message": "Clone Complete"}
        self._terminate(pod, exit_code=0, phase="Succeeded", message=json.dumps(message))
        if kind == "cdi-clone-source":
            upload = self._upload_pod_for(pod)
            if upload is not None:
                self.sim.enqueue(self, (POD, upload["metadata"]["namespace"],
                                        upload["metadata"]["name"]))

    def _detect_size(self, pod: dict[str, Any]) -> None:
        """cdi-image-size-detection: the virtual size of the image on the source claim."""
        claims = _claims(pod)
        source = self.sim.store.get(PVC, pod["metadata"]["namespace"], claims[0]) \
            if claims else None
        if source is None:
            return
        self._terminate(pod, exit_code=0, phase="Succeeded",
                        message=str(rules.disk_image_size(source)))

    def _upload_server(self, pod: dict[str, Any]) -> None:
        """An upload server completes once its clone source pod finished (a user upload,
        with no source pod, never does here)."""
        claims = _claims(pod)
        target = self.sim.store.get(PVC, pod["metadata"]["namespace"], claims[0]) \
            if claims else None
        if target is None:
            return
        source = self._source_pod_for(target)
        if source is None or _phase(source) != "Succeeded":
            return
        self._terminate(pod, exit_code=0, phase="Succeeded",
                        message=json.dumps({"message": "Upload Complete"}))

    def _content(self, pod: Mapping[str, Any], kind: str) -> str | None:
        if kind == "importer":
            if _env(pod, "IMPORTER_SOURCE") in ("none", ""):
                return ""
            return hashlib.sha256(_env(pod, "IMPORTER_ENDPOINT").encode()).hexdigest()
        claims = _claims(pod)
        source = self.sim.store.get(PVC, pod["metadata"]["namespace"], claims[0]) \
            if claims else None
        return content_hash(source) if source is not None else None

    def _set_content(self, pvc: Mapping[str, Any], value: str | None) -> None:
        if value is None:
            return
        annotation = {"metadata": {"annotations": {CONTENT_HASH_ANNOTATION: value}}}
        meta = pvc["metadata"]
        self.sim.client.merge_patch(PVC, meta["namespace"], meta["name"], annotation)
        volume = (pvc.get("spec") or {}).get("volumeName")
        if volume:
            self.sim.client.merge_patch(PV, "", volume, annotation)
        target = handed_to(self.sim.store, pvc)  # a populator's claim: the volume's next one
        if target is not None:
            self.sim.client.merge_patch(PVC, meta["namespace"], target["metadata"]["name"],
                                        annotation)

    def _copy_seconds(self, dv: Mapping[str, Any] | None, target: Mapping[str, Any] | None
                      ) -> float:
        annotations = annotations_of(dv or {})
        if COPY_SECONDS_ANNOTATION in annotations:
            try:
                return float(annotations[COPY_SECONDS_ANNOTATION])
            except ValueError:
                pass
        spec = (target or {}).get("spec") or {}
        size = ((spec.get("resources") or {}).get("requests") or {}).get("storage")
        return to_bytes(str(size)) / GI * self.sim.config.copy_seconds_per_gib \
            if size else 0.0

    # -- finding the claims and the DataVolume -------------------------------------------

    def _target_claim(self, pod: Mapping[str, Any], kind: str) -> dict[str, Any] | None:
        """The claim the copy writes: the importer's own, or the clone's target (the claim
        whose uid names the source pod)."""
        if kind == "importer":
            claims = [c for c in _claims(pod) if not c.endswith("-scratch")]
            return self.sim.store.get(PVC, pod["metadata"]["namespace"], claims[0]) \
                if claims else None
        uid = pod["metadata"]["name"].removesuffix(SOURCE_POD_SUFFIX)
        for pvc in self.sim.store.list(PVC):
            if pvc["metadata"].get("uid") == uid:
                return pvc
        return None

    def _data_volume(self, pvc: Mapping[str, Any]) -> tuple[dict[str, Any] | None, bool]:
        """The DataVolume a claim fills: its owner, through a prime claim's owner claim or the
        claim a host-assisted clone's temporary claim names its owner (annotation
        ``cdi.kubevirt.io/ownerUID``, CDI's ``clone/host-clone.go``); and whether the claim
        names an owner (DataVolume or claim) not in our cache yet."""
        namespace = pvc["metadata"]["namespace"]
        for _ in range(3):
            refs = pvc["metadata"].get("ownerReferences") or []
            for ref in refs:
                if ref.get("kind") == "DataVolume":
                    dv = self.sim.store.get(DV, namespace, str(ref.get("name")))
                    return dv, dv is None
            owner = next((r for r in refs if r.get("kind") == "PersistentVolumeClaim"), None)
            if owner is not None:
                found = self.sim.store.get(PVC, namespace, str(owner.get("name")))
                if found is None:
                    return None, True
                pvc = found
                continue
            owner_uid = annotations_of(pvc).get(OWNER_UID_ANNOTATION)
            found = next((c for c in self.sim.store.list(PVC, namespace)
                          if owner_uid and c["metadata"].get("uid") == owner_uid), None)
            if found is None:
                break
            pvc = found
        return self.sim.store.get(DV, namespace, pvc["metadata"]["name"]), False

    def _source_pod_for(self, target: Mapping[str, Any]) -> dict[str, Any] | None:
        name = f"{target['metadata']['uid']}{SOURCE_POD_SUFFIX}"
        for pod in self.sim.store.list(POD):
            if pod["metadata"]["name"] == name:
                return pod
        return None

    def _upload_pod_for(self, source: Mapping[str, Any]) -> dict[str, Any] | None:
        target = self._target_claim(source, "cdi-clone-source")
        if target is None:
            return None
        for pod in self.sim.store.list(POD, target["metadata"]["namespace"]):
            labels = pod["metadata"].get("labels") or {}
            if labels.get(CDI_LABEL) == "cdi-upload-server" and \
                    target["metadata"]["name"] in _claims(pod):
                return pod
        return None

    # -- pod status (what the kubelet writes) --------------------------------------------

    @staticmethod
    def _container_state(pod: Mapping[str, Any]) -> dict[str, Any]:
        statuses = (pod.get("status") or {}).get("containerStatuses") or []
        return dict(statuses[0].get("state") or {}) if statuses else {}

    def _run(self, pod: Mapping[str, Any]) -> None:
        now = now_rfc3339()
        previous = {s.get("name"): s for s in (pod.get("status") or {}).get(
            "containerStatuses") or []}
        statuses = []
        for container in (pod.get("spec") or {}).get("containers") or []:
            old = previous.get(container["name"]) or {}
            status: dict[str, Any] = {
                "name": container["name"], "image": container.get("image", ""),
                "imageID": container.get("image", ""), "ready": True, "started": True,
                "restartCount": int(old.get("restartCount") or 0),
                "state": {"running": {"startedAt": now}},
            }
            if (old.get("state") or {}).get("terminated"):
                status["lastState"] = {"terminated": old["state"]["terminated"]}
            elif old.get("lastState"):
                status["lastState"] = old["lastState"]
            statuses.append(status)
        conditions = [{"type": t, "status": "True", "lastProbeTime": None,
                       "lastTransitionTime": now}
                      for t in ("PodReadyToStartContainers", "Initialized", "Ready",
                                "ContainersReady", "PodScheduled")]
        node = pod["spec"]["nodeName"]
        body: dict[str, Any] = {"status": {
            "phase": "Running", "conditions": conditions, "containerStatuses": statuses,
            "hostIP": self._node_ip(node),
            "startTime": (pod.get("status") or {}).get("startTime") or now}}
        pod_ip = self._pod_ip(pod)
        if pod_ip is not None:  # else none (see the module docstring)
            body["status"].update({"podIP": pod_ip, "podIPs": [{"ip": pod_ip}]})
        meta = pod["metadata"]
        self.sim.client.patch_status(POD, meta["namespace"], meta["name"], body)

    def _terminate(self, pod: Mapping[str, Any], *, exit_code: int, phase: str,
                   message: str) -> None:
        """The container exited with ``exit_code`` and wrote ``message`` to its termination
        log; ``phase`` Running means the kubelet restarts it (restartCount + 1)."""
        now = now_rfc3339()
        statuses = []
        for status in (pod.get("status") or {}).get("containerStatuses") or []:
            started = ((status.get("state") or {}).get("running") or {}).get("startedAt", now)
            statuses.append({
                **status, "ready": False, "started": False,
                "restartCount": int(status.get("restartCount") or 0) + (
                    1 if phase == "Running" else 0),
                "state": {"terminated": {
                    "exitCode": exit_code, "reason": "Completed" if exit_code == 0 else "Error",
                    "message": message, "startedAt": started, "finishedAt": now}},
            })
        conditions = [{**c, "status": "False", "lastTransitionTime": now}
                      if c.get("type") in ("Ready", "ContainersReady") else c
                      for c in (pod.get("status") or {}).get("conditions") or []]
        meta = pod["metadata"]
        self.sim.client.patch_status(POD, meta["namespace"], meta["name"], {
            "status": {"phase": phase, "containerStatuses": statuses, "conditions": conditions}})
        if exit_code:
            self.sim.client.event(pod, "Warning", "BackOff",
                                  "Back-off restarting failed container" if phase == "Running"
                                  else "container failed")

    # -- the pod network and the worker containers' metrics ----------------------------

    def _pod_ip(self, pod: Mapping[str, Any]) -> str | None:
        """The pod's IP in ``pod_network`` (kept across container restarts), or None without
        one."""
        if self.pod_network is None:
            return None
        meta = pod["metadata"]
        uid = str(meta["uid"])
        if uid in self._pod_ips:
            return self._pod_ips[uid]
        ip = str((pod.get("status") or {}).get("podIP") or "")  # a pod keeps its IP
        if not self._is_free(ip):
            ip = self._allocate()
        self._pod_ips[uid] = ip
        self._at_ip[ip] = (str(meta["namespace"]), str(meta["name"]), uid)
        return ip

    def _is_free(self, ip: str) -> bool:
        """Whether ``ip`` is an unused host address of the pod network."""
        assert self.pod_network is not None
        try:
            address = ipaddress.IPv4Address(ip)
        except ValueError:
            return False
        return address in self.pod_network and ip not in self._at_ip and address not in (
            self.pod_network.network_address, self.pod_network.broadcast_address)

    def _allocate(self) -> str:
        """The next free address of the pod network, round the network."""
        assert self.pod_network is not None
        hosts = self.pod_network.num_addresses - 2
        for _ in range(hosts):
            self._ip_cursor = self._ip_cursor % hosts + 1
            ip = str(self.pod_network.network_address + self._ip_cursor)
            if ip not in self._at_ip:
                return ip
        raise RuntimeError(f"no free address left in the pod network {self.pod_network}")

    def _forget(self, namespace: str, name: str) -> None:
        """The pod is gone or done: its container stops serving, its IP is free again."""
        uid = self._uids.pop((namespace, name), None)
        if uid is None:
            return
        self._started.pop(uid, None)
        self._clocks.pop(uid, None)
        ip = self._pod_ips.pop(uid, None)
        if ip is not None:
            self._at_ip.pop(ip, None)

    def metrics(self, pod_ip: str) -> str | None:
        """The ``/metrics`` body of the worker container at ``pod_ip`` (Prometheus' text
        format, what CDI's worker serves on :8443), or None when no container serves there:
        no such pod, not running, or not a copier. Called from the metrics server's threads:
        it only reads."""
        found = self._at_ip.get(pod_ip)
        if found is None:
            return None
        namespace, name, uid = found
        pod = self.sim.store.get(POD, namespace, name)
        if pod is None or pod["metadata"].get("uid") != uid or \
                "running" not in self._container_state(pod):
            return None
        kind = (pod["metadata"].get("labels") or {}).get(CDI_LABEL, "")
        if kind not in PROGRESS_METRICS or name.startswith(SIZE_DETECTION_PREFIX):
            return None
        clock = self._clocks.get(uid)
        percent = clock.percent(time.monotonic()) if clock is not None else None
        if percent is None:  # before the worker's first update its counter has no series
            return ""
        metric, help_text = PROGRESS_METRICS[kind]
        owner = json.dumps(_env(pod, OWNER_UID_ENV))  # a quoted label value
        # fixed-point: CDI's parser (`\d{1,3}\.?\d*`) would misread an exponent
        return (f"# HELP {metric} {help_text}\n# TYPE {metric} counter\n"
                f"{metric}{{ownerUID={owner}}} {percent:.4f}\n")

    def _node_ip(self, node: str) -> str:
        obj = self.sim.store.get("nodes", "", node) or {}
        for address in (obj.get("status") or {}).get("addresses") or []:
            if address.get("type") == "InternalIP":
                return str(address.get("address"))
        return "10.88.0.1"


def serve_metrics(sim: Simulator, pod_network: str, socket_path: Path, cert: Path,
                  key: Path) -> MetricsServer:
    """Give worker pods IPs in ``pod_network`` and serve their containers' metrics on
    ``socket_path`` (HTTPS with ``cert``/``key``: ``testenv.node.metrics``), before
    ``sim.start()``; ``close()`` the result after ``sim.stop()``."""
    workers = next(c for c in sim.controllers if isinstance(c, CdiWorkers))
    workers.pod_network = ipaddress.IPv4Network(pod_network)
    return MetricsServer(socket_path, cert, key, workers.metrics)
