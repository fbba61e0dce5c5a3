"""The real engine (``testenv.real``), started once per session by the first test that asks
for it, for tests/env/test_real_*.py."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from testenv.real.engine import RealEngine


@pytest.fixture(scope="session")
def real_engine() -> Iterator[RealEngine]:
    """The running real engine; a start failure fails the test (with the process that failed
    and its log), it is never skipped. At the end: stopped, and no process may have died."""
    engine = RealEngine(log=print)
    try:
        engine.start()
    except Exception as error:  # any start failure must fail, with its reason
        pytest.fail(f"the real engine could not start: {error}", pytrace=False)
    yield engine
    dead = engine.dead()
    tails = "\n".join(engine.log_tail(name) for name in dead)
    engine.stop()
    assert not dead, f"processes of the real engine died during the tests: {dead}\n{tails}"
