"""What a user does with the `velero` CLI, and what the tests read back, shared by the tier."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from barge.kube.resources import BACKUP, DATA_UPLOAD, PERSISTENT_VOLUME_CLAIM, RESTORE
from devenv.simsnapshots import copy_volume_data
from devenv.velerocluster import VeleroCluster
from devenv.waiting import wait_for
from tests.fsbuild import MIB, sparse_file

APP = "shop"
BACKUP_FINAL = ("Completed", "PartiallyFailed", "Failed", "FailedValidation")
RESTORE_FINAL = ("Completed", "PartiallyFailed", "Failed", "FailedValidation")


def backup(cluster: VeleroCluster, name: str, namespace: str = APP) -> dict[str, Any]:
    """`velero backup create` with Barge as the data mover; the Backup once Velero finished it."""
    velero = cluster.velero
    velero.cli("backup", "create", name, "--include-namespaces", namespace,
               "--snapshot-move-data", "--data-mover", "barge")  # fmt: skip
    done = velero.wait_phase(BACKUP, name, BACKUP_FINAL, timeout=300)
    assert done["status"]["phase"] == "Completed", velero.describe("backup", name)
    return done


def restore(cluster: VeleroCluster, name: str, backup_name: str) -> dict[str, Any]:
    velero = cluster.velero
    velero.cli("restore", "create", name, "--from-backup", backup_name)
    done = velero.wait_phase(RESTORE, name, RESTORE_FINAL, timeout=300)
    assert done["status"]["phase"] == "Completed", velero.describe("restore", name)
    return done


def uploads(cluster: VeleroCluster, backup_name: str) -> dict[str, dict[str, Any]]:
    """The DataUploads Velero created for a backup, by source PVC."""
    items = cluster.objects.list(
        DATA_UPLOAD, cluster.velero.namespace, f"velero.io/backup-name={backup_name}"
    )
    return {item["spec"]["sourcePVC"]: item for item in items}


def snapshot_of(live: Path, into: Path) -> Path:
    """A copy of a live volume as it is now, to compare a restore against."""
    copy_volume_data(live, into, live.is_file())
    return into


def block_image(path: Path) -> Path:
    return sparse_file(path, 32 * MIB, {0: b"boot", 5 * MIB: os.urandom(MIB), 31 * MIB: os.urandom(4096)})


def delete_claims(cluster: VeleroCluster, namespace: str, names: tuple[str, ...]) -> None:
    for name in names:
        cluster.objects.delete(PERSISTENT_VOLUME_CLAIM, namespace, name)

    def gone() -> bool:
        return not any(
            pvc["metadata"]["name"] in names
            for pvc in cluster.objects.list(PERSISTENT_VOLUME_CLAIM, namespace)
        )

    wait_for(gone, 60, what=f"PVCs {names} in {namespace} to be deleted")
