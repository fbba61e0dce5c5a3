"""Every command of README.md and docs/*.md (tests/cluster/test_docs_commands.py) on the real
engine: each block's scenario seeded where upstream virt-controller, virt-api and
cdi-controller act on it, and the docs' output compared with what the commands print there.

The docs' commands act in every namespace (``status -A``, ``apply`` finishing open moves
anywhere), so they run on an engine of their own, not the session's, which earlier tests
filled. One engine for all the blocks, emptied between them (the seed's namespaces deleted:
kube-controller-manager's namespace controller and virt-controller's finalizers take the VMs
with them), where the simulator gave each block a new cluster: an engine takes ~30 s to
start. It asks for ``real_engine`` only to join a real-engine group (one busy engine per
worker)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from testenv import seed
from testenv.real.engine import RealEngine
from tests.cluster import test_docs_commands
from tests.cluster.test_docs_commands import cli_blocks
from tests.support.docs_blocks import Block, commands
from tests.support.engines import running_engine
from tests.support.kube import Eventually
from tests.support.mirror import mirror
from tests.support.node_faults import EngineLab

LEAVE_OUT = {
    "test_the_commands_of_a_block_print_what_the_docs_show": (
        "runs below, but for the blocks that move the seed back (``MOVES_BACK``)"
    ),
    "test_the_install_commands_build_on_a_copy_of_deploy": (
        "no cluster: kustomize builds of a copy of deploy/, nothing of either engine"
    ),
    "test_every_page_with_cli_blocks_is_found": "no cluster: reads the pages",
}

globals().update(mirror(test_docs_commands, LEAVE_OUT))

MOVES_BACK = (
    "the move back to local-hostpath (WaitForFirstConsumer) live: no CSIDriver object names "
    "its provisioner here, so upstream CDI populates the destination the legacy way "
    "(DataVolume WaitForFirstConsumer, not PendingPopulation), which KubeVirt cannot migrate "
    "to, and apply rolls the move back [target-waits-for-consumer], as it should on such a "
    "class. With the CSIDriver objects a CSI driver registers, CDI's populators take over and "
    "these blocks passed here (measured), but the engine does not register them yet: every "
    "DataVolume would then go through the populators, whose prime claims change the PVC counts "
    "other blocks show, and whose content the node side does not carry yet. They run on the "
    "simulator."
)
"""Why the blocks that move the seed back (``apply back/``, and the ``kept`` scenario built
with it) run on the simulator only."""


def _moves_back(block: Block) -> bool:
    return block.scenario == "kept" or any("back/" in c.text for c in commands(block))


@pytest.mark.usefixtures("docs_engine")  # so it joins a real-engine group (``lab`` comes late)
@pytest.mark.parametrize(
    "block", [b for b in cli_blocks() if not _moves_back(b)], ids=lambda b: b.where
)
def test_the_commands_of_a_block_print_what_the_docs_show(
    block: Block, tmp_path: Path, request: pytest.FixtureRequest
) -> None:
    test_docs_commands.test_the_commands_of_a_block_print_what_the_docs_show(
        block, tmp_path, request
    )


EMPTIED_WITHIN = 180.0
"""Seconds for the namespace controller to delete a block's namespaces (VMs wait for
virt-controller to stop their VMIs and drop its finalizer)."""


@pytest.fixture(scope="module")
def docs_engine(real_engine: RealEngine) -> Iterator[RealEngine]:
    """An engine for the docs' blocks alone (see the module docstring)."""
    del real_engine  # only its xdist group
    with running_engine("the docs' real engine") as engine:
        yield engine


@pytest.fixture
def lab(docs_engine: RealEngine, tmp_path: Path, eventually: Eventually) -> Iterator[EngineLab]:
    """The docs' engine with nothing of an earlier block in it, instant copies."""
    api = docs_engine.api()
    names = (seed.NAMESPACE, seed.LEASE_NAMESPACE)
    for name in names:
        response = api.delete(url=f"namespaces/{name}")
        if response.status_code != 404:
            api.raise_for_status(response)
    eventually(
        lambda: all(api.get(url=f"namespaces/{n}").status_code == 404 for n in names),
        timeout=EMPTIED_WITHIN,
        what=f"namespaces {names} deleted",
    )
    with EngineLab(docs_engine, tmp_path / "lab", copy_seconds_per_gib=0.0) as started:
        yield started
