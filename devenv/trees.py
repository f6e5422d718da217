"""Trees for demos and tests: a sample volume generator, and capturing a tree to prove round trips."""

from __future__ import annotations

import hashlib
import os
import stat
from pathlib import Path
from typing import Any


def capture(root: Path, *, times: bool = True) -> dict[bytes, dict[str, Any]]:
    """Everything a restore must preserve, keyed by relative path (raw bytes).

    Iterative and relative to directory descriptors (one open per level of depth), so a tree
    nested deeper than the recursion limit, or whose paths exceed PATH_MAX, is captured too.
    """
    state: dict[bytes, dict[str, Any]] = {}
    inode_groups: dict[tuple[int, int], bytes] = {}
    levels: list[tuple[int, bytes, list[bytes]]] = []  # (fd, relative path + b"/", subdirs to visit)

    def enter(fd: int, prefix: bytes) -> None:
        subdirs: list[bytes] = []
        levels.append((fd, prefix, subdirs))  # first: closed by the caller whatever happens next
        for name in sorted(os.fsencode(n) for n in os.listdir(fd)):
            st = os.stat(name, dir_fd=fd, follow_symlinks=False)
            state[prefix + name] = _entry(fd, name, st, prefix + name, inode_groups=inode_groups, times=times)
            if stat.S_ISDIR(st.st_mode):
                subdirs.append(name)
        subdirs.reverse()

    try:
        enter(os.open(root, os.O_RDONLY | os.O_DIRECTORY), b"")
        while levels:
            fd, prefix, subdirs = levels[-1]
            if not subdirs:
                os.close(levels.pop()[0])
                continue
            name = subdirs.pop()
            below = os.open(name, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW, dir_fd=fd)
            enter(below, prefix + name + b"/")
    finally:
        for fd, _, _ in levels:
            os.close(fd)
    return state


def _entry(
    fd: int,
    name: bytes,
    st: os.stat_result,
    rel: bytes,
    *,
    inode_groups: dict[tuple[int, int], bytes],
    times: bool,
) -> dict[str, Any]:
    entry: dict[str, Any] = {"type": stat.S_IFMT(st.st_mode), "mode": stat.S_IMODE(st.st_mode)}
    if times:
        entry["mtime_ns"] = st.st_mtime_ns
    if stat.S_ISREG(st.st_mode):
        entry["size"] = st.st_size
        with open(os.open(name, os.O_RDONLY | os.O_NOFOLLOW, dir_fd=fd), "rb") as src:
            entry["sha256"] = hashlib.sha256(src.read()).hexdigest()
        entry["sparse"] = st.st_blocks * 512 < st.st_size - 1024 * 1024
        if st.st_nlink > 1:
            entry["linked_to"] = inode_groups.setdefault((st.st_dev, st.st_ino), rel)
    elif stat.S_ISLNK(st.st_mode):
        entry["target"] = os.readlink(name, dir_fd=fd)
    path = b"/proc/self/fd/%d/%s" % (fd, name)  # short, however deep the entry
    try:
        entry["xattrs"] = {
            n: os.getxattr(path, n, follow_symlinks=False) for n in os.listxattr(path, follow_symlinks=False)
        }
    except OSError:
        entry["xattrs"] = {}
    return entry


def sample_volume(root: Path, *, seed: int = 42, dirs: int = 20, files_per_dir: int = 25) -> Path:
    """A volume worth backing up: mixed sizes, half-compressible data, a sparse image, a hardlink,
    a symlink and a non-UTF-8 name. Deterministic for a given ``seed``."""
    import random  # noqa: PLC0415 - only the generator needs it

    rng = random.Random(seed)  # noqa: S311 - test data, not secrets
    for d in range(dirs):
        folder = root / "app" / f"dir{d:02d}"
        folder.mkdir(parents=True, exist_ok=True)
        for f in range(files_per_dir):
            size = rng.choice([0, 100, 4096, 70_000, 300_000])
            (folder / f"file{f:03d}.dat").write_bytes(rng.randbytes(size // 2) + b"log line\n" * (size // 18))
    with (root / "disk.img").open("wb") as image:
        image.truncate(64 * 2**20)
        image.seek(20 * 2**20)
        image.write(rng.randbytes(2 * 2**20))
    os.link(root / "app" / "dir00" / "file000.dat", root / "hardlink.dat")
    with open(os.path.join(os.fsencode(root), b"caf\xe9-latin1.txt"), "wb") as odd:
        odd.write(b"non-UTF-8 name\n")
    os.symlink("app/dir01", root / "shortcut")
    return root
