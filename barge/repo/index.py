"""The index: which pack holds each blob. Immutable index objects, merged in memory.

Writers add index objects and never change one, so concurrent writers need no lock. An index object
may name older index objects it *supersedes* (consolidation by garbage collection); readers ignore
superseded objects even if their deletion has not happened yet.
"""

from __future__ import annotations

import hashlib
import struct
from collections.abc import Iterable, Mapping

import zstandard

from barge.errors import CorruptionDetected
from barge.repo.crypto import MasterKeys
from barge.repo.objects import MAX_INDEX_BODY, decompress_bounded
from barge.repo.pack import BlobLocation, BlobType

_MAGIC = b"BRGI\x01"
_AAD = b"barge:index:v1"
_COUNT = struct.Struct("<I")
_PACK = struct.Struct("<32sI")  # pack id, number of blobs
_BLOB = struct.Struct("<B32sIII")  # type, blob id, offset, stored length, raw length
# Blobs per index object: ~45 bytes each, so an object stays far below MAX_INDEX_OBJECT.
MAX_BLOBS_PER_OBJECT = 1_000_000


def index_key(index_id: bytes) -> str:
    return f"index/{index_id.hex()}"


def encode_index(
    keys: MasterKeys, packs: Mapping[bytes, Mapping[bytes, BlobLocation]], supersedes: Iterable[bytes] = ()
) -> tuple[bytes, bytes]:
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
) -> list[tuple[bytes, bytes]]:
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


def decode_index(
    keys: MasterKeys, index_id: bytes, sealed: bytes
) -> tuple[list[bytes], dict[bytes, dict[bytes, BlobLocation]]]:
    """The superseded index IDs and the packs recorded in one index object."""
    what = f"index {index_id.hex()[:16]}"
    if hashlib.sha256(sealed).digest() != index_id:
        raise CorruptionDetected(f"{what}: content does not match its name")
    data = decompress_bounded(keys.open(sealed, _AAD, what), MAX_INDEX_BODY, what)
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
        packs: dict[bytes, dict[bytes, BlobLocation]] = {}
        for _ in range(n_packs):
            pack_id, n_blobs = _PACK.unpack_from(data, pos)
            pos += _PACK.size
            blobs = packs.setdefault(pack_id, {})
            for _ in range(n_blobs):
                blob_type, blob_id, offset, stored, raw = _BLOB.unpack_from(data, pos)
                pos += _BLOB.size
                blobs[blob_id] = BlobLocation(BlobType(blob_type), pack_id, offset, stored, raw)
    except (struct.error, ValueError) as err:
        raise CorruptionDetected(f"{what}: malformed ({err})") from err
    if pos != len(data):
        raise CorruptionDetected(f"{what}: trailing bytes")
    return superseded, packs


class Index:
    """The merged, in-memory view: blob id -> location. Thread-safe for the repository's use:
    lookups race only with inserts of new blobs, and dict operations are atomic under the GIL."""

    def __init__(self) -> None:
        self._blobs: dict[bytes, BlobLocation] = {}
        self.packs: set[bytes] = set()

    def __len__(self) -> int:
        return len(self._blobs)

    def __contains__(self, blob_id: object) -> bool:
        return blob_id in self._blobs

    def get(self, blob_id: bytes) -> BlobLocation | None:
        return self._blobs.get(blob_id)

    def add_pack(self, pack_id: bytes, blobs: Mapping[bytes, BlobLocation], replace: bool = False) -> None:
        """Record ``pack_id``'s blobs; a blob already recorded keeps its location unless ``replace``."""
        if replace:
            self._blobs.update(blobs)
        else:
            for blob_id, location in blobs.items():
                self._blobs.setdefault(blob_id, location)
        self.packs.add(pack_id)

    def items(self) -> Iterable[tuple[bytes, BlobLocation]]:
        return self._blobs.items()
