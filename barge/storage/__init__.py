"""Object storage behind one small interface.

The repository engine needs only these operations, so every backend (local directory, S3, ...)
implements exactly them and passes the same conformance suite (``tests/storage_conformance.py``).
Keys are ``/``-separated relative paths such as ``data/ab/abcdef...``.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import datetime
from typing import Protocol

from barge.errors import NotFound, PermanentError


class ObjectNotFound(NotFound):
    """The key does not exist in the store."""


class ObjectExists(PermanentError):
    """A create-only write found the key already present."""


@dataclass(frozen=True)
class Credentials:
    """What a backend's credentials file holds, handed over in memory (the agent reads it from a
    Secret) so that it is never written to a disk. ``source`` names it in messages (``Secret
    velero/cloud-credentials key cloud``); the content never appears in a message or a repr."""

    content: bytes = field(repr=False)
    source: str


@dataclass(frozen=True)
class ObjectInfo:
    key: str
    size: int
    modified: datetime  # the store's own clock, never the writer's: used for time-window safety


class ObjectStore(Protocol):
    """What Barge needs from object storage; every method is safe to call from many threads."""

    def describe(self) -> str:
        """Where the objects live, for messages (never includes credentials)."""
        ...

    def put(self, key: str, data: bytes | memoryview, *, overwrite: bool = False) -> None:
        """Store ``data`` durably and verified; ObjectExists if ``key`` exists and not ``overwrite``."""
        ...

    def get(self, key: str) -> bytes:
        """The whole object; ObjectNotFound if absent."""
        ...

    def get_range(self, key: str, offset: int, length: int) -> bytes:
        """``length`` bytes at ``offset``; a negative ``offset`` counts from the end (a tail read)."""
        ...

    def stat(self, key: str) -> ObjectInfo: ...

    def list(self, prefix: str) -> Iterator[ObjectInfo]:
        """Every object whose key starts with ``prefix``, in lexicographic key order."""
        ...

    def folders(self, prefix: str) -> tuple[str, ...]:
        """The folders directly below the folder ``prefix`` ("" or ending in "/"): the next path
        segment of every key below it that has one more "/", sorted. One listing request per
        thousand folders (a delimiter listing), however many objects lie below them."""
        ...

    def delete(self, key: str) -> None:
        """Remove ``key``; deleting an absent key is not an error (deletes are retried)."""
        ...
