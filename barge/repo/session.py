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
from datetime import datetime, timedelta

from barge.clock import Clock
from barge.errors import TemporaryError
from barge.storage import ObjectNotFound, ObjectStore

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
    sessions = []
    for info in store.list("sessions/"):
        try:
            body = json.loads(store.get(info.key))
            started_text = body.get("started_store")
            started = datetime.fromisoformat(started_text) if started_text else info.modified
        except (ObjectNotFound, ValueError, KeyError):
            continue  # ended while we looked, or half-written: the lease time still counts
        sessions.append(SessionInfo(info.key, started, info.modified))
    return sessions


def condemned_packs(store: ObjectStore) -> frozenset[bytes]:
    """Packs garbage collection has condemned; new sessions must not start depending on them."""
    try:
        doc = json.loads(store.get(PENDING_KEY))
    except ObjectNotFound:
        return frozenset()
    return frozenset(bytes.fromhex(p) for p in doc["packs"])


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
