"""``check``'s sampled reading of pack bytes, and checks that run beside garbage collection."""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from barge.fs.backup import backup_tree
from barge.repo.check import PackSample, check_repository
from barge.repo.crypto import KdfParams
from barge.repo.gc import collect_garbage
from barge.repo.pack import pack_id_from_key, pack_key
from barge.repo.repository import Repository, RepositorySettings
from barge.repo.session import read_pending
from barge.storage import ObjectInfo
from barge.storage.local import LocalDirectoryStore
from tests.fsbuild import MIB, write

pytestmark = pytest.mark.unit
PASSWORD = b"pw"
SETTINGS = RepositorySettings(chunk_min=16 * 1024, chunk_avg=64 * 1024, chunk_max=256 * 1024, pack_target=MIB)


class HookedStore(LocalDirectoryStore):
    """Runs ``before_listing_data`` once, when the check lists ``data/``: what a garbage
    collection running at that moment would have done."""

    before_listing_data: Callable[[], None] | None = None

    def list(self, prefix: str) -> Iterator[ObjectInfo]:
        hook = self.before_listing_data
        if prefix == "data/" and hook is not None:
            self.before_listing_data = None
            hook()
        return super().list(prefix)


@pytest.fixture
def repo(tmp_path: Path) -> Repository:
    return Repository.init(HookedStore(tmp_path / "repo"), PASSWORD, SETTINGS, KdfParams.for_tests())


def backup(repo: Repository, root: Path, files: int) -> str:
    for i in range(files):
        write(root / f"f{i}", os.urandom(300_000))
    return backup_tree(repo, root).snapshot_id


def pack_ids(repo: Repository) -> list[bytes]:
    return sorted(p for p in (pack_id_from_key(i.key) for i in repo.store.list("data/")) if p is not None)


def flip_a_byte(repo: Repository, pack_id: bytes) -> None:
    store = repo.store
    assert isinstance(store, LocalDirectoryStore)
    path = store.root / pack_key(pack_id)
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0x01
    path.write_bytes(bytes(data))


def test_a_sample_reads_only_the_packs_in_its_window_and_windows_cover_every_pack(
    repo: Repository, tmp_path: Path
) -> None:
    backup(repo, tmp_path / "src", 12)
    packs = pack_ids(repo)
    assert len(packs) >= 4
    victim = packs[len(packs) // 2]
    flip_a_byte(repo, victim)
    windows = [PackSample(0.25, start) for start in (0.0, 0.25, 0.5, 0.75)]
    assert [sum(p in w for w in windows) for p in packs] == [1] * len(packs)  # each pack, exactly once
    found = []
    for window in windows:
        fresh = Repository.open(repo.store, PASSWORD)
        report = check_repository(fresh, read_data=0.25, sample_start=window.start)
        found.append(bool([p for p in report.problems if "damaged" in p]))
    assert found == [victim in w for w in windows]
    assert sum(found) == 1


def test_no_sample_reads_no_pack_bytes_and_a_full_one_reads_all(repo: Repository, tmp_path: Path) -> None:
    backup(repo, tmp_path / "src", 6)
    assert check_repository(repo, read_data=0).blobs_verified == 0
    assert check_repository(repo, read_data=1).blobs_verified >= 6
    assert check_repository(repo, read_data=True).blobs_verified >= 6


def test_packs_a_concurrent_gc_sweep_deletes_are_not_damage(repo: Repository, tmp_path: Path) -> None:
    """The check loads the index (which lists the condemned packs), then the sweep deletes them and
    writes an index without them, then the check lists the stored packs."""
    backup(repo, tmp_path / "keep", 2)
    repo.forget_snapshot(backup(repo, tmp_path / "drop", 6))
    collector = Repository.open(repo.store, PASSWORD)
    assert collect_garbage(collector).condemned_packs >= 1
    store = repo.store
    assert isinstance(store, HookedStore)
    swept: list[int] = []
    store.before_listing_data = lambda: swept.append(collect_garbage(collector).deleted_packs)
    report = check_repository(Repository.open(repo.store, PASSWORD))
    assert swept
    assert swept[0] >= 1
    assert report.problems == []


def test_packs_deleted_while_gc_pending_still_condemns_them_are_not_damage(
    repo: Repository, tmp_path: Path
) -> None:
    """The sweep caught mid-way: condemned packs deleted, gc/pending and the old index still there."""
    backup(repo, tmp_path / "keep", 2)
    repo.forget_snapshot(backup(repo, tmp_path / "drop", 6))
    before = set(pack_ids(repo))
    collect_garbage(Repository.open(repo.store, PASSWORD))
    pending = read_pending(repo.store)
    assert pending is not None
    assert pending.packs <= before
    store = repo.store
    assert isinstance(store, HookedStore)

    def delete_condemned() -> None:
        for pack_id in pending.packs:
            store.delete(pack_key(pack_id))

    store.before_listing_data = delete_condemned
    assert check_repository(Repository.open(repo.store, PASSWORD)).problems == []


def test_a_pack_missing_without_gc_is_still_damage(repo: Repository, tmp_path: Path) -> None:
    backup(repo, tmp_path / "src", 4)
    victim = pack_ids(repo)[0]
    store = repo.store
    assert isinstance(store, HookedStore)
    store.before_listing_data = lambda: store.delete(pack_key(victim))
    problems = check_repository(Repository.open(repo.store, PASSWORD)).problems
    assert f"pack {victim.hex()} is in the index but missing from storage" in problems
