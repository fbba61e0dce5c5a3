"""When a request that failed on the way is sent again, and when it never is.

A request that failed transiently (the API server restarting behind its load balancer, API
priority and fairness shedding load, a connection dropped by a proxy) is sent again only if
sending it twice cannot do twice what once does:

- **Reads** (GET, LIST, the LIST and WATCH that set up a watch, and any dry run: nothing is
  stored) are retried on a connection error (refused, reset, dropped before the whole answer
  arrived, timed out), on HTTP 429, 502, 503 and 504, and on any other 5xx that carries a
  ``Retry-After`` (client-go's rule).
- **Preconditioned writes** are retried on the same: a JSON patch whose ops include a ``test``
  (a second delivery of one that landed fails its test, 422, and changes nothing), a PUT
  carrying ``metadata.resourceVersion`` (409), a DELETE carrying ``preconditions``. The caller
  must tell its own landed write from someone else's when the retry is refused (``apply.store``
  recognises its own journal, ``vm_steps.patch_vm`` reads the VM again and finds the work done,
  ``apply.lease`` finds itself the holder).
- **Every other write** (a POST create, a DELETE or patch without a precondition) is sent again
  only when it provably never left: the connection could not be opened (refused, no route, no
  such host, connect timeout). A 5xx, a reset or a timeout after the request was sent may have
  been applied, so it is returned as the error it is (exit 6, or the step's own handling) and
  the next run, which reads before it acts, decides afresh.
- **HTTP 429** is retried for every request (API priority and fairness rejects a request before
  it is executed), as before.
- Never retried: TLS errors (a certificate does not heal), redirects (refused:
  ``connect.RedirectRefused``), and any other answer (4xx, 500 without ``Retry-After``).

Backoff is exponential with jitter (``BASE`` doubling up to ``CAP``, each delay drawn from its
upper half), a server's ``Retry-After`` is honoured (up to ``MAX_RETRY_AFTER``), at most
``ATTEMPTS`` sends in all, and never past the request's budget: ``BUDGET`` seconds from the
first send, or the request's own ``timeout`` when it has one (the Lease bounds its requests so
that renewing cannot outlive its deadline).
"""

from __future__ import annotations

import enum
import math
import random
from collections.abc import Mapping

import requests

ATTEMPTS = 6  # sends of one request, the first included
BASE = 0.2  # seconds before the first retry (then doubled)
CAP = 3.0  # the longest backoff between two sends (without Retry-After)
MAX_RETRY_AFTER = 10.0  # the longest Retry-After honoured
BUDGET = 30.0  # seconds from the first send after which nothing is retried
TRANSIENT = frozenset({429, 502, 503, 504})
"""Answers retried without a Retry-After (429 for every request; the rest per ``Kind``)."""
_NOT_SENT = frozenset({"NewConnectionError", "ConnectTimeoutError", "NameResolutionError"})
"""urllib3's errors for a connection that was never opened (matched by name: only ``kube``
speaks HTTP, and only through requests)."""


class Kind(enum.Enum):
    """What sending a request twice would do."""

    READ = "read"  # nothing: GET, LIST, WATCH setup, dry runs
    PRECONDITIONED = "preconditioned"  # nothing more: a second delivery fails its precondition
    UNGUARDED = "unguarded"  # maybe twice: POST create, DELETE/patch/PUT without precondition


def patch_kind(ops: object, *, dry_run: bool = False) -> Kind:
    """A JSON patch: READ as a dry run, PRECONDITIONED when an op is a ``test``."""
    if dry_run:
        return Kind.READ
    if isinstance(ops, list | tuple) and any(
        isinstance(op, Mapping) and op.get("op") == "test" for op in ops
    ):
        return Kind.PRECONDITIONED
    return Kind.UNGUARDED


def put_kind(body: Mapping[str, object]) -> Kind:
    """A PUT: PRECONDITIONED when the body names the resourceVersion it replaces."""
    meta = body.get("metadata")
    version = meta.get("resourceVersion") if isinstance(meta, Mapping) else None
    return Kind.PRECONDITIONED if version else Kind.UNGUARDED


def retry_after(headers: Mapping[str, str]) -> float | None:
    """The answer's ``Retry-After`` in seconds (a number; an HTTP date is not honoured), capped
    at ``MAX_RETRY_AFTER``; None when absent or unreadable."""
    text = headers.get("Retry-After")
    if text is None:
        return None
    try:
        seconds = float(text)
    except ValueError:
        return None
    if math.isnan(seconds):
        return None
    return min(max(seconds, 0.0), MAX_RETRY_AFTER)


def backoff(attempt: int) -> float:
    """Seconds before send ``attempt + 1`` (``attempt`` >= 1 sends so far): exponential, capped,
    drawn from the upper half so two clients that failed together do not retry together."""
    delay = min(CAP, BASE * 2 ** max(attempt - 1, 0))
    return random.uniform(delay / 2, delay)


def answer_retry(kind: Kind, status: int, headers: Mapping[str, str]) -> float | None:
    """After HTTP ``status``: None, do not send again; else the server's ``Retry-After`` in
    seconds (0.0 when it gave none: the caller backs off)."""
    after = retry_after(headers)
    if status == 429 or (
        kind is not Kind.UNGUARDED and status >= 500 and (status in TRANSIENT or after is not None)
    ):
        return after or 0.0
    return None


def never_sent(exc: BaseException) -> bool:
    """The request never left: the connection could not be opened at all."""
    if isinstance(exc, requests.exceptions.SSLError):
        return False
    if isinstance(exc, requests.exceptions.ConnectTimeout):
        return True
    seen: set[int] = set()
    stack: list[BaseException] = [exc]
    while stack:
        error = stack.pop()
        if id(error) in seen:
            continue
        seen.add(id(error))
        if any(cls.__name__ in _NOT_SENT for cls in type(error).__mro__):
            return True
        linked = (*error.args, getattr(error, "reason", None), error.__cause__, error.__context__)
        stack.extend(e for e in linked if isinstance(e, BaseException))
    return False


def error_retry(kind: Kind, exc: requests.RequestException) -> bool:
    """Send again after ``exc`` (a connection error, no answer)?"""
    if isinstance(exc, requests.exceptions.SSLError | requests.exceptions.InvalidURL):
        return False
    if never_sent(exc):
        return True
    return kind is not Kind.UNGUARDED and isinstance(
        exc,
        requests.exceptions.ConnectionError
        | requests.exceptions.Timeout
        | requests.exceptions.ChunkedEncodingError,
    )
