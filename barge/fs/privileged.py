"""Which privileges recorded in a snapshot a restore recreates: one policy applied to each entry.

A snapshot holds whatever a tenant's volume held, and the agent restores as root. A device node
(a disk's numbers, mode 0666), a setuid-root binary or a ``security.capability`` attribute would
come back as real privilege for the next pod that mounts the volume (or the node). Velero's own
mover never recreates devices or extended attributes (Kopia does not back them up); it does
restore setuid/setgid bits. Barge withholds all of them unless the restore asks
(``barge restore --restore-privileged``, DataDownload ``barge.io/restore-privileged: "true"``):

* character and block device nodes are not created;
* setuid and setgid bits are cleared on everything but directories (a directory's setgid only
  makes new entries inherit its group); the file itself is restored;
* ``security.*`` and ``trusted.*`` extended attributes (file capabilities, SELinux labels, IMA,
  overlayfs' ``trusted.overlay.*``) are not set; ``user.*`` and ACLs (``system.*``) are.

FIFOs and ownership grant nothing and are always restored. Every withheld item is counted; the
first few are named in the restore's warnings.
"""

from __future__ import annotations

import os
import stat
import threading
from collections.abc import Callable
from dataclasses import dataclass, replace

from barge.repo.tree import Node

DEVICE_KINDS = frozenset({"chardev", "blockdev"})
SET_ID_BITS = stat.S_ISUID | stat.S_ISGID
PRIVILEGED_XATTR_PREFIXES = (b"security.", b"trusted.")
LISTED = 10  # withheld items named in warnings; the counts cover the rest


@dataclass(frozen=True)
class Withheld:
    """What a restore did not recreate because it was not asked to."""

    device_nodes: int = 0
    setid_files: int = 0
    xattrs: int = 0

    def __bool__(self) -> bool:
        return bool(self.device_nodes or self.setid_files or self.xattrs)

    def summary(self) -> str:
        """One clause per kind withheld, e.g. '2 device node(s) not created; ...'; '' if none."""
        parts = []
        if self.device_nodes:
            parts.append(f"{self.device_nodes} device node(s) not created")
        if self.setid_files:
            parts.append(f"{self.setid_files} file(s) restored without their setuid/setgid bits")
        if self.xattrs:
            parts.append(f"{self.xattrs} security.*/trusted.* extended attribute(s) not set")
        return "; ".join(parts)


def is_privileged_xattr(key: bytes) -> bool:
    return key.startswith(PRIVILEGED_XATTR_PREFIXES)


class PrivilegePolicy:
    """Applied to every entry before it is created: ``admit`` returns the node to create (the
    privileges it may keep) or None to skip it, and counts what it withheld."""

    def __init__(self, restore_privileged: bool = False, warn: Callable[[str], None] = lambda _: None):
        self.restore_privileged = restore_privileged
        self._warn = warn
        self._lock = threading.Lock()
        self._counts = {"device_nodes": 0, "setid_files": 0, "xattrs": 0}

    def admit(self, node: Node, rel: bytes | Callable[[], bytes]) -> Node | None:
        """``rel``: the entry's path, or what builds it (deep in a tree, only worth it for a message)."""
        if self.restore_privileged:
            return node

        def path() -> str:
            return os.fsdecode(rel() if callable(rel) else rel)

        if node.kind in DEVICE_KINDS:
            major, minor = os.major(node.rdev), os.minor(node.rdev)
            self._withhold("device_nodes", f"{path()}: {node.kind} {major}:{minor} not created")
            return None
        mode = node.mode
        if node.kind != "dir" and mode & SET_ID_BITS:
            mode &= ~SET_ID_BITS
            self._withhold("setid_files", f"{path()}: mode {node.mode:04o} restored as {mode:04o}")
        xattrs = tuple((key, value) for key, value in node.xattrs if not is_privileged_xattr(key))
        for key, _ in node.xattrs:
            if is_privileged_xattr(key):
                self._withhold("xattrs", f"{path()}: extended attribute {os.fsdecode(key)} not set")
        if mode == node.mode and len(xattrs) == len(node.xattrs):
            return node
        return replace(node, mode=mode, xattrs=xattrs)

    def keeps_xattr(self, key: bytes) -> bool:
        """For passes that apply a node's attributes again without counting (directories)."""
        return self.restore_privileged or not is_privileged_xattr(key)

    def withheld(self) -> Withheld:
        with self._lock:
            return Withheld(**self._counts)

    def _withhold(self, kind: str, message: str) -> None:
        with self._lock:
            self._counts[kind] += 1
            listed = sum(self._counts.values()) <= LISTED
        if listed:
            self._warn(f"withheld: {message}")
