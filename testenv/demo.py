"""The demo: the seed's two VMs on a real API server with upstream KubeVirt and CDI, and
`apply` moving them.

Starts the real engine (etcd, kube-apiserver, kube-scheduler, kube-controller-manager, KWOK,
virt-api, virt-controller, cdi-controller; only the node side is ours; copies take
``copy_seconds_per_gib`` per GiB, so progress is visible), seeds ``mig-vm/vm-fedora`` (running)
and ``mig-vm/vm-archive`` (stopped), both on the default class ``local-hostpath``, and waits
for their disk imports and for the Fedora VM to run. Then it runs the reconciler's CLI exactly
as a user would, on ``plans/seed``: ``validate``, ``plan`` (one VM live, one offline),
``apply`` (one VM at a time, verified before the next), ``status`` (the last-migration record
each VM keeps), and ``plan`` again: in sync, exit 0. It stops at the first command that fails.

While `apply` runs, a narrator follows the namespace with watches and prints what the
cluster does (DataVolume phases and progress, the VirtualMachineInstanceMigration's
phases, the VMI moving to another node); afterwards it shows, for every moved volume, that the
disk's content hash was carried over from the source, and the lines of virt-controller's and
cdi-controller's logs about the migration and the clone. The demo itself sends nothing but the
seed: every change is `apply`'s.
"""

from __future__ import annotations

import contextlib
import json
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from types import TracebackType
from typing import Any

import pykube

from testenv import seed
from testenv.controlplane import ControlPlane
from testenv.node.runtime import content_hash
from testenv.real.engine import RealEngine

ROOT = Path(__file__).resolve().parent.parent
PLANS = ROOT / "plans" / "seed"
VMS = (seed.VM_NAME, seed.ARCHIVE_VM)
SOURCE_ANNOTATION = "vmstorage.dev/source-claim"
LAST_MIGRATION = "vmstorage.dev/last-migration"


class Environment:
    """Where the demo runs: the engine's control plane, and ``upstream``: an upstream
    controller's name to its log."""

    def __init__(self, control_plane: ControlPlane, upstream: dict[str, Path]) -> None:
        self.control_plane = control_plane
        self.upstream = upstream


@contextlib.contextmanager
def environment(copy_seconds_per_gib: float) -> Iterator[Environment]:
    """The real engine: upstream virt-controller, virt-api and cdi-controller (with
    kube-scheduler, kube-controller-manager and KWOK), only the node side ours."""
    with RealEngine(log=say, copy_seconds_per_gib=copy_seconds_per_gib) as real:
        say(f"upstream controllers running: {', '.join(real.processes)} "
            f"(logs in {real.workdir}); copies take {copy_seconds_per_gib:g}s per GiB")
        logs = {name: real.processes[name].log for name in UPSTREAM_LOGS}
        yield Environment(real.control_plane, logs)


def run(*, copy_seconds_per_gib: float = 1.0, keep: bool = False,
        kubeconfig: Path | None = None, wait_forever: Callable[[], None] | None = None) -> int:
    """Run the demo on the real engine; return the exit code of the last reconciler
    command."""
    with environment(copy_seconds_per_gib) as env:
        control_plane = env.control_plane
        api = control_plane.api()
        seed.seed(api)
        say(f"seeded {seed.NAMESPACE}/{seed.VM_NAME} (running): importing {seed.DV_NAME} "
            f"({seed.IMAGE}) onto {seed.SOURCE_CLASS}")
        say(f"seeded {seed.NAMESPACE}/{seed.ARCHIVE_VM} (stopped): importing "
            f"{seed.ARCHIVE_DV} ({seed.ARCHIVE_IMAGE}) onto {seed.SOURCE_CLASS}")
        wait_for_vms(api)
        config_path = kubeconfig or control_plane.kubeconfig
        if kubeconfig:
            control_plane.write_kubeconfig(kubeconfig, control_plane.admin_token)
        rc = reconcile(api, config_path)
        show_upstream(api, env.upstream)
        if keep and wait_forever:
            say(f"cluster kept running: export KUBECONFIG={config_path.resolve()}")
            wait_forever()
            if kubeconfig:  # it would point at a stopped server
                kubeconfig.unlink(missing_ok=True)
        return rc


UPSTREAM_LOGS = ("virt-controller", "cdi-controller")


def show_upstream(api: pykube.HTTPClient, logs: dict[str, Path]) -> None:
    """How often each upstream controller's log names the objects of the moves (the
    migration virt-controller ran, the clone cdi-controller ran), with one line."""
    migrations = _get(api, "kubevirt.io/v1", "virtualmachineinstancemigrations").get("items", [])
    volumes = _get(api, "cdi.kubevirt.io/v1beta1", "datavolumes").get("items", [])
    names = {
        "virt-controller": [m["metadata"]["name"] for m in migrations],
        "cdi-controller": [d["metadata"]["name"] for d in volumes
                           if "-mig-" in d["metadata"]["name"]],
    }
    for process, path in logs.items():
        text = path.read_text(errors="replace") if path.exists() else ""
        for name in names.get(process, []):
            lines = [line for line in text.splitlines() if name in line]
            first = lines[0][:160] if lines else "-"
            say(f"upstream {process} log: {len(lines)} line(s) about {name}, e.g. {first}")


def reconcile(api: pykube.HTTPClient, kubeconfig: Path) -> int:
    """What a user runs: validate, plan, apply, status, plan.

    Stops at the first command that fails and returns its code: validate and the final plan
    must exit 0, the first plan 1 (changes pending), apply 0 (everything moved and verified),
    status 0 (nothing in flight). Returns the final plan's code (0: in sync).
    """
    cluster = ["--kubeconfig", str(kubeconfig)]
    steps: list[tuple[Sequence[str], tuple[int, ...]]] = [
        (["validate", str(PLANS)], (0,)),
        (["plan", str(PLANS), *cluster], (0, 1)),
        (["apply", str(PLANS), *cluster], (0,)),
        (["status", str(PLANS), *cluster], (0,)),
        (["plan", str(PLANS), *cluster], (0,)),
    ]
    rc = 0
    for argv, fine in steps:
        banner(f"$ vm-storage-reconciler {' '.join(_short(a) for a in argv)}")
        if argv[0] == "apply":
            with Narrator(api, seed.NAMESPACE):
                rc = run_cli(argv)
            print(f"(exit code {rc})", flush=True)
            show_moves(api)
        else:
            rc = run_cli(argv)
            print(f"(exit code {rc})", flush=True)
        if rc not in fine:
            return rc
    return rc


def run_cli(argv: Sequence[str]) -> int:
    """The reconciler's CLI as its own process (``python -m reconciler``), as a user runs it:
    the test environment never imports the product, so the two cannot share a bug."""
    return subprocess.run([sys.executable, "-m", "reconciler", *argv], check=False).returncode


_KINDS = {  # what the narrator follows: kind -> (API path prefix, plural)
    "dv": ("apis/cdi.kubevirt.io/v1beta1", "datavolumes"),
    "vmim": ("apis/kubevirt.io/v1", "virtualmachineinstancemigrations"),
    "vmi": ("apis/kubevirt.io/v1", "virtualmachineinstances"),
}


class Narrator:
    """While `apply` runs: print what the cluster does, from watches (DataVolume
    phases and every tenth of progress, each migration phase, the VMI's node)."""

    def __init__(self, api: pykube.HTTPClient, namespace: str) -> None:
        self.api = api
        self.namespace = namespace
        self.stop = threading.Event()
        self.lock = threading.Lock()
        self.seen: dict[tuple[str, str], str] = {}
        self.threads = [threading.Thread(target=self._follow, args=(kind,), daemon=True,
                                         name=f"demo-narrator-{kind}") for kind in _KINDS]

    def __enter__(self) -> Narrator:
        for kind in _KINDS:  # what was there before apply started is not news
            items, _ = self._list(kind)
            for obj in items:
                self.seen[(kind, _name(obj))] = _coarse(_line(kind, obj))
        for thread in self.threads:
            thread.start()
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.stop.set()
        for thread in self.threads:
            thread.join(timeout=10)

    def _url(self, kind: str) -> str:
        prefix, plural = _KINDS[kind]
        return f"{str(self.api.url).rstrip('/')}/{prefix}/namespaces/{self.namespace}/{plural}"

    def _list(self, kind: str) -> tuple[list[dict[str, Any]], str]:
        response = self.api.session.get(self._url(kind), timeout=30)
        self.api.raise_for_status(response)
        body = response.json()
        return list(body.get("items") or []), str(body["metadata"]["resourceVersion"])

    def _follow(self, kind: str) -> None:
        """LIST, then WATCH in short rounds (so a stop is noticed within a second), re-listing
        after a 410 or a broken stream; a demo narrator, so errors only pause it."""
        version = ""
        while not self.stop.is_set():
            try:
                if not version:
                    _, version = self._list(kind)
                params = {"watch": "1", "resourceVersion": version, "timeoutSeconds": "1",
                          "allowWatchBookmarks": "true"}
                with self.api.session.get(self._url(kind), params=params, stream=True,
                                          timeout=10) as response:
                    if response.status_code == 410:
                        version = ""
                        continue
                    self.api.raise_for_status(response)
                    for raw in response.iter_lines():
                        event = json.loads(raw)
                        obj = event.get("object") or {}
                        version = str((obj.get("metadata") or {}).get("resourceVersion", version))
                        if event.get("type") in ("ADDED", "MODIFIED"):
                            self._tell(kind, obj)
            except (OSError, ValueError, pykube.exceptions.HTTPError) as error:
                say(f"  (narrator: {kind} watch interrupted: {error}; re-listing)")
                version = ""
                self.stop.wait(1.0)

    def _tell(self, kind: str, obj: dict[str, Any]) -> None:
        key, line = (kind, _name(obj)), _line(kind, obj)
        with self.lock:
            before = self.seen.get(key)
            if before == _coarse(line):
                return
            was = ""
            if kind == "vmi" and before is not None:  # "the VM moved to another node"
                was = f" (was: {before.split(': ', 1)[1]})"
            self.seen[key] = _coarse(line)
        say(f"  {line}{was}")


def _name(obj: dict[str, Any]) -> str:
    return str((obj.get("metadata") or {}).get("name", ""))


def _line(kind: str, obj: dict[str, Any]) -> str:
    """One line of narration about ``obj``."""
    status = obj.get("status") or {}
    if kind == "dv":
        progress = str(status.get("progress") or "")
        return (f"DataVolume {_name(obj)}: {status.get('phase') or 'Pending'}"
                + (f" {progress}" if _tenths(progress) >= 0 else ""))
    if kind == "vmim":
        vmi = (obj.get("spec") or {}).get("vmiName", "")
        return f"VMIM {_name(obj)} (VMI {vmi}): {status.get('phase') or 'Pending'}"
    return (f"VMI {_name(obj)}: {status.get('phase') or 'Pending'} on node "
            f"{status.get('nodeName') or '-'}")


def _coarse(line: str) -> str:
    """A line with its progress cut to tenths, so progress is reported every 10%."""
    head, _, progress = line.rpartition(" ")
    tenth = _tenths(progress)
    return f"{head} {tenth * 10}%" if tenth >= 0 and progress.endswith("%") else line


def show_moves(api: pykube.HTTPClient) -> None:
    """For every VM of the seed: the claims it uses now, its last-migration record, and
    whether each target carries the content hash of the source it was copied from."""
    for name in VMS:
        vm = _get(api, "kubevirt.io/v1", f"virtualmachines/{name}")
        notes = (vm.get("metadata") or {}).get("annotations") or {}
        last = json.loads(notes.get(LAST_MIGRATION) or "{}")
        say(f"{seed.NAMESPACE}/{name}: last migration {last.get('result', '-')} "
            f"({last.get('flow', '-')}, move {last.get('id', '-')})")
        for volume, target in sorted((last.get("volumes") or {}).items()):
            dv = _get(api, "cdi.kubevirt.io/v1beta1", f"datavolumes/{target}")
            source = ((dv.get("metadata") or {}).get("annotations") or {}).get(
                SOURCE_ANNOTATION, "")
            pvc = _get(api, "v1", f"persistentvolumeclaims/{target}")
            klass = (pvc.get("spec") or {}).get("storageClassName", "-")
            say(f"  {volume}: now on {target} ({klass}); content hash carried over from "
                f"{source or '-'}: {_same_content(api, source, target)}")


def _same_content(api: pykube.HTTPClient, source: str, target: str) -> bool:
    def digest(claim: str) -> str | None:
        pvc = _get(api, "v1", f"persistentvolumeclaims/{claim}") if claim else {}
        return content_hash(pvc) if pvc else None

    before, after = digest(source), digest(target)
    return before is not None and before != "" and before == after


def wait_for_vms(api: pykube.HTTPClient, timeout: float = 600.0) -> None:
    """Print import progress (every 10%) and VM status changes until the Fedora VM runs, the
    stopped VM's disk is imported and CDI has removed the claims it makes for a while
    (``cdi_transient_claims``: upstream deletes each once its target is filled, and `plan`
    would count them meanwhile)."""
    deadline = time.monotonic() + timeout
    last: dict[str, tuple[str, str, int]] = {}
    disks = {seed.VM_NAME: seed.DV_NAME, seed.ARCHIVE_VM: seed.ARCHIVE_DV}
    while time.monotonic() < deadline:
        done = True
        for vm_name, dv_name in disks.items():
            dv = _get(api, "cdi.kubevirt.io/v1beta1", f"datavolumes/{dv_name}")
            vm = _get(api, "kubevirt.io/v1", f"virtualmachines/{vm_name}")
            dv_status, vm_status = dv.get("status") or {}, vm.get("status") or {}
            progress = str(dv_status.get("progress", ""))
            state = (str(dv_status.get("phase", "-")), str(vm_status.get("printableStatus", "-")),
                     _tenths(progress))
            if state != last.get(vm_name):
                say(f"  DataVolume {dv_name}: {state[0]} {progress}  VM {vm_name}: {state[1]}")
                last[vm_name] = state
            wanted = "Running" if vm_name == seed.VM_NAME else "Stopped"
            done = done and state[0] == "Succeeded" and state[1] == wanted
        if done and not cdi_transient_claims(api):
            return
        time.sleep(0.2)
    raise TimeoutError(f"the seed VMs were not ready within {timeout:.0f}s")


def cdi_transient(claim: dict[str, Any]) -> bool:
    """Whether ``claim`` is one CDI makes and deletes itself: a populator's prime claim (owned
    by the claim it fills; populator-base.go reconcileCleanup deletes it once the target is
    Bound) or a clone's ``tmp-pvc-<uid>`` (clone/planner.go, no owner)."""
    meta = claim["metadata"]
    return str(meta["name"]).startswith("tmp-pvc-") or any(
        o.get("kind") == "PersistentVolumeClaim" for o in meta.get("ownerReferences") or [])


def cdi_transient_claims(api: pykube.HTTPClient) -> list[str]:
    """The claims of the seed's namespace that CDI makes and deletes itself (``cdi_transient``)."""
    claims = _get(api, "v1", "persistentvolumeclaims").get("items", [])
    return [c["metadata"]["name"] for c in claims if cdi_transient(c)]


def _tenths(progress: str) -> int:
    """Which tenth of the way a CDI progress string ("45.20%") is in; -1 when it is none."""
    try:
        return int(float(progress.rstrip("%")) // 10)
    except ValueError:
        return -1


def _get(api: pykube.HTTPClient, version: str, url: str) -> dict[str, Any]:
    response = api.get(version=version, namespace=seed.NAMESPACE, url=url)
    if response.status_code == 404:
        return {}
    api.raise_for_status(response)
    body: dict[str, Any] = json.loads(response.text)
    return body


def _short(arg: str) -> str:
    return str(Path(arg).relative_to(ROOT)) if arg.startswith(str(ROOT)) else arg


def banner(text: str) -> None:
    print(f"\n{text}", flush=True)


def say(message: str) -> None:
    # one write per line: the narrator thread and apply's progress share stderr
    sys.stderr.write(f"[demo] {message}\n")
    sys.stderr.flush()
