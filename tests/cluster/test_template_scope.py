"""`--templates` overrides out of a move's scope (issue 14, item 9), against the real API server.

A vm-patch.j2 that also rewrites the VM's cloud-init userData passed every post-render check
and the server dry run before; now render refuses it (``render.scope``): `plan` exits 2 with
the template file named, and `apply` writes nothing (no journal, no DataVolume, the VM's spec
as it was) and reports the VM failed to render.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pykube
import pytest

from reconciler.cli.main import main
from reconciler.model.errors import ExitCode
from testenv import seed
from testenv.controlplane import ControlPlane
from testenv.demo import cdi_transient
from tests.cluster.test_plan import fedora, plan_file, settle
from tests.support.kube import Eventually, get_json

KV = "kubevirt.io/v1"
CDI = "cdi.kubevirt.io/v1beta1"
USER_DATA = "/spec/template/spec/volumes/1/cloudInitNoCloud/userData"
HOSTILE_OP = (
    f'- {{"op": "replace", "path": "{USER_DATA}", '
    '"value": "#cloud-config\\nssh_authorized_keys: [ssh-ed25519 AAAA mallory]\\n"}\n'
)


@pytest.fixture(scope="module", autouse=True)
def cluster_objects(api: pykube.HTTPClient) -> None:
    """The seed's StorageClasses and KubeVirt CR (configured for live migration)."""
    seed.seed_cluster(api)


def hostile_templates(tmp_path: Path) -> Path:
    """A --templates dir whose vm-patch.j2 also rewrites the cloud-init disk's userData."""
    shipped = (Path(__file__).resolve().parents[2] / "templates" / "vm-patch.j2").read_text()
    anchor = "{%- if live %}\n"
    assert shipped.count(anchor) == 1
    directory = tmp_path / "templates"
    directory.mkdir()
    (directory / "vm-patch.j2").write_text(shipped.replace(anchor, HOSTILE_OP + anchor))
    return directory


def state(api: pykube.HTTPClient, namespace: str) -> dict[str, Any]:
    """What a move could change: the VM's spec, generation and annotations, the DataVolumes
    and the PVCs of the namespace but CDI's transient ones (a populator's prime claim lasts a
    moment past its DataVolume's Succeeded: there before apply, gone after)."""
    vm = get_json(api, KV, namespace, "virtualmachines/vm-fedora")
    return {
        "spec": vm["spec"],
        "generation": vm["metadata"].get("generation"),
        "journal": (vm["metadata"].get("annotations") or {}).get("vmstorage.dev/journal"),
        "dataVolumes": sorted(
            d["metadata"]["name"] for d in get_json(api, CDI, namespace, "datavolumes")["items"]
        ),
        "pvcs": sorted(
            p["metadata"]["name"]
            for p in get_json(api, "v1", namespace, "persistentvolumeclaims")["items"]
            if not cdi_transient(p)  # deleted by CDI a moment after its import Succeeded
        ),
    }


def test_apply_with_an_out_of_scope_override_changes_nothing(
    api: pykube.HTTPClient,
    control_plane: ControlPlane,
    namespace: str,
    tmp_path: Path,
    eventually: Eventually,
    capsys: pytest.CaptureFixture[str],
) -> None:
    settle(api, eventually, fedora(namespace))
    plans = plan_file(tmp_path, namespace)
    templates = hostile_templates(tmp_path)
    kubeconfig = ["--kubeconfig", str(control_plane.kubeconfig)]
    before = state(api, namespace)

    rc = main(["plan", str(plans), "--show-manifests", "--templates", str(templates), *kubeconfig])
    _, err = capsys.readouterr()
    assert rc == ExitCode.BAD_INPUT, err
    assert f"{templates / 'vm-patch.j2'}:" in err
    assert "out of the move's scope" in err and USER_DATA in err

    lease = control_plane.create_namespace("lease")
    argv = ["apply", str(plans), "-o", "json", "--templates", str(templates), "--lease-namespace"]
    rc = main([*argv, lease, *kubeconfig])
    out, err = capsys.readouterr()
    # apply renders each VM just before it journals it: a render failure fails that VM
    # (exit 3, rule render-failed) before anything of the move is written.
    assert rc == ExitCode.VM_FAILED, err
    (outcome,) = json.loads(out)["outcomes"]
    assert (outcome["result"], outcome["rule"]) == ("Failed", "render-failed"), outcome
    assert str(templates / "vm-patch.j2") in outcome["reason"]
    assert "out of the move's scope" in outcome["reason"] and USER_DATA in outcome["reason"]
    assert state(api, namespace) == before, "nothing of the move was written"
    user_data = get_json(api, KV, namespace, "virtualmachines/vm-fedora")["spec"]["template"][
        "spec"
    ]["volumes"][1]["cloudInitNoCloud"]["userData"]
    assert "mallory" not in user_data
