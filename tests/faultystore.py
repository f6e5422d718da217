"""An in-process ObjectStore that records every call and fails or "crashes" where a test says:
write ordering and crash points tested at unit speed (the end-to-end tier has a fault-injecting
HTTP proxy in front of a real S3 server for the same questions over the network)."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from dataclasses import dataclass, field

from barge.errors import TemporaryError
from barge.storage import ObjectInfo, ObjectStore


class Crash(BaseException):
    """The writer's process died here: not an Exception, so no ``except Exception`` handles it."""


@dataclass
class Fault:
    op: str  # "put", "get", "delete", ...
    prefix: str  # keys it applies to
    skip: int = 0  # let this many matching calls through first
    times: int = 1  # then fail this many (each one consumes one)
    crash: bool = False  # raise Crash instead of TemporaryError
    seen: int = field(default=0, init=False)

    def fires(self, op: str, key: str) -> bool:
        if op != self.op or not key.startswith(self.prefix):
            return False
        self.seen += 1
        return self.skip < self.seen <= self.skip + self.times


class FaultyStore:
    """Wraps ``inner``; ``calls`` lists (op, key) of every call that reached it, in order."""

    def __init__(self, inner: ObjectStore) -> None:
        self.inner = inner
        self.calls: list[tuple[str, str]] = []
        self.faults: list[Fault] = []
        self._lock = threading.Lock()

    def fail(self, op: str, prefix: str, *, skip: int = 0, times: int = 1) -> None:
        self.faults.append(Fault(op, prefix, skip, times))

    def crash(self, op: str, prefix: str, *, skip: int = 0) -> None:
        self.faults.append(Fault(op, prefix, skip, 1, crash=True))

    def keys(self, op: str, prefix: str = "") -> list[str]:
        return [key for done, key in self.calls if done == op and key.startswith(prefix)]

    def _enter(self, op: str, key: str) -> None:
        with self._lock:
            for fault in self.faults:
                if fault.fires(op, key):
                    if fault.crash:
                        raise Crash(f"{op} {key}")
                    raise TemporaryError(f"injected: {op} {key} failed")
            self.calls.append((op, key))

    def describe(self) -> str:
        return f"faulty({self.inner.describe()})"

    def put(self, key: str, data: bytes | memoryview, *, overwrite: bool = False) -> None:
        self._enter("put", key)
        self.inner.put(key, data, overwrite=overwrite)

    def get(self, key: str) -> bytes:
        self._enter("get", key)
        return self.inner.get(key)

    def get_range(self, key: str, offset: int, length: int) -> bytes:
        self._enter("get_range", key)
        return self.inner.get_range(key, offset, length)

    def stat(self, key: str) -> ObjectInfo:
        self._enter("stat", key)
        return self.inner.stat(key)

    def list(self, prefix: str) -> Iterator[ObjectInfo]:
        self._enter("list", prefix)
        return self.inner.list(prefix)

    def folders(self, prefix: str) -> tuple[str, ...]:
        self._enter("list", prefix)
        return self.inner.folders(prefix)

    def delete(self, key: str) -> None:
        self._enter("delete", key)
        self.inner.delete(key)
