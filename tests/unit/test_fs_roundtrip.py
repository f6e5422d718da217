"""Filesystem backups round-trip bit-exact; restores refuse hostile snapshots."""

from __future__ import annotations

import os
import resource
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings

from barge.errors import Canceled, CorruptionDetected, InvalidInput, PermanentError
from barge.fs import backup as backup_module
from barge.fs.backup import BackupOptions, SourceUnreadable, backup_tree
from barge.fs.progress import CancelToken
from barge.fs.restore import UnsafeName, restore_tree
from barge.fs.sparse import nonzero_runs
from barge.repo.check import check_repository
from barge.repo.crypto import KdfParams
from barge.repo.gc import referenced_blobs
from barge.repo.pack import BlobType
from barge.repo.repository import Repository, RepositorySettings
from barge.repo.snapshot import RootMetadata, Snapshot, SnapshotKind, SnapshotSummary
from barge.repo.tree import Node, encode_tree
from barge.storage.local import LocalDirectoryStore
from devenv.trees import capture
from tests import fsgen
from tests.fsbuild import MIB, awkward_tree, nested_tree, remove_tree, sparse_file, write
from tests.roundtrip import assert_generated_tree_round_trips

PASSWORD = b"pw"
SETTINGS = RepositorySettings(chunk_min=16 * 1024, chunk_avg=64 * 1024, chunk_max=256 * 1024, pack_target=MIB)


@pytest.fixture
def repo(tmp_path: Path) -> Repository:
    return Repository.init(LocalDirectoryStore(tmp_path / "repo"), PASSWORD, SETTINGS, KdfParams.for_tests())


def test_awkward_tree_round_trips_bit_exact(repo: Repository, tmp_path: Path) -> None:
    source = awkward_tree(tmp_path / "src")
    result = backup_tree(repo, source)
    restored = tmp_path / "restored"
    outcome = restore_tree(Repository.open(repo.store, PASSWORD), result.snapshot_id, restored)
    assert capture(restored) == capture(source)
    assert (restored / "sparse.img").stat().st_blocks * 512 < 4 * MIB  # holes stayed holes
    assert (restored / "all-hole.img").stat().st_blocks == 0
    assert os.stat(restored / "hard" / "a").st_ino == os.stat(restored / "other-hardlink").st_ino
    assert outcome.warnings == ()
    assert result.bytes_read < 3 * MIB  # holes were never read


@pytest.fixture
def big_trees(tmp_path: Path) -> Iterator[Path]:
    """A work directory whose trees are removed with ``rm -rf``: pytest's own clean-up recurses."""
    yield tmp_path
    for child in tmp_path.iterdir():
        remove_tree(child)


@pytest.mark.parametrize(
    ("levels", "name"),
    [(1_100, b"d"), (25, b"n" * 200)],
    ids=["deeper-than-the-recursion-limit", "paths-longer-than-PATH_MAX"],
)
def test_a_deep_tree_round_trips_bit_exact_and_incrementally(
    repo: Repository, big_trees: Path, levels: int, name: bytes
) -> None:
    """A tenant's tree is walked, restored, checked and collected whatever its depth and path length."""
    source = nested_tree(big_trees / "src", levels, name)
    first = backup_tree(repo, source)
    assert first.dirs == levels + 1
    second = backup_tree(repo, source, options=BackupOptions(parent=first.snapshot_id))
    assert second.files_unchanged == second.files == first.files
    restored = big_trees / "restored"
    outcome = restore_tree(Repository.open(repo.store, PASSWORD), second.snapshot_id, restored)
    assert outcome.warnings == ()
    assert outcome.dirs == levels
    assert capture(restored) == capture(source)
    assert check_repository(Repository.open(repo.store, PASSWORD), read_data=True).problems == []
    assert len(referenced_blobs(Repository.open(repo.store, PASSWORD))) > levels


def allocated(path: Path) -> int:
    return path.stat().st_blocks * 512


KIB = 1024


def zeros_and_holes(path: Path) -> Path:
    """256 KiB data, 2 MiB of zeros written as data, 256 KiB data, a 4 MiB hole, 64 KiB data."""
    head, middle, tail = os.urandom(256 * KIB), os.urandom(256 * KIB), os.urandom(64 * KIB)
    hole_end = len(head) + 2 * MIB + len(middle) + 4 * MIB
    return sparse_file(path, hole_end + len(tail), {0: head + bytes(2 * MIB) + middle, hole_end: tail})


@pytest.mark.parametrize("sparse", [False, True])
def test_restores_keep_the_source_holes_and_sparse_ones_also_drop_zero_blocks(
    repo: Repository, tmp_path: Path, sparse: bool
) -> None:
    """WriteSparseFiles "false" (Velero's default) restores the source's allocation exactly: its
    holes stay holes, its zeros stay data. "true" also leaves the all-zero blocks unwritten."""
    source = zeros_and_holes(tmp_path / "src" / "disk.img")
    assert 2560 * KIB <= allocated(source) < 3 * MIB  # the zeros are allocated, the hole is not
    snapshot = backup_tree(repo, source.parent).snapshot_id
    outcome = restore_tree(repo, snapshot, tmp_path / "out", sparse=sparse)
    restored = tmp_path / "out" / "disk.img"
    assert restored.read_bytes() == source.read_bytes()
    if sparse:
        assert 576 * KIB <= allocated(restored) < 640 * KIB  # only the non-zero data
        assert outcome.bytes_written < 640 * KIB
    else:
        assert abs(allocated(restored) - allocated(source)) <= 64 * KIB
        assert outcome.bytes_written == 2560 * KIB + 64 * KIB


def test_nonzero_runs_drop_only_file_aligned_all_zero_blocks() -> None:
    block = 4096
    data = b"x" * 100 + bytes(3 * block) + b"y" * 10
    assert nonzero_runs(data, 0, block) == [(0, block), (3 * block, len(data))]
    # 4000 bytes into a block: pieces end where the file's blocks end, not where data's would
    assert nonzero_runs(data, 4000, block) == [(0, 96 + block), (96 + 3 * block, len(data))]
    assert nonzero_runs(bytes(3 * MIB + 5), 123, block) == []
    assert nonzero_runs(memoryview(b"abc" * 5000), 7, block) == [(0, 15000)]
    assert nonzero_runs(b"", 0, block) == []


def test_progress_is_monotonic_and_ends_at_the_known_total(repo: Repository, tmp_path: Path) -> None:
    source = awkward_tree(tmp_path / "src")
    seen: list[tuple[int, int]] = []
    result = backup_tree(repo, source, progress=lambda done, total: seen.append((done, total)))
    totals = {total for _, total in seen}
    assert totals == {result.bytes_total}
    assert [d for d, _ in seen] == sorted(d for d, _ in seen)
    assert seen[-1] == (result.bytes_total, result.bytes_total)


def test_unchanged_files_are_not_read_again(repo: Repository, tmp_path: Path) -> None:
    source = tmp_path / "src"
    for i in range(20):
        write(source / f"d{i % 4}" / f"f{i}", os.urandom(100_000))
    first = backup_tree(repo, source)
    write(source / "d1" / "f1", os.urandom(100_000))  # one file changes
    second = backup_tree(repo, source, options=BackupOptions(parent=first.snapshot_id))
    assert second.files_unchanged == 19
    assert second.bytes_read == 100_000
    restored = tmp_path / "restored"
    restore_tree(repo, second.snapshot_id, restored)
    assert capture(restored) == capture(source)


def test_an_unchanged_directory_keeps_its_parent_tree_without_encoding_it(
    repo: Repository, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Only the directories on the path to a change are encoded again; the others, and the root of
    an unchanged tree, are the parent's own tree blobs."""
    source = tmp_path / "src"
    for i in range(12):
        write(source / f"d{i % 3}" / "deeper" / f"f{i}", os.urandom(1000))
    os.symlink("d0", source / "link")
    first = backup_tree(repo, source)
    encoded: list[int] = []

    def counting(nodes: list[Node]) -> bytes:
        encoded.append(len(nodes))
        return encode_tree(nodes)

    monkeypatch.setattr(backup_module, "encode_tree", counting)
    same = backup_tree(repo, source, options=BackupOptions(parent=first.snapshot_id))
    assert encoded == []
    assert repo.load_snapshot(same.snapshot_id).tree == repo.load_snapshot(first.snapshot_id).tree

    write(source / "d1" / "deeper" / "f1", b"changed")
    changed = backup_tree(repo, source, options=BackupOptions(parent=same.snapshot_id))
    assert sorted(encoded) == [1, 4, 4]  # d1/deeper (4 files), d1 (1 dir), the root (3 dirs, 1 link)
    restored = tmp_path / "restored"
    restore_tree(repo, changed.snapshot_id, restored)
    assert capture(restored) == capture(source)


def test_an_extended_attribute_changed_since_the_parent_is_backed_up(
    repo: Repository, tmp_path: Path
) -> None:
    """Unchanged files reuse the parent's xattrs; a changed xattr moves the ctime and is read again."""
    source = tmp_path / "src"
    write(source / "a", b"same content")
    os.setxattr(source / "a", "user.state", b"before")
    first = backup_tree(repo, source)
    os.setxattr(source / "a", "user.state", b"after")
    second = backup_tree(repo, source, options=BackupOptions(parent=first.snapshot_id))
    assert second.files_unchanged == 0  # the ctime moved: the file is not taken as unchanged
    restored = tmp_path / "restored"
    restore_tree(repo, second.snapshot_id, restored)
    assert os.getxattr(restored / "a", "user.state") == b"after"


def test_a_second_full_backup_stores_nothing_new(repo: Repository, tmp_path: Path) -> None:
    source = awkward_tree(tmp_path / "src")
    backup_tree(repo, source)
    again = backup_tree(repo, source)
    assert again.bytes_new == 0


def test_unreadable_file_fails_or_is_skipped_by_policy(
    repo: Repository, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """An EIO from the disk under one file: ``fail`` names the file, ``skip`` reports and goes on."""
    source = tmp_path / "src"
    write(source / "ok", b"fine")
    write(source / "bad-sector", b"unlucky")
    bad_inode = os.stat(source / "bad-sector").st_ino
    real_preadv = os.preadv

    def failing_preadv(fd: int, buffers: list[memoryview], offset: int, *flags: int) -> int:
        if os.fstat(fd).st_ino == bad_inode:
            raise OSError(5, "Input/output error")
        return real_preadv(fd, buffers, offset, *flags)

    monkeypatch.setattr(os, "preadv", failing_preadv)
    with pytest.raises(SourceUnreadable, match="bad-sector: Input/output error"):
        backup_tree(repo, source)
    result = backup_tree(repo, source, options=BackupOptions(on_unreadable="skip"))
    assert result.skipped == (f"{source / 'bad-sector'}: Input/output error",)
    monkeypatch.undo()
    restored = tmp_path / "restored"
    restore_tree(repo, result.snapshot_id, restored)
    assert sorted(p.name for p in restored.iterdir()) == ["ok"]


def test_cancel_stops_promptly_and_writes_no_snapshot(repo: Repository, tmp_path: Path) -> None:
    source = tmp_path / "src"
    for i in range(40):
        write(source / f"f{i}", os.urandom(MIB))
    token = CancelToken()
    with pytest.raises(Canceled):
        backup_tree(repo, source, progress=lambda done, total: token.cancel(), cancel=token)
    assert repo.snapshot_ids() == []
    reopened = Repository.open(repo.store, PASSWORD)
    stored = sum(loc.raw_length for _, loc in reopened.index.items())
    assert stored < 20 * MIB  # stopped early; what it did upload is indexed and reusable


def test_backup_of_a_missing_or_non_directory_source_is_a_clear_error(
    repo: Repository, tmp_path: Path
) -> None:
    with pytest.raises(InvalidInput, match="No such file"):
        backup_tree(repo, tmp_path / "missing")
    write(tmp_path / "file", b"x")
    with pytest.raises(InvalidInput, match="not a directory"):
        backup_tree(repo, tmp_path / "file")


def test_a_backup_without_proc_is_refused_with_a_clear_error(
    repo: Repository, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Extended attributes of devices and fifos are read through /proc/self/fd: never lost silently."""
    write(tmp_path / "src" / "f", b"x")
    monkeypatch.setattr(backup_module, "PROC_FD", os.fsencode(tmp_path / "no-proc"))
    with pytest.raises(PermanentError, match="mount /proc"):
        backup_tree(repo, tmp_path / "src")
    assert repo.snapshot_ids() == []


def test_restore_refuses_a_non_empty_target(repo: Repository, tmp_path: Path) -> None:
    result = backup_tree(repo, awkward_tree(tmp_path / "src"))
    write(tmp_path / "busy" / "x", b"x")
    with pytest.raises(InvalidInput, match="not empty"):
        restore_tree(repo, result.snapshot_id, tmp_path / "busy")


@pytest.mark.parametrize("name", [b"..", b".", b"a/../../escape", b"/etc/passwd", b"", b"nul\0byte"])
def test_restore_refuses_names_that_escape_the_target(repo: Repository, tmp_path: Path, name: bytes) -> None:
    with repo.writer() as writer:
        blob = writer.add_blob(BlobType.DATA, b"pwned")
        tree = writer.add_blob(
            BlobType.TREE, encode_tree([Node(name=name, kind="file", size=5, content=((blob, 5),))])
        )
    snapshot = repo.save_snapshot(crafted_snapshot(tree, bytes_total=5))
    with pytest.raises(UnsafeName):
        restore_tree(repo, snapshot, tmp_path / "target" / "inner")
    assert not (tmp_path / "target" / "escape").exists()
    assert not any(
        p.read_bytes() == b"pwned" for p in tmp_path.rglob("*") if p.is_file() and "repo" not in p.parts
    )


def test_restore_does_not_follow_a_symlink_planted_by_the_snapshot(repo: Repository, tmp_path: Path) -> None:
    """A snapshot with a symlink 'd' -> outside and a directory entry also named 'd' cannot exist
    (one name per directory), and files are created with O_NOFOLLOW: a symlink is never written through."""
    outside = tmp_path / "outside"
    outside.mkdir()
    with repo.writer() as writer:
        blob = writer.add_blob(BlobType.DATA, b"pwned")
        tree = writer.add_blob(
            BlobType.TREE,
            encode_tree([Node(name=b"d", kind="symlink", target=os.fsencode(outside))]),
        )
        with pytest.raises(ValueError, match="duplicate name"):
            encode_tree([Node(name=b"d", kind="symlink", target=b"/"), Node(name=b"d", kind="file")])
    del blob
    snapshot = repo.save_snapshot(crafted_snapshot(tree))
    restore_tree(repo, snapshot, tmp_path / "target")
    assert os.readlink(tmp_path / "target" / "d") == str(outside)
    assert list(outside.iterdir()) == []


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(tree=fsgen.trees())
def test_generated_trees_round_trip_bit_exact(tmp_path: Path, tree: fsgen.Dir) -> None:
    """Contents, modes, mtimes, hardlinks, symlinks, holes, byte names, empty files and dirs."""
    case = tmp_path / f"case-{threading.get_ident()}-{os.urandom(4).hex()}"
    case.mkdir()
    repo = Repository.init(LocalDirectoryStore(case / "repo"), PASSWORD, SETTINGS, KdfParams.for_tests())
    assert_generated_tree_round_trips(repo, case, tree)


def crafted_snapshot(tree: bytes, bytes_total: int = 0) -> Snapshot:
    """A manifest for a tree the test wrote by hand (as a hostile repository could hold)."""
    return Snapshot(
        kind=SnapshotKind.FILESYSTEM,
        time="2026-03-01T12:00:00+00:00",
        hostname="crafted",
        paths=("/x",),
        tree=tree,
        summary=SnapshotSummary(bytes_total=bytes_total),
        root=RootMetadata(mode=0o755, uid=0, gid=0, mtime_ns=0),
    )


def test_a_directory_of_more_files_than_the_process_may_open_restores(
    repo: Repository, tmp_path: Path
) -> None:
    """The walk creates files faster than the workers fill them: it must wait, not run out of
    descriptors (containerd gives a container a soft limit of 1,024)."""
    source = tmp_path / "src"
    for n in range(3000):
        write(source / "many" / f"f{n:04d}", f"file {n}\n".encode())
    snapshot_id = backup_tree(repo, source).snapshot_id
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (len(os.listdir("/proc/self/fd")) + 120, hard))
    try:
        restore_tree(repo, snapshot_id, tmp_path / "restored")
    finally:
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))
    assert capture(tmp_path / "restored") == capture(source)


@pytest.mark.timeout(60)
def test_a_restore_whose_files_all_fail_ends_with_the_error_instead_of_waiting(
    repo: Repository, tmp_path: Path
) -> None:
    """Every file's data is gone: each batch fails on its first file. Its other files must give
    their open-file slots back, or the walk, waiting for a slot, would wait forever."""
    source = tmp_path / "src"
    for n in range(1000):
        write(source / "many" / f"f{n:04d}", f"file {n}\n".encode())
    snapshot_id = backup_tree(repo, source).snapshot_id
    locations = [repo.index.get(blob_id) for blob_id in referenced_blobs(repo)]
    tree_packs = {loc.pack_id for loc in locations if loc is not None and loc.blob_type is BlobType.TREE}
    data_packs = [p for p in (tmp_path / "repo" / "data").rglob("*") if p.is_file()]
    for pack in data_packs:
        if bytes.fromhex(pack.name) not in tree_packs:
            pack.unlink()
    with pytest.raises(CorruptionDetected, match="missing from storage"):
        restore_tree(repo, snapshot_id, tmp_path / "restored")
