"""Disaster recovery: a fresh cluster with its own Velero and Barge restores from the same location.

The first cluster backs up with the repository password Barge generated, and is torn down
entirely. The second one knows only the location (the BSL and its credentials) and the password
the operator saved from the first one's Secret and put into the new cluster's before Barge started;
Velero's backup sync finds the backup in the bucket, and `velero restore create` restores it
through Barge, bit-exact. Nothing either cluster shows (CR statuses, Events, Barge's logs, the
`velero` CLI's descriptions) holds the S3 secret key or the password, and no agent's cache holds a
credential.
"""

from __future__ import annotations

import base64
import uuid
from pathlib import Path

import pytest

from barge.kube.resources import BACKUP, NAMESPACE, SECRET
from barge.velero.password import DEFAULT_PASSWORD_SECRET, VELERO_DEFAULT_PASSWORD
from devenv.s3server import S3Endpoint
from devenv.trees import capture
from devenv.velerocluster import VeleroCluster, velero_cluster
from devenv.veleroserver import S3Location
from devenv.waiting import wait_for
from tests.fsbuild import awkward_tree
from tests.secretscan import cluster_outputs, file_contents, leaks, log_outputs
from tests.velero.conftest import print_logs
from tests.velero.flows import backup, block_image, restore

pytestmark = pytest.mark.integration


def saved_password(cluster: VeleroCluster) -> str:
    """What the operator saves (chart NOTES): the generated Secret's value."""
    secret = cluster.objects.get(SECRET, cluster.velero.namespace, DEFAULT_PASSWORD_SECRET.name)
    return base64.b64decode(secret["data"][DEFAULT_PASSWORD_SECRET.key]).decode()


def outputs(cluster: VeleroCluster, *descriptions: str) -> dict[str, str]:
    """What this cluster shows, by where (each key names the cluster's workdir)."""
    shown = cluster_outputs(cluster.objects, (cluster.velero.namespace, "erp"))
    shown |= {f"velero CLI {index}": text for index, text in enumerate(descriptions)}
    return {f"{cluster.workdir.name}: {where}": text for where, text in shown.items()} | log_outputs(
        cluster.barge.workdir
    )


def agent_caches(cluster: VeleroCluster) -> dict[str, str]:
    return file_contents(*(cluster.barge.workdir / "agents" / node / "cache" for node in cluster.barge.nodes))


def test_a_new_cluster_restores_a_backup_it_finds_in_the_location(
    s3_server: S3Endpoint, tmp_path: Path
) -> None:
    location = S3Location(s3_server, bucket=f"dr-{uuid.uuid4().hex[:8]}", prefix="prod")
    secrets = [s3_server.secret_key]
    try:
        with velero_cluster(tmp_path / "lost", location) as lost:
            lost.objects.create(NAMESPACE, {"metadata": {"name": "erp"}})
            live_fs = lost.sim.provision_claim("erp", "db", awkward_tree(tmp_path / "fs"))
            live_block = lost.sim.provision_claim(
                "erp", "disk", block_image(tmp_path / "disk.img"), block=True
            )
            expected_fs, expected_block = capture(live_fs), live_block.read_bytes()
            backup(lost, "before-the-fire", "erp")
            password = saved_password(lost)
            assert password.encode() != VELERO_DEFAULT_PASSWORD
            assert len(password) >= 43
            secrets.append(password)
            shown_before = outputs(lost, lost.velero.describe("backup", "before-the-fire"))
            cached_before = agent_caches(lost)

        with velero_cluster(tmp_path / "new", location, password=password) as new:
            assert saved_password(new) == password  # supplied before Barge started: kept, not replaced
            new.velero.wait_phase(BACKUP, "before-the-fire", ("Completed",), timeout=120)  # backup sync
            restore(new, "after-the-fire", "before-the-fire")
            new.barge.wait_pvc_bound("erp", "db")
            new.barge.wait_pvc_bound("erp", "disk")
            restored = capture(new.sim.claim_data("erp", "db"))
            restored.pop(b"lost+found", None)
            assert restored == expected_fs
            assert new.sim.claim_data("erp", "disk").read_bytes() == expected_block
            wait_for(lambda: new.velero.bsl_status().get("phase") == "Available", 30, what="BSL Available")
            shown_after = outputs(new, new.velero.describe("restore", "after-the-fire"))
            cached_after = agent_caches(new)
        assert any(": DataDownload velero/" in where for where in shown_after)
        assert leaks(shown_before | shown_after, secrets) == []
        assert leaks(cached_before | cached_after, [*secrets, "aws_secret_access_key"]) == []
    finally:
        print_logs(tmp_path)
