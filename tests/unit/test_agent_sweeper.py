"""The agent's sweep of a location: what it reports, and what it refuses to forget."""

from __future__ import annotations

import base64
from pathlib import Path

import pytest

from agent.repositories import BslRepositories
from agent.sweeper import ManifestCache, run_sweep
from barge.clock import ManualClock
from barge.control.messages import BackupSnapshot, ForgetBackup, Sweep
from barge.errors import NotFound
from barge.repo.crypto import KdfParams
from barge.repo.repository import Repository
from barge.repo.snapshot import Snapshot, SnapshotKind, SnapshotSummary
from barge.repo.sources import SOURCES_PREFIX, parse_entry
from barge.storage.local import LocalDirectoryStore
from barge.velero.backups import label_value
from barge.velero.password import SecretKey

TIME = "2026-06-01T12:00:00+00:00"


def opener(tmp_path: Path) -> BslRepositories:
    bsl = {
        "metadata": {"name": "default"},
        "spec": {"provider": "barge.io/local", "objectStorage": {"bucket": "b", "prefix": "p"},
                 "config": {"path": str(tmp_path / "store")}},
    }  # fmt: skip
    secret = {"data": {"repository-password": base64.b64encode(b"pw").decode()}}

    def get(table: dict[str, object]) -> object:
        def lookup(namespace: str, name: str) -> object:
            if name not in table:
                raise NotFound(name)
            return table[name]

        return lookup

    return BslRepositories(
        get_bsl=get({"default": bsl}), get_secret=get({"creds": secret}),  # type: ignore[arg-type]
        password_secret=SecretKey("creds", "repository-password"), clock=ManualClock(),
    )  # fmt: skip


def location(tmp_path: Path) -> Path:
    return tmp_path / "store" / "b" / "p"


def repo_with(tmp_path: Path, namespace: str, backups: dict[str, tuple[str, str]]) -> dict[str, str]:
    """A repository for ``namespace`` with one snapshot per entry: key -> (backup name, uid)."""
    store = LocalDirectoryStore(location(tmp_path) / "plugins" / "barge" / namespace)
    repo = Repository.init(store, b"pw", kdf=KdfParams.for_tests())
    ids = {}
    for key, (name, uid) in backups.items():
        tags = {"velero.io/backup-name": name, "velero.io/backup-uid": uid} if name else {}
        snapshot = Snapshot(SnapshotKind.FILESYSTEM, TIME, "h", (key,), None, SnapshotSummary(), tags)
        ids[key] = repo.save_snapshot(snapshot)
    return ids


def velero_backup(tmp_path: Path, name: str) -> None:
    folder = location(tmp_path) / "backups" / name
    folder.mkdir(parents=True)
    (folder / "velero-backup.json").write_text("{}")


def test_a_sweep_reports_the_backups_and_their_snapshots(tmp_path: Path) -> None:
    ids = repo_with(tmp_path, "shop", {"a": ("nightly", "u1"), "cli": ("", "")})
    velero_backup(tmp_path, "weekly")
    (location(tmp_path) / "backups" / "broken").mkdir()  # no velero-backup.json: not a backup
    result = run_sweep(Sweep("s1", "velero", "default"), opener(tmp_path))
    assert result.message == ""
    assert result.backups_in_location == ("weekly",)
    assert result.snapshots == (BackupSnapshot("shop", ids["a"], "nightly", "u1", TIME),)
    assert result.repositories == ("shop",)


def test_forgets_only_what_names_the_deleted_backup_and_only_once(tmp_path: Path) -> None:
    ids = repo_with(tmp_path, "shop", {"a": ("nightly", "u1"), "b": ("other", "u2"), "c": ("nightly", "u0")})
    asked = ForgetBackup("shop", "nightly", "u1", (ids["a"], ids["b"], ids["c"]))
    result = run_sweep(Sweep("s1", "velero", "default", (asked,)), opener(tmp_path))
    assert result.forgotten == (ids["a"],)
    assert {s.snapshot_id for s in result.snapshots} == {ids["b"], ids["c"]}
    again = run_sweep(Sweep("s2", "velero", "default", (asked,)), opener(tmp_path))
    assert again.forgotten == ()
    assert again.message == ""


def test_a_forgotten_snapshot_takes_its_source_entries_with_it(tmp_path: Path) -> None:
    ids = repo_with(tmp_path, "shop", {"a": ("nightly", "u1"), "b": ("other", "u2")})
    store = LocalDirectoryStore(location(tmp_path) / "plugins" / "barge" / "shop")
    asked = ForgetBackup("shop", "nightly", "u1", (ids["a"],))
    run_sweep(Sweep("s1", "velero", "default", (asked,)), opener(tmp_path))
    named = {entry.snapshot_id for info in store.list(SOURCES_PREFIX) if (entry := parse_entry(info.key))}
    assert named == {ids["b"]}


def test_a_backup_the_location_holds_is_never_forgotten_whatever_the_leader_asks(tmp_path: Path) -> None:
    ids = repo_with(tmp_path, "shop", {"a": ("nightly", "u1")})
    velero_backup(tmp_path, "nightly")
    asked = ForgetBackup("shop", "nightly", "u1", (ids["a"],))
    result = run_sweep(Sweep("s1", "velero", "default", (asked,)), opener(tmp_path))
    assert result.forgotten == ()
    assert result.kept == (ids["a"],)
    assert [s.snapshot_id for s in result.snapshots] == [ids["a"]]


def test_a_long_backup_name_is_compared_as_velero_labels_spell_it(tmp_path: Path) -> None:
    """Velero cuts label values at 63 characters (name[:57] + 6 hex digits of its SHA-256)."""
    long_name = "nightly-" + "x" * 70
    label = label_value(long_name)
    assert len(label) == 63
    assert label.startswith(long_name[:57])
    ids = repo_with(tmp_path, "shop", {"a": (label, "u1")})
    velero_backup(tmp_path, long_name)
    asked = ForgetBackup("shop", label, "u1", (ids["a"],))
    assert run_sweep(Sweep("s1", "velero", "default", (asked,)), opener(tmp_path)).kept == (ids["a"],)


def test_a_location_that_cannot_be_opened_is_a_failed_sweep_not_an_exception(tmp_path: Path) -> None:
    result = run_sweep(Sweep("s1", "velero", "missing"), opener(tmp_path))
    assert "BackupStorageLocation velero/missing does not exist" in result.message


def test_each_manifest_is_read_once_per_agent_and_forgotten_ones_leave_the_cache(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    ids = repo_with(tmp_path, "shop", {"a": ("nightly", "u1"), "b": ("weekly", "u2")})
    reads: list[str] = []
    load = Repository.load_snapshot

    def counting(repo: Repository, snapshot_id: str) -> Snapshot:
        reads.append(snapshot_id)
        return load(repo, snapshot_id)

    monkeypatch.setattr(Repository, "load_snapshot", counting)
    cache, locations = ManifestCache(), opener(tmp_path)
    first = run_sweep(Sweep("s1", "velero", "default"), locations, cache)
    assert sorted(reads) == sorted(ids.values())
    reads.clear()
    assert run_sweep(Sweep("s2", "velero", "default"), locations, cache).snapshots == first.snapshots
    assert reads == []
    asked = ForgetBackup("shop", "nightly", "u1", (ids["a"],))
    after = run_sweep(Sweep("s3", "velero", "default", (asked,)), locations, cache)
    assert set(reads) == {ids["a"]}  # only the forget reads, afresh; "b" comes from the cache
    assert [s.snapshot_id for s in after.snapshots] == [ids["b"]]
