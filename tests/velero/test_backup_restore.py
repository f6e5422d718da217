"""Velero backs up and restores volumes through Barge, driven only by the `velero` CLI."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from barge.kube.resources import DATA_DOWNLOAD, NAMESPACE, VOLUME_SNAPSHOT, VOLUME_SNAPSHOT_CONTENT
from devenv.trees import capture
from devenv.velerocluster import VeleroCluster
from devenv.waiting import wait_for
from tests.fsbuild import MIB, awkward_tree
from tests.velero.flows import APP, backup, block_image, delete_claims, restore, snapshot_of, uploads

pytestmark = pytest.mark.integration


def test_backup_incremental_backup_and_restore_through_velero(cluster: VeleroCluster, tmp_path: Path) -> None:
    sim, objects, velero = cluster.sim, cluster.objects, cluster.velero
    objects.create(NAMESPACE, {"metadata": {"name": APP}})
    live_fs = sim.provision_claim(APP, "data", awkward_tree(tmp_path / "fs-source"))
    live_block = sim.provision_claim(APP, "raw", block_image(tmp_path / "raw.img"), block=True)

    # 1. A full backup: Velero creates a DataUpload per PVC; Barge completes both.
    backup(cluster, "first")
    first = uploads(cluster, "first")
    assert set(first) == {"data", "raw"}
    for pvc, upload in first.items():
        status = upload["status"]
        assert status["phase"] == "Completed", (pvc, status)
        assert len(status["snapshotID"]) == 64
        assert upload["spec"]["datamover"] == "barge"
    details = velero.describe("backup", "first")
    for upload in first.values():
        assert upload["metadata"]["name"] in details, details

    # 2. A little changed data: the next backup reuses the parent and sends little.
    (live_fs / "plain.txt").write_bytes(b"changed after the first backup\n")
    shutil.rmtree(live_fs / "deep")
    with live_block.open("r+b") as image:
        image.seek(5 * MIB)
        image.write(b"\xff" * 4096)
    expected_fs = capture(snapshot_of(live_fs, tmp_path / "expected-fs"))
    expected_block = live_block.read_bytes()
    backup(cluster, "second")
    second = uploads(cluster, "second")
    assert set(second) == {"data", "raw"}
    for pvc, upload in second.items():
        status = upload["status"]
        assert status["phase"] == "Completed", (pvc, status)
        new, total = int(status["incrementalBytes"]), int(status["progress"]["totalBytes"])
        assert new < total / 4, f"{pvc}: {new} new of {total} bytes: the parent was not reused"
        assert status["snapshotID"] != first[pvc]["status"]["snapshotID"]

    # 3. The volumes are lost; Velero restores them through Barge, bit-exact.
    delete_claims(cluster, APP, ("data", "raw"))
    restore(cluster, "after-loss", "second")
    downloads = objects.list(DATA_DOWNLOAD, velero.namespace, "velero.io/restore-name=after-loss")
    assert sorted(d["spec"]["targetVolume"]["pvc"] for d in downloads) == ["data", "raw"]
    assert all(d["status"]["phase"] == "Completed" for d in downloads)
    cluster.barge.wait_pvc_bound(APP, "data")
    cluster.barge.wait_pvc_bound(APP, "raw")
    restored = capture(sim.claim_data(APP, "data"))
    restored.pop(b"lost+found", None)
    assert restored == expected_fs
    assert sim.claim_data(APP, "raw").read_bytes() == expected_block


def test_the_backup_location_stays_available_after_barge_wrote_to_it(
    cluster: VeleroCluster, tmp_path: Path
) -> None:
    """Velero validates the top level of the location every 3 s here and marks it Unavailable for
    a folder it does not know: Barge's repository must not be one."""
    velero = cluster.velero
    cluster.objects.create(NAMESPACE, {"metadata": {"name": "inventory"}})
    cluster.sim.provision_claim("inventory", "data", awkward_tree(tmp_path / "tree"))
    backup(cluster, "layout-check", "inventory")
    validations: set[str] = set()

    def validated_three_more_times() -> bool:
        status = velero.bsl_status()
        assert status.get("phase") != "Unavailable", status
        if status.get("phase") == "Available":
            validations.add(str(status.get("lastValidationTime")))
        return len(validations) >= 4

    wait_for(validated_three_more_times, 60, what="three more validations of the backup location")


def test_nothing_of_a_backup_is_left_on_the_storage_system(cluster: VeleroCluster, tmp_path: Path) -> None:
    """Velero leaves the VolumeSnapshots it takes to the data mover (it never deletes them for a
    custom mover): Barge removes them, and with its clone the storage snapshot, as Velero's own
    mover does. The data lives on in the repository."""
    objects, sim = cluster.objects, cluster.sim
    objects.create(NAMESPACE, {"metadata": {"name": "billing"}})
    sim.provision_claim("billing", "data", awkward_tree(tmp_path / "tree"))
    sim.provision_claim("billing", "raw", block_image(tmp_path / "raw.img"), block=True)
    before = set(sim.storage_snapshots())
    backup(cluster, "tidy", "billing")
    assert {pvc: u["status"]["phase"] for pvc, u in uploads(cluster, "tidy").items()} == {
        "data": "Completed",
        "raw": "Completed",
    }

    def nothing_left() -> bool:
        snapshots = objects.list(VOLUME_SNAPSHOT, "billing") + objects.list(VOLUME_SNAPSHOT, "velero")
        contents = objects.list(VOLUME_SNAPSHOT_CONTENT, None)
        return not snapshots and not contents and set(sim.storage_snapshots()) <= before

    wait_for(nothing_left, 60, what="no VolumeSnapshot, content or storage snapshot left by the backup")
