"""Restoring a filesystem snapshot into an empty directory.

Every name comes from the repository and is treated as hostile: a name with ``/``, ``.``, ``..``,
NUL or nothing at all is refused, and every file is created relative to a directory file
descriptor we created ourselves, with ``O_NOFOLLOW | O_EXCL``, so neither a crafted name nor a
symlink in the snapshot can make the restore write outside the target.

File contents are written where the snapshot has data; where it has holes (the source's holes,
found with ``SEEK_DATA``/``SEEK_HOLE`` at backup time) nothing is written, so every restored file
is allocated exactly like its source. With ``sparse`` (Velero's ``WriteSparseFiles: "true"``),
filesystem blocks of file data that are all zeros are left unwritten as well and become holes.

Device nodes, setuid/setgid bits and ``security.*``/``trusted.*`` attributes are recreated only
when asked (``restore_privileged``); ``barge.fs.privileged`` decides, entry by entry.
"""

from __future__ import annotations

import contextlib
import functools
import os
import stat
import threading
from collections import deque
from collections.abc import Generator, Iterator, Mapping
from concurrent.futures import Future, ThreadPoolExecutor, wait
from dataclasses import dataclass
from pathlib import Path

from barge.clock import Clock, SystemClock
from barge.errors import CorruptionDetected, InvalidInput
from barge.fs.privileged import PrivilegePolicy, Withheld
from barge.fs.progress import CancelToken, Progress, ProgressCallback
from barge.fs.sparse import nonzero_runs, sparse_block
from barge.fs.walk import DirCursor, Subdir, open_below, walk_tree
from barge.repo.repository import Repository
from barge.repo.session import Session
from barge.repo.snapshot import Snapshot, SnapshotKind
from barge.repo.tree import Extent, Node

# Blobs of one file read ahead of the one being written (each at most a chunk, 8 MiB by default).
READ_AHEAD = 3
# Files of one blob at most handed to one restore worker at once.
RESTORE_BATCH = 16
# A batch's blobs up to this size are read together before its files are written (at most
# RESTORE_BATCH of them held at once per worker: 4 MiB).
PREFETCH_BLOB = 256 * 1024


def _blob_count(content: tuple[Extent, ...]) -> int:
    """How many stored blobs a file's content has (its holes are not blobs)."""
    return sum(blob_id is not None for blob_id, _ in content)


class UnsafeName(CorruptionDetected):
    """A snapshot names an entry that would escape or confuse the restore target."""


@dataclass(frozen=True)
class RestoreResult:
    files: int
    dirs: int
    bytes_written: int
    warnings: tuple[str, ...]
    withheld: Withheld  # privileges the snapshot records that were not recreated


def check_name(name: bytes) -> bytes:
    if not name or name in (b".", b"..") or b"/" in name or b"\0" in name:
        raise UnsafeName(f"snapshot contains an unsafe entry name {name!r}; refusing to restore it")
    return name


def _prepare_target(target: Path, tolerated: frozenset[str]) -> None:
    try:
        target.mkdir(parents=True)
    except FileExistsError:
        if not target.is_dir() or target.is_symlink():
            raise InvalidInput(f"restore target {target} exists and is not a directory") from None
        if any(entry.name not in tolerated for entry in target.iterdir()):
            raise InvalidInput(
                f"restore target {target} is not empty; restore into an empty directory"
            ) from None


class _TreeRestore:
    def __init__(
        self, repo: Repository, root: Path, progress: Progress, cancel: CancelToken, workers: int
    ) -> None:
        self.repo = repo
        self.root = root
        self.tolerated: frozenset[str] = frozenset()  # top-level names that may already exist
        self.progress = progress
        self.cancel = cancel
        self.pool = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="barge-restore")
        self.fetchers = ThreadPoolExecutor(max_workers=os.cpu_count() or 2, thread_name_prefix="barge-fetch")
        self.as_root = os.geteuid() == 0
        self.lock = threading.Lock()
        self.links: dict[tuple[int, int], bytes] = {}  # source inode -> first restored path
        self.open_fds: set[int] = set()  # files handed to the pool; closed even if canceled
        # Files open at once: enough for every worker's batch and the walk's next one, so the walk
        # waiting for a slot always waits for a batch already on the pool.
        self.slots = threading.BoundedSemaphore((workers + 1) * RESTORE_BATCH)
        self.files = self.dirs = self.bytes_written = 0
        self.warnings: list[str] = []
        self.sparse_block = 0  # > 0: leave all-zero blocks of this size (file-aligned) unwritten
        self.policy = PrivilegePolicy(restore_privileged=False, warn=self.warn)

    def warn(self, message: str) -> None:
        with self.lock:
            self.warnings.append(message)

    def restore_dir(
        self, cursor: DirCursor, tree_id: bytes, pending: list[Future[None]]
    ) -> list[Subdir[bytes]]:
        """Create the entries of the directory at the cursor; file contents go to the pool
        (``pending``); returns its subdirectories, created empty, for the walk to fill."""
        self.cancel.check()
        dir_fd = cursor.fd
        subdirs: list[Subdir[bytes]] = []
        batch: list[tuple[int, Node]] = []
        for entry in self.repo.read_tree(tree_id):
            name = check_name(entry.name)
            node = self.policy.admit(entry, functools.partial(cursor.relpath, name))
            if node is None:
                continue
            if node.kind == "dir":
                if node.subtree is None:
                    raise CorruptionDetected(f"directory {cursor.relpath(name)!r} has no tree")
                try:
                    os.mkdir(name, 0o700, dir_fd=dir_fd)
                except FileExistsError:
                    if cursor.depth or os.fsdecode(name) not in self.tolerated:
                        raise
                subdirs.append(Subdir(name, node.subtree))
                with self.lock:
                    self.dirs += 1
            elif node.kind == "file":
                if node.nlink > 1 and self.link_if_seen(node, dir_fd, name, cursor.relpath(name)):
                    continue
                fd = self.create_file(dir_fd, name)
                if _blob_count(node.content) > 1:
                    pending.append(self.pool.submit(self.write_file, fd, node))
                    continue
                batch.append((fd, node))
                if len(batch) == RESTORE_BATCH:
                    pending.append(self.pool.submit(self.write_files, batch))
                    batch = []
            else:
                self.restore_special(dir_fd, name, cursor.relpath(name), node)
        if batch:
            pending.append(self.pool.submit(self.write_files, batch))
        return subdirs

    def create_file(self, dir_fd: int, name: bytes) -> int:
        """Create ``name``, waiting while too many files are open: a directory may hold more files
        than the process may open (a restore of 3,000 files at ``ulimit -n 256`` failed)."""
        self.slots.acquire()
        try:
            flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC
            fd = os.open(name, flags, 0o600, dir_fd=dir_fd)
        except BaseException:
            self.slots.release()
            raise
        with self.lock:
            self.open_fds.add(fd)
        return fd

    def write_files(self, batch: list[tuple[int, Node]]) -> None:
        """Files of one blob at most, written one after the other by one worker: a hand-off to the
        pool per small file cost more than writing it. Their blobs of up to ``PREFETCH_BLOB``
        bytes are read first, together (``Repository.read_blobs``: one request per run of
        adjacent blobs). If one fails, the files not reached are closed at once: their slots would
        otherwise stay taken, and a walk waiting for one would wait forever."""
        reached = 0  # files whose write_file started: it closes them, even when it fails
        try:
            prefetched = self.repo.read_blobs(
                blob_id
                for _, node in batch
                for blob_id, length in node.content
                if blob_id is not None and length <= PREFETCH_BLOB
            )
            for fd, node in batch:
                reached += 1
                self.write_file(fd, node, prefetched)
        except BaseException:
            for fd, _ in batch[reached:]:
                self.close_file(fd)
            raise

    def link_if_seen(self, node: Node, dir_fd: int, name: bytes, rel: bytes) -> bool:
        if node.nlink < 2:
            return False
        key = (node.device, node.inode)
        with self.lock:
            first = self.links.setdefault(key, rel)
        if first == rel:
            return False
        *first_dir, first_name = first.split(b"/")
        try:
            # From the target down, one name at a time: the full path may exceed PATH_MAX.
            first_dir_fd = open_below(os.fsencode(self.root), first_dir)
            try:
                os.link(first_name, name, src_dir_fd=first_dir_fd, dst_dir_fd=dir_fd, follow_symlinks=False)
            finally:
                os.close(first_dir_fd)
        except OSError as err:
            self.warn(f"{os.fsdecode(rel)}: hardlink not restored ({err.strerror}); restoring a copy")
            return False
        return True

    def write_file(self, fd: int, node: Node, prefetched: Mapping[bytes, bytes] | None = None) -> None:
        try:
            offset = 0
            with contextlib.closing(self.blob_data(node.content, prefetched or {})) as blobs:
                for (blob_id, length), data in zip(node.content, blobs, strict=True):
                    self.write_extent(fd, blob_id, data, offset, length)
                    offset += length
            os.ftruncate(fd, node.size)  # trailing holes stay holes
            self.apply_metadata(fd, node)
            with self.lock:
                self.files += 1
        finally:
            self.close_file(fd)

    def blob_data(
        self, content: tuple[Extent, ...], prefetched: Mapping[bytes, bytes]
    ) -> Generator[bytes | None, None, None]:
        """Each extent's data (None for a hole), ``prefetched`` or read. A file of several blobs
        has up to ``READ_AHEAD`` of them read, decrypted and verified on the fetch threads while
        the previous is written: one big file would otherwise be restored on one core."""
        if _blob_count(content) < 2:
            for blob_id, _ in content:
                if blob_id is None:
                    yield None
                else:
                    yield prefetched[blob_id] if blob_id in prefetched else self.repo.read_blob(blob_id)
            return
        window: deque[Future[bytes] | None] = deque()
        upcoming = iter(content)
        try:
            for blob_id, _ in upcoming:
                window.append(None if blob_id is None else self.fetchers.submit(self.repo.read_blob, blob_id))
                if len(window) > READ_AHEAD:
                    head = window.popleft()
                    yield None if head is None else head.result()
            while window:
                head = window.popleft()
                yield None if head is None else head.result()
        finally:
            for future in window:
                if future is not None:
                    future.cancel()
            wait([f for f in window if f is not None])

    def write_extent(
        self, fd: int, blob_id: bytes | None, data: bytes | None, offset: int, length: int
    ) -> None:
        self.cancel.check()
        if blob_id is not None and data is not None:
            if len(data) != length:
                raise CorruptionDetected(
                    f"chunk {blob_id.hex()[:16]} has {len(data)} bytes, expected {length}"
                )
            if self.sparse_block:
                written = self.write_nonzero(fd, data, offset)
            else:
                os.pwrite(fd, data, offset)
                written = length
            with self.lock:
                self.bytes_written += written
        self.progress.add(length)

    def write_nonzero(self, fd: int, data: bytes, offset: int) -> int:
        """Write ``data`` at ``offset`` but for its all-zero blocks, which stay holes."""
        view = memoryview(data)
        written = 0
        for start, end in nonzero_runs(data, offset, self.sparse_block):
            os.pwrite(fd, view[start:end], offset + start)
            written += end - start
        return written

    def close_file(self, fd: int) -> None:
        with self.lock:
            if fd not in self.open_fds:
                return
            self.open_fds.discard(fd)
        os.close(fd)
        self.slots.release()

    def apply_metadata(self, fd: int, node: Node) -> None:
        if self.as_root:
            os.fchown(fd, node.uid, node.gid)
        for key, value in node.xattrs:
            try:
                os.setxattr(fd, key, value)
            except OSError as err:
                self.warn(f"xattr {key!r} not restored: {err.strerror}")
        os.fchmod(fd, node.mode)  # after chown, which clears setuid bits
        os.utime(fd, ns=(node.mtime_ns, node.mtime_ns))

    def restore_special(self, dir_fd: int, name: bytes, rel: bytes, node: Node) -> None:
        try:
            if node.kind == "symlink":
                os.symlink(node.target or b"", name, dir_fd=dir_fd)
                if self.as_root:
                    os.chown(name, node.uid, node.gid, dir_fd=dir_fd, follow_symlinks=False)
                os.utime(name, ns=(node.mtime_ns, node.mtime_ns), dir_fd=dir_fd, follow_symlinks=False)
                return
            if node.kind == "fifo":
                os.mkfifo(name, node.mode, dir_fd=dir_fd)
            elif node.kind in ("chardev", "blockdev"):
                kind_bit = stat.S_IFCHR if node.kind == "chardev" else stat.S_IFBLK
                os.mknod(name, node.mode | kind_bit, node.rdev, dir_fd=dir_fd)
            else:
                self.warn(f"{os.fsdecode(rel)}: sockets cannot be restored; skipped")
                return
            if self.as_root:
                os.chown(name, node.uid, node.gid, dir_fd=dir_fd, follow_symlinks=False)
            os.chmod(name, node.mode, dir_fd=dir_fd, follow_symlinks=True)
            os.utime(name, ns=(node.mtime_ns, node.mtime_ns), dir_fd=dir_fd, follow_symlinks=False)
        except PermissionError as err:
            self.warn(f"{os.fsdecode(rel)}: {node.kind} not restored ({err.strerror})")


def _dir_metadata_pass(
    repo: Repository, cursor: DirCursor, tree_id: bytes, as_root: bool, policy: PrivilegePolicy
) -> None:
    """Set directories' metadata bottom-up, after all their children exist (so mtimes stick)."""

    def subdirs(node: Node | None) -> list[Subdir[Node | None]]:
        tree = tree_id if node is None else node.subtree
        assert tree is not None  # only directories with a tree are visited
        nodes = repo.read_tree(tree)
        return [Subdir(n.name, n) for n in nodes if n.kind == "dir" and n.subtree is not None]

    def leave(node: Node | None, fd: int) -> None:
        if node is not None:  # the root's metadata is the snapshot's, set by the caller
            _set_dir_metadata(fd, node, as_root, policy)

    walk_tree(cursor, None, subdirs, leave)


def _set_dir_metadata(fd: int, node: Node, as_root: bool, policy: PrivilegePolicy) -> None:
    if as_root:
        os.fchown(fd, node.uid, node.gid)
    with contextlib.suppress(OSError):
        for key, value in node.xattrs:
            if policy.keeps_xattr(key):
                os.setxattr(fd, key, value)
    os.fchmod(fd, node.mode)
    os.utime(fd, ns=(node.mtime_ns, node.mtime_ns))


def restore_tree(
    repo: Repository,
    snapshot_id: str,
    target: Path,
    *,
    progress: ProgressCallback | None = None,
    cancel: CancelToken | None = None,
    workers: int = 4,
    clock: Clock | None = None,
    tolerated: frozenset[str] = frozenset(),
    sparse: bool = False,
    restore_privileged: bool = False,
) -> RestoreResult:
    """Restore into ``target``, which must be empty but for names in ``tolerated``.

    A freshly formatted volume holds ``lost+found``; the agent tolerates it, the CLI does not.
    The source's holes are always restored as holes; ``sparse`` also leaves all-zero filesystem
    blocks of file data unwritten (holes), as Velero's ``WriteSparseFiles`` asks.
    ``restore_privileged`` recreates device nodes, setuid/setgid bits and security/trusted
    attributes as recorded; otherwise they are withheld and counted (``RestoreResult.withheld``).
    """
    snapshot = repo.load_snapshot(snapshot_id)
    if snapshot.kind is not SnapshotKind.FILESYSTEM:
        raise InvalidInput(f"snapshot {snapshot_id[:16]} is a {snapshot.kind} snapshot, not a filesystem one")
    if snapshot.root is None:
        raise CorruptionDetected(f"filesystem snapshot {snapshot_id[:16]} records no root directory")
    _prepare_target(target, tolerated)
    clock = clock or SystemClock()
    # Hold a lease for the whole restore and load the index under it, so garbage collection
    # never deletes a pack this restore is reading.
    session = Session(repo.store, clock, "restore")
    try:
        repo.load_index()
        meter = Progress(snapshot.summary.bytes_total, progress, clock)
        job = _TreeRestore(repo, target, meter, cancel or CancelToken(), workers)
        job.tolerated = tolerated
        job.policy = PrivilegePolicy(restore_privileged, warn=job.warn)
        if sparse:
            job.sparse_block = sparse_block(os.stat(target).st_blksize)
        return _restore_under_lease(repo, snapshot, target, job)
    finally:
        session.end()


@contextlib.contextmanager
def _cursor(root_fd: int) -> Iterator[DirCursor]:
    cursor = DirCursor(os.dup(root_fd))
    try:
        yield cursor
    finally:
        cursor.close()


def _restore_under_lease(
    repo: Repository, snapshot: Snapshot, target: Path, job: _TreeRestore
) -> RestoreResult:
    root_fd = os.open(target, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW)
    pending: list[Future[None]] = []
    try:
        if snapshot.tree is not None:
            tree = snapshot.tree
            with _cursor(root_fd) as cursor:
                walk_tree(cursor, tree, lambda t: job.restore_dir(cursor, t, pending), lambda t, fd: None)
            for future in pending:
                future.result()
            with _cursor(root_fd) as cursor:
                _dir_metadata_pass(repo, cursor, tree, job.as_root, job.policy)
        root = snapshot.root
        assert root is not None  # checked before the lease
        if job.as_root:
            os.fchown(root_fd, root.uid, root.gid)
        os.fchmod(root_fd, root.mode)
        os.utime(root_fd, ns=(root.mtime_ns, root.mtime_ns))
    finally:
        job.pool.shutdown(wait=True, cancel_futures=True)
        job.fetchers.shutdown(wait=True, cancel_futures=True)
        for fd in list(job.open_fds):
            job.close_file(fd)
        os.close(root_fd)
    job.progress.finish()
    return RestoreResult(
        job.files, job.dirs, job.bytes_written, tuple(job.warnings), job.policy.withheld()
    )
