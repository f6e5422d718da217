"""Capturing a directory tree's observable state, to assert bit-exact round trips."""

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
