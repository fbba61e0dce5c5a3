"""What bounds a template: its filters and the sandbox that runs it. Pure.

Split from ``sandbox`` (which loads template sets and locates errors): everything here is
about what a template may do and how long and how much. ``**``, ``*``, ``+`` and ``%`` are
checked before they run, padding widths are bounded, a render stops after ``RENDER_SECONDS``
or ``MAX_OUTPUT`` characters, and ``regex_replace`` runs with a timeout.
"""

from __future__ import annotations

import hashlib
import json
import re
import string
import sys
import time
from collections.abc import Mapping
from typing import Any

import jinja2
import regex
from jinja2.exceptions import SecurityError
from jinja2.sandbox import ImmutableSandboxedEnvironment

from reconciler.model.quantity import format_quantity
from reconciler.model.text import shown

Unchecked = Any
"""JSON as parsed from a template's output or read from the cluster, before render's run-time
checks: walked defensively (``.get(...) or {}``), and turned into the typed shapes of
``model.manifests`` only once checked. Nothing typed ``Unchecked`` leaves ``render``."""

MAX_NAME = 63  # CDI refuses longer DataVolume names; PVC names follow the DV's
RENDER_SECONDS = 2.0
"""One render's time limit; the default templates take well under a millisecond."""
MAX_OUTPUT = 1 << 20
"""Characters one render may produce (a DataVolume or a patch is a few KB)."""
MAX_INT_BITS = 8192
"""Bits an integer computed by a template may have (sizes need 64)."""
REGEX_SECONDS = 0.5

_BASE36 = string.digits + string.ascii_lowercase

# --------------------------------------------------------------------------------------------
# Filters (registered explicitly; templates get nothing else beyond Jinja's builtins)
# --------------------------------------------------------------------------------------------


def _defined(value: Any) -> Any:
    """Raise the template's UndefinedError when ``value`` is undefined (StrictUndefined)."""
    if isinstance(value, jinja2.Undefined):
        str(value)  # StrictUndefined raises here, with the variable's name
    return value


def to_json_filter(value: Any) -> str:
    """JSON text of ``value``; valid YAML too, so strings are always safely quoted."""
    return json.dumps(plain(_defined(value)), sort_keys=True)


def quantity_filter(size: Any) -> str:
    """Bytes as a Kubernetes quantity: "10Gi" when exact, else the plain number of bytes."""
    size = _defined(size)
    if isinstance(size, bool) or not isinstance(size, int) or size < 0:
        raise ValueError(f"quantity: expected a number of bytes, got {size!r}")
    return format_quantity(size)


def dns_label_filter(value: Any, max_length: int = MAX_NAME) -> str:
    """``value`` cut to ``max_length`` characters, without a trailing '-' or '.'."""
    return str(_defined(value))[: max(max_length, 0)].rstrip("-.")


def sha_filter(value: Any, length: int = 5) -> str:
    """``length`` lowercase base36 characters of the SHA-256 of ``value`` (deterministic)."""
    number = int(hashlib.sha256(str(_defined(value)).encode()).hexdigest(), 16)
    digits = []
    for _ in range(length):
        number, digit = divmod(number, 36)
        digits.append(_BASE36[digit])
    return "".join(digits)


def regex_replace_filter(value: Any, pattern: str, replacement: str = "") -> str:
    """``re.sub(pattern, replacement, value)``, with the ``regex`` module and a timeout of
    ``REGEX_SECONDS`` (a backtracking pattern cannot hang the run)."""
    try:
        return str(
            regex.sub(str(pattern), str(replacement), str(_defined(value)), timeout=REGEX_SECONDS)
        )
    except TimeoutError:
        raise SecurityError(
            f"regex_replace: the pattern {shown(pattern, 80)} took longer than "
            f"{REGEX_SECONDS:g}s (it backtracks); simplify it"
        ) from None


def _bounded_width(name: str, filter_: Any) -> Any:
    """A builtin filter whose int arguments (widths) are bounded by ``MAX_OUTPUT``."""

    def bounded(value: Any, *args: Any, **kwargs: Any) -> Any:
        for arg in (*args, *kwargs.values()):
            if isinstance(arg, int) and not isinstance(arg, bool) and abs(arg) > MAX_OUTPUT:
                raise SecurityError(f"{name}: width {arg} is larger than {MAX_OUTPUT}")
        return filter_(value, *args, **kwargs)

    bounded.__name__ = name
    return bounded


FILTERS = {
    "to_json": to_json_filter,
    "quantity": quantity_filter,
    "dns_label": dns_label_filter,
    "sha": sha_filter,
    "regex_replace": regex_replace_filter,
}


_BOUNDED_FILTERS = ("center", "indent", "wordwrap", "truncate")
_WIDTH = re.compile(r"\d{7,}")


class BoundedSandbox(ImmutableSandboxedEnvironment):
    """The immutable sandbox, with the arithmetic that can blow up checked before it runs.

    Intercepted operators are never constant-folded by Jinja's compiler either, so a huge
    power in a template can no longer hang ``get_template``.
    """

    intercepted_binops = frozenset({"**", "*", "+", "%"})

    def call_binop(self, context: Any, operator: str, left: Any, right: Any) -> Any:
        _check_binop(operator, left, right)
        return super().call_binop(context, operator, left, right)


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _check_binop(operator: str, left: Any, right: Any) -> None:
    sequences = (str, list, tuple)
    if operator == "**" and _is_int(left) and _is_int(right) and right > 0 and abs(left) > 1:
        if right * abs(left).bit_length() > MAX_INT_BITS:
            raise SecurityError(f"{left} ** {right} is too large (more than {MAX_INT_BITS} bits)")
    elif operator == "*":
        both = _is_int(left) and _is_int(right)
        if both and left.bit_length() + right.bit_length() > MAX_INT_BITS:
            raise SecurityError(f"a product of more than {MAX_INT_BITS} bits")
        for seq, times in ((left, right), (right, left)):
            if isinstance(seq, sequences) and _is_int(times) and len(seq) * times > MAX_OUTPUT:
                raise SecurityError(f"a repetition of more than {MAX_OUTPUT} items")
    elif operator == "+":
        both = isinstance(left, sequences) and isinstance(right, sequences)
        if both and len(left) + len(right) > MAX_OUTPUT:
            raise SecurityError(f"a concatenation of more than {MAX_OUTPUT} items")
    elif operator == "%" and isinstance(left, str) and _WIDTH.search(left):
        raise SecurityError("a %-format width larger than a template needs")


class _RenderTimeout(Exception):
    pass


def bounded_render(
    template: jinja2.Template, context: Mapping[str, Unchecked], *, timed: bool = True
) -> str:
    """``template.render(context)``, stopped after ``RENDER_SECONDS`` or ``MAX_OUTPUT``
    characters: a ``SecurityError`` (made a ``TemplateError`` by ``render_text``).

    The time is checked on every line the template's compiled code executes (a trace
    function local to the template's frames: loops, macros and recursion included); other
    code runs untraced. The previous trace function (a debugger, coverage) is restored.
    ``timed=False`` (the packaged defaults, which we wrote) skips the tracing, which would
    add ~25 us per render: 0.1 s for a 4,000-volume plan.
    """
    filename = template.filename or "<template>"
    deadline = time.monotonic() + RENDER_SECONDS

    def local(frame: Any, event: str, arg: Any) -> Any:
        if time.monotonic() > deadline:
            raise _RenderTimeout
        return local

    def calls(frame: Any, event: str, arg: Any) -> Any:
        return local if frame.f_code.co_filename == filename else None

    previous = sys.gettrace()
    if timed:
        sys.settrace(calls)
    chunks: list[str] = []
    size = 0
    try:
        for chunk in template.generate(context):
            size += len(chunk)
            if size > MAX_OUTPUT:
                raise SecurityError(f"the output is larger than {MAX_OUTPUT} characters")
            chunks.append(chunk)
    except _RenderTimeout:
        raise SecurityError(
            f"the template ran longer than {RENDER_SECONDS:g}s (a loop too many?)"
        ) from None
    finally:
        if timed:
            sys.settrace(previous)
    return "".join(chunks)


def plain(value: Any) -> Unchecked:
    """A deep copy of ``value`` made of dicts and lists only (Mappings and tuples converted)."""
    if isinstance(value, Mapping):
        return {str(k): plain(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [plain(v) for v in value]
    return value


def environment(loader: jinja2.BaseLoader) -> BoundedSandbox:
    """The sandbox templates run in: StrictUndefined, no autoescape, our filters, and the
    padding filters' widths bounded."""
    env = BoundedSandbox(
        loader=loader,
        undefined=jinja2.StrictUndefined,
        autoescape=False,
        keep_trailing_newline=True,
    )
    for name in _BOUNDED_FILTERS:
        env.filters[name] = _bounded_width(name, env.filters[name])
    env.filters.update(FILTERS)
    return env
