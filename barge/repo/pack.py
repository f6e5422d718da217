"""Blobs and pack objects (pure: bytes in, bytes out).

A blob is one chunk of file data or one directory tree, sealed on its own. Blobs are concatenated
into pack objects of tens of MiB (few large objects are cheap to store and list), each ending in
its own sealed header, so the index can always be rebuilt from the packs alone.
"""

from __future__ import annotations

import hashlib
import struct
from dataclasses import dataclass
from enum import IntEnum

import zstandard

from barge.errors import CorruptionDetected
from barge.repo.crypto import SEAL_OVERHEAD, MasterKeys
from barge.repo.objects import decompress_bounded, parse_hex_id


class BlobType(IntEnum):
    DATA = 0
    TREE = 1


class Compression(IntEnum):
    NONE = 0
    ZSTD = 1


@dataclass(frozen=True)
class BlobLocation:
    """Where a blob lives: which pack, where in it, how large sealed and as plaintext."""

    blob_type: BlobType
    pack_id: bytes
    offset: int
    stored_length: int
    raw_length: int


@dataclass(frozen=True)
class SealedBlob:
    blob_id: bytes
    blob_type: BlobType
    sealed: bytes | memoryview
    raw_length: int


_BLOB_TYPES = frozenset(BlobType)
_HEADER_MAGIC = b"BRGP\x01"
_HEADER_ENTRY = struct.Struct("<B32sII")  # type, blob id, stored length, raw length
_TRAILER = struct.Struct("<I")  # length of the sealed header
_HEADER_AAD = b"barge:pack-header:v1"
# Compress only when it saves at least this fraction: incompressible data is stored as is.
_MIN_SAVING = 0.03


def blob_associated_data(blob_type: BlobType, blob_id: bytes) -> bytes:
    return b"barge:blob:v1" + bytes([blob_type]) + blob_id


def pack_key(pack_id: bytes) -> str:
    hex_id = pack_id.hex()
    return f"data/{hex_id[:2]}/{hex_id}"


def pack_id_from_key(key: str) -> bytes | None:
    """The pack a ``data/`` key names; None for any other object (a stray one Barge never wrote)."""
    parts = key.split("/")
    if len(parts) != 3 or parts[0] != "data" or parts[1] != parts[2][:2]:
        return None
    return parse_hex_id(parts[2])


def seal_blob(
    keys: MasterKeys,
    blob_type: BlobType,
    data: bytes | memoryview,
    compressor: zstandard.ZstdCompressor | None,
    blob_id: bytes | None = None,
) -> SealedBlob:
    """Compress (when it helps) and seal one blob; ``blob_id`` may be passed when already computed."""
    blob_id = blob_id or keys.content_id_of(data)
    payload: bytes | memoryview = data
    flag = Compression.NONE
    if compressor is not None and len(data) > 64:
        compressed = compressor.compress(data)
        if len(compressed) <= len(data) * (1 - _MIN_SAVING):
            payload, flag = compressed, Compression.ZSTD
    sealed = keys.seal(payload, blob_associated_data(blob_type, blob_id), prefix=bytes([flag]))
    return SealedBlob(blob_id, blob_type, sealed, len(data))


def open_blob(keys: MasterKeys, blob_id: bytes, location: BlobLocation, sealed: bytes | memoryview) -> bytes:
    """Decrypt, decompress and verify a blob end to end: its content ID must match."""
    what = (
        f"{location.blob_type.name.lower()} blob {blob_id.hex()[:16]} in pack {location.pack_id.hex()[:16]}"
    )
    plain = keys.open(sealed, blob_associated_data(location.blob_type, blob_id), what)
    if not plain:
        raise CorruptionDetected(f"{what}: empty")
    flag, payload = plain[0], memoryview(plain)[1:]
    if flag == Compression.ZSTD:
        data = decompress_bounded(payload, location.raw_length, what)
    elif flag == Compression.NONE:
        data = bytes(payload)
    else:
        raise CorruptionDetected(f"{what}: unknown compression {flag}")
    if len(data) != location.raw_length or keys.content_id_of(data) != blob_id:
        raise CorruptionDetected(f"{what}: content does not match its ID")
    return data


class PackBuilder:
    """Accumulates sealed blobs into one pack object. Not thread-safe: one owner at a time."""

    def __init__(self) -> None:
        self._buffer = bytearray()
        # Only the header facts of each blob, never a second copy of its bytes: memory per pack in
        # flight stays at one pack size.
        self._entries: list[tuple[BlobType, bytes, int, int, int]] = []  # type, id, length, raw, offset

    @property
    def size(self) -> int:
        return len(self._buffer)

    @property
    def blob_count(self) -> int:
        return len(self._entries)

    def add(self, blob: SealedBlob) -> None:
        self._entries.append(
            (blob.blob_type, blob.blob_id, len(blob.sealed), blob.raw_length, len(self._buffer))
        )
        self._buffer += blob.sealed

    def finish(self, keys: MasterKeys) -> tuple[bytes, memoryview, dict[bytes, BlobLocation]]:
        """The pack's ID (sha256 of its bytes), its bytes, and where each blob sits in it."""
        header = bytearray(_HEADER_MAGIC)
        for blob_type, blob_id, length, raw_length, _ in self._entries:
            header += _HEADER_ENTRY.pack(blob_type, blob_id, length, raw_length)
        sealed_header = keys.seal(bytes(header), _HEADER_AAD)
        self._buffer += sealed_header
        self._buffer += _TRAILER.pack(len(sealed_header))
        data = memoryview(self._buffer)  # no copy: the builder is done once finished
        pack_id = hashlib.sha256(data).digest()
        locations = {
            blob_id: BlobLocation(blob_type, pack_id, offset, length, raw_length)
            for blob_type, blob_id, length, raw_length, offset in self._entries
        }
        return pack_id, data, locations


def header_tail_length(blob_count_guess: int = 512) -> int:
    """How many tail bytes to fetch to (usually) get a whole pack header in one read."""
    return _TRAILER.size + SEAL_OVERHEAD + len(_HEADER_MAGIC) + _HEADER_ENTRY.size * blob_count_guess


def sealed_header_length(tail: bytes) -> int:
    if len(tail) < _TRAILER.size:
        raise CorruptionDetected("pack is too short to have a header")
    (length,) = _TRAILER.unpack(tail[-_TRAILER.size :])
    return int(length) + _TRAILER.size


def parse_pack_header(
    keys: MasterKeys, pack_id: bytes, pack_size: int, tail: bytes
) -> dict[bytes, BlobLocation]:
    """The blob locations recorded in a pack's own header; ``tail`` must hold the whole header."""
    what = f"header of pack {pack_id.hex()[:16]}"
    needed = sealed_header_length(tail)
    if needed > len(tail) or needed > pack_size:
        raise CorruptionDetected(f"{what}: header length {needed} exceeds the pack ({pack_size} bytes)")
    sealed = tail[len(tail) - needed : len(tail) - _TRAILER.size]
    header = keys.open(sealed, _HEADER_AAD, what)
    if not header.startswith(_HEADER_MAGIC) or (len(header) - len(_HEADER_MAGIC)) % _HEADER_ENTRY.size:
        raise CorruptionDetected(f"{what}: malformed")
    locations: dict[bytes, BlobLocation] = {}
    offset = 0
    for blob_type, blob_id, stored, raw in _HEADER_ENTRY.iter_unpack(header[len(_HEADER_MAGIC) :]):
        if blob_type not in _BLOB_TYPES:
            raise CorruptionDetected(f"{what}: unknown blob type {blob_type}")
        locations[blob_id] = BlobLocation(BlobType(blob_type), pack_id, offset, stored, raw)
        offset += stored
    if offset + needed != pack_size:
        raise CorruptionDetected(f"{what}: blobs and header do not add up to the pack size")
    return locations
