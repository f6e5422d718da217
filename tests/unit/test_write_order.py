"""The repository's write order and crash points, at unit speed (tests/faultystore.py).

Writers upload packs, then the index objects for them, then the snapshot manifest last
(docs/repository-format.md, "Crash consistency"): a writer that dies at any point leaves a
repository that opens, checks clean and takes the next backup, and never a snapshot that names
data the index does not hold.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from barge.errors import TemporaryError
from barge.fs.backup import backup_tree
from barge.fs.restore import restore_tree
from barge.repo.check import check_repository
from barge.repo.crypto import KdfParams
from barge.repo.gc import collect_garbage
from barge.repo.repository import Repository, RepositorySettings
from barge.repo.snapshot import SnapshotKind
from barge.storage.local import LocalDirectoryStore
from devenv.trees import capture
from tests.faultystore import Crash, FaultyStore
from tests.storage_conformance import ObjectStoreConformance

PASSWORD = b"pw"
SETTINGS = RepositorySettings(chunk_min=4096, chunk_avg=16384, chunk_max=65536, pack_target=64 * 1024)


@pytest.fixture
def store(tmp_path: Path) -> FaultyStore:
    faulty = FaultyStore(LocalDirectoryStore(tmp_path / "repo"))
    Repository.init(faulty, PASSWORD, SETTINGS, KdfParams.for_tests())
    faulty.calls.clear()
    return faulty


@pytest.fixture
def source(tmp_path: Path) -> Path:
    root = tmp_path / "src"
    for d in range(4):
        (root / f"d{d}").mkdir(parents=True)
        for f in range(5):
            (root / f"d{d}" / f"f{f}").write_bytes(os.urandom(20_000 + 997 * f))
    return root


class TestTheFaultyStoreIsAnObjectStore(ObjectStoreConformance):
    """With no faults it must behave exactly like the store it wraps."""

    @pytest.fixture
    def store(self, tmp_path: Path) -> FaultyStore:  # type: ignore[override]
        return FaultyStore(LocalDirectoryStore(tmp_path / "plain"))


def test_packs_then_index_then_the_manifest_then_the_session_ends(store: FaultyStore, source: Path) -> None:
    backup_tree(Repository.open(store, PASSWORD), source)
    writes = [(op, key.split("/")[0]) for op, key in store.calls if op in ("put", "delete")]
    leases_and_hints = ("sessions", "snapshots-by-source")
    puts = [folder for op, folder in writes if op == "put" and folder not in leases_and_hints]
    assert puts.count("snapshots") == 1
    assert puts[-1] == "snapshots"  # the manifest is the last thing written, but for its source entry
    first_index = puts.index("index")
    assert puts[:first_index] == ["data"] * first_index  # every pack before any index names it
    assert "data" not in puts[first_index:]
    assert first_index >= 2  # the tree is big enough for several packs
    # The session (garbage collection's proof that this writer may still reference what it saw)
    # ends only after the manifest is stored: never a window where a sweep could delete its packs.
    # Its source entry follows it, so no entry ever names a manifest not yet written.
    assert writes[-3:] == [("put", "snapshots"), ("put", "snapshots-by-source"), ("delete", "sessions")]


def test_a_failed_source_entry_write_leaves_a_committed_snapshot_that_gc_makes_findable(
    store: FaultyStore, source: Path
) -> None:
    store.fail("put", "snapshots-by-source/")
    repo = Repository.open(store, PASSWORD)
    result = backup_tree(repo, source)  # committed: the entry is only a lookup hint
    assert repo.snapshot_ids() == [result.snapshot_id]
    assert repo.latest_snapshot(SnapshotKind.FILESYSTEM, paths=[str(source)]) is None
    collect_garbage(repo)
    assert repo.latest_snapshot(SnapshotKind.FILESYSTEM, paths=[str(source)]) == result.snapshot_id


@pytest.mark.parametrize("dies_at", ["data/", "index/", "snapshots/"])
def test_a_writer_that_dies_anywhere_leaves_a_repository_that_checks_clean_and_backs_up(
    store: FaultyStore, source: Path, tmp_path: Path, dies_at: str
) -> None:
    store.crash("put", dies_at, skip=1 if dies_at == "data/" else 0)
    with pytest.raises(Crash):
        backup_tree(Repository.open(store, PASSWORD), source)
    reopened = Repository.open(store, PASSWORD)
    assert reopened.snapshot_ids() == []  # no manifest, so nothing names data that may be missing
    assert check_repository(reopened).problems == []
    result = backup_tree(reopened, source)  # the next run succeeds over what the dead one left
    restore_tree(Repository.open(store, PASSWORD), result.snapshot_id, tmp_path / "restored")
    assert capture(tmp_path / "restored") == capture(source)
    assert check_repository(Repository.open(store, PASSWORD), read_data=True).problems == []


def test_a_failed_pack_upload_fails_the_backup_cleanly_and_writes_no_manifest(
    store: FaultyStore, source: Path
) -> None:
    store.fail("put", "data/", skip=1)
    with pytest.raises(TemporaryError, match="injected"):
        backup_tree(Repository.open(store, PASSWORD), source)
    assert store.keys("put", "snapshots/") == []
    reopened = Repository.open(store, PASSWORD)
    reopened.load_index()
    stored = {key.removeprefix("data/").split("/")[-1] for key in store.keys("put", "data/")}
    assert {pack.hex() for pack in reopened.index.packs} <= stored  # what was uploaded stays reusable,
    assert check_repository(reopened, read_data=True).problems == []  # and nothing names the lost pack
