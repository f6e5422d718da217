"""Turning a byte range of an open file or device into stored chunks (shared by file and block mode)."""

from __future__ import annotations

import os
from dataclasses import dataclass

from pyfastcdc import FastCDC

from barge.fs.progress import CancelToken, Progress
from barge.fs.sparse import ExtentReader, data_extents
from barge.repo.pack import BlobType
from barge.repo.repository import Repository, RepositoryWriter
from barge.repo.tree import Extent


def make_chunker(repo: Repository) -> FastCDC:
    """A chunker with the repository's parameters and secret seed. Not thread-safe: one per thread."""
    s = repo.config.settings
    return FastCDC(
        s.chunk_avg - s.chunk_min,  # pyfastcdc's average is avg_size + min_size
        min_size=s.chunk_min,
        max_size=s.chunk_max,
        seed=repo.keys.chunker_seed,
    )


@dataclass(frozen=True)
class StoredContent:
    extents: tuple[Extent, ...]
    bytes_read: int
    complete: bool  # False when the source ended early (a file shrank while being read)


def _append(extents: list[Extent], blob_id: bytes | None, length: int) -> None:
    if blob_id is None and extents and extents[-1][0] is None:
        extents[-1] = (None, extents[-1][1] + length)  # adjacent holes merge
    else:
        extents.append((blob_id, length))


def store_content(
    fd: int,
    size: int,
    *,
    writer: RepositoryWriter,
    chunker: FastCDC,
    progress: Progress,
    cancel: CancelToken,
    zeros_as_holes: bool = False,
) -> StoredContent:
    """Chunk and store ``size`` bytes of ``fd``; holes (and, with ``zeros_as_holes``, all-zero
    chunks) are recorded as ``(None, length)`` and never stored."""
    zero = bytes(chunker.max_size) if zeros_as_holes else b""
    extents: list[Extent] = []
    pos = bytes_read = 0
    for start, end in data_extents(fd, size):
        if start > pos:
            _append(extents, None, start - pos)
            progress.add(start - pos)
        reader = ExtentReader(fd, start, end)
        for chunk in chunker.cut_stream(reader):
            cancel.check()
            if zeros_as_holes and zero.startswith(chunk.data):
                _append(extents, None, chunk.length)
            else:
                _append(extents, writer.add_blob(BlobType.DATA, chunk.data), chunk.length)
            progress.add(chunk.length)
        pos = start + reader.bytes_read
        bytes_read += reader.bytes_read
        if pos < end:
            return StoredContent(tuple(extents), bytes_read, complete=False)
    if pos < size:
        _append(extents, None, size - pos)
        progress.add(size - pos)
    return StoredContent(tuple(extents), bytes_read, complete=True)


def device_size(fd: int) -> int:
    """Size of a block device or regular file open at ``fd``."""
    return os.lseek(fd, 0, os.SEEK_END)
