"""Finding a backup's parent by its source: one small listing and that source's manifests only,
whatever else the repository holds; never trusting an entry's name over the manifest it names."""

from __future__ import annotations

from pathlib import Path

import pytest

from barge.repo.check import check_repository
from barge.repo.crypto import KdfParams
from barge.repo.gc import collect_garbage
from barge.repo.repository import Repository, RepositorySettings
from barge.repo.snapshot import Snapshot, SnapshotKind, SnapshotSummary
from barge.repo.sources import COMPLETE_KEY, SOURCES_PREFIX, parse_entry, query_source, source_prefix
from barge.storage.local import LocalDirectoryStore
from tests.faultystore import FaultyStore

PASSWORD = b"pw"
SETTINGS = RepositorySettings(chunk_min=4096, chunk_avg=16384, chunk_max=65536, pack_target=256 * 1024)
FS = SnapshotKind.FILESYSTEM
SOURCES = [("ns-a", "data"), ("ns-a", "logs"), ("ns-b", "data"), ("ns-c", "db"), ("ns-c", "cache")]
DAYS = 3


def identity(namespace: str, pvc: str) -> dict[str, str]:
    return {"barge.io/source-namespace": namespace, "barge.io/source-pvc": pvc}


def manifest(day: int, *, paths: tuple[str, ...] = ("/mnt/x",), **tags: str) -> Snapshot:
    return Snapshot(
        kind=FS,
        time=f"2026-03-{day + 1:02d}T12:00:00+00:00",
        hostname="node-1",
        paths=paths,
        tree=None,
        summary=SnapshotSummary(),
        tags=tags,
    )


def volume_snapshot(day: int, namespace: str, pvc: str, **more: str) -> Snapshot:
    return manifest(day, paths=(f"/var/lib/kubelet/pods/{day}/{pvc}",), **identity(namespace, pvc), **more)


@pytest.fixture
def counted(tmp_path: Path) -> FaultyStore:
    return FaultyStore(LocalDirectoryStore(tmp_path / "repo"))


@pytest.fixture
def repo(counted: FaultyStore) -> Repository:
    return Repository.init(counted, PASSWORD, SETTINGS, KdfParams.for_tests())


def daily_backups(repo: Repository) -> dict[tuple[str, str], list[str]]:
    """``DAYS`` snapshots of every source, oldest first, interleaved as daily runs write them."""
    ids: dict[tuple[str, str], list[str]] = {source: [] for source in SOURCES}
    for day in range(DAYS):
        for namespace, pvc in SOURCES:
            ids[namespace, pvc].append(repo.save_snapshot(volume_snapshot(day, namespace, pvc)))
    return ids


def volume_prefix(repo: Repository, namespace: str, pvc: str) -> str:
    """Where the agent's lookup for this PVC lists."""
    source = query_source(FS, None, identity(namespace, pvc))
    assert source is not None
    return source_prefix(repo.keys, source)


def manifests_read(store: FaultyStore) -> set[str]:
    return {key.removeprefix("snapshots/") for key in store.keys("get_range", "snapshots/")}


def entries(store: FaultyStore) -> list[str]:
    return [info.key for info in store.inner.list(SOURCES_PREFIX) if info.key != COMPLETE_KEY]


def test_the_lookup_lists_one_prefix_and_reads_only_the_newest_manifest_of_that_source(
    repo: Repository, counted: FaultyStore
) -> None:
    ids = daily_backups(repo)
    counted.calls.clear()

    assert repo.latest_snapshot(FS, tags=identity("ns-b", "data")) == ids["ns-b", "data"][-1]

    assert manifests_read(counted) == {ids["ns-b", "data"][-1]}
    lists = counted.keys("list")
    assert len(lists) == 1
    assert lists[0].startswith(SOURCES_PREFIX)
    assert not counted.keys("list", "snapshots/")


def test_the_lookup_cost_does_not_grow_with_other_sources(repo: Repository, counted: FaultyStore) -> None:
    daily_backups(repo)
    counted.calls.clear()
    repo.latest_snapshot(FS, tags=identity("ns-a", "data"))
    few = len(counted.calls)
    for day in range(DAYS, DAYS + 20):
        repo.save_snapshot(volume_snapshot(day, "ns-z", "other"))
    counted.calls.clear()
    repo.latest_snapshot(FS, tags=identity("ns-a", "data"))
    assert len(counted.calls) == few


def test_a_lookup_by_paths_finds_the_newest_snapshot_of_those_paths(repo: Repository) -> None:
    older = repo.save_snapshot(manifest(1, paths=("/srv",)))
    newer = repo.save_snapshot(manifest(2, paths=("/srv",)))
    repo.save_snapshot(manifest(3, paths=("/srv", "/etc")))
    repo.save_snapshot(manifest(4, paths=("/home",)))
    assert older != newer
    assert repo.latest_snapshot(FS, paths=["/srv"]) == newer
    assert repo.latest_snapshot(SnapshotKind.BLOCK, paths=["/srv"]) is None


def test_extra_tags_in_the_query_must_all_be_in_the_manifest(repo: Repository) -> None:
    plain = repo.save_snapshot(volume_snapshot(1, "ns-a", "data"))
    repo.save_snapshot(volume_snapshot(2, "ns-a", "data", schedule="weekly"))
    assert repo.latest_snapshot(FS, tags=identity("ns-a", "data") | {"schedule": "daily"}) is None
    assert repo.latest_snapshot(FS, tags=identity("ns-a", "data")) != plain


def test_a_forgotten_snapshot_is_not_chosen_and_its_entries_are_gone(
    repo: Repository, counted: FaultyStore
) -> None:
    ids = daily_backups(repo)
    newest = ids["ns-a", "logs"][-1]
    repo.forget_snapshot(newest)
    assert not [key for key in entries(counted) if newest in key]
    assert repo.latest_snapshot(FS, tags=identity("ns-a", "logs")) == ids["ns-a", "logs"][-2]


def test_crafted_and_dangling_entries_are_ignored(repo: Repository, counted: FaultyStore) -> None:
    ids = daily_backups(repo)
    prefix = volume_prefix(repo, "ns-a", "data")
    future = "99999999999999999999"
    crafted = [
        f"{prefix}{future}-{ids['ns-c', 'db'][-1]}",  # another source's manifest, newest time
        f"{prefix}{future}-{ids['ns-a', 'data'][0]}",  # our oldest one, relabelled newest
        f"{prefix}{future}-{'ab' * 32}",  # names no manifest at all
        f"{prefix}not-an-entry",
        f"{prefix}{future}-{'AB' * 32}",
        f"{prefix}deeper/{future}-{ids['ns-a', 'data'][-1]}",
    ]
    for key in crafted:
        counted.inner.put(key, b"")
    assert repo.latest_snapshot(FS, tags=identity("ns-a", "data")) == ids["ns-a", "data"][-1]


def test_a_damaged_newest_manifest_gives_way_to_the_next_one(
    repo: Repository, counted: FaultyStore, tmp_path: Path
) -> None:
    ids = daily_backups(repo)
    (tmp_path / "repo" / "snapshots" / ids["ns-c", "db"][-1]).write_bytes(b"garbage")
    assert repo.latest_snapshot(FS, tags=identity("ns-c", "db")) == ids["ns-c", "db"][-2]


def forget_the_entries(counted: FaultyStore) -> None:
    """The repository as a Barge without source entries left it."""
    for info in list(counted.inner.list(SOURCES_PREFIX)):
        counted.inner.delete(info.key)


def test_a_repository_without_entries_is_scanned_once_per_source_then_looked_up(
    repo: Repository, counted: FaultyStore
) -> None:
    ids = daily_backups(repo)
    forget_the_entries(counted)
    counted.calls.clear()

    assert repo.latest_snapshot(FS, tags=identity("ns-c", "db")) == ids["ns-c", "db"][-1]
    assert manifests_read(counted) == {i for source in ids.values() for i in source}  # the old full scan

    counted.calls.clear()
    assert repo.latest_snapshot(FS, tags=identity("ns-c", "db")) == ids["ns-c", "db"][-1]
    assert manifests_read(counted) == {ids["ns-c", "db"][-1]}
    assert not counted.keys("list", "snapshots/")


def test_a_new_source_in_a_repository_with_entries_from_its_start_costs_one_listing(
    repo: Repository, counted: FaultyStore
) -> None:
    daily_backups(repo)
    counted.calls.clear()
    assert repo.latest_snapshot(FS, tags=identity("ns-new", "fresh")) is None
    assert manifests_read(counted) == set()
    assert not counted.keys("list", "snapshots/")


def test_entry_names_reveal_no_source_and_differ_between_repositories(
    repo: Repository, counted: FaultyStore, tmp_path: Path
) -> None:
    repo.save_snapshot(volume_snapshot(1, "secret-namespace", "payroll-db"))
    other = Repository.init(LocalDirectoryStore(tmp_path / "o"), PASSWORD, SETTINGS, KdfParams.for_tests())
    other.save_snapshot(volume_snapshot(1, "secret-namespace", "payroll-db"))
    names = entries(counted)
    assert names
    assert not [n for n in names if "payroll" in n or "secret" in n or "kubelet" in n]
    sources = {n.split("/")[1] for n in names}
    other_sources = {info.key.split("/")[1] for info in other.store.list(SOURCES_PREFIX)}
    assert sources
    assert not sources & other_sources


def test_check_accepts_entries_notes_dangling_ones_and_reports_junk(
    repo: Repository, counted: FaultyStore
) -> None:
    ids = daily_backups(repo)
    assert check_repository(repo).problems == []

    repo.store.delete(f"snapshots/{ids['ns-a', 'data'][-1]}")  # forgotten by a Barge without entries
    report = check_repository(repo)
    assert report.problems == []
    assert len(report.notes) == 1
    assert ids["ns-a", "data"][-1][:16] in report.notes[0]

    prefix = volume_prefix(repo, "ns-b", "data")
    counted.inner.put(f"{prefix}junk", b"")
    counted.inner.put(f"{prefix}{'0' * 20}-{ids['ns-c', 'db'][0]}", b"")
    problems = check_repository(repo).problems
    assert len(problems) == 2
    assert any(p.startswith(f"unexpected object {prefix}junk ") for p in problems)
    assert any("does not match" in p for p in problems)


def test_gc_removes_dangling_entries_and_backfills_missing_ones(
    repo: Repository, counted: FaultyStore
) -> None:
    ids = daily_backups(repo)
    forget_the_entries(counted)
    repo.store.delete(f"snapshots/{ids['ns-a', 'data'][-1]}")
    counted.inner.put(f"{SOURCES_PREFIX}{'cd' * 32}/{'0' * 20}-{'ef' * 32}", b"")  # dangling

    collect_garbage(repo)

    named = {entry.snapshot_id for key in entries(counted) if (entry := parse_entry(key))}
    assert named == {i for source in ids.values() for i in source} - {ids["ns-a", "data"][-1]}
    report = check_repository(repo)
    assert (report.problems, report.notes) == ([], [])
    counted.calls.clear()
    assert repo.latest_snapshot(FS, tags=identity("ns-new", "fresh")) is None
    assert manifests_read(counted) == set()
