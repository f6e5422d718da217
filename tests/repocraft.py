"""Crafting repository objects the way an attacker with bucket access (or with the password) could:
a small real repository to start from, and ways to put a chosen object into it, sealed where the
format seals it, so tests reach the checks behind the authentication too."""

from __future__ import annotations

import contextlib
import hashlib
import io
import json
import os
import shutil
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from barge.cli.main import main
from barge.fs.backup import backup_tree
from barge.repo.crypto import KdfParams
from barge.repo.pack import BlobType
from barge.repo.repository import Repository, RepositorySettings
from barge.repo.snapshot import Snapshot
from barge.storage.local import LocalDirectoryStore
from tests.fsbuild import write

PASSWORD = "s3cret-pass"
SETTINGS = RepositorySettings(chunk_min=4096, chunk_avg=16384, chunk_max=65536, pack_target=64 * 1024)
SNAPSHOT_AAD = b"barge:snapshot:v1"


def small_tree(root: Path) -> Path:
    """A few files in a few directories: every object kind, small enough to copy per example."""
    write(root / "a.txt", b"alpha\n" * 100)
    write(root / "sub" / "b.bin", os.urandom(50_000))
    write(root / "sub" / "deeper" / "c", b"c" * 10)
    os.symlink("a.txt", root / "link")
    return root


@dataclass(frozen=True)
class Template:
    """A repository with one snapshot of ``source``."""

    path: Path
    source: Path
    snapshot_id: str


def make_template(base: Path) -> Template:
    """One snapshot to keep, and the packs of a forgotten one for garbage collection to find."""
    repo = Repository.init(
        LocalDirectoryStore(base / "repo"), PASSWORD.encode(), SETTINGS, KdfParams.for_tests()
    )
    write(base / "trash" / "t", os.urandom(80_000))
    repo.forget_snapshot(backup_tree(repo, base / "trash").snapshot_id)
    source = small_tree(base / "src")
    return Template(base / "repo", source, backup_tree(repo, source).snapshot_id)


def copy_repo(template: Template, target: Path) -> Path:
    shutil.copytree(template.path, target)
    return target


def open_repo(path: Path) -> Repository:
    return Repository.open(LocalDirectoryStore(path), PASSWORD.encode())


def put_sealed_manifest(repo: Repository, document: bytes) -> str:
    """``document`` (any bytes) as a snapshot manifest, sealed with the repository's keys."""
    sealed = repo.keys.seal(document, SNAPSHOT_AAD)
    snapshot_id = hashlib.sha256(sealed).hexdigest()
    repo.store.put(f"snapshots/{snapshot_id}", sealed)
    return snapshot_id


def manifest_json(repo: Repository, snapshot_id: str) -> dict[str, Any]:
    document: dict[str, Any] = json.loads(json.dumps(repo.load_snapshot(snapshot_id).to_json()))
    return document


def put_tree_blob(repo: Repository, data: bytes) -> bytes:
    """``data`` stored as a TREE blob (packed and indexed as a writer would); its ID."""
    with repo.writer() as writer:
        return writer.add_blob(BlobType.TREE, data)


def put_tree_snapshot(repo: Repository, base: str, tree: bytes) -> str:
    """A copy of snapshot ``base`` whose root tree is the blob ``tree`` (any bytes)."""
    document = manifest_json(repo, base)
    document["tree"] = put_tree_blob(repo, tree).hex()
    return put_sealed_manifest(repo, json.dumps(document).encode())


def root_tree(repo: Repository, snapshot_id: str) -> dict[str, Any]:
    snapshot: Snapshot = repo.load_snapshot(snapshot_id)
    assert snapshot.tree is not None
    document: dict[str, Any] = json.loads(repo.read_blob(snapshot.tree))
    return document


def nested(depth: int) -> str:
    return "[" * depth + "]" * depth


@dataclass(frozen=True)
class CliResult:
    code: int
    out: str
    err: str


def cli(repo: Path, *args: str) -> CliResult:
    """``barge --repo <repo> ARGS`` in process, its exit code and what it printed."""
    out, err = io.StringIO(), io.StringIO()
    with _env("BARGE_PASSWORD", PASSWORD), contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = main(["--repo", f"file://{repo}", *args])
    return CliResult(code, out.getvalue(), err.getvalue())


@contextlib.contextmanager
def _env(name: str, value: str) -> Iterator[None]:
    old = os.environ.get(name)
    os.environ[name] = value
    try:
        yield
    finally:
        if old is None:
            del os.environ[name]
        else:
            os.environ[name] = old
