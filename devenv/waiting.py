"""Bounded waiting for a condition that another thread or process makes true."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any, TypeVar

from barge.clock import Clock, SystemClock
from barge.errors import NotFound, TemporaryError

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


def wait_for_phase(
    read: Callable[[], Mapping[str, Any] | None],
    phases: tuple[str, ...],
    timeout: float,
    *,
    what: str,
    interval: float = 0.2,
) -> Mapping[str, Any]:
    """The object ``read`` returns once its ``status.phase`` is one of ``phases`` (``read`` may
    return None while the object does not exist yet)."""

    def reached() -> Mapping[str, Any] | None:
        obj = read()
        return obj if obj is not None and (obj.get("status") or {}).get("phase") in phases else None

    return wait_for(reached, timeout, what=f"{what} to reach {'/'.join(phases)}", interval=interval)


def wait_for_deletion(
    read: Callable[[], object], timeout: float, *, what: str, interval: float = 0.2
) -> None:
    """Until ``read`` raises NotFound."""

    def gone() -> bool:
        try:
            read()
        except NotFound:
            return True
        return False

    wait_for(gone, timeout, what=f"{what} to be deleted", interval=interval)
