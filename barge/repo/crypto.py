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

NONCE_SIZE = 12
TAG_SIZE = 16
SEAL_OVERHEAD = NONCE_SIZE + TAG_SIZE
ID_SIZE = 32


class WrongPassword(PermanentError):
    """No key object of the repository opens with the given password."""


@dataclass(frozen=True)
class KdfParams:
    """scrypt cost; stored in each key object so it can be raised later without a format change."""

    n: int = 2**16
    r: int = 8
    p: int = 1

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

    def seal(self, plaintext: bytes | memoryview, associated: bytes) -> bytes:
        nonce = os.urandom(NONCE_SIZE)
        return nonce + AESGCM(self.encryption).encrypt(nonce, bytes(plaintext), associated)

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
    def from_json(cls, data: bytes) -> MasterKeys:
        doc = json.loads(data)
        return cls(_unb64(doc["encryption"]), _unb64(doc["content_id"]), int(doc["chunker_seed"]))


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


def _unb64(text: str) -> bytes:
    return base64.b64decode(text, validate=True)


_KEY_AAD = b"barge:key:v1"


def _derive(password: bytes, salt: bytes, params: KdfParams) -> bytes:
    return Scrypt(salt=salt, length=32, n=params.n, r=params.r, p=params.p).derive(password)


def wrap_master_keys(keys: MasterKeys, password: bytes, params: KdfParams) -> bytes:
    """A key object: the master keys sealed under scrypt(password)."""
    if not password:
        raise InvalidInput("the repository password must not be empty")
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


def unwrap_master_keys(key_object: bytes, password: bytes) -> MasterKeys:
    """Open a key object; WrongPassword when the password does not fit it."""
    try:
        doc = json.loads(key_object)
        if doc.get("version") != 1 or doc.get("kdf") != "scrypt":
            raise CorruptionDetected(f"unsupported key object (version {doc.get('version')!r})")
        params = KdfParams(int(doc["n"]), int(doc["r"]), int(doc["p"]))
        wrapping_key = _derive(password, _unb64(doc["salt"]), params)
        sealed = _unb64(doc["sealed"])
    except (ValueError, KeyError, TypeError) as err:
        raise CorruptionDetected(f"key object is malformed: {err}") from err
    try:
        plaintext = AESGCM(wrapping_key).decrypt(sealed[:NONCE_SIZE], sealed[NONCE_SIZE:], _KEY_AAD)
    except InvalidTag:
        raise WrongPassword("wrong repository password") from None
    return MasterKeys.from_json(plaintext)
