"""Parsing API objects into the coordinator's views, and rendering status patches."""

from __future__ import annotations

from datetime import timedelta

import pytest

from barge.control.messages import VolumeMode
from barge.control.naming import Fence
from barge.errors import InvalidInput
from coordinator.model import (
    CrView,
    Phase,
    PodPhase,
    PodView,
    PvcView,
    SetPhase,
    SnapshotState,
    SnapshotView,
    format_timestamp,
    parse_timestamp,
)
from tests.coordinator_world import T0

DATA_UPLOAD = {
    "apiVersion": "velero.io/v2alpha1",
    "kind": "DataUpload",
    "metadata": {
        "namespace": "velero",
        "name": "b1-x",
        "uid": "u1",
        "creationTimestamp": "2026-03-01T12:00:00Z",
        "finalizers": ["velero.io/data-upload-download-finalizer"],
        "labels": {"velero.io/backup-name": "b1"},
        "annotations": {
            "barge.io/assignment": "3:node-a",
            "barge.io/reexposures": "2",
            "barge.io/reexposed-at": "2026-03-01T12:05:00Z",
        },
    },
    "spec": {
        "datamover": "barge",
        "snapshotType": "CSI",
        "backupStorageLocation": "default",
        "sourceNamespace": "app",
        "sourcePVC": "data",
        "operationTimeout": "10m0s",
        "csiSnapshot": {"volumeSnapshot": "vs", "storageClass": "sc", "snapshotClass": "vsc", "driver": "d"},
        "dataMoverConfig": {"k": "v"},
    },
    "status": {
        "phase": "InProgress",
        "acceptedTimestamp": "2026-03-01T12:01:00Z",
        "startTimestamp": "2026-03-01T12:02:00Z",
        "node": "node-a",
        "progress": {"bytesDone": 5, "totalBytes": 9},
    },
}


def test_data_upload_parses() -> None:
    cr = CrView.from_object(DATA_UPLOAD)
    assert (cr.kind, cr.namespace, cr.name, cr.uid, cr.datamover) == (
        "DataUpload",
        "velero",
        "b1-x",
        "u1",
        "barge",
    )
    assert cr.phase is Phase.IN_PROGRESS
    assert cr.has_finalizer
    assert not cr.deleting
    assert not cr.cancel
    assert cr.created_at == T0
    assert cr.operation_timeout == timedelta(minutes=10)
    assert cr.operation_timeout_problem == ""
    assert cr.accepted_at == T0 + timedelta(minutes=1)
    assert cr.started_at == T0 + timedelta(minutes=2)
    assert cr.fence == Fence(3, "node-a")
    assert (cr.reexposures, cr.reexposed_at) == (2, T0 + timedelta(minutes=5))
    assert cr.prepare_started_at == T0 + timedelta(minutes=5)
    assert cr.group == "b1"
    assert (cr.volume_snapshot, cr.storage_class, cr.snapshot_class, cr.driver) == ("vs", "sc", "vsc", "d")
    assert cr.data_mover_config == (("k", "v"),)
    assert (cr.bytes_done, cr.bytes_total) == (5, 9)


def test_data_download_parses_and_list_items_take_the_kind() -> None:
    item = {
        "metadata": {
            "namespace": "velero",
            "name": "r1",
            "uid": "u2",
            "labels": {"velero.io/restore-name": "r"},
        },
        "spec": {
            "datamover": "barge",
            "snapshotID": "abc",
            "targetVolume": {"pvc": "data", "pv": "", "namespace": "app2"},
            "cancel": True,
        },
    }
    cr = CrView.from_object(item, kind="DataDownload")
    assert cr.kind == "DataDownload"
    assert not cr.is_upload
    assert cr.phase is Phase.NEW
    assert cr.cancel
    assert (cr.snapshot_id, cr.target_pvc, cr.target_namespace) == ("abc", "data", "app2")
    assert cr.group == "r"
    assert cr.fence is None


def test_bad_operation_timeout_and_fence_are_tolerated() -> None:
    obj = {
        "kind": "DataUpload",
        "metadata": {
            "annotations": {"barge.io/assignment": "garbage"},
            "deletionTimestamp": "2026-03-01T12:00:00Z",
        },
        "spec": {"operationTimeout": "-5m"},
    }
    cr = CrView.from_object(obj)
    assert cr.operation_timeout == timedelta(hours=4)
    assert cr.operation_timeout_problem.startswith("spec.operationTimeout: '-5m' is not a duration")
    assert cr.fence is None
    assert cr.deleting
    zero = CrView.from_object({"kind": "DataUpload", "spec": {"operationTimeout": "0s"}})
    assert (
        zero.operation_timeout_problem
        == "spec.operationTimeout '0s' is not positive; using the default 4h0m0s"
    )


def test_unknown_phase_is_invalid_input() -> None:
    with pytest.raises(InvalidInput, match=r"status\.phase 'Paused' is not a Velero data-mover phase"):
        CrView.from_object({"kind": "DataUpload", "status": {"phase": "Paused"}})


def test_timestamps() -> None:
    assert parse_timestamp("2026-03-01T12:00:00Z") == T0
    assert parse_timestamp(None) is None
    assert format_timestamp(T0) == "2026-03-01T12:00:00Z"
    with pytest.raises(InvalidInput, match="not an RFC 3339 timestamp"):
        parse_timestamp("yesterday")


def test_pod_view() -> None:
    pod = PodView.from_object(
        {
            "metadata": {
                "uid": "p",
                "labels": {"barge.io/exposure-generation": "2"},
                "deletionTimestamp": "x",
            },
            "spec": {"nodeName": "n1"},
            "status": {"phase": "Failed", "reason": "Evicted", "message": "low memory"},
        }
    )
    assert pod == PodView(
        "p", PodPhase.FAILED, "n1", deleting=True, generation=2, reason="Evicted: low memory"
    )
    assert PodView.from_object({"metadata": {}}).phase is PodPhase.PENDING


def test_snapshot_view_states() -> None:
    assert SnapshotView.from_objects(None, None).state is SnapshotState.ABSENT
    pending = {"status": {"readyToUse": False, "boundVolumeSnapshotContentName": "c"}}
    assert SnapshotView.from_objects(pending, None).state is SnapshotState.PENDING
    failed = {"status": {"error": {"message": "boom"}}}
    assert SnapshotView.from_objects(failed, None) == SnapshotView(SnapshotState.ERROR, error="boom")
    ready = {"status": {"readyToUse": True, "boundVolumeSnapshotContentName": "c"}}
    content = {"spec": {"driver": "d"}, "status": {"snapshotHandle": "h", "restoreSize": 1024}}
    assert SnapshotView.from_objects(ready, content) == SnapshotView(SnapshotState.READY, "c", "h", "d", 1024)
    assert SnapshotView.from_objects(ready, None).state is SnapshotState.PENDING


def test_pvc_view() -> None:
    pvc = PvcView.from_object(
        {
            "metadata": {
                "namespace": "a",
                "name": "p",
                "annotations": {"volume.kubernetes.io/selected-node": "n"},
            },
            "spec": {
                "storageClassName": "sc",
                "volumeMode": "Block",
                "accessModes": ["ReadWriteOncePod"],
                "resources": {"requests": {"storage": "5Gi"}},
                "volumeName": "pv-9",
            },
        },
        wait_for_first_consumer=True,
    )
    assert pvc == PvcView("a", "p", "sc", "5Gi", VolumeMode.BLOCK, ("ReadWriteOncePod",), "pv-9", "n", True)


def test_status_patch_nests_dotted_fields_and_maps() -> None:
    step = SetPhase(
        Phase.COMPLETED,
        "done",
        (("progress.bytesDone", 3), ("dataMoverResult", (("a", "b"),)), ("node", None)),
    )
    assert step.status_patch() == {
        "status": {
            "phase": "Completed",
            "message": "done",
            "progress": {"bytesDone": 3},
            "dataMoverResult": {"a": "b"},
            "node": None,
        }
    }
