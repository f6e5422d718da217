"""Block mode: a raw block device (or an image file standing in for one) to and from a repository.

A device snapshot is a tree with one node, ``device``, whose content extents cover the whole device:
chunks that hold data, and holes for ranges that were sparse or all zeros (never stored). Restores
write only the data extents; holes are left alone on a fresh file (it reads back as zeros) and, with
``zero_fill``, explicitly zeroed on a device whose previous contents are unknown.

The restore target is opened as itself, never through a symlink, and must be a block device or a
regular file. Unless forced it must also be blank: a file that is new or empty, a device whose
first and last MiB read as zeros (see ``_blank_ends``), so a mistyped path cannot overwrite a disk
that holds a filesystem.
"""

from __future__ import annotations

import errno
import os
import stat
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

from barge.clock import Clock, SystemClock
from barge.errors import CorruptionDetected, InvalidInput
from barge.fs.backup import Backed, BackupOptions, BackupResult, finish_backup
from barge.fs.content import device_size, make_chunker, store_content
from barge.fs.progress import CancelToken, Progress, ProgressCallback
from barge.repo.pack import BlobType
from barge.repo.repository import Repository
from barge.repo.session import Session
from barge.repo.snapshot import Snapshot, SnapshotKind, SnapshotSummary
from barge.repo.tree import Node, encode_tree

DEVICE_NODE = b"device"
_ZERO_WRITE = 4 * 1024 * 1024
_BLANK_PROBE = 1024 * 1024  # read at each end of a device to decide whether it is blank


def _open_source(device: Path) -> tuple[int, int]:
    try:
        fd = os.open(device, os.O_RDONLY | os.O_CLOEXEC)
    except OSError as err:
        raise InvalidInput(f"cannot open {device} for a block backup: {err.strerror}") from err
    mode = os.fstat(fd).st_mode
    if not (stat.S_ISBLK(mode) or stat.S_ISREG(mode)):
        os.close(fd)
        raise InvalidInput(f"{device} is neither a block device nor an image file")
    return fd, device_size(fd)


def backup_device(
    repo: Repository,
    device: Path,
    *,
    options: BackupOptions | None = None,
    progress: ProgressCallback | None = None,
    cancel: CancelToken | None = None,
    clock: Clock | None = None,
) -> BackupResult:
    """Back up the whole device; all-zero and sparse ranges become holes."""
    options = options or BackupOptions()
    clock = clock or SystemClock()
    cancel = cancel or CancelToken()
    fd, size = _open_source(device)
    started = clock.monotonic()
    meter = Progress(size, progress, clock)
    writer = repo.writer()
    try:
        writer.adopt_orphan_packs()
        stored = store_content(
            fd,
            size,
            writer=writer,
            chunker=make_chunker(repo),
            progress=meter,
            cancel=cancel,
            zeros_as_holes=True,
        )
        node = Node(name=DEVICE_NODE, kind="file", mode=0o600, size=size, content=stored.extents)
        tree_id = writer.add_blob(BlobType.TREE, encode_tree([node]))
        cancel.check()
        writer.flush()
        writer.session.ensure_valid()
    except BaseException:
        writer.abort()
        raise
    finally:
        os.close(fd)
    counts = SnapshotSummary(files=1, bytes_total=size, bytes_read=stored.bytes_read)
    result = finish_backup(
        writer, Backed(SnapshotKind.BLOCK, device, tree_id, counts), options, clock, started
    )
    meter.finish()
    return result


@dataclass(frozen=True)
class DeviceRestoreResult:
    bytes_total: int
    bytes_written: int
    zeroed: int
    target_was_blank: bool  # False: a forced restore overwrote data


def _device_node(repo: Repository, snapshot: Snapshot, snapshot_id: str) -> Node:
    if snapshot.kind is not SnapshotKind.BLOCK:
        raise InvalidInput(f"snapshot {snapshot_id[:16]} is a {snapshot.kind} snapshot, not a block one")
    if snapshot.tree is None:
        raise CorruptionDetected(f"block snapshot {snapshot_id[:16]} names no tree")
    nodes = repo.read_tree(snapshot.tree)
    if len(nodes) != 1 or nodes[0].name != DEVICE_NODE:
        raise CorruptionDetected(f"block snapshot {snapshot_id[:16]} does not describe one device")
    return nodes[0]


@dataclass(frozen=True)
class _Target:
    fd: int
    reads_zeros: bool  # unwritten ranges already read as zeros (a fresh sparse file)
    was_blank: bool


def _open_target(target: Path, size: int, *, force: bool) -> _Target:
    """Open the restore target itself (a symlink there is refused, not followed); a device must
    hold ``size`` bytes, and without ``force`` the target must be blank."""
    fd, created = _open_no_follow(target)
    try:
        info = os.fstat(fd)
        if stat.S_ISBLK(info.st_mode):
            available = device_size(fd)
            if available < size:
                raise InvalidInput(f"{target} holds {available:,} bytes; the snapshot needs {size:,}")
            blank = _blank_ends(fd, available)
            _refuse_unless_blank(target, blank or force, "a block device with data in its first or last MiB")
            return _Target(fd, reads_zeros=False, was_blank=blank)
        if not stat.S_ISREG(info.st_mode):
            raise InvalidInput(f"{target} is neither a block device nor a regular file")
        blank = created or info.st_size == 0
        _refuse_unless_blank(target, blank or force, f"a file of {info.st_size:,} bytes")
        os.ftruncate(fd, 0)  # a fresh sparse file: every unwritten byte reads as zero
        os.ftruncate(fd, size)
        return _Target(fd, reads_zeros=True, was_blank=blank)
    except BaseException:
        os.close(fd)
        raise


def _open_no_follow(target: Path) -> tuple[int, bool]:
    """(fd, created): the existing target, or a new file; O_NOFOLLOW refuses a symlink as the
    last component, and O_NONBLOCK keeps a FIFO or a device from hanging the open."""
    flags = os.O_RDWR | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC
    created = False
    try:
        try:
            fd = os.open(target, flags)
        except FileNotFoundError:
            fd, created = os.open(target, flags | os.O_CREAT | os.O_EXCL, 0o600), True
    except OSError as err:
        raise _open_error(target, err) from err
    os.set_blocking(fd, True)
    return fd, created


def _open_error(target: Path, err: OSError) -> InvalidInput:
    if err.errno == errno.ELOOP:
        return InvalidInput(
            f"{target} is a symlink (to {os.path.realpath(target)}); a block restore does not follow "
            "symlinks: name the device or file itself"
        )
    if err.errno in (errno.EISDIR, errno.ENXIO, errno.ENODEV):
        return InvalidInput(f"{target} is neither a block device nor a regular file")
    return InvalidInput(f"cannot open {target} for a block restore: {err.strerror}")


def _blank_ends(fd: int, size: int) -> bool:
    """Whether the device's first and last MiB read as zeros. That is where anything that makes
    a disk worth keeping announces itself: partition tables (MBR, GPT and its backup at the end),
    filesystem superblocks (ext4, XFS, btrfs), LVM, LUKS, ZFS labels and MD RAID superblocks. A
    freshly provisioned volume reads zeros there; 2 MiB is cheap to read on any device."""
    for offset in sorted({0, max(0, size - _BLANK_PROBE)}):
        data = os.pread(fd, _BLANK_PROBE, offset)
        if data.count(0) != len(data):
            return False
    return True


def _refuse_unless_blank(target: Path, allowed: bool, what: str) -> None:
    if not allowed:
        raise InvalidInput(
            f"{target} is {what}, not blank; restore onto a blank device or a new file, "
            "or force it (barge restore --force) to overwrite it"
        )


def restore_device(
    repo: Repository,
    snapshot_id: str,
    target: Path,
    *,
    zero_fill: bool = False,
    force: bool = False,
    progress: ProgressCallback | None = None,
    cancel: CancelToken | None = None,
    workers: int = 4,
    clock: Clock | None = None,
) -> DeviceRestoreResult:
    """Write the snapshot onto ``target`` (a block device, or a file created sparse).

    On a device, ranges that were holes are skipped unless ``zero_fill``: then they are written
    with zeros, so the device ends up byte-identical whatever it held before. A target that is not
    blank (a non-empty file, a device with data at either end) is refused unless ``force``.
    """
    clock = clock or SystemClock()
    cancel = cancel or CancelToken()
    snapshot = repo.load_snapshot(snapshot_id)
    session = Session(repo.store, clock, "restore")
    try:
        repo.load_index()
        node = _device_node(repo, snapshot, snapshot_id)
        opened = _open_target(target, node.size, force=force)
        meter = Progress(node.size, progress, clock)
        try:
            fill = zero_fill and not opened.reads_zeros
            written, zeroed = _write_extents(
                repo, opened.fd, node, zero_fill=fill, meter=meter, cancel=cancel, workers=workers
            )
            os.fsync(opened.fd)
        finally:
            os.close(opened.fd)
    finally:
        session.end()
    meter.finish()
    return DeviceRestoreResult(node.size, written, zeroed, opened.was_blank)


def _write_extents(
    repo: Repository,
    fd: int,
    node: Node,
    *,
    zero_fill: bool,
    meter: Progress,
    cancel: CancelToken,
    workers: int,
) -> tuple[int, int]:
    def write_data(blob_id: bytes, offset: int, length: int) -> None:
        cancel.check()
        data = repo.read_blob(blob_id)
        if len(data) != length:
            raise CorruptionDetected(f"chunk {blob_id.hex()[:16]} has {len(data)} bytes, expected {length}")
        os.pwrite(fd, data, offset)
        meter.add(length)

    def write_zeros(offset: int, length: int) -> None:
        zeros = bytes(min(length, _ZERO_WRITE))
        end = offset + length
        while offset < end:
            cancel.check()
            offset += os.pwrite(fd, zeros[: end - offset], offset)
        meter.add(length)

    written = zeroed = offset = 0
    with ThreadPoolExecutor(max_workers=workers, thread_name_prefix="barge-restore") as pool:
        futures = []
        for blob_id, length in node.content:
            if blob_id is not None:
                futures.append(pool.submit(write_data, blob_id, offset, length))
                written += length
            elif zero_fill:
                futures.append(pool.submit(write_zeros, offset, length))
                zeroed += length
            else:
                meter.add(length)
            offset += length
        for future in futures:
            future.result()
    return written, zeroed
