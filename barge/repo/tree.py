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

from barge.errors import CorruptionDetected, InvalidInput
from barge.repo.objects import MAX_TREE, TIME_NS_LIMIT, Fields, decode_base64, parse_hex_id, parse_json

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


def _put_bytes(doc: dict[str, Any], key: str, value: bytes) -> None:
    try:
        doc[key] = value.decode("utf-8")
    except UnicodeDecodeError:
        doc[f"{key}_b64"] = base64.b64encode(value).decode()


def _get_bytes(read: Fields, key: str) -> bytes | None:
    """The raw bytes stored under ``key`` (a string) or ``key_b64`` (base64), if either is there."""
    if read.has(key):
        try:
            return read.text(key).encode("utf-8")
        except UnicodeEncodeError:
            raise read.wrong(key, "valid UTF-8 text") from None
    if read.has(f"{key}_b64"):
        return read.base64(f"{key}_b64", max_length=MAX_TREE)
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


_U32 = 2**32 - 1
_U64 = 2**64 - 1
_I64 = 2**63
# The whole-number fields of a node: (name, lowest, highest, value when absent; None: required).
_NUMBERS = (
    ("mode", 0, 0o7777, None),
    ("uid", 0, _U32, None),
    ("gid", 0, _U32, None),
    ("mtime_ns", -TIME_NS_LIMIT, TIME_NS_LIMIT, None),
    ("size", 0, _I64 - 1, 0),
    ("rdev", 0, _U64, 0),
    ("device", 0, _U64, 0),
    ("inode", 0, _U64, 0),
    ("nlink", 0, _U64, 1),
    ("ctime_ns", -TIME_NS_LIMIT, TIME_NS_LIMIT, 0),
)


def make_node(fields: dict[str, Any]) -> Node:
    """A Node from every one of its fields, checked already: what ``Node(**fields)`` builds, at a
    fifth of the cost. A frozen dataclass's ``__init__`` sets each of the 16 fields through
    ``object.__setattr__``, which was half the time of decoding a tree, and trees are decoded for
    every directory of every re-backup (and their nodes built again for every unchanged file)."""
    node = object.__new__(Node)
    node.__dict__.update(fields)
    return node


def _node_from_json(document: object, what: str) -> Node:
    """One node, every field checked: a crafted tree must not reach chmod, utime or a read with a
    value the kernel or Python would choke on. (Trees are read for every directory of every
    backup and restore: the common case is kept to a dictionary lookup and a compare per field,
    and the error messages are built only when there is an error.)"""
    if type(document) is not dict:
        raise CorruptionDetected(f"{what}: not a JSON object")
    get = document.get
    name = get("name")
    if type(name) is str and name.isascii():
        name = name.encode()
    else:
        name = _get_bytes(Fields(document, what), "name")
        if name is None:
            raise Fields(document, what).wrong("name", "present (as name or name_b64)")
    kind = get("kind")
    if kind not in KINDS:
        raise _entry(document, what, name).wrong("kind", f"one of {', '.join(KINDS)}")
    fields: dict[str, Any] = {"name": name, "kind": kind}
    for field, low, high, default in _NUMBERS:
        value = get(field, default)
        if type(value) is not int or not low <= value <= high:  # bool is not int here
            raise _entry(document, what, name).wrong(field, f"a whole number from {low} to {high}")
        fields[field] = value
    content = _extents(get("content", ()))
    if isinstance(content, str):
        raise _entry(document, what, name).wrong("content", content)
    fields["content"] = content
    subtree = get("subtree")
    fields["subtree"] = _entry(document, what, name).hex_id("subtree") if subtree is not None else None
    has_target = "target" in document or "target_b64" in document
    fields["target"] = _get_bytes(_entry(document, what, name), "target") if has_target else None
    fields["xattrs"] = _xattrs(_entry(document, what, name)) if "xattrs" in document else ()
    return make_node(fields)


def _entry(document: dict[str, Any], what: str, name: bytes) -> Fields:
    """The checked access to one node's fields, its errors naming the entry."""
    return Fields(document, f"{what} entry {name[:100]!r}")


def _extents(value: object) -> tuple[Extent, ...] | str:
    """The extents of a node's ``content``, or what they should have been (the error's words)."""
    if type(value) is not list and value != ():
        return "a list of [blob ID or null, length]"
    extents: list[Extent] = []
    total = 0
    for extent in value:
        if type(extent) is not list or len(extent) != 2:
            return "a list of [blob ID or null, length]"
        blob, length = extent
        blob_id = parse_hex_id(blob) if blob is not None else None
        if (blob is not None and blob_id is None) or type(length) is not int:
            return "a list of [blob ID or null, length]"
        total += length
        if length < 0 or total >= _I64:
            return f"a list of extents with lengths from 0 summing below {_I64}"
        extents.append((blob_id, length))
    return tuple(extents)


def _xattrs(read: Fields) -> tuple[tuple[bytes, bytes], ...]:
    pairs = []
    for pair in read.list("xattrs", default=()):
        parts = pair if isinstance(pair, list) and len(pair) == 2 else [None, None]
        key, value = (decode_base64(part) if isinstance(part, str) else None for part in parts)
        if not key or value is None:
            raise read.wrong("xattrs", "a list of [base64 name, base64 value]")
        pairs.append((key, value))
    return tuple(pairs)


def encode_tree(nodes: list[Node]) -> bytes:
    ordered = sorted(nodes, key=lambda n: n.name)
    for before, after in itertools.pairwise(ordered):
        if before.name == after.name:
            raise ValueError(f"duplicate name {before.name!r} in one directory")
    encoded = json.dumps(
        {"version": TREE_VERSION, "nodes": [_node_to_json(n) for n in ordered]}, separators=(",", ":")
    ).encode()
    if len(encoded) > MAX_TREE:
        raise InvalidInput(
            f"a directory of {len(nodes):,} entries is too large to store ({len(encoded):,} bytes of "
            f"listing; a repository holds at most {MAX_TREE:,} per directory)"
        )
    return encoded


def decode_tree(data: bytes, what: str = "tree") -> list[Node]:
    """The nodes of a tree blob (``what`` names it in errors); CorruptionDetected for anything
    that is not a tree this version wrote: wrong types, out-of-range values, repeated names."""
    read = Fields(parse_json(data, what), what)
    version = read.integer("version")
    if version != TREE_VERSION:
        raise CorruptionDetected(f"{what}: tree version {version} is not supported")
    nodes = [_node_from_json(node, what) for node in read.list("nodes")]
    if len({node.name for node in nodes}) != len(nodes):
        raise CorruptionDetected(f"{what}: duplicate name in one directory")
    return nodes
