"""The merged index on local disk (barge/repo/index_layers.py): the same answers as a dict of every
blob, incremental refreshes that fetch only new index objects, superseded objects honoured, and
damaged or crafted cache files refused and rebuilt, never believed."""

from __future__ import annotations

import errno
import os
import random
from collections.abc import Iterator
from pathlib import Path

import pytest

from barge.errors import CorruptionDetected
from barge.repo.crypto import KdfParams, MasterKeys
from barge.repo.index import Index, encode_index, open_index, walk_index
from barge.repo.index_layers import (
    BLOCK_RECORDS,
    CacheDamaged,
    Layer,
    ObjectRecords,
    cache_key,
    refresh_layers,
)
from barge.repo.pack import BlobLocation, BlobType
from barge.repo.repository import Repository
from barge.storage.local import LocalDirectoryStore
from tests.faultystore import FaultyStore

Packs = dict[bytes, dict[bytes, BlobLocation]]
KEYS = MasterKeys.generate()
KEY = cache_key(KEYS.content_id)


def random_packs(rng: random.Random, packs: int, blobs_per_pack: int) -> Packs:
    result: Packs = {}
    for _ in range(packs):
        pack_id = rng.randbytes(32)
        result[pack_id] = {
            rng.randbytes(32): BlobLocation(
                BlobType(rng.randrange(2)), pack_id, n * 100, rng.randrange(1 << 20), rng.randrange(1 << 20)
            )
            for n in range(rng.randrange(1, blobs_per_pack + 1))
        }
    return result


class Storage:
    """Index objects as a repository holds them, and which ones each refresh fetched."""

    def __init__(self) -> None:
        self.objects: dict[bytes, tuple[list[bytes], Packs, bytes]] = {}
        self.fetched: list[bytes] = []

    def put(self, packs: Packs, supersedes: list[bytes] | None = None) -> bytes:
        index_id, sealed = encode_index(KEYS, packs, supersedes or [])
        self.objects[index_id] = (supersedes or [], packs, sealed)
        return index_id

    def delete(self, index_id: bytes) -> None:
        del self.objects[index_id]

    def fetch(self, wanted: list[bytes]) -> Iterator[ObjectRecords | str]:
        for index_id in wanted:
            self.fetched.append(index_id)
            plain = open_index(KEYS, index_id, self.objects[index_id][2])
            superseded, packs = walk_index(plain, "test")
            yield ObjectRecords(index_id, superseded, plain, packs)

    def listed(self) -> dict[bytes, int]:
        return {index_id: len(sealed) for index_id, (_, _, sealed) in self.objects.items()}

    def packs(self) -> set[bytes]:
        superseded = {old for olds, _, _ in self.objects.values() for old in olds}
        return {p for i, (_, found, _) in self.objects.items() if i not in superseded for p in found}

    def expected(self, condemned: frozenset[bytes] = frozenset()) -> dict[bytes, BlobLocation]:
        """What the old in-memory index held: every live object's packs, condemned ones last."""
        superseded = {old for olds, _, _ in self.objects.values() for old in olds}
        packs: Packs = {}
        for index_id, (_, found, _) in self.objects.items():
            if index_id not in superseded:
                packs.update(found)
        blobs: dict[bytes, BlobLocation] = {}
        for pack_id in sorted(packs, key=lambda p: p in condemned):
            for blob_id, location in packs[pack_id].items():
                blobs.setdefault(blob_id, location)
        return blobs

    def open(self, directory: Path | None, condemned: frozenset[bytes] = frozenset()) -> Index:
        self.fetched.clear()
        layers, problems = refresh_layers(directory, KEY, self.listed(), self.fetch, now=0.0)
        assert problems == []
        return Index(layers, condemned)


def assert_same(
    index: Index, storage: Storage, absent: list[bytes], condemned: frozenset[bytes] = frozenset()
) -> None:
    expected = storage.expected(condemned)
    assert dict(index.items()) == expected
    assert len(index) == len(expected)
    for blob_id, location in expected.items():
        assert index.get(blob_id) == location
        assert blob_id in index
    for blob_id in absent:
        assert index.get(blob_id) is None
        assert blob_id not in index
    assert set(index.packs) == storage.packs()
    assert len(index.packs) == len(storage.packs())
    assert all(pack_id in index.packs for pack_id in storage.packs())


def test_lookups_equal_the_dict_of_every_blob_on_random_data(tmp_path: Path) -> None:
    rng = random.Random(1)
    storage = Storage()
    for _ in range(5):
        storage.put(random_packs(rng, packs=40, blobs_per_pack=2 * BLOCK_RECORDS // 40))
    # The same blobs in a second pack, which garbage collection condemned: the first copy wins.
    condemned_pack = rng.randbytes(32)
    some = list(storage.expected())[:300]
    copies = {b: BlobLocation(BlobType.DATA, condemned_pack, n, 10, 10) for n, b in enumerate(some)}
    storage.put({condemned_pack: copies})
    index = storage.open(tmp_path, frozenset({condemned_pack}))
    absent = [rng.randbytes(32) for _ in range(100)]
    assert_same(index, storage, absent, frozenset({condemned_pack}))
    for index_id, (_, packs, _) in storage.objects.items():
        for pack_id in packs:
            assert index.origin(pack_id) == index_id


def test_a_blob_only_in_a_condemned_pack_is_still_found(tmp_path: Path) -> None:
    storage = Storage()
    pack = b"p" * 32
    storage.put({pack: {b"b" * 32: BlobLocation(BlobType.TREE, pack, 0, 5, 5)}})
    index = storage.open(tmp_path, frozenset({pack}))
    assert index.get(b"b" * 32) == BlobLocation(BlobType.TREE, pack, 0, 5, 5)


def test_refresh_fetches_only_new_objects_and_keeps_layers_few(tmp_path: Path) -> None:
    rng = random.Random(2)
    storage = Storage()
    storage.put(random_packs(rng, packs=50, blobs_per_pack=60))
    storage.open(tmp_path)
    assert storage.open(tmp_path) is not None
    assert storage.fetched == []
    for _ in range(12):
        new = storage.put(random_packs(rng, packs=2, blobs_per_pack=20))
        index = storage.open(tmp_path)
        assert new in storage.fetched
        assert len(storage.fetched) < len(storage.objects)
        assert_same(index, storage, [])
    assert len(list(tmp_path.glob("layer-*"))) <= 8


def test_superseded_objects_are_honoured_across_layers(tmp_path: Path) -> None:
    rng = random.Random(3)
    storage = Storage()
    first = random_packs(rng, packs=5, blobs_per_pack=30)
    old = storage.put(first)
    other = storage.put(random_packs(rng, packs=5, blobs_per_pack=30))
    storage.open(tmp_path)
    # gc keeps all but one pack of the old object in one that supersedes it, then deletes it.
    dropped = next(iter(first))
    kept = {pack_id: blobs for pack_id, blobs in first.items() if pack_id != dropped}
    storage.put(kept, supersedes=[old])
    index = storage.open(tmp_path)
    assert_same(index, storage, list(first[dropped]))
    assert dropped not in index.packs
    # The layer that held the old object is rebuilt without it: the object is not fetched again.
    assert other in storage.fetched
    assert old not in storage.fetched
    storage.delete(old)
    assert_same(storage.open(tmp_path), storage, list(first[dropped]))


def test_an_object_superseded_before_it_was_cached_is_never_fetched(tmp_path: Path) -> None:
    rng = random.Random(4)
    storage = Storage()
    packs = random_packs(rng, packs=3, blobs_per_pack=10)
    old = storage.put(packs)
    storage.put(packs, supersedes=[old])
    index = storage.open(tmp_path)
    assert_same(index, storage, [])
    storage.fetched.clear()
    assert storage.open(tmp_path) is not None
    assert storage.fetched == []


def test_a_damaged_layer_trailer_is_removed_and_rebuilt(tmp_path: Path) -> None:
    rng = random.Random(5)
    storage = Storage()
    storage.put(random_packs(rng, packs=20, blobs_per_pack=50))
    storage.open(tmp_path)
    (layer_file,) = tmp_path.glob("layer-*")
    data = bytearray(layer_file.read_bytes())
    data[-40] ^= 1  # in the trailer
    layer_file.write_bytes(bytes(data))
    index = storage.open(tmp_path)
    assert len(storage.fetched) == 1  # rebuilt from storage
    assert not layer_file.exists()
    assert_same(index, storage, [])


def test_a_block_damaged_after_opening_is_refused_then_rebuilt(tmp_path: Path) -> None:
    rng = random.Random(6)
    storage = Storage()
    storage.put(random_packs(rng, packs=20, blobs_per_pack=50))
    index = storage.open(tmp_path)
    (layer_file,) = tmp_path.glob("layer-*")
    data = bytearray(layer_file.read_bytes())
    data[len(data) // 2] ^= 1  # inside a blob block
    layer_file.write_bytes(bytes(data))
    with pytest.raises(CacheDamaged, match="does not verify"):
        dict(index.items())
    assert not layer_file.exists()
    assert_same(storage.open(tmp_path), storage, [])


def test_a_layer_made_with_another_key_is_refused(tmp_path: Path) -> None:
    storage = Storage()
    storage.put(random_packs(random.Random(7), packs=3, blobs_per_pack=5))
    storage.open(tmp_path)
    (layer_file,) = tmp_path.glob("layer-*")
    with pytest.raises(CorruptionDetected, match="does not verify"):
        Layer(layer_file, os.open(layer_file, os.O_RDONLY), cache_key(MasterKeys.generate().content_id))


def test_a_blob_of_an_unknown_type_makes_the_object_unreadable() -> None:
    pack = b"p" * 32
    index_id, sealed = encode_index(KEYS, {pack: {b"b" * 32: BlobLocation(BlobType.DATA, pack, 0, 5, 5)}})
    plain = bytearray(open_index(KEYS, index_id, sealed))
    plain[-45] = 7
    with pytest.raises(CorruptionDetected, match="unknown type"):
        walk_index(bytes(plain), "index x")


def test_a_repository_opened_again_reads_no_index_object(tmp_path: Path) -> None:
    store = LocalDirectoryStore(tmp_path / "repo")
    repo = Repository.init(store, b"pw", kdf=KdfParams.for_tests())
    with repo.writer() as writer:
        blob_ids = [writer.add_blob(BlobType.DATA, f"blob {n}".encode() * 100) for n in range(50)]
    counted = FaultyStore(store)
    cache = tmp_path / "cache"
    first = Repository.open(counted, b"pw", cache_dir=cache)
    assert any(op == "get_range" and key.startswith("index/") for op, key in counted.calls)
    counted.calls.clear()
    again = Repository.open(counted, b"pw", cache_dir=cache)
    assert not any(key.startswith("index/") for op, key in counted.calls if op != "list")
    for blob_id in blob_ids:
        assert again.index.get(blob_id) == first.index.get(blob_id) is not None
        assert again.read_blob(blob_id)


def test_an_unusable_cache_dir_falls_back_to_a_temporary_file(tmp_path: Path) -> None:
    store = LocalDirectoryStore(tmp_path / "repo")
    repo = Repository.init(store, b"pw", kdf=KdfParams.for_tests())
    with repo.writer() as writer:
        blob_id = writer.add_blob(BlobType.DATA, b"data" * 100)
    not_a_dir = tmp_path / "file"
    not_a_dir.write_bytes(b"")
    assert Repository.open(store, b"pw", cache_dir=not_a_dir).read_blob(blob_id) == b"data" * 100


def test_a_full_cache_dir_falls_back_to_a_temporary_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    store = LocalDirectoryStore(tmp_path / "repo")
    repo = Repository.init(store, b"pw", kdf=KdfParams.for_tests())
    with repo.writer() as writer:
        blob_id = writer.add_blob(BlobType.DATA, b"data" * 100)

    def full(*_: object) -> None:
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(os, "replace", full)
    assert Repository.open(store, b"pw", cache_dir=tmp_path / "cache").read_blob(blob_id) == b"data" * 100
    assert not list((tmp_path / "cache").rglob("*layer*"))


def test_copies_of_one_blob_across_several_blocks_are_all_seen(tmp_path: Path) -> None:
    storage = Storage()
    blob_id = b"\x80" * 32
    object_of = {}
    for n in range(2 * BLOCK_RECORDS + 10):
        pack_id = bytes([n % 256, n // 256]) * 16
        object_of[storage.put({pack_id: {blob_id: BlobLocation(BlobType.DATA, pack_id, 0, 5, 5)}})] = pack_id
    # Objects are fetched in ID order, so the last one's copy is the last record, two blocks on.
    usable = object_of[max(object_of)]
    index = storage.open(tmp_path, frozenset(object_of.values()) - {usable})
    assert index.get(blob_id) == BlobLocation(BlobType.DATA, usable, 0, 5, 5)
    assert dict(index.items()) == {blob_id: BlobLocation(BlobType.DATA, usable, 0, 5, 5)}
    assert index.get(b"\x80" * 31 + b"\x81") is None


def test_a_symlink_or_an_oversized_trailer_in_the_cache_is_removed_never_followed(tmp_path: Path) -> None:
    storage = Storage()
    storage.put(random_packs(random.Random(8), packs=3, blobs_per_pack=5))
    storage.open(tmp_path)
    (layer_file,) = tmp_path.glob("layer-*")
    elsewhere = tmp_path.parent / f"{tmp_path.name}-elsewhere"
    layer_file.rename(elsewhere)  # a valid layer, reached only through a link
    (tmp_path / "layer-link").symlink_to(elsewhere)
    oversized = tmp_path / "layer-oversized"
    oversized.write_bytes(b"\0" * 64 + (2**32 - 1).to_bytes(4, "little") + b"\0" * 32)
    assert_same(storage.open(tmp_path), storage, [])
    assert len(storage.fetched) == 1  # rebuilt: neither file was believed
    assert not (tmp_path / "layer-link").exists()
    assert not (tmp_path / "layer-link").is_symlink()
    assert not oversized.exists()
    assert elsewhere.exists()
