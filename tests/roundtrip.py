"""The repository round trips every backend must pass: back up, (back up again,) restore, compare."""

from __future__ import annotations

import os
from pathlib import Path

from barge.fs.backup import backup_tree
from barge.fs.restore import restore_tree
from barge.repo.check import check_repository
from barge.repo.crypto import KdfParams
from barge.repo.repository import Repository, RepositorySettings
from barge.storage import ObjectStore
from devenv.trees import capture
from tests import fsgen
from tests.fsbuild import MIB, awkward_tree

SMALL_PACKS = RepositorySettings(
    chunk_min=16 * 1024, chunk_avg=64 * 1024, chunk_max=256 * 1024, pack_target=MIB
)


def assert_repository_round_trip(store: ObjectStore, tmp_path: Path) -> None:
    repo = Repository.init(store, b"pw", SMALL_PACKS, KdfParams.for_tests())
    source = awkward_tree(tmp_path / "src")
    result = backup_tree(repo, source)
    again = backup_tree(Repository.open(store, b"pw"), source)
    assert again.bytes_new == 0
    restore_tree(Repository.open(store, b"pw"), result.snapshot_id, tmp_path / "out")
    assert capture(tmp_path / "out") == capture(source)
    assert check_repository(Repository.open(store, b"pw"), read_data=True).problems == []


def assert_generated_tree_round_trips(repo: Repository, workdir: Path, tree: fsgen.Dir) -> None:
    """``repo`` was opened with the password ``pw``; ``workdir`` is empty."""
    source = workdir / "src"
    fsgen.materialize(os.fsencode(source), tree)
    result = backup_tree(repo, source)
    restored = workdir / "restored"
    restore_tree(Repository.open(repo.store, b"pw"), result.snapshot_id, restored)
    assert capture(restored) == capture(source)
