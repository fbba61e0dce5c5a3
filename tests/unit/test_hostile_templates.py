"""Hostile templates (issue 7, item 7): a user template cannot hang the run or exhaust memory.
Render time and output size are bounded, huge powers and products are refused (also while
Jinja compiles), regex_replace has a timeout, rendered aliases are refused, and a live
DataVolume's source must be exactly blank. Issue 14, item 9: an override that renders more than
the move needs (a VM patch op or a DataVolume field out of the move's scope) is refused."""

from __future__ import annotations

from pathlib import Path

import pytest
from jinja2.exceptions import SecurityError

from reconciler.model.errors import TemplateError
from reconciler.render import bounds
from reconciler.render.sandbox import TARGET_NAME, TemplateSet, load_templates, render_text
from tests.unit.test_render import FEDORA, FEDORA_MOVE, ROOT, render, render_case, scene

CONTEXT = {"claim": "disk", "namespace": "ns", "vm": "vm", "volume": "v", "storage_class": "sc"}


def override(tmp_path: Path, name: str, text: str) -> TemplateSet:
    (tmp_path / name).write_text(text)
    return load_templates(tmp_path)


def refused(tmp_path: Path, text: str) -> str:
    templates = override(tmp_path, TARGET_NAME, text)  # compiling must not hang either
    with pytest.raises(TemplateError) as caught:
        render_text(templates, TARGET_NAME, CONTEXT)
    (problem,) = caught.value.problems
    assert problem.source is not None and problem.source.file == str(tmp_path / TARGET_NAME)
    return problem.message


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("{{ 7 ** 99999999 }}", "too large"),  # folded (and hung) at compile time before
        ("{{ 10 ** 100000 }}", "too large"),
        ("{% set n = 2 ** 4000 %}{{ n * n * n }}", "a product of more than"),
        ("{{ 'x' * 1000000000 }}", "a repetition of more than"),
        ("{{ [1] * 1000000000 }}", "a repetition of more than"),
        ("{{ '%0999999999d' % 1 }}", "%-format width"),
        ("{{ claim | center(1000000000) }}", "center: width"),
    ],
)
def test_huge_arithmetic_is_refused_before_it_runs(
    tmp_path: Path, text: str, expected: str
) -> None:
    assert expected in refused(tmp_path, text)


def test_nested_loops_stop_at_the_render_time_limit(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(bounds, "RENDER_SECONDS", 0.3)
    text = "{% for a in range(100000) %}{% for b in range(100000) %}{% endfor %}{% endfor %}x"
    assert "ran longer than 0.3s" in refused(tmp_path, text)


def test_exponential_macro_recursion_stops_at_the_render_time_limit(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(bounds, "RENDER_SECONDS", 0.3)
    text = (
        "{% macro f(n) %}{% if n > 0 %}{{ f(n - 1) }}{{ f(n - 1) }}{% endif %}{% endmacro %}"
        "{{ f(60) }}x"
    )
    assert "ran longer than 0.3s" in refused(tmp_path, text)


def test_the_output_size_is_bounded_and_the_error_stays_short(tmp_path: Path) -> None:
    text = "{% for a in range(100000) %}{{ 'x' * 1000 }}{% endfor %}"
    message = refused(tmp_path, text)
    assert f"larger than {bounds.MAX_OUTPUT} characters" in message
    assert len(message) < 500


def test_a_backtracking_regex_is_bounded(tmp_path: Path) -> None:
    # With the standard re module, this substitution runs for hours; regex has a timeout
    # (and, for this pattern, finishes at once): either way the render ends.
    text = "{{ ('a' * 40 ~ 'b') | regex_replace('(a+)+$', '') }}"
    templates = override(tmp_path, TARGET_NAME, text)
    try:
        _, _, out = render_text(templates, TARGET_NAME, CONTEXT)
    except TemplateError as exc:
        assert "backtracks" in str(exc)
    else:
        assert out == "a" * 40 + "b"


def test_the_regex_timeout_is_reported(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(bounds, "REGEX_SECONDS", 0.0)
    with pytest.raises(SecurityError, match="backtracks"):
        bounds.regex_replace_filter("a" * 5000, "(a|b|ab)*c", "")


def dv_live_with(tmp_path: Path, old: str, new: str) -> TemplateSet:
    text = (ROOT / "templates" / "datavolume-live.j2").read_text()
    assert old in text
    return override(tmp_path, "datavolume-live.j2", text.replace(old, new))


def test_an_alias_in_rendered_yaml_is_refused(tmp_path: Path) -> None:
    custom = dv_live_with(tmp_path, "spec:\n", "x: &a [1, 2]\ny: [*a, *a]\nspec:\n")
    with pytest.raises(TemplateError, match=r"uses a YAML alias \(\*a\)"):
        render(scene(FEDORA), "vm-fedora", FEDORA_MOVE, templates=custom)


def test_a_live_datavolume_must_be_exactly_blank(tmp_path: Path) -> None:
    custom = dv_live_with(
        tmp_path, "    blank: {}\n", "    blank: {}\n    pvc: {namespace: other, name: secret}\n"
    )
    with pytest.raises(TemplateError, match=r"must be blank: spec\.source must be exactly"):
        render(scene(FEDORA), "vm-fedora", FEDORA_MOVE, templates=custom)


# --------------------------------------------------------------------------------------------
# Scope (issue 14, item 9): an override may render more than the move needs (an extra VM
# patch operation, an extra DataVolume field); each one passed the shape checks and the
# server dry run before. Now render_vm refuses it (render.scope, the allow-list a resumed
# journal passes too), naming the override's file.
# --------------------------------------------------------------------------------------------

USER_DATA = "/spec/template/spec/volumes/1/cloudInitNoCloud/userData"


def _op(op: str) -> tuple[str, str, str]:
    """A vm-patch.j2 override with one more operation at the end."""
    return ("vm-patch.j2", "{%- if live %}\n", "- " + op + "\n{%- if live %}\n")


SCOPE_OVERRIDES = {
    "cloud-init userData rewritten": (
        "fedora-live-template",
        _op(
            f'{{"op": "replace", "path": "{USER_DATA}", "value": "#cloud-config\\nusers: [x]\\n"}}'
        ),
        f"{USER_DATA} is not part of a move",
    ),
    "runStrategy added": (
        "offline-pvc",
        _op('{"op": "add", "path": "/spec/runStrategy", "value": "Always"}'),
        "/spec/runStrategy is not part of a move",
    ),
    "a VM label added": (
        "fedora-live-template",
        _op('{"op": "add", "path": "/metadata/labels/owner", "value": "mallory"}'),
        "/metadata/labels/owner is not part of a move",
    ),
    "a dataVolumeTemplate's source rewritten": (
        "fedora-live-template",
        _op(
            '{"op": "replace", "path": "/spec/dataVolumeTemplates/0/spec/source", '
            '"value": {"http": {"url": "http://images.example.com/evil.qcow2"}}}'
        ),
        "/spec/dataVolumeTemplates/0/spec/source is not part of a move",
    ),
    "ownerReferences": (
        "fedora-live-template",
        (
            "datavolume-live.j2",
            "  labels:\n",
            "  ownerReferences: [{apiVersion: v1, kind: ConfigMap, name: x, uid: u}]\n  labels:\n",
        ),
        "metadata.ownerReferences is not allowed",
    ),
    "finalizers": (
        "fedora-live-template",
        ("datavolume-live.j2", "  labels:\n", "  finalizers: [example.com/keep]\n  labels:\n"),
        "metadata.finalizers is not allowed",
    ),
    "generateName": (
        "fedora-live-template",
        ("datavolume-live.j2", "  labels:\n", "  generateName: x-\n  labels:\n"),
        "metadata.generateName is not allowed",
    ),
    "a cross-namespace dataSourceRef": (
        "fedora-live-template",
        (
            "datavolume-live.j2",
            "  storage:\n",
            "  storage:\n"
            "    dataSourceRef: {kind: PersistentVolumeClaim, name: secret, namespace: tenant-b}\n",
        ),
        "spec.storage.dataSourceRef is not allowed",
    ),
    "a cross-namespace sourceRef on a clone": (
        "offline-pvc",
        (
            "datavolume-offline.j2",
            "spec:\n",
            "spec:\n  sourceRef: {kind: DataSource, name: golden, namespace: tenant-b}\n",
        ),
        "spec.sourceRef is not allowed",
    ),
    "a second http source": (
        "offline-pvc",
        (
            "datavolume-offline.j2",
            "  storage:\n",
            '    http: {url: "http://images.example.com/evil.qcow2"}\n  storage:\n',
        ),
        "spec.source must name exactly one source",
    ),
    "a PV picked by name": (
        "fedora-live-template",
        (
            "datavolume-live.j2",
            "    storageClassName:",
            "    volumeName: pv-of-tenant-b\n    storageClassName:",
        ),
        "spec.storage.volumeName is not allowed",
    ),
    "a CDI annotation that skips the copy": (
        "offline-pvc",
        (
            "datavolume-offline.j2",
            "  annotations:\n",
            '  annotations:\n    cdi.kubevirt.io/storage.prePopulated: "db-data"\n',
        ),
        "annotation cdi.kubevirt.io/storage.prePopulated is KubeVirt's or CDI's",
    ),
}


@pytest.mark.parametrize("name", sorted(SCOPE_OVERRIDES))
def test_an_override_out_of_the_moves_scope_is_refused(tmp_path: Path, name: str) -> None:
    case, (template, old, new), expected = SCOPE_OVERRIDES[name]
    text = (ROOT / "templates" / template).read_text()
    assert text.count(old) == 1
    custom = override(tmp_path, template, text.replace(old, new))
    with pytest.raises(TemplateError) as caught:
        render_case(case, custom)
    (problem,) = caught.value.problems
    assert problem.source is not None and problem.source.file == str(tmp_path / template)
    assert "out of the move's scope" in problem.message
    assert expected in problem.message
