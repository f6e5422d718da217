"""Source entries: snapshot manifests findable by what they are a backup of, without listing them all.

A backup's parent is the newest snapshot of the same source. Reading every manifest to find it
costs one GET per snapshot in the repository; instead, each manifest gets a small empty object per
source it answers to, ``snapshots-by-source/<source id>/<time>-<snapshot id>``, so a lookup lists
one source's entries and reads only its candidates, newest first (docs/repository-format.md,
"Source entries").

A source is what ``Repository.latest_snapshot`` is asked for: the snapshot kind with its paths (the
CLI: ``barge backup PATH``), or the kind with the PVC the agent backs up (the volume identity
tags). Its ID is keyed by the repository's master keys, so a bucket reader learns neither the
PVC's name nor the paths, only how many snapshots each (anonymous) source has, and when.

Entries are hints, never trusted: anyone with write access to the bucket can put any name there.
A reader honours an entry only when the manifest it names loads, verifies, and would itself get
exactly that entry name (same source, same time); anything else is skipped.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from datetime import UTC, datetime
from typing import NamedTuple

from barge.repo.crypto import MasterKeys
from barge.repo.objects import parse_hex_id
from barge.repo.snapshot import Snapshot, SnapshotKind

SOURCES_PREFIX = "snapshots-by-source/"
# Written when every manifest in the repository has its entries (at ``init``, and by garbage
# collection after it adds the missing ones): a source without entries then has no snapshots, and
# its lookup needs no full scan.
COMPLETE_KEY = f"{SOURCES_PREFIX}complete"
NAMESPACE_TAG = "barge.io/source-namespace"
PVC_TAG = "barge.io/source-pvc"
_TIME_DIGITS = 20  # microseconds since 1970, zero-padded: names sort by time


class Entry(NamedTuple):
    key: str
    source_id: str  # 64 hex
    time: int  # microseconds since 1970 (0 when the manifest's time does not parse)
    snapshot_id: str  # 64 hex


def snapshot_sources(snapshot: Snapshot) -> list[bytes]:
    """Every source ``snapshot`` answers to: its paths, and its volume when it carries the tags."""
    sources = [_paths_source(snapshot.kind, list(snapshot.paths))]
    volume = _volume_source(snapshot.kind, snapshot.tags)
    return sources if volume is None else [*sources, volume]


def query_source(
    kind: SnapshotKind, paths: Sequence[str] | None, tags: Mapping[str, str] | None
) -> bytes | None:
    """The source whose entries hold every snapshot matching this query (None: no source does, so
    only reading every manifest answers it)."""
    volume = _volume_source(kind, tags or {})
    if volume is not None:
        return volume
    return _paths_source(kind, list(paths)) if paths is not None else None


def _paths_source(kind: SnapshotKind, paths: list[str]) -> bytes:
    return json.dumps(["paths", kind.value, paths]).encode()


def _volume_source(kind: SnapshotKind, tags: Mapping[str, str]) -> bytes | None:
    if NAMESPACE_TAG not in tags or PVC_TAG not in tags:
        return None
    return json.dumps(["volume", kind.value, tags[NAMESPACE_TAG], tags[PVC_TAG]]).encode()


def source_prefix(keys: MasterKeys, source: bytes) -> str:
    return f"{SOURCES_PREFIX}{keys.source_id(source).hex()}/"


def entry_keys(keys: MasterKeys, snapshot_id: str, snapshot: Snapshot) -> list[str]:
    """The entry names of ``snapshot``: exactly these, and only these, are honoured."""
    name = f"{_time_micros(snapshot.time):0{_TIME_DIGITS}d}-{snapshot_id}"
    return [source_prefix(keys, source) + name for source in snapshot_sources(snapshot)]


def parse_entry(key: str) -> Entry | None:
    """The parts of an entry's name; None for any other key (check reports those)."""
    parts = key.removeprefix(SOURCES_PREFIX).split("/") if key.startswith(SOURCES_PREFIX) else []
    if len(parts) != 2 or parse_hex_id(parts[0]) is None:
        return None
    time, _, snapshot_id = parts[1].partition("-")
    if len(time) != _TIME_DIGITS or not time.isascii() or not time.isdigit():
        return None
    if parse_hex_id(snapshot_id) is None:
        return None
    return Entry(key, parts[0], int(time), snapshot_id)


def is_sources_object(key: str) -> bool:
    return key == COMPLETE_KEY or parse_entry(key) is not None


def newest_first(found: list[Entry]) -> list[Entry]:
    return sorted(found, key=lambda entry: (entry.time, entry.snapshot_id), reverse=True)


def _time_micros(text: str) -> int:
    """A manifest's ISO 8601 time as microseconds since 1970 (a time without a zone is UTC, as
    Barge writes it); 0 for one that does not parse or lies before 1970."""
    try:
        moment = datetime.fromisoformat(text)
    except ValueError:
        return 0
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    since = moment - datetime(1970, 1, 1, tzinfo=UTC)
    micros = (since.days * 86400 + since.seconds) * 1_000_000 + since.microseconds
    return max(micros, 0)


__all__ = [
    "COMPLETE_KEY",
    "SOURCES_PREFIX",
    "Entry",
    "entry_keys",
    "is_sources_object",
    "newest_first",
    "parse_entry",
    "query_source",
    "snapshot_sources",
    "source_prefix",
]
