"""Bounded waiting for a condition that another thread or process makes true."""

from __future__ import annotations

from collections.abc import Callable
from typing import TypeVar

from barge.clock import Clock, SystemClock
from barge.errors import TemporaryError

T = TypeVar("T")


def wait_for(
    predicate: Callable[[], T | None],
    timeout: float,
    *,
    what: str = "the condition",
    interval: float = 0.05,
    clock: Clock | None = None,
) -> T:
    """Poll ``predicate`` until it returns something truthy and return that; TemporaryError on timeout.

    The predicate is always tried once more at the deadline, so a slow poll cannot lose a result
    that arrived just in time.
    """
    clock = clock or SystemClock()
    deadline = clock.monotonic() + timeout
    while True:
        expired = clock.monotonic() >= deadline
        result = predicate()
        if result:
            return result
        if expired:
            raise TemporaryError(f"timed out after {timeout:g}s waiting for {what}")
        clock.sleep(min(interval, max(0.0, deadline - clock.monotonic())))
