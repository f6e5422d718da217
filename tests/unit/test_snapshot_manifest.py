"""The typed snapshot manifest: what backups write round-trips, and a damaged or crafted manifest
is refused with a message that names the field, never a KeyError deep in a restore."""

from __future__ import annotations

import json
from typing import Any

import pytest

from barge.errors import CorruptionDetected
from barge.repo.snapshot import RootMetadata, Snapshot, SnapshotKind, SnapshotSummary

FS = Snapshot(
    kind=SnapshotKind.FILESYSTEM,
    time="2026-03-01T12:00:00+00:00",
    hostname="node-a",
    paths=("/data",),
    tree=bytes(range(32)),
    summary=SnapshotSummary(files=3, dirs=1, bytes_total=100, bytes_read=100, bytes_new=60),
    tags={"velero.io/backup-name": "nightly"},
    parent=None,
    root=RootMetadata(mode=0o40755, uid=1000, gid=1000, mtime_ns=1_700_000_000_000_000_000),
)


def stored(snapshot: Snapshot) -> dict[str, Any]:
    """As the repository stores it: through JSON."""
    document: dict[str, Any] = json.loads(json.dumps(snapshot.to_json()))
    return document


def test_a_manifest_round_trips_through_json() -> None:
    assert Snapshot.from_json(stored(FS), "snapshot x") == FS
    empty = Snapshot(SnapshotKind.FILESYSTEM, "t", "h", ("/e",), None, SnapshotSummary(), root=FS.root)
    assert Snapshot.from_json(stored(empty), "snapshot x") == empty
    block = Snapshot(SnapshotKind.BLOCK, "t", "h", ("/dev/b",), bytes(32), SnapshotSummary(files=1))
    assert "root" not in block.to_json()
    assert Snapshot.from_json(stored(block), "snapshot x") == block


def test_the_stored_form_is_the_documented_one() -> None:
    document = FS.to_json()
    assert document["version"] == 1
    assert document["kind"] == "fs"
    assert document["tree"] == bytes(range(32)).hex()
    counts = ("files", "dirs", "bytes_total", "bytes_read", "bytes_new", "bytes_stored", "files_unchanged")
    assert set(document["summary"]) == {*counts, "skipped"}
    assert document["root"] == {
        "mode": 0o40755,
        "uid": 1000,
        "gid": 1000,
        "mtime_ns": 1_700_000_000_000_000_000,
    }


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (lambda d: d.pop("tree"), None),  # a missing tree is an empty snapshot: allowed
        (lambda d: d.update(version=2), "manifest version 2 is not 1"),
        (lambda d: d.update(kind="tape"), "unknown snapshot kind 'tape'"),
        (lambda d: d.pop("time"), "field 'time' is missing"),
        (lambda d: d.update(paths="/data"), "field 'paths' is not a list of strings"),
        (lambda d: d.update(tree="zz" * 32), "tree ID 'zz"),
        (lambda d: d.update(tree="00" * 31), "tree ID has 31 bytes, not 32"),
        (lambda d: d.update(tree=7), "field 'tree' is not a string or null"),
        (lambda d: d["summary"].update(bytes_total=-1), "summary: field 'bytes_total' is not a whole number"),
        (lambda d: d["summary"].update(files=True), "summary: field 'files' is not a whole number"),
        (lambda d: d["summary"].pop("dirs"), "summary: field 'dirs' is missing"),
        (lambda d: d.update(summary=[]), "summary: not a JSON object"),
        (lambda d: d["root"].update(mode="0755"), "root: field 'mode' is not a whole number"),
        (lambda d: d.update(tags={"a": 1}), "field 'tags' is not an object of strings"),
        (lambda d: d.update(parent=["x"]), "field 'parent' is not a string or null"),
    ],
)
def test_a_damaged_or_crafted_manifest_is_refused_naming_the_field(change: Any, message: str | None) -> None:
    document = stored(FS)
    change(document)
    if message is None:
        assert Snapshot.from_json(document, "snapshot 1a2b").tree is None
        return
    with pytest.raises(CorruptionDetected, match=f"^snapshot 1a2b.*{message}"):
        Snapshot.from_json(document, "snapshot 1a2b")


@pytest.mark.parametrize("document", [None, [], "fs", 3])
def test_a_manifest_that_is_not_an_object_is_refused(document: object) -> None:
    with pytest.raises(CorruptionDetected, match="snapshot 1a2b: not a JSON object"):
        Snapshot.from_json(document, "snapshot 1a2b")
