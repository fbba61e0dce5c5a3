"""The demo: the seed's Fedora VM on a real API server, with the simulator playing KubeVirt.

Starts the control plane and the simulator (copies take ``copy_seconds_per_gib`` per GiB, so
progress is visible), seeds ``mig-vm/vm-fedora``, waits for its disk import and VMI with
progress lines, then runs the reconciler's CLI exactly as a user would: ``validate`` and
``plan`` (with manifests and a server-side dry run) on ``plans/seed``.
"""

from __future__ import annotations

import json
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import pykube

from reconciler import cli
from testenv import seed
from testenv.controlplane import ControlPlane
from testenv.simulator import SimConfig
from testenv.simulator import start as start_simulator

ROOT = Path(__file__).resolve().parent.parent
PLANS = ROOT / "plans" / "seed"


def run(*, copy_seconds_per_gib: float = 0.1, keep: bool = False,
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
            if keep and wait_forever:
                say(f"cluster kept running: export KUBECONFIG={config_path.resolve()}")
                wait_forever()
            return rc


def reconcile(kubeconfig: Path) -> int:
    """What a user runs: validate, then plan (twice: readable, then with manifests)."""
    steps: list[Sequence[str]] = [
        ["validate", str(PLANS)],
        ["plan", str(PLANS), "--kubeconfig", str(kubeconfig)],
        ["plan", str(PLANS), "--kubeconfig", str(kubeconfig), "--show-manifests",
         "--server-dry-run"],
    ]
    rc = 0
    for argv in steps:
        banner(f"$ vm-storage-reconciler {' '.join(_short(a) for a in argv)}")
        rc = cli.main(list(argv))
        print(f"(exit code {rc})", flush=True)
    return 0 if rc in (0, 1) else rc


def wait_for_vm(api: pykube.HTTPClient, timeout: float = 600.0) -> None:
    """Print import progress and VM status until the VM runs."""
    deadline = time.monotonic() + timeout
    last = ""
    while time.monotonic() < deadline:
        dv = _get(api, "cdi.kubevirt.io/v1beta1", f"datavolumes/{seed.DV_NAME}")
        vm = _get(api, "kubevirt.io/v1", f"virtualmachines/{seed.VM_NAME}")
        dv_status, vm_status = dv.get("status") or {}, vm.get("status") or {}
        line = (f"  DataVolume {seed.DV_NAME}: {dv_status.get('phase', '-')} "
                f"{dv_status.get('progress', '')}  VM: {vm_status.get('printableStatus', '-')}")
        if line != last:
            say(line)
            last = line
        if vm_status.get("printableStatus") == "Running":
            return
        time.sleep(0.2)
    raise TimeoutError(f"{seed.VM_NAME} did not start within {timeout:.0f}s")


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
