"""Disaster recovery: a fresh cluster with its own Velero and Barge restores from the same location.

The first cluster backs up and is torn down entirely. The second one knows only the location (the
BSL and its credentials) and the repository password the operator saved; Velero's backup sync
finds the backup in the bucket, and `velero restore create` restores it through Barge, bit-exact.
"""

from __future__ import annotations

import uuid
from pathlib import Path

import pytest

from barge.kube.resources import BACKUP, NAMESPACE
from devenv.s3server import S3Endpoint
from devenv.trees import capture
from devenv.velerocluster import velero_cluster
from devenv.veleroserver import S3Location
from devenv.waiting import wait_for
from tests.fsbuild import awkward_tree
from tests.velero.conftest import print_logs
from tests.velero.flows import backup, block_image, restore

pytestmark = pytest.mark.integration


def test_a_new_cluster_restores_a_backup_it_finds_in_the_location(
    s3_server: S3Endpoint, tmp_path: Path
) -> None:
    location = S3Location(s3_server, bucket=f"dr-{uuid.uuid4().hex[:8]}", prefix="prod")
    try:
        with velero_cluster(tmp_path / "lost", location) as lost:
            lost.objects.create(NAMESPACE, {"metadata": {"name": "erp"}})
            live_fs = lost.sim.provision_claim("erp", "db", awkward_tree(tmp_path / "fs"))
            live_block = lost.sim.provision_claim(
                "erp", "disk", block_image(tmp_path / "disk.img"), block=True
            )
            expected_fs, expected_block = capture(live_fs), live_block.read_bytes()
            backup(lost, "before-the-fire", "erp")
            saved_password = lost.barge.password  # what the operator keeps (operator guide)

        with velero_cluster(tmp_path / "new", location, password=saved_password) as new:
            new.velero.wait_phase(BACKUP, "before-the-fire", ("Completed",), timeout=120)  # backup sync
            restore(new, "after-the-fire", "before-the-fire")
            new.barge.wait_pvc_bound("erp", "db")
            new.barge.wait_pvc_bound("erp", "disk")
            restored = capture(new.sim.claim_data("erp", "db"))
            restored.pop(b"lost+found", None)
            assert restored == expected_fs
            assert new.sim.claim_data("erp", "disk").read_bytes() == expected_block
            wait_for(lambda: new.velero.bsl_status().get("phase") == "Available", 30, what="BSL Available")
    finally:
        print_logs(tmp_path)
