"""Opening, reading and writing a repository over any ObjectStore.

Layout under the store (see docs/repository-format.md):
``config`` (sealed settings), ``keys/<id>`` (password-wrapped master keys), ``data/xx/<pack id>``,
``index/<index id>``, ``snapshots/<snapshot id>``, ``sessions/<id>`` (live writer leases).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import threading
import uuid
from collections.abc import Mapping
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from typing import Any

import zstandard

from barge.clock import Clock, SystemClock
from barge.errors import CorruptionDetected, InvalidInput, NotFound
from barge.repo.crypto import KdfParams, MasterKeys, WrongPassword, unwrap_master_keys, wrap_master_keys
from barge.repo.index import Index, decode_index, encode_index, index_key
from barge.repo.pack import (
    BlobLocation,
    BlobType,
    PackBuilder,
    header_tail_length,
    open_blob,
    pack_key,
    parse_pack_header,
    seal_blob,
    sealed_header_length,
)
from barge.repo.session import Session, condemned_packs
from barge.repo.snapshot import Snapshot, SnapshotKind
from barge.storage import ObjectExists, ObjectNotFound, ObjectStore

FORMAT_VERSION = 1
_CONFIG_MAGIC = b"BARGE-REPOSITORY v1\n"
_CONFIG_AAD = b"barge:config:v1"
_SNAPSHOT_AAD = b"barge:snapshot:v1"
MIB = 1024 * 1024


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


def _exists(store: ObjectStore, key: str) -> bool:
    try:
        store.stat(key)
    except ObjectNotFound:
        return False
    return True


class Repository:
    """An open repository: keys unlocked, index loaded. Reads are thread-safe."""

    def __init__(
        self, store: ObjectStore, keys: MasterKeys, config: RepositoryConfig, key_name: str, clock: Clock
    ) -> None:
        self.store = store
        self.keys = keys
        self.config = config
        self.key_name = key_name
        self.clock = clock
        self.index = Index()

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
        return cls(store, keys, config, key_name, clock or SystemClock())

    @classmethod
    def open(
        cls, store: ObjectStore, password: bytes, clock: Clock | None = None, *, with_index: bool = True
    ) -> Repository:
        """Unlock the repository; ``with_index=False`` skips reading the index, for work on snapshot
        manifests only (listing, forgetting)."""
        try:
            sealed_config = store.get("config")
        except ObjectNotFound:
            raise RepositoryNotFound(
                f"no Barge repository at {store.describe()} (run `barge repo init` first)"
            ) from None
        if not sealed_config.startswith(_CONFIG_MAGIC):
            raise CorruptionDetected(f"{store.describe()}/config is not a Barge repository config")
        keys, key_name = cls._unlock(store, password)
        doc = json.loads(keys.open(sealed_config[len(_CONFIG_MAGIC) :], _CONFIG_AAD, "repository config"))
        if doc.pop("version") != FORMAT_VERSION:
            raise CorruptionDetected("repository format version is not supported by this Barge")
        config = RepositoryConfig(FORMAT_VERSION, doc.pop("id"), RepositorySettings(**doc))
        repo = cls(store, keys, config, key_name, clock or SystemClock())
        if with_index:
            repo.load_index()
        return repo

    @staticmethod
    def _unlock(store: ObjectStore, password: bytes) -> tuple[MasterKeys, str]:
        key_objects = list(store.list("keys/"))
        if not key_objects:
            raise CorruptionDetected(f"{store.describe()} has a config but no key objects")
        for info in key_objects:
            try:
                return unwrap_master_keys(store.get(info.key), password), info.key
            except WrongPassword:
                continue
        raise WrongPassword(f"wrong password for the repository at {store.describe()}")

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
        """Remove the key object this session opened with, unless it is the last one."""
        if not any(info.key != self.key_name for info in self.store.list("keys/")):
            raise InvalidInput(
                f"this is the only password of the repository at {self.store.describe()}: "
                "add another first (barge key add)"
            )
        self.store.delete(self.key_name)

    # -- index -----------------------------------------------------------------------------------

    def load_index(self) -> None:
        """Merge every index object not superseded by another into a fresh in-memory index.

        Where a blob sits in several packs, a copy outside the packs garbage collection has
        condemned wins, so a reader never starts depending on a pack about to be deleted.
        """
        condemned = condemned_packs(self.store)
        packs = self.read_index_objects([info.key for info in self.store.list("index/")])
        index = Index()
        for pack_id in sorted(packs, key=lambda p: p in condemned):
            index.add_pack(pack_id, packs[pack_id])
        self.index = index

    def read_index_objects(self, keys: list[str]) -> dict[bytes, dict[bytes, BlobLocation]]:
        """The packs recorded in exactly these index objects, minus any that one of them supersedes."""
        with ThreadPoolExecutor(max_workers=8) as pool:
            decoded = list(pool.map(self._read_index_object, keys))
        superseded = {old for olds, _ in decoded for old in olds}
        merged: dict[bytes, dict[bytes, BlobLocation]] = {}
        for key, (_, packs) in zip(keys, decoded, strict=True):
            if bytes.fromhex(key.removeprefix("index/")) not in superseded:
                merged.update(packs)
        return merged

    def _read_index_object(self, key: str) -> tuple[list[bytes], dict[bytes, dict[bytes, BlobLocation]]]:
        try:
            index_id = bytes.fromhex(key.removeprefix("index/"))
        except ValueError:
            raise CorruptionDetected(f"unexpected object {key}") from None
        return decode_index(self.keys, index_id, self.store.get(key))

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
        location = self.index.get(blob_id)
        if location is None:
            raise CorruptionDetected(f"blob {blob_id.hex()[:16]} is referenced but in no index")
        try:
            sealed = self.store.get_range(pack_key(location.pack_id), location.offset, location.stored_length)
        except ObjectNotFound:
            raise CorruptionDetected(
                f"pack {location.pack_id.hex()[:16]} is in the index but missing from storage"
            ) from None
        if len(sealed) != location.stored_length:
            raise CorruptionDetected(f"pack {location.pack_id.hex()[:16]} is truncated")
        return open_blob(self.keys, blob_id, location, sealed)

    # -- snapshots -------------------------------------------------------------------------------

    def save_snapshot(self, snapshot: Snapshot) -> str:
        sealed = self.keys.seal(json.dumps(snapshot.to_json(), sort_keys=True).encode(), _SNAPSHOT_AAD)
        snapshot_id = hashlib.sha256(sealed).hexdigest()
        self.store.put(_snapshot_key(snapshot_id), sealed)
        return snapshot_id

    def load_snapshot(self, snapshot_id: str) -> Snapshot:
        key = _snapshot_key(_validate_snapshot_id(snapshot_id))
        try:
            sealed = self.store.get(key)
        except ObjectNotFound:
            raise NotFound(f"snapshot {snapshot_id} does not exist in {self.store.describe()}") from None
        if hashlib.sha256(sealed).hexdigest() != snapshot_id:
            raise CorruptionDetected(f"snapshot {snapshot_id[:16]}: content does not match its ID")
        what = f"snapshot {snapshot_id[:16]}"
        try:
            document = json.loads(self.keys.open(sealed, _SNAPSHOT_AAD, what))
        except (UnicodeDecodeError, json.JSONDecodeError):
            raise CorruptionDetected(f"{what}: the manifest is not JSON") from None
        return Snapshot.from_json(document, what)

    def snapshot_ids(self) -> list[str]:
        return [info.key.removeprefix("snapshots/") for info in self.store.list("snapshots/")]

    def latest_snapshot(
        self, kind: SnapshotKind, *, paths: list[str] | None = None, tags: Mapping[str, str] | None = None
    ) -> str | None:
        """The newest snapshot of ``kind`` whose paths equal ``paths`` and whose tags include ``tags``.

        The parent for an incremental backup: its unchanged files are reused without reading.
        """
        best: tuple[str, str] | None = None
        for snapshot_id in self.snapshot_ids():
            snapshot = self.load_snapshot(snapshot_id)
            if snapshot.kind is not kind or (paths is not None and list(snapshot.paths) != paths):
                continue
            if tags and any(snapshot.tags.get(k) != v for k, v in tags.items()):
                continue
            if best is None or snapshot.time > best[0]:
                best = (snapshot.time, snapshot_id)
        return best[1] if best else None

    def forget_snapshot(self, snapshot_id: str) -> None:
        """Remove the snapshot's manifest; its data stays until garbage collection reclaims it."""
        self.load_snapshot(snapshot_id)
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
        max_packs_in_flight: int = 3,
        index_flush_seconds: float = 30.0,
        avoid_packs: frozenset[bytes] = frozenset(),
    ) -> None:
        self.repo = repo
        self.stats = WriteStats()
        self._lock = threading.Lock()
        self._packers = {BlobType.DATA: PackBuilder(), BlobType.TREE: PackBuilder()}
        self._uploads = ThreadPoolExecutor(max_workers=upload_threads, thread_name_prefix="barge-upload")
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
        return location is not None and location.pack_id not in self._condemned

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
                self.repo.index.add_pack(pack_id, locations)
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
        if packs:
            index_id, sealed = encode_index(self.repo.keys, packs)
            with contextlib.suppress(ObjectExists):
                self.repo.store.put(index_key(index_id), sealed)

    def _raise_upload_errors(self) -> None:
        for future in [f for f in self._futures if f.done()]:
            self._futures.remove(future)
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
        without re-uploading what already reached the store.
        """
        adopted = 0
        for info in self.repo.store.list("data/"):
            pack_id = bytes.fromhex(info.key.rsplit("/", 1)[1])
            if pack_id in self.repo.index.packs or pack_id in self._condemned:
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
            self.flush()
        finally:
            self._uploads.shutdown(wait=True, cancel_futures=True)
            self.session.end()

    def abort(self) -> None:
        """Stop without flushing partial packs: what is uploaded stays reusable (indexed)."""
        if self._closed:
            return
        self._closed = True
        for future in self._futures:
            future.cancel()
        self._uploads.shutdown(wait=True, cancel_futures=True)
        try:
            self._write_index()
        finally:
            self.session.end()
