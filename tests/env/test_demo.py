"""`make demo` end to end: its own real engine (upstream virt-controller, virt-api and
cdi-controller; only the node side ours), the seed's running and stopped VMs, validate, plan,
apply (one live move, one offline, both verified, content carried over),
status, and plan again in sync. The demo sends nothing but the seed: every move is apply's."""

from __future__ import annotations

import re

import pytest

from testenv import demo


def test_demo_applies_both_seed_vms_and_ends_in_sync(capfd: pytest.CaptureFixture[str]) -> None:
    # capfd, not capsys: the CLI runs as its own process (the demo never imports the product)
    rc = demo.run(copy_seconds_per_gib=0.0)
    out, err = capfd.readouterr()
    assert rc == 0, out + err
    commands = re.findall(r"^\$ vm-storage-reconciler (\w+)", out, re.MULTILINE)
    assert commands == ["validate", "plan", "apply", "status", "plan"]
    codes = re.findall(r"^\(exit code (\d+)\)$", out, re.MULTILINE)
    assert codes == ["0", "1", "0", "0", "0"], out
    assert "2 plan(s) valid." in out
    # plan: the running VM moves live, the stopped one offline
    assert "VM mig-vm/vm-fedora (running, plan fedora-to-ceph): live" in out
    assert "VM mig-vm/vm-archive (stopped, plan archive-to-ceph): offline" in out
    # apply did the moves (had the demo sent manifests itself, apply would find them in sync)
    assert re.search(r"^VM mig-vm/vm-archive: Succeeded \(offline, ", out, re.MULTILINE)
    assert re.search(r"^VM mig-vm/vm-fedora: Succeeded \(live, ", out, re.MULTILINE)
    assert "Apply: 2 VM(s) acted on: 2 succeeded, 0 rolled back, 0 failed" in out
    assert "verified: datavolumedisk1 on fedora-40-dv-template-mig-" in err
    assert "verified: datavolumedisk1 on archive-disk-mig-" in err
    # the narration: the migration's phases, the VMI on another node, the content carried over
    phases = re.findall(r"VMIM \S+ \(VMI vm-fedora\): (\w+)", err)
    assert phases[-1] == "Succeeded" and "Running" in phases, err
    assert re.search(r"VMI vm-fedora: Running on node (\S+) \(was: Running on node (?!\1)", err)
    assert "content hash carried over from fedora-40-dv-template: True" in err
    assert "content hash carried over from archive-disk: True" in err
    # upstream code did it: virt-controller handed the migration off, cdi-controller cloned
    assert re.search(r"upstream virt-controller log: [1-9]\d* line\(s\) about "
                     r"kubevirt-workload-update-\S+, e\.g\. \{", err), err
    assert re.search(r"upstream cdi-controller log: [1-9]\d* line\(s\) about "
                     r"archive-disk-mig-\S+, e\.g\. \{", err), err
    assert "stopping the VM" not in err, "the archive VM was stopped already"
    # status: both VMs keep a last-migration record, nothing in flight
    assert re.search(r"^mig-vm/vm-archive +last: Succeeded .* offline ", out, re.MULTILINE)
    assert re.search(r"^mig-vm/vm-fedora +last: Succeeded .* live ", out, re.MULTILINE)
    # and plan again: in sync
    assert "In sync: mig-vm/vm-archive, mig-vm/vm-fedora" in out
    assert out.rstrip().endswith("(exit code 0)")
