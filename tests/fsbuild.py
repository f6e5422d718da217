"""Building awkward source trees for round-trip tests."""

from __future__ import annotations

import contextlib
import os
import stat
import struct
import subprocess
from pathlib import Path

MIB = 1024 * 1024
# security.capability, VFS_CAP_REVISION_2 with the effective flag: cap_net_raw permitted
NET_RAW_CAPABILITY = struct.pack("<IIIII", 0x02000001, 1 << 13, 0, 0, 0)
NULL_DEVICE = os.makedev(1, 3)


def write(path: Path, data: bytes, mtime_ns: int | None = None) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    if mtime_ns is not None:
        os.utime(path, ns=(mtime_ns, mtime_ns))
    return path


def sparse_file(path: Path, size: int, data_at: dict[int, bytes]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("wb") as out:
        out.truncate(size)
        for offset, data in data_at.items():
            out.seek(offset)
            out.write(data)
    return path


def awkward_tree(root: Path) -> Path:
    """Every kind of entry a filesystem backup must carry across."""
    root.mkdir(parents=True, exist_ok=True)
    write(root / "plain.txt", b"hello\n", 1_600_000_000_123_456_789)
    write(root / "empty", b"")
    (root / "empty-dir").mkdir()
    write(root / "deep" / "er" / "est" / "file.bin", os.urandom(300_000))
    os.mkdir(os.path.join(os.fsencode(root), b"latin1-\xe9\xff-dir"))
    with open(os.path.join(os.fsencode(root), b"latin1-\xe9\xff-dir", b"\x80\x81name"), "wb") as out:
        out.write(b"non-utf8 names survive")
    write(root / "unicode-äöü-😀.txt", "ünïcödé".encode())
    write(root / "compressible.log", b"the same line again\n" * 50_000)
    write(root / "exec.sh", b"#!/bin/sh\necho hi\n")
    os.chmod(root / "exec.sh", 0o750)
    write(root / "private", b"secret")
    os.chmod(root / "private", 0o600)
    os.symlink("plain.txt", root / "link-to-plain")
    os.symlink("/etc/passwd", root / "absolute-link")
    os.symlink("../../outside", root / "dangling-relative-link")
    write(root / "hard" / "a", b"linked content")
    os.link(root / "hard" / "a", root / "hard" / "b")
    os.link(root / "hard" / "a", root / "other-hardlink")
    sparse_file(root / "sparse.img", 64 * MIB, {0: b"head", 20 * MIB: os.urandom(MIB), 64 * MIB - 4: b"tail"})
    sparse_file(root / "all-hole.img", 8 * MIB, {})
    os.mkfifo(root / "a-fifo")
    with contextlib.suppress(OSError):  # no user xattrs here: the capture sees none on either side
        os.setxattr(root / "plain.txt", "user.barge.test", b"xattr value")
    os.chmod(root / "empty-dir", 0o751)
    os.utime(root / "empty-dir", ns=(1_500_000_000_000_000_000, 1_500_000_000_000_000_000))
    return root


def privileged_volume(root: Path) -> Path:
    """What a tenant with root in its pod can leave in a volume (run as root to build it)."""
    write(root / "bin" / "su", b"\x7fELF pretend")
    os.chown(root / "bin" / "su", 0, 0)
    os.chmod(root / "bin" / "su", 0o4755)
    write(root / "bin" / "wall", b"setgid tty")
    os.chmod(root / "bin" / "wall", 0o2755)
    write(root / "bin" / "ping", b"capable")
    os.setxattr(root / "bin" / "ping", "security.capability", NET_RAW_CAPABILITY)
    os.setxattr(root / "bin" / "ping", "user.note", b"kept")
    os.mknod(root / "null", 0o666 | stat.S_IFCHR, NULL_DEVICE)
    os.mknod(root / "disk", 0o660 | stat.S_IFBLK, os.makedev(7, 200))
    os.mkfifo(root / "pipe", 0o644)
    (root / "shared").mkdir()
    os.chmod(root / "shared", 0o2775)  # a directory's setgid only passes its group on
    os.setxattr(root / "shared", "trusted.overlay.opaque", b"y")
    write(root / "plain", b"ordinary")
    return root

def nested_tree(root: Path, levels: int, name: bytes = b"d") -> Path:
    """``levels`` directories each inside the last, all called ``name``, built through directory
    descriptors (the full paths may exceed PATH_MAX). Every level holds a small file; every 100th
    level a hardlink to the first level's file, a sparse file, a symlink, a fifo, an xattr, odd
    modes and times; the innermost directory is empty but for its file."""
    root.mkdir(parents=True)
    top = os.open(root, os.O_RDONLY | os.O_DIRECTORY)
    fd = os.dup(top)
    try:
        for level in range(levels):
            _level_entries(top, fd, level)
            os.mkdir(name, 0o750 if level % 7 else 0o700, dir_fd=fd)
            below = os.open(name, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW, dir_fd=fd)
            os.close(fd)
            fd = below
        _level_entries(top, fd, levels)
        os.utime(fd, ns=(1_400_000_000_000_000_000, 1_400_000_000_000_000_000))
    finally:
        os.close(fd)
        os.close(top)
    return root


def _level_entries(top: int, fd: int, level: int) -> None:
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL
    with open(os.open(b"f", flags, 0o640, dir_fd=fd), "wb") as out:
        out.write(b"level %d\n" % level)
    if level % 100:
        return
    if level:
        os.link(b"f", b"hardlink", src_dir_fd=top, dst_dir_fd=fd)
    with open(os.open(b"sparse", flags, 0o600, dir_fd=fd), "wb") as out:
        out.truncate(3 * MIB)
        out.seek(2 * MIB)
        out.write(os.urandom(70_000))
    os.symlink(b"f", b"link", dir_fd=fd)
    os.mkfifo(b"fifo", 0o620, dir_fd=fd)
    with contextlib.suppress(OSError):  # no user xattrs here: the capture sees none on either side
        os.setxattr(f"/proc/self/fd/{fd}/f", "user.level", b"%d" % level)
        if level:  # not the root's: a snapshot keeps only its mode, owner and mtime
            os.setxattr(fd, "user.dir", b"%d" % level)
    os.chmod(b"f", 0o604, dir_fd=fd)
    os.utime(b"f", ns=(1_500_000_000_000_000_000 + level,) * 2, dir_fd=fd)
    os.utime(b"link", ns=(level, level), dir_fd=fd, follow_symlinks=False)


def remove_tree(path: Path) -> None:
    """``rm -rf``: unlike shutil.rmtree (pytest's clean-up too), it removes trees of any depth."""
    subprocess.run(["rm", "-rf", "--", str(path)], check=True)
