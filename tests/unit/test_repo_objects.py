"""Crafted and damaged repository objects (issue 13, "Repository objects are validated"): each is
refused as corruption naming the object (CLI exit 3, one line), before it is read whole where it
is too large, and one bad key, manifest or stray object never blocks the good ones."""

from __future__ import annotations

import hashlib
import json
import struct
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path

import pytest
import zstandard

from barge.cli.main import EXIT_DAMAGED, EXIT_OK, EXIT_USAGE
from barge.errors import CorruptionDetected, InvalidInput
from barge.repo.crypto import KdfParams, MasterKeys, wrap_master_keys
from barge.repo.gc import collect_garbage
from barge.repo.repository import Repository
from barge.repo.session import PENDING_KEY
from barge.repo.tree import decode_tree
from barge.storage.local import LocalDirectoryStore
from devenv.trees import capture
from tests.faultystore import FaultyStore
from tests.repocraft import (
    CliResult,
    Template,
    cli,
    copy_repo,
    make_template,
    manifest_json,
    nested,
    open_repo,
    put_sealed_manifest,
    put_tree_snapshot,
    root_tree,
)

pytestmark = pytest.mark.timeout(120)


@pytest.fixture(scope="module")
def template(tmp_path_factory: pytest.TempPathFactory) -> Template:
    return make_template(tmp_path_factory.mktemp("template"))


@pytest.fixture
def repo_path(template: Template, tmp_path: Path) -> Path:
    return copy_repo(template, tmp_path / "repo")


def assert_damaged(result: CliResult, *names: str) -> None:
    """Exit 3 with one line on stderr that names the object, and no traceback."""
    assert result.code == EXIT_DAMAGED, result
    assert "Traceback" not in result.err
    assert result.err.count("\n") == 1, result.err
    for name in names:
        assert name in result.err, (name, result.err)


def assert_restores(template: Template, repo_path: Path, target: Path) -> None:
    result = cli(repo_path, "restore", template.snapshot_id, str(target))
    assert result.code == EXIT_OK, result
    assert capture(target) == capture(template.source)


def tree_with(repo_path: Path, template: Template, change: Callable[[dict[str, object]], None]) -> str:
    repo = open_repo(repo_path)
    document = root_tree(repo, template.snapshot_id)
    change(document)
    return put_tree_snapshot(repo, template.snapshot_id, json.dumps(document).encode())


def first_node(document: dict[str, object]) -> dict[str, object]:
    nodes = document["nodes"]
    assert isinstance(nodes, list)
    node: dict[str, object] = nodes[0]
    return node


# -- trees ---------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("tree", "message"),
    [
        (b"[]", "not a JSON object"),
        (nested(1200).encode(), "nested"),
        (b'{"version": 1, "nodes": {}}', "'nodes'"),
        (b'{"version": 1, "nodes": [[]]}', "not a JSON object"),
        (b"\xff\xfe", "not JSON"),
        (b'{"version": 1, "nodes": [{"name": "x", "kind": "file", "mode": 1e400}]}', "'mode'"),
    ],
)
def test_a_malformed_tree_blob_fails_the_restore_cleanly(
    tree: bytes, message: str, template: Template, repo_path: Path, tmp_path: Path
) -> None:
    crafted = put_tree_snapshot(open_repo(repo_path), template.snapshot_id, tree)
    result = cli(repo_path, "restore", crafted, str(tmp_path / "out"))
    assert_damaged(result, "tree", message)
    assert_restores(template, repo_path, tmp_path / "good")


@pytest.mark.parametrize(
    ("change", "field"),
    [
        (lambda node: node.update(mode=2**70), "'mode'"),
        (lambda node: node.update(mode=-1), "'mode'"),
        (lambda node: node.update(uid="root"), "'uid'"),
        (lambda node: node.update(mtime_ns=2**100), "'mtime_ns'"),
        (lambda node: node.update(size=-5), "'size'"),
        (lambda node: node.update(content=[["zz", 3]]), "'content'"),
        (lambda node: node.update(content=[[None, 2**70]]), "'content'"),
        (lambda node: node.update(content=7), "'content'"),
        (lambda node: node.update(xattrs=[["!!", "x"]]), "'xattrs'"),
        (lambda node: node.update(kind="door"), "'kind'"),
        (lambda node: node.pop("name"), "'name'"),
        (lambda node: node.update(subtree=[1]), "'subtree'"),
        (lambda node: node.update(nlink=1.5), "'nlink'"),
    ],
)
def test_a_tree_node_field_out_of_range_is_refused_naming_it(
    change: Callable[[dict[str, object]], None],
    field: str,
    template: Template,
    repo_path: Path,
    tmp_path: Path,
) -> None:
    crafted = tree_with(repo_path, template, lambda doc: change(first_node(doc)))
    result = cli(repo_path, "restore", crafted, str(tmp_path / "out"))
    assert_damaged(result, "tree", field)
    check = cli(repo_path, "check")
    assert check.code == EXIT_DAMAGED
    assert field in check.out
    assert_restores(template, repo_path, tmp_path / "good")


def test_duplicate_names_in_a_tree_are_refused(template: Template, repo_path: Path, tmp_path: Path) -> None:
    def duplicate(document: dict[str, object]) -> None:
        nodes = document["nodes"]
        assert isinstance(nodes, list)
        nodes.append(dict(nodes[0]))

    crafted = tree_with(repo_path, template, duplicate)
    assert_damaged(cli(repo_path, "restore", crafted, str(tmp_path / "out")), "duplicate name")


def test_decode_tree_refuses_deep_nesting_without_recursing() -> None:
    with pytest.raises(CorruptionDetected, match="nested"):
        decode_tree(('{"version": 1, "nodes": ' + nested(100_000) + "}").encode())


# -- snapshot manifests --------------------------------------------------------------------------


@pytest.mark.parametrize(
    "craft",
    [
        lambda doc: json.dumps({k: v for k, v in doc.items() if k != "summary"}),
        lambda doc: json.dumps({**doc, "tree": 7}),
        lambda doc: json.dumps(doc).replace('"files": ', '"files": ' + "9" * 5000, 1),
        lambda doc: '{"version": 1, "kind": "fs", "x": ' + nested(1200) + "}",
        lambda doc: "[]",
        lambda doc: "\x00\x01 not json",
    ],
    ids=["no-summary", "tree-7", "huge-int", "nested-1200", "list", "junk"],
)
def test_a_bad_manifest_is_reported_and_the_good_ones_still_list_and_restore(
    craft: Callable[[dict[str, object]], str], template: Template, repo_path: Path, tmp_path: Path
) -> None:
    repo = open_repo(repo_path)
    bad = put_sealed_manifest(repo, craft(manifest_json(repo, template.snapshot_id)).encode())

    listed = cli(repo_path, "snapshots", "--json")
    assert listed.code == EXIT_DAMAGED
    assert [row["id"] for row in json.loads(listed.out)] == [template.snapshot_id]
    assert_damaged(listed, bad[:16])

    assert_damaged(cli(repo_path, "restore", bad, str(tmp_path / "out")), bad[:16])
    check = cli(repo_path, "check")
    assert check.code == EXIT_DAMAGED
    assert bad[:16] in check.out
    assert_restores(template, repo_path, tmp_path / "good")
    backup = cli(repo_path, "backup", str(template.source), "--json")
    assert backup.code == EXIT_OK, backup
    assert json.loads(backup.out)["parent"] == template.snapshot_id


def test_an_empty_filesystem_snapshot_with_tree_null_restores_as_an_empty_directory(
    template: Template, repo_path: Path, tmp_path: Path
) -> None:
    repo = open_repo(repo_path)
    document = manifest_json(repo, template.snapshot_id)
    crafted = put_sealed_manifest(repo, json.dumps({**document, "tree": None}).encode())
    result = cli(repo_path, "restore", crafted, str(tmp_path / "out"))
    assert result.code == EXIT_OK, result
    assert list((tmp_path / "out").iterdir()) == []
    block = put_sealed_manifest(repo, json.dumps({**document, "kind": "block", "tree": None}).encode())
    assert_damaged(cli(repo_path, "restore", "--block", block, str(tmp_path / "dev.img")), "names no tree")


def test_a_huge_manifest_is_refused_before_it_is_read(template: Template, repo_path: Path) -> None:
    name = "ab" * 32
    with (repo_path / "snapshots" / name).open("wb") as out:
        out.truncate(512 * 1024 * 1024)  # sparse: no disk space, but 512 MiB if read whole
    store = FaultyStore(LocalDirectoryStore(repo_path))
    repo = open_repo(repo_path)
    repo.store = store
    with pytest.raises(CorruptionDetected, match=rf"snapshot {name[:16]}.*larger than"):
        repo.load_snapshot(name)
    assert ("get", f"snapshots/{name}") not in store.calls
    assert not [key for op, key in store.calls if op == "get_range" and key.endswith(name)]
    listed = cli(repo_path, "snapshots")
    assert listed.code == EXIT_DAMAGED
    assert template.snapshot_id[:16] in listed.out


def test_forget_removes_a_damaged_manifest_so_gc_can_run_again(template: Template, repo_path: Path) -> None:
    repo = open_repo(repo_path)
    bad = put_sealed_manifest(repo, b"[]")
    assert_damaged(cli(repo_path, "gc"), bad[:16], "forget")
    assert cli(repo_path, "forget", bad).code == EXIT_OK
    assert cli(repo_path, "gc").code == EXIT_OK
    assert cli(repo_path, "check").code == EXIT_OK


# -- stray and junk objects ------------------------------------------------------------------------


@pytest.mark.parametrize(
    "junk",
    [b"not json", b"[]", b'{"packs": "x"}', b'{"packs": ["zz"]}', b'{"packs": [7]}', nested(1200).encode()],
)
def test_junk_gc_pending_blocks_nothing_and_gc_marks_afresh(
    junk: bytes, template: Template, repo_path: Path, tmp_path: Path
) -> None:
    LocalDirectoryStore(repo_path).put(PENDING_KEY, junk, overwrite=True)
    backup = cli(repo_path, "backup", str(template.source), "--json")
    assert backup.code == EXIT_OK, backup
    assert_restores(template, repo_path, tmp_path / "out")
    assert cli(repo_path, "check").code == EXIT_OK
    before = sorted(p.name for p in (repo_path / "data").rglob("*") if p.is_file())
    report = collect_garbage(open_repo(repo_path))
    assert report.phase == "mark"
    assert report.deleted_packs == 0
    assert any("gc/pending" in note for note in report.notes)
    assert sorted(p.name for p in (repo_path / "data").rglob("*") if p.is_file()) == before


@pytest.mark.parametrize(
    "key",
    [
        "data/xx/README",
        "data/README",
        f"data/00/{'ab' * 32}",
        "index/README",
        "snapshots/README",
        "keys/README",
        "snapshots-by-source/README",
        f"snapshots-by-source/{'ab' * 32}/README",
    ],
)
def test_a_stray_object_blocks_no_command_and_check_reports_it(
    key: str, template: Template, repo_path: Path, tmp_path: Path
) -> None:
    LocalDirectoryStore(repo_path).put(key, b"hello")
    backup = cli(repo_path, "backup", str(template.source), "--json")
    assert backup.code == EXIT_OK, backup
    listed = cli(repo_path, "snapshots", "--json")
    assert listed.code == EXIT_OK, listed
    assert len(json.loads(listed.out)) == 2
    assert_restores(template, repo_path, tmp_path / "out")
    check = cli(repo_path, "check")
    assert check.code == EXIT_DAMAGED
    assert f"unexpected object {key}" in check.out
    assert cli(repo_path, "gc").code == EXIT_OK
    assert (repo_path / key).exists()


def test_an_entry_of_a_vanished_manifest_is_a_note_that_fails_no_check_and_gc_removes_it(
    template: Template, repo_path: Path
) -> None:
    store = LocalDirectoryStore(repo_path)
    entries = [info.key for info in store.list("snapshots-by-source/") if template.snapshot_id in info.key]
    assert entries
    store.delete(f"snapshots/{template.snapshot_id}")  # as a Barge without source entries forgets
    check = cli(repo_path, "check")
    assert check.code == EXIT_OK, check
    assert f"note: snapshot {template.snapshot_id[:16]} no longer exists" in check.out
    assert cli(repo_path, "gc").code == EXIT_OK
    assert not [key for key in entries if (repo_path / key).exists()]
    assert "note:" not in cli(repo_path, "check").out


def test_a_junk_session_holds_back_the_sweep_until_its_lease_runs_out(
    template: Template, repo_path: Path
) -> None:
    repo = open_repo(repo_path)
    repo.forget_snapshot(template.snapshot_id)
    assert collect_garbage(repo).phase == "mark"
    repo.store.put("sessions/" + "0" * 32, b"[1, 2")
    waiting = collect_garbage(repo)
    assert waiting.phase == "waiting"
    assert waiting.deleted_packs == 0


# -- keys and the config -----------------------------------------------------------------------------


BAD_KEY = "0" * 32  # named as a key object is, so unlocking tries it


def _key_object(**changes: object) -> bytes:
    document = json.loads(wrap_master_keys(MasterKeys.generate(), b"other", KdfParams.for_tests()))
    document.update(changes)
    return json.dumps(document).encode()


@pytest.mark.parametrize(
    "key_object",
    [
        b"[]",
        b"not json",
        nested(1200).encode(),
        _key_object(n="65536"),
        _key_object(n=2**40),
        _key_object(n=3000),
        _key_object(r=2**20),
        _key_object(p=2**30),
        _key_object(salt="!!"),
        _key_object(sealed=""),
        _key_object(version=2),
        b"x" * (1024 * 1024),
    ],
    ids=["list", "junk", "nested", "n-text", "n-huge", "n-not-power-of-2", "r-huge", "p-huge", "salt",
         "sealed-empty", "version", "1MiB"],
)  # fmt: skip
def test_a_malformed_key_object_never_blocks_unlocking_with_a_good_one(
    key_object: bytes, template: Template, repo_path: Path
) -> None:
    (repo_path / "keys" / BAD_KEY).write_bytes(key_object)
    listed = cli(repo_path, "snapshots", "--json")
    assert listed.code == EXIT_OK, listed
    assert [row["id"] for row in json.loads(listed.out)] == [template.snapshot_id]


def test_when_only_malformed_keys_are_left_the_error_names_them(repo_path: Path) -> None:
    for key in (repo_path / "keys").iterdir():
        key.unlink()
    (repo_path / "keys" / BAD_KEY).write_bytes(_key_object(n=2**40))
    assert_damaged(cli(repo_path, "snapshots"), f"keys/{BAD_KEY}", "scrypt")


def test_kdf_parameters_outside_the_bounds_are_refused_when_writing_too() -> None:
    with pytest.raises(InvalidInput, match="scrypt"):
        wrap_master_keys(MasterKeys.generate(), b"pw", KdfParams(n=2**30))


@pytest.mark.parametrize(
    "change",
    [
        lambda doc: doc.update(chunk_max=2**40),
        lambda doc: doc.update(chunk_min="big"),
        lambda doc: doc.pop("pack_target"),
        lambda doc: doc.update(compression_level=99),
        lambda doc: doc.update(id=7),
    ],
)
def test_a_crafted_config_is_refused_naming_the_field(
    change: Callable[[dict[str, object]], None], repo_path: Path
) -> None:
    repo = open_repo(repo_path)
    magic = b"BARGE-REPOSITORY v1\n"
    sealed = (repo_path / "config").read_bytes()[len(magic) :]
    document = json.loads(repo.keys.open(sealed, b"barge:config:v1", "config"))
    change(document)
    resealed = repo.keys.seal(json.dumps(document).encode(), b"barge:config:v1")
    (repo_path / "config").write_bytes(magic + resealed)
    assert_damaged(cli(repo_path, "snapshots"), "config")


def test_a_huge_config_is_refused_before_it_is_read(repo_path: Path) -> None:
    with (repo_path / "config").open("r+b") as out:
        out.truncate(512 * 1024 * 1024)
    store = FaultyStore(LocalDirectoryStore(repo_path))
    with pytest.raises(CorruptionDetected, match=r"config.*larger than"):
        Repository.open(store, b"s3cret-pass")
    assert ("get", "config") not in store.calls


def test_a_blob_location_larger_than_any_valid_blob_is_refused_before_reading(
    template: Template, repo_path: Path
) -> None:
    repo = open_repo(repo_path)
    snapshot = repo.load_snapshot(template.snapshot_id)
    assert snapshot.tree is not None
    location = repo.index.get(snapshot.tree)
    assert location is not None
    huge = replace(location, raw_length=2**32 - 1, stored_length=2**32 - 1)
    repo.index.add_pack(b"\x01" * 32, {b"\x02" * 32: huge})
    with pytest.raises(CorruptionDetected, match="larger than"):
        repo.read_blob(b"\x02" * 32)


# -- index objects ---------------------------------------------------------------------------------


def test_an_unreadable_index_object_blocks_only_gc_and_the_next_backup_repairs_it(
    template: Template, repo_path: Path, tmp_path: Path
) -> None:
    assert cli(repo_path, "snapshots").code == EXIT_OK  # the CLI's cache now holds the index
    repo = open_repo(repo_path)
    tree = repo.load_snapshot(template.snapshot_id).tree
    location = repo.index.get(tree or b"")
    assert location is not None
    index = repo_path / "index" / repo.index.origin(location.pack_id).hex()
    data = bytearray(index.read_bytes())
    data[40] ^= 1
    index.write_bytes(bytes(data))
    packs = sorted(p.name for p in (repo_path / "data").rglob("*") if p.is_file())

    assert cli(repo_path, "snapshots").code == EXIT_OK
    uncached = cli(repo_path, "--no-cache", "restore", template.snapshot_id, str(tmp_path / "x"))
    assert_damaged(uncached, "no index")
    # A machine whose cache already holds the object (verified when fetched) still restores.
    assert cli(repo_path, "restore", template.snapshot_id, str(tmp_path / "y")).code == EXIT_OK
    check = cli(repo_path, "check")
    assert check.code == EXIT_DAMAGED
    assert f"index {index.name[:16]}" in check.out
    assert_damaged(cli(repo_path, "gc"), f"index {index.name[:16]}", "deletes nothing")
    assert sorted(p.name for p in (repo_path / "data").rglob("*") if p.is_file()) == packs

    # Without a cache the backup adopts the packs at once; with one (which still holds the object)
    # it does once the object is removed, as `barge gc` asks.
    assert cli(repo_path, "--no-cache", "backup", str(template.source)).code == EXIT_OK
    assert_restores(template, repo_path, tmp_path / "out")
    index.unlink()
    assert cli(repo_path, "gc").code == EXIT_OK
    assert cli(repo_path, "check", "--read-data").code == EXIT_OK


def test_a_removed_index_object_is_dropped_from_the_cache_and_the_next_backup_repairs_it(
    template: Template, repo_path: Path, tmp_path: Path
) -> None:
    assert cli(repo_path, "snapshots").code == EXIT_OK  # the CLI's cache now holds the index
    for index in (repo_path / "index").iterdir():
        index.unlink()
    assert_damaged(cli(repo_path, "restore", template.snapshot_id, str(tmp_path / "x")), "no index")
    assert cli(repo_path, "backup", str(template.source)).code == EXIT_OK  # adopts the packs
    assert_restores(template, repo_path, tmp_path / "out")
    assert cli(repo_path, "gc").code == EXIT_OK
    assert cli(repo_path, "check", "--read-data").code == EXIT_OK


def _put_index_body(repo_path: Path, body: bytes, compressor: zstandard.ZstdCompressor | None = None) -> str:
    repo = open_repo(repo_path)
    compressed = (compressor or zstandard.ZstdCompressor()).compress(body)
    sealed = repo.keys.seal(compressed, b"barge:index:v1")
    name = hashlib.sha256(sealed).hexdigest()
    (repo_path / "index" / name).write_bytes(sealed)
    return name


@pytest.mark.parametrize(
    "body",
    [
        b"BRGI\x01" + struct.pack("<I", 2**32 - 1),  # names four billion superseded indexes
        b"BRGI\x01" + struct.pack("<II", 0, 1) + b"\x00" * 32 + struct.pack("<I", 2**32 - 1),
        b"BRGI\x01" + struct.pack("<II", 0, 1) + b"\x00" * 32 + struct.pack("<I", 1) + b"\x07" + b"\x00" * 44,
        b"NOPE",
    ],
    ids=["superseded-count", "blob-count", "blob-type", "magic"],
)
def test_a_crafted_index_object_is_reported_not_trusted(
    body: bytes, template: Template, repo_path: Path
) -> None:
    name = _put_index_body(repo_path, body)
    repo = open_repo(repo_path)
    assert any(name[:16] in problem for problem in repo.index_problems)
    assert cli(repo_path, "snapshots").code == EXIT_OK


def test_an_index_that_decompresses_past_its_limit_is_refused_before_decompressing(
    repo_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr("barge.repo.index.MAX_INDEX_BODY", 1000)
    name = _put_index_body(repo_path, b"BRGI\x01" + b"\x00" * 5000)
    assert any(f"{name[:16]}: decompresses to 5,005 bytes" in p for p in open_repo(repo_path).index_problems)
    unsized = zstandard.ZstdCompressor(write_content_size=False)
    name = _put_index_body(repo_path, b"BRGI\x01" + b"\x00" * 5000, unsized)
    assert any(name[:16] in p for p in open_repo(repo_path).index_problems)


def test_gc_writes_a_large_consolidated_index_as_several_objects(
    template: Template, repo_path: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr("barge.repo.index.MAX_BLOBS_PER_OBJECT", 3)
    repo = open_repo(repo_path)
    blobs = len(repo.index)
    old = {p.name for p in (repo_path / "index").iterdir()}
    collect_garbage(repo)
    assert collect_garbage(repo).deleted_packs > 0  # swept the forgotten snapshot's packs
    new = {p.name for p in (repo_path / "index").iterdir()}
    assert not old & new
    assert len(new) > 1  # a pack's blobs stay in one object, so not one object per 3 blobs
    reopened = open_repo(repo_path)
    assert reopened.index_problems == []
    assert len(reopened.index) < blobs
    assert_restores(template, repo_path, tmp_path / "out")


@pytest.mark.parametrize("name", ["README", BAD_KEY])
def test_key_remove_never_counts_a_stray_or_malformed_key_object_as_another_password(
    name: str, repo_path: Path
) -> None:
    (repo_path / "keys" / name).write_bytes(b"[]")
    result = cli(repo_path, "key", "remove")
    assert result.code == EXIT_USAGE, result
    assert "only password" in result.err
    assert cli(repo_path, "snapshots").code == EXIT_OK
