"""A real engine started for a scope of tests (``running_engine``): the session's
(tests/conftest.py) or a module's own, where the tests need a cluster no other test fills."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import pytest

from testenv.real.engine import RealEngine


@contextmanager
def running_engine(what: str) -> Iterator[RealEngine]:
    """Start a real engine (``what`` names it in failures) and stop it after. A start failure
    fails the test that asked, with the process that failed and its log; it is never
    skipped. At the end, a process of the engine that died meanwhile fails too."""
    engine = RealEngine(log=print)
    try:
        engine.start()
    except Exception as error:  # any start failure must fail, with its reason
        pytest.fail(f"{what} could not start: {error}", pytrace=False)
    yield engine
    dead = engine.dead()
    tails = "\n".join(engine.log_tail(name) for name in dead)
    engine.stop()
    assert not dead, f"processes of {what} died during the tests: {dead}\n{tails}"
