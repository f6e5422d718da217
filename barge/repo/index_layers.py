"""The merged index on local disk: sorted, authenticated layer files, so memory does not grow with
the repository (kopia's model: immutable sorted index data, binary search, on-disk cache).

A *layer* holds the blob records of a set of index objects, sorted by blob ID, in fixed-size
records grouped in blocks of BLOCK_RECORDS. Only a small table per layer stays in memory: the
first blob ID of each block (32 bytes per 256 blobs). A lookup binary-searches that table, reads
one block with ``pread``, checks the block's MAC and searches it; a few recently used blocks are
kept. Nothing is memory-mapped, so the page cache never counts against the agent's RSS.

Layers live in a per-repository cache directory, kept across opens: an open lists the index
objects, keeps the layers whose objects are all still listed and none superseded, and builds one
new layer from the objects no kept layer covers (fetching only those), absorbing kept layers that
are small beside it so their number stays logarithmic. Every block and the trailer carry a MAC
(keyed BLAKE3) under a key derived from the repository's master keys, bound to the file's random
nonce and the block's place: a damaged or crafted file is refused (its trailer at open: the layer
is rebuilt; a block later: CacheDamaged), never believed. The format here is local to one machine,
not part of the repository format.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import hmac
import operator
import os
import secrets
import struct
import tempfile
import threading
import weakref
from bisect import bisect_left
from collections import OrderedDict
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO

import blake3

from barge.errors import CorruptionDetected
from barge.repo.pack import BlobLocation, BlobType

# A blob record is the index object's own record plus where it came from: type, blob id, offset,
# stored length, raw length (the 45 bytes of index._BLOB), appearance number.
BLOB_RECORD = struct.Struct("<B32sIIII")
SOURCE_RECORD = 45  # index._BLOB.size
APPEARANCE = struct.Struct("<32sI")  # one pack as one index object lists it: pack id, object number
PACK_RECORD = struct.Struct("<32sI")  # sorted by pack id: pack id, appearance number
BLOCK_RECORDS = 256  # 12.5 KiB blocks of blob records: one read and one MAC per lookup
MAC_SIZE = 32
BLOCKS_KEPT = 512  # per layer: at most 6.4 MiB. At 128, 1 lookup in 5 of a 40,000-file re-backup missed
APPEARANCES_KEPT = 2048  # per layer: (pack, index object) by appearance, about 0.6 MiB
MAX_LAYERS = 8
_MAGIC = b"BRGL\x01"
_TRAILER_HEAD = struct.Struct("<5s16sQQQQ")  # magic, nonce, objects, appearances, packs, blob records
_TAIL = struct.Struct("<I32s")  # trailer length, trailer MAC
_COUNT = struct.Struct("<I")
MAX_TRAILER = 256 * 1024 * 1024  # far above any real one (1.25 MiB of block keys per 10M blobs)
_BLOB_TYPES = tuple(BlobType)  # by value: cheaper than BlobType(n) on every lookup
_BUCKET_FLUSH = 64 * 1024
_PREFIX = "layer-"
_TEMP_PREFIX = ".tmp-layer-"
_TEMP_MAX_AGE = 3600.0  # seconds: an older temporary file was left by a builder that died


def _mac(key: bytes, *parts: bytes | bytearray | memoryview) -> bytes:
    """Keyed BLAKE3 over ``parts``: a MAC (the project's content IDs use the same construction),
    several times faster than HMAC-SHA256 where every lookup checks a block."""
    hasher = blake3.blake3(key=key)
    for part in parts:
        hasher.update(part)
    return hasher.digest()


class CacheDamaged(CorruptionDetected):
    """A local index cache file failed its check after it was opened (changed underneath us)."""


def cache_key(content_key: bytes) -> bytes:
    """The MAC key of cache files: derived for this use only, so a cache file proves nothing else."""
    return hmac.digest(content_key, b"barge:index-cache:v1", hashlib.sha256)


@dataclass(frozen=True)
class ObjectRecords:
    """One index object, decoded and checked: what it supersedes and, per pack listed, where its
    blob records start in ``plain`` and how many there are."""

    index_id: bytes
    superseded: list[bytes]
    plain: bytes
    packs: list[tuple[bytes, int, int]]


class _Table:
    """One section of a layer file: ``count`` records of ``size`` bytes in MAC'd blocks."""

    def __init__(
        self, layer: Layer, tag: bytes, *, offset: int, size: int, count: int, key_at: int, fences: bytes
    ) -> None:
        self.layer, self.tag, self.offset, self.size, self.count = layer, tag, offset, size, count
        self.key_at = key_at
        self.fences = [fences[i : i + 32] for i in range(0, len(fences), 32)]  # first key of each block
        self.blocks = -(-count // BLOCK_RECORDS)

    @staticmethod
    def length(size: int, count: int) -> int:
        return count * size + -(-count // BLOCK_RECORDS) * MAC_SIZE

    def block(self, number: int) -> bytes:
        return self.layer.block(self, number)

    def span(self, number: int) -> tuple[int, int]:
        records = min(BLOCK_RECORDS, self.count - number * BLOCK_RECORDS)
        return self.offset + number * (BLOCK_RECORDS * self.size + MAC_SIZE), records * self.size

    def record(self, i: int) -> bytes:
        if not 0 <= i < self.count:
            raise CacheDamaged(f"{self.layer.describe()}: record {i} out of range")
        number, within = divmod(i, BLOCK_RECORDS)
        data = self.block(number)
        return data[within * self.size : (within + 1) * self.size]

    def first(self, key: bytes) -> bytes | None:
        """The first record whose key is ``key``: ``find`` stopped at its first hit, the lookup a
        backup makes for every blob of every unchanged file."""
        return next(self.find(key), None)

    def find(self, key: bytes) -> Iterator[bytes]:
        """The records whose key is ``key`` (sorted sections only): equal keys are adjacent, so they
        start in the last block whose first key is below ``key`` and go on while blocks start with it."""
        number = max(bisect_left(self.fences, key) - 1, 0)
        while number < self.blocks:
            data = self.block(number)
            for start in range(self._lower_bound(data, key) * self.size, len(data), self.size):
                record = data[start : start + self.size]
                if record[self.key_at : self.key_at + len(key)] != key:
                    return
                yield record
            number += 1
            if number >= self.blocks or self.fences[number] != key:
                return

    def _lower_bound(self, data: bytes, key: bytes) -> int:
        """The place in block ``data`` of the first record whose key is not below ``key``. A block's
        records are sorted, so this is a binary search: 8 slices and compares, where scanning the
        12.5 KiB block for the key took four times as long."""
        low, high = 0, len(data) // self.size
        while low < high:
            middle = (low + high) // 2
            at = middle * self.size + self.key_at
            if data[at : at + len(key)] < key:
                low = middle + 1
            else:
                high = middle
        return low

    def __iter__(self) -> Iterator[bytes]:
        """Every record in order, read block by block (not through the kept blocks)."""
        for number in range(self.blocks):
            data = self.layer.read_block(self, number)
            for i in range(0, len(data), self.size):
                yield data[i : i + self.size]


class Layer:
    """One layer file, open: its trailer checked, its blocks read and checked on demand."""

    def __init__(self, path: Path | None, fd: int, mac_key: bytes) -> None:
        self.path, self._fd, self._key = path, fd, mac_key
        weakref.finalize(self, os.close, fd)
        self._kept: OrderedDict[tuple[bytes, int], bytes] = OrderedDict()
        self._appearances_kept: OrderedDict[int, tuple[bytes, bytes]] = OrderedDict()
        self._lock = threading.Lock()
        size = os.fstat(fd).st_size
        if size < _TAIL.size:
            raise CorruptionDetected(f"{self.describe()}: truncated")
        trailer_length, mac = _TAIL.unpack(os.pread(fd, _TAIL.size, size - _TAIL.size))
        if trailer_length > min(size - _TAIL.size, MAX_TRAILER):
            raise CorruptionDetected(f"{self.describe()}: truncated or malformed")
        trailer = os.pread(fd, trailer_length, size - _TAIL.size - trailer_length)
        if not hmac.compare_digest(mac, _mac(mac_key, b"trailer", trailer)):
            raise CorruptionDetected(f"{self.describe()}: trailer does not verify")
        self._parse(trailer, size - _TAIL.size - trailer_length)

    def _parse(self, trailer: bytes, sections_end: int) -> None:
        try:
            magic, self.nonce, objects, apps, packs, blobs = _TRAILER_HEAD.unpack_from(trailer)
            if magic != _MAGIC:
                raise CorruptionDetected(f"{self.describe()}: unknown format")
            pos = _TRAILER_HEAD.size
            self.objects: list[bytes] = []
            self.supersedes: dict[bytes, list[bytes]] = {}
            for _ in range(objects):
                index_id = trailer[pos : pos + 32]
                (count,) = _COUNT.unpack_from(trailer, pos + 32)
                pos += 36
                self.objects.append(index_id)
                self.supersedes[index_id] = [trailer[pos + 32 * i : pos + 32 * (i + 1)] for i in range(count)]
                pos += 32 * count
            superseded_here = {old for olds in self.supersedes.values() for old in olds}
            # The objects whose records this layer holds (the others were superseded within it).
            self.live = frozenset(self.objects) - superseded_here
            pack_fences = trailer[pos : pos + 32 * -(-packs // BLOCK_RECORDS)]
            pos += len(pack_fences)
            blob_fences = trailer[pos : pos + 32 * -(-blobs // BLOCK_RECORDS)]
            pos += len(blob_fences)
        except struct.error as err:
            raise CorruptionDetected(f"{self.describe()}: malformed trailer ({err})") from err
        app_length = _Table.length(APPEARANCE.size, apps)
        pack_length = _Table.length(PACK_RECORD.size, packs)
        blob_length = _Table.length(BLOB_RECORD.size, blobs)
        if pos != len(trailer) or app_length + pack_length + blob_length != sections_end:
            raise CorruptionDetected(f"{self.describe()}: sizes do not add up")
        self.appearances = _Table(
            self, b"a", offset=0, size=APPEARANCE.size, count=apps, key_at=0, fences=b""
        )
        self.packs = _Table(
            self, b"p", offset=app_length, size=PACK_RECORD.size, count=packs, key_at=0, fences=pack_fences
        )
        self.blobs = _Table(
            self,
            b"b",
            offset=app_length + pack_length,
            size=BLOB_RECORD.size,
            count=blobs,
            key_at=1,
            fences=blob_fences,
        )

    def describe(self) -> str:
        return f"index cache {self.path or '(temporary file)'}"

    def read_block(self, table: _Table, number: int) -> bytes:
        """Block ``number`` of ``table``, read and checked."""
        offset, length = table.span(number)
        raw = os.pread(self._fd, length + MAC_SIZE, offset)
        data, mac = raw[:length], raw[length:]
        expected = _mac(self._key, self.nonce, table.tag, number.to_bytes(8, "little"), data)
        if len(raw) != length + MAC_SIZE or not hmac.compare_digest(mac, expected):
            if self.path is not None:
                with contextlib.suppress(OSError):
                    self.path.unlink()  # the next open rebuilds it
            raise CacheDamaged(
                f"{self.describe()}: block {number} does not verify (damaged or changed on disk); "
                "it is removed and rebuilt at the next open"
            )
        return data

    def block(self, table: _Table, number: int) -> bytes:
        key = (table.tag, number)
        with self._lock:
            data = self._kept.get(key)
            if data is not None:
                self._kept.move_to_end(key)
                return data
        data = self.read_block(table, number)
        with self._lock:
            self._kept[key] = data
            if len(self._kept) > BLOCKS_KEPT:
                self._kept.popitem(last=False)
        return data

    # -- records -------------------------------------------------------------------------------

    def pack_of(self, appearance: int) -> tuple[bytes, bytes]:
        """The pack and the index object of an appearance. Remembered: a pack's blobs are looked
        up together (a directory's files), and its appearance's block would crowd the blob blocks
        out of the kept ones."""
        known = self._appearances_kept.get(appearance)
        if known is not None:
            return known
        pack_id, number = APPEARANCE.unpack(self.appearances.record(appearance))
        if number >= len(self.objects):
            raise CacheDamaged(f"{self.describe()}: appearance {appearance} names no index object")
        found = pack_id, self.objects[number]
        with self._lock:
            if len(self._appearances_kept) >= APPEARANCES_KEPT:
                self._appearances_kept.popitem(last=False)
            self._appearances_kept[appearance] = found
        return found

    def location(self, record: bytes) -> tuple[bytes, BlobLocation]:
        blob_type, blob_id, offset, stored, raw, appearance = BLOB_RECORD.unpack(record)
        if blob_type > BlobType.TREE:
            raise CacheDamaged(f"{self.describe()}: blob {blob_id.hex()[:16]} has no valid type")
        return blob_id, BlobLocation(_BLOB_TYPES[blob_type], self.pack_of(appearance)[0], offset, stored, raw)

    def locations(self, blob_id: bytes) -> list[BlobLocation]:
        return [self.location(record)[1] for record in self.blobs.find(blob_id)]

    def first_location(self, blob_id: bytes) -> BlobLocation | None:
        """``locations(blob_id)[0]``, or None, at a fraction of the cost (most blobs are in one pack)."""
        record = self.blobs.first(blob_id)
        return None if record is None else self.location(record)[1]

    def origin(self, pack_id: bytes) -> bytes | None:
        """The index object this layer found ``pack_id`` in, if it did."""
        for record in self.packs.find(pack_id):
            return self.pack_of(PACK_RECORD.unpack(record)[1])[1]
        return None

    def pack_ids(self) -> Iterator[bytes]:
        """The packs, sorted, each once."""
        previous = None
        for record in self.packs:
            pack_id = record[:32]
            if pack_id != previous:
                yield pack_id
                previous = pack_id


class _SectionWriter:
    """Writes one table's records in MAC'd blocks, collecting the first key of each block."""

    def __init__(self, out: IO[bytes], key: bytes, nonce: bytes, tag: bytes, key_at: int) -> None:
        self._out, self._key, self._nonce, self._tag, self._key_at = out, key, nonce, tag, key_at
        self._pending: list[bytes] = []
        self.fences = bytearray()
        self.count = 0
        self._blocks = 0

    def add(self, records: Iterable[bytes]) -> None:
        self._pending.extend(records)
        while len(self._pending) >= BLOCK_RECORDS:
            self._block(self._pending[:BLOCK_RECORDS])
            del self._pending[:BLOCK_RECORDS]

    def _block(self, records: list[bytes]) -> None:
        data = b"".join(records)
        number = self._blocks.to_bytes(8, "little")
        self._out.write(data)
        self._out.write(_mac(self._key, self._nonce, self._tag, number, data))
        self.fences += records[0][self._key_at : self._key_at + 32]
        self.count += len(records)
        self._blocks += 1

    def close(self) -> None:
        if self._pending:
            self._block(self._pending)
            self._pending = []


@dataclass
class LayerBuilder:
    """Builds one layer from index objects, streaming: blob records are spread over 256 buckets by
    their first byte (spilled to a temporary file), then each bucket is sorted on its own, so at
    most one bucket's records are Python objects at a time."""

    directory: Path | None
    key: bytes
    objects: list[bytes] = field(default_factory=list)
    supersedes: dict[bytes, list[bytes]] = field(default_factory=dict)
    _appearances: list[bytes] = field(default_factory=list)
    _object_of: list[int] = field(default_factory=list)
    _buckets: list[bytearray] = field(default_factory=lambda: [bytearray() for _ in range(256)])
    _spilled: list[list[tuple[int, int]]] = field(default_factory=lambda: [[] for _ in range(256)])
    _spill: IO[bytes] | None = None
    _spill_end: int = 0

    def add(self, found: ObjectRecords) -> None:
        number = len(self.objects)
        self.objects.append(found.index_id)
        self.supersedes[found.index_id] = found.superseded
        buckets, plain = self._buckets, found.plain
        for pack_id, start, count in found.packs:
            appearance = len(self._appearances)
            self._appearances.append(APPEARANCE.pack(pack_id, number))
            self._object_of.append(number)
            tag = appearance.to_bytes(4, "little")
            for pos in range(start, start + count * SOURCE_RECORD, SOURCE_RECORD):
                bucket = buckets[plain[pos + 1]]
                bucket += plain[pos : pos + SOURCE_RECORD]
                bucket += tag
            if count > 1000 or appearance % 64 == 0:
                self._spill_full()

    def _spill_full(self, limit: int = _BUCKET_FLUSH) -> None:
        for number, bucket in enumerate(self._buckets):
            if len(bucket) >= limit and bucket:
                if self._spill is None:
                    self._spill = tempfile.TemporaryFile(dir=self.directory)  # noqa: SIM115 (closed by finish)
                self._spill.write(bucket)
                self._spilled[number].append((self._spill_end, len(bucket)))
                self._spill_end += len(bucket)
                bucket.clear()

    def _bucket(self, number: int) -> bytes:
        parts = []
        if self._spill is not None:
            self._spill.flush()
            for offset, length in self._spilled[number]:
                parts.append(os.pread(self._spill.fileno(), length, offset))
        parts.append(bytes(self._buckets[number]))
        self._buckets[number] = bytearray()
        return b"".join(parts)

    def finish(self, dead: set[bytes]) -> Layer:
        """The layer, without the records of the objects in ``dead`` (superseded)."""
        nonce = secrets.token_bytes(16)
        dead_objects = {n for n, index_id in enumerate(self.objects) if index_id in dead}
        dead_tags = {
            a.to_bytes(4, "little") for a, number in enumerate(self._object_of) if number in dead_objects
        }
        if self.directory is None:
            out: IO[bytes] = tempfile.TemporaryFile()  # noqa: SIM115 (closed below, its fd kept)
        else:
            out = tempfile.NamedTemporaryFile(dir=self.directory, prefix=_TEMP_PREFIX, delete=False)  # noqa: SIM115
        try:
            apps = _SectionWriter(out, self.key, nonce, b"a", 0)
            apps.add(self._appearances)
            apps.close()
            packs = _SectionWriter(out, self.key, nonce, b"p", 0)
            live = (
                record[:32] + a.to_bytes(4, "little")
                for a, record in enumerate(self._appearances)
                if self._object_of[a] not in dead_objects
            )
            packs.add(sorted(live))
            packs.close()
            blobs = _SectionWriter(out, self.key, nonce, b"b", 1)
            by_id = operator.itemgetter(slice(1, 33))
            size = BLOB_RECORD.size
            for number in range(256):
                data = self._bucket(number)
                records = [data[i : i + size] for i in range(0, len(data), size)]
                if dead_tags:
                    records = [r for r in records if r[45:49] not in dead_tags]
                records.sort(key=by_id)
                blobs.add(records)
            blobs.close()
            trailer = bytearray(
                _TRAILER_HEAD.pack(
                    _MAGIC, nonce, len(self.objects), apps.count, packs.count, blobs.count
                )
            )
            for index_id in self.objects:
                superseded = self.supersedes[index_id]
                trailer += index_id + _COUNT.pack(len(superseded)) + b"".join(superseded)
            trailer += packs.fences + blobs.fences
            mac = _mac(self.key, b"trailer", trailer)
            out.write(trailer)
            out.write(_TAIL.pack(len(trailer), mac))
            out.flush()
            if self.directory is None:
                return Layer(None, os.dup(out.fileno()), self.key)
            path = self.directory / f"{_PREFIX}{nonce.hex()}"
            os.replace(out.name, path)
            return Layer(path, os.open(path, os.O_RDONLY), self.key)
        finally:
            out.close()
            if self.directory is not None:
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(out.name)
            if self._spill is not None:
                self._spill.close()


def open_layers(directory: Path, key: bytes, now: float) -> list[Layer]:
    """The layer files in ``directory`` whose trailers verify; the others (and temporary files
    left by builders that died) are removed."""
    layers = []
    for path in directory.iterdir():
        try:
            if path.name.startswith(_PREFIX):
                layers.append(Layer(path, os.open(path, os.O_RDONLY | os.O_NOFOLLOW), key))
            elif path.name.startswith(_TEMP_PREFIX) and now - path.stat().st_mtime > _TEMP_MAX_AGE:
                path.unlink()
        except CorruptionDetected:
            with contextlib.suppress(OSError):
                path.unlink()
        except OSError as err:
            if err.errno == errno.ELOOP:  # a symbolic link: never ours, never followed
                with contextlib.suppress(OSError):
                    path.unlink()
            # else removed meanwhile by another process
    return layers


Fetch = Callable[[list[bytes]], Iterator[ObjectRecords | str]]


def refresh_layers(
    directory: Path | None, key: bytes, listed: dict[bytes, int], fetch: Fetch, now: float
) -> tuple[list[Layer], list[str]]:
    """Layers covering exactly the index objects ``listed`` (ID -> size) that no listed object supersedes,
    fetching only objects no usable cached layer covers; and a line per object that could not be
    read (``fetch`` yields those as strings)."""
    existing = open_layers(directory, key, now) if directory is not None else []
    chosen: list[Layer] = []
    covered: set[bytes] = set()
    for layer in sorted(existing, key=lambda layer: -layer.blobs.count):
        objects = set(layer.objects)
        if listed.keys() >= layer.live and not objects & covered:
            chosen.append(layer)
            covered |= objects
    superseded = {old for layer in chosen for olds in layer.supersedes.values() for old in olds}
    chosen = [layer for layer in chosen if not superseded.intersection(layer.live)]
    covered = {index_id for layer in chosen for index_id in layer.live}
    new = sorted(listed.keys() - covered - superseded)
    problems: list[str] = []
    if new:
        estimate = sum(listed[index_id] for index_id in new) // SOURCE_RECORD
        chosen, problems = _build(directory, key, chosen, new, estimate, superseded, fetch)
    if directory is not None:
        for layer in existing:
            if layer not in chosen and layer.path is not None:
                with contextlib.suppress(OSError):
                    layer.path.unlink()
    return chosen, problems


def _build(  # noqa: PLR0917 (one call site)
    directory: Path | None,
    key: bytes,
    chosen: list[Layer],
    new: list[bytes],
    estimate: int,
    superseded: set[bytes],
    fetch: Fetch,
) -> tuple[list[Layer], list[str]]:
    """One new layer of the ``new`` objects (about ``estimate`` blobs), absorbing the kept layers
    that are not much larger (or the smallest, past MAX_LAYERS), so layers grow geometrically and
    stay few; and any kept layer a new object supersedes part of."""
    chosen = sorted(chosen, key=lambda layer: layer.blobs.count)
    absorbed: list[Layer] = []
    while chosen and (len(chosen) >= MAX_LAYERS or chosen[0].blobs.count <= 2 * estimate):
        layer = chosen.pop(0)
        absorbed.append(layer)
        estimate += layer.blobs.count
    builder = LayerBuilder(directory, key)
    problems: list[str] = []
    pending = new + sorted(o for layer in absorbed for o in layer.live if o not in superseded)
    while pending:
        for found in fetch(pending):
            if isinstance(found, str):
                problems.append(found)
            else:
                builder.add(found)
                superseded.update(found.superseded)
        stale = [layer for layer in chosen if superseded.intersection(layer.live)]
        chosen = [layer for layer in chosen if layer not in stale]
        pending = sorted(o for layer in stale for o in layer.live if o not in superseded)
    return [*chosen, builder.finish(superseded)], problems
