"""Finding the data extents of a file (holes are never read, stored or restored as data)."""

from __future__ import annotations

import errno
import functools
import os

# Holes shorter than this are read as zeros: tiny holes cost more in metadata than they save.
MIN_HOLE = 64 * 1024
# Bounds of the block size a sparse restore leaves holes in (the target filesystem's st_blksize).
MIN_SPARSE_BLOCK = 4096
MAX_SPARSE_BLOCK = 1024 * 1024


def data_extents(fd: int, size: int) -> list[tuple[int, int]]:
    """``(start, end)`` byte ranges that hold data, in order; the gaps between them are holes."""
    if size == 0:
        return []
    extents: list[tuple[int, int]] = []
    pos = 0
    try:
        while pos < size:
            start = os.lseek(fd, pos, os.SEEK_DATA)
            end = min(os.lseek(fd, start, os.SEEK_HOLE), size)
            if extents and start - extents[-1][1] < MIN_HOLE:
                extents[-1] = (extents[-1][0], end)
            else:
                extents.append((start, end))
            pos = end
    except OSError as err:
        if err.errno == errno.ENXIO:  # no data after pos: the rest is a hole
            return extents
        if err.errno in (errno.EINVAL, errno.EOPNOTSUPP):  # no hole support: all data
            return [(0, size)]
        raise
    return extents


class ExtentReader:
    """A ``readinto`` reader over one byte range of a file descriptor (feeds the chunker)."""

    def __init__(self, fd: int, start: int, end: int) -> None:
        self._fd = fd
        self._pos = start
        self._end = end
        self.bytes_read = 0

    def readinto(self, buffer: memoryview) -> int:
        want = min(len(buffer), self._end - self._pos)
        if want <= 0:
            return 0
        got = os.preadv(self._fd, [buffer[:want]], self._pos)
        self._pos += got
        self.bytes_read += got
        return got


def zero_buffer(size: int) -> bytes:
    """A shared all-zero buffer of at least ``size`` bytes: ``zero_buffer(len(data)).startswith(data)``
    tests ``data`` for zeros with one ``memcmp`` that stops at the first non-zero byte and allocates
    nothing (one buffer per power of two, made once)."""
    return _zeros(max(MIN_SPARSE_BLOCK, 1 << (size - 1).bit_length()))


@functools.lru_cache(maxsize=32)
def _zeros(size: int) -> bytes:
    return bytes(size)


def sparse_block(st_blksize: int) -> int:
    """The granularity of holes on a filesystem reporting ``st_blksize`` (bounded to 4 KiB..1 MiB)."""
    return min(max(st_blksize, MIN_SPARSE_BLOCK), MAX_SPARSE_BLOCK)


def nonzero_runs(data: bytes | memoryview, offset: int, block: int) -> list[tuple[int, int]]:
    """``(start, end)`` index ranges of ``data`` that must be written at file offset ``offset``
    when every ``block``-aligned (in the file) piece of it that is all zeros is left unwritten.

    Unwritten ranges of a new file read as zeros, and whole blocks of them stay holes.
    """
    size = len(data)
    if zero_buffer(size).startswith(data):
        return []
    zero = zero_buffer(block)
    view = memoryview(data)
    runs: list[tuple[int, int]] = []
    run_start = -1  # start of the pending run of non-zero pieces
    start, end = 0, min(size, block - offset % block)
    while start < size:
        if zero.startswith(view[start:end]):
            if run_start >= 0:
                runs.append((run_start, start))
                run_start = -1
        elif run_start < 0:
            run_start = start
        start, end = end, min(size, end + block)
    if run_start >= 0:
        runs.append((run_start, size))
    return runs
