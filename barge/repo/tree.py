"""Directory trees as blobs (pure): one tree blob per directory, nodes sorted by raw name bytes.

Names and symlink targets are raw bytes (POSIX names need not be UTF-8): stored as a JSON string
when they are valid UTF-8, else base64 under a ``*_b64`` key, so a second reader needs nothing
Python-specific. Identical directories encode identically and so deduplicate.
"""

from __future__ import annotations

import base64
import itertools
import json
from dataclasses import dataclass
from typing import Any

from barge.errors import CorruptionDetected

KINDS = ("file", "dir", "symlink", "chardev", "blockdev", "fifo", "socket")
TREE_VERSION = 1

# One stretch of a file: (blob id, length) for data, (None, length) for a hole.
Extent = tuple[bytes | None, int]


@dataclass(frozen=True)
class Node:
    name: bytes
    kind: str
    mode: int = 0o644  # permission bits incl. setuid/setgid/sticky (st_mode & 0o7777)
    uid: int = 0
    gid: int = 0
    mtime_ns: int = 0
    size: int = 0
    content: tuple[Extent, ...] = ()
    subtree: bytes | None = None  # dirs: ID of the child tree blob
    target: bytes | None = None  # symlinks
    rdev: int = 0  # device nodes
    xattrs: tuple[tuple[bytes, bytes], ...] = ()
    # Identity of the source inode: hardlink detection (nlink > 1) and change detection only.
    device: int = 0
    inode: int = 0
    nlink: int = 1
    ctime_ns: int = 0

    def unchanged_since(self, older: Node) -> bool:
        """True when metadata says the file's content cannot have changed since ``older``."""
        return (
            self.kind == older.kind == "file"
            and self.size == older.size
            and self.mtime_ns == older.mtime_ns
            and self.ctime_ns == older.ctime_ns
            and self.inode == older.inode
        )


def _put_bytes(doc: dict[str, Any], key: str, value: bytes) -> None:
    try:
        doc[key] = value.decode("utf-8")
    except UnicodeDecodeError:
        doc[f"{key}_b64"] = base64.b64encode(value).decode()


def _get_bytes(doc: dict[str, Any], key: str) -> bytes | None:
    if key in doc:
        return str(doc[key]).encode("utf-8")
    if f"{key}_b64" in doc:
        return base64.b64decode(doc[f"{key}_b64"], validate=True)
    return None


def _node_to_json(node: Node) -> dict[str, Any]:
    doc: dict[str, Any] = {"kind": node.kind, "mode": node.mode, "uid": node.uid, "gid": node.gid}
    _put_bytes(doc, "name", node.name)
    doc["mtime_ns"] = node.mtime_ns
    if node.kind == "file":
        doc["size"] = node.size
        doc["content"] = [[blob.hex() if blob else None, length] for blob, length in node.content]
    if node.subtree is not None:
        doc["subtree"] = node.subtree.hex()
    if node.target is not None:
        _put_bytes(doc, "target", node.target)
    if node.rdev:
        doc["rdev"] = node.rdev
    if node.xattrs:
        doc["xattrs"] = [[base64.b64encode(k).decode(), base64.b64encode(v).decode()] for k, v in node.xattrs]
    doc.update(device=node.device, inode=node.inode, nlink=node.nlink, ctime_ns=node.ctime_ns)
    return doc


def _node_from_json(doc: dict[str, Any]) -> Node:
    name = _get_bytes(doc, "name")
    if name is None or doc.get("kind") not in KINDS:
        raise CorruptionDetected(f"tree node without a valid name or kind: {doc!r:.200}")
    return Node(
        name=name,
        kind=doc["kind"],
        mode=int(doc["mode"]),
        uid=int(doc["uid"]),
        gid=int(doc["gid"]),
        mtime_ns=int(doc["mtime_ns"]),
        size=int(doc.get("size", 0)),
        content=tuple((bytes.fromhex(b) if b else None, int(n)) for b, n in doc.get("content", ())),
        subtree=bytes.fromhex(doc["subtree"]) if "subtree" in doc else None,
        target=_get_bytes(doc, "target"),
        rdev=int(doc.get("rdev", 0)),
        xattrs=tuple((base64.b64decode(k), base64.b64decode(v)) for k, v in doc.get("xattrs", ())),
        device=int(doc.get("device", 0)),
        inode=int(doc.get("inode", 0)),
        nlink=int(doc.get("nlink", 1)),
        ctime_ns=int(doc.get("ctime_ns", 0)),
    )


def encode_tree(nodes: list[Node]) -> bytes:
    ordered = sorted(nodes, key=lambda n: n.name)
    for before, after in itertools.pairwise(ordered):
        if before.name == after.name:
            raise ValueError(f"duplicate name {before.name!r} in one directory")
    return json.dumps(
        {"version": TREE_VERSION, "nodes": [_node_to_json(n) for n in ordered]}, separators=(",", ":")
    ).encode()


def decode_tree(data: bytes) -> list[Node]:
    try:
        doc = json.loads(data)
        if doc.get("version") != TREE_VERSION:
            raise CorruptionDetected(f"tree version {doc.get('version')!r} is not supported")
        return [_node_from_json(n) for n in doc["nodes"]]
    except (ValueError, KeyError, TypeError) as err:
        raise CorruptionDetected(f"tree blob is malformed: {err}") from err
