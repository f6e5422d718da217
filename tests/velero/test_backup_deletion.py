"""Ending a backup while Barge moves its data: `velero backup delete`, and Velero's cancel.

The location's S3 endpoint is a fault proxy that slows only Barge's repository requests, so the
upload is still InProgress when Velero acts, whatever the machine's speed.
"""

from __future__ import annotations

import dataclasses
import uuid
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import urlencode

import pytest

from barge.control.naming import LABEL_MANAGED_BY, MANAGED_BY
from barge.kube.resources import (
    BACKUP,
    DATA_UPLOAD,
    DELETE_BACKUP_REQUEST,
    NAMESPACE,
    PERSISTENT_VOLUME_CLAIM,
    POD,
    VOLUME_SNAPSHOT,
    VOLUME_SNAPSHOT_CONTENT,
)
from barge.repo.repository import Repository, RepositoryNotFound
from barge.storage.url import open_store
from devenv.faultproxy import FaultProxy
from devenv.s3server import S3Endpoint
from devenv.velerocluster import VeleroCluster
from devenv.veleroserver import S3Location, folders
from devenv.waiting import wait_for
from tests.fsbuild import write

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def proxy(s3_server: S3Endpoint) -> Iterator[FaultProxy]:
    with FaultProxy(s3_server.url) as running:
        yield running


@pytest.fixture(scope="module")
def location(s3_server: S3Endpoint, proxy: FaultProxy) -> S3Location:
    endpoint = dataclasses.replace(s3_server, url=proxy.url)
    return S3Location(endpoint, bucket=f"velero-{uuid.uuid4().hex[:8]}", prefix="cluster-b")


def repository(cluster: VeleroCluster, location: S3Location, namespace: str) -> Repository:
    endpoint = location.endpoint
    query = urlencode({"endpoint": endpoint.url, "path_style": "true", "region": endpoint.region})
    url = f"s3://{location.bucket}/{location.prefix}/plugins/barge/{namespace}?{query}"
    return Repository.open(open_store(url), cluster.barge.password.encode())


def app_volume(cluster: VeleroCluster, namespace: str, tmp_path: Path) -> None:
    """A volume whose upload takes a few seconds behind the proxy's delay (40 files, 640 KiB)."""
    cluster.objects.create(NAMESPACE, {"metadata": {"name": namespace}})
    source = tmp_path / namespace
    for index in range(40):
        write(source / f"part{index:02d}.bin", uuid.uuid4().bytes * 1024)
    cluster.sim.provision_claim(namespace, "data", source)


def upload_in_progress(cluster: VeleroCluster, backup_name: str) -> str:
    def found() -> str | None:
        items = cluster.objects.list(
            DATA_UPLOAD, cluster.velero.namespace, f"velero.io/backup-name={backup_name}"
        )
        phases = [(item.get("status") or {}).get("phase") for item in items]
        return items[0]["metadata"]["name"] if phases == ["InProgress"] else None

    return wait_for(found, 120, what=f"the DataUpload of backup {backup_name} to be InProgress")


def nothing_left(cluster: VeleroCluster, storage_before: set[str]) -> None:
    objects, namespace = cluster.objects, cluster.velero.namespace
    selector = f"{LABEL_MANAGED_BY}={MANAGED_BY}"

    def clean() -> bool:
        leftovers = [
            *objects.list(POD, namespace, selector),
            *objects.list(PERSISTENT_VOLUME_CLAIM, namespace, selector),
            *objects.list(VOLUME_SNAPSHOT, None),
            *objects.list(VOLUME_SNAPSHOT_CONTENT, None),
        ]
        return not leftovers and set(cluster.sim.storage_snapshots()) <= storage_before

    wait_for(clean, 60, what="every exposure object, CSI snapshot and storage snapshot to go")


def test_velero_refuses_to_delete_a_backup_still_moving_data_and_deletes_it_after(
    cluster: VeleroCluster, proxy: FaultProxy, tmp_path: Path
) -> None:
    """Velero keeps a backup in its tracker until the finalizer ends (backup_deletion_controller.go:
    "backup is still in progress"), so a delete during data movement is refused and the upload
    completes; once done, the delete removes the backup, its DataUploads and its folder."""
    velero, objects = cluster.velero, cluster.objects
    app_volume(cluster, "orders", tmp_path)
    storage_before = set(cluster.sim.storage_snapshots())
    proxy.plan.delay(0.3, path_contains="/plugins/barge/")
    try:
        velero.cli("backup", "create", "busy", "--include-namespaces", "orders",
                   "--snapshot-move-data", "--data-mover", "barge")  # fmt: skip
        upload = upload_in_progress(cluster, "busy")
        velero.cli("backup", "delete", "busy", "--confirm")

        def refused() -> str | None:
            requests = objects.list(DELETE_BACKUP_REQUEST, velero.namespace)
            errors = [e for r in requests for e in (r.get("status") or {}).get("errors") or []]
            return "; ".join(errors) or None

        assert "backup is still in progress" in wait_for(refused, 60, what="Velero to answer the delete")
    finally:
        proxy.plan.clear()
    done = velero.wait_phase(BACKUP, "busy", ("Completed", "PartiallyFailed", "Failed"), timeout=180)
    assert done["status"]["phase"] == "Completed", velero.describe("backup", "busy")
    assert cluster.barge.get("DataUpload", upload)["status"]["phase"] == "Completed"

    velero.cli("backup", "delete", "busy", "--confirm")
    velero.wait_gone(BACKUP, "busy", timeout=120)
    cluster.barge.wait_gone("DataUpload", upload, timeout=60)
    nothing_left(cluster, storage_before)
    assert "busy/" not in folders(velero.location, cluster.workdir, "backups")


def test_velero_cancels_an_upload_past_its_operation_timeout_and_nothing_is_left(
    cluster: VeleroCluster, proxy: FaultProxy, location: S3Location, tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:  # fmt: skip
    """Velero cancels an async operation past `--item-operation-timeout` by setting the DataUpload's
    spec.cancel; Barge stops, cleans up and writes no snapshot."""
    velero = cluster.velero
    app_volume(cluster, "ledger", tmp_path)
    storage_before = set(cluster.sim.storage_snapshots())
    proxy.plan.delay(3.0, path_contains="/plugins/barge/")
    try:
        velero.cli("backup", "create", "too-slow", "--include-namespaces", "ledger", "--snapshot-move-data",
                   "--data-mover", "barge", "--item-operation-timeout", "10s")  # fmt: skip
        upload = upload_in_progress(cluster, "too-slow")
        done = velero.wait_phase(BACKUP, "too-slow", ("Completed", "PartiallyFailed", "Failed"), timeout=180)
        status = cluster.barge.wait_phase("DataUpload", upload, timeout=120)["status"]
    finally:
        proxy.plan.clear()
    assert done["status"]["phase"] == "PartiallyFailed", velero.describe("backup", "too-slow")
    assert status["phase"] == "Canceled", status
    nothing_left(cluster, storage_before)
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", location.endpoint.access_key)
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", location.endpoint.secret_key)
    try:
        snapshots = repository(cluster, location, "ledger").snapshot_ids()
    except RepositoryNotFound:  # canceled before the agent first opened the repository
        snapshots = []
    assert snapshots == []
