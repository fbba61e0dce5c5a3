"""The demo: the seed's Fedora VM on a real API server, with the simulator playing KubeVirt.

Starts the control plane and the simulator (copies take ``copy_seconds_per_gib`` per GiB, so
progress is visible), seeds ``mig-vm/vm-fedora``, waits for its disk import and VMI with
progress lines, then runs the reconciler's CLI exactly as a user would: ``validate`` and
``plan`` (with manifests and a server-side dry run) on ``plans/seed``, stopping at the first
that fails.

Then it sends the manifests ``engine.plan`` rendered (the target DataVolume, then the VM JSON
patch),
which is what `apply` will do, one VM at a time, in the next milestone, so the live volume
migration can be watched: DataVolume, VMIM phases, the VMI's new claim, the copied content
hash. A final `plan` shows the VM in sync.
"""

from __future__ import annotations

import json
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import pykube

from reconciler import engine
from reconciler.cli.main import main
from reconciler.kube.client import Cluster, load_client
from reconciler.kube.resources import DATA_VOLUMES, VIRTUAL_MACHINES
from testenv import seed
from testenv.controlplane import ControlPlane
from testenv.simulator import SimConfig, content_hash
from testenv.simulator import start as start_simulator

ROOT = Path(__file__).resolve().parent.parent
PLANS = ROOT / "plans" / "seed"


def run(*, copy_seconds_per_gib: float = 1.0, keep: bool = False,
        kubeconfig: Path | None = None, wait_forever: Callable[[], None] | None = None) -> int:
    """Run the demo; return the exit code of the last reconciler command."""
    with ControlPlane(log=say) as control_plane:
        api = control_plane.api()
        config = SimConfig(copy_seconds_per_gib=copy_seconds_per_gib)
        with start_simulator(control_plane.api(), config):
            say(f"simulator running (copies take {copy_seconds_per_gib:g}s per GiB)")
            seed.seed(api)
            say(f"seeded {seed.NAMESPACE}/{seed.VM_NAME}: importing {seed.DV_NAME} "
                f"({seed.IMAGE}) onto {seed.SOURCE_CLASS}")
            wait_for_vm(api)
            config_path = kubeconfig or control_plane.kubeconfig
            if kubeconfig:
                control_plane.write_kubeconfig(kubeconfig, control_plane.admin_token)
            rc = reconcile(config_path)
            if rc not in (0, 1):  # validate or plan failed: nothing to migrate
                return rc
            migrate(api, config_path)
            banner(f"$ vm-storage-reconciler plan {_short(str(PLANS))}")
            rc = main(["plan", str(PLANS), "--kubeconfig", str(config_path)])
            print(f"(exit code {rc})", flush=True)
            if keep and wait_forever:
                say(f"cluster kept running: export KUBECONFIG={config_path.resolve()}")
                wait_forever()
            return rc


def reconcile(kubeconfig: Path) -> int:
    """What a user runs: validate, then plan (twice: readable, then with manifests).

    Stops at the first command that fails (exit code other than 0 or 1, "pending"), and
    returns that code; a failing validate must not be hidden by a later plan's exit code.
    """
    steps: list[Sequence[str]] = [
        ["validate", str(PLANS)],
        ["plan", str(PLANS), "--kubeconfig", str(kubeconfig)],
        ["plan", str(PLANS), "--kubeconfig", str(kubeconfig), "--show-manifests",
         "--server-dry-run"],
    ]
    for argv in steps:
        banner(f"$ vm-storage-reconciler {' '.join(_short(a) for a in argv)}")
        rc = main(list(argv))
        print(f"(exit code {rc})", flush=True)
        if rc not in (0, 1):
            return rc
    return 0


def migrate(api: pykube.HTTPClient, kubeconfig: Path, timeout: float = 600.0) -> None:
    """Send the plan's manifests as `apply` will, and narrate the live migration."""
    result = engine.plan([str(PLANS)], kubeconfig=str(kubeconfig), manifests=True)
    cluster = Cluster(load_client(str(kubeconfig)))
    for (namespace, name), vm in sorted(result.fully_rendered.items()):
        banner(f"# sending the rendered manifests for {namespace}/{name} "
               "(what `apply` does for each VM)")
        for dv in vm.data_volumes:
            cluster.create(DATA_VOLUMES, namespace, dv)
            say(f"created DataVolume {dv['metadata']['name']}")
        cluster.json_patch(VIRTUAL_MACHINES, namespace, name, vm.vm_patch)
        say(f"patched VirtualMachine {name}: volumes -> {dict(vm.target_names)}, "
            "updateVolumesStrategy: Migration")
        _watch_migration(api, namespace, name, dict(vm.target_names), timeout)


def _watch_migration(api: pykube.HTTPClient, namespace: str, name: str,
                     targets: dict[str, str], timeout: float) -> None:
    """Print the VMIM phase and the VMI's claims until the copy has finished."""
    started = time.monotonic()
    deadline, last = started + timeout, ""
    while time.monotonic() < deadline:
        vmi = _get(api, "kubevirt.io/v1", f"virtualmachineinstances/{name}")
        selector = f"kubevirt.io/volume-update-migration={name}"
        migrations = api.get(version="kubevirt.io/v1", namespace=namespace,
                             url="virtualmachineinstancemigrations",
                             params={"labelSelector": selector})
        items = migrations.json().get("items", []) if migrations.ok else []
        phase = items[-1].get("status", {}).get("phase", "-") if items else "-"
        changing = any(c.get("type") == "VolumesChange" and c.get("status") == "True"
                       for c in (vmi.get("status") or {}).get("conditions") or ())
        node = (vmi.get("status") or {}).get("nodeName", "-")
        line = f"  VMIM: {phase:<15} VolumesChange: {changing!s:<5} node: {node}"
        if line != last:
            say(f"{line}  ({time.monotonic() - started:.0f}s)")
            last = line
        if phase == "Succeeded" and not changing:
            break
        time.sleep(0.2)
    else:
        raise TimeoutError(f"the migration of {name} did not finish within {timeout:.0f}s")
    for volume, target in targets.items():
        source_claim = next(iter(_claims(api, namespace, target)), "")
        say(f"  {volume}: now on {target}; content hash copied from {source_claim}: "
            f"{_same_content(api, namespace, source_claim, target)}")


def _claims(api: pykube.HTTPClient, namespace: str, target: str) -> list[str]:
    dv = _get(api, "cdi.kubevirt.io/v1beta1", f"datavolumes/{target}")
    source = (dv.get("metadata") or {}).get("annotations", {}).get("vmstorage.dev/source-claim")
    return [source] if source else []


def _same_content(api: pykube.HTTPClient, namespace: str, source: str, target: str) -> bool:
    def digest(claim: str) -> str | None:
        pvc = _get(api, "v1", f"persistentvolumeclaims/{claim}")
        return content_hash(pvc) if pvc else None

    before, after = digest(source), digest(target)
    return before is not None and before != "" and before == after


def wait_for_vm(api: pykube.HTTPClient, timeout: float = 600.0) -> None:
    """Print import progress (every 10%) and VM status changes until the VM runs."""
    deadline = time.monotonic() + timeout
    last: tuple[str, str, int] = ("", "", -1)
    while time.monotonic() < deadline:
        dv = _get(api, "cdi.kubevirt.io/v1beta1", f"datavolumes/{seed.DV_NAME}")
        vm = _get(api, "kubevirt.io/v1", f"virtualmachines/{seed.VM_NAME}")
        dv_status, vm_status = dv.get("status") or {}, vm.get("status") or {}
        progress = str(dv_status.get("progress", ""))
        state = (str(dv_status.get("phase", "-")), str(vm_status.get("printableStatus", "-")),
                 _tenths(progress))
        if state != last:
            say(f"  DataVolume {seed.DV_NAME}: {state[0]} {progress}  VM: {state[1]}")
            last = state
        if vm_status.get("printableStatus") == "Running":
            return
        time.sleep(0.2)
    raise TimeoutError(f"{seed.VM_NAME} did not start within {timeout:.0f}s")


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
    print(f"[demo] {message}", file=sys.stderr, flush=True)
