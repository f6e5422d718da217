"""An upload rate limit: a node's transfers must not take the whole uplink the node's workloads
share (restic's ``--limit-upload``, kopia's upload throttle).

One ``RateLimit`` per agent, shared by every store it opens, so the limit holds for the node
however many transfers run at once. Only ``put`` is limited: what a backup sends is packs,
indexes and snapshot manifests, and metadata reads must stay quick.
"""

from __future__ import annotations

import re
import threading
from collections.abc import Iterator

from barge.clock import Clock
from barge.errors import InvalidInput
from barge.storage import ObjectInfo, ObjectStore

_SUFFIXES = {"": 1, "k": 10**3, "M": 10**6, "G": 10**9, "Ki": 2**10, "Mi": 2**20, "Gi": 2**30}
_RATE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(Ki|Mi|Gi|k|M|G|)\s*$")


def parse_rate(text: str) -> int:
    """Bytes per second from a Kubernetes-style quantity ("64Mi", "100M", "1048576"); 0 = none."""
    match = _RATE.match(text)
    if match is None:
        raise InvalidInput(
            f"rate {text!r}: give bytes per second as a number with an optional suffix "
            "(k, M, G, Ki, Mi, Gi), e.g. 64Mi; 0 for no limit"
        )
    return int(float(match.group(1)) * _SUFFIXES[match.group(2)])


class RateLimit:
    """A token bucket, thread-safe: on average at most ``bytes_per_second``, with bursts of up to
    one second's worth. A caller takes what it sends up front and sleeps off the debt outside the
    lock, so callers that arrive together share the rate instead of queueing on the lock."""

    def __init__(self, bytes_per_second: int, clock: Clock) -> None:
        if bytes_per_second <= 0:
            raise InvalidInput(f"rate limit {bytes_per_second}: must be positive")
        self.bytes_per_second = bytes_per_second
        self._clock = clock
        self._lock = threading.Lock()
        self._available = float(bytes_per_second)
        self._last = clock.monotonic()

    def take(self, size: int) -> float:
        """Wait until ``size`` bytes may be sent; the seconds waited."""
        with self._lock:
            now = self._clock.monotonic()
            refill = (now - self._last) * self.bytes_per_second
            self._available = min(float(self.bytes_per_second), self._available + refill) - size
            self._last = now
            wait = -self._available / self.bytes_per_second if self._available < 0 else 0.0
        if wait > 0:
            self._clock.sleep(wait)
        return wait


class ThrottledStore:
    """``inner`` with its writes held to ``limit`` (an ObjectStore)."""

    def __init__(self, inner: ObjectStore, limit: RateLimit) -> None:
        self._inner = inner
        self._limit = limit

    def describe(self) -> str:
        return self._inner.describe()

    def put(self, key: str, data: bytes | memoryview, *, overwrite: bool = False) -> None:
        self._limit.take(len(data))
        self._inner.put(key, data, overwrite=overwrite)

    def get(self, key: str) -> bytes:
        return self._inner.get(key)

    def get_range(self, key: str, offset: int, length: int) -> bytes:
        return self._inner.get_range(key, offset, length)

    def stat(self, key: str) -> ObjectInfo:
        return self._inner.stat(key)

    def list(self, prefix: str) -> Iterator[ObjectInfo]:
        return self._inner.list(prefix)

    def folders(self, prefix: str) -> tuple[str, ...]:
        return self._inner.folders(prefix)

    def delete(self, key: str) -> None:
        self._inner.delete(key)


def throttled(store: ObjectStore, limit: RateLimit | None) -> ObjectStore:
    return store if limit is None else ThrottledStore(store, limit)
