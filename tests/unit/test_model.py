"""The model's single lists: every plan setting is compared, by both the cross-file check and
the diff, so a field added to ``Plan`` cannot let conflicting plans through silently."""

from __future__ import annotations

from dataclasses import fields

from reconciler.model.plan import PLAN_SETTINGS, TARGET_FIELDS, Plan, field_list
from reconciler.model.verdict import DesiredVolume
from reconciler.plans.crosscheck import _Target

# What names or selects a plan rather than how it moves a VM: never compared between plans.
IDENTITY = {"name", "namespace", "source", "virtual_machines", "selector", "origin_kind"}


def test_every_plan_field_is_identity_a_per_vm_setting_or_a_target_default() -> None:
    plan_fields = {f.name for f in fields(Plan)}
    target_defaults = set(TARGET_FIELDS) - {"target_name"}  # targetName is per volume only
    assert plan_fields == IDENTITY | set(PLAN_SETTINGS) | target_defaults
    assert not IDENTITY & set(PLAN_SETTINGS)


def test_both_checks_compare_exactly_the_target_fields() -> None:
    assert tuple(f.name for f in fields(_Target)) == tuple(TARGET_FIELDS)
    assert set(TARGET_FIELDS) <= {f.name for f in fields(DesiredVolume)}


def test_field_list_names_the_fields_as_users_write_them() -> None:
    assert field_list(PLAN_SETTINGS) == (
        "mode, allowStop, retention, window, timeout or allowGitOpsManaged"
    )
