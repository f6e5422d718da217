"""Deleting a Velero backup forgets the snapshots Barge wrote for it; scheduled garbage collection
then reclaims their space. A backup the location still holds is never forgotten.

The coordinator here looks for deleted backups every 2 s with a 5 s grace period
(``deletedBackups`` in the coordinator config) and maintains each repository every 3 s (gc) and
10 s (check, reading every pack), so the tests see in seconds what takes hours and days with the
defaults; maintenance thus runs all along, beside the backups and restores of every test.
"""

from __future__ import annotations

import json
import os
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlencode

import pytest

from barge.kube.resources import BACKUP, CONFIG_MAP, EVENT, NAMESPACE
from barge.repo.repository import Repository
from barge.storage.url import open_store
from devenv.s3server import S3Endpoint
from devenv.trees import capture
from devenv.velerocluster import VeleroCluster, velero_cluster
from devenv.veleroserver import S3Location
from devenv.waiting import wait_for
from tests.fsbuild import MIB, write
from tests.velero.conftest import print_logs
from tests.velero.flows import BACKUP_FINAL, backup, delete_claims, restore, snapshot_of

pytestmark = pytest.mark.integration

CONFIG = """\
deletedBackups: {checkInterval: 2s, gracePeriod: 5s}
maintenance: {gcInterval: 3s, checkInterval: 10s, checkReadDataPercent: 100}
"""


@pytest.fixture(scope="module")
def location(s3_server: S3Endpoint) -> S3Location:
    return S3Location(s3_server, bucket=f"velero-{uuid.uuid4().hex[:8]}", prefix="cluster-c")


@pytest.fixture(scope="module")
def cluster(location: S3Location, tmp_path_factory: pytest.TempPathFactory) -> Iterator[VeleroCluster]:
    workdir = tmp_path_factory.mktemp("velero-cluster")
    try:
        with velero_cluster(workdir, location, coordinator_config=CONFIG) as env:
            yield env
            assert env.sim.errors == [], f"the simulated cluster hit unexpected errors: {env.sim.errors}"
    finally:
        print_logs(workdir)


@pytest.fixture(autouse=True)
def s3_credentials(location: S3Location, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", location.endpoint.access_key)
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", location.endpoint.secret_key)


def store_url(location: S3Location, path: str = "") -> str:
    endpoint = location.endpoint
    query = urlencode({"endpoint": endpoint.url, "path_style": "true", "region": endpoint.region})
    return f"s3://{location.bucket}/{location.prefix}{path}?{query}"


def repository(cluster: VeleroCluster, location: S3Location, namespace: str) -> Repository:
    url = store_url(location, f"/plugins/barge/{namespace}")
    return Repository.open(open_store(url), cluster.barge.password.encode())


def bucket_bytes(location: S3Location) -> int:
    return sum(info.size for info in open_store(store_url(location)).list(""))


def app(cluster: VeleroCluster, namespace: str, tmp_path: Path, mib: int) -> Path:
    """A volume of ``mib`` MiB of incompressible data, in its own namespace (its own repository)."""
    cluster.objects.create(NAMESPACE, {"metadata": {"name": namespace}})
    source = tmp_path / namespace
    for index in range(mib):
        write(source / f"part{index:02d}.bin", os.urandom(1024 * 1024))
    return cluster.sim.provision_claim(namespace, "data", source)


def sweeps(cluster: VeleroCluster) -> float:
    port = cluster.barge.processes.coordinator_metrics["coordinator-0"]
    return cluster.barge.metric(port, "barge_coordinator_location_sweeps_total", {"result": "ok"}) or 0.0


def test_velero_backup_delete_forgets_its_snapshots_and_gc_reclaims_the_space(
    cluster: VeleroCluster, location: S3Location, tmp_path: Path
) -> None:
    velero, objects = cluster.velero, cluster.objects
    live = app(cluster, "kept", tmp_path, 2)
    expected = capture(snapshot_of(live, tmp_path / "expected"))
    app(cluster, "doomed", tmp_path, 8)
    backup(cluster, "survivor", "kept")
    doomed = backup(cluster, "to-delete", "doomed")

    # The snapshot names its backup (name and UID, from the DataUpload's labels).
    repo = repository(cluster, location, "doomed")
    (snapshot_id,) = repo.snapshot_ids()
    tags = repo.load_snapshot(snapshot_id).tags
    assert tags["velero.io/backup-name"] == "to-delete"
    assert tags["velero.io/backup-uid"] == doomed["metadata"]["uid"]
    before = bucket_bytes(location)

    velero.cli("backup", "delete", "to-delete", "--confirm")
    velero.wait_gone(BACKUP, "to-delete", timeout=120)
    wait_for(lambda: not repo.snapshot_ids(), 90, what="the deleted backup's snapshot to be forgotten")
    assert len(repository(cluster, location, "kept").snapshot_ids()) == 1

    # Visible: an Event on the location, the counter, and the grace record gone once done.
    def event() -> str | None:
        found = [e for e in objects.list(EVENT, velero.namespace) if e.get("reason") == "SnapshotsForgotten"]
        return found[0]["message"] if found else None

    message = wait_for(event, 30, what="the SnapshotsForgotten Event on the location")
    assert "to-delete" in message, message
    assert doomed["metadata"]["uid"] in message, message
    port = cluster.barge.processes.coordinator_metrics["coordinator-0"]
    forgotten = cluster.barge.metric(
        port, "barge_coordinator_snapshots_forgotten_total", {"location": "default"}
    )
    assert forgotten == 1.0

    def grace_record_gone() -> bool:
        state = objects.get(CONFIG_MAP, velero.namespace, "barge-deleted-backups")
        return not (state.get("data") or {})

    wait_for(grace_record_gone, 30, what="the grace record of the deleted backup to be removed")

    # Scheduled garbage collection (mark, then sweep) reclaims the forgotten data, unasked.
    after = wait_for(lambda: _reclaimed(location, before, 8 * MIB * 0.9), 120, what="gc to reclaim 8 MiB")
    print(
        f"bucket bytes: {before:,} before the delete, {after:,} after forget + scheduled gc "
        f"({before - after:,} reclaimed)"
    )
    record = wait_for(lambda: _record(cluster, "doomed", lambda r: r["reclaimedBytesTotal"] > 0), 30,
                      what="the maintenance record of the reclaimed repository")  # fmt: skip
    assert record["reclaimedBytesTotal"] >= 8 * MIB * 0.9, record
    assert record["problemCount"] == 0, record
    reclaimed = cluster.barge.metric(port, "barge_repository_reclaimed_bytes_total", {"location": "default"})
    assert reclaimed is not None
    assert reclaimed >= 8 * MIB * 0.9
    assert wait_for(lambda: _events(cluster, "SpaceReclaimed"), 30, what="the SpaceReclaimed Event")

    # The surviving backup still restores bit-exact after gc.
    delete_claims(cluster, "kept", ("data",))
    restore(cluster, "from-survivor", "survivor")
    cluster.barge.wait_pvc_bound("kept", "data")
    restored = capture(cluster.sim.claim_data("kept", "data"))
    restored.pop(b"lost+found", None)
    assert restored == expected

    # The surviving repository was checked (every pack read) while all this ran, and is sound.
    def checked(record: dict[str, Any]) -> bool:
        return bool(record["checkSucceeded"]) and record["sizeBytes"] > 0

    kept = wait_for(lambda: _record(cluster, "kept", checked), 60, what="a check of the kept repository")
    assert (kept["problemCount"], kept["lastError"]) == (0, ""), kept
    print(f"maintenance of a {kept['sizeBytes']:,}-byte repository: gc {kept['gcSeconds']:.3f} s, "
          f"check reading every pack {kept['checkSeconds']:.3f} s")  # fmt: skip


def _reclaimed(location: S3Location, before: int, at_least: float) -> int | None:
    now = bucket_bytes(location)
    return now if before - now > at_least else None


Record = dict[str, Any]


def _record(cluster: VeleroCluster, namespace: str, ready: Callable[[Record], bool]) -> Record | None:
    """The repository's maintenance record once ``ready`` says so."""
    found = cluster.objects.find(CONFIG_MAP, cluster.velero.namespace, "barge-maintenance")
    text = ((found or {}).get("data") or {}).get(f"default.{namespace}")
    record: dict[str, Any] | None = json.loads(text) if text else None
    return record if record is not None and ready(record) else None


def _events(cluster: VeleroCluster, reason: str) -> list[str]:
    found = cluster.objects.list(EVENT, cluster.velero.namespace)
    return [e["message"] for e in found if e.get("reason") == reason]


def test_a_backup_deleted_from_the_cluster_only_keeps_its_snapshots(
    cluster: VeleroCluster, location: S3Location, tmp_path: Path
) -> None:
    """`kubectl delete backup`: the location still holds it (Velero's sync brings the object back),
    so its snapshots stay, however many sweeps pass."""
    velero, objects = cluster.velero, cluster.objects
    app(cluster, "cluster-only", tmp_path, 1)
    backup(cluster, "object-only", "cluster-only")
    repo = repository(cluster, location, "cluster-only")
    (snapshot_id,) = repo.snapshot_ids()

    objects.delete(BACKUP, velero.namespace, "object-only")
    seen = sweeps(cluster)
    grace_records: list[str] = []

    def six_more_sweeps() -> bool:
        """Watching the grace records all along: the backup is never even taken for deleted."""
        maps = {c["metadata"]["name"]: c for c in objects.list(CONFIG_MAP, velero.namespace)}
        grace_records.extend(((maps.get("barge-deleted-backups") or {}).get("data") or {}).values())
        return sweeps(cluster) >= seen + 6

    # The grace (5 s) would have ended within six sweeps 2 s apart.
    wait_for(six_more_sweeps, 120, what="six more sweeps of the location")
    assert repo.snapshot_ids() == [snapshot_id]
    assert not [r for r in grace_records if "object-only" in r], grace_records


def test_a_backup_past_its_ttl_is_deleted_by_velero_and_its_snapshots_forgotten(
    cluster: VeleroCluster, location: S3Location, tmp_path: Path
) -> None:
    """Velero's garbage collection (every 5 s here) deletes an expired backup through a
    DeleteBackupRequest, exactly as `velero backup delete` does."""
    velero = cluster.velero
    app(cluster, "short-lived", tmp_path, 1)
    velero.cli("backup", "create", "expires", "--include-namespaces", "short-lived", "--ttl", "45s",
               "--snapshot-move-data", "--data-mover", "barge")  # fmt: skip
    done = velero.wait_phase(BACKUP, "expires", BACKUP_FINAL, timeout=300)
    assert done["status"]["phase"] == "Completed", velero.describe("backup", "expires")
    repo = repository(cluster, location, "short-lived")
    assert len(repo.snapshot_ids()) == 1
    before = _stored(repo)
    velero.wait_gone(BACKUP, "expires", timeout=180)
    wait_for(lambda: not repo.snapshot_ids(), 90, what="the expired backup's snapshot to be forgotten")
    wait_for(lambda: before - _stored(repo) > 0.9 * MIB, 120, what="gc to reclaim the 1 MiB")
    print(f"repository bytes: {before:,} before the TTL expired, {_stored(repo):,} after")


def _stored(repo: Repository) -> int:
    return sum(info.size for info in repo.store.list("data/"))
