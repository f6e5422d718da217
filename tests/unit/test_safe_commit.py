"""Safe commits (issue 13): a backup never commits a snapshot that names data no longer in storage,
even when an old index object is put back (an attacker with bucket access, or a bucket restored from
a copy) and names packs garbage collection has deleted since. The writer deduplicates only against
packs it knows are in storage, and the backup stores such data again: its source is at hand."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from barge.fs.backup import BackupOptions, backup_tree
from barge.fs.restore import restore_tree
from barge.repo.check import check_repository
from barge.repo.crypto import KdfParams
from barge.repo.gc import collect_garbage
from barge.repo.pack import BlobType, pack_key
from barge.repo.repository import Repository, RepositorySettings
from barge.storage.local import LocalDirectoryStore
from devenv.trees import capture
from tests.faultystore import FaultyStore
from tests.fsbuild import write

pytestmark = pytest.mark.timeout(300)

PASSWORD = b"pw"
SETTINGS = RepositorySettings(chunk_min=4096, chunk_avg=16384, chunk_max=65536, pack_target=128 * 1024)


def random_tree(root: Path, files: int = 6, size: int = 100_000) -> Path:
    for i in range(files):
        write(root / f"d{i % 2}" / f"f{i}", os.urandom(size))
    return root


def index_objects(repo_dir: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in (repo_dir / "index").iterdir()}


def forget_and_collect(repo: Repository, snapshot_id: str) -> None:
    repo.forget_snapshot(snapshot_id)
    assert collect_garbage(repo).phase == "mark"
    assert collect_garbage(repo).deleted_packs > 0


def test_a_replayed_index_naming_deleted_packs_cannot_make_an_unrestorable_snapshot(tmp_path: Path) -> None:
    repo_dir = tmp_path / "repo"
    repo = Repository.init(LocalDirectoryStore(repo_dir), PASSWORD, SETTINGS, KdfParams.for_tests())
    source = random_tree(tmp_path / "a")
    first = backup_tree(repo, source)
    replayed = index_objects(repo_dir)  # what an old copy of the bucket holds

    forget_and_collect(repo, first.snapshot_id)  # first's packs deleted; its index superseded
    other = backup_tree(repo, random_tree(tmp_path / "b", files=2))
    forget_and_collect(repo, other.snapshot_id)  # a second consolidation: the old one no longer
    for name, data in replayed.items():  # supersedes the replayed objects, which come back
        (repo_dir / "index" / name).write_bytes(data)

    store = FaultyStore(LocalDirectoryStore(repo_dir))
    reopened = Repository.open(store, PASSWORD)
    assert any(pack_key(p) not in {i.key for i in store.list("data/")} for p in reopened.index.packs)
    again = backup_tree(reopened, source)

    fresh = Repository.open(LocalDirectoryStore(repo_dir), PASSWORD)
    restore_tree(fresh, again.snapshot_id, tmp_path / "out")
    assert capture(tmp_path / "out") == capture(source)
    problems = check_repository(fresh, read_data=True).problems
    assert all("missing from storage" in p for p in problems), problems  # only the replayed index's


def test_a_no_change_backup_checks_its_dedup_against_the_listing_it_takes_anyway(tmp_path: Path) -> None:
    store = FaultyStore(LocalDirectoryStore(tmp_path / "repo"))
    Repository.init(store, PASSWORD, SETTINGS, KdfParams.for_tests())
    source = random_tree(tmp_path / "src", files=20, size=50_000)
    first = backup_tree(Repository.open(store, PASSWORD), source)
    store.calls.clear()
    again = backup_tree(
        Repository.open(store, PASSWORD), source, options=BackupOptions(parent=first.snapshot_id)
    )
    assert again.files_unchanged == 20
    assert again.bytes_new == 0
    assert store.keys("stat", "data/") == []  # no HEAD per pack: the adoption listing says they exist
    assert store.keys("list", "data/") == ["data/"]


def test_a_writer_that_lists_nothing_checks_each_pack_once_before_deduplicating(tmp_path: Path) -> None:
    store = FaultyStore(LocalDirectoryStore(tmp_path / "repo"))
    repo = Repository.init(store, PASSWORD, SETTINGS, KdfParams.for_tests())
    blobs = [os.urandom(30_000) for _ in range(8)]
    with repo.writer() as writer:
        ids = [writer.add_blob(BlobType.DATA, blob) for blob in blobs]
    locations = [repo.index.get(blob_id) for blob_id in ids]
    gone = locations[0].pack_id if locations[0] else b""
    (tmp_path / "repo" / pack_key(gone)).unlink()
    lost = [blob_id for blob_id, at in zip(ids, locations, strict=True) if at and at.pack_id == gone]

    reopened = Repository.open(store, PASSWORD)
    store.calls.clear()
    with reopened.writer() as writer:
        for blob in blobs + blobs:
            writer.add_blob(BlobType.DATA, blob)
        assert writer.stats.blobs_new == len(lost)
    heads = store.keys("stat", "data/")
    assert len(heads) == len(set(heads)) == len({at.pack_id for at in locations if at})  # once per pack
    assert [reopened.read_blob(blob_id) for blob_id in ids] == blobs
