"""Keys and authenticated encryption for the repository.

* Content IDs are BLAKE3 in keyed mode under a per-repository secret, so a storage provider cannot
  confirm a guess about content by hashing it.
* Every stored byte (chunks, trees, pack headers, indexes, snapshots, config) is sealed with
  AES-256-GCM under a random 96-bit nonce; the associated data binds each ciphertext to what it
  claims to be (a blob to its ID and type), so ciphertexts cannot be swapped undetected.
* The master keys are wrapped by a key derived from the password with scrypt; changing the
  password rewrites one small key object, never the data.
"""

from __future__ import annotations

import base64
import functools
import hashlib
import hmac
import json
import os
import secrets
from dataclasses import dataclass
from typing import Any

import blake3
from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.scrypt import Scrypt

from barge.errors import CorruptionDetected, InvalidInput, PermanentError
from barge.repo.objects import Fields, parse_json

NONCE_SIZE = 12
TAG_SIZE = 16
SEAL_OVERHEAD = NONCE_SIZE + TAG_SIZE
ID_SIZE = 32


class WrongPassword(PermanentError):
    """No key object of the repository opens with the given password."""


# Bounds on the scrypt cost a key object may ask for: a crafted key object must not make unlocking
# take gigabytes or minutes. The default (n=2**16, r=8, p=1: 64 MiB, ~0.2 s) may be raised 32-fold in
# work and 4-fold in memory.
KDF_MIN_N = 2**10
KDF_MAX_N = 2**20
KDF_MAX_R = 32
KDF_MAX_P = 16
KDF_MAX_MEMORY = 256 * 1024 * 1024  # scrypt needs 128 * n * r bytes
KDF_MAX_WORK = 2**24  # n * r * p


@dataclass(frozen=True)
class KdfParams:
    """scrypt cost; stored in each key object so it can be raised later without a format change."""

    n: int = 2**16
    r: int = 8
    p: int = 1

    def problem(self) -> str | None:
        """Why these parameters are outside the bounds Barge accepts (None when they are fine)."""
        if not (KDF_MIN_N <= self.n <= KDF_MAX_N and self.n & (self.n - 1) == 0):
            return f"scrypt n={self.n} is not a power of two from {KDF_MIN_N} to {KDF_MAX_N}"
        if not (1 <= self.r <= KDF_MAX_R and 1 <= self.p <= KDF_MAX_P):
            return f"scrypt r={self.r}, p={self.p} are not within 1..{KDF_MAX_R} and 1..{KDF_MAX_P}"
        if 128 * self.n * self.r > KDF_MAX_MEMORY or self.n * self.r * self.p > KDF_MAX_WORK:
            return f"scrypt n={self.n}, r={self.r}, p={self.p} cost more than Barge allows"
        return None

    @classmethod
    def for_tests(cls) -> KdfParams:
        """Cheap parameters for tests only: they make brute force cheap too."""
        return cls(n=2**10, r=8, p=1)


@dataclass(frozen=True)
class MasterKeys:
    encryption: bytes  # AES-256-GCM key
    content_id: bytes  # BLAKE3 key for content IDs
    chunker_seed: int  # secret gear-table seed, so chunk boundaries do not fingerprint content

    @classmethod
    def generate(cls) -> MasterKeys:
        return cls(secrets.token_bytes(32), secrets.token_bytes(32), secrets.randbits(63) | 1)

    def content_id_of(self, data: bytes | memoryview) -> bytes:
        return blake3.blake3(data, key=self.content_id).digest()

    def source_id(self, source: bytes) -> bytes:
        """A keyed name for what a snapshot is a backup of (its PVC, its paths): HMAC-SHA256 under
        a key derived from ``content_id`` for this use only, so source-entry names tell a bucket
        reader nothing about the source and never coincide with a content ID."""
        name_key = hmac.digest(self.content_id, b"barge:source-id:v1", hashlib.sha256)
        return hmac.digest(name_key, source, hashlib.sha256)

    def seal(self, plaintext: bytes | memoryview, associated: bytes, prefix: bytes = b"") -> memoryview:
        """``nonce || AES-GCM(prefix + plaintext)``, built with two copies of the bytes (the joined
        plaintext, the ciphertext written in place after the nonce) instead of four: on the data
        path every copy is a pass over each backed-up byte."""
        joined: bytes | memoryview | bytearray = plaintext
        if prefix:
            joined = bytearray(len(prefix) + len(plaintext))
            joined[: len(prefix)] = prefix
            joined[len(prefix) :] = plaintext
        out = memoryview(bytearray(NONCE_SIZE + len(joined) + TAG_SIZE))
        nonce = os.urandom(NONCE_SIZE)
        out[:NONCE_SIZE] = nonce
        AESGCM(self.encryption).encrypt_into(nonce, joined, associated, out[NONCE_SIZE:])
        return out.toreadonly()

    def open(self, sealed: bytes | memoryview, associated: bytes, what: str) -> bytes:
        return open_sealed(self.encryption, sealed, associated, what)

    def to_json(self) -> bytes:
        return json.dumps(
            {
                "encryption": _b64(self.encryption),
                "content_id": _b64(self.content_id),
                "chunker_seed": self.chunker_seed,
            }
        ).encode()

    @classmethod
    def from_json(cls, data: bytes, what: str) -> MasterKeys:
        read = Fields(parse_json(data, what), what)
        return cls(
            read.base64("encryption", 32, 32),
            read.base64("content_id", 32, 32),
            read.integer("chunker_seed"),
        )


def open_sealed(key: bytes, sealed: bytes | memoryview, associated: bytes, what: str) -> bytes:
    """Decrypt and authenticate; any tampering or a wrong key is CorruptionDetected naming ``what``."""
    sealed = memoryview(sealed)
    if len(sealed) < SEAL_OVERHEAD:
        raise CorruptionDetected(f"{what} is truncated ({len(sealed)} bytes)")
    try:
        return AESGCM(key).decrypt(sealed[:NONCE_SIZE], sealed[NONCE_SIZE:], associated)
    except InvalidTag:
        raise CorruptionDetected(f"{what} failed authentication (corrupted or tampered with)") from None


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


_KEY_AAD = b"barge:key:v1"


@functools.lru_cache(maxsize=32)
def _derive(password: bytes, salt: bytes, params: KdfParams) -> bytes:
    """scrypt, remembered for the process's life: an agent unlocks the same repositories for every
    assignment, and each derivation costs ~0.2 s of CPU and 64 MiB. Memory only, never on disk,
    in the process that holds the password anyway; a key object that is wrong for the password or
    crafted still fails its AES-GCM tag."""
    return Scrypt(salt=salt, length=32, n=params.n, r=params.r, p=params.p).derive(password)


def wrap_master_keys(keys: MasterKeys, password: bytes, params: KdfParams) -> bytes:
    """A key object: the master keys sealed under scrypt(password)."""
    if not password:
        raise InvalidInput("the repository password must not be empty")
    if problem := params.problem():
        raise InvalidInput(problem)
    salt = secrets.token_bytes(16)
    wrapping_key = _derive(password, salt, params)
    nonce = os.urandom(NONCE_SIZE)
    sealed = nonce + AESGCM(wrapping_key).encrypt(nonce, keys.to_json(), _KEY_AAD)
    document: dict[str, Any] = {
        "version": 1,
        "kdf": "scrypt",
        "n": params.n,
        "r": params.r,
        "p": params.p,
        "salt": _b64(salt),
        "sealed": _b64(sealed),
    }
    return json.dumps(document, indent=1).encode()


@dataclass(frozen=True)
class KeyObject:
    """A key object's fields, checked: the scrypt cost is within bounds before anything is derived."""

    params: KdfParams
    salt: bytes
    sealed: bytes

    @classmethod
    def parse(cls, data: bytes, what: str) -> KeyObject:
        """CorruptionDetected (naming ``what``) unless ``data`` is a key object this version reads."""
        read = Fields(parse_json(data, what), what)
        version = read.integer("version")
        if version != 1 or read.text("kdf") != "scrypt":
            raise CorruptionDetected(f"{what}: unsupported key object (version {version}, another kdf)")
        params = KdfParams(read.integer("n"), read.integer("r"), read.integer("p"))
        if problem := params.problem():
            raise CorruptionDetected(f"{what}: {problem}")
        return cls(params, read.base64("salt", 16, 64), read.base64("sealed", SEAL_OVERHEAD, 4096))


def unwrap_master_keys(key_object: bytes, password: bytes, what: str = "key object") -> MasterKeys:
    """Open a key object; WrongPassword when the password does not fit it, CorruptionDetected
    (naming ``what``) when it is not a key object or asks for a scrypt cost out of bounds."""
    parsed = KeyObject.parse(key_object, what)
    wrapping_key = _derive(password, parsed.salt, parsed.params)
    nonce, ciphertext = parsed.sealed[:NONCE_SIZE], parsed.sealed[NONCE_SIZE:]
    try:
        plaintext = AESGCM(wrapping_key).decrypt(nonce, ciphertext, _KEY_AAD)
    except InvalidTag:
        raise WrongPassword("wrong repository password") from None
    return MasterKeys.from_json(plaintext, what)
