"""The objects Velero creates for data movement, shaped exactly as it creates them.

Used by the end-to-end tests and the demo (``make demo``) to play Velero's part: its CSI plugin creates a
DataUpload per volume of a backup; its restore creates the target PVC (pending, with a selector on
``velero.io/dynamic-pv-restore``) and a DataDownload.
"""

from __future__ import annotations

import uuid
from typing import Any

from barge.control.naming import DATAMOVER

Obj = dict[str, Any]


def data_upload(
    *,
    backup: str,
    pvc: str,
    source_namespace: str,
    volume_snapshot: str,
    namespace: str = "velero",
    storage_class: str = "standard",
    snapshot_class: str = "csi-snapclass",
    bsl: str = "default",
    operation_timeout: str = "10m0s",
    datamover: str = DATAMOVER,
) -> Obj:
    """A DataUpload as Velero's CSI plugin creates it: generateName, labels, owner, spec."""
    backup_uid = str(uuid.uuid4())
    return {
        "apiVersion": "velero.io/v2alpha1",
        "kind": "DataUpload",
        "metadata": {
            "generateName": f"{backup}-",
            "namespace": namespace,
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
                "volumeSnapshot": volume_snapshot,
                "storageClass": storage_class,
                "snapshotClass": snapshot_class,
                "driver": "sim.csi.barge.io",
            },
            "sourcePVC": pvc,
            "datamover": datamover,
            "backupStorageLocation": bsl,
            "sourceNamespace": source_namespace,
            "operationTimeout": operation_timeout,
        },
    }


def restore_target_pvc(
    *,
    restore: str,
    name: str,
    namespace: str,
    size: str,
    storage_class: str = "standard",
    block: bool = False,
) -> Obj:
    """The PVC Velero's restore creates for a data-mover volume: unbound, selecting its future PV."""
    selector_value = f"{restore}.{namespace}.{name}"[:63]
    return {
        "apiVersion": "v1",
        "kind": "PersistentVolumeClaim",
        "metadata": {"name": name, "namespace": namespace, "labels": {"velero.io/restore-name": restore}},
        "spec": {
            "accessModes": ["ReadWriteOnce"],
            "storageClassName": storage_class,
            "volumeMode": "Block" if block else "Filesystem",
            "resources": {"requests": {"storage": size}},
            "selector": {"matchLabels": {"velero.io/dynamic-pv-restore": selector_value}},
        },
    }


def data_download(
    *,
    restore: str,
    snapshot_id: str,
    target_pvc: str,
    target_namespace: str,
    source_namespace: str,
    namespace: str = "velero",
    bsl: str = "default",
    operation_timeout: str = "10m0s",
) -> Obj:
    """A DataDownload as Velero's restore creates it."""
    restore_uid = str(uuid.uuid4())
    return {
        "apiVersion": "velero.io/v2alpha1",
        "kind": "DataDownload",
        "metadata": {
            "generateName": f"{restore}-",
            "namespace": namespace,
            "labels": {
                "velero.io/restore-name": restore,
                "velero.io/restore-uid": restore_uid,
                "velero.io/async-operation-id": f"dd-{uuid.uuid4()}",
            },
            "ownerReferences": [
                {
                    "apiVersion": "velero.io/v1",
                    "kind": "Restore",
                    "name": restore,
                    "uid": restore_uid,
                    "controller": True,
                }
            ],
        },
        "spec": {
            "targetVolume": {"pvc": target_pvc, "pv": "", "namespace": target_namespace},
            "backupStorageLocation": bsl,
            "datamover": DATAMOVER,
            "snapshotID": snapshot_id,
            "sourceNamespace": source_namespace,
            "operationTimeout": operation_timeout,
        },
    }
