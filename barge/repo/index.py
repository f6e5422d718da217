"""The index: which pack holds each blob. Immutable index objects, merged in a local cache.

Writers add index objects and never change one, so concurrent writers need no lock. An index object
may name older index objects it *supersedes* (consolidation by garbage collection); readers ignore
superseded objects even if their deletion has not happened yet.
"""

from __future__ import annotations

import hashlib
import heapq
import itertools
import struct
from collections.abc import Iterable, Iterator, Mapping, Sequence

import zstandard

from barge.errors import CorruptionDetected
from barge.repo.crypto import MasterKeys
from barge.repo.index_layers import Layer
from barge.repo.objects import MAX_INDEX_BODY, decompress_bounded
from barge.repo.pack import BlobLocation, BlobType

_MAGIC = b"BRGI\x01"
_AAD = b"barge:index:v1"
_COUNT = struct.Struct("<I")
_PACK = struct.Struct("<32sI")  # pack id, number of blobs
_BLOB = struct.Struct("<B32sIII")  # type, blob id, offset, stored length, raw length
_BLOB_TYPES = bytes(BlobType)
# Blobs per index object: ~45 bytes each, so an object stays far below MAX_INDEX_OBJECT.
MAX_BLOBS_PER_OBJECT = 1_000_000


def index_key(index_id: bytes) -> str:
    return f"index/{index_id.hex()}"


def encode_index(
    keys: MasterKeys, packs: Mapping[bytes, Mapping[bytes, BlobLocation]], supersedes: Iterable[bytes] = ()
) -> tuple[bytes, memoryview]:
    """An index object for ``packs`` (pack id -> blob id -> location): its ID and sealed bytes."""
    superseded = sorted(supersedes)
    out = bytearray(_MAGIC)
    out += _COUNT.pack(len(superseded))
    for index_id in superseded:
        out += index_id
    out += _COUNT.pack(len(packs))
    for pack_id in sorted(packs):
        blobs = packs[pack_id]
        out += _PACK.pack(pack_id, len(blobs))
        for blob_id, loc in sorted(blobs.items(), key=lambda item: item[1].offset):
            out += _BLOB.pack(loc.blob_type, blob_id, loc.offset, loc.stored_length, loc.raw_length)
    sealed = keys.seal(zstandard.ZstdCompressor(level=3).compress(bytes(out)), _AAD)
    return hashlib.sha256(sealed).digest(), sealed


def encode_indexes(
    keys: MasterKeys, packs: Mapping[bytes, Mapping[bytes, BlobLocation]], supersedes: Iterable[bytes] = ()
) -> list[tuple[bytes, memoryview]]:
    """``packs`` as index objects of at most MAX_BLOBS_PER_OBJECT blobs each (readers refuse
    larger objects), in the order to write them: the one naming ``supersedes`` comes last, so a
    writer interrupted part way never hides an old index object whose packs are not yet listed
    in a new one."""
    groups: list[dict[bytes, Mapping[bytes, BlobLocation]]] = [{}]
    count = 0
    for pack_id in sorted(packs):
        blobs = packs[pack_id]
        if groups[-1] and count + len(blobs) > MAX_BLOBS_PER_OBJECT:
            groups.append({})
            count = 0
        groups[-1][pack_id] = blobs
        count += len(blobs)
    superseded = list(supersedes)
    return [
        encode_index(keys, group, superseded if number == len(groups) - 1 else ())
        for number, group in enumerate(groups)
    ]


def open_index(keys: MasterKeys, index_id: bytes, sealed: bytes) -> bytes:
    """The plaintext of one index object, its name and seal checked."""
    what = f"index {index_id.hex()[:16]}"
    if hashlib.sha256(sealed).digest() != index_id:
        raise CorruptionDetected(f"{what}: content does not match its name")
    return decompress_bounded(keys.open(sealed, _AAD, what), MAX_INDEX_BODY, what)


def walk_index(data: bytes, what: str) -> tuple[list[bytes], list[tuple[bytes, int, int]]]:
    """The superseded index IDs of a plaintext index object and, per pack, where its blob records
    (``_BLOB``) start and how many there are: every bound and blob type checked, no record
    decoded (the local cache copies them as they are)."""
    if not data.startswith(_MAGIC):
        raise CorruptionDetected(f"{what}: unknown format")
    try:
        pos = len(_MAGIC)
        (n_superseded,) = _COUNT.unpack_from(data, pos)
        pos += _COUNT.size
        if pos + 32 * n_superseded > len(data):
            raise CorruptionDetected(f"{what}: names more superseded indexes than it holds")
        superseded = [data[pos + 32 * i : pos + 32 * (i + 1)] for i in range(n_superseded)]
        pos += 32 * n_superseded
        (n_packs,) = _COUNT.unpack_from(data, pos)
        pos += _COUNT.size
        packs: list[tuple[bytes, int, int]] = []
        for _ in range(n_packs):
            pack_id, n_blobs = _PACK.unpack_from(data, pos)
            pos += _PACK.size
            end = pos + n_blobs * _BLOB.size
            if end > len(data):
                raise CorruptionDetected(f"{what}: malformed (pack {pack_id.hex()[:16]} is truncated)")
            if data[pos:end:_BLOB.size].translate(None, _BLOB_TYPES):
                raise CorruptionDetected(f"{what}: malformed (a blob of an unknown type)")
            packs.append((pack_id, pos, n_blobs))
            pos = end
    except struct.error as err:
        raise CorruptionDetected(f"{what}: malformed ({err})") from err
    if pos != len(data):
        raise CorruptionDetected(f"{what}: trailing bytes")
    return superseded, packs


def decode_index(
    keys: MasterKeys, index_id: bytes, sealed: bytes
) -> tuple[list[bytes], dict[bytes, dict[bytes, BlobLocation]]]:
    """The superseded index IDs and the packs recorded in one index object."""
    data = open_index(keys, index_id, sealed)
    superseded, spans = walk_index(data, f"index {index_id.hex()[:16]}")
    packs: dict[bytes, dict[bytes, BlobLocation]] = {}
    for pack_id, start, count in spans:
        blobs = packs.setdefault(pack_id, {})
        records = data[start : start + count * _BLOB.size]
        for blob_type, blob_id, offset, stored, raw in _BLOB.iter_unpack(records):
            blobs[blob_id] = BlobLocation(BlobType(blob_type), pack_id, offset, stored, raw)
    return superseded, packs


class Index:
    """The merged view: blob id -> location. Layers on local disk (index_layers) hold what the
    index objects record; a session's own new packs are kept in memory on top. Thread-safe for the
    repository's use: lookups race only with inserts of new blobs, and dict operations are atomic
    under the GIL.

    Where a blob sits in several packs, a copy outside the packs garbage collection has
    ``condemned`` wins, so a reader never starts depending on a pack about to be deleted."""

    def __init__(self, layers: Sequence[Layer] = (), condemned: frozenset[bytes] = frozenset()) -> None:
        self._layers = list(layers)
        self._condemned = condemned
        self._replaced: dict[bytes, BlobLocation] = {}  # add_pack(replace=True): wins over the layers
        self._added: dict[bytes, BlobLocation] = {}  # add_pack(): where the layers know nothing
        self._new_packs: set[bytes] = set()
        self.packs = PackSet(self)

    def __len__(self) -> int:
        """Counted (a blob may sit in several packs): for reports, not hot paths."""
        return sum(1 for _ in self.items())

    def __contains__(self, blob_id: object) -> bool:
        return isinstance(blob_id, bytes) and self.get(blob_id) is not None

    def get(self, blob_id: bytes) -> BlobLocation | None:
        location = self._replaced.get(blob_id)
        if location is not None:
            return location
        found = self._from_layers(blob_id)
        return found if found is not None else self._added.get(blob_id)

    def _from_layers(self, blob_id: bytes) -> BlobLocation | None:
        condemned: BlobLocation | None = None
        for layer in self._layers:
            first = layer.first_location(blob_id)
            if first is None:
                continue
            if first.pack_id not in self._condemned:
                return first  # the common case: one lookup, no list
            for location in layer.locations(blob_id):
                if location.pack_id not in self._condemned:
                    return location
                condemned = condemned or location
        return condemned

    def add_pack(self, pack_id: bytes, blobs: Mapping[bytes, BlobLocation], replace: bool = False) -> None:
        """Record ``pack_id``'s blobs; a blob already recorded keeps its location unless ``replace``."""
        if replace:
            self._replaced.update(blobs)
        else:
            for blob_id, location in blobs.items():
                if self.get(blob_id) is None:
                    self._added[blob_id] = location
        self._new_packs.add(pack_id)

    def items(self) -> Iterator[tuple[bytes, BlobLocation]]:
        """Every blob once, with the location ``get`` gives, sorted by blob ID within the layers."""
        merged = heapq.merge(*(_tagged(layer, n) for n, layer in enumerate(self._layers)))
        for blob_id, group in itertools.groupby(merged, key=lambda item: item[0]):
            if blob_id in self._replaced:
                continue
            locations = [self._layers[n].location(record)[1] for _, n, record in group]
            usable = [loc for loc in locations if loc.pack_id not in self._condemned]
            yield blob_id, (usable or locations)[0]
        yield from self._replaced.items()
        for blob_id, location in self._added.items():
            if blob_id not in self._replaced and self._from_layers(blob_id) is None:
                yield blob_id, location

    def origin(self, pack_id: bytes) -> bytes | None:
        """The index object that lists ``pack_id`` (None for packs of this session)."""
        for layer in self._layers:
            index_id = layer.origin(pack_id)
            if index_id is not None:
                return index_id
        return None


def _tagged(layer: Layer, number: int) -> Iterator[tuple[bytes, int, bytes]]:
    """A layer's blob records as (blob id, layer number, record), for merging layers."""
    for record in layer.blobs:
        yield record[1:33], number, record


class PackSet:
    """The packs an index knows: a read-only set view of its layers and this session's packs."""

    def __init__(self, index: Index) -> None:
        self._index = index

    def __contains__(self, pack_id: object) -> bool:
        index = self._index
        if pack_id in index._new_packs:
            return True
        return isinstance(pack_id, bytes) and any(layer.origin(pack_id) for layer in index._layers)

    def __iter__(self) -> Iterator[bytes]:
        index = self._index
        seen_new = set()
        merged = heapq.merge(*(layer.pack_ids() for layer in index._layers))
        for pack_id, _ in itertools.groupby(merged):
            if pack_id in index._new_packs:
                seen_new.add(pack_id)
            yield pack_id
        yield from index._new_packs - seen_new

    def __len__(self) -> int:
        return sum(1 for _ in self)
