"""Walking a directory tree of any depth through directory file descriptors.

A tenant controls its volume's tree: it may be nested deeper than Python's recursion limit, and
its full paths may be longer than PATH_MAX (4096 bytes), where every call taking a path fails.
So walks are iterative and never build a path: they move down by name (``O_NOFOLLOW``: never
through a symlink) from an open directory. The directories of the first few dozen levels above
stay open for the way back; deeper ones are closed and found again by ``..``, which must be the
inode the walk came from. Per level of depth a walk keeps the caller's state for that directory
and a name (deeper down, an inode number too): its descriptors do not grow with depth.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from typing import Generic, NamedTuple, TypeVar

from barge.errors import PermanentError

T = TypeVar("T")

DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
PROC_FD = b"/proc/self/fd"

Identity = tuple[int, int]  # (st_dev, st_ino)


class TreeChanged(PermanentError):
    """A directory was moved or replaced while it was being walked."""


def identity(st: os.stat_result) -> Identity:
    return st.st_dev, st.st_ino


def entry_path(dir_fd: int, name: bytes) -> bytes:
    """A short path to ``name`` in the directory open at ``dir_fd``, whatever the tree's depth,
    for the calls that take neither a descriptor nor ``dir_fd`` (extended attributes of entries
    that must not be opened: devices, fifos). Needs /proc, as every Linux container has."""
    return b"%s/%d/%s" % (PROC_FD, dir_fd, name or b".")


class DirCursor:
    """One open directory of a walk; ``down`` and ``up`` move it.

    The first ``KEEP_OPEN`` levels stay open while the walk is below them, so the way back up a
    tree of ordinary depth costs nothing; a deeper directory is closed when the walk goes below it
    and found again by ``..``.
    """

    KEEP_OPEN = 32

    def __init__(self, fd: int) -> None:
        self.fd = fd
        # per level above: the name taken down, and the directory's descriptor if kept open, else
        # its identity, which ".." must match on the way back
        self._above: list[tuple[bytes, int | Identity]] = []

    @classmethod
    def open(cls, path: bytes, *, follow_symlinks: bool = False) -> DirCursor:
        flags = DIR_FLAGS if not follow_symlinks else DIR_FLAGS & ~os.O_NOFOLLOW
        return cls(os.open(path, flags))

    @property
    def depth(self) -> int:
        return len(self._above)

    def relpath(self, name: bytes = b"") -> bytes:
        """The path from the walk's start to ``name`` here (for messages and hardlinks only)."""
        return b"/".join([n for n, _ in self._above] + ([name] if name else []))

    def down(self, name: bytes) -> None:
        """Into subdirectory ``name``."""
        fd = os.open(name, DIR_FLAGS, dir_fd=self.fd)
        if len(self._above) < self.KEEP_OPEN:
            self._above.append((name, self.fd))
        else:
            try:
                here = identity(os.fstat(self.fd))
            except BaseException:
                os.close(fd)
                raise
            os.close(self.fd)
            self._above.append((name, here))
        self.fd = fd

    def up(self) -> int:
        """Back to the parent; returns the descriptor of the directory left, for the caller to close."""
        parent = self._above[-1][1]
        if isinstance(parent, int):
            fd = parent
        else:
            fd = os.open(b"..", DIR_FLAGS, dir_fd=self.fd)
            if identity(os.fstat(fd)) != parent:
                os.close(fd)
                raise TreeChanged(f"{os.fsdecode(self.relpath())}: moved while being read")
        self._above.pop()
        left, self.fd = self.fd, fd
        return left

    def close(self) -> None:
        """Close what the cursor holds (also after a walk stopped half-way down)."""
        for _, kept in self._above:
            if isinstance(kept, int):
                os.close(kept)
        self._above.clear()
        os.close(self.fd)


class Subdir(NamedTuple, Generic[T]):
    """A directory to visit: its name and the caller's state for it."""

    name: bytes
    state: T


def walk_tree(
    cursor: DirCursor,
    root: T,
    enter: Callable[[T], Sequence[Subdir[T]]],
    leave: Callable[[T, int], None],
) -> None:
    """Depth first, iteratively, from the cursor's directory with state ``root``.

    ``enter(state)`` runs with the cursor on a directory and returns its subdirectories to visit,
    in order. ``leave(state, fd)`` runs once they are all done, with ``fd`` open on that directory
    and the cursor already back on its parent (so a directory's own mode may be set without
    losing the way back up); for the root, ``fd`` is the cursor's.
    """
    stack: list[tuple[T, list[Subdir[T]]]] = [(root, list(reversed(enter(root))))]
    while True:
        state, todo = stack[-1]
        if todo:
            sub = todo.pop()
            cursor.down(sub.name)
            stack.append((sub.state, list(reversed(enter(sub.state)))))
            continue
        stack.pop()
        if not stack:
            leave(state, cursor.fd)
            return
        fd = cursor.up()
        try:
            leave(state, fd)
        finally:
            os.close(fd)


def open_below(root: bytes, parts: Sequence[bytes]) -> int:
    """The directory ``root/parts...``, opened one component at a time without following symlinks."""
    fd = os.open(root, DIR_FLAGS)
    for part in parts:
        try:
            below = os.open(part, DIR_FLAGS, dir_fd=fd)
        finally:
            os.close(fd)
        fd = below
    return fd
