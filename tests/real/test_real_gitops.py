"""GitOps with a real Flux (tests/cluster/test_flux_gitops.py, test_flux_writeback.py) on the
real engine: kustomize-controller's server-side applies of the VM go through virt-api's
admission, virt-controller acts on them (the VMI, the volume migration, its cancellation when
Flux reverts the swap), cdi-controller clones. ``LEAVE_OUT`` names the tests that still run on
the simulator only, each with the upstream difference that keeps it there."""

from __future__ import annotations

from tests.cluster import test_flux_gitops, test_flux_writeback
from tests.support.mirror import mirror

LEAVE_OUT: dict[str, str] = {}
LEAVE_OUT_WRITEBACK: dict[str, str] = {}

globals().update(mirror(test_flux_gitops, LEAVE_OUT))
globals().update(mirror(test_flux_writeback, LEAVE_OUT_WRITEBACK))
