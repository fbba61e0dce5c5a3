"""`make demo` end to end: its own control plane and simulator, the seed VM, validate, plan,
the rendered manifests sent, the live migration watched, and the VM in sync afterwards."""

from __future__ import annotations

import pytest

from testenv import demo


def test_demo_migrates_the_seed_vm_and_ends_in_sync(capsys: pytest.CaptureFixture[str]) -> None:
    rc = demo.run(copy_seconds_per_gib=0.0)
    out, err = capsys.readouterr()
    assert rc == 0, out + err
    assert "1 plan(s) valid." in out
    assert "local-hostpath -> ceph-rbd" in out
    assert "Server dry run: every DataVolume and VM patch was accepted." in out
    assert "VMIM: Succeeded" in err
    assert "content hash copied from fedora-40-dv-template: True" in err
    assert out.rstrip().endswith("(exit code 0)")
    assert "In sync: mig-vm/vm-fedora" in out
