"""Builders of ``Observed`` snapshots for the coordinator's pure-logic tests.

Each builder returns a realistic value for one stage of a DataUpload/DataDownload's life; tests
change one thing with ``dataclasses.replace`` so each case shows exactly the condition it is about.
"""

from __future__ import annotations

from dataclasses import replace
from datetime import UTC, datetime, timedelta

from barge.control.messages import AssignmentResult, Outcome, VolumeMode
from barge.control.naming import Fence
from coordinator.config import CoordinatorConfig
from coordinator.model import (
    DATA_DOWNLOAD,
    DATA_UPLOAD,
    AgentView,
    AssignmentView,
    ContentView,
    CrView,
    ExposureView,
    HubState,
    Observed,
    Phase,
    PodPhase,
    PodView,
    PvcView,
    SnapshotState,
    SnapshotView,
)

T0 = datetime(2026, 3, 1, 12, 0, 0, tzinfo=UTC)
NODE = "node-a"
OTHER_NODE = "node-b"


def minutes(n: float) -> timedelta:
    return timedelta(minutes=n)


def upload_cr(**changes: object) -> CrView:
    cr = CrView(
        kind=DATA_UPLOAD,
        namespace="velero",
        name="backup-1-abcde",
        uid="uid-upload-1",
        has_finalizer=True,
        created_at=T0,
        labels=(("velero.io/backup-name", "backup-1"), ("velero.io/backup-uid", "b-uid")),
        backup_storage_location="default",
        source_namespace="app",
        snapshot_type="CSI",
        volume_snapshot="velero-data-abc",
        storage_class="standard",
        snapshot_class="csi-snapclass",
        driver="hostpath.csi.k8s.io",
        source_pvc="data",
    )
    return replace(cr, **changes)  # type: ignore[arg-type]


def download_cr(**changes: object) -> CrView:
    cr = CrView(
        kind=DATA_DOWNLOAD,
        namespace="velero",
        name="restore-1-xyz",
        uid="uid-download-1",
        has_finalizer=True,
        created_at=T0,
        labels=(("velero.io/restore-name", "restore-1"),),
        backup_storage_location="default",
        source_namespace="app",
        snapshot_id="0123abcd",
        target_pvc="data",
        target_namespace="app-restored",
    )
    return replace(cr, **changes)  # type: ignore[arg-type]


READY_SNAPSHOT = SnapshotView(
    SnapshotState.READY,
    content_name="snapcontent-1",
    snapshot_handle="handle-1",
    driver="hostpath.csi.k8s.io",
    restore_size=10 * 2**30,
)
# The source VolumeSnapshotContent READY_SNAPSHOT is bound to (Velero's, deletionPolicy from its class).
SOURCE_CONTENT = ContentView("snapcontent-1", snapshot_handle="handle-1", deletion_policy="Delete")
SOURCE_PVC = PvcView("app", "data", "standard", "10Gi", VolumeMode.FILESYSTEM)
TARGET_PVC = PvcView("app-restored", "data", "standard", "10Gi", VolumeMode.FILESYSTEM)


def running_pod(node: str = NODE, generation: int = 0) -> PodView:
    return PodView(uid="pod-uid-1", phase=PodPhase.RUNNING, node=node, generation=generation)


def exposure(upload: bool = True, pod: PodView | None = None, pv: str = "pv-1") -> ExposureView:
    """A complete exposure; for an upload its clone is ready and holds READY_SNAPSHOT's handle."""
    view = ExposureView(
        snapshot_content=upload,
        snapshot=upload,
        pvc=True,
        pv_name=pv,
        pod=pod or running_pod(),
        disruption_budget=True,
    )
    return replace(view, **clone_fields()) if upload else view


def clone_fields(ready: bool = True) -> dict[str, object]:
    """What ``ExposureView`` says about a clone content made from READY_SNAPSHOT."""
    return {
        "snapshot_handle": READY_SNAPSHOT.snapshot_handle,
        "snapshot_driver": READY_SNAPSHOT.driver,
        "restore_size": READY_SNAPSHOT.restore_size if ready else 0,
        "snapshot_ready": ready,
        "source_content": SOURCE_CONTENT.name,
    }


def agent(node: str = NODE, **changes: object) -> AgentView:
    return replace(AgentView(node=node, connected=True), **changes)  # type: ignore[arg-type]


def observed(cr: CrView, now: datetime = T0, **changes: object) -> Observed:
    """A world where everything the CR needs is in place and healthy."""
    base = Observed(
        now=now,
        cr=cr,
        config=CoordinatorConfig(),
        snapshot=READY_SNAPSHOT if cr.is_upload else SnapshotView(),
        source_pvc=SOURCE_PVC if cr.is_upload else None,
        target_pvc=None if cr.is_upload else TARGET_PVC,
        agents=(agent(NODE), agent(OTHER_NODE)),
        admitted=True,
    )
    return replace(base, **changes)  # type: ignore[arg-type]


def accepted(cr: CrView) -> CrView:
    return replace(cr, phase=Phase.ACCEPTED, accepted_at=T0)


def prepared(cr: CrView, node: str = NODE) -> CrView:
    return replace(accepted(cr), phase=Phase.PREPARED, node=node)


def in_progress(cr: CrView, node: str = NODE, epoch: int = 1) -> CrView:
    return replace(
        accepted(cr), phase=Phase.IN_PROGRESS, node=node, fence=Fence(epoch, node), started_at=T0 + minutes(1)
    )


def running(node: str = NODE, epoch: int = 1, **changes: object) -> AssignmentView:
    view = AssignmentView(
        epoch=epoch, node=node, state=HubState.RUNNING, bytes_done=5, bytes_total=10, progressed_at=T0
    )
    return replace(view, **changes)  # type: ignore[arg-type]


def finished(outcome: Outcome, node: str = NODE, epoch: int = 1, **result: object) -> AssignmentView:
    message = AssignmentResult(
        assignment_id="uid",
        epoch=epoch,
        outcome=outcome,
        **result,  # type: ignore[arg-type]
    )
    return AssignmentView(epoch=epoch, node=node, state=HubState.FINISHED, result=message)
