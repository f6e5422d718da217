"""Hypothesis strategies for whole source trees, and writing them to disk (with tests/fsbuild.py).

A generated tree exercises everything a filesystem backup must carry across bit-exact: contents
(empty, small, repetitive), permission bits, nanosecond mtimes of files, directories and
symlinks, hardlinks, symlinks with arbitrary byte targets, sparse files, non-UTF-8 names and
empty directories.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Union

from hypothesis import strategies as st

from tests.fsbuild import MIB, sparse_file


@dataclass(frozen=True)
class File:
    data: bytes
    mode: int
    mtime_ns: int


@dataclass(frozen=True)
class Sparse:
    size: int
    islands: tuple[tuple[int, bytes], ...]  # (offset, data): everything else is a hole
    mtime_ns: int


@dataclass(frozen=True)
class Symlink:
    target: bytes
    mtime_ns: int


@dataclass(frozen=True)
class Hardlink:
    to: int  # which earlier regular file (modulo their number); an empty file if there is none


@dataclass(frozen=True)
class Dir:
    entries: dict[bytes, Entry]
    mode: int
    mtime_ns: int


Entry = Union[File, Sparse, Symlink, Hardlink, Dir]  # noqa: UP007 - a runtime alias of forward refs

names = st.binary(min_size=1, max_size=12).filter(
    lambda b: b not in (b".", b"..") and b"/" not in b and b"\0" not in b
)
mtimes = st.integers(min_value=0, max_value=2**34 * 10**9)
contents = st.one_of(
    st.just(b""),
    st.binary(max_size=3000),
    st.builds(lambda n, b: b * n, st.integers(1, 40_000), st.binary(min_size=1, max_size=3)),
)
files = st.builds(File, contents, st.integers(0o400, 0o777), mtimes)
sparse_files = st.builds(
    Sparse,
    st.integers(2 * MIB, 6 * MIB),
    st.lists(st.tuples(st.integers(0, 2 * MIB), st.binary(min_size=1, max_size=5000)), max_size=3).map(tuple),
    mtimes,
)
symlinks = st.builds(Symlink, st.binary(min_size=1, max_size=40).filter(lambda b: b"\0" not in b), mtimes)
hardlinks = st.builds(Hardlink, st.integers(0, 20))
leaves = st.one_of(files, files, symlinks, hardlinks, sparse_files)


def _dirs(children: st.SearchStrategy[Entry]) -> st.SearchStrategy[Dir]:
    return st.builds(Dir, st.dictionaries(names, children, max_size=5), st.integers(0o700, 0o777), mtimes)


def trees(max_leaves: int = 20) -> st.SearchStrategy[Dir]:
    """A root directory; ``max_leaves`` bounds the size (sparse files count like any other leaf)."""
    return _dirs(st.recursive(leaves, _dirs, max_leaves=max_leaves))


def materialize(root: bytes, tree: Dir) -> None:
    """Write ``tree`` at ``root`` (which must not exist), then fix every time bottom-up."""
    _write_dir(root, tree, [])


def _write_dir(path: bytes, tree: Dir, regular_files: list[bytes]) -> None:
    os.mkdir(path)
    for name, entry in tree.entries.items():
        _write_entry(os.path.join(path, name), entry, regular_files)
    os.chmod(path, tree.mode)
    os.utime(path, ns=(tree.mtime_ns, tree.mtime_ns))


def _write_entry(path: bytes, entry: Entry, regular_files: list[bytes]) -> None:
    if isinstance(entry, Dir):
        _write_dir(path, entry, regular_files)
    elif isinstance(entry, File):
        with open(path, "wb") as out:
            out.write(entry.data)
        os.chmod(path, entry.mode)
        os.utime(path, ns=(entry.mtime_ns, entry.mtime_ns))
        regular_files.append(path)
    elif isinstance(entry, Sparse):
        sparse_file(Path(os.fsdecode(path)), entry.size, dict(entry.islands))
        os.utime(path, ns=(entry.mtime_ns, entry.mtime_ns))
        regular_files.append(path)
    elif isinstance(entry, Symlink):
        os.symlink(entry.target, path)
        os.utime(path, ns=(entry.mtime_ns, entry.mtime_ns), follow_symlinks=False)
    elif regular_files:
        os.link(regular_files[entry.to % len(regular_files)], path)
    else:
        _write_entry(path, File(b"", 0o644, 0), regular_files)
