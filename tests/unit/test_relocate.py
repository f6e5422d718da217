"""``barge repo move``: a repository moved whole, crash-safe, never over another repository."""

from __future__ import annotations

from pathlib import Path

import pytest

from barge.cli.main import main
from barge.clock import ManualClock
from barge.errors import InvalidInput
from barge.fs.backup import backup_tree
from barge.fs.restore import restore_tree
from barge.repo.relocate import move_repository
from barge.repo.repository import Repository
from barge.storage.local import LocalDirectoryStore
from tests.fsbuild import write

PASSWORD = b"correct horse"


def keys(store: LocalDirectoryStore) -> list[str]:
    return [info.key for info in store.list("")]


@pytest.fixture
def legacy(tmp_path: Path) -> tuple[LocalDirectoryStore, str]:
    store = LocalDirectoryStore(tmp_path / "bucket" / "barge" / "shop")
    repo = Repository.init(store, PASSWORD, clock=ManualClock())
    source = tmp_path / "source"
    write(source / "a" / "file.bin", b"x" * 100_000)
    snapshot_id = backup_tree(repo, source).snapshot_id
    return store, snapshot_id


def test_a_moved_repository_restores_and_nothing_stays_behind(
    legacy: tuple[LocalDirectoryStore, str], tmp_path: Path
) -> None:
    source, snapshot_id = legacy
    before = keys(source)
    target = LocalDirectoryStore(tmp_path / "bucket" / "plugins" / "barge" / "shop")
    report = move_repository(source, target)
    assert report.objects == len(before)
    assert report.already_there == 0
    assert keys(source) == []
    assert keys(target) == before
    restore_tree(Repository.open(target, PASSWORD, clock=ManualClock()), snapshot_id, tmp_path / "out")
    assert (tmp_path / "out" / "a" / "file.bin").read_bytes() == b"x" * 100_000


class CrashAfter(LocalDirectoryStore):
    """Fails the Nth delete: a move interrupted halfway through removing the originals."""

    def __init__(self, root: Path, deletes: int) -> None:
        super().__init__(root)
        self.deletes_left = deletes

    def delete(self, key: str) -> None:
        if self.deletes_left == 0:
            raise OSError("crash")
        self.deletes_left -= 1
        super().delete(key)


@pytest.mark.parametrize("deletes_before_crash", [0, 1, 3])
def test_an_interrupted_move_is_finished_by_running_it_again(
    legacy: tuple[LocalDirectoryStore, str], tmp_path: Path, deletes_before_crash: int
) -> None:
    source, snapshot_id = legacy
    before = keys(source)
    crashing = CrashAfter(source.root, deletes_before_crash)
    target = LocalDirectoryStore(tmp_path / "new")
    with pytest.raises(OSError, match="crash"):
        move_repository(crashing, target)
    # the config leaves the source first: whichever holds it holds every other object too
    assert "config" in keys(target)
    assert "config" not in keys(source) or keys(source) == before
    report = move_repository(source, target)
    assert report.already_there == report.objects  # every object had been copied before the crash
    assert keys(source) == []
    assert keys(target) == before
    Repository.open(target, PASSWORD, clock=ManualClock()).load_snapshot(snapshot_id)


def test_a_move_never_overwrites_another_repository(
    legacy: tuple[LocalDirectoryStore, str], tmp_path: Path
) -> None:
    source, _ = legacy
    other = LocalDirectoryStore(tmp_path / "other")
    Repository.init(other, b"other", clock=ManualClock())
    with pytest.raises(InvalidInput, match=r"both .* hold a repository"):
        move_repository(source, other)
    with pytest.raises(InvalidInput, match="no Barge repository"):
        move_repository(LocalDirectoryStore(tmp_path / "empty"), LocalDirectoryStore(tmp_path / "e2"))


def test_the_cli_moves_without_a_password(
    legacy: tuple[LocalDirectoryStore, str], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    source, _ = legacy
    count = len(keys(source))
    target = tmp_path / "bucket" / "plugins" / "barge" / "shop"
    assert main(["--repo", f"file://{source.root}", "repo", "move", "--to", f"file://{target}"]) == 0
    assert f"moved {count} objects" in capsys.readouterr().out
    assert main(["--repo", f"file://{source.root}", "repo", "move", "--to", f"file://{tmp_path}/x"]) == 2
    assert "nothing to move" in capsys.readouterr().err
