"""VM shapes and a richer `apply` context for the behaviour-matrix tests
(tests/cluster/test_apply_shapes.py, test_apply_faults.py).

``Disk`` describes one VM disk: a dataVolumeTemplate, a standalone DataVolume or a plain PVC,
Filesystem or Block, with a content hash of its own (so a copy of the wrong disk shows).
``Moves`` extends ``tests.cluster.test_apply.Apply`` with: building and settling VMs of any
shape, the destination names `plan` decides, faults on objects that do not exist yet
(``node_side.faults``, cleared after the test), an action run from a helper thread the moment a
condition holds (``during``), and what a move leaves behind (our DataVolumes, the VM's exact
volumes, content hashes).
"""

from __future__ import annotations

import contextlib
import json
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pykube
import pytest

from reconciler.cli.main import main
from testenv.controlplane import ControlPlane
from testenv.node.runtime import CONTENT_HASH_ANNOTATION, Fault, FaultAction
from tests.cluster.test_apply import CDI, JOURNAL, KV, LAST, Apply
from tests.cluster.test_plan import SETTLE, _merge, create, plan_file
from tests.support.kube import Eventually, annotation, get_json
from tests.support.node_faults import NodeSide

MIGRATION_LABEL = "vmstorage.dev/migration"
SOURCE_CLASS = "local-hostpath"
TARGET_CLASS = "ceph-rbd"
BLOCK_CLASS = "vmsr-matrix-block"  # Immediate; its StorageProfile offers Block and Filesystem
BLOCK_SOURCE_CLASS = "vmsr-matrix-block-source"  # the same, where Block disks start
FAULT_ANNOTATION = "sim.vmstorage.dev/fault"
BACKOFF_ANNOTATION = "sim.vmstorage.dev/migration-backoff-seconds"
BOTH_MODES = json.dumps(
    [
        {"accessModes": ["ReadWriteOnce"], "volumeMode": "Block"},
        {"accessModes": ["ReadWriteOnce"], "volumeMode": "Filesystem"},
    ]
)


@dataclass(frozen=True)
class Disk:
    """One disk: ``kind`` is ``template`` (dataVolumeTemplates), ``dv`` (a standalone
    DataVolume) or ``pvc`` (a plain PVC); ``claim`` its DataVolume/PVC name."""

    volume: str
    kind: str
    claim: str
    size: str = "2Gi"
    block: bool = False
    storage_class: str | None = None  # default: SOURCE_CLASS, or BLOCK_SOURCE_CLASS for Block

    def storage(self) -> dict[str, Any]:
        default = BLOCK_SOURCE_CLASS if self.block else SOURCE_CLASS
        spec: dict[str, Any] = {
            "resources": {"requests": {"storage": self.size}},
            "storageClassName": self.storage_class or default,
        }
        if self.block:
            spec["volumeMode"] = "Block"
        return spec

    def data_volume_spec(self) -> dict[str, Any]:
        url = f"docker://registry.example/{self.claim}:latest"
        return {"source": {"registry": {"url": url}}, "storage": self.storage()}

    def standalone(self, namespace: str) -> dict[str, Any] | None:
        """The object to create before the VM (None for a template disk)."""
        meta: dict[str, Any] = {"name": self.claim, "namespace": namespace}
        if self.kind == "dv":
            return {
                "apiVersion": CDI,
                "kind": "DataVolume",
                "metadata": meta,
                "spec": self.data_volume_spec(),
            }
        if self.kind == "pvc":
            spec = {"accessModes": ["ReadWriteOnce"], **self.storage()}
            meta["annotations"] = {CONTENT_HASH_ANNOTATION: f"plain:{namespace}/{self.claim}"}
            return {
                "apiVersion": "v1",
                "kind": "PersistentVolumeClaim",
                "metadata": meta,
                "spec": spec,
            }
        return None

    def vm_volume(self) -> dict[str, Any]:
        if self.kind == "pvc":
            return {"name": self.volume, "persistentVolumeClaim": {"claimName": self.claim}}
        return {"name": self.volume, "dataVolume": {"name": self.claim}}


def vm_manifest(
    namespace: str,
    name: str,
    disks: list[Disk],
    *,
    running: bool = True,
    deprecated_running: bool = False,
    labels: dict[str, str] | None = None,
) -> dict[str, Any]:
    """A VM with ``disks`` (plus a cloud-init disk that never moves)."""
    spec: dict[str, Any] = (
        {"running": running}
        if deprecated_running
        else {"runStrategy": "Always" if running else "Halted"}
    )
    templates = [
        {"metadata": {"name": d.claim}, "spec": d.data_volume_spec()}
        for d in disks
        if d.kind == "template"
    ]
    if templates:
        spec["dataVolumeTemplates"] = templates
    devices = [{"name": d.volume, "disk": {"bus": "virtio"}} for d in disks]
    devices.append({"name": "cloudinitdisk", "disk": {"bus": "virtio"}})
    volumes = [d.vm_volume() for d in disks]
    volumes.append({"name": "cloudinitdisk", "cloudInitNoCloud": {"userData": "#cloud-config\n"}})
    spec["template"] = {
        "metadata": {"labels": {"kubevirt.io/vm": name}},
        "spec": {
            "domain": {"devices": {"disks": devices}, "resources": {"requests": {"memory": "1Gi"}}},
            "volumes": volumes,
        },
    }
    return {
        "apiVersion": KV,
        "kind": "VirtualMachine",
        "metadata": {"name": name, "namespace": namespace, "labels": labels or {"app": name}},
        "spec": spec,
    }


def disks_of(vm: dict[str, Any]) -> dict[str, str]:
    """volume -> claim (DataVolume or PVC name), for every claim volume of ``vm``."""
    found: dict[str, str] = {}
    for v in vm["spec"]["template"]["spec"]["volumes"]:
        claim = (v.get("dataVolume") or {}).get("name") or (
            v.get("persistentVolumeClaim") or {}
        ).get("claimName")
        if claim:
            found[v["name"]] = claim
    return found


def storage_shape(vm: dict[str, Any]) -> dict[str, Any]:
    """What a rollback must restore exactly: the volumes, the templates (names and specs),
    the update strategy and the run state."""
    spec = vm["spec"]
    return {
        "volumes": spec["template"]["spec"]["volumes"],
        "dataVolumeTemplates": spec.get("dataVolumeTemplates"),
        "updateVolumesStrategy": spec.get("updateVolumesStrategy"),
        "runStrategy": spec.get("runStrategy"),
        "running": spec.get("running"),
    }


def storage_class(name: str, provisioner: str, **annotations: str) -> dict[str, Any]:
    """An Immediate, expandable StorageClass."""
    return {
        "apiVersion": "storage.k8s.io/v1",
        "kind": "StorageClass",
        "metadata": {"name": name, "annotations": annotations},
        "provisioner": provisioner,
        "volumeBindingMode": "Immediate",
        "allowVolumeExpansion": True,
        "reclaimPolicy": "Delete",
    }


def create_class(api: pykube.HTTPClient, body: dict[str, Any]) -> None:
    """Create a StorageClass (one that exists already is fine)."""
    response = api.post(version="storage.k8s.io/v1", url="storageclasses", data=json.dumps(body))
    if response.status_code != 409:
        api.raise_for_status(response)


def ensure_block_class(api: pykube.HTTPClient) -> None:
    """The Block source and target classes (StorageProfiles offering Block and Filesystem)."""
    sets = {"sim.vmstorage.dev/claim-property-sets": BOTH_MODES}
    create_class(api, storage_class(BLOCK_SOURCE_CLASS, "source.csi.example.com", **sets))
    create_class(api, storage_class(BLOCK_CLASS, "block.csi.example.com", **sets))


@dataclass
class Meddler:
    """An action run from a helper thread as soon as ``trigger()`` holds (polled with a
    deadline); ``check()`` re-raises what went wrong in the thread."""

    trigger: Callable[[], Any]
    action: Callable[[Any], None]
    timeout: float = 30.0
    otherwise: Callable[[], None] | None = None
    """Called if the trigger never held (before the failure is recorded)."""
    done: threading.Event = field(default_factory=threading.Event)
    error: list[BaseException] = field(default_factory=list)
    fired_at: list[float] = field(default_factory=list)

    def run(self) -> None:
        deadline = time.monotonic() + self.timeout
        try:
            while time.monotonic() < deadline:
                seen = self.trigger()
                if seen:
                    self.fired_at.append(time.monotonic())
                    self.action(seen)
                    return
                time.sleep(0.02)
            if self.otherwise is not None:
                self.otherwise()
            raise AssertionError(f"the meddler's trigger never held within {self.timeout}s")
        except BaseException as exc:  # handed to the test thread by check()
            self.error.append(exc)
        finally:
            self.done.set()

    def check(self) -> None:
        assert self.done.wait(self.timeout + 5), "the meddler did not finish"
        if self.error:
            raise self.error[0]


@dataclass
class Sampler:
    """Calls ``probe()`` every 20 ms from a helper thread until ``stop()``; keeps the results
    in order (for "X never happened before Y" checks on a move as it runs)."""

    probe: Callable[[], Any]
    samples: list[Any] = field(default_factory=list)
    error: list[BaseException] = field(default_factory=list)
    stopping: threading.Event = field(default_factory=threading.Event)
    thread: threading.Thread | None = None

    def start(self) -> Sampler:
        self.thread = threading.Thread(target=self._run, name="sampler", daemon=True)
        self.thread.start()
        return self

    def _run(self) -> None:
        try:
            while not self.stopping.is_set():
                self.samples.append(self.probe())
                self.stopping.wait(0.02)
        except BaseException as exc:  # handed to the test thread by stop()
            self.error.append(exc)

    def stop(self) -> list[Any]:
        self.stopping.set()
        if self.thread is not None:
            self.thread.join(timeout=10)
        if self.error:
            raise self.error[0]
        return self.samples


class Moves(Apply):
    """`Apply` plus VM shapes, faults, meddlers and leftovers."""

    def __init__(
        self,
        api: pykube.HTTPClient,
        control_plane: ControlPlane,
        namespace: str,
        tmp_path: Path,
        eventually: Eventually,
        capsys: pytest.CaptureFixture[str],
        node_side: NodeSide,
    ) -> None:
        super().__init__(api, control_plane, namespace, tmp_path, eventually, capsys)
        self.node_side = node_side
        self.faulted: list[tuple[str, str]] = []
        self.threads: list[threading.Thread] = []
        self.source_hashes: dict[str, str | None] = {}
        self.samplers: list[Sampler] = []

    # -- building

    def make(
        self,
        name: str,
        disks: list[Disk],
        *,
        running: bool = True,
        deprecated_running: bool = False,
        labels: dict[str, str] | None = None,
    ) -> dict[str, Any]:
        """Create the disks and the VM, started; wait until it runs on Bound, imported disks;
        then stop it when ``running`` is false (a stopped VM of a WaitForFirstConsumer class
        would never have bound disks). Returns the VM."""
        for disk in disks:
            obj = disk.standalone(self.ns)
            if obj is not None:
                create(self.api, obj)
        vm = vm_manifest(self.ns, name, disks, deprecated_running=deprecated_running, labels=labels)
        create(self.api, vm)
        self.eventually(
            lambda: self.vmi_phase(name) == "Running", SETTLE, what=f"VMI {name} Running"
        )
        for disk in disks:
            self.eventually(
                lambda d=disk: self.pvc_phase(d.claim) == "Bound", SETTLE, what=f"PVC {disk.claim}"
            )
            if disk.kind != "pvc":
                self.eventually(
                    lambda d=disk: self.dv_phase(d.claim) == "Succeeded",
                    SETTLE,
                    what=f"DV {disk.claim} Succeeded",
                )
        if not running:
            self.set_running(name, False, deprecated=deprecated_running)
            self.eventually(lambda: not self.vmi(name), SETTLE, what=f"VMI {name} gone")
        return self.vm(name)

    def set_running(self, name: str, running: bool, *, deprecated: bool = False) -> None:
        spec = (
            {"running": running}
            if deprecated
            else {"runStrategy": "Always" if running else "Halted"}
        )
        _merge(self.api, KV, self.ns, f"virtualmachines/{name}", {"spec": spec})

    def post(self, plural: str, obj: dict[str, Any]) -> None:
        response = self.api.post(
            version=obj["apiVersion"], namespace=self.ns, url=plural, data=json.dumps(obj)
        )
        self.api.raise_for_status(response)

    def merge(self, url: str, body: dict[str, Any], version: str = KV) -> None:
        _merge(self.api, version, self.ns, url, body)

    def json_patch(self, url: str, ops: list[dict[str, Any]], version: str = KV) -> None:
        response = self.api.patch(
            version=version,
            namespace=self.ns,
            url=url,
            data=json.dumps(ops),
            headers={"Content-Type": "application/json-patch+json"},
        )
        self.api.raise_for_status(response)

    def delete(self, version: str, url: str, *, namespaced: bool = True) -> None:
        """DELETE ``url`` (in the test's namespace unless not ``namespaced``); 404 is fine."""
        if namespaced:
            response = self.api.delete(version=version, namespace=self.ns, url=url)
        else:
            response = self.api.delete(version=version, url=url)
        if response.status_code != 404:
            self.api.raise_for_status(response)

    # -- reading

    def vmi_phase(self, name: str) -> str:
        return str((self.vmi(name).get("status") or {}).get("phase") or "")

    def pvc_phase(self, claim: str) -> str:
        return str((self.pvc(claim).get("status") or {}).get("phase") or "")

    def dv(self, name: str) -> dict[str, Any]:
        return get_json(self.api, CDI, self.ns, f"datavolumes/{name}")

    def dv_phase(self, name: str) -> str:
        return str((self.dv(name).get("status") or {}).get("phase") or "")

    def pods(self, vm: str) -> list[dict[str, Any]]:
        """The VM's virt-launcher pods."""
        url = f"pods?labelSelector=vm.kubevirt.io/name%3D{vm}"
        return list(get_json(self.api, "v1", self.ns, url)["items"])

    def pod(self, name: str) -> dict[str, Any]:
        return get_json(self.api, "v1", self.ns, f"pods/{name}")

    def hashes(self, vm: dict[str, Any]) -> dict[str, str | None]:
        """volume -> the content hash of the claim it uses now."""
        return {volume: self.content(claim) for volume, claim in disks_of(vm).items()}

    def ours(self) -> dict[str, dict[str, Any]]:
        """DataVolumes a move created (labelled with a migration id), deleting ones included."""
        return {
            n: d
            for n, d in self.dvs().items()
            if MIGRATION_LABEL in d["metadata"].get("labels", {})
        }

    def gone_or_deleting(self, name: str, plural: str = "datavolumes") -> bool:
        version = CDI if plural == "datavolumes" else "v1"
        obj = get_json(self.api, version, self.ns, f"{plural}/{name}")
        return not obj or bool(obj["metadata"].get("deletionTimestamp"))

    def journal(self, name: str) -> dict[str, Any] | None:
        text = annotation(self.vm(name), JOURNAL)
        return None if text is None else dict(json.loads(text))

    def last(self, name: str) -> dict[str, Any]:
        return dict(json.loads(annotation(self.vm(name), LAST) or "{}"))

    def migrations(self, name: str) -> list[dict[str, Any]]:
        items = get_json(self.api, KV, self.ns, "virtualmachineinstancemigrations")["items"]
        return [m for m in items if m["spec"].get("vmiName") == name]

    def targets(self, body: str = "") -> dict[str, dict[str, str]]:
        """VM -> volume -> the destination `plan` names (what `apply` will create)."""
        path = plan_file(self.tmp_path, self.ns, body, name="preview")
        rc = main(
            ["plan", str(path), "-o", "json", "--kubeconfig", str(self.control_plane.kubeconfig)]
        )
        out, err = self.capsys.readouterr()
        assert rc == 1, err
        report = json.loads(out)
        (path.unlink())
        return {
            vm["name"]: {v["volume"]: v["target"] for v in vm["volumes"] if v.get("target")}
            for vm in report["vms"]
        }

    # -- running

    def apply_files(
        self, *bodies: tuple[str, str], args: tuple[str, ...] = ()
    ) -> tuple[int, dict[str, Any], str]:
        """`apply -o json` on several plans: (plan name, spec body) each."""
        paths = [str(plan_file(self.tmp_path, self.ns, body, name=n)) for n, body in bodies]
        argv = [
            "apply",
            *paths,
            "-o",
            "json",
            "--kubeconfig",
            str(self.control_plane.kubeconfig),
            "--lease-namespace",
            self.lease_ns,
            *args,
        ]
        rc = main(argv)
        out, err = self.capsys.readouterr()
        return rc, json.loads(out) if out.strip().startswith("{") else {}, err

    def fault(self, kind: str, name: str, action: FaultAction, times: int = 1) -> None:
        """A fault for an object that may not exist yet (a destination DataVolume)."""
        self.node_side.faults.add(kind, self.ns, name, Fault(action, times))
        self.faulted.append((kind, name))

    def clear_fault(self, kind: str, name: str) -> None:
        self.node_side.faults.clear(kind, self.ns, name)

    def during(
        self,
        trigger: Callable[[], Any],
        action: Callable[[Any], None],
        timeout: float = 30.0,
        otherwise: Callable[[], None] | None = None,
    ) -> Meddler:
        """Run ``action(trigger())`` from a helper thread once ``trigger()`` is truthy (or
        ``otherwise()`` if it never is within ``timeout``: what lets a blocked run end)."""
        meddler = Meddler(trigger, action, timeout, otherwise)
        thread = threading.Thread(target=meddler.run, name="meddler", daemon=True)
        thread.start()
        self.threads.append(thread)
        return meddler

    def sample(self, probe: Callable[[], Any]) -> Sampler:
        sampler = Sampler(probe).start()
        self.samplers.append(sampler)
        return sampler

    def holder_pod(self, name: str, claim: str) -> None:
        """A running pod (not a launcher) on a node that mounts ``claim``."""
        body = {
            "apiVersion": "v1",
            "kind": "Pod",
            "metadata": {"name": name, "namespace": self.ns},
            "spec": {
                "nodeName": self.node_side.config.nodes[0],
                "containers": [{"name": "c", "image": "registry.example/backup:1"}],
                "volumes": [{"name": "disk", "persistentVolumeClaim": {"claimName": claim}}],
            },
        }
        response = self.api.post(version="v1", namespace=self.ns, url="pods", data=json.dumps(body))
        self.api.raise_for_status(response)
        status = {"status": {"phase": "Running"}}
        response = self.api.patch(
            version="v1",
            namespace=self.ns,
            url=f"pods/{name}/status",
            data=json.dumps(status),
            headers={"Content-Type": "application/merge-patch+json"},
        )
        self.api.raise_for_status(response)

    def at_step(self, name: str, step: str) -> Callable[[], bool]:
        """A trigger: the VM's journal names ``step``."""

        def probe() -> bool:
            journal = self.journal(name)
            return journal is not None and journal.get("step") == step

        return probe

    def cleanup(self) -> None:
        for sampler in self.samplers:
            sampler.stopping.set()
        for kind, name in self.faulted:
            self.node_side.faults.clear(kind, self.ns, name)
        for thread in self.threads:
            thread.join(timeout=40)


@contextlib.contextmanager
def moves_ctx(
    api: pykube.HTTPClient,
    control_plane: ControlPlane,
    namespace: str,
    tmp_path: Path,
    eventually: Eventually,
    capsys: pytest.CaptureFixture[str],
    node_side: NodeSide,
) -> Iterator[Moves]:
    ctx = Moves(api, control_plane, namespace, tmp_path, eventually, capsys, node_side)
    try:
        yield ctx
    finally:
        ctx.cleanup()
