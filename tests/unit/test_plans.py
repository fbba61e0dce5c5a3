"""Plan files: every accepted format loads to the expected ``Plan`` values, and every mistake
is reported with its exact file:line, field path, message and hint, all at once."""

from __future__ import annotations

import os
import re
import textwrap
from collections.abc import Callable
from datetime import UTC, datetime, time, timedelta
from pathlib import Path
from zoneinfo import ZoneInfo

import pytest

from reconciler.model.errors import ExitCode, PlanError, Problem
from reconciler.model.plan import (
    DEFAULT_CLASS,
    LabelSelector,
    Mode,
    Plan,
    Retention,
    Source,
    VMSelection,
    VolumeMode,
    VolumeTarget,
    Window,
)
from reconciler.model.windows import (
    SpecError,
    format_duration,
    format_window,
    next_window_start,
    parse_duration,
    parse_window,
    parse_window_start,
    window_closes_at,
    window_open,
)
from reconciler.plans.files import plan_files
from reconciler.plans.load import load_plans, parse_plans

REPO = Path(__file__).resolve().parents[2]

Row = tuple[int, str, str, str]  # (line, field path, message, hint)


def write(directory: Path, name: str, text: str) -> Path:
    path = directory / name
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(textwrap.dedent(text).lstrip("\n"))
    return path


def problems(paths: list[Path], allowed_namespaces: frozenset[str] | None = None) -> list[Problem]:
    with pytest.raises(PlanError) as caught:
        load_plans(paths, allowed_namespaces=allowed_namespaces)
    assert caught.value.exit_code is ExitCode.BAD_INPUT
    return list(caught.value.problems)


def rows(found: list[Problem], file: Path) -> list[Row]:
    """The problems of ``file`` as comparable rows (every problem must belong to it)."""
    result = []
    for problem in found:
        assert problem.source is not None, problem
        assert problem.source.file == str(file), problem
        result.append((problem.source.line, problem.source.path, problem.message, problem.hint))
    return result


# --------------------------------------------------------------------------------------------
# Valid plans load to the expected values
# --------------------------------------------------------------------------------------------

MINIMAL = """
apiVersion: vmstorage.dev/v1alpha1
kind: StoragePlan
metadata:
  name: minimal
spec:
  namespace: apps
  storageClass: fast
  virtualMachines:
    - name: vm-a
"""

FULL = """
apiVersion: vmstorage.dev/v1alpha1
kind: StoragePlan
metadata:
  name: full.plan
  labels: {team: storage}
  annotations: {note: "anything"}
spec:
  namespace: apps
  storageClass: fast
  volumeMode: Filesystem
  accessModes: [ReadWriteOnce]
  virtualMachines:
    - name: vm-a
      volumes:
        - name: rootdisk
        - name: data
          storageClass: fast-block
          volumeMode: Block
          accessModes: [ReadWriteMany, ReadWriteOncePod]
          targetName: vm-a-data-fast
    - name: vm-b
  selector:
    matchLabels: {tier: gold, app.kubernetes.io/part-of: shop}
    matchExpressions:
      - {key: env, operator: In, values: [prod, stage]}
      - {key: legacy, operator: DoesNotExist}
  mode: Offline
  allowStop: true
  retention: Delete
  window: {start: "Mon-Fri 22:00", duration: 1h30m, timeZone: America/New_York}
  timeout: 45m
  allowGitOpsManaged: true
"""

SELECTOR_ONLY = """
apiVersion: vmstorage.dev/v1alpha1
kind: StoragePlan
metadata: {name: everything}
spec:
  namespace: apps
  storageClass: fast
  selector: {}
  window:
    start: 01:00
    duration: 4h
"""

KMC = """
apiVersion: migrations.kubevirt.io/v1alpha1
kind: VirtualMachineStorageMigrationPlan
metadata:
  name: kmc
  namespace: apps
spec:
  retentionPolicy: deleteSource
  virtualMachines:
    - name: vm-a
      targetMigrationPVCs:
        - volumeName: rootdisk
          destinationPVC: {}
        - volumeName: data
          destinationPVC:
            name: data-new
            storageClassName: fast
            accessModes: [Auto]
            volumeMode: Block
        - volumeName: logs
          destinationPVC:
            storageClassName: fast
            accessModes: [ReadWriteMany, Auto]
            volumeMode: Auto
"""

KMC_MULTI = """
apiVersion: migrations.kubevirt.io/v1alpha1
kind: MultiNamespaceVirtualMachineStorageMigrationPlan
metadata:
  name: multi
  namespace: ops
spec:
  namespaces:
    - name: dev
      virtualMachines:
        - name: vm-a
          targetMigrationPVCs:
            - {volumeName: rootdisk, destinationPVC: {storageClassName: fast}}
    - name: prod
      retentionPolicy: deleteSource
      virtualMachines:
        - name: vm-a
          targetMigrationPVCs:
            - {volumeName: rootdisk, destinationPVC: {storageClassName: fast}}
"""

KMC_EXPORTED_LIST = """
apiVersion: v1
kind: List
metadata: {resourceVersion: ""}
items:
  - apiVersion: migrations.kubevirt.io/v1alpha1
    kind: VirtualMachineStorageMigrationPlan
    metadata:
      name: exported
      namespace: apps
      uid: 0f1c2d3e-aaaa-bbbb-cccc-000000000000
      resourceVersion: "4711"
      generation: 1
      creationTimestamp: "2026-01-01T00:00:00Z"
      finalizers: [x/y]
      managedFields: [{manager: kubectl}]
    spec:
      virtualMachines:
        - name: vm-a
          targetMigrationPVCs:
            - {volumeName: rootdisk, destinationPVC: {storageClassName: fast}}
    status:
      completedOutOf: 0/1
      conditions: [{type: Ready, status: "True"}]
"""

ANCHORS = """
apiVersion: vmstorage.dev/v1alpha1
kind: StoragePlan
metadata: {name: merged}
spec:
  <<: &defaults {namespace: apps, storageClass: slow}
  storageClass: fast
  virtualMachines: [{name: vm-a}]
"""


def _expected_minimal(f: str) -> tuple[Plan, ...]:
    return (
        Plan(
            name="minimal",
            namespace="apps",
            source=Source(f, 4, "metadata.name"),
            storage_class="fast",
            virtual_machines=(VMSelection("vm-a", Source(f, 9, "spec.virtualMachines[0]")),),
        ),
    )


def _expected_full(f: str) -> tuple[Plan, ...]:
    vms = "spec.virtualMachines"
    return (
        Plan(
            name="full.plan",
            namespace="apps",
            source=Source(f, 4, "metadata.name"),
            storage_class="fast",
            volume_mode=VolumeMode.FILESYSTEM,
            access_modes=("ReadWriteOnce",),
            virtual_machines=(
                VMSelection(
                    "vm-a",
                    Source(f, 13, f"{vms}[0]"),
                    (
                        VolumeTarget("rootdisk", Source(f, 15, f"{vms}[0].volumes[0]")),
                        VolumeTarget(
                            "data",
                            Source(f, 16, f"{vms}[0].volumes[1]"),
                            storage_class="fast-block",
                            volume_mode=VolumeMode.BLOCK,
                            access_modes=("ReadWriteMany", "ReadWriteOncePod"),
                            target_name="vm-a-data-fast",
                        ),
                    ),
                ),
                VMSelection("vm-b", Source(f, 21, f"{vms}[1]")),
            ),
            selector=LabelSelector(
                match_labels=(("app.kubernetes.io/part-of", "shop"), ("tier", "gold")),
                match_expressions=(
                    ("env", "In", ("prod", "stage")),
                    ("legacy", "DoesNotExist", ()),
                ),
            ),
            mode=Mode.OFFLINE,
            allow_stop=True,
            retention=Retention.DELETE,
            window=Window(
                start=time(22, 0),
                duration=timedelta(hours=1, minutes=30),
                time_zone="America/New_York",
                days=frozenset({1, 2, 3, 4, 5}),
            ),
            timeout=timedelta(minutes=45),
            allow_gitops_managed=True,
        ),
    )


def _expected_selector_only(f: str) -> tuple[Plan, ...]:
    return (
        Plan(
            name="everything",
            namespace="apps",
            source=Source(f, 3, "metadata.name"),
            storage_class="fast",
            selector=LabelSelector(),
            # An unquoted 01:00 is YAML 1.1's sexagesimal 60; the window reads it as written.
            window=Window(start=time(1, 0), duration=timedelta(hours=4)),
        ),
    )


def _expected_kmc(f: str) -> tuple[Plan, ...]:
    pvcs = "spec.virtualMachines[0].targetMigrationPVCs"
    return (
        Plan(
            name="kmc",
            namespace="apps",
            source=Source(f, 4, "metadata.name"),
            storage_class=None,
            virtual_machines=(
                VMSelection(
                    "vm-a",
                    Source(f, 9, "spec.virtualMachines[0]"),
                    (
                        VolumeTarget(
                            "rootdisk", Source(f, 11, f"{pvcs}[0]"), storage_class=DEFAULT_CLASS
                        ),
                        VolumeTarget(
                            "data",
                            Source(f, 13, f"{pvcs}[1]"),
                            storage_class="fast",
                            volume_mode=VolumeMode.BLOCK,
                            access_modes=None,
                            target_name="data-new",
                        ),
                        VolumeTarget(
                            "logs",
                            Source(f, 19, f"{pvcs}[2]"),
                            storage_class="fast",
                            volume_mode=VolumeMode.AUTO,
                            access_modes=("ReadWriteMany",),
                        ),
                    ),
                ),
            ),
            mode=Mode.AUTO,
            allow_stop=False,
            retention=Retention.DELETE,
            origin_kind="VirtualMachineStorageMigrationPlan",
        ),
    )


def _expected_kmc_multi(f: str) -> tuple[Plan, ...]:
    def child(
        namespace: str, index: int, lines: tuple[int, int, int], retention: Retention
    ) -> Plan:
        entry = f"spec.namespaces[{index}]"
        line, vm_line, volume_line = lines
        return Plan(
            name=f"multi-{namespace}",
            namespace=namespace,
            source=Source(f, line, entry),
            virtual_machines=(
                VMSelection(
                    "vm-a",
                    Source(f, vm_line, f"{entry}.virtualMachines[0]"),
                    (
                        VolumeTarget(
                            "rootdisk",
                            Source(
                                f, volume_line, f"{entry}.virtualMachines[0].targetMigrationPVCs[0]"
                            ),
                            storage_class="fast",
                        ),
                    ),
                ),
            ),
            retention=retention,
            origin_kind="MultiNamespaceVirtualMachineStorageMigrationPlan",
        )

    return (
        child("dev", 0, (8, 10, 12), Retention.KEEP),
        child("prod", 1, (13, 16, 18), Retention.DELETE),
    )


def _expected_exported(f: str) -> tuple[Plan, ...]:
    item = "items[0]"
    return (
        Plan(
            name="exported",
            namespace="apps",
            source=Source(f, 8, f"{item}.metadata.name"),
            virtual_machines=(
                VMSelection(
                    "vm-a",
                    Source(f, 18, f"{item}.spec.virtualMachines[0]"),
                    (
                        VolumeTarget(
                            "rootdisk",
                            Source(f, 20, f"{item}.spec.virtualMachines[0].targetMigrationPVCs[0]"),
                            storage_class="fast",
                        ),
                    ),
                ),
            ),
            origin_kind="VirtualMachineStorageMigrationPlan",
        ),
    )


def _expected_anchors(f: str) -> tuple[Plan, ...]:
    return (
        Plan(
            name="merged",
            namespace="apps",
            source=Source(f, 3, "metadata.name"),
            storage_class="fast",  # the key written next to << wins over the merged one
            virtual_machines=(VMSelection("vm-a", Source(f, 7, "spec.virtualMachines[0]")),),
        ),
    )


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        pytest.param(MINIMAL, _expected_minimal, id="storageplan-minimal-defaults"),
        pytest.param(FULL, _expected_full, id="storageplan-every-field"),
        pytest.param(SELECTOR_ONLY, _expected_selector_only, id="storageplan-selector-only"),
        pytest.param(KMC, _expected_kmc, id="kmc-plan"),
        pytest.param(KMC_MULTI, _expected_kmc_multi, id="kmc-multi-namespace-plan"),
        pytest.param(KMC_EXPORTED_LIST, _expected_exported, id="kubectl-exported-list"),
        pytest.param(ANCHORS, _expected_anchors, id="merge-keys-and-anchors"),
    ],
)
def test_valid_files_load_to_the_expected_plans(
    tmp_path: Path, text: str, expected: Callable[[str], tuple[Plan, ...]]
) -> None:
    path = write(tmp_path, "plan.yaml", text)
    assert load_plans([path]) == expected(str(path))


def test_plan_defaults_are_the_documented_ones(tmp_path: Path) -> None:
    (plan,) = load_plans([write(tmp_path, "p.yaml", MINIMAL)])
    assert (plan.mode, plan.allow_stop, plan.retention) == (Mode.AUTO, False, Retention.KEEP)
    assert (plan.volume_mode, plan.access_modes, plan.window) == (VolumeMode.AUTO, None, None)
    assert (plan.timeout, plan.allow_gitops_managed) == (None, False)  # None: sized by apply
    assert plan.origin_kind == "StoragePlan"


def test_multi_document_files_skip_empty_documents_and_sort_plans(tmp_path: Path) -> None:
    text = (
        "# leading comment\n---\n"
        + MINIMAL.replace("minimal", "zeta").replace("apps", "b-ns")
        + "---\n---\n# only a comment\n---\n"
        + MINIMAL.replace("minimal", "alpha").replace("apps", "b-ns")
        + "---\n"
        + MINIMAL.replace("minimal", "omega").replace("apps", "a-ns")
    )
    plans = load_plans([write(tmp_path, "many.yaml", text)])
    assert [(p.namespace, p.name) for p in plans] == [
        ("a-ns", "omega"),
        ("b-ns", "alpha"),
        ("b-ns", "zeta"),
    ]
    assert [p.source.line for p in plans] == [32, 21, 7]


def test_parse_plans_reads_text_without_files() -> None:
    (plan,) = parse_plans(MINIMAL.lstrip("\n"), "stdin")
    assert plan.source == Source("stdin", 4, "metadata.name")


# --------------------------------------------------------------------------------------------
# Every kind of mistake: exact line, path, message and hint
# --------------------------------------------------------------------------------------------

HEAD = "apiVersion: vmstorage.dev/v1alpha1\nkind: StoragePlan\nmetadata: {name: p}\n"
KMC_HEAD = (
    "apiVersion: migrations.kubevirt.io/v1alpha1\n"
    "kind: VirtualMachineStorageMigrationPlan\n"
    "metadata: {name: k, namespace: apps}\n"
)
ACCEPTED = (
    "plan documents are: apiVersion vmstorage.dev/v1alpha1 kind StoragePlan; apiVersion "
    "migrations.kubevirt.io/v1alpha1 kind VirtualMachineStorageMigrationPlan or "
    "MultiNamespaceVirtualMachineStorageMigrationPlan"
)
SPEC_FIELDS = (
    "accessModes, allowGitOpsManaged, allowStop, mode, namespace, retention, selector, "
    "storageClass, timeout, virtualMachines, volumeMode, window"
)
DURATION_HINT = "write a whole number and a unit, e.g. 90m, 4h, 1h30m, 2d (units: d, h, m, s)"
LABEL_RULE = (
    "use at most 63 lowercase letters, digits and '-', starting and ending with a letter or digit"
)
SUBDOMAIN_RULE = (
    "use at most 253 lowercase letters, digits, '-' and '.', starting and ending with a letter "
    "or digit"
)
START_HINT = (
    "write '[DAYS ]HH:MM' in 24-hour time, e.g. '01:00', 'Sat 01:00', 'Mon-Fri 22:00', "
    "'Sat,Sun 01:00'"
)
VMS = "spec:\n  namespace: apps\n  storageClass: fast\n  virtualMachines: [{name: vm-a}]\n"

ERRORS: list[tuple[str, str, list[Row]]] = [
    (
        "malformed-yaml",
        "apiVersion: vmstorage.dev/v1alpha1\nkind: StoragePlan\nmetadata:\n  name: [p\n",
        [
            (
                5,
                "",
                "invalid YAML: expected ',' or ']', but got '<stream end>'",
                "check the indentation and quoting on this line and the one before; quote "
                "values that contain ': ' or ' #' or start with one of * & ! { [ % @ `",
            )
        ],
    ),
    (
        "bad-indentation",
        "apiVersion: vmstorage.dev/v1alpha1\nkind: StoragePlan\n metadata: {}\n",
        [
            (
                3,
                "",
                "invalid YAML: mapping values are not allowed here",
                "check the indentation and quoting on this line and the one before; quote "
                "values that contain ': ' or ' #' or start with one of * & ! { [ % @ `",
            )
        ],
    ),
    (
        "document-not-a-mapping",
        "- apiVersion: vmstorage.dev/v1alpha1\n",
        [
            (
                1,
                "",
                "a plan document must be a mapping (apiVersion, kind, metadata, spec), got a list",
                "start each document with 'apiVersion:' and separate documents with '---'",
            )
        ],
    ),
    (
        "scalar-document",
        "just some text\n",
        [
            (
                1,
                "",
                "a plan document must be a mapping (apiVersion, kind, metadata, spec), "
                "got a string ('just some text')",
                "start each document with 'apiVersion:' and separate documents with '---'",
            )
        ],
    ),
    (
        "missing-apiversion",
        "kind: StoragePlan\n",
        [(1, "apiVersion", "missing required field 'apiVersion'", ACCEPTED)],
    ),
    (
        "unknown-kind-of-our-group",
        "apiVersion: vmstorage.dev/v1alpha1\nkind: Deployment\n",
        [(2, "kind", "unknown kind 'Deployment' (apiVersion 'vmstorage.dev/v1alpha1')", ACCEPTED)],
    ),
    (
        "storageclass-typo-for-storageplan",
        "apiVersion: vmstorage.dev/v1alpha1\nkind: StorageClass\n",
        [
            (
                2,
                "kind",
                "unknown kind 'StorageClass' (apiVersion 'vmstorage.dev/v1alpha1')",
                f"did you mean 'StoragePlan'? {ACCEPTED}",
            )
        ],
    ),
    (
        "misspelt-kind",
        "apiVersion: vmstorage.dev/v1alpha1\nkind: Storageplan\n",
        [
            (
                2,
                "kind",
                "unknown kind 'Storageplan' (apiVersion 'vmstorage.dev/v1alpha1')",
                f"did you mean 'StoragePlan'? {ACCEPTED}",
            )
        ],
    ),
    (
        "known-kind-wrong-apiversion",
        "apiVersion: vmstorage.dev/v1\nkind: StoragePlan\n",
        [
            (
                1,
                "apiVersion",
                "kind StoragePlan needs apiVersion vmstorage.dev/v1alpha1, got 'vmstorage.dev/v1'",
                "write: apiVersion: vmstorage.dev/v1alpha1",
            )
        ],
    ),
    (
        "kmc-migration-is-not-a-plan",
        "apiVersion: migrations.kubevirt.io/v1alpha1\nkind: VirtualMachineStorageMigration\n",
        [
            (
                2,
                "kind",
                "unknown kind 'VirtualMachineStorageMigration' "
                "(apiVersion 'migrations.kubevirt.io/v1alpha1')",
                "this starts a kubevirt-migration-controller plan; here every plan in the "
                "repository is applied by `apply`: delete this document",
            )
        ],
    ),
    (
        "missing-spec-and-name",
        "apiVersion: vmstorage.dev/v1alpha1\nkind: StoragePlan\nmetadata:\n  labels: {}\n",
        [
            (
                1,
                "spec",
                "missing required field 'spec'",
                "add spec: {namespace: ..., storageClass: ..., virtualMachines: ...}",
            ),
            (
                4,
                "metadata.name",
                "missing required field 'name'",
                "name the plan: metadata.name, a DNS-1123 subdomain",
            ),
        ],
    ),
    (
        "unknown-field-did-you-mean",
        HEAD + VMS + "  storageclass: slow\n",
        [
            (
                8,
                "spec.storageclass",
                "unknown field 'storageclass'",
                f"did you mean 'storageClass'? fields here: {SPEC_FIELDS}",
            )
        ],
    ),
    (
        "unknown-field-no-guess",
        HEAD + VMS + "  priority: high\n",
        [(8, "spec.priority", "unknown field 'priority'", f"fields here: {SPEC_FIELDS}")],
    ),
    (
        "misplaced-namespace",
        "apiVersion: vmstorage.dev/v1alpha1\nkind: StoragePlan\n"
        "metadata: {name: p, namespace: apps}\n" + VMS,
        [
            (
                3,
                "metadata.namespace",
                "unknown field 'namespace'",
                "a StoragePlan names the namespace it acts in with spec.namespace",
            )
        ],
    ),
    (
        "kmc-field-in-storageplan",
        HEAD + "spec:\n  namespace: apps\n  storageClass: fast\n  virtualMachines:\n"
        "    - name: vm-a\n      targetMigrationPVCs: []\n",
        [
            (
                9,
                "spec.virtualMachines[0].targetMigrationPVCs",
                "unknown field 'targetMigrationPVCs'",
                "that is the kubevirt-migration-controller format; a StoragePlan lists "
                "volumes: [{name: <volume>, storageClass: <class>}]",
            )
        ],
    ),
    (
        "key-written-twice",
        HEAD + VMS + "  storageClass: slow\n",
        [
            (
                8,
                "spec.storageClass",
                "field 'storageClass' is set twice (first on line 6)",
                "remove one of them: YAML would silently keep only the last",
            )
        ],
    ),
    (
        "non-string-key",
        HEAD + VMS + "  1: one\n",
        [
            (
                8,
                "spec",
                "field names must be strings, got an integer (1)",
                'to use it as text, put it in quotes: "1"',
            )
        ],
    ),
    (
        "wrong-types",
        HEAD + "spec:\n  namespace: [apps]\n  storageClass: fast\n  virtualMachines: {name: vm-a}\n"
        "  allowStop: 'yes'\n  window: weekends\n",
        [
            (5, "spec.namespace", "expected a string, got a list", ""),
            (7, "spec.virtualMachines", "expected a list, got a mapping", ""),
            (
                8,
                "spec.allowStop",
                "expected a boolean, got a string ('yes')",
                "write true or false, without quotes",
            ),
            (9, "spec.window", "expected a mapping, got a string ('weekends')", ""),
        ],
    ),
    (
        "yaml-1.1-norway",
        HEAD + "spec:\n  namespace: apps\n  storageClass: fast\n  virtualMachines:\n"
        "    - name: no\n    - name: 0123\n",
        [
            (
                8,
                "spec.virtualMachines[0].name",
                "expected a string, got a boolean (no)",
                'to use it as text, put it in quotes: "no"',
            ),
            (
                9,
                "spec.virtualMachines[1].name",
                "expected a string, got an integer (0123)",
                'to use it as text, put it in quotes: "0123"',
            ),
        ],
    ),
    (
        "bad-names",
        "apiVersion: vmstorage.dev/v1alpha1\nkind: StoragePlan\nmetadata: {name: Gold_Tier}\n"
        "spec:\n  namespace: " + "n" * 64 + "\n  storageClass: Fast\n  virtualMachines:\n"
        "    - name: vm-a\n      volumes:\n        - {name: root.disk, targetName: -x}\n",
        [
            (
                3,
                "metadata.name",
                "invalid plan name 'Gold_Tier': not a DNS-1123 subdomain",
                f"did you mean 'gold-tier'? {SUBDOMAIN_RULE}",
            ),
            (
                5,
                "spec.namespace",
                "invalid namespace '" + "n" * 64 + "': 64 characters, more than 63",
                f"did you mean '{'n' * 63}'? {LABEL_RULE}",
            ),
            (
                6,
                "spec.storageClass",
                "invalid StorageClass name 'Fast': not a DNS-1123 subdomain",
                f"did you mean 'fast'? {SUBDOMAIN_RULE}",
            ),
            (
                10,
                "spec.virtualMachines[0].volumes[0].name",
                "invalid volume name 'root.disk': not a DNS-1123 label",
                f"did you mean 'root-disk'? {LABEL_RULE}",
            ),
            (
                10,
                "spec.virtualMachines[0].volumes[0].targetName",
                "invalid targetName '-x': not a DNS-1123 label",
                f"did you mean 'x'? {LABEL_RULE}",
            ),
        ],
    ),
    (
        "bad-enums",
        HEAD + "spec:\n  namespace: apps\n  storageClass: fast\n  virtualMachines:\n"
        "    - name: vm-a\n      volumes: [{name: d, volumeMode: block, accessModes: [RWX]}]\n"
        "  mode: Migrate\n  retention: delete\n",
        [
            (
                9,
                "spec.virtualMachines[0].volumes[0].accessModes[0]",
                "invalid access mode 'RWX'",
                "one of: ReadWriteOnce, ReadWriteMany, ReadOnlyMany, ReadWriteOncePod",
            ),
            (
                9,
                "spec.virtualMachines[0].volumes[0].volumeMode",
                "invalid volumeMode 'block'",
                "did you mean 'Block'? one of: Auto, Block, Filesystem",
            ),
            (10, "spec.mode", "invalid mode 'Migrate'", "one of: Auto, Live, Offline"),
            (
                11,
                "spec.retention",
                "invalid retention 'delete'",
                "did you mean 'Delete'? one of: Keep, Delete",
            ),
        ],
    ),
    (
        "bad-access-mode-lists",
        HEAD
        + VMS
        + "  accessModes: []\n---\n"
        + HEAD
        + VMS
        + "  accessModes: [ReadWriteOnce, ReadWriteOnce]\n",
        [
            (
                8,
                "spec.accessModes",
                "accessModes is empty",
                "list at least one mode, or leave it out",
            ),
            (17, "spec.accessModes", "accessModes lists a mode twice", "list each mode once"),
        ],
    ),
    (
        "bad-durations",
        HEAD
        + VMS
        + "  timeout: 2 hours\n---\n"
        + HEAD
        + VMS
        + "  timeout: 0m\n---\n"
        + HEAD
        + VMS
        + "  timeout: 90\n",
        [
            (8, "spec.timeout", "invalid timeout '2 hours': not a duration", DURATION_HINT),
            (17, "spec.timeout", "invalid timeout '0m': must be longer than zero", DURATION_HINT),
            (26, "spec.timeout", "invalid timeout '90': a number needs a unit", DURATION_HINT),
        ],
    ),
    (
        "bad-window",
        HEAD
        + VMS
        + "  window:\n    start: Saturday 1am\n    duration: 8d\n    timeZone: Europe/Berln\n"
        "---\n" + HEAD + VMS + "  window: {start: 'Sut 01:00', duration: 4h}\n"
        "---\n" + HEAD + VMS + "  window: {start: '24:00'}\n",
        [
            (9, "spec.window.start", "invalid window start 'Saturday 1am'", START_HINT),
            (
                10,
                "spec.window.duration",
                "window duration 8d is a week or longer",
                "such a window is always open: remove spec.window instead",
            ),
            (
                11,
                "spec.window.timeZone",
                "unknown time zone 'Europe/Berln'",
                "did you mean 'Europe/Berlin'? use an IANA time zone name such as UTC or "
                "Europe/Berlin",
            ),
            (
                20,
                "spec.window.start",
                "invalid window start 'Sut 01:00': unknown day 'Sut'",
                "did you mean 'Sun'? days are Mon Tue Wed Thu Fri Sat Sun (or full names)",
            ),
            (
                29,
                "spec.window.duration",
                "missing required field 'duration'",
                "how long the window stays open, e.g. duration: 4h",
            ),
            (
                29,
                "spec.window.start",
                "invalid window start '24:00': 24:00 is not a time of day",
                "hours are 00-23 and minutes 00-59",
            ),
        ],
    ),
    (
        "empty-selection",
        HEAD
        + "spec:\n  namespace: apps\n  storageClass: fast\n---\n"
        + HEAD
        + "spec:\n  namespace: apps\n  storageClass: fast\n  virtualMachines: []\n",
        [
            (
                5,
                "spec",
                "the plan selects no VMs",
                "list VMs by name in spec.virtualMachines and/or by label in spec.selector",
            ),
            (
                14,
                "spec.virtualMachines",
                "the plan selects no VMs",
                "list VMs by name in spec.virtualMachines and/or by label in spec.selector",
            ),
        ],
    ),
    (
        "no-target-class",
        HEAD + "spec:\n  namespace: apps\n  selector: {matchLabels: {tier: gold}}\n"
        "  virtualMachines:\n    - name: vm-a\n    - name: vm-b\n"
        "      volumes: [{name: root, storageClass: fast}, {name: data, volumeMode: Block}]\n",
        [
            (
                6,
                "spec.selector",
                "the VMs matched by spec.selector have no target StorageClass",
                "set spec.storageClass (the target for every disk of the selected VMs)",
            ),
            (
                8,
                "spec.virtualMachines[0]",
                "VM 'vm-a' has no target StorageClass",
                "set spec.storageClass, or list the VM's volumes with a storageClass each",
            ),
            (
                10,
                "spec.virtualMachines[1].volumes[1]",
                "volume 'data' of VM 'vm-b' has no target StorageClass",
                "give the volume a storageClass, or set spec.storageClass",
            ),
        ],
    ),
    (
        "duplicates-within-a-plan",
        HEAD + "spec:\n  namespace: apps\n  storageClass: fast\n  virtualMachines:\n"
        "    - name: vm-a\n      volumes:\n        - name: root\n        - name: root\n"
        "          volumeMode: Sideways\n    - name: vm-a\n",
        [
            (
                11,
                "spec.virtualMachines[0].volumes[1]",
                "volume 'root' is listed twice in VM 'vm-a' (first on line 10)",
                "merge the two entries into one",
            ),
            (
                12,
                "spec.virtualMachines[0].volumes[1].volumeMode",
                "invalid volumeMode 'Sideways'",
                "one of: Auto, Block, Filesystem",
            ),
            (
                13,
                "spec.virtualMachines[1]",
                "VM 'vm-a' is listed twice in this plan (first on line 8)",
                "merge the two entries into one",
            ),
        ],
    ),
    (
        "bad-selectors",
        HEAD + VMS + "  selector:\n    matchLabels: {tier: 1, 'bad key!': x}\n"
        "    matchExpressions:\n      - {key: env, operator: in, values: [a]}\n"
        "      - {key: env, operator: In}\n      - {key: env, operator: Exists, values: [a]}\n",
        [
            (
                9,
                "spec.selector.matchLabels.bad key!",
                "invalid label key 'bad key!'",
                "a label key is an optional DNS subdomain prefix and '/', then at most 63 "
                "letters, digits, '-', '_' or '.', starting and ending with a letter or digit",
            ),
            (
                9,
                "spec.selector.matchLabels.tier",
                "expected a string, got an integer (1)",
                'to use it as text, put it in quotes: "1"',
            ),
            (
                11,
                "spec.selector.matchExpressions[0].operator",
                "invalid operator 'in'",
                "did you mean 'In'? one of: In, NotIn, Exists, DoesNotExist",
            ),
            (
                12,
                "spec.selector.matchExpressions[1].values",
                "operator In needs values",
                "list at least one value: values: [a, b]",
            ),
            (
                13,
                "spec.selector.matchExpressions[2].values",
                "operator Exists takes no values",
                "remove values, or use In / NotIn",
            ),
        ],
    ),
    (
        "kmc-mistakes",
        "apiVersion: migrations.kubevirt.io/v1alpha1\nkind: VirtualMachineStorageMigrationPlan\n"
        "metadata: {name: k}\nspec:\n  retentionPolicy: delete\n  virtualMachines:\n"
        "    - name: vm-a\n      targetMigrationPVCs:\n        - volumeName: root\n"
        "        - volumeName: data\n          destinationPVC: {storageClass: fast,"
        " accessModes: [ReadWriteOncePod], volumeMode: block}\n"
        "    - name: vm-b\n      targetMigrationPVCs: []\n",
        [
            (
                3,
                "metadata.namespace",
                "missing required field 'namespace'",
                "a VirtualMachineStorageMigrationPlan acts in one namespace: set "
                "metadata.namespace, or pass -n/--namespace NAMESPACE (as with kubectl, a "
                "document without a namespace lands in the given one, else in the kubeconfig "
                "context's namespace)",
            ),
            (
                5,
                "spec.retentionPolicy",
                "invalid retentionPolicy 'delete'",
                "did you mean 'deleteSource'? one of: keepSource, deleteSource",
            ),
            (
                9,
                "spec.virtualMachines[0].targetMigrationPVCs[0].destinationPVC",
                "missing required field 'destinationPVC'",
                "describe the target: destinationPVC: {storageClassName: ...}",
            ),
            (
                11,
                "spec.virtualMachines[0].targetMigrationPVCs[1].destinationPVC.accessModes[0]",
                "invalid access mode 'ReadWriteOncePod'",
                "did you mean 'ReadWriteOnce'? one of: ReadWriteOnce, ReadOnlyMany, "
                "ReadWriteMany, Auto",
            ),
            (
                11,
                "spec.virtualMachines[0].targetMigrationPVCs[1].destinationPVC.storageClass",
                "unknown field 'storageClass'",
                "did you mean 'storageClassName'? fields here: accessModes, name, "
                "storageClassName, volumeMode",
            ),
            (
                11,
                "spec.virtualMachines[0].targetMigrationPVCs[1].destinationPVC.volumeMode",
                "invalid volumeMode 'block'",
                "did you mean 'Block'? one of: Filesystem, Block, Auto",
            ),
            (
                13,
                "spec.virtualMachines[1].targetMigrationPVCs",
                "VM 'vm-b' lists no volumes to move",
                "list them: targetMigrationPVCs: [{volumeName: <volume>, destinationPVC: {...}}]",
            ),
        ],
    ),
    (
        "kmc-duplicates",
        KMC_HEAD + "spec:\n  virtualMachines:\n    - name: vm-a\n      targetMigrationPVCs:\n"
        "        - {volumeName: root, destinationPVC: {}}\n"
        "        - {volumeName: root, destinationPVC: {}}\n"
        "    - name: vm-a\n      targetMigrationPVCs: [{volumeName: x, destinationPVC: {}}]\n",
        [
            (
                9,
                "spec.virtualMachines[0].targetMigrationPVCs[1]",
                "volume 'root' is listed twice in VM 'vm-a' (first on line 8)",
                "merge the two entries into one",
            ),
            (
                10,
                "spec.virtualMachines[1]",
                "VM 'vm-a' is listed twice in this plan (first on line 6)",
                "merge the two entries into one",
            ),
        ],
    ),
    (
        "kmc-multi-mistakes",
        "apiVersion: migrations.kubevirt.io/v1alpha1\n"
        "kind: MultiNamespaceVirtualMachineStorageMigrationPlan\nmetadata: {name: m}\n"
        "spec:\n  namespaces:\n    - name: dev\n      virtualMachines: []\n"
        "    - name: dev\n      virtualMachines: [{name: vm-a, targetMigrationPVCs: "
        "[{volumeName: r, destinationPVC: {}}]}]\n    - virtualMachines: []\n",
        [
            (
                7,
                "spec.namespaces[0].virtualMachines",
                "the plan selects no VMs",
                "list them: virtualMachines: [{name: <vm>, targetMigrationPVCs: [...]}]",
            ),
            (
                8,
                "spec.namespaces[1]",
                "namespace 'dev' is listed twice in this plan (first on line 6)",
                "merge the two entries into one",
            ),
            (
                10,
                "spec.namespaces[2].name",
                "missing required field 'name'",
                "the namespace's name",
            ),
        ],
    ),
]


@pytest.mark.parametrize(
    ("text", "expected"), [pytest.param(text, rows, id=name) for name, text, rows in ERRORS]
)
def test_each_mistake_is_reported_where_it_is_with_a_hint(
    tmp_path: Path, text: str, expected: list[Row]
) -> None:
    path = write(tmp_path, "plan.yaml", text)
    assert rows(problems([path]), path) == expected


def test_every_problem_in_a_file_is_reported_in_one_run(tmp_path: Path) -> None:
    text = "".join(t + ("" if t.endswith("\n") else "\n") + "---\n" for _, t, _ in ERRORS[2:])
    path = write(tmp_path, "all.yaml", text)
    expected = sum(len(r) for _, _, r in ERRORS[2:])
    assert len(problems([path])) == expected


def test_problem_lines_point_at_the_offending_field(tmp_path: Path) -> None:
    """Each line marked ``# <- path`` must be reported at exactly that line and path."""
    text = """
    apiVersion: vmstorage.dev/v1alpha1
    kind: StoragePlan
    metadata:
      name: lines
      labels:
        team: 7                                   # <- metadata.labels.team
    spec:
      namespace: apps
      storageClass: fast
      volumeMode:                                 # (a mapping value on the next line)
        Sideways                                  # <- spec.volumeMode
      accessModes:
        - ReadWriteOnce
        - ReadWriteSometimes                      # <- spec.accessModes[1]
      virtualMachines:
        - name: vm-a
          volumes:
            - name: root
              storageClass: Fast              # <- spec.virtualMachines[0].volumes[0].storageClass
            -
              name: data
              targetName: data_new                # <- spec.virtualMachines[0].volumes[1].targetName
              colour: blue                        # <- spec.virtualMachines[0].volumes[1].colour
        - name: vm-b
          vollumes: []                            # <- spec.virtualMachines[1].vollumes
      selector:
        matchExpressions:
          - key: tier
            operator: Within                      # <- spec.selector.matchExpressions[0].operator
            values: [gold]
      mode: >-
        Auto-ish                                  # <- spec.mode
      allowStop: maybe                            # <- spec.allowStop
      retention: |
        Keep                                      # <- spec.retention
      window:
        start: "Sat 01:00"
        duration: 4h
        timeZone: Mars/Olympus                    # <- spec.window.timeZone
      timeout: soon                               # <- spec.timeout
    """
    path = write(tmp_path, "lines.yaml", text)
    marked = {}
    for number, line in enumerate(path.read_text().splitlines(), start=1):
        if "# <- " in line:
            marked[line.split("# <- ")[1].strip()] = number
    found = {(line, field) for line, field, _, _ in rows(problems([path]), path)}
    # `mode: >-` and `retention: |` start their value on the line after the key
    marked["spec.mode"] -= 1
    marked["spec.retention"] -= 1
    assert found == {(line, field) for field, line in marked.items()}


def test_refuses_plans_outside_the_allowed_namespaces(tmp_path: Path) -> None:
    path = write(tmp_path, "p.yaml", MINIMAL + "---\n" + KMC.replace("name: vm-a", "name: vm-b"))
    found = rows(problems([path], allowed_namespaces=frozenset({"prod", "dev"})), path)
    assert found == [
        (
            6,
            "spec.namespace",
            "namespace 'apps' is not allowed here",
            "this run may act only in: dev, prod",
        ),
        (
            16,
            "metadata.namespace",
            "namespace 'apps' is not allowed here",
            "this run may act only in: dev, prod",
        ),
    ]
    assert load_plans([path], allowed_namespaces=frozenset({"apps"}))
    none = rows(problems([path], allowed_namespaces=frozenset()), path)
    assert {hint for *_, hint in none} == {"this run may act in no namespace"}


def test_kmc_multi_namespace_plans_obey_allowed_namespaces(tmp_path: Path) -> None:
    path = write(tmp_path, "m.yaml", KMC_MULTI)
    found = rows(problems([path], allowed_namespaces=frozenset({"dev"})), path)
    assert found == [
        (
            13,
            "spec.namespaces[1].name",
            "namespace 'prod' is not allowed here",
            "this run may act only in: dev",
        )
    ]


def test_kmc_top_level_delete_source_applies_to_every_namespace(tmp_path: Path) -> None:
    text = KMC_MULTI.replace(
        "spec:\n  namespaces:", "spec:\n  retentionPolicy: deleteSource\n  namespaces:"
    )
    plans = load_plans([write(tmp_path, "m.yaml", text)])
    assert [(p.name, p.retention) for p in plans] == [
        ("multi-dev", Retention.DELETE),
        ("multi-prod", Retention.DELETE),
    ]


def test_kmc_multi_namespace_child_names_are_shortened_as_kmc_does(tmp_path: Path) -> None:
    # Since kubevirt-migration-controller 6eae519 (2026-02) a long <plan>-<namespace> is cut
    # and hashed (library-go naming.GetName), not refused: tests/unit/test_kmc.py has the
    # upstream test vector and the one case that still breaks the name.
    text = KMC_MULTI.replace("name: multi", "name: " + "m" * 250)
    plans = load_plans([write(tmp_path, "m.yaml", text)])
    assert [p.namespace for p in plans] == ["dev", "prod"]
    assert re.fullmatch("m{240}-[0-9a-f]{8}-dev", plans[0].name), plans[0].name
    assert re.fullmatch("m{239}-[0-9a-f]{8}-prod", plans[1].name), plans[1].name


# --------------------------------------------------------------------------------------------
# Across plans and files
# --------------------------------------------------------------------------------------------


def _plan(name: str, vms: str, extra: str = "", namespace: str = "apps") -> str:
    return (
        f"apiVersion: vmstorage.dev/v1alpha1\nkind: StoragePlan\nmetadata: {{name: {name}}}\n"
        f"spec:\n  namespace: {namespace}\n  virtualMachines:\n{vms}{extra}"
    )


VM_ROOT_FAST = "    - name: vm-a\n      volumes: [{name: root, storageClass: fast}]\n"
VM_ROOT_SLOW = "    - name: vm-a\n      volumes: [{name: root, storageClass: slow}]\n"
VOLUME_HINT = (
    "a volume can have only one target: remove the VM from one plan, or make the plans agree"
)


def test_two_files_that_want_different_classes_for_a_volume_conflict(tmp_path: Path) -> None:
    first = write(tmp_path, "a/first.yaml", _plan("one", VM_ROOT_FAST))
    second = write(tmp_path, "b/second.yaml", _plan("two", VM_ROOT_SLOW))
    (problem,) = problems([tmp_path])
    assert problem == Problem(
        Source(str(second), 8, "spec.virtualMachines[0].volumes[0]"),
        f"volume 'root' of VM apps/vm-a gets different targets from plan 'one' ({first}:8) and "
        "plan 'two': storageClass 'fast' vs 'slow'",
        VOLUME_HINT,
    )


def test_a_plan_default_class_conflicts_with_an_explicit_volume(tmp_path: Path) -> None:
    first = write(tmp_path, "a.yaml", _plan("one", "    - name: vm-a\n", "  storageClass: slow\n"))
    second = write(tmp_path, "b.yaml", _plan("two", VM_ROOT_FAST, "  storageClass: fast\n"))
    assert rows(problems([first, second]), second) == [
        (
            7,
            "spec.virtualMachines[0]",
            f"the other volumes of VM apps/vm-a get different targets from plan 'one' "
            f"({first}:7) and plan 'two': storageClass 'slow' vs 'fast'",
            VOLUME_HINT,
        ),
        (
            8,
            "spec.virtualMachines[0].volumes[0]",
            f"volume 'root' of VM apps/vm-a gets different targets from plan 'one' ({first}:7) "
            "and plan 'two': storageClass 'slow' vs 'fast'",
            VOLUME_HINT,
        ),
    ]


def test_plans_that_move_a_vm_differently_conflict(tmp_path: Path) -> None:
    first = write(tmp_path, "a.yaml", _plan("one", VM_ROOT_FAST, "  mode: Live\n"))
    second = write(
        tmp_path,
        "b.yaml",
        _plan("two", VM_ROOT_FAST, "  mode: Offline\n  allowStop: true\n  timeout: 30m\n"),
    )
    assert rows(problems([first, second]), second) == [
        (
            7,
            "spec.virtualMachines[0]",
            f"VM apps/vm-a is in plan 'one' ({first}:7) and plan 'two' with different settings: "
            "mode 'Live' vs 'Offline', allowStop false vs true, timeout (unset) vs 30m",
            "a VM moves as a whole under one set of settings: make the plans agree, or keep the "
            "VM in one plan",
        )
    ]


def test_target_names_conflict_when_they_differ_or_collide(tmp_path: Path) -> None:
    named = "    - name: vm-a\n      volumes: [{name: root, storageClass: fast, targetName: t1}]\n"
    other = "    - name: vm-b\n      volumes: [{name: root, storageClass: fast, targetName: t1}]\n"
    first = write(tmp_path, "a.yaml", _plan("one", named))
    second = write(tmp_path, "b.yaml", _plan("two", VM_ROOT_FAST + other))
    assert rows(problems([first, second]), second) == [
        (
            8,
            "spec.virtualMachines[0].volumes[0]",
            f"volume 'root' of VM apps/vm-a gets different targets from plan 'one' ({first}:8) "
            "and plan 'two': targetName 't1' vs (unset)",
            VOLUME_HINT,
        ),
        (
            10,
            "spec.virtualMachines[1].volumes[0]",
            f"targetName 't1' is used for volume 'root' of VM 'vm-b' and for volume 'root' of VM "
            f"'vm-a' (plan 'one', {first}:8)",
            "target claim names must be unique in namespace 'apps'",
        ),
    ]


def test_plans_that_agree_may_share_a_vm_and_other_namespaces_do_not_interact(
    tmp_path: Path,
) -> None:
    write(tmp_path, "a.yaml", _plan("one", VM_ROOT_FAST))
    write(tmp_path, "b.yaml", _plan("two", VM_ROOT_FAST))
    write(tmp_path, "c.yaml", _plan("one", VM_ROOT_SLOW, namespace="other"))
    plans = load_plans([tmp_path])
    assert [(p.namespace, p.name) for p in plans] == [
        ("apps", "one"),
        ("apps", "two"),
        ("other", "one"),
    ]


def test_duplicate_plan_names_in_a_namespace_name_both_places(tmp_path: Path) -> None:
    first = write(tmp_path, "a.yaml", _plan("same", VM_ROOT_FAST))
    second = write(tmp_path, "b.yaml", _plan("same", "    - name: vm-b\n", "  storageClass: x\n"))
    assert rows(problems([first, second]), second) == [
        (
            3,
            "metadata.name",
            f"plan 'same' for namespace 'apps' is defined twice (first at {first}:3)",
            "plan names must be unique within a namespace: rename one",
        )
    ]


def test_kmc_default_class_differs_from_a_named_class(tmp_path: Path) -> None:
    kmc = write(
        tmp_path,
        "a.yaml",
        KMC_HEAD + "spec:\n  virtualMachines:\n    - name: vm-a\n"
        "      targetMigrationPVCs: [{volumeName: root, destinationPVC: {}}]\n",
    )
    native = write(tmp_path, "b.yaml", _plan("native", VM_ROOT_FAST))
    (problem,) = problems([kmc, native])
    assert problem.message.endswith("storageClass '<default>' vs 'fast'")


# --------------------------------------------------------------------------------------------
# Files and directories
# --------------------------------------------------------------------------------------------


def test_directories_are_searched_recursively_in_sorted_order(tmp_path: Path) -> None:
    write(tmp_path, "b/z.yaml", _plan("z", VM_ROOT_FAST, namespace="n1"))
    write(tmp_path, "b/a/deep/x.YML", _plan("x", VM_ROOT_FAST, namespace="n2"))
    write(tmp_path, "a.yml", _plan("a", VM_ROOT_FAST, namespace="n3"))
    write(tmp_path, ".git/hidden.yaml", "not: a plan\n")
    write(tmp_path, "b/.hidden.yaml", "not: a plan\n")
    write(tmp_path, "README.md", "# plans\n")
    write(tmp_path, "b/notes.txt", "not yaml\n")
    assert plan_files([tmp_path]) == [
        tmp_path / "a.yml",
        tmp_path / "b/a/deep/x.YML",
        tmp_path / "b/z.yaml",
    ]
    assert [p.name for p in load_plans([tmp_path])] == ["z", "x", "a"]


def test_files_named_twice_are_read_once_and_any_extension_is_accepted(tmp_path: Path) -> None:
    plan = write(tmp_path, "plan.txt", MINIMAL)
    assert plan_files([plan, tmp_path / "." / "plan.txt"]) == [plan]
    assert len(load_plans([plan, plan])) == 1


def test_a_symlinked_checkout_directory_is_followed(tmp_path: Path) -> None:
    write(tmp_path, ".worktrees/abc123/plans/p.yaml", MINIMAL)
    (tmp_path / "repo").symlink_to(tmp_path / ".worktrees/abc123")  # git-sync's layout
    assert [p.name for p in load_plans([tmp_path / "repo"])] == ["minimal"]


def test_missing_paths_and_empty_directories_are_problems(tmp_path: Path) -> None:
    (tmp_path / "empty").mkdir()
    write(tmp_path, "empty/.git/config.yaml", "x: 1\n")
    with pytest.raises(PlanError) as caught:
        plan_files([tmp_path / "nope.yaml", tmp_path / "empty"])
    assert list(caught.value.problems) == [
        Problem(None, f"{tmp_path / 'nope.yaml'}: no such file or directory", "check the path"),
        Problem(
            None,
            f"{tmp_path / 'empty'}: no *.yaml or *.yml files in this directory",
            "point at the directory that holds the plan files (hidden directories such as .git "
            "are skipped)",
        ),
    ]


def test_unreadable_special_and_binary_files_are_problems(tmp_path: Path) -> None:
    write(tmp_path, "good.yaml", MINIMAL)
    (tmp_path / "dangling.yaml").symlink_to(tmp_path / "gone.yaml")
    (tmp_path / "image.yaml").write_bytes(b"apiVersion: v1\n\x89PNG\r\n\x1a\n\x00\xff\xfe")
    (tmp_path / "nul.yaml").write_bytes(b"apiVersion: v1\nkind: \x00\n")
    fifo = tmp_path / "pipe"
    os.mkfifo(fifo)
    found = problems([tmp_path, fifo])
    assert found == [
        Problem(None, f"{tmp_path / 'dangling.yaml'}: cannot read: No such file or directory"),
        Problem(None, f"{fifo}: not a regular file or directory"),
        Problem(
            Source(str(tmp_path / "image.yaml"), 2),
            "not UTF-8 text (byte 0x89 at offset 15)",
            "plan files are UTF-8 YAML; is a binary file in the plans directory?",
        ),
        Problem(
            Source(str(tmp_path / "nul.yaml"), 2),
            "invalid YAML: unacceptable character #x0000",
            "plan files must be printable UTF-8 text; is this a binary file?",
        ),
    ]


@pytest.mark.parametrize(
    "content",
    [
        pytest.param(b"\x00\x01\x02\x03" * 64, id="binary-junk"),
        pytest.param(b"[" * 5000, id="deep-nesting"),
        pytest.param(b"{", id="unclosed-flow"),
        pytest.param(b"*undefined", id="unknown-alias"),
        pytest.param(b"!!python/object/apply:os.system ['true']", id="python-tag"),
        pytest.param(b"apiVersion: !!binary aGVsbG8=\nkind: StoragePlan\n", id="binary-tag"),
        pytest.param(b"apiVersion: [1]\nkind: {a: b}\n", id="non-string-routing"),
        pytest.param(b"? [a, b]\n: c\n", id="complex-key"),
        pytest.param(
            HEAD.encode() + b"spec: &s\n  namespace: apps\n  <<: *s\n", id="merge-into-itself"
        ),
        pytest.param(
            HEAD.encode() + b"spec:\n  virtualMachines: &v [*v]\n", id="self-referencing-list"
        ),
        pytest.param(HEAD.encode() + b"spec:\n  <<: [1, 2]\n", id="merge-of-scalars"),
        pytest.param(b"\xef\xbb\xbf" + HEAD.encode() + b"spec: 3\n", id="utf8-bom"),
        pytest.param(b"apiVersion: v1\nkind: List\nitems: [{kind: List}]\n", id="nested-list"),
        pytest.param(b"\t- tab", id="tab-indent"),
    ],
)
def test_hostile_input_is_a_plan_error_never_a_traceback(tmp_path: Path, content: bytes) -> None:
    path = tmp_path / "x.yaml"
    path.write_bytes(content)
    found = problems([path])
    assert found
    assert all("internal error" not in p.message for p in found), found


# --------------------------------------------------------------------------------------------
# Durations and windows
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("4h", timedelta(hours=4)),
        ("90m", timedelta(minutes=90)),
        ("1h30m", timedelta(hours=1, minutes=30)),
        ("2d", timedelta(days=2)),
        ("45s", timedelta(seconds=45)),
        ("1d2h3m4s", timedelta(days=1, hours=2, minutes=3, seconds=4)),
        (" 15m ", timedelta(minutes=15)),
    ],
)
def test_parse_duration_reads_go_style_durations(text: str, expected: timedelta) -> None:
    assert parse_duration(text) == expected
    assert parse_duration(format_duration(expected)) == expected


@pytest.mark.parametrize(
    ("text", "reason"),
    [
        ("", "not a duration"),
        ("4", "a number needs a unit"),
        ("1.5h", "not a duration"),
        ("-1h", "not a duration"),
        ("4 h", "not a duration"),
        ("4hours", "not a duration"),
        ("0m", "must be longer than zero"),
        ("0h0m", "must be longer than zero"),
    ],
)
def test_parse_duration_rejects_anything_else(text: str, reason: str) -> None:
    with pytest.raises(SpecError) as caught:
        parse_duration(text)
    assert str(caught.value) == f"invalid duration '{text}': {reason}"
    assert caught.value.hint == DURATION_HINT


@pytest.mark.parametrize(
    ("text", "days", "clock"),
    [
        ("01:00", set(), time(1, 0)),
        ("1:05", set(), time(1, 5)),
        ("Sat 01:00", {6}, time(1, 0)),
        ("Mon-Fri 22:00", {1, 2, 3, 4, 5}, time(22, 0)),
        ("Sat,Sun 01:00", {6, 7}, time(1, 0)),
        ("Sat, Sun 01:00", {6, 7}, time(1, 0)),
        ("Fri-Mon 23:30", {5, 6, 7, 1}, time(23, 30)),
        ("mon-wed,FRI 00:00", {1, 2, 3, 5}, time(0, 0)),
        ("Saturday 23:59", {6}, time(23, 59)),
    ],
)
def test_window_start_grammar(text: str, days: set[int], clock: time) -> None:
    assert parse_window_start(text) == (frozenset(days), clock)


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("Sat", "invalid window start 'Sat'"),
        ("Sat 1am", "invalid window start 'Sat 1am'"),
        ("Sat Sun 01:00", "invalid window start 'Sat Sun 01:00'"),
        ("12:60", "invalid window start '12:60': 12:60 is not a time of day"),
        ("Someday 01:00", "invalid window start 'Someday 01:00': unknown day 'Someday'"),
    ],
)
def test_window_start_errors(text: str, message: str) -> None:
    with pytest.raises(SpecError, match=f"^{re.escape(message)}$"):
        parse_window_start(text)


def test_parse_window_builds_a_window() -> None:
    assert parse_window("Sat 01:00", "4h", "Europe/Berlin") == Window(
        time(1, 0), timedelta(hours=4), "Europe/Berlin", frozenset({6})
    )
    assert parse_window("02:00", timedelta(minutes=30)).time_zone == "UTC"


@pytest.mark.parametrize(
    ("duration", "zone", "message"),
    [
        ("7d", "UTC", "window duration 7d is a week or longer"),
        (timedelta(0), "UTC", "invalid window duration '0:00:00': must be longer than zero"),
        ("4h", "Nowhere/City", "unknown time zone 'Nowhere/City'"),
        ("4h", "", "unknown time zone ''"),
        ("4h", "../../etc/passwd", "unknown time zone '../../etc/passwd'"),
        ("4h", "Europe", "unknown time zone 'Europe'"),
    ],
)
def test_parse_window_validates_every_part(
    duration: str | timedelta, zone: str, message: str
) -> None:
    with pytest.raises(SpecError, match=f"^{re.escape(message)}$"):
        parse_window("Sat 01:00", duration, zone)


BERLIN = ZoneInfo("Europe/Berlin")
DAILY_22_4H = Window(time(22, 0), timedelta(hours=4))
SAT_23_3H = Window(time(23, 0), timedelta(hours=3), days=frozenset({6}))
WEEKDAYS_BERLIN = Window(
    time(22, 0), timedelta(hours=1), "Europe/Berlin", frozenset({1, 2, 3, 4, 5})
)
BERLIN_01_2H = Window(time(1, 0), timedelta(hours=2), "Europe/Berlin")
BERLIN_0230_1H = Window(time(2, 30), timedelta(hours=1), "Europe/Berlin")


def utc(year: int, month: int, day: int, hour: int, minute: int) -> datetime:
    return datetime(year, month, day, hour, minute, tzinfo=UTC)


@pytest.mark.parametrize(
    ("window", "now", "is_open"),
    [
        # 2026-01-03 is a Saturday; 2026-03-29 and 2026-10-25 are Berlin's DST changes.
        pytest.param(DAILY_22_4H, utc(2026, 1, 5, 21, 59), False, id="just-before"),
        pytest.param(DAILY_22_4H, utc(2026, 1, 5, 22, 0), True, id="opens-at-start"),
        pytest.param(DAILY_22_4H, utc(2026, 1, 6, 1, 59), True, id="wraps-midnight"),
        pytest.param(DAILY_22_4H, utc(2026, 1, 6, 2, 0), False, id="closes-at-end"),
        pytest.param(SAT_23_3H, utc(2026, 1, 4, 1, 30), True, id="saturday-window-open-on-sunday"),
        pytest.param(SAT_23_3H, utc(2026, 1, 5, 1, 30), False, id="not-on-monday"),
        pytest.param(SAT_23_3H, utc(2026, 1, 3, 1, 30), False, id="not-before-it-opens"),
        # 22:00 Berlin in winter is 21:00 UTC; days are Berlin's, not UTC's.
        pytest.param(WEEKDAYS_BERLIN, utc(2026, 1, 9, 21, 30), True, id="friday-in-berlin"),
        pytest.param(WEEKDAYS_BERLIN, utc(2026, 1, 10, 21, 30), False, id="saturday-in-berlin"),
        pytest.param(WEEKDAYS_BERLIN, utc(2026, 7, 10, 20, 30), True, id="summer-time-offset"),
        # Spring forward: 01:00 CET = 00:00 UTC; two elapsed hours end at 02:00 UTC (04:00 CEST).
        pytest.param(BERLIN_01_2H, utc(2026, 3, 29, 1, 59), True, id="dst-spring-elapsed"),
        pytest.param(BERLIN_01_2H, utc(2026, 3, 29, 2, 0), False, id="dst-spring-closes"),
        # 02:30 does not exist on 2026-03-29: the window opens at 03:30 CEST (01:30 UTC).
        pytest.param(BERLIN_0230_1H, utc(2026, 3, 29, 1, 29), False, id="dst-gap-not-yet"),
        pytest.param(BERLIN_0230_1H, utc(2026, 3, 29, 1, 30), True, id="dst-gap-opens-later"),
        # Fall back: 02:30 happens twice on 2026-10-25; the first (00:30 UTC) opens it.
        pytest.param(BERLIN_0230_1H, utc(2026, 10, 25, 0, 30), True, id="dst-fold-first"),
        pytest.param(BERLIN_0230_1H, utc(2026, 10, 25, 1, 30), False, id="dst-fold-one-hour"),
    ],
)
def test_window_open(window: Window, now: datetime, is_open: bool) -> None:
    assert window_open(window, now) is is_open
    assert window_open(window, now.astimezone(BERLIN)) is is_open  # any aware zone works


@pytest.mark.parametrize(
    ("window", "now", "expected"),
    [
        pytest.param(SAT_23_3H, utc(2026, 1, 7, 12, 0), utc(2026, 1, 10, 23, 0), id="later-week"),
        pytest.param(SAT_23_3H, utc(2026, 1, 10, 23, 0), utc(2026, 1, 10, 23, 0), id="at-start"),
        pytest.param(SAT_23_3H, utc(2026, 1, 10, 23, 1), utc(2026, 1, 17, 23, 0), id="while-open"),
        pytest.param(DAILY_22_4H, utc(2026, 1, 5, 23, 0), utc(2026, 1, 6, 22, 0), id="daily"),
        pytest.param(
            WEEKDAYS_BERLIN, utc(2026, 1, 9, 22, 0), utc(2026, 1, 12, 21, 0), id="skips-weekend"
        ),
        pytest.param(
            BERLIN_0230_1H, utc(2026, 3, 28, 12, 0), utc(2026, 3, 29, 1, 30), id="dst-gap"
        ),
    ],
)
def test_next_window_start(window: Window, now: datetime, expected: datetime) -> None:
    start = next_window_start(window, now)
    assert start == expected
    assert start.tzinfo == ZoneInfo(window.time_zone)


def test_window_closes_at_and_format() -> None:
    assert window_closes_at(DAILY_22_4H, utc(2026, 1, 6, 1, 0)) == utc(2026, 1, 6, 2, 0)
    assert window_closes_at(DAILY_22_4H, utc(2026, 1, 6, 3, 0)) is None
    assert format_window(WEEKDAYS_BERLIN) == "Mon,Tue,Wed,Thu,Fri 22:00 for 1h (Europe/Berlin)"
    assert format_window(DAILY_22_4H) == "daily 22:00 for 4h (UTC)"


def test_window_functions_refuse_naive_datetimes() -> None:
    with pytest.raises(ValueError, match="timezone-aware"):
        window_open(DAILY_22_4H, datetime(2026, 1, 1, 12, 0))
    with pytest.raises(ValueError, match="timezone-aware"):
        next_window_start(DAILY_22_4H, datetime(2026, 1, 1, 12, 0))


# --------------------------------------------------------------------------------------------
# The shipped examples and the format reference
# --------------------------------------------------------------------------------------------


def test_the_seed_plan_moves_the_fedora_disk_to_ceph() -> None:
    (plan,) = load_plans([REPO / "plans/seed/fedora-to-ceph.yaml"])
    assert (plan.name, plan.namespace, plan.storage_class) == (
        "fedora-to-ceph",
        "mig-vm",
        "ceph-rbd",
    )
    ((vm),) = plan.virtual_machines
    ((volume),) = vm.volumes
    assert (vm.name, volume.name, volume.storage_class) == (
        "vm-fedora",
        "datavolumedisk1",
        "ceph-rbd",
    )
    assert (plan.mode, plan.allow_stop, plan.retention) == (Mode.AUTO, False, Retention.KEEP)


def test_the_seed_archive_plan_selects_the_stopped_vm_by_label() -> None:
    (plan,) = load_plans([REPO / "plans/seed/archive-to-ceph.yaml"])
    assert (plan.name, plan.namespace, plan.storage_class) == (
        "archive-to-ceph",
        "mig-vm",
        "ceph-rbd",
    )
    assert plan.virtual_machines == ()
    assert plan.selector is not None
    assert plan.selector.match_labels == (("tier", "archive"),)
    assert (plan.mode, plan.allow_stop, plan.retention) == (Mode.AUTO, False, Retention.KEEP)


def test_every_example_in_plans_validates_alone_and_together() -> None:
    files = plan_files([REPO / "plans"])
    assert {f.relative_to(REPO).as_posix() for f in files} >= {
        "plans/seed/fedora-to-ceph.yaml",
        "plans/seed/archive-to-ceph.yaml",
        "plans/examples/gold-tier.yaml",
        "plans/examples/kmc-plan.yaml",
        "plans/examples/multi-namespace.yaml",
    }
    for file in files:
        assert load_plans([file]), file
    plans = load_plans([REPO / "plans"])
    assert {(p.namespace, p.name, p.origin_kind) for p in plans} == {
        ("mig-vm", "fedora-to-ceph", "StoragePlan"),
        ("mig-vm", "archive-to-ceph", "StoragePlan"),
        ("prod", "gold-tier", "StoragePlan"),
        ("apps", "rhel-to-ceph", "VirtualMachineStorageMigrationPlan"),
        ("dev", "retire-nfs-dev", "MultiNamespaceVirtualMachineStorageMigrationPlan"),
        ("staging", "retire-nfs-staging", "MultiNamespaceVirtualMachineStorageMigrationPlan"),
    }
    gold = next(p for p in plans if p.name == "gold-tier")
    assert gold.window == Window(time(1, 0), timedelta(hours=4), "Europe/Berlin", frozenset({6, 7}))
    assert (gold.allow_stop, gold.retention) == (True, Retention.DELETE)
    dev = next(p for p in plans if p.name == "retire-nfs-dev")
    assert dev.virtual_machines[0].volumes[0].storage_class == DEFAULT_CLASS


def test_every_complete_plan_in_the_format_reference_validates() -> None:
    text = (REPO / "docs/plans.md").read_text()
    blocks = re.findall(r"```yaml\n(.*?)```", text, flags=re.DOTALL)
    complete = [b for b in blocks if b.startswith("apiVersion:")]
    assert len(complete) >= 4
    for index, block in enumerate(complete):
        assert parse_plans(block, f"docs/plans.md block {index}")
