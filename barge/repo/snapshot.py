"""The snapshot manifest, typed: what one backup recorded, as stored (encrypted JSON) in the
repository (docs/repository-format.md, "Snapshots").

Built in one place for filesystem and block backups, read in one place by everything else. A
manifest read back may have been damaged or crafted: ``Snapshot.from_json`` checks every field's
type and range and says which one is wrong, so no reader ever indexes a dict that lacks a key.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any

from barge.errors import CorruptionDetected

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
        read = _Reader(document, what)
        version = read.integer("version")
        if version != FORMAT_VERSION:
            raise CorruptionDetected(f"{what}: manifest version {version} is not {FORMAT_VERSION}")
        kind_text = read.text("kind")
        try:
            kind = SnapshotKind(kind_text)
        except ValueError:
            raise CorruptionDetected(f"{what}: unknown snapshot kind {kind_text!r}") from None
        tree = read.optional_text("tree")
        return cls(
            kind=kind,
            time=read.text("time"),
            hostname=read.text("hostname"),
            paths=tuple(read.strings("paths")),
            tree=_blob_id(tree, what) if tree is not None else None,
            summary=SnapshotSummary(**read.integers("summary", SnapshotSummary.__dataclass_fields__)),
            tags=read.string_map("tags"),
            parent=read.optional_text("parent"),
            root=RootMetadata(**read.integers("root", RootMetadata.__dataclass_fields__))
            if "root" in read.document
            else None,
        )


def _blob_id(text: str, what: str) -> bytes:
    try:
        blob_id = bytes.fromhex(text)
    except ValueError:
        raise CorruptionDetected(f"{what}: tree ID {text[:70]!r} is not hexadecimal") from None
    if len(blob_id) != 32:
        raise CorruptionDetected(f"{what}: tree ID has {len(blob_id)} bytes, not 32")
    return blob_id


class _Reader:
    """Typed access to one JSON object; every failure names the field."""

    def __init__(self, document: object, what: str) -> None:
        if not isinstance(document, dict):
            raise CorruptionDetected(f"{what}: not a JSON object")
        self.document: dict[str, Any] = document
        self.what = what

    def _get(self, name: str) -> object:
        if name not in self.document:
            raise CorruptionDetected(f"{self.what}: field {name!r} is missing")
        return self.document[name]

    def _wrong(self, name: str, expected: str) -> CorruptionDetected:
        return CorruptionDetected(f"{self.what}: field {name!r} is not {expected}")

    def integer(self, name: str) -> int:
        value = self._get(name)
        if isinstance(value, bool) or not isinstance(value, int) or value < 0:
            raise self._wrong(name, "a whole number >= 0")
        return value

    def text(self, name: str) -> str:
        value = self._get(name)
        if not isinstance(value, str):
            raise self._wrong(name, "a string")
        return value

    def optional_text(self, name: str) -> str | None:
        value = self.document.get(name)
        if value is not None and not isinstance(value, str):
            raise self._wrong(name, "a string or null")
        return value

    def strings(self, name: str) -> list[str]:
        value = self._get(name)
        if not isinstance(value, list) or not all(isinstance(item, str) for item in value):
            raise self._wrong(name, "a list of strings")
        return value

    def string_map(self, name: str) -> dict[str, str]:
        value = self.document.get(name) or {}
        if not isinstance(value, dict) or not all(isinstance(v, str) for v in value.values()):
            raise self._wrong(name, "an object of strings")
        return dict(value)

    def integers(self, name: str, fields: Iterable[str]) -> dict[str, int]:
        """The object ``name``'s whole-number ``fields``."""
        inner = _Reader(self._get(name), f"{self.what} {name}")
        return {field_name: inner.integer(field_name) for field_name in fields}


__all__ = ["FORMAT_VERSION", "RootMetadata", "Snapshot", "SnapshotKind", "SnapshotSummary"]
