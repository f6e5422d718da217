"""Garbage collection reclaims space and never breaks a snapshot, even while backups run."""

from __future__ import annotations

import os
from datetime import timedelta
from pathlib import Path

import pytest

from barge.clock import ManualClock
from barge.errors import TemporaryError
from barge.fs.backup import BackupOptions, backup_tree
from barge.fs.restore import restore_tree
from barge.repo.check import check_repository
from barge.repo.crypto import KdfParams
from barge.repo.gc import LOCK_KEY, GcPolicy, collect_garbage
from barge.repo.repository import Repository, RepositorySettings
from barge.repo.session import Session
from barge.storage.local import LocalDirectoryStore
from devenv.trees import capture
from tests.fsbuild import MIB, write

PASSWORD = b"pw"
SETTINGS = RepositorySettings(chunk_min=16 * 1024, chunk_avg=64 * 1024, chunk_max=256 * 1024, pack_target=MIB)


@pytest.fixture
def repo(tmp_path: Path) -> Repository:
    return Repository.init(LocalDirectoryStore(tmp_path / "repo"), PASSWORD, SETTINGS, KdfParams.for_tests())


def stored_bytes(repo: Repository) -> int:
    return sum(info.size for info in repo.store.list("data/"))


def random_tree(root: Path, files: int, size: int) -> Path:
    for i in range(files):
        write(root / f"d{i % 3}" / f"f{i}", os.urandom(size))
    return root


def assert_restores(repo: Repository, snapshot_id: str, source: Path, target: Path) -> None:
    fresh = Repository.open(repo.store, PASSWORD)
    restore_tree(fresh, snapshot_id, target)
    assert capture(target) == capture(source)
    assert check_repository(fresh, read_data=True).problems == []


def test_forget_then_gc_reclaims_the_space(repo: Repository, tmp_path: Path) -> None:
    keep_src = random_tree(tmp_path / "keep", 4, 500_000)
    drop_src = random_tree(tmp_path / "drop", 8, 500_000)
    keep = backup_tree(repo, keep_src)
    drop = backup_tree(repo, drop_src)
    before = stored_bytes(repo)
    repo.forget_snapshot(drop.snapshot_id)

    first = collect_garbage(repo)
    assert first.phase == "mark"
    assert first.condemned_packs >= 3
    assert stored_bytes(repo) == before  # nothing is deleted until the sweep

    second = collect_garbage(repo)
    assert second.phase == "sweep+mark"
    assert second.deleted_packs == first.condemned_packs
    assert stored_bytes(repo) < before - 3_500_000  # most of the 4 MB forgotten is gone
    assert_restores(repo, keep.snapshot_id, keep_src, tmp_path / "out")


def test_sweep_waits_for_sessions_that_began_before_the_mark(repo: Repository, tmp_path: Path) -> None:
    snapshot = backup_tree(repo, random_tree(tmp_path / "src", 4, 300_000))
    repo.forget_snapshot(snapshot.snapshot_id)
    writer = repo.writer()  # a backup that started before the mark
    assert collect_garbage(repo).phase == "mark"
    waiting = collect_garbage(repo)
    assert waiting.phase == "waiting"
    assert waiting.waiting_for_sessions == 1
    writer.close()
    assert collect_garbage(repo).deleted_packs >= 1


def test_a_backup_running_across_the_mark_keeps_what_it_reuses(repo: Repository, tmp_path: Path) -> None:
    source = random_tree(tmp_path / "src", 6, 400_000)
    old = backup_tree(repo, source)
    repo.forget_snapshot(old.snapshot_id)
    collector = Repository.open(repo.store, PASSWORD)
    marked: list[int] = []

    def mark_mid_backup(done: int, total: int) -> None:
        if not marked:
            marked.append(collect_garbage(collector).condemned_packs)

    again = backup_tree(Repository.open(repo.store, PASSWORD), source, progress=mark_mid_backup)
    assert marked[0] >= 1  # the collector condemned the packs this backup was deduplicating against
    assert again.bytes_new < 100_000  # ... and the backup did reuse them (only trees are new)

    sweep = collect_garbage(collector)
    assert sweep.kept_packs >= 1
    assert_restores(repo, again.snapshot_id, source, tmp_path / "out")


def test_a_backup_starting_after_the_mark_stores_its_own_copy(repo: Repository, tmp_path: Path) -> None:
    source = random_tree(tmp_path / "src", 4, 300_000)
    old = backup_tree(repo, source)
    repo.forget_snapshot(old.snapshot_id)
    collect_garbage(repo)  # mark
    again = backup_tree(Repository.open(repo.store, PASSWORD), source)
    assert again.bytes_new >= 1_200_000
    assert collect_garbage(repo).deleted_packs >= 1
    assert_restores(repo, again.snapshot_id, source, tmp_path / "out")


def test_mostly_dead_packs_are_repacked(tmp_path: Path) -> None:
    big_packs = RepositorySettings(
        chunk_min=16 * 1024, chunk_avg=64 * 1024, chunk_max=256 * 1024, pack_target=8 * MIB
    )
    repo = Repository.init(LocalDirectoryStore(tmp_path / "repo"), PASSWORD, big_packs, KdfParams.for_tests())
    source = tmp_path / "src"
    write(source / "keep", os.urandom(200_000))
    write(source / "drop", os.urandom(3_000_000))
    first = backup_tree(repo, source)
    (source / "drop").unlink()
    second = backup_tree(repo, source, options=BackupOptions(parent=first.snapshot_id))
    repo.forget_snapshot(first.snapshot_id)
    before = stored_bytes(repo)

    mark = collect_garbage(repo)
    assert mark.repacked_packs >= 1
    sweep = collect_garbage(repo)
    assert sweep.deleted_bytes >= 3_000_000
    assert stored_bytes(repo) < before - 2_900_000
    assert_restores(repo, second.snapshot_id, source, tmp_path / "out")


def test_an_expired_lease_does_not_block_collection_forever(repo: Repository, tmp_path: Path) -> None:
    snapshot = backup_tree(repo, random_tree(tmp_path / "src", 2, 300_000))
    repo.forget_snapshot(snapshot.snapshot_id)
    crashed = Session(repo.store, repo.clock, "write")  # a writer that will die without ending
    crashed._stop.set()
    collect_garbage(repo)
    old = (tmp_path / "repo" / crashed.key).stat().st_mtime - 3600
    os.utime(tmp_path / "repo" / crashed.key, (old, old))
    report = collect_garbage(repo, GcPolicy(lease=timedelta(minutes=15)))
    assert report.expired_sessions == 1
    assert report.deleted_packs >= 1


def test_only_one_collector_runs_at_a_time(repo: Repository) -> None:
    repo.store.put(LOCK_KEY, b"{}")
    with pytest.raises(TemporaryError, match="another garbage collection"):
        collect_garbage(repo)


def test_a_stalled_writer_refuses_to_commit(repo: Repository) -> None:
    clock = ManualClock()
    session = Session(repo.store, clock, "write", lease=timedelta(minutes=15))
    session.ensure_valid()
    clock.advance(15 * 60)
    with pytest.raises(TemporaryError, match="lease not renewed"):
        session.ensure_valid()
    session.end()
