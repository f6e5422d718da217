"""Finding the data extents of a file (holes are never read, stored or restored as data)."""

from __future__ import annotations

import errno
import os

# Holes shorter than this are read as zeros: tiny holes cost more in metadata than they save.
MIN_HOLE = 64 * 1024


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
