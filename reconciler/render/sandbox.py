"""Template sets: loading them, rendering in the sandbox of ``bounds``, and locating errors. Pure.

A ``TemplateSet`` is the default templates (``templates/`` in a checkout,
``reconciler/_templates`` in a wheel) overridden one file at a time by ``--templates DIR``.
Templates run in an ``ImmutableSandboxedEnvironment`` with ``StrictUndefined``: a template sees
only the documented variables and the filters below, cannot reach Python internals or mutate
its inputs, and an undefined variable is an error, never an empty string. Every error is a
``TemplateError`` naming the template file and line. What the templates render, and the checks
on it, are in ``render``.

A template cannot hang the run or exhaust memory: ``**``, ``*``, ``+`` and ``%`` are checked
before they run (and so never folded while Jinja compiles, where ``9**9**9`` used to hang
before anything printed), width arguments of the padding filters are bounded, a render stops
after ``RENDER_SECONDS`` (checked on every line the template executes, loops and macros
included) or ``MAX_OUTPUT`` characters, ``regex_replace`` runs with a timeout (the ``regex``
module: a backtracking pattern cannot run forever), and rendered YAML may not use aliases
(``*a``: a few lines could expand to billions of values).
"""

from __future__ import annotations

import importlib.resources
import traceback
from collections.abc import Mapping
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path

import jinja2
import yaml

from reconciler.model.errors import Problem, TemplateError
from reconciler.model.plan import Source
from reconciler.model.text import shown
from reconciler.render.bounds import (
    BoundedSandbox,
    Unchecked,
    bounded_render,
    environment,
)

TARGET_NAME = "target-name.j2"
DV_LIVE = "datavolume-live.j2"
DV_OFFLINE = "datavolume-offline.j2"
VM_PATCH = "vm-patch.j2"
VM_REVERT = "vm-revert-patch.j2"
TEMPLATE_NAMES = (TARGET_NAME, DV_LIVE, DV_OFFLINE, VM_PATCH, VM_REVERT)


# --------------------------------------------------------------------------------------------
# Template sets
# --------------------------------------------------------------------------------------------


def default_templates_dir() -> Path:
    """The packaged default templates.

    In an installed wheel they are ``reconciler/_templates`` (pyproject force-includes the
    checkout's ``templates/`` there); in a checkout or editable install, ``templates/`` at the
    top of the repository.
    """
    packaged = importlib.resources.files("reconciler") / "_templates"
    if isinstance(packaged, Path) and packaged.is_dir():
        return packaged
    checkout = Path(__file__).resolve().parents[2] / "templates"  # reconciler/render/ -> repo
    if checkout.is_dir():
        return checkout
    raise TemplateError(
        [
            Problem(
                None,
                f"the default templates are missing (looked in {packaged} and {checkout})",
                hint="reinstall vm-storage-reconciler, or pass --templates DIR with all of "
                + ", ".join(TEMPLATE_NAMES),
            )
        ]
    )


@dataclass(frozen=True)
class TemplateSet:
    """The templates in use: ``directory`` (the defaults) overridden file by file by
    ``override`` when given. The Jinja environment is built once, on first use."""

    directory: Path
    override: Path | None = None

    @classmethod
    def default(cls) -> TemplateSet:
        return cls(default_templates_dir())

    @cached_property
    def environment(self) -> BoundedSandbox:
        search = [str(self.override)] if self.override else []
        return environment(jinja2.FileSystemLoader([*search, str(self.directory)]))

    def path_of(self, name: str) -> Path:
        """The file that provides template ``name`` (the override when it has one)."""
        if self.override is not None and (self.override / name).is_file():
            return self.override / name
        return self.directory / name

    def get(self, name: str) -> jinja2.Template:
        """The compiled template; a syntax error or a missing file is a TemplateError."""
        try:
            return self.environment.get_template(name)
        except jinja2.TemplateSyntaxError as exc:
            path = exc.filename or str(self.path_of(name))
            raise template_error(path, exc.lineno, str(exc.message), _hint(exc)) from exc
        except jinja2.TemplateNotFound as exc:
            raise TemplateError(
                [
                    Problem(
                        None,
                        f"template {name} not found in {self.directory}",
                        hint="the "
                        "default set is incomplete: reinstall, or provide it with --templates",
                    )
                ]
            ) from exc

    def check(self) -> None:
        """Compile every template, so a syntax error is reported before anything renders."""
        problems: list[Problem] = []
        for name in TEMPLATE_NAMES:
            try:
                self.get(name)
            except TemplateError as exc:
                problems += exc.problems
        if problems:
            raise TemplateError(problems)


def load_templates(override_dir: Path | None) -> TemplateSet:
    """The default templates, overridden one by one by the ``*.j2`` files in ``override_dir``
    (``--templates DIR``). Every template is compiled now; a file in ``override_dir`` that is
    not a known template name is an error (most likely a typo that would silently not apply)."""
    defaults = default_templates_dir()
    if override_dir is None:
        templates = TemplateSet(defaults)
    else:
        if not override_dir.is_dir():
            raise TemplateError(
                [
                    Problem(
                        None,
                        f"--templates {override_dir}: not a directory",
                        hint="pass a directory holding *.j2 files named like the defaults",
                    )
                ]
            )
        unknown = sorted(p.name for p in override_dir.glob("*.j2") if p.name not in TEMPLATE_NAMES)
        if unknown:
            raise TemplateError(
                [
                    Problem(
                        Source(str(override_dir / n), 1),
                        f"unknown template {n}",
                        hint="template names are " + ", ".join(TEMPLATE_NAMES),
                    )
                    for n in unknown
                ]
            )
        templates = TemplateSet(defaults, override_dir)
    templates.check()
    return templates


# --------------------------------------------------------------------------------------------
# Errors: every problem names the template file and the line
# --------------------------------------------------------------------------------------------


def template_error(
    path: str | Path, line: int | None, message: str, hint: str = ""
) -> TemplateError:
    """A TemplateError at ``path``:``line`` (line 1 when unknown)."""
    return TemplateError([Problem(Source(str(path), line or 1), message, hint)])


def _hint(exc: Exception) -> str:
    if isinstance(exc, jinja2.UndefinedError):
        return "the variables a template may use are listed in the comment at its top"
    if isinstance(exc, jinja2.exceptions.SecurityError):
        return (
            "templates run in a sandbox: only the documented variables and filters are "
            "available, '_' attributes and methods that modify data are refused"
        )
    if isinstance(exc, jinja2.TemplateSyntaxError):
        return "fix the Jinja syntax at that line"
    return "check the filter arguments and the variables documented at the top of the template"


def _line_in(exc: BaseException, filename: str) -> int | None:
    """The template line of a rendering error (Jinja rewrites tracebacks to template lines)."""
    lines = [f.lineno for f in traceback.extract_tb(exc.__traceback__) if f.filename == filename]
    return lines[-1] if lines else None


def _line_of(template: jinja2.Template, needle: str) -> int:
    """Best effort: the first template line mentioning ``needle`` (for errors found in the
    rendered output, which has no line mapping back to the template), else 1."""
    path = Path(template.filename or "")
    try:
        text = path.read_text()
    except OSError:
        return 1
    for number, line in enumerate(text.splitlines(), start=1):
        if needle in line:
            return number
    return 1


@dataclass(frozen=True)
class Rendered:
    """A template's parsed output and the template it came from (for error locations)."""

    name: str
    template: jinja2.Template
    data: Unchecked

    @property
    def path(self) -> str:
        return self.template.filename or self.name

    def error(self, message: str, *, near: str = "", hint: str = "") -> TemplateError:
        line = _line_of(self.template, near) if near else 1
        return template_error(self.path, line, message, hint)


# libyaml's loader when PyYAML was built with it (every wheel is): ~10x faster than the pure
# Python one, which dominated `plan` for thousands of VMs. Same safe constructors.
_SAFE_LOADER: type[yaml.SafeLoader] = getattr(yaml, "CSafeLoader", yaml.SafeLoader)


def render_text(
    templates: TemplateSet, name: str, context: Mapping[str, Unchecked]
) -> tuple[jinja2.Template, str, str]:
    """Render ``name`` with ``context``: (template, its path, the output text)."""
    template = templates.get(name)
    path = template.filename or str(templates.path_of(name))
    try:
        user = templates.override is not None and Path(path).parent == templates.override
        return template, path, bounded_render(template, context, timed=user)
    except Exception as exc:  # jinja2 errors, and ValueError/TypeError raised by our filters
        raise template_error(path, _line_in(exc, path), str(exc), _hint(exc)) from exc


def render_yaml(templates: TemplateSet, name: str, context: Mapping[str, Unchecked]) -> Rendered:
    """Render ``name`` with ``context`` and parse the output as YAML."""
    template, path, text = render_text(templates, name, context)
    _refuse_aliases(text, path)
    try:
        data = yaml.load(text, Loader=_SAFE_LOADER)
    except yaml.YAMLError as exc:
        where = getattr(exc, "problem_mark", None)
        at = f" at rendered line {where.line + 1}" if where is not None else ""
        raise template_error(
            path,
            1,
            f"the output is not valid YAML{at}: {exc}",
            "values should go through the to_json filter, which quotes them",
        ) from exc
    return Rendered(name, template, data)


def _refuse_aliases(text: str, path: str) -> None:
    """Rendered YAML may not use aliases (``*a``): a few lines of nested aliases expand to
    billions of values once the output is walked. Only scanned when a ``*`` is there at all."""
    if "*" not in text:
        return
    try:
        for event in yaml.parse(text, Loader=_SAFE_LOADER):
            if isinstance(event, yaml.AliasEvent):
                line = event.start_mark.line + 1 if event.start_mark else 1
                raise template_error(
                    path,
                    1,
                    f"the output uses a YAML alias (*{shown(event.anchor, 60)}) at rendered line "
                    f"{line}; aliases are refused in rendered manifests",
                    "write values out (the to_json filter quotes strings, so a '*' in a value "
                    "is never an alias)",
                )
    except yaml.YAMLError:
        return  # the parse below reports it, with its line
