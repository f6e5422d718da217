"""The snapshot manifest, typed: what one backup recorded, as stored (encrypted JSON) in the
repository (docs/repository-format.md, "Snapshots").

Built in one place for filesystem and block backups, read in one place by everything else. A
manifest read back may have been damaged or crafted: ``Snapshot.from_json`` checks every field's
type and range and says which one is wrong, so no reader ever indexes a dict that lacks a key.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any

from barge.errors import CorruptionDetected
from barge.repo.objects import Fields, parse_hex_id

FORMAT_VERSION = 1


class SnapshotKind(StrEnum):
    FILESYSTEM = "fs"  # a directory tree
    BLOCK = "block"  # one device image


@dataclass(frozen=True)
class SnapshotSummary:
    """What the backup saw and stored (bytes are the volume's, before deduplication)."""

    files: int = 0
    dirs: int = 0
    bytes_total: int = 0
    bytes_read: int = 0
    bytes_new: int = 0
    bytes_stored: int = 0
    files_unchanged: int = 0
    skipped: int = 0


@dataclass(frozen=True)
class RootMetadata:
    """The backed-up directory's own mode, owner and mtime (filesystem snapshots)."""

    mode: int
    uid: int
    gid: int
    mtime_ns: int


@dataclass(frozen=True)
class Snapshot:
    kind: SnapshotKind
    time: str  # ISO 8601, when the backup finished
    hostname: str
    paths: tuple[str, ...]
    tree: bytes | None  # the root tree blob's ID (None: an empty filesystem snapshot)
    summary: SnapshotSummary
    tags: Mapping[str, str] = field(default_factory=dict)
    parent: str | None = None  # the snapshot whose unchanged files this one reused
    root: RootMetadata | None = None  # filesystem snapshots

    def to_json(self) -> dict[str, Any]:
        document: dict[str, Any] = {
            "version": FORMAT_VERSION,
            "kind": self.kind.value,
            "time": self.time,
            "hostname": self.hostname,
            "paths": list(self.paths),
            "tags": dict(self.tags),
            "parent": self.parent,
            "tree": self.tree.hex() if self.tree is not None else None,
            "summary": vars(self.summary).copy(),
        }
        if self.root is not None:
            document["root"] = vars(self.root).copy()
        return document

    @classmethod
    def from_json(cls, document: object, what: str) -> Snapshot:
        """Parse a stored manifest; ``what`` names it in errors ("snapshot 1a2b..."). Raises
        CorruptionDetected for anything that is not a manifest this version wrote."""
        read = Fields(document, what)
        version = read.integer("version")
        if version != FORMAT_VERSION:
            raise CorruptionDetected(f"{what}: manifest version {version} is not {FORMAT_VERSION}")
        kind_text = read.text("kind")
        try:
            kind = SnapshotKind(kind_text)
        except ValueError:
            raise CorruptionDetected(f"{what}: unknown snapshot kind {kind_text[:70]!r}") from None
        tree = read.optional_text("tree")
        parent = read.optional_text("parent")
        if parent is not None and parse_hex_id(parent) is None:
            raise read.wrong("parent", "a snapshot ID (64 hex digits) or null")
        summary = read.inner("summary")
        return cls(
            kind=kind,
            time=read.text("time"),
            hostname=read.text("hostname"),
            paths=tuple(read.strings("paths")),
            tree=_blob_id(tree, what) if tree is not None else None,
            summary=SnapshotSummary(**{name: summary.integer(name) for name in _SUMMARY_FIELDS}),
            tags=read.string_map("tags"),
            parent=parent,
            root=_root(read.inner("root")) if read.has("root") else None,
        )


_SUMMARY_FIELDS = tuple(SnapshotSummary.__dataclass_fields__)
_ID_MAX = 2**32 - 1


def _root(read: Fields) -> RootMetadata:
    return RootMetadata(
        mode=read.integer("mode", high=0o177777),
        uid=read.integer("uid", high=_ID_MAX),
        gid=read.integer("gid", high=_ID_MAX),
        mtime_ns=read.time_ns("mtime_ns"),
    )


def _blob_id(text: str, what: str) -> bytes:
    try:
        blob_id = bytes.fromhex(text)
    except ValueError:
        raise CorruptionDetected(f"{what}: tree ID {text[:70]!r} is not hexadecimal") from None
    if len(blob_id) != 32:
        raise CorruptionDetected(f"{what}: tree ID has {len(blob_id)} bytes, not 32")
    return blob_id


__all__ = ["FORMAT_VERSION", "RootMetadata", "Snapshot", "SnapshotKind", "SnapshotSummary"]
