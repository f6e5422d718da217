"""Builders for the objects Velero and the cluster would create, shaped exactly as they do."""

from __future__ import annotations

import uuid
from typing import Any

VELERO_NS = "velero"


def data_upload(backup: str = "nightly", pvc: str = "data-db-0", source_ns: str = "app") -> dict[str, Any]:
    """A DataUpload as Velero's CSI plugin creates it: generateName, labels, owner, spec."""
    backup_uid = str(uuid.uuid4())
    return {
        "apiVersion": "velero.io/v2alpha1",
        "kind": "DataUpload",
        "metadata": {
            "generateName": f"{backup}-",
            "namespace": VELERO_NS,
            "labels": {
                "velero.io/backup-name": backup,
                "velero.io/backup-uid": backup_uid,
                "velero.io/pvc-uid": str(uuid.uuid4()),
                "velero.io/async-operation-id": f"du-{uuid.uuid4()}",
            },
            "ownerReferences": [
                {
                    "apiVersion": "velero.io/v1",
                    "kind": "Backup",
                    "name": backup,
                    "uid": backup_uid,
                    "controller": True,
                }
            ],
        },
        "spec": {
            "snapshotType": "CSI",
            "csiSnapshot": {
                "volumeSnapshot": f"velero-{pvc}-abcde",
                "storageClass": "standard",
                "snapshotClass": "csi-snapclass",
            },
            "sourcePVC": pvc,
            "datamover": "barge",
            "backupStorageLocation": "default",
            "sourceNamespace": source_ns,
            "operationTimeout": "10m0s",
        },
    }
