"""A work queue of CR keys, as controller-runtime has: deduplicated, with delayed re-adds.

A key is never processed by two workers at once; a key added while it is being processed is
processed again afterwards (so no change is lost); a delayed add keeps the earliest due time.
How long each key waited ready for a worker is reported (``on_wait``), as client-go's
``workqueue_queue_duration_seconds``: the coordinator's own share of a step's latency.

A periodic full pass (the resync, a safety net for missed events) queues its keys in the
background: a worker takes one when nothing else waits, or as every ``BACKGROUND_SHARE``-th key,
so an event never waits behind thousands of keys that only re-check. An event for a key waiting
in the background moves it to the front tier.
"""

from __future__ import annotations

import heapq
import threading
from collections import OrderedDict, deque
from collections.abc import Callable, Hashable
from typing import Generic, TypeVar

from barge.clock import Clock

K = TypeVar("K", bound=Hashable)

BACKGROUND_SHARE = 8  # at most one key in this many comes from the background while others wait


class WorkQueue(Generic[K]):
    def __init__(
        self,
        clock: Clock,
        on_wait: Callable[[float], None] = lambda seconds: None,
        on_due: Callable[[], None] = lambda: None,
    ) -> None:
        """``on_wait(seconds)`` runs for each key handed to a worker, with the time it waited ready;
        ``on_due()`` for each delayed add that falls due (not for one an earlier add replaced)."""
        self._clock = clock
        self._on_wait = on_wait
        self._on_due = on_due
        self._ready_since: dict[K, float] = {}
        self._cond = threading.Condition()
        self._ready: deque[K] = deque()
        self._queued: set[K] = set()
        self._processing: set[K] = set()
        self._dirty: set[K] = set()  # added while processing
        self._background: OrderedDict[K, None] = OrderedDict()
        self._since_background = 0  # keys handed out from the front tier since the last background one
        self._delayed: list[tuple[float, int, K]] = []
        self._due: dict[K, float] = {}
        self._counter = 0
        self._closed = False

    def add(self, key: K, urgent: bool = False) -> None:
        """Queue ``key`` at the back, or with ``urgent`` at the front: work that can start now must
        not wait behind a full pass over every key. (A key already waiting keeps its place.)"""
        with self._cond:
            self._add_locked(key, urgent)

    def add_background(self, key: K) -> None:
        """Queue ``key`` behind everything else (see the module docstring); a key already queued
        or in a worker's hands is left as it is (a delayed one is also queued here)."""
        with self._cond:
            if key in self._processing or key in self._queued or key in self._background:
                return
            self._background[key] = None
            self._cond.notify()

    def add_after(self, key: K, seconds: float) -> None:
        if seconds <= 0:
            self.add(key)
            return
        with self._cond:
            due = self._clock.monotonic() + seconds
            if key in self._due and self._due[key] <= due:
                return
            self._due[key] = due
            self._counter += 1
            heapq.heappush(self._delayed, (due, self._counter, key))
            self._cond.notify()

    def get(self, timeout: float) -> K | None:
        """The next ready key (mark it processing), or None after ``timeout`` or when closed."""
        deadline = self._clock.monotonic() + timeout
        with self._cond:
            while not self._closed:
                self._promote_due()
                if self._background and (not self._ready or self._since_background >= BACKGROUND_SHARE - 1):
                    key, _ = self._background.popitem(last=False)
                    self._since_background = 0
                    self._processing.add(key)
                    return key
                if self._ready:
                    key = self._ready.popleft()
                    self._since_background += 1
                    self._queued.discard(key)
                    self._processing.add(key)
                    self._on_wait(self._clock.monotonic() - self._ready_since.pop(key))
                    return key
                remaining = deadline - self._clock.monotonic()
                if remaining <= 0:
                    return None
                wait = remaining
                if self._delayed:
                    wait = min(wait, max(0.0, self._delayed[0][0] - self._clock.monotonic()))
                self._cond.wait(max(wait, 0.001))
            return None

    def done(self, key: K) -> None:
        with self._cond:
            self._processing.discard(key)
            if key in self._dirty:
                self._dirty.discard(key)
                self._add_locked(key)

    def clear(self) -> None:
        """Forget the keys waiting now (not those being processed, nor delayed ones)."""
        with self._cond:
            self._background.clear()
            self._queued.difference_update(self._ready)
            for key in self._ready:
                del self._ready_since[key]
            self._ready.clear()

    def close(self) -> None:
        with self._cond:
            self._closed = True
            self._cond.notify_all()

    def __len__(self) -> int:
        with self._cond:
            return len(self._ready) + len(self._background) + len(self._delayed)

    def _add_locked(self, key: K, urgent: bool = False, since: float | None = None) -> None:
        """``since``: when the key became ready (a delayed key: when it fell due, not when a
        worker's ``get`` noticed)."""
        if key in self._processing:
            self._dirty.add(key)
        elif key not in self._queued:
            self._background.pop(key, None)
            self._queued.add(key)
            self._ready_since[key] = self._clock.monotonic() if since is None else since
            if urgent:
                self._ready.appendleft(key)
            else:
                self._ready.append(key)
            self._cond.notify()

    def _promote_due(self) -> None:
        now = self._clock.monotonic()
        while self._delayed and self._delayed[0][0] <= now:
            due, _, key = heapq.heappop(self._delayed)
            if self._due.get(key) == due:
                del self._due[key]
                self._on_due()
                self._add_locked(key, since=due)
