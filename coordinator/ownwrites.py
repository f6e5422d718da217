"""The coordinator's own recent writes, laid over the informer caches until the caches show them.

Each write wakes its CR again (the write's own watch event, or another part's), and that
reconcile can run before the watch delivered the write: deciding on the older copy repeats it (a
create answered AlreadyExists, a delete NotFound, a CR update Conflict), each a wasted request.
The API server's answer to a write is newer than what the cache held when the write was decided,
so until the cache moves on, a read sees the answer instead. Entries expire after ``ttl`` in any
case, so a missed event costs at most a repeated request, never a decision on old news for long.
"""

from __future__ import annotations

import threading
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from barge.clock import Clock

Obj = Mapping[str, Any]
Key = tuple[str, str | None, str]
DEFAULT_TTL = timedelta(seconds=30)
# A deleted object the cache still shows without a deletionTimestamp is shown with this one: it is
# going (or gone), so nothing deletes it again, and nothing builds on it.
DELETION_MARK = "1970-01-01T00:00:00Z"


@dataclass(frozen=True)
class _Written:
    """The object as the write returned it, and what a cache that is behind shows: nothing (it was
    created), or one of the versions the write replaced."""

    obj: Obj
    at: datetime
    created: bool = False
    replaces: frozenset[str] = frozenset()


@dataclass(frozen=True)
class _Deleted:
    uid: str | None  # None: whatever object has the name
    at: datetime


class OwnWrites:
    """What this coordinator wrote, until the informer cache shows it (thread-safe)."""

    def __init__(self, clock: Clock, ttl: timedelta = DEFAULT_TTL) -> None:
        self._clock = clock
        self._ttl = ttl
        self._lock = threading.Lock()
        self._entries: dict[Key, _Written | _Deleted] = {}
        self._next_purge = clock.now() + ttl

    def created(self, kind: str, obj: Obj) -> None:
        """``obj`` was created (or found existing): a cache without it is behind."""
        self._put(_key(kind, obj), _Written(obj, self._clock.now(), created=True))

    def replaced(self, kind: str, obj: Obj, replaces: Iterable[str | None]) -> None:
        """``obj`` is the answer to a write made over the versions ``replaces`` (and over whatever
        an earlier write of ours, not shown yet, replaced: a cache behind both shows one of those)."""
        key = _key(kind, obj)
        versions = {v for v in replaces if v}
        created = False
        with self._lock:
            earlier = self._entries.get(key)
            if isinstance(earlier, _Written):
                versions |= earlier.replaces | {_version(earlier.obj)}
                created = earlier.created
        versions.discard(_version(obj))
        if versions or created:
            self._put(key, _Written(obj, self._clock.now(), created=created, replaces=frozenset(versions)))

    def deleted(self, kind: str, namespace: str | None, name: str, uid: str | None) -> None:
        self._put((kind, namespace, name), _Deleted(uid, self._clock.now()))

    def overlay(self, kind: str, namespace: str | None, name: str, cached: Obj | None) -> Obj | None:
        """The newer of ``cached`` and this coordinator's own write of the object."""
        key = (kind, namespace, name)
        with self._lock:
            entry = self._entries.get(key)
            if entry is None:
                return cached
            expired = self._clock.now() >= entry.at + self._ttl
            newer = None if expired else _newer(entry, cached)
            if newer is None:
                del self._entries[key]  # the cache caught up (or moved on): it is the truth again
                return cached
            return newer

    def __len__(self) -> int:
        with self._lock:
            return len(self._entries)

    def _put(self, key: Key, entry: _Written | _Deleted) -> None:
        with self._lock:
            self._entries[key] = entry
            if entry.at >= self._next_purge:
                self._next_purge = entry.at + self._ttl
                expired = [k for k, e in self._entries.items() if entry.at >= e.at + self._ttl]
                for k in expired:
                    del self._entries[k]


def _newer(entry: _Written | _Deleted, cached: Obj | None) -> Obj | None:
    """What ``entry`` knows beyond ``cached`` (None: nothing, the cache caught up or moved on)."""
    if isinstance(entry, _Written):
        behind = entry.created if cached is None else _version(cached) in entry.replaces
        return entry.obj if behind else None
    if cached is None or entry.uid not in (None, _uid(cached)):
        return None
    meta = cached.get("metadata") or {}
    if meta.get("deletionTimestamp"):
        return None
    return {**cached, "metadata": {**meta, "deletionTimestamp": DELETION_MARK}}


def _key(kind: str, obj: Obj) -> Key:
    meta = obj.get("metadata") or {}
    return (kind, meta.get("namespace"), str(meta.get("name", "")))


def _version(obj: Obj) -> str:
    return str((obj.get("metadata") or {}).get("resourceVersion") or "")


def _uid(obj: Obj) -> str:
    return str((obj.get("metadata") or {}).get("uid") or "")


__all__ = ["OwnWrites"]
