"""Leases that tell garbage collection who might still use what it wants to delete.

Every writer (backup) and every long reader (restore) holds a session object in the store,
rewritten every ``lease / 3`` by a background thread. Garbage collection deletes condemned packs
only after every session that began before the packs were condemned has ended or let its lease
expire; times are the store's own, so client clocks never matter.
"""

from __future__ import annotations

import contextlib
import json
import os
import socket
import threading
import uuid
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

from barge.clock import Clock
from barge.errors import CorruptionDetected, TemporaryError
from barge.repo.objects import MAX_PENDING, MAX_SMALL_OBJECT, parse_hex_id, read_json
from barge.storage import ObjectInfo, ObjectNotFound, ObjectStore

DEFAULT_LEASE = timedelta(minutes=15)
PENDING_KEY = "gc/pending"


@dataclass(frozen=True)
class SessionInfo:
    key: str
    started: datetime  # the store's clock
    renewed: datetime  # the store's clock


def store_now(store: ObjectStore) -> datetime:
    """The store's current time: write a probe object and read back its modification time."""
    key = f"gc/clock-{uuid.uuid4().hex}"
    store.put(key, b"", overwrite=True)
    try:
        return store.stat(key).modified
    finally:
        store.delete(key)


def list_sessions(store: ObjectStore) -> list[SessionInfo]:
    """Every live-looking session. One whose body cannot be read as a session counts as started
    at the dawn of time: it holds garbage collection back until its lease runs out (fail closed)."""
    sessions = []
    for info in store.list("sessions/"):
        try:
            started = _session_start(store, info)
        except ObjectNotFound:
            continue  # ended while we looked
        sessions.append(SessionInfo(info.key, started or _DAWN, info.modified))
    return sessions


_DAWN = datetime.min.replace(tzinfo=UTC)


def _session_start(store: ObjectStore, info: ObjectInfo) -> datetime | None:
    """When the session began by the store's clock; None when its body says nothing usable."""
    try:
        read = read_json(store, info.key, MAX_SMALL_OBJECT, info.key, info.size)
        text = read.optional_text("started_store")
        if text is None:
            return info.modified  # written, not yet rewritten with its start: it started just now
        started = datetime.fromisoformat(text)
    except (CorruptionDetected, ValueError):
        return None
    return started if started.tzinfo is not None else None


@dataclass(frozen=True)
class PendingMark:
    """``gc/pending``: the packs garbage collection condemned, and when (the store's clock)."""

    marked: datetime
    packs: frozenset[bytes]


def read_pending(store: ObjectStore) -> PendingMark | None:
    """The condemned packs, None when nothing is condemned; CorruptionDetected when the object
    is not a list of pack IDs (callers decide what is safe then)."""
    try:
        info = store.stat(PENDING_KEY)
        read = read_json(store, PENDING_KEY, MAX_PENDING, PENDING_KEY, info.size)
    except ObjectNotFound:
        return None
    packs = [parse_hex_id(text) for text in read.list("packs")]
    if any(pack_id is None for pack_id in packs):
        raise read.wrong("packs", "a list of pack IDs (64 hex digits)")
    return PendingMark(info.modified, frozenset(p for p in packs if p is not None))


def condemned_packs(store: ObjectStore) -> frozenset[bytes]:
    """Packs garbage collection has condemned; new sessions must not start depending on them.

    A ``gc/pending`` that is not one reads as nothing condemned: garbage collection never sweeps
    on it but marks afresh, and a fresh mark waits for every session older than itself."""
    try:
        pending = read_pending(store)
    except CorruptionDetected:
        return frozenset()
    return pending.packs if pending is not None else frozenset()


class Session:
    """A lease in ``sessions/``, renewed in the background until :meth:`end`."""

    def __init__(
        self, store: ObjectStore, clock: Clock, purpose: str, lease: timedelta = DEFAULT_LEASE
    ) -> None:
        self.store = store
        self.clock = clock
        self.lease = lease
        self.key = f"sessions/{uuid.uuid4().hex}"
        self._body = {"host": socket.gethostname(), "pid": os.getpid(), "purpose": purpose}
        store.put(self.key, json.dumps(self._body).encode(), overwrite=True)
        self._body["started_store"] = store.stat(self.key).modified.isoformat()
        self._renewed_at = clock.monotonic()
        self._renew()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._renew_loop, name="barge-lease", daemon=True)
        self._thread.start()

    def _renew(self) -> None:
        self.store.put(self.key, json.dumps(self._body).encode(), overwrite=True)
        self._renewed_at = self.clock.monotonic()

    def _renew_loop(self) -> None:
        while not self._stop.wait(self.lease.total_seconds() / 3):
            # A failed renewal is retried next period; ensure_valid() refuses to commit if they all fail.
            with contextlib.suppress(Exception):
                self._renew()

    def ensure_valid(self, margin: timedelta = timedelta(minutes=1)) -> None:
        """Raise unless the lease was renewed recently enough that garbage collection honours it.

        Called right before a writer commits a snapshot: a writer that was stalled (partitioned,
        frozen) past its lease may reference data collected meanwhile, so it must not commit.
        """
        age = self.clock.monotonic() - self._renewed_at
        if age > (self.lease - margin).total_seconds():
            raise TemporaryError(
                f"repository lease not renewed for {age:.0f}s (limit {self.lease - margin}); "
                "not committing a snapshot that garbage collection may have invalidated - retry the backup"
            )

    def end(self) -> None:
        self._stop.set()
        self._thread.join(timeout=5)
        self.store.delete(self.key)
