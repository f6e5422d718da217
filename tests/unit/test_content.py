"""Where file contents are read and sealed: small cached files by the walk, chunks of a large one on
the sealing threads (same extents as one by one; errors surface), everything else on the pool."""

from __future__ import annotations

import os
import threading
from concurrent.futures import Future
from pathlib import Path

import pytest

from barge.clock import SystemClock
from barge.fs import backup as backup_module
from barge.fs.backup import backup_tree
from barge.fs.content import SEALING_AHEAD, make_chunker, store_content
from barge.fs.progress import CancelToken, Progress
from barge.fs.restore import restore_tree
from barge.repo.crypto import KdfParams
from barge.repo.pack import BlobType
from barge.repo.repository import Repository, RepositorySettings, RepositoryWriter
from barge.repo.tree import Node
from barge.storage.local import LocalDirectoryStore
from tests.fsbuild import MIB

SETTINGS = RepositorySettings(chunk_min=16 * 1024, chunk_avg=64 * 1024, chunk_max=256 * 1024, pack_target=MIB)


@pytest.fixture
def repo(tmp_path: Path) -> Repository:
    return Repository.init(LocalDirectoryStore(tmp_path / "repo"), b"pw", SETTINGS, KdfParams.for_tests())


def stored(repo: Repository, path: Path, writer: RepositoryWriter) -> tuple[tuple[bytes | None, int], ...]:
    fd = os.open(path, os.O_RDONLY)
    try:
        size = os.fstat(fd).st_size
        meter = Progress(size, None, SystemClock())
        result = store_content(
            fd, size, writer=writer, chunker=make_chunker(repo), progress=meter, cancel=CancelToken()
        )
        assert result.complete
        assert meter.done == size
        return result.extents
    finally:
        os.close(fd)


def test_a_stream_sealed_ahead_gives_the_chunks_in_order(repo: Repository, tmp_path: Path) -> None:
    data = os.urandom(3 * MIB)
    path = tmp_path / "big"
    path.write_bytes(data)
    with repo.writer() as writer:
        extents = stored(repo, path, writer)
    expected = [
        (repo.keys.content_id_of(chunk.data), chunk.length) for chunk in make_chunker(repo).cut_buf(data)
    ]
    assert len(expected) > 3 * SEALING_AHEAD
    assert list(extents) == expected
    assert b"".join(repo.read_blob(blob_id) for blob_id, _ in extents if blob_id) == data


class FailingWriter(RepositoryWriter):
    """Fails the ``fail_at``-th blob."""

    def __init__(self, repo: Repository, fail_at: int) -> None:
        super().__init__(repo)
        self.fail_at = fail_at
        self.calls = 0
        self.count_lock = threading.Lock()

    def add_blob(self, blob_type: BlobType, data: bytes | memoryview, blob_id: bytes | None = None) -> bytes:
        with self.count_lock:
            self.calls += 1
            call = self.calls
        if call == self.fail_at:
            raise OSError("injected: the store refused the pack")
        return super().add_blob(blob_type, data, blob_id)


def test_a_failed_chunk_fails_the_stream_and_leaves_nothing_sealing(repo: Repository, tmp_path: Path) -> None:
    path = tmp_path / "big"
    path.write_bytes(os.urandom(3 * MIB))
    writer = FailingWriter(repo, fail_at=5)
    later: list[Future[bytes]] = []
    add_later = writer.add_blob_later

    def record(blob_type: BlobType, data: bytes) -> Future[bytes]:
        later.append(add_later(blob_type, data))
        return later[-1]

    writer.add_blob_later = record  # type: ignore[method-assign]
    with pytest.raises(OSError, match="injected"):
        stored(repo, path, writer)
    assert later
    assert all(f.done() for f in later)
    assert len(later) <= 5 + SEALING_AHEAD  # the reader stopped soon after the failure
    writer.abort()


def test_small_files_in_the_page_cache_are_read_by_the_walk_the_rest_on_the_pool(
    repo: Repository, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    source = tmp_path / "source"
    source.mkdir()
    contents = {f"f{n:02d}": os.urandom(5000 + n) for n in range(20)}
    for name, data in contents.items():
        (source / name).write_bytes(data)
    evicted = {f"f{n:02d}" for n in range(0, 20, 2)}
    evicted_inodes = {os.stat(source / name).st_ino for name in evicted}
    real_preadv = os.preadv

    def page_cache(fd: int, buffers: list[memoryview], offset: int, *flags: int) -> int:
        """What the kernel answers a read that must not block on a file that is not cached (the
        eviction itself, fadvise DONTNEED, is not reliable: pages queued on another CPU stay)."""
        if flags and flags[0] & os.RWF_NOWAIT and os.fstat(fd).st_ino in evicted_inodes:
            raise BlockingIOError(11, "Resource temporarily unavailable")
        return real_preadv(fd, buffers, offset, *flags)

    monkeypatch.setattr(os, "preadv", page_cache)
    readers: dict[str, str] = {}
    backup_file = backup_module._TreeBackup.backup_file

    def noting_thread(self: backup_module._TreeBackup, fd: int, d: object, node: Node) -> Node | None:
        readers[os.fsdecode(node.name)] = threading.current_thread().name
        return backup_file(self, fd, d, node)  # type: ignore[arg-type]

    monkeypatch.setattr(backup_module._TreeBackup, "backup_file", noting_thread)
    result = backup_tree(repo, source)
    on_pool = {name for name, thread in readers.items() if thread.startswith("barge-read")}
    assert on_pool == evicted
    assert set(readers) == set(contents)
    restore_tree(repo, result.snapshot_id, tmp_path / "restored")
    assert {p.name: p.read_bytes() for p in (tmp_path / "restored").iterdir()} == contents
