"""Backing up a directory tree into a repository.

The walk itself is single-threaded (metadata is cheap); file contents are chunked, hashed, sealed
and packed on a pool of workers. Memory stays bounded: each worker holds one chunker buffer, the
writer holds a bounded number of packs in flight, and the walk holds one directory's listing per
level of depth. The walk is iterative and goes through directory descriptors (``barge.fs.walk``):
a tenant's tree may be deeper than the recursion limit and its paths longer than PATH_MAX.
"""

from __future__ import annotations

import operator
import os
import socket
import stat
import threading
from collections.abc import Mapping
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Literal

from pyfastcdc import FastCDC

from barge.clock import Clock, SystemClock
from barge.errors import Canceled, InvalidInput, PermanentError
from barge.fs.content import make_chunker, store_content
from barge.fs.progress import CancelToken, Progress, ProgressCallback
from barge.fs.walk import PROC_FD, DirCursor, Subdir, entry_path, walk_tree
from barge.repo.pack import BlobType
from barge.repo.repository import Repository, RepositoryWriter
from barge.repo.snapshot import RootMetadata, Snapshot, SnapshotKind, SnapshotSummary
from barge.repo.tree import Extent, Node, encode_tree, make_node

ErrorPolicy = Literal["fail", "skip"]


class SourceUnreadable(PermanentError):
    """A file in the source could not be read and the error policy is ``fail``."""


@dataclass(frozen=True)
class BackupOptions:
    workers: int = 4
    on_unreadable: ErrorPolicy = "fail"
    parent: str | None = None  # snapshot whose unchanged files are reused without reading
    tags: Mapping[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class BackupResult:
    snapshot_id: str
    files: int
    dirs: int
    bytes_total: int
    bytes_read: int
    bytes_new: int
    bytes_stored: int
    files_unchanged: int
    duration_s: float
    skipped: tuple[str, ...] = ()


@dataclass(frozen=True)
class Backed:
    """What a backup of either kind hands to ``finish_backup``: the part that differs."""

    kind: SnapshotKind
    source: Path
    tree: bytes | None
    counts: SnapshotSummary  # files, dirs, bytes_total, bytes_read, files_unchanged, skipped
    root: RootMetadata | None = None
    skipped: tuple[str, ...] = ()


def finish_backup(
    writer: RepositoryWriter, backed: Backed, options: BackupOptions, clock: Clock, started: float
) -> BackupResult:
    """The end every backup shares: complete the summary with what the writer stored, commit the
    manifest (``RepositoryWriter.commit``: before the session ends) and report."""
    summary = replace(backed.counts, bytes_new=writer.stats.bytes_new, bytes_stored=writer.stats.bytes_stored)
    snapshot = Snapshot(
        kind=backed.kind,
        time=clock.now().isoformat(),
        hostname=socket.gethostname(),
        paths=(os.fsdecode(backed.source),),
        tree=backed.tree,
        summary=summary,
        tags=dict(options.tags),
        parent=options.parent,
        root=backed.root,
    )
    snapshot_id = writer.commit(snapshot)
    return BackupResult(
        snapshot_id=snapshot_id,
        files=summary.files,
        dirs=summary.dirs,
        bytes_total=summary.bytes_total,
        bytes_read=summary.bytes_read,
        bytes_new=summary.bytes_new,
        bytes_stored=summary.bytes_stored,
        files_unchanged=summary.files_unchanged,
        duration_s=clock.monotonic() - started,
        skipped=backed.skipped,
    )


def scan_total_bytes(source: Path) -> int:
    """The apparent size of every regular file below ``source``: the progress total, known up front."""
    total = 0
    cursor = DirCursor.open(os.fsencode(source), follow_symlinks=True)

    def enter(_: None) -> list[Subdir[None]]:
        nonlocal total
        subdirs = []
        with os.scandir(cursor.fd) as entries:
            for entry in entries:
                try:
                    if entry.is_dir(follow_symlinks=False):  # the listing's type: no stat
                        subdirs.append(Subdir(os.fsencode(entry.name), None))
                    elif entry.is_file(follow_symlinks=False):
                        total += entry.stat(follow_symlinks=False).st_size
                except OSError:
                    continue
        return subdirs

    try:
        walk_tree(cursor, None, enter, lambda _, fd: None)
    finally:
        cursor.close()
    return total


def _kind(mode: int) -> str:
    for test, kind in (
        (stat.S_ISREG, "file"),
        (stat.S_ISDIR, "dir"),
        (stat.S_ISLNK, "symlink"),
        (stat.S_ISCHR, "chardev"),
        (stat.S_ISBLK, "blockdev"),
        (stat.S_ISFIFO, "fifo"),
    ):
        if test(mode):
            return kind
    return "socket"


Xattrs = tuple[tuple[bytes, bytes], ...]
Content = tuple[Extent, ...]


def _read_xattrs(at: int | bytes) -> Xattrs:
    """Of the open inode ``at``, or of the entry at path ``at`` (never following a symlink)."""
    follow = isinstance(at, int)  # a descriptor is the inode itself
    try:
        names = os.listxattr(at, follow_symlinks=follow)
        return tuple(sorted((os.fsencode(n), os.getxattr(at, n, follow_symlinks=follow)) for n in names))
    except OSError:
        return ()


def current_xattrs(kind: str, st: os.stat_result, previous: Node | None) -> Xattrs | None:
    """The parent snapshot's extended attributes of this entry when they are provably current, else
    None (read them). Setting or removing one changes the ctime, so an unchanged ctime proves it."""
    if kind == "symlink":
        return ()  # not backed up for symlinks
    if previous is None or previous.kind != kind:
        return None
    if (previous.inode, previous.ctime_ns) == (st.st_ino, st.st_ctime_ns):
        return previous.xattrs
    return None


def metadata_node(
    name: bytes, dir_fd: int, st: os.stat_result, xattrs: Xattrs, kind: str = "", *, content: Content = ()
) -> Node:
    """The metadata of entry ``name`` of the directory open at ``dir_fd`` (``kind``: if known), and
    the ``content`` when it is known already (a file unchanged since the parent snapshot)."""
    kind = kind or _kind(st.st_mode)
    return make_node(
        {
            "name": name,
            "kind": kind,
            "mode": stat.S_IMODE(st.st_mode),
            "uid": st.st_uid,
            "gid": st.st_gid,
            "mtime_ns": st.st_mtime_ns,
            "size": st.st_size if kind == "file" else 0,
            "content": content,
            "subtree": None,
            "target": os.readlink(name, dir_fd=dir_fd) if kind == "symlink" else None,
            "rdev": st.st_rdev if kind in ("chardev", "blockdev") else 0,
            "xattrs": xattrs,
            "device": st.st_dev,
            "inode": st.st_ino,
            "nlink": st.st_nlink,
            "ctime_ns": st.st_ctime_ns,
        }
    )


_by_name = operator.attrgetter("name")


def _same_file_data(st: os.stat_result, old: Node) -> bool:
    """True when metadata says a regular file's data cannot have changed since ``old``."""
    return (
        old.kind == "file"
        and st.st_size == old.size
        and st.st_mtime_ns == old.mtime_ns
        and st.st_ctime_ns == old.ctime_ns
        and st.st_ino == old.inode
    )


@dataclass(slots=True)
class _Dir:
    """One directory of the walk while its subdirectories are backed up: what it lists so far."""

    parent: _Dir | None
    node: Node  # its metadata; ``subtree`` is set once it is done
    old: Node | None  # the same directory in the parent snapshot
    xattrs: Xattrs | None = ()  # None: not known yet, read once it is open (cheaper than by path)
    nodes: list[Node] = field(default_factory=list)
    pending: list[Future[Node | None]] = field(default_factory=list)
    previous: list[Node] = field(default_factory=list)  # ``old``'s nodes, in tree order

    def relpath(self, name: bytes) -> bytes:
        """Built only for messages: the walk itself never uses paths (they may exceed PATH_MAX)."""
        names = [name]
        at: _Dir | None = self
        while at is not None and at.parent is not None:
            names.append(at.node.name)
            at = at.parent
        return b"/".join(reversed(names))


class _TreeBackup:
    def __init__(
        self,
        repo: Repository,
        writer: RepositoryWriter,
        options: BackupOptions,
        progress: Progress,
        cancel: CancelToken,
        *,
        source: bytes,  # for messages only: the walk goes through descriptors
    ) -> None:
        self.repo = repo
        self.source = source
        self.writer = writer
        self.options = options
        self.progress = progress
        self.cancel = cancel
        self.pool = ThreadPoolExecutor(max_workers=options.workers, thread_name_prefix="barge-read")
        self.slots = threading.BoundedSemaphore(options.workers * 4)
        self.local = threading.local()
        self.lock = threading.Lock()
        self.files = self.dirs = self.unchanged = self.bytes_read = 0
        self.skipped: list[str] = []
        # Scratch for ``read_here``'s probe (the walk's thread only): files of one chunk at most.
        self.probe = memoryview(bytearray(repo.config.settings.chunk_min))

    def chunker(self) -> FastCDC:
        if not hasattr(self.local, "chunker"):
            self.local.chunker = make_chunker(self.repo)
        chunker: FastCDC = self.local.chunker
        return chunker

    def parent_nodes(self, tree_id: bytes | None) -> list[Node]:
        """The nodes of the parent snapshot's tree ``tree_id`` (none when None), in tree order."""
        return [] if tree_id is None else self.repo.read_tree(tree_id)

    def backup_root(self, cursor: DirCursor, root: Node, old: Node | None) -> Node:
        """Back up the tree below the cursor; returns ``root`` with its tree."""
        top = _Dir(None, root, old)
        walk_tree(cursor, top, lambda d: self.enter_dir(cursor.fd, d), self.leave_dir)
        return top.node

    def enter_dir(self, fd: int, d: _Dir) -> list[Subdir[_Dir]]:
        """List one directory: files go to the pool, the rest is recorded; returns its subdirectories.

        Extended attributes are read through a descriptor where there is one (a file being read, a
        directory entered): only devices, fifos and sockets, never opened, are read by /proc path."""
        self.cancel.check()
        if d.xattrs is None:
            d.xattrs = _read_xattrs(fd)
        d.previous = self.parent_nodes(d.old.subtree if d.old and d.old.kind == "dir" else None)
        previous = {node.name: node for node in d.previous}
        names = sorted(map(os.fsencode, os.listdir(fd)))
        subdirs: list[Subdir[_Dir]] = []
        for name in names:
            try:
                st = os.stat(name, dir_fd=fd, follow_symlinks=False)
                kind = _kind(st.st_mode)
                old = previous.get(name)
                xattrs = current_xattrs(kind, st, old)
                if kind == "file":
                    self.add_file(fd, d, name, st, old=old, xattrs=xattrs)
                elif kind == "dir":
                    child = _Dir(d, metadata_node(name, fd, st, (), "dir"), old, xattrs)
                    subdirs.append(Subdir(name, child))
                else:
                    if xattrs is None:
                        xattrs = _read_xattrs(entry_path(fd, name))
                    d.nodes.append(metadata_node(name, fd, st, xattrs, kind))
            except FileNotFoundError:
                continue  # vanished since the listing
        return subdirs

    def add_file(
        self,
        dir_fd: int,
        d: _Dir,
        name: bytes,
        st: os.stat_result,
        *,
        old: Node | None,
        xattrs: Xattrs | None,
    ) -> None:
        """Reuse the parent's content if unchanged; else open the file here and read it, here
        (``read_here``) or on the pool, which closes it (the walk moves on)."""
        if xattrs is not None and self.reusable(st, old):
            assert old is not None
            # Unchanged since the parent: no read, and no trip through the pool.
            d.nodes.append(metadata_node(name, dir_fd, st, xattrs, "file", content=old.content))
            return
        try:
            fd = os.open(name, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=dir_fd)
        except OSError as err:
            self.unreadable(d.relpath(name), err)
            return
        submitted = False
        try:
            node = metadata_node(name, dir_fd, st, _read_xattrs(fd) if xattrs is None else xattrs, "file")
            if self.read_here(fd, st.st_size):
                if (result := self.backup_file(fd, d, node)) is not None:
                    d.nodes.append(result)
                return
            self.slots.acquire()
            try:
                future = self.pool.submit(self.backup_file, fd, d, node)
            except BaseException:
                self.slots.release()
                raise
            submitted = True
        finally:
            if not submitted:
                os.close(fd)

        def done(_: Future[Node | None]) -> None:  # also when canceled before it ran
            os.close(fd)
            self.slots.release()

        future.add_done_callback(done)
        d.pending.append(future)

    def read_here(self, fd: int, size: int) -> bool:
        """Whether the walk reads this file itself rather than the pool: a file of one chunk at
        most whose bytes are all in the page cache. Handing such a file to the pool costs more
        than reading it, since each hand-off and each interpreter-lock switch between threads is
        a futex wake and a context switch, a dozen for a 25 KiB file (10,000 of them: 4.6 s on
        the pool of 4, 2.7 s here). A file that would wait on the disk still goes to the pool,
        where reads overlap. The probe is one read that fails rather than blocks (RWF_NOWAIT)."""
        if size > len(self.probe):
            return False
        if size == 0:
            return True
        try:
            return os.preadv(fd, [self.probe[:size]], 0, os.RWF_NOWAIT) == size
        except OSError:  # EAGAIN: not cached; EOPNOTSUPP: the filesystem cannot tell
            return False

    def leave_dir(self, d: _Dir, fd: int) -> None:
        """All of ``d`` is done: store its tree blob and hand it to its parent."""
        for future in d.pending:
            result = future.result()
            if result is not None:
                d.nodes.append(result)
        tree_id = self.unchanged_tree(d) or self.writer.add_blob(BlobType.TREE, encode_tree(d.nodes))
        d.nodes, d.pending, d.previous = [], [], []
        with self.lock:
            self.dirs += 1
        d.node = replace(d.node, subtree=tree_id, xattrs=d.xattrs or ())
        if d.parent is not None:
            d.parent.nodes.append(d.node)

    def unchanged_tree(self, d: _Dir) -> bytes | None:
        """The parent snapshot's tree of ``d`` when ``d`` lists exactly its nodes (still stored),
        else None. A tree encodes its nodes and nothing else, so it would encode to that blob
        again; comparing the nodes costs a tenth of encoding and hashing them, and an unchanged
        directory is most directories of most re-backups."""
        old_tree = d.old.subtree if d.old is not None else None
        if old_tree is None or len(d.nodes) != len(d.previous):
            return None
        d.nodes.sort(key=_by_name)
        if d.nodes != d.previous or not self.writer.has_blob(old_tree):
            return None
        return old_tree

    def reusable(self, st: os.stat_result, old: Node | None) -> bool:
        """The file's metadata proves its data is the parent snapshot's ``old``, and that data is
        still stored: its content can be reused (and is counted as backed up)."""
        if old is None or not _same_file_data(st, old):
            return False
        if not all(b is None or self.writer.has_blob(b) for b, _ in old.content):
            return False  # the parent's data is gone (garbage collected): read the file again
        self.progress.add(st.st_size)
        with self.lock:
            self.files += 1
            self.unchanged += 1
        return True

    def backup_file(self, fd: int, d: _Dir, node: Node) -> Node | None:
        if self.cancel.canceled:
            return None
        try:
            content = self.read_content(fd, node.size)
        except Canceled:
            return None
        except OSError as err:
            self.unreadable(d.relpath(node.name), err)
            return None
        with self.lock:
            self.files += 1
        return replace(node, content=content, size=sum(n for _, n in content))

    def unreadable(self, relpath: bytes, err: OSError) -> None:
        """A file that cannot be opened or read: fail, or note it and go on, as the policy says."""
        message = f"{os.fsdecode(os.path.join(self.source, relpath))}: {err.strerror or err}"
        if self.options.on_unreadable == "fail":
            raise SourceUnreadable(
                f"cannot read {message} (set the error policy to skip to continue)"
            ) from err
        with self.lock:
            self.skipped.append(message)

    def read_content(self, fd: int, size: int) -> tuple[Extent, ...]:
        stored = store_content(
            fd,
            size,
            writer=self.writer,
            chunker=self.chunker(),
            progress=self.progress,
            cancel=self.cancel,
        )
        with self.lock:
            self.bytes_read += stored.bytes_read
        return stored.extents


def backup_tree(
    repo: Repository,
    source: Path,
    *,
    options: BackupOptions | None = None,
    progress: ProgressCallback | None = None,
    cancel: CancelToken | None = None,
    clock: Clock | None = None,
) -> BackupResult:
    """Back up ``source`` (a directory) and write a snapshot; returns what was done.

    On cancel or error no snapshot is written, and everything already uploaded stays indexed so
    the next run reuses it.
    """
    options = options or BackupOptions()
    clock = clock or SystemClock()
    cancel = cancel or CancelToken()
    source_bytes, root_stat = _source_directory(source)
    parent_root = _parent_root(repo, options.parent)
    started = clock.monotonic()
    meter = Progress(scan_total_bytes(source), progress, clock)
    writer = repo.writer()
    walk = _TreeBackup(repo, writer, options, meter, cancel, source=source_bytes)
    cursor: DirCursor | None = None
    try:
        writer.adopt_orphan_packs()
        cursor = DirCursor.open(source_bytes, follow_symlinks=True)
        root_node = metadata_node(b"", cursor.fd, root_stat, ())  # the root keeps mode, owner, mtime only
        root = walk.backup_root(cursor, root_node, parent_root)
        cancel.check()
        writer.flush()
        writer.session.ensure_valid()
    except BaseException:
        walk.pool.shutdown(wait=True, cancel_futures=True)
        writer.abort()
        raise
    finally:
        if cursor is not None:
            cursor.close()
    walk.pool.shutdown(wait=True)
    counts = SnapshotSummary(
        files=walk.files,
        dirs=walk.dirs,
        bytes_total=meter.total,
        bytes_read=walk.bytes_read,
        files_unchanged=walk.unchanged,
        skipped=len(walk.skipped),
    )
    root_meta = RootMetadata(mode=root.mode, uid=root.uid, gid=root.gid, mtime_ns=root.mtime_ns)
    tree = root.subtree or None
    backed = Backed(SnapshotKind.FILESYSTEM, source, tree, counts, root_meta, tuple(walk.skipped))
    result = finish_backup(writer, backed, options, clock, started)
    meter.finish()
    return result


def _source_directory(source: Path) -> tuple[bytes, os.stat_result]:
    source_bytes = os.fsencode(source)
    try:
        root_stat = os.stat(source_bytes)
    except OSError as err:
        raise InvalidInput(f"cannot back up {source}: {err.strerror}") from err
    if not stat.S_ISDIR(root_stat.st_mode):
        raise InvalidInput(f"cannot back up {source}: not a directory")
    if not os.path.isdir(PROC_FD):
        raise PermanentError(
            f"cannot back up {source}: extended attributes are read through {os.fsdecode(PROC_FD)}, "
            "which is missing: mount /proc"
        )
    return source_bytes, root_stat


def _parent_root(repo: Repository, parent_id: str | None) -> Node | None:
    """The parent snapshot's root, whose unchanged files are reused without reading."""
    if not parent_id:
        return None
    return Node(name=b"", kind="dir", subtree=repo.load_snapshot(parent_id).tree)
