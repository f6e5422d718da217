"""Trees for demos and tests: a sample volume generator, and capturing a tree to prove round trips."""

from __future__ import annotations

import hashlib
import os
import stat
from pathlib import Path
from typing import Any


def capture(root: Path, *, times: bool = True) -> dict[bytes, dict[str, Any]]:
    """Everything a restore must preserve, keyed by relative path (raw bytes)."""
    base = os.fsencode(root)
    state: dict[bytes, dict[str, Any]] = {}
    inode_groups: dict[tuple[int, int], bytes] = {}
    for dirpath, dirnames, filenames in os.walk(base):
        for name in sorted(dirnames) + sorted(filenames):
            full = os.path.join(dirpath, name)
            rel = os.path.relpath(full, base)
            st = os.lstat(full)
            entry: dict[str, Any] = {"type": stat.S_IFMT(st.st_mode), "mode": stat.S_IMODE(st.st_mode)}
            if times and not stat.S_ISDIR(st.st_mode):
                entry["mtime_ns"] = st.st_mtime_ns
            if stat.S_ISREG(st.st_mode):
                entry["size"] = st.st_size
                with open(full, "rb") as src:
                    entry["sha256"] = hashlib.sha256(src.read()).hexdigest()
                entry["sparse"] = st.st_blocks * 512 < st.st_size - 1024 * 1024
                if st.st_nlink > 1:
                    entry["linked_to"] = inode_groups.setdefault((st.st_dev, st.st_ino), rel)
            elif stat.S_ISLNK(st.st_mode):
                entry["target"] = os.readlink(full)
            try:
                entry["xattrs"] = {
                    n: os.getxattr(full, n, follow_symlinks=False)
                    for n in os.listxattr(full, follow_symlinks=False)
                }
            except OSError:
                entry["xattrs"] = {}
            state[rel] = entry
    for dirpath, dirnames, _ in os.walk(base):
        for name in dirnames:
            full = os.path.join(dirpath, name)
            if times:
                state[os.path.relpath(full, base)]["mtime_ns"] = os.lstat(full).st_mtime_ns
    return state


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
