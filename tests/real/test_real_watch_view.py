"""The watch-fed view of a run (tests/cluster/test_watch_view.py) on the real engine:
upstream virt-controller, virt-api and cdi-controller; only the node side is ours.
``LEAVE_OUT`` names the tests that still run on the simulator only, each with the upstream
difference that keeps it there."""

from __future__ import annotations

from tests.cluster import test_watch_view
from tests.support.mirror import mirror

APISERVER_ONLY = (
    "kube-apiserver alone, where it is written: the view's watches against the API server "
    "(creates, updates, deletes, 410 relists), nothing of KubeVirt or CDI; here CDI makes and "
    "re-makes the claims of the DataVolumes the test writes, racing the claims it writes and "
    "deletes itself"
)
LEAVE_OUT: dict[str, str] = {
    "test_the_view_follows_creates_updates_and_deletes": APISERVER_ONLY,
    "test_a_snapshot_after_our_own_write_shows_it": APISERVER_ONLY,
    "test_a_judge_sees_the_vm_as_of_the_moment_it_asks": APISERVER_ONLY,
    "test_a_410_lists_again_and_a_cut_stream_resumes": APISERVER_ONLY,
}

globals().update(mirror(test_watch_view, LEAVE_OUT))
