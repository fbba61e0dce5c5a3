"""The shipped RBAC (tests/cluster/test_rbac.py) on the real engine: the CronJob's command run
with a token of the shipped ServiceAccount against upstream admission (virt-api's webhooks
judge every VM write the run makes) and upstream controllers acting on what it does, each as
its own ServiceAccount (virt-controller, virt-api, cdi-controller). CDI's clone authorization
is a stand-in on both engines (cdi-apiserver, which makes it upstream, does not run), and so is
the cluster's KubeVirt default RBAC on the simulator (none there; the real engine installs
virt-operator's, whose kubevirt.io:default grants every authenticated user list on
KubeVirt CRs: ``PLATFORM`` in the module).

Least privilege both ways, here: every request the runs send is allowed by the authorizer and
by a shipped rule, and every shipped rule's verbs are sent (``test_the_runs_use_exactly_the_
shipped_rbac``); removing any one shipped rule makes its representative run fail on a 403
that the run reports (``test_removing_any_granted_rule_makes_its_representative_run_fail``,
15 cases). ``LEAVE_OUT`` names what stays on the simulator, with why."""

from __future__ import annotations

from tests.cluster import test_rbac
from tests.support.mirror import mirror

LEAVE_OUT = {
    "test_removing_any_granted_verb_makes_a_run_fail": (
        "cost, not an upstream difference: its 36 cases (one per verb, each the 4-VM "
        "scheduled or the retention scenario, a refused watch retried up to 10 times) took "
        "22.5 min on the real engine (2 shared cores, load 12-15), over the whole suite's 15 "
        "min; the per-rule matrix (15 cases, ~2.5 min) runs here instead, the per-verb one on "
        "the simulator"
    ),
}

globals().update(mirror(test_rbac, LEAVE_OUT))
