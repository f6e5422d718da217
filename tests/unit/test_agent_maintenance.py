"""The agent's maintenance of one repository: garbage collection and a check, reported, never raised."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from agent.maintenance import run_maintenance
from barge.clock import ManualClock
from barge.control.messages import Maintain
from barge.fs.backup import backup_tree
from barge.repo.crypto import KdfParams
from barge.repo.repository import Repository
from barge.storage.local import LocalDirectoryStore
from tests.fsbuild import write
from tests.unit.test_agent_sweeper import location, opener

pytestmark = pytest.mark.unit


def repository(tmp_path: Path, namespace: str) -> Repository:
    store = LocalDirectoryStore(location(tmp_path) / "plugins" / "barge" / namespace)
    return Repository.init(store, b"pw", kdf=KdfParams.for_tests())


def backup(repo: Repository, root: Path, mib: int) -> str:
    for i in range(mib):
        write(root / f"f{i}", os.urandom(1024 * 1024))
    return backup_tree(repo, root).snapshot_id


def maintain(tmp_path: Path, namespace: str = "shop", *, gc: bool = True, check: bool = False,
             read: float = 0.0) -> Maintain:  # fmt: skip
    return Maintain("m1", "velero", "default", namespace, gc, check, read)


def stored(repo: Repository) -> int:
    return sum(info.size for info in repo.store.list("data/"))


def test_two_runs_reclaim_a_forgotten_snapshot_and_report_the_size(tmp_path: Path) -> None:
    repo = repository(tmp_path, "shop")
    backup(repo, tmp_path / "keep", 1)
    repo.forget_snapshot(backup(repo, tmp_path / "drop", 3))
    before = stored(repo)

    mark = run_maintenance(maintain(tmp_path), opener(tmp_path), ManualClock())
    assert (mark.message, mark.gc_phase, mark.reclaimed_bytes, mark.size_bytes) == ("", "mark", 0, before)
    sweep = run_maintenance(maintain(tmp_path, check=True, read=1.0), opener(tmp_path), ManualClock())
    assert sweep.message == ""
    assert sweep.gc_phase == "sweep+mark"
    assert sweep.reclaimed_bytes > 3 * 1024 * 1024
    assert sweep.size_bytes == stored(repo) == before - sweep.reclaimed_bytes
    assert (sweep.checked, sweep.problems, sweep.problem_count) == (True, (), 0)


def test_a_check_reports_damage_it_reads(tmp_path: Path) -> None:
    repo = repository(tmp_path, "shop")
    backup(repo, tmp_path / "src", 2)
    packs = sorted((p for p in (location(tmp_path) / "plugins/barge/shop/data").rglob("*") if p.is_file()),
                   key=lambda p: p.stat().st_size)  # fmt: skip
    data = bytearray(packs[-1].read_bytes())
    data[len(data) // 2] ^= 0x01
    packs[-1].write_bytes(bytes(data))

    task = maintain(tmp_path, gc=False, check=True, read=1.0)
    result = run_maintenance(task, opener(tmp_path), ManualClock())
    assert result.message == ""
    assert result.checked
    assert result.problem_count == 1
    assert "damaged" in result.problems[0]


def test_a_damaged_manifest_stops_gc_and_is_reported_as_a_problem(tmp_path: Path) -> None:
    repo = repository(tmp_path, "shop")
    snapshot_id = backup(repo, tmp_path / "src", 1)
    (location(tmp_path) / "plugins/barge/shop/snapshots" / snapshot_id).write_bytes(b"garbage")

    result = run_maintenance(maintain(tmp_path), opener(tmp_path), ManualClock())
    assert result.message.startswith("garbage collection refused:")
    assert result.problem_count == 1
    assert "barge forget" in result.problems[0]


@pytest.mark.parametrize(
    ("namespace", "bsl", "expected"),
    [
        ("nowhere", "default", "no repository for namespace nowhere"),
        ("shop", "missing", "maintenance failed:"),
    ],
)
def test_what_cannot_be_maintained_is_the_result_message(
    tmp_path: Path, namespace: str, bsl: str, expected: str
) -> None:
    repository(tmp_path, "shop")
    task = Maintain("m1", "velero", bsl, namespace, collect_garbage=True, check=True)
    result = run_maintenance(task, opener(tmp_path), ManualClock())
    assert result.message.startswith(expected), result.message
