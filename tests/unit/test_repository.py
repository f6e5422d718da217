"""The repository engine on the local backend: keys, packs, index, snapshots, damage detection."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.kdf.scrypt import Scrypt

from barge.errors import CorruptionDetected, InvalidInput, NotFound
from barge.repo import crypto
from barge.repo.crypto import KdfParams, WrongPassword
from barge.repo.pack import BlobType, pack_key
from barge.repo.repository import Repository, RepositoryNotFound, RepositorySettings
from barge.repo.snapshot import Snapshot, SnapshotKind, SnapshotSummary
from barge.storage.local import LocalDirectoryStore

PASSWORD = b"correct horse battery staple"
SMALL = RepositorySettings(chunk_min=4096, chunk_avg=16384, chunk_max=65536, pack_target=256 * 1024)


def new_repo(path: Path, settings: RepositorySettings = SMALL) -> Repository:
    return Repository.init(LocalDirectoryStore(path), PASSWORD, settings, KdfParams.for_tests())


def test_init_then_open_with_the_password(tmp_path: Path) -> None:
    created = new_repo(tmp_path)
    opened = Repository.open(LocalDirectoryStore(tmp_path), PASSWORD)
    assert opened.config == created.config
    assert opened.keys == created.keys


def test_wrong_password_and_missing_repository_are_clear_errors(tmp_path: Path) -> None:
    new_repo(tmp_path / "r")
    with pytest.raises(WrongPassword, match="wrong password"):
        Repository.open(LocalDirectoryStore(tmp_path / "r"), b"guess")
    with pytest.raises(RepositoryNotFound, match="barge repo init"):
        Repository.open(LocalDirectoryStore(tmp_path / "empty"), PASSWORD)


def test_a_process_derives_a_password_key_once_and_a_wrong_password_still_fails(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """An agent opens the same repository for every assignment: scrypt runs once per process."""
    new_repo(tmp_path)
    derivations: list[bytes] = []
    real_scrypt = crypto.Scrypt

    def counting(*, salt: bytes, **params: int) -> Scrypt:
        derivations.append(salt)
        return real_scrypt(salt=salt, **params)

    monkeypatch.setattr(crypto, "Scrypt", counting)
    crypto._derive.cache_clear()  # init derived it already
    keys = {Repository.open(LocalDirectoryStore(tmp_path), PASSWORD).keys for _ in range(3)}
    assert len(keys) == 1
    assert len(derivations) == 1
    for _ in range(2):
        with pytest.raises(WrongPassword):
            Repository.open(LocalDirectoryStore(tmp_path), b"guess")


def test_init_twice_is_refused(tmp_path: Path) -> None:
    new_repo(tmp_path)
    with pytest.raises(InvalidInput, match="already exists"):
        new_repo(tmp_path)


def test_nothing_stored_reveals_plaintext(tmp_path: Path) -> None:
    repo = new_repo(tmp_path)
    secret = b"SECRET-MARKER-" * 1000
    with repo.writer() as writer:
        writer.add_blob(BlobType.DATA, secret)
    for path in tmp_path.rglob("*"):
        if path.is_file():
            assert b"SECRET-MARKER" not in path.read_bytes()


def test_blobs_deduplicate_and_read_back_across_sessions(tmp_path: Path) -> None:
    repo = new_repo(tmp_path)
    payloads = [os.urandom(50_000) for _ in range(20)]
    with repo.writer() as writer:
        ids = [writer.add_blob(BlobType.DATA, p) for p in payloads + payloads]
        assert writer.stats.blobs_new == 20
    reopened = Repository.open(LocalDirectoryStore(tmp_path), PASSWORD)
    assert [reopened.read_blob(i) for i in ids[:20]] == payloads
    with reopened.writer() as writer:
        for p in payloads:
            writer.add_blob(BlobType.DATA, p)
        assert writer.stats.blobs_new == 0
    assert not list(LocalDirectoryStore(tmp_path).list("sessions/"))


class CountingStore(LocalDirectoryStore):
    def __init__(self, root: Path) -> None:
        super().__init__(root)
        self.ranges: list[tuple[str, int, int]] = []

    def get_range(self, key: str, offset: int, length: int) -> bytes:
        self.ranges.append((key, offset, length))
        return super().get_range(key, offset, length)


def test_blobs_side_by_side_in_a_pack_are_read_with_one_request(tmp_path: Path) -> None:
    new_repo(tmp_path)  # SMALL: packs of 256 KiB, so 40 blobs of 20 KB fill several
    repo = Repository.open(store := CountingStore(tmp_path), PASSWORD)
    payloads = [os.urandom(20_000) for _ in range(40)]
    with repo.writer() as writer:
        ids = [writer.add_blob(BlobType.DATA, p) for p in payloads]
    packs = {repo.index.get(i).pack_id for i in ids}  # type: ignore[union-attr]
    store.ranges.clear()
    assert repo.read_blobs(reversed(ids)) == dict(zip(ids, payloads, strict=True))
    assert len(store.ranges) == len(packs) < len(ids)
    # One damaged blob in a run is named, not passed over.
    victim = repo.index.get(ids[7])
    assert victim is not None
    path = tmp_path / pack_key(victim.pack_id)
    damaged = bytearray(path.read_bytes())
    damaged[victim.offset + 20] ^= 1
    path.write_bytes(bytes(damaged))
    with pytest.raises(CorruptionDetected, match=ids[7].hex()[:16]):
        repo.read_blobs(ids)


def test_content_ids_are_keyed_per_repository(tmp_path: Path) -> None:
    one, two = new_repo(tmp_path / "a"), new_repo(tmp_path / "b")
    assert one.keys.content_id_of(b"same") != two.keys.content_id_of(b"same")


def test_compressible_data_is_stored_smaller(tmp_path: Path) -> None:
    repo = new_repo(tmp_path)
    with repo.writer() as writer:
        writer.add_blob(BlobType.DATA, b"a" * 60_000)
        assert writer.stats.bytes_stored < 2_000


def test_password_change_keeps_the_data(tmp_path: Path) -> None:
    repo = new_repo(tmp_path)
    with repo.writer() as writer:
        blob = writer.add_blob(BlobType.DATA, b"keep me")
    repo.change_password(b"new password", KdfParams.for_tests())
    with pytest.raises(WrongPassword):
        Repository.open(LocalDirectoryStore(tmp_path), PASSWORD)
    assert Repository.open(LocalDirectoryStore(tmp_path), b"new password").read_blob(blob) == b"keep me"


def test_snapshot_manifests_round_trip_and_forget(tmp_path: Path) -> None:
    repo = new_repo(tmp_path)
    snapshot = Snapshot(
        kind=SnapshotKind.BLOCK,
        time="2026-03-01T12:00:00+00:00",
        hostname="h",
        paths=("/dev/x",),
        tree=bytes(32),
        summary=SnapshotSummary(files=1, bytes_total=10),
        tags={"k": "v"},
        parent="ab" * 32,
    )
    snapshot_id = repo.save_snapshot(snapshot)
    assert repo.snapshot_ids() == [snapshot_id]
    assert repo.load_snapshot(snapshot_id) == snapshot
    repo.forget_snapshot(snapshot_id)
    assert repo.snapshot_ids() == []
    with pytest.raises(NotFound):
        repo.load_snapshot(snapshot_id)
    with pytest.raises(InvalidInput, match="not a snapshot ID"):
        repo.load_snapshot("../../etc/passwd")


def _only_pack(tmp_path: Path, repo: Repository) -> Path:
    (pack_id,) = repo.index.packs
    return tmp_path / pack_key(pack_id)


def test_a_flipped_byte_in_a_pack_is_detected_on_read(tmp_path: Path) -> None:
    repo = new_repo(tmp_path)
    with repo.writer() as writer:
        blob = writer.add_blob(BlobType.DATA, os.urandom(10_000))
    pack = _only_pack(tmp_path, repo)
    data = bytearray(pack.read_bytes())
    data[100] ^= 0x01
    pack.chmod(0o644)
    pack.write_bytes(bytes(data))
    with pytest.raises(CorruptionDetected, match="failed authentication"):
        Repository.open(LocalDirectoryStore(tmp_path), PASSWORD).read_blob(blob)


def test_a_truncated_pack_is_detected_on_read(tmp_path: Path) -> None:
    repo = new_repo(tmp_path)
    with repo.writer() as writer:
        blob = writer.add_blob(BlobType.DATA, os.urandom(10_000))
    pack = _only_pack(tmp_path, repo)
    pack.write_bytes(pack.read_bytes()[:5000])
    with pytest.raises(CorruptionDetected):
        Repository.open(LocalDirectoryStore(tmp_path), PASSWORD).read_blob(blob)


def test_pack_headers_alone_rebuild_the_index(tmp_path: Path) -> None:
    repo = new_repo(tmp_path)
    with repo.writer() as writer:
        ids = [writer.add_blob(BlobType.DATA, os.urandom(40_000)) for _ in range(30)]
    for index_object in (tmp_path / "index").iterdir():
        index_object.unlink()
    reopened = Repository.open(LocalDirectoryStore(tmp_path), PASSWORD)
    assert len(reopened.index) == 0
    with reopened.writer() as writer:
        assert writer.adopt_orphan_packs() == len(repo.index.packs) > 1
    final = Repository.open(LocalDirectoryStore(tmp_path), PASSWORD)
    assert all(final.read_blob(i) for i in ids)


def test_an_interrupted_writer_leaves_reusable_packs(tmp_path: Path) -> None:
    """A writer killed before writing any index: the next writer adopts its packs and re-uploads
    only what never reached the store (the blobs still in its unfinished pack)."""
    repo = new_repo(tmp_path)
    store = LocalDirectoryStore(tmp_path)
    payloads = [os.urandom(40_000) for _ in range(30)]
    writer = repo.writer(index_flush_seconds=3600)
    for p in payloads:
        writer.add_blob(BlobType.DATA, p)
    for future in list(writer._futures):
        future.result()  # uploads in flight finish; then the process "dies" without flushing
    assert writer.stats.packs >= 1
    assert list(store.list("index/")) == []

    resumed = Repository.open(store, PASSWORD)
    with resumed.writer() as again:
        assert again.adopt_orphan_packs() == writer.stats.packs
        already_stored = sum(loc.raw_length for _, loc in resumed.index.items())
        for p in payloads:
            again.add_blob(BlobType.DATA, p)
        assert already_stored > 0
        assert again.stats.bytes_new == sum(len(p) for p in payloads) - already_stored
    final = Repository.open(store, PASSWORD)
    assert all(final.read_blob(final.keys.content_id_of(p)) == p for p in payloads)


def test_concurrent_writers_share_a_repository_without_locks(tmp_path: Path) -> None:
    import threading

    repo_a = new_repo(tmp_path)
    repo_b = Repository.open(LocalDirectoryStore(tmp_path), PASSWORD)
    common = [os.urandom(30_000) for _ in range(20)]
    own = {"a": [os.urandom(30_000) for _ in range(20)], "b": [os.urandom(30_000) for _ in range(20)]}
    ids: dict[str, list[bytes]] = {}

    def write(name: str, repo: Repository) -> None:
        with repo.writer() as writer:
            ids[name] = [writer.add_blob(BlobType.DATA, p) for p in common + own[name]]

    threads = [threading.Thread(target=write, args=(n, r)) for n, r in (("a", repo_a), ("b", repo_b))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    final = Repository.open(LocalDirectoryStore(tmp_path), PASSWORD)
    for name in ("a", "b"):
        assert [final.read_blob(i) for i in ids[name]] == common + own[name]
