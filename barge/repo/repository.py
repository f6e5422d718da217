"""Opening, reading and writing a repository over any ObjectStore.

Layout under the store (see docs/repository-format.md):
``config`` (sealed settings), ``keys/<id>`` (password-wrapped master keys), ``data/xx/<pack id>``,
``index/<index id>``, ``snapshots/<snapshot id>``, ``snapshots-by-source/...`` (manifests by
source, barge/repo/sources.py), ``sessions/<id>`` (live writer leases).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import threading
import uuid
from collections.abc import Callable, Iterable, Iterator, Mapping
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import zstandard

from barge.clock import Clock, SystemClock
from barge.errors import CorruptionDetected, InvalidInput, NotFound, TemporaryError
from barge.repo.crypto import (
    SEAL_OVERHEAD,
    KdfParams,
    KeyObject,
    MasterKeys,
    WrongPassword,
    unwrap_master_keys,
    wrap_master_keys,
)
from barge.repo.index import Index, decode_index, encode_indexes, index_key, open_index, walk_index
from barge.repo.index_layers import Layer, ObjectRecords, cache_key, refresh_layers
from barge.repo.objects import (
    MAX_CONFIG,
    MAX_INDEX_OBJECT,
    MAX_KEY_OBJECT,
    MAX_MANIFEST,
    MAX_TREE,
    Fields,
    parse_hex_id,
    parse_json,
    read_bounded,
)
from barge.repo.pack import (
    BlobLocation,
    BlobType,
    PackBuilder,
    header_tail_length,
    open_blob,
    pack_id_from_key,
    pack_key,
    parse_pack_header,
    seal_blob,
    sealed_header_length,
)
from barge.repo.session import Session, condemned_packs
from barge.repo.snapshot import Snapshot, SnapshotKind
from barge.repo.sources import (
    COMPLETE_KEY,
    entry_keys,
    newest_first,
    parse_entry,
    query_source,
    snapshot_sources,
    source_prefix,
)
from barge.repo.tree import Node, decode_tree
from barge.storage import ObjectExists, ObjectInfo, ObjectNotFound, ObjectStore

FORMAT_VERSION = 1
_CONFIG_MAGIC = b"BARGE-REPOSITORY v1\n"
_CONFIG_AAD = b"barge:config:v1"
_SNAPSHOT_AAD = b"barge:snapshot:v1"
MIB = 1024 * 1024
INDEX_FETCH_BYTES = 64 * MIB  # sealed index objects fetched at once while the local index is built
RUN_BYTES = 4 * MIB  # adjacent blobs read with one request by ``read_blobs``, at most


Located = tuple[BlobLocation, bytes]  # where a blob is, and its ID


def _adjacent_runs(located: Iterable[Located]) -> Iterator[list[Located]]:
    """The blobs in pack and offset order, grouped in runs that are contiguous in one pack and
    span at most ``RUN_BYTES`` (one blob larger than that is a run of its own)."""
    run: list[Located] = []
    for item in sorted(located, key=lambda lb: (lb[0].pack_id, lb[0].offset)):
        if run and not _extends(run, item[0]):
            yield run
            run = []
        run.append(item)
    if run:
        yield run


def _extends(run: list[Located], location: BlobLocation) -> bool:
    first, last = run[0][0], run[-1][0]
    return (
        location.pack_id == first.pack_id
        and location.offset == last.offset + last.stored_length
        and location.offset + location.stored_length - first.offset <= RUN_BYTES
    )


class RepositoryNotFound(NotFound):
    """No repository is initialized at the location."""


@dataclass(frozen=True)
class RepositorySettings:
    """Chosen at ``init`` and fixed for the repository's life (they shape dedup)."""

    chunk_min: int = 512 * 1024
    chunk_avg: int = 1 * MIB
    chunk_max: int = 8 * MIB
    pack_target: int = 32 * MIB
    compression_level: int = 3  # zstd; 0 disables compression

    def problem(self) -> str | None:
        """Why these settings cannot work (the chunker's and the format's ranges), or None."""
        if not 64 <= self.chunk_min <= MIB or not 256 <= self.chunk_avg - self.chunk_min <= 4 * MIB:
            return "chunk_min must be 64 B..1 MiB and chunk_avg 256 B..4 MiB above it"
        if not max(1024, self.chunk_avg) <= self.chunk_max <= 16 * MIB:
            return "chunk_max must be from chunk_avg (at least 1 KiB) to 16 MiB"
        if not 1024 <= self.pack_target <= 1024 * MIB or not 0 <= self.compression_level <= 22:
            return "pack_target must be 1 KiB..1 GiB and compression_level 0..22"
        return None


_SETTINGS_FIELDS = tuple(RepositorySettings.__dataclass_fields__)


@dataclass(frozen=True)
class RepositoryConfig:
    version: int
    repository_id: str
    settings: RepositorySettings


def _snapshot_key(snapshot_id: str) -> str:
    return f"snapshots/{snapshot_id}"


def _validate_snapshot_id(snapshot_id: str) -> str:
    if len(snapshot_id) != 64 or any(c not in "0123456789abcdef" for c in snapshot_id):
        raise InvalidInput(f"{snapshot_id!r} is not a snapshot ID (64 lowercase hex digits)")
    return snapshot_id


def _parse_config(plain: bytes) -> RepositoryConfig:
    read = Fields(parse_json(plain, "repository config"), "repository config")
    if read.integer("version") != FORMAT_VERSION:
        raise CorruptionDetected("repository format version is not supported by this Barge")
    repository_id = read.text("id")
    if len(repository_id) != 32 or repository_id.strip("0123456789abcdef"):
        raise read.wrong("id", "32 hex digits")
    settings = RepositorySettings(**{name: read.integer(name) for name in _SETTINGS_FIELDS})
    if problem := settings.problem():
        raise CorruptionDetected(f"repository config: {problem}")
    return RepositoryConfig(FORMAT_VERSION, repository_id, settings)


def key_object_name(key: str) -> bool:
    """Whether ``key`` is named as a key object is (``keys/<32 hex>``)."""
    name = key.removeprefix("keys/")
    return len(name) == 32 and not name.strip("0123456789abcdef")


def _well_formed_key(store: ObjectStore, info: ObjectInfo) -> bool:
    if not key_object_name(info.key):
        return False
    try:
        KeyObject.parse(read_bounded(store, info.key, MAX_KEY_OBJECT, info.key, info.size), info.key)
    except (CorruptionDetected, ObjectNotFound):
        return False
    return True


def index_object_id(key: str) -> bytes | None:
    """The ID an ``index/`` key names; None for any other object."""
    return parse_hex_id(key.removeprefix("index/")) if key.startswith("index/") else None


def _exists(store: ObjectStore, key: str) -> bool:
    try:
        store.stat(key)
    except ObjectNotFound:
        return False
    return True


@dataclass
class IndexObjects:
    """What a set of index objects records: packs (pack -> blob -> location), which object named
    each pack, and a line for each object that could not be read."""

    packs: dict[bytes, dict[bytes, BlobLocation]] = field(default_factory=dict)
    origin: dict[bytes, bytes] = field(default_factory=dict)
    problems: list[str] = field(default_factory=list)


class Repository:
    """An open repository: keys unlocked, index loaded. Reads are thread-safe."""

    def __init__(
        self,
        store: ObjectStore,
        keys: MasterKeys,
        config: RepositoryConfig,
        key_name: str,
        clock: Clock,
        *,
        cache_dir: Path | None = None,
    ) -> None:
        self.store = store
        self.keys = keys
        self.config = config
        self.key_name = key_name
        self.clock = clock
        self.cache_dir = cache_dir  # for the local index; None: a temporary file per open
        self.index = Index()
        self.index_problems: list[str] = []  # index objects load_index could not read

    # -- lifecycle -------------------------------------------------------------------------------

    @classmethod
    def init(
        cls,
        store: ObjectStore,
        password: bytes,
        settings: RepositorySettings | None = None,
        kdf: KdfParams | None = None,
        clock: Clock | None = None,
    ) -> Repository:
        if _exists(store, "config"):
            raise InvalidInput(f"a repository already exists at {store.describe()}")
        if settings is not None and (problem := settings.problem()):
            raise InvalidInput(f"repository settings: {problem}")
        keys = MasterKeys.generate()
        config = RepositoryConfig(FORMAT_VERSION, uuid.uuid4().hex, settings or RepositorySettings())
        key_name = f"keys/{uuid.uuid4().hex}"
        store.put(key_name, wrap_master_keys(keys, password, kdf or KdfParams()))
        document = json.dumps(
            {"version": config.version, "id": config.repository_id, **asdict(config.settings)}
        )
        try:
            store.put("config", _CONFIG_MAGIC + keys.seal(document.encode(), _CONFIG_AAD))
        except ObjectExists:
            store.delete(key_name)
            raise InvalidInput(f"a repository already exists at {store.describe()}") from None
        with contextlib.suppress(ObjectExists):
            store.put(COMPLETE_KEY, b"")  # no manifest yet, so none lacks its source entries
        return cls(store, keys, config, key_name, clock or SystemClock())

    @classmethod
    def open(
        cls,
        store: ObjectStore,
        password: bytes,
        clock: Clock | None = None,
        *,
        with_index: bool = True,
        cache_dir: Path | None = None,
    ) -> Repository:
        """Unlock the repository; ``with_index=False`` skips reading the index, for work on snapshot
        manifests only (listing, forgetting). ``cache_dir`` keeps the index on local disk between
        opens (index_layers: only index objects not seen before are then fetched)."""
        try:
            sealed_config = read_bounded(store, "config", MAX_CONFIG, "repository config")
        except ObjectNotFound:
            raise RepositoryNotFound(
                f"no Barge repository at {store.describe()} (run `barge repo init` first)"
            ) from None
        if not sealed_config.startswith(_CONFIG_MAGIC):
            raise CorruptionDetected(f"{store.describe()}/config is not a Barge repository config")
        keys, key_name = cls._unlock(store, password)
        plain = keys.open(sealed_config[len(_CONFIG_MAGIC) :], _CONFIG_AAD, "repository config")
        repo = cls(store, keys, _parse_config(plain), key_name, clock or SystemClock(), cache_dir=cache_dir)
        if with_index:
            repo.load_index()
        return repo

    @staticmethod
    def _unlock(store: ObjectStore, password: bytes) -> tuple[MasterKeys, str]:
        """The master keys from the first key object the password opens. A malformed key object
        is passed over (and named if none opens), so one bad object never locks everyone out."""
        key_objects = [info for info in store.list("keys/") if key_object_name(info.key)]
        if not key_objects:
            raise CorruptionDetected(f"{store.describe()} has a config but no key objects")
        damaged: list[str] = []
        for info in key_objects:
            try:
                data = read_bounded(store, info.key, MAX_KEY_OBJECT, info.key, info.size)
                return unwrap_master_keys(data, password, info.key), info.key
            except WrongPassword:
                continue
            except CorruptionDetected as err:
                damaged.append(str(err))
            except ObjectNotFound:
                continue  # removed meanwhile (a password change)
        if len(damaged) == len(key_objects):
            raise CorruptionDetected(f"no key object of {store.describe()} is usable: {'; '.join(damaged)}")
        note = f" ({len(damaged)} damaged key object(s): {'; '.join(damaged)})" if damaged else ""
        raise WrongPassword(f"wrong password for the repository at {store.describe()}{note}")

    def change_password(self, new_password: bytes, kdf: KdfParams | None = None) -> None:
        """Add a key object for the new password, then remove the one this session opened with."""
        new_name = self.add_password(new_password, kdf)
        self.store.delete(self.key_name)
        self.key_name = new_name

    def add_password(self, new_password: bytes, kdf: KdfParams | None = None) -> str:
        """Another key object wrapping the same master keys: the repository then opens with either
        password (how a repository moves to a new password while writers still use the old one)."""
        new_name = f"keys/{uuid.uuid4().hex}"
        self.store.put(new_name, wrap_master_keys(self.keys, new_password, kdf or KdfParams()))
        return new_name

    def remove_password(self) -> None:
        """Remove the key object this session opened with, unless it is the last one: only another
        well-formed key object counts (a stray or malformed one opens nothing)."""
        if not any(
            info.key != self.key_name and _well_formed_key(self.store, info)
            for info in self.store.list("keys/")
        ):
            raise InvalidInput(
                f"this is the only password of the repository at {self.store.describe()}: "
                "add another first (barge key add)"
            )
        self.store.delete(self.key_name)

    # -- index -----------------------------------------------------------------------------------

    def load_index(self, *, cached: bool = True) -> None:
        """Merge every index object not superseded by another into a fresh index.

        The merged index lives on local disk (index_layers), in ``cache_dir`` when there is one:
        then only index objects no earlier open has seen are fetched. ``cached=False`` reads every
        index object again (check: damage in storage must not hide behind the cache). Where a blob
        sits in several packs, a copy outside the packs garbage collection has condemned wins. An
        index object that cannot be read is left out and named in ``index_problems``: its blobs
        read as missing, which garbage collection refuses to act on and the next backup repairs by
        indexing the packs again from their own headers.
        """
        condemned = condemned_packs(self.store)
        listed = {
            index_id: info.size for info in self.index_objects() if (index_id := index_object_id(info.key))
        }
        directory = self._index_cache() if cached else None
        try:
            layers, problems = self._refresh_index(directory, listed)
        except OSError:
            if directory is None:
                raise
            layers, problems = self._refresh_index(None, listed)  # the cache is full or read-only
        self.index, self.index_problems = Index(layers, frozenset(condemned)), problems

    def _refresh_index(
        self, directory: Path | None, listed: dict[bytes, int]
    ) -> tuple[list[Layer], list[str]]:
        return refresh_layers(
            directory,
            cache_key(self.keys.content_id),
            listed,
            lambda wanted: self._fetch_index_objects(wanted, listed),
            self.clock.now().timestamp(),
        )

    def _index_cache(self) -> Path | None:
        """This repository's directory in the cache; None (a temporary file) if it cannot be made."""
        if self.cache_dir is None:
            return None
        directory = self.cache_dir / "index" / self.config.repository_id
        try:
            directory.mkdir(mode=0o700, parents=True, exist_ok=True)
        except OSError:
            return None
        return directory

    def _fetch_index_objects(
        self, wanted: list[bytes], sizes: Mapping[bytes, int]
    ) -> Iterator[ObjectRecords | str]:
        """The ``wanted`` index objects decoded (or what is wrong with each), a few at a time: at
        most INDEX_FETCH_BYTES of sealed objects (or one) in memory."""
        with ThreadPoolExecutor(max_workers=8) as pool:
            batch: list[bytes] = []
            total = 0
            for index_id in wanted:
                if batch and total + sizes[index_id] > INDEX_FETCH_BYTES:
                    yield from pool.map(self._fetch_index_object, batch, [sizes[i] for i in batch])
                    batch, total = [], 0
                batch.append(index_id)
                total += sizes[index_id]
            yield from pool.map(self._fetch_index_object, batch, [sizes[i] for i in batch])

    def _fetch_index_object(self, index_id: bytes, size: int) -> ObjectRecords | str:
        what = f"index {index_id.hex()[:16]}"
        try:
            sealed = read_bounded(self.store, index_key(index_id), MAX_INDEX_OBJECT, what, size)
            plain = open_index(self.keys, index_id, sealed)
            superseded, packs = walk_index(plain, what)
        except CorruptionDetected as err:
            return str(err)
        except ObjectNotFound:
            return f"{what} vanished while being read (a garbage collection finished?)"
        return ObjectRecords(index_id, superseded, plain, packs)

    def index_objects(self) -> list[ObjectInfo]:
        """The index objects in storage (other names under ``index/`` are not index objects)."""
        return [info for info in self.store.list("index/") if index_object_id(info.key) is not None]

    def read_index_objects(self, objects: list[ObjectInfo]) -> IndexObjects:
        """The packs recorded in exactly these index objects, minus any that one of them
        supersedes, and what was wrong with those that could not be read."""
        with ThreadPoolExecutor(max_workers=8) as pool:
            decoded = list(pool.map(self._read_index_object, objects))
        found = IndexObjects(problems=[result for result in decoded if isinstance(result, str)])
        readable = [
            (index_object_id(info.key), result)
            for info, result in zip(objects, decoded, strict=True)
            if not isinstance(result, str)
        ]
        superseded = {old for _, (olds, _) in readable for old in olds}
        for index_id, (_, packs) in readable:
            if index_id is not None and index_id not in superseded:
                found.packs.update(packs)
                found.origin.update(dict.fromkeys(packs, index_id))
        return found

    def _read_index_object(
        self, info: ObjectInfo
    ) -> tuple[list[bytes], dict[bytes, dict[bytes, BlobLocation]]] | str:
        index_id = index_object_id(info.key)
        assert index_id is not None  # listed by index_objects
        try:
            sealed = read_bounded(
                self.store, info.key, MAX_INDEX_OBJECT, f"index {index_id.hex()[:16]}", info.size
            )
            return decode_index(self.keys, index_id, sealed)
        except CorruptionDetected as err:
            return str(err)
        except ObjectNotFound:
            return f"index {index_id.hex()[:16]} vanished while being read (a garbage collection finished?)"

    def read_pack_header(self, pack_id: bytes) -> dict[bytes, BlobLocation]:
        """Blob locations from the pack's own header (index rebuild, check, crash recovery)."""
        key = pack_key(pack_id)
        size = self.store.stat(key).size
        tail = self.store.get_range(key, -header_tail_length(), header_tail_length())
        needed = sealed_header_length(tail)
        if needed > len(tail) and needed <= size:
            tail = self.store.get_range(key, -needed, needed)
        return parse_pack_header(self.keys, pack_id, size, tail)

    # -- blobs -----------------------------------------------------------------------------------

    def read_blob(self, blob_id: bytes) -> bytes:
        location = self._location(blob_id)
        sealed = self._read_pack_range(location.pack_id, location.offset, location.stored_length)
        return open_blob(self.keys, blob_id, location, sealed)

    def read_blobs(self, blob_ids: Iterable[bytes]) -> dict[bytes, bytes]:
        """Several blobs, those side by side in a pack read with one ranged request (a run of at
        most ``RUN_BYTES``): a restore's small files sit next to each other in their packs, as
        they were backed up, so a batch of them costs one request instead of one each."""
        found: dict[bytes, bytes] = {}
        for run in _adjacent_runs((self._location(b), b) for b in set(blob_ids)):
            first, last = run[0][0], run[-1][0]
            length = last.offset + last.stored_length - first.offset
            data = memoryview(self._read_pack_range(first.pack_id, first.offset, length))
            for location, blob_id in run:
                start = location.offset - first.offset
                sealed = data[start : start + location.stored_length]
                found[blob_id] = open_blob(self.keys, blob_id, location, sealed)
        return found

    def _location(self, blob_id: bytes) -> BlobLocation:
        """Where the index says ``blob_id`` is, refused when no valid blob can be that large."""
        location = self.index.get(blob_id)
        if location is None:
            raise CorruptionDetected(f"blob {blob_id.hex()[:16]} is referenced but in no index")
        limit = MAX_TREE if location.blob_type is BlobType.TREE else self.config.settings.chunk_max
        if location.raw_length > limit or location.stored_length > limit + SEAL_OVERHEAD + 1:
            raise CorruptionDetected(
                f"blob {blob_id.hex()[:16]}: the index says {location.stored_length:,} bytes, larger than "
                f"any valid {location.blob_type.name.lower()} blob ({limit:,})"
            )
        return location

    def _read_pack_range(self, pack_id: bytes, offset: int, length: int) -> bytes:
        try:
            sealed = self.store.get_range(pack_key(pack_id), offset, length)
        except ObjectNotFound:
            raise CorruptionDetected(
                f"pack {pack_id.hex()[:16]} is in the index but missing from storage"
            ) from None
        if len(sealed) != length:
            raise CorruptionDetected(f"pack {pack_id.hex()[:16]} is truncated")
        return sealed

    def read_tree(self, tree_id: bytes) -> list[Node]:
        """The nodes of a directory's tree blob, errors naming it."""
        return decode_tree(self.read_blob(tree_id), f"tree {tree_id.hex()[:16]}")

    # -- snapshots -------------------------------------------------------------------------------

    def save_snapshot(self, snapshot: Snapshot) -> str:
        sealed = self.keys.seal(json.dumps(snapshot.to_json(), sort_keys=True).encode(), _SNAPSHOT_AAD)
        snapshot_id = hashlib.sha256(sealed).hexdigest()
        self.store.put(_snapshot_key(snapshot_id), sealed)
        self.write_source_entries(snapshot_id, snapshot)
        return snapshot_id

    def write_source_entries(self, snapshot_id: str, snapshot: Snapshot) -> None:
        """Make the manifest findable by its sources; after the manifest, so an entry never names a
        manifest about to be written. Entries are hints: one that failed to be written only makes
        lookups miss this snapshot as a parent (the backup then reads more), so the snapshot,
        already committed, is not reported as failed for it."""
        for key in entry_keys(self.keys, snapshot_id, snapshot):
            with contextlib.suppress(ObjectExists, TemporaryError):
                self.store.put(key, b"")

    def load_snapshot(self, snapshot_id: str, size: int | None = None) -> Snapshot:
        """The manifest of ``snapshot_id``; ``size`` (from a listing) saves a HEAD."""
        key = _snapshot_key(_validate_snapshot_id(snapshot_id))
        what = f"snapshot {snapshot_id[:16]}"
        try:
            sealed = read_bounded(self.store, key, MAX_MANIFEST, what, size)
        except ObjectNotFound:
            raise NotFound(f"snapshot {snapshot_id} does not exist in {self.store.describe()}") from None
        if hashlib.sha256(sealed).hexdigest() != snapshot_id:
            raise CorruptionDetected(f"{what}: content does not match its ID")
        return Snapshot.from_json(parse_json(self.keys.open(sealed, _SNAPSHOT_AAD, what), what), what)

    def snapshot_objects(self) -> list[ObjectInfo]:
        """The snapshot manifests in storage (other names under ``snapshots/`` are not manifests)."""
        return [info for info in self.store.list("snapshots/") if parse_hex_id(info.key[10:]) is not None]

    def snapshot_ids(self) -> list[str]:
        return [info.key.removeprefix("snapshots/") for info in self.snapshot_objects()]

    def read_snapshots(self) -> tuple[dict[str, Snapshot], dict[str, str]]:
        """Every manifest that reads, and what is wrong with each one that does not, by ID: one
        damaged manifest hides only itself."""
        snapshots: dict[str, Snapshot] = {}
        problems: dict[str, str] = {}
        for info in self.snapshot_objects():
            snapshot_id = info.key.removeprefix("snapshots/")
            try:
                snapshots[snapshot_id] = self.load_snapshot(snapshot_id, info.size)
            except CorruptionDetected as err:
                problems[snapshot_id] = str(err)
            except NotFound:
                continue  # forgotten meanwhile
        return snapshots, problems

    def latest_snapshot(
        self, kind: SnapshotKind, *, paths: list[str] | None = None, tags: Mapping[str, str] | None = None
    ) -> str | None:
        """The newest snapshot of ``kind`` whose paths equal ``paths`` and whose tags include ``tags``.

        The parent for an incremental backup: its unchanged files are reused without reading. A
        damaged manifest is never a parent (the backup then reads more, and check reports it).
        """

        def matches(snapshot: Snapshot) -> bool:
            if snapshot.kind is not kind or (paths is not None and list(snapshot.paths) != paths):
                return False
            return not tags or all(snapshot.tags.get(k) == v for k, v in tags.items())

        source = query_source(kind, paths, tags)
        if source is None:
            return self._latest_by_scan(matches, None)
        found = self._latest_by_entries(source, matches)
        if found is not None or _exists(self.store, COMPLETE_KEY):
            return found
        return self._latest_by_scan(matches, source)

    def _latest_by_entries(self, source: bytes, matches: Callable[[Snapshot], bool]) -> str | None:
        """One listing of the source's entries, then its manifests newest first, up to the first
        that matches. An entry counts only if its manifest reads and names it (docs: never trust
        the entry's name alone); the rest are skipped."""
        listed = self.store.list(source_prefix(self.keys, source))
        for entry in newest_first([entry for info in listed if (entry := parse_entry(info.key))]):
            try:
                snapshot = self.load_snapshot(entry.snapshot_id)
            except (CorruptionDetected, NotFound):
                continue  # damaged (check reports it) or forgotten since
            if entry.key in entry_keys(self.keys, entry.snapshot_id, snapshot) and matches(snapshot):
                return entry.snapshot_id
        return None

    def _latest_by_scan(self, matches: Callable[[Snapshot], bool], source: bytes | None) -> str | None:
        """Every manifest read: the only way before source entries existed. When the lookup was for
        ``source``, its snapshots' entries are written on the way, so that source pays this once."""
        best: tuple[str, str] | None = None
        for snapshot_id, snapshot in self.read_snapshots()[0].items():
            if source is not None and source in snapshot_sources(snapshot):
                self.write_source_entries(snapshot_id, snapshot)
            if matches(snapshot) and (best is None or snapshot.time > best[0]):
                best = (snapshot.time, snapshot_id)
        return best[1] if best else None

    def forget_snapshot(self, snapshot_id: str) -> None:
        """Remove the snapshot's manifest; its data stays until garbage collection reclaims it.

        A damaged manifest can be forgotten too: garbage collection refuses to run while one
        exists (it cannot tell what that snapshot references), and this is how it is cleared (its
        source entries, which only its content names, are left for garbage collection).
        The entries go first: a crash between leaves a snapshot that lookups miss, never an entry
        naming nothing."""
        try:
            snapshot: Snapshot | None = self.load_snapshot(snapshot_id)
        except CorruptionDetected:
            snapshot = None
        for key in entry_keys(self.keys, snapshot_id, snapshot) if snapshot else ():
            self.store.delete(key)
        self.store.delete(_snapshot_key(snapshot_id))

    def writer(self, **options: Any) -> RepositoryWriter:
        return RepositoryWriter(self, **options)

    def compressor(self) -> zstandard.ZstdCompressor | None:
        level = self.config.settings.compression_level
        return zstandard.ZstdCompressor(level=level) if level > 0 else None


@dataclass
class WriteStats:
    blobs_new: int = 0
    bytes_new: int = 0  # plaintext bytes of blobs this writer stored
    bytes_stored: int = 0  # sealed bytes uploaded in packs
    packs: int = 0
    packs_adopted: int = 0
    packs_missing: int = 0  # indexed but not in storage: their blobs were stored again
    pending: set[bytes] = field(default_factory=set, repr=False)


class RepositoryWriter:
    """One writer session: new blobs are sealed, packed and uploaded; index objects written as
    packs land. Many writers (threads, processes, nodes) may write one repository at once: every
    object they create has a unique content-derived name, so none overwrites another."""

    def __init__(
        self,
        repo: Repository,
        *,
        upload_threads: int = 2,
        seal_threads: int = os.cpu_count() or 2,
        max_packs_in_flight: int = 3,
        index_flush_seconds: float = 30.0,
        avoid_packs: frozenset[bytes] = frozenset(),
    ) -> None:
        self.repo = repo
        self.stats = WriteStats()
        self._lock = threading.Lock()
        self._packers = {BlobType.DATA: PackBuilder(), BlobType.TREE: PackBuilder()}
        self._uploads = ThreadPoolExecutor(max_workers=upload_threads, thread_name_prefix="barge-upload")
        self._sealers = ThreadPoolExecutor(max_workers=seal_threads, thread_name_prefix="barge-seal")
        self._in_flight = threading.BoundedSemaphore(max_packs_in_flight)
        self._futures: list[Future[None]] = []
        self._unindexed: dict[bytes, dict[bytes, BlobLocation]] = {}
        self._index_flush_seconds = index_flush_seconds
        self._last_index_flush = repo.clock.monotonic()
        self._compressors = threading.local()
        self.session = Session(repo.store, repo.clock, "write")
        # Blobs in packs that garbage collection condemned are invisible to this writer: it stores
        # its own copy instead of starting to depend on something about to be deleted.
        # ``avoid_packs`` does the same for packs garbage collection is about to condemn (repacking).
        self._condemned = condemned_packs(repo.store) | avoid_packs
        # Sizes of the packs this writer knows are in storage (-1: not there). Deduplicating
        # against a blob whose pack is gone would commit a snapshot that cannot be restored (an
        # index object put back from an old copy of the bucket names packs gc deleted since), so
        # has_blob counts a blob as stored only where its pack is known to hold it. Known from
        # the listing adopt_orphan_packs makes anyway (no extra request), from this writer's own
        # uploads, or else from one HEAD per pack, the first time a blob in it is deduplicated.
        self._pack_sizes: dict[bytes, int] = {}
        self._listed = False
        self._closed = False

    def __enter__(self) -> RepositoryWriter:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def has_blob(self, blob_id: bytes) -> bool:
        """True when ``blob_id`` is stored (or being stored) and safe for this writer to reference."""
        if blob_id in self.stats.pending:
            return True
        location = self.repo.index.get(blob_id)
        return location is not None and location.pack_id not in self._condemned and self._in_storage(location)

    def _in_storage(self, location: BlobLocation) -> bool:
        """Whether the pack ``location`` names is in storage and long enough to hold the blob."""
        size = self._pack_sizes.get(location.pack_id)
        if size is None:
            size = -1 if self._listed else self._pack_size(location.pack_id)
            self._pack_sizes[location.pack_id] = size
        return location.offset + location.stored_length <= size

    def _pack_size(self, pack_id: bytes) -> int:
        try:
            return self.repo.store.stat(pack_key(pack_id)).size
        except ObjectNotFound:
            return -1

    def _compressor(self) -> zstandard.ZstdCompressor | None:
        if not hasattr(self._compressors, "value"):
            self._compressors.value = self.repo.compressor()
        compressor: zstandard.ZstdCompressor | None = self._compressors.value
        return compressor

    def add_blob(self, blob_type: BlobType, data: bytes | memoryview, blob_id: bytes | None = None) -> bytes:
        """Store ``data`` unless an identical blob exists; returns its ID. Blocks when uploads lag."""
        self._raise_upload_errors()
        blob_id = blob_id or self.repo.keys.content_id_of(data)
        with self._lock:
            if self.has_blob(blob_id):
                return blob_id
            self.stats.pending.add(blob_id)
        sealed = seal_blob(self.repo.keys, blob_type, data, self._compressor(), blob_id)
        full: PackBuilder | None = None
        with self._lock:
            packer = self._packers[blob_type]
            packer.add(sealed)
            self.stats.blobs_new += 1
            self.stats.bytes_new += sealed.raw_length
            if packer.size >= self.repo.config.settings.pack_target:
                full, self._packers[blob_type] = packer, PackBuilder()
        if full is not None:
            self._submit(full)
        return blob_id

    def add_blob_later(self, blob_type: BlobType, data: bytes | memoryview) -> Future[bytes]:
        """``add_blob`` on the writer's sealing threads, so one stream's chunks are hashed,
        compressed and encrypted on every core while its reader cuts the next: BLAKE3, zstd and
        AES-GCM release the interpreter lock. The caller bounds how many it has in flight, and
        keeps ``data`` unchanged until the future is done (nothing holds it after that)."""
        return self._sealers.submit(self.add_blob, blob_type, data)

    def _submit(self, packer: PackBuilder) -> None:
        self._in_flight.acquire()
        try:
            self._futures.append(self._uploads.submit(self._upload, packer))
        except BaseException:
            self._in_flight.release()
            raise

    def _upload(self, packer: PackBuilder) -> None:
        try:
            pack_id, data, locations = packer.finish(self.repo.keys)
            # The name is the content's hash: if it exists, an identical pack is already there.
            with contextlib.suppress(ObjectExists):
                self.repo.store.put(pack_key(pack_id), data)
            with self._lock:
                # This copy wins over any location the index had: that one was unusable.
                self.repo.index.add_pack(pack_id, locations, replace=True)
                self._pack_sizes[pack_id] = len(data)
                self.stats.pending.difference_update(locations)
                self.stats.packs += 1
                self.stats.bytes_stored += len(data)
                self._unindexed[pack_id] = locations
        finally:
            self._in_flight.release()
        if self.repo.clock.monotonic() - self._last_index_flush >= self._index_flush_seconds:
            self._write_index()

    def _write_index(self) -> None:
        with self._lock:
            packs, self._unindexed = self._unindexed, {}
            self._last_index_flush = self.repo.clock.monotonic()
        for index_id, sealed in encode_indexes(self.repo.keys, packs) if packs else ():
            with contextlib.suppress(ObjectExists):
                self.repo.store.put(index_key(index_id), sealed)

    def _raise_upload_errors(self) -> None:
        """Raise a finished upload's error. Every worker thread calls this: a finished upload is
        taken (and checked) by the one whose ``remove`` succeeds (atomic), never by two."""
        for future in [f for f in self._futures if f.done()]:
            try:
                self._futures.remove(future)
            except ValueError:
                continue  # another worker took it
            future.result()

    def flush(self) -> None:
        """Upload partly filled packs and write the index for everything uploaded so far."""
        with self._lock:
            partial = [p for p in self._packers.values() if p.blob_count]
            self._packers = {BlobType.DATA: PackBuilder(), BlobType.TREE: PackBuilder()}
        for packer in partial:
            self._submit(packer)
        for future in list(self._futures):
            future.result()
        self._futures.clear()
        self._write_index()

    def adopt_orphan_packs(self) -> int:
        """Index packs that a crashed writer uploaded but never indexed, so their blobs are reused.

        Their own headers say what they hold; this is what makes an interrupted backup resumable
        without re-uploading what already reached the store. The listing this takes also tells
        ``has_blob`` which indexed packs are really there (and how large).
        """
        listed: dict[bytes, int] = {}
        for info in self.repo.store.list("data/"):
            pack_id = pack_id_from_key(info.key)
            if pack_id is not None:  # anything else is not a pack (check reports it)
                listed[pack_id] = info.size
        with self._lock:
            self._pack_sizes.update(listed)
            self._listed = True
        indexed = set(self.repo.index.packs)  # one pass over the layers, not a lookup per pack
        missing = indexed - listed.keys()
        if missing:
            self.stats.packs_missing = len(missing)
            self._supersede_indexes_naming(missing)
        adopted = 0
        for pack_id in listed:
            if pack_id in indexed or pack_id in self._condemned:
                continue
            try:
                locations = self.repo.read_pack_header(pack_id)
            except (CorruptionDetected, ObjectNotFound):
                continue  # a damaged or vanished orphan holds nothing we can reuse
            with self._lock:
                self.repo.index.add_pack(pack_id, locations)
                self._unindexed[pack_id] = locations
            adopted += 1
        self.stats.packs_adopted += adopted
        if adopted:
            self._write_index()
        return adopted

    def _supersede_indexes_naming(self, missing: set[bytes]) -> None:
        """Replace each index object that names a pack no longer in storage by one without it.

        Only an old index object put back (or a bucket restored from an old copy) names deleted
        packs. This writer stores their blobs again where it needs them; superseding the stale
        objects makes every reader find the new copies instead of the deleted ones. A replacement
        keeps the object's other packs and supersedes what it superseded, so nothing else changes.
        """
        origins = {self.repo.index.origin(pack_id) for pack_id in missing}
        for index_id in sorted(origin for origin in origins if origin is not None):
            what = f"index {index_id.hex()[:16]}"
            try:
                sealed = read_bounded(self.repo.store, index_key(index_id), MAX_INDEX_OBJECT, what)
                superseded, packs = decode_index(self.repo.keys, index_id, sealed)
            except (CorruptionDetected, ObjectNotFound):
                continue  # unreadable or gone: it names nothing a reader will use
            kept = {pack_id: blobs for pack_id, blobs in packs.items() if pack_id not in missing}
            for new_id, new_sealed in encode_indexes(self.repo.keys, kept, [index_id, *superseded]):
                with contextlib.suppress(ObjectExists):
                    self.repo.store.put(index_key(new_id), new_sealed)

    def commit(self, snapshot: Snapshot) -> str:
        """Flush, write ``snapshot``'s manifest, then end the session; returns the snapshot ID.

        The manifest is written while this session's lease still holds: garbage collection sweeps
        only once every session older than its mark has ended, so a manifest written after the
        session ended could name packs a concurrent sweep had just deleted. A writer whose lease
        lapsed (frozen, partitioned) refuses to commit."""
        try:
            self.flush()
            self.session.ensure_valid()
            return self.repo.save_snapshot(snapshot)
        finally:
            self.close()

    def close(self) -> None:
        """Flush, then end the session. Idempotent. Errors from uploads surface here."""
        if self._closed:
            return
        self._closed = True
        try:
            self._sealers.shutdown(wait=True)
            self.flush()
        finally:
            self._uploads.shutdown(wait=True, cancel_futures=True)
            self.session.end()

    def abort(self) -> None:
        """Stop without flushing partial packs: what is uploaded stays reusable (indexed)."""
        if self._closed:
            return
        self._closed = True
        self._sealers.shutdown(wait=True, cancel_futures=True)
        for future in self._futures:
            future.cancel()
        self._uploads.shutdown(wait=True, cancel_futures=True)
        try:
            self._write_index()
        finally:
            self.session.end()
