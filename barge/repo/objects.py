"""Repository objects read as untrusted input: bounded sizes, bounded JSON, typed fields.

Anyone with write access to the bucket can put any bytes under any key, and anyone with the
password can seal any plaintext. Every reader therefore goes through this module: an object larger
than its kind can be is refused before it is read, JSON nested deeper than the format ever nests is
refused before the parser recurses, and each field is checked for presence, type and range. All of
it ends in ``CorruptionDetected`` naming the object and the field, never a traceback, a hang or a
memory blow-up (docs/repository-format.md, "Limits").
"""

from __future__ import annotations

import base64
import binascii
import json
import re
import threading
from collections.abc import Iterable
from typing import Any

import zstandard

from barge.errors import CorruptionDetected
from barge.storage import ObjectStore

KIB = 1024
MIB = 1024 * KIB

# The largest object of each kind a reader accepts, checked before reading. Each is far above what
# Barge writes (the format doc lists what each holds) and small enough to hold in memory.
MAX_CONFIG = 64 * KIB
MAX_KEY_OBJECT = 64 * KIB
MAX_MANIFEST = 4 * MIB
MAX_SMALL_OBJECT = 64 * KIB  # sessions/*, gc/lock
MAX_INDEX_OBJECT = 256 * MIB  # sealed; writers split larger indexes (index.MAX_BLOBS_PER_OBJECT)
MAX_INDEX_BODY = 512 * MIB  # decompressed
MAX_PENDING = 256 * MIB  # gc/pending: ~70 bytes per condemned pack
MAX_TREE = 1024 * MIB  # one directory's listing (~250 bytes per entry)

# Barge's documents nest at most 4 deep (a tree's nodes' extents); anything deeper is not one.
MAX_JSON_DEPTH = 16

_INT64 = 2**63
# Nanosecond times: whatever a 64-bit time_t in seconds can hold (st_mtime_ns may exceed 2**63).
TIME_NS_LIMIT = 2**63 * 10**9
_STRING = re.compile(rb'"(?:[^"\\]|\\.)*"', re.DOTALL)
_NOT_BRACKETS = bytes(b for b in range(256) if b not in b"[]{}")


def read_bounded(store: ObjectStore, key: str, limit: int, what: str, size: int | None = None) -> bytes:
    """The object at ``key``, refused unless at most ``limit`` bytes: its size (``size``, when a
    listing already gave it, else one HEAD) is checked first, and the read asks for no more, so an
    object swapped for a larger one meanwhile is still never read past its announced size."""
    if size is None:
        size = store.stat(key).size
    if size > limit:
        raise CorruptionDetected(f"{what} is {size:,} bytes, larger than any valid one ({limit:,})")
    return store.get_range(key, 0, size) if size else b""


def read_json(store: ObjectStore, key: str, limit: int, what: str, size: int | None = None) -> Fields:
    """A plain JSON object stored at ``key`` (``read_bounded``, ``parse_json``), its fields typed."""
    return Fields(parse_json(read_bounded(store, key, limit, what, size), what), what)


_DECOMPRESSORS = threading.local()


def _decompressor() -> zstandard.ZstdDecompressor:
    """This thread's decompressor: making one per blob cost 3% of a restore's CPU. Not shared
    between threads, which zstandard does not allow."""
    if not hasattr(_DECOMPRESSORS, "value"):
        _DECOMPRESSORS.value = zstandard.ZstdDecompressor()
    decompressor: zstandard.ZstdDecompressor = _DECOMPRESSORS.value
    return decompressor


def decompress_bounded(data: bytes | memoryview, limit: int, what: str) -> bytes:
    """One zstd frame's content, refused when it would exceed ``limit`` bytes: checked against
    the size the frame declares before anything is allocated (zstandard trusts that size)."""
    try:
        declared = zstandard.frame_content_size(data)
        if declared > limit:
            raise CorruptionDetected(f"{what}: decompresses to {declared:,} bytes, more than {limit:,}")
        return _decompressor().decompress(data, max_output_size=limit)
    except zstandard.ZstdError as err:
        raise CorruptionDetected(f"{what}: cannot decompress: {err}") from err


def parse_json(data: bytes, what: str) -> object:
    """``data`` as a JSON document; deep nesting is refused without recursing into it."""
    if _nesting_exceeds(data, MAX_JSON_DEPTH):
        raise CorruptionDetected(f"{what}: JSON nested more than {MAX_JSON_DEPTH} levels deep")
    try:
        return json.loads(data.decode("utf-8"))
    except (UnicodeDecodeError, ValueError, RecursionError) as err:
        # ValueError: not JSON, or an integer of more digits than Python converts.
        raise CorruptionDetected(f"{what}: not JSON ({str(err)[:100]})") from None


def _nesting_exceeds(data: bytes, limit: int) -> bool:
    """Whether brackets outside strings nest deeper than ``limit``. Counting every bracket (in C:
    everything else deleted, innermost pairs peeled off one level per pass) settles almost every
    document at once; only one that looks too deep is counted again with its strings dropped, so a
    name full of brackets is never mistaken for nesting. (Brackets in strings can also make the
    first count too low; the parser's own recursion guard still stops anything truly deep.)"""
    return _peel_exceeds(data.translate(None, _NOT_BRACKETS), limit) and _peel_exceeds(
        _STRING.sub(b"", data).translate(None, _NOT_BRACKETS), limit
    )


def _peel_exceeds(brackets: bytes, limit: int) -> bool:
    for _ in range(limit):
        peeled = brackets.replace(b"[]", b"").replace(b"{}", b"")
        if len(peeled) == len(brackets):
            return False  # none left, or unbalanced: the parser says what is wrong
        brackets = peeled
    return b"[]" in brackets or b"{}" in brackets


class Fields:
    """Typed access to one JSON object's fields; every failure names the object and the field."""

    def __init__(self, document: object, what: str) -> None:
        if not isinstance(document, dict):
            raise CorruptionDetected(f"{what}: not a JSON object")
        self.document: dict[str, Any] = document
        self.what = what

    def has(self, name: str) -> bool:
        return name in self.document

    def get(self, name: str) -> object:
        if name not in self.document:
            raise CorruptionDetected(f"{self.what}: field {name!r} is missing")
        return self.document[name]

    def wrong(self, name: str, expected: str) -> CorruptionDetected:
        return CorruptionDetected(f"{self.what}: field {name!r} is not {expected}")

    def time_ns(self, name: str, default: int | None = None) -> int:
        return self.integer(name, -TIME_NS_LIMIT, TIME_NS_LIMIT, default)

    def integer(self, name: str, low: int = 0, high: int = _INT64 - 1, default: int | None = None) -> int:
        """A whole number in ``[low, high]`` (default: 0 up to the largest signed 64-bit one)."""
        if default is not None and name not in self.document:
            return default
        value = self.get(name)
        if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
            raise self.wrong(name, f"a whole number from {low} to {high}")
        return value

    def text(self, name: str) -> str:
        value = self.get(name)
        if not isinstance(value, str):
            raise self.wrong(name, "a string")
        return value

    def optional_text(self, name: str) -> str | None:
        value = self.document.get(name)
        if value is not None and not isinstance(value, str):
            raise self.wrong(name, "a string or null")
        return value

    def strings(self, name: str) -> list[str]:
        value = self.get(name)
        if not isinstance(value, list) or not all(isinstance(item, str) for item in value):
            raise self.wrong(name, "a list of strings")
        return value

    def string_map(self, name: str) -> dict[str, str]:
        value = self.document.get(name) or {}
        if not isinstance(value, dict) or not all(isinstance(v, str) for v in value.values()):
            raise self.wrong(name, "an object of strings")
        return dict(value)

    def list(self, name: str, default: Iterable[object] | None = None) -> list[object]:
        if default is not None and name not in self.document:
            return list(default)
        value = self.get(name)
        if not isinstance(value, list):
            raise self.wrong(name, "a list")
        return value

    def base64(self, name: str, min_length: int = 0, max_length: int = MAX_KEY_OBJECT) -> bytes:
        value = self.get(name)
        decoded = decode_base64(value) if isinstance(value, str) else None
        if decoded is None or not min_length <= len(decoded) <= max_length:
            raise self.wrong(name, f"base64 of {min_length} to {max_length} bytes")
        return decoded

    def hex_id(self, name: str, optional: bool = False) -> bytes | None:
        """A 32-byte ID as 64 hex digits (``None`` where ``optional`` and absent or null)."""
        value = self.document.get(name)
        if value is None and optional:
            return None
        parsed = parse_hex_id(value)
        if parsed is None:
            raise self.wrong(name, "an ID of 64 hex digits" + (" or null" if optional else ""))
        return parsed

    def inner(self, name: str) -> Fields:
        return Fields(self.get(name), f"{self.what} {name}")


def decode_base64(text: str) -> bytes | None:
    try:
        return base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError):
        return None


def parse_hex_id(value: object) -> bytes | None:
    """32 bytes from 64 lowercase hex digits, else None. (Once per blob of every tree read: the
    round trip through ``hex()`` checks the form at a third of the cost of stripping digits.)"""
    if type(value) is not str or len(value) != 64:
        return None
    try:
        parsed = bytes.fromhex(value)
    except ValueError:
        return None
    return parsed if parsed.hex() == value else None


__all__ = [
    "MAX_CONFIG",
    "MAX_INDEX_BODY",
    "MAX_INDEX_OBJECT",
    "MAX_JSON_DEPTH",
    "MAX_KEY_OBJECT",
    "MAX_MANIFEST",
    "MAX_PENDING",
    "MAX_SMALL_OBJECT",
    "MAX_TREE",
    "TIME_NS_LIMIT",
    "Fields",
    "decompress_bounded",
    "parse_hex_id",
    "parse_json",
    "read_bounded",
    "read_json",
]
