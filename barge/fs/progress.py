"""Progress reporting and cooperative cancellation shared by backup and restore."""

from __future__ import annotations

import threading
from collections.abc import Callable

from barge.clock import Clock
from barge.errors import Canceled

ProgressCallback = Callable[[int, int], None]  # (bytes done, bytes total)


class Progress:
    """Thread-safe byte counter that calls back at most every ``interval`` seconds (and at the end)."""

    def __init__(
        self, total: int, callback: ProgressCallback | None, clock: Clock, interval: float = 0.5
    ) -> None:
        self.total = total
        self.done = 0
        self._callback = callback
        self._clock = clock
        self._interval = interval
        self._last = -interval
        self._lock = threading.Lock()

    def add(self, amount: int) -> None:
        with self._lock:
            self.done += amount
            now = self._clock.monotonic()
            due = now - self._last >= self._interval
            if due:
                self._last = now
            done = self.done
        if due and self._callback is not None:
            self._callback(min(done, self.total), self.total)

    def finish(self) -> None:
        if self._callback is not None:
            self._callback(self.total, self.total)


class CancelToken:
    """Set from any thread; workers check it between chunks, so a cancel lands within a chunk's time."""

    def __init__(self) -> None:
        self._event = threading.Event()

    def cancel(self) -> None:
        self._event.set()

    @property
    def canceled(self) -> bool:
        return self._event.is_set()

    def check(self) -> None:
        if self._event.is_set():
            raise Canceled("canceled on request")
