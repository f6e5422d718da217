"""The phase machine: one test per row of docs/phase-machine.md (named ``test_<row>``), plus
hypothesis properties over arbitrary observations."""

from __future__ import annotations

import re
import sys
from dataclasses import replace
from datetime import timedelta
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from barge.control.messages import AssignmentKind, Outcome, RunningAssignment, VolumeMode
from barge.control.naming import ASSIGNMENT_ANNOTATION, Fence
from coordinator.config import CoordinatorConfig
from coordinator.decide import (
    AGENT_WRITE_GRACE,
    CONTENT_FOLLOW_GRACE,
    MAX_WAIT,
    READOPT_GRACE,
    claim_problem,
    decide,
)
from coordinator.exposer import plan_exposure
from coordinator.model import (
    ACCEPTED_AT_ANNOTATION,
    Action,
    AgentView,
    Assign,
    AssignmentView,
    BindRestoredVolume,
    ContentView,
    CreateExposure,
    CrView,
    DeleteExposure,
    DeleteSourceSnapshot,
    ExposureView,
    HubState,
    MarkReexposure,
    Observed,
    Phase,
    PodPhase,
    PodView,
    RecordEvent,
    ReleaseSourceSnapshot,
    RemoveFinalizer,
    Requeue,
    RevokeAssignment,
    SetPhase,
    SnapshotState,
    SnapshotView,
    StopAssignment,
)
from tests.coordinator_world import (
    NODE,
    OTHER_NODE,
    READY_SNAPSHOT,
    SOURCE_CONTENT,
    T0,
    TARGET_PVC,
    accepted,
    agent,
    clone_fields,
    download_cr,
    exposure,
    finished,
    in_progress,
    minutes,
    observed,
    prepared,
    running,
    running_pod,
    upload_cr,
)

PHASE_MACHINE = Path(__file__).parents[2] / "docs" / "phase-machine.md"


def set_phase(actions: tuple[Action, ...]) -> SetPhase | None:
    found = [a for a in actions if isinstance(a, SetPhase)]
    assert len(found) <= 1
    return found[0] if found else None


def phase_after(actions: tuple[Action, ...]) -> Phase | None:
    step = set_phase(actions)
    return step.phase if step else None


def of_type(actions: tuple[Action, ...], kind: type) -> list[Action]:
    return [a for a in actions if isinstance(a, kind)]


def only_waits(actions: tuple[Action, ...]) -> bool:
    return len(actions) == 1 and isinstance(actions[0], Requeue)


def assert_reexposed(actions: tuple[Action, ...], count: int = 1) -> None:
    step = set_phase(actions)
    assert step is not None
    assert step.phase is Phase.ACCEPTED
    assert ("node", "") in step.fields
    # The pod and PVC go; the clone snapshot stays (after the release it alone holds the data).
    assert [delete.snapshot for delete in of_type(actions, DeleteExposure)] == [False]  # type: ignore[attr-defined]
    assert [mark.count for mark in of_type(actions, MarkReexposure)] == [count]  # type: ignore[attr-defined]


def assert_cleaned_up(actions: tuple[Action, ...]) -> None:
    assert of_type(actions, DeleteExposure)


def test_every_row_of_the_table_has_its_test() -> None:
    rows = re.findall(r"^\| ([a-z_]+) \|", PHASE_MACHINE.read_text(), flags=re.MULTILINE)[1:]  # [0]: header
    assert len(rows) > 40
    tests = {name for name in dir(sys.modules[__name__]) if name.startswith("test_")}
    assert [row for row in rows if f"test_{row}" not in tests] == []


def test_ignores_other_datamovers() -> None:
    for phase in Phase:
        cr = replace(upload_cr(), datamover="velero", phase=phase, cancel=True, deleting=True)
        assert decide(observed(cr)) == ()


# ---------------------------------------------------------------------------------------------- New


def test_new_cancel_goes_straight_to_canceled() -> None:
    actions = decide(observed(upload_cr(cancel=True, has_finalizer=False)))
    step = set_phase(actions)
    assert step is not None
    assert step.phase is Phase.CANCELED
    assert step.message == "canceled by spec.cancel in phase New"
    assert ("completionTimestamp", "2026-03-01T12:00:00Z") in step.fields
    assert not step.add_finalizer
    # Nothing cloned it: the source VolumeSnapshot goes, its content following its own policy.
    assert actions[-1] == DeleteSourceSnapshot("app", "velero-data-abc")


@pytest.mark.parametrize(
    ("cr", "message"),
    [
        (
            upload_cr(snapshot_type="fs-backup"),
            "spec.snapshotType is 'fs-backup': Barge moves CSI snapshot data only",
        ),
        (upload_cr(volume_snapshot=""), "spec.csiSnapshot.volumeSnapshot is empty"),
        (upload_cr(backup_storage_location=""), "spec.backupStorageLocation is empty"),
        (upload_cr(source_namespace=""), "spec.sourceNamespace is empty"),
        (
            upload_cr(data_mover_config=(("barge.io/on-unreadable", "ignore"),)),
            "spec.dataMoverConfig barge.io/on-unreadable='ignore': use 'fail' or 'skip'",
        ),
        (download_cr(target_pvc=""), "spec.targetVolume.pvc is empty: name the PVC to restore into"),
        (download_cr(target_namespace=""), "spec.targetVolume.namespace is empty"),
        (download_cr(snapshot_id=""), "spec.snapshotID is empty"),
    ],
)
def test_new_bad_spec_fails(cr: CrView, message: str) -> None:
    actions = decide(observed(cr))
    step = set_phase(actions)
    assert step is not None
    assert step.phase is Phase.FAILED
    assert step.message.startswith(message)
    assert RecordEvent("Warning", "Failed", step.message) in actions


def test_new_snapshot_error_fails() -> None:
    broken = SnapshotView(SnapshotState.ERROR, error="snapshot controller: quota exceeded")
    step = set_phase(decide(observed(upload_cr(), snapshot=broken)))
    assert step is not None
    assert step.phase is Phase.FAILED
    assert step.message == "VolumeSnapshot app/velero-data-abc failed: snapshot controller: quota exceeded"


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"snapshot": SnapshotView()}, "VolumeSnapshot app/velero-data-abc not found"),
        ({"bsl_present": False}, "BackupStorageLocation velero/default not found"),
    ],
)
def test_new_missing_object_fails_after_grace(changes: dict[str, object], message: str) -> None:
    step = set_phase(decide(observed(upload_cr(), now=T0 + timedelta(seconds=30), **changes)))
    assert step is not None
    assert step.phase is Phase.FAILED
    assert step.message.startswith(message)


def test_new_missing_object_waits_within_grace() -> None:
    actions = decide(observed(upload_cr(), now=T0 + timedelta(seconds=29), snapshot=SnapshotView()))
    assert phase_after(actions) is Phase.ACCEPTED  # accepted; Accepted keeps checking
    later = observed(accepted(upload_cr()), now=T0 + timedelta(seconds=10), snapshot=SnapshotView())
    assert only_waits(decide(later))


def test_new_not_admitted_waits() -> None:
    assert decide(observed(upload_cr(), admitted=False)) == (Requeue(MAX_WAIT),)


def test_new_admitted_adds_finalizer_and_accepts() -> None:
    actions = decide(observed(upload_cr(has_finalizer=False), coordinator_id="barge-coordinator-0"))
    assert actions == (
        SetPhase(
            Phase.ACCEPTED,
            "",
            (("acceptedByNode", "barge-coordinator-0"), ("acceptedTimestamp", "2026-03-01T12:00:00Z")),
            add_finalizer=True,
            annotations=((ACCEPTED_AT_ANNOTATION, "2026-03-01T12:00:00Z"),),
        ),
    )
    (again,) = decide(observed(upload_cr(has_finalizer=True)))
    assert isinstance(again, SetPhase)
    assert not again.add_finalizer


def test_new_bad_operation_timeout_is_reported_and_defaulted() -> None:
    cr = CrView.from_object(
        {
            "kind": "DataUpload",
            "metadata": {"namespace": "velero", "name": "x", "uid": "u"},
            "spec": {
                "datamover": "barge",
                "operationTimeout": "ten minutes",
                "snapshotType": "CSI",
                "backupStorageLocation": "default",
                "sourceNamespace": "app",
                "csiSnapshot": {"volumeSnapshot": "vs"},
            },
        }
    )
    assert cr.operation_timeout == timedelta(hours=4)
    actions = decide(observed(cr))
    assert phase_after(actions) is Phase.ACCEPTED
    (event,) = of_type(actions, RecordEvent)
    assert event == RecordEvent(
        "Warning",
        "InvalidOperationTimeout",
        "spec.operationTimeout: 'ten minutes' is not a duration like '10m0s', '1h30m' or '4h'; "
        "using the default 4h0m0s",
    )


# ---------------------------------------------------------------------------------------- Accepted


def test_accepted_cancel_cleans_up_and_cancels() -> None:
    actions = decide(observed(accepted(upload_cr(cancel=True)), exposure=exposure()))
    assert phase_after(actions) is Phase.CANCELED
    assert_cleaned_up(actions)


def test_accepted_snapshot_error_fails() -> None:
    broken = SnapshotView(SnapshotState.ERROR, error="driver error")
    actions = decide(observed(accepted(upload_cr()), snapshot=broken))
    assert phase_after(actions) is Phase.FAILED


def test_accepted_waits_for_snapshot() -> None:
    pending = SnapshotView(SnapshotState.PENDING)
    actions = decide(observed(accepted(upload_cr()), now=T0 + minutes(1), snapshot=pending))
    assert actions == (Requeue(MAX_WAIT),)


def test_accepted_creates_exposure_when_snapshot_ready() -> None:
    world = observed(accepted(upload_cr()))
    actions = decide(world)
    assert actions == (CreateExposure(plan_exposure(world)), Requeue(MAX_WAIT))
    partial = ExposureView(snapshot_content=True, snapshot=True)
    assert of_type(decide(replace(world, exposure=partial)), CreateExposure)  # creating is idempotent
    download = observed(accepted(download_cr()))
    assert of_type(decide(download), CreateExposure)


def test_accepted_download_waits_for_target_pvc() -> None:
    actions = decide(observed(accepted(download_cr()), now=T0 + minutes(5), target_pvc=None))
    assert only_waits(actions)


def test_accepted_download_waits_for_first_consumer() -> None:
    lazy = replace(TARGET_PVC, wait_for_first_consumer=True)
    assert only_waits(decide(observed(accepted(download_cr()), target_pvc=lazy)))
    consumed = replace(lazy, selected_node=NODE)
    assert of_type(decide(observed(accepted(download_cr()), target_pvc=consumed)), CreateExposure)
    config = CoordinatorConfig.from_dict({"restorePVC": {"ignoreDelayBinding": True}})
    assert of_type(decide(observed(accepted(download_cr()), target_pvc=lazy, config=config)), CreateExposure)


def test_accepted_waits_while_exposure_terminates() -> None:
    going = replace(exposure(), terminating=True)
    assert only_waits(decide(observed(accepted(upload_cr()), exposure=going)))


def test_accepted_deletes_stale_exposure() -> None:
    cr = replace(accepted(upload_cr()), reexposures=1, reexposed_at=T0 + minutes(2))
    actions = decide(observed(cr, now=T0 + minutes(2), exposure=exposure(pod=running_pod(generation=0))))
    assert phase_after(actions) is None
    assert of_type(actions, DeleteExposure) == [
        DeleteExposure("pod velero/backup-1-abcde belongs to an earlier exposure", snapshot=False)
    ]
    assert not of_type(actions, CreateExposure)


def test_accepted_pod_failed_reexposes() -> None:
    failed = PodView("pod-uid-1", PodPhase.FAILED, NODE, reason="Evicted: low on memory")
    actions = decide(observed(accepted(upload_cr()), now=T0 + minutes(1), exposure=exposure(pod=failed)))
    assert_reexposed(actions)
    assert MarkReexposure(1, T0 + minutes(1)) in actions
    assert not of_type(actions, RevokeAssignment)  # never assigned: nothing to revoke
    ended = replace(failed, phase=PodPhase.SUCCEEDED)
    assert_reexposed(decide(observed(accepted(upload_cr()), exposure=exposure(pod=ended))))
    again = replace(accepted(upload_cr()), reexposures=2)
    assert_reexposed(
        decide(observed(again, now=T0 + minutes(1), exposure=exposure(pod=replace(failed, generation=2)))), 3
    )
    assert "Evicted: low on memory" in (set_phase(actions) or SetPhase(Phase.NEW)).message


def test_accepted_pod_running_prepares_and_reserves_the_first_epoch_for_its_node() -> None:
    actions = decide(observed(accepted(upload_cr()), exposure=exposure()))
    fence = ((ASSIGNMENT_ANNOTATION, f"1:{NODE}"),)
    assert actions == (SetPhase(Phase.PREPARED, "", (("node", NODE),), annotations=fence),)
    handed_off = AssignmentView(epoch=3, node=OTHER_NODE, state=HubState.RUNNING, cancel_sent_at=T0)
    again = observed(accepted(upload_cr()), exposure=exposure(), assignment=handed_off)
    assert set_phase(decide(again)) == SetPhase(
        Phase.PREPARED, "", (("node", NODE),), annotations=((ASSIGNMENT_ANNOTATION, f"4:{NODE}"),)
    )
    # An earlier epoch that may still run keeps its fence: nothing is reserved over it.
    live = replace(handed_off, cancel_sent_at=None)
    live_world = observed(accepted(upload_cr()), exposure=exposure(), assignment=live)
    assert set_phase(decide(live_world)) == SetPhase(Phase.PREPARED, "", (("node", NODE),))
    unbound = exposure(pv="")
    assert phase_after(decide(observed(accepted(upload_cr()), exposure=unbound))) is None


@pytest.mark.parametrize(
    ("changes", "waiting_for"),
    [
        (
            {"snapshot": SnapshotView(SnapshotState.PENDING)},
            "waiting for VolumeSnapshot app/velero-data-abc to become ready",
        ),
        ({"exposure": exposure(pv="")}, "waiting for PVC velero/backup-1-abcde to be bound"),
        (
            {"exposure": exposure(pod=PodView("u", PodPhase.PENDING, reason="Unschedulable: 0/3 nodes"))},
            "waiting for exposer pod velero/backup-1-abcde to be Running "
            "(it is Pending: Unschedulable: 0/3 nodes)",
        ),
        (
            {"exposure": ExposureView(snapshot_content=True, snapshot=True, pvc=True, pv_name="pv-1")},
            "waiting for exposer pod velero/backup-1-abcde to be created",
        ),
    ],
)
def test_accepted_prepare_timeout_fails_naming_what_it_waited_for(
    changes: dict[str, object], waiting_for: str
) -> None:
    world = observed(accepted(upload_cr()), now=T0 + minutes(29), **changes)
    assert phase_after(decide(world)) is None
    actions = decide(replace(world, now=T0 + minutes(30)))
    step = set_phase(actions)
    assert step is not None
    assert step.phase is Phase.FAILED
    assert step.message == f"timed out after 30m0s (prepareTimeout) {waiting_for}"


def test_accepted_prepare_timeout_names_the_missing_target_pvc() -> None:
    world = observed(accepted(download_cr()), now=T0 + minutes(30), target_pvc=None)
    step = set_phase(decide(world))
    assert step is not None
    assert (
        step.message
        == "timed out after 30m0s (prepareTimeout) waiting for the target PVC app-restored/data to exist"
    )


def test_accepted_prepare_timer_restarts_on_reexposure() -> None:
    cr = replace(accepted(upload_cr()), reexposures=1, reexposed_at=T0 + minutes(20))
    world = observed(cr, now=T0 + minutes(45), snapshot=SnapshotView(SnapshotState.PENDING))
    assert only_waits(decide(world))
    assert phase_after(decide(replace(world, now=T0 + minutes(50)))) is Phase.FAILED


# ---------------------------------------------------------------------------------------- Prepared


def test_prepared_cancel_cleans_up() -> None:
    sent = AssignmentView(epoch=1, node=NODE, state=HubState.SENT)
    cr = replace(prepared(upload_cr(cancel=True)), fence=Fence(1, NODE))
    actions = decide(observed(cr, exposure=exposure(), assignment=sent))
    assert phase_after(actions) is Phase.CANCELED
    assert of_type(actions, StopAssignment) == [
        StopAssignment(NODE, 1, "canceled by spec.cancel in phase Prepared")
    ]
    assert_cleaned_up(actions)


def test_prepared_agent_failure_fails() -> None:
    cr = replace(prepared(upload_cr()), fence=Fence(1, NODE))
    result = finished(Outcome.FAILED, message="cannot open repository: wrong password")
    step = set_phase(decide(observed(cr, exposure=exposure(), assignment=result)))
    assert step is not None
    assert step.phase is Phase.FAILED
    assert step.message == "the agent on node node-a failed: cannot open repository: wrong password"


def test_prepared_operation_timeout_fails() -> None:
    """Assigned, and the agent shows no sign of life for operationTimeout since the assignment."""
    sent = AssignmentView(epoch=1, node=NODE, state=HubState.SENT, progressed_at=T0)
    cr = replace(prepared(upload_cr()), fence=Fence(1, NODE))
    world = observed(cr, now=T0 + timedelta(hours=4), exposure=exposure(), assignment=sent)
    step = set_phase(decide(world))
    assert step is not None
    assert step.phase is Phase.FAILED
    assert (
        step.message
        == "timed out after 4h0m0s (operationTimeout) waiting for the agent on node node-a to start "
        "moving data"
    )


def test_prepared_waiting_for_a_transfer_slot_never_times_out() -> None:
    """Queue time is not operation time: Velero bounds the whole with its itemOperationTimeout."""
    world = observed(prepared(upload_cr()), now=T0 + timedelta(days=3), exposure=exposure(), admitted=False)
    assert set_phase(decide(world)) is None


@pytest.mark.parametrize(
    "pod",
    [
        None,
        PodView("u", PodPhase.FAILED, NODE),
        PodView("u", PodPhase.RUNNING, NODE, deleting=True),
        PodView("u", PodPhase.PENDING),
    ],
)
def test_prepared_pod_lost_reexposes(pod: PodView | None) -> None:
    world = observed(prepared(upload_cr()), exposure=replace(exposure(), pod=pod))
    assert_reexposed(decide(world))
    assert not of_type(decide(world), RevokeAssignment)  # never assigned
    once_assigned = replace(world, cr=replace(world.cr, fence=Fence(1, NODE)))
    assert of_type(decide(once_assigned), RevokeAssignment) == [RevokeAssignment(2)]
    already_revoked = replace(world, cr=replace(world.cr, fence=Fence(2, "-")))
    assert not of_type(decide(already_revoked), RevokeAssignment)


def test_prepared_cordoned_node_reexposes() -> None:
    world = observed(
        prepared(upload_cr()), exposure=exposure(), agents=(agent(cordoned=True), agent(OTHER_NODE))
    )
    actions = decide(world)
    assert_reexposed(actions)
    assert (
        set_phase(actions) or SetPhase(Phase.NEW)
    ).message == "re-exposing (1 of 3): node node-a is cordoned"


def test_prepared_agent_missing_past_grace_reexposes() -> None:
    gone = agent(connected=False, disconnected_since=T0 + minutes(1))
    world = observed(prepared(upload_cr()), now=T0 + minutes(1.5), exposure=exposure(), agents=(gone,))
    assert only_waits(decide(world))
    assert_reexposed(decide(replace(world, now=T0 + minutes(2))))
    never_seen = observed(prepared(upload_cr()), now=T0 + minutes(2), exposure=exposure(), agents=())
    assert_reexposed(decide(never_seen))


def test_a_new_leader_gives_an_agent_it_has_not_seen_until_reconnect_by_before_judging_it_gone() -> None:
    """After an outage the agents retry on a backoff of up to 30 s: an agent a just-started leader
    has not seen yet is not gone merely because agentGracePeriod has passed since the CR started."""
    reconnecting = agent(connected=False, reconnect_by=T0 + minutes(3))
    world = observed(prepared(upload_cr()), now=T0 + minutes(2), exposure=exposure(), agents=(reconnecting,))
    assert only_waits(decide(world))
    assert_reexposed(decide(replace(world, now=T0 + minutes(3))))


def test_prepared_assigns_to_connected_agent() -> None:
    cr = replace(prepared(upload_cr()), data_mover_config=(("k", "v"),))
    world = observed(cr, exposure=exposure())
    (assign,) = decide(world)
    assert isinstance(assign, Assign)
    assert (assign.node, assign.epoch) == (NODE, 1)
    message = assign.assignment
    assert message.assignment_id == "uid-upload-1"
    assert message.epoch == 1
    assert message.kind is AssignmentKind.UPLOAD
    assert (message.pod_uid, message.volume_name, message.volume_mode) == (
        "pod-uid-1",
        "pv-1",
        VolumeMode.FILESYSTEM,
    )
    assert (message.backup_storage_location, message.source_namespace, message.source_pvc) == (
        "default",
        "app",
        "data",
    )
    assert message.tags == (("velero.io/backup-name", "backup-1"), ("velero.io/backup-uid", "b-uid"))
    assert message.data_mover_config == (("k", "v"),)
    reassigned = replace(world, cr=replace(cr, fence=Fence(4, OTHER_NODE)))
    (again,) = decide(reassigned)
    assert isinstance(again, Assign)
    assert again.epoch == 5


def test_prepared_sends_the_epoch_reserved_with_prepared_and_never_reuses_a_sent_one() -> None:
    world = observed(replace(prepared(upload_cr()), fence=Fence(4, NODE)), exposure=exposure())
    (assign,) = decide(world)
    assert isinstance(assign, Assign)
    assert (assign.node, assign.epoch) == (NODE, 4)  # its fence is written: the send costs no write
    finished = AssignmentView(epoch=4, node=NODE, state=HubState.FINISHED)
    (after_sent,) = decide(replace(world, assignment=finished))
    assert isinstance(after_sent, Assign)
    assert after_sent.epoch == 5
    elsewhere = replace(world, cr=replace(world.cr, fence=Fence(4, OTHER_NODE)))
    (moved,) = decide(elsewhere)
    assert isinstance(moved, Assign)
    assert moved.epoch == 5


def test_prepared_download_assignment_names_the_snapshot() -> None:
    (assign,) = decide(observed(prepared(download_cr()), exposure=exposure(upload=False)))
    assert isinstance(assign, Assign)
    assert assign.assignment.kind is AssignmentKind.DOWNLOAD
    assert assign.assignment.snapshot_id == "0123abcd"


def test_prepared_waits_for_sent_assignment() -> None:
    sent = AssignmentView(epoch=1, node=NODE, state=HubState.SENT)
    world = observed(prepared(upload_cr()), exposure=exposure(), assignment=sent)
    assert only_waits(decide(world))  # the fence annotation may not be in the cache yet: the hub says 1
    assert only_waits(decide(replace(world, cr=replace(world.cr, fence=Fence(1, NODE)))))


def test_prepared_waits_when_not_admitted() -> None:
    assert only_waits(decide(observed(prepared(upload_cr()), exposure=exposure(), admitted=False)))


# -------------------------------------------------------------------------------------- InProgress


def progress_world(cr: CrView | None = None, **changes: object) -> Observed:
    """Data is moving: for an upload the source snapshot was released to the clone long ago."""
    base = observed(
        cr or in_progress(upload_cr()),
        now=T0 + minutes(10),
        exposure=exposure(),
        assignment=running(),
        snapshot=SnapshotView(),
    )
    return replace(base, **changes)  # type: ignore[arg-type]


def test_in_progress_cancel_starts_canceling() -> None:
    actions = decide(progress_world(replace(in_progress(upload_cr()), cancel=True)))
    assert phase_after(actions) is Phase.CANCELING
    assert of_type(actions, StopAssignment) == [StopAssignment(NODE, 1, "canceled by spec.cancel")]
    assert not of_type(actions, DeleteExposure)


def test_in_progress_upload_completed_records_result() -> None:
    result = finished(
        Outcome.COMPLETED,
        snapshot_id="snap-1",
        path="/var/lib/kubelet/pods/pod-uid-1/volumes/kubernetes.io~csi/pv-1/mount",
        bytes_total=100,
        bytes_done=100,
        bytes_new=40,
        result=(("parentSnapshot", "snap-0"),),
    )
    actions = decide(progress_world(assignment=result))
    assert actions == (
        SetPhase(
            Phase.COMPLETED,
            "",
            (
                ("path", "/var/lib/kubelet/pods/pod-uid-1/volumes/kubernetes.io~csi/pv-1/mount"),
                ("progress.totalBytes", 100),
                ("progress.bytesDone", 100),
                ("dataMoverResult", (("parentSnapshot", "snap-0"),)),
                ("snapshotID", "snap-1"),
                ("incrementalBytes", 40),
                ("snapshotSize", 100),
                ("completionTimestamp", "2026-03-01T12:10:00Z"),
            ),
        ),
        DeleteExposure("the DataUpload is Completed", snapshot=True),
    )
    patch = actions[0].status_patch()  # type: ignore[union-attr]
    assert patch["status"]["progress"] == {"totalBytes": 100, "bytesDone": 100}
    assert patch["status"]["dataMoverResult"] == {"parentSnapshot": "snap-0"}


def test_an_upload_result_waits_for_the_agents_own_completed_write_to_show() -> None:
    """The agent wrote Completed before it sent the result: the cache shows it a moment later, so
    the coordinator does not write it too (that write could only conflict); only if it never
    shows within AGENT_WRITE_GRACE does the coordinator record the result itself."""
    world = progress_world(assignment=finished(Outcome.COMPLETED, snapshot_id="snap-1"))
    arrived = replace(world.assignment, progressed_at=world.now - timedelta(seconds=2))
    assert decide(replace(world, assignment=arrived)) == (Requeue(timedelta(seconds=8)),)
    late = replace(world.assignment, progressed_at=world.now - AGENT_WRITE_GRACE)
    assert phase_after(decide(replace(world, assignment=late))) is Phase.COMPLETED


def test_in_progress_download_completed_binds_then_completes() -> None:
    result = finished(Outcome.COMPLETED, bytes_total=10, bytes_done=10)
    world = progress_world(in_progress(download_cr()), exposure=exposure(upload=False), assignment=result)
    actions = decide(world)
    assert actions[0] == BindRestoredVolume("pv-1", "app-restored", "data")
    assert phase_after(actions) is None
    # The PV already names the target (the cache shows the first hand-over): wait for the binder.
    pointed = replace(world, exposure=replace(world.exposure, pv_claim="app-restored/data"))
    assert only_waits(decide(pointed))
    bound = replace(world, target_pvc=replace(TARGET_PVC, volume_name="pv-1"))
    actions = decide(bound)
    assert phase_after(actions) is Phase.COMPLETED
    handed_over = replace(bound, exposure=ExposureView())
    assert phase_after(decide(handed_over)) is Phase.COMPLETED


def test_a_final_phase_with_nothing_left_to_clean_up_lets_go_in_the_same_write() -> None:
    """The download's exposure went with the hand-over: Completed and the finalizer's removal are
    one write. While anything is left (or the CR is being deleted) the finalizer stays."""
    result = finished(Outcome.COMPLETED, bytes_total=10, bytes_done=10)
    world = progress_world(in_progress(download_cr()), exposure=ExposureView(), assignment=result)
    bound = replace(world, target_pvc=replace(TARGET_PVC, volume_name="pv-1"))
    step = set_phase(decide(bound))
    assert step is not None
    assert (step.phase, step.remove_finalizer) == (Phase.COMPLETED, True)
    left = replace(bound, exposure=exposure(upload=False))
    step = set_phase(decide(left))
    assert step is not None
    assert (step.phase, step.remove_finalizer) == (Phase.COMPLETED, False)
    deleting = replace(bound, cr=replace(bound.cr, deleting=True))
    step = set_phase(decide(deleting))
    assert step is not None
    assert (step.phase, step.remove_finalizer) == (Phase.CANCELED, False)


def test_a_completed_download_keeps_the_agents_message() -> None:
    """What the restore withheld (device nodes, setuid bits...) reaches the DataDownload's status."""
    result = finished(Outcome.COMPLETED, message="restored without the privileges the snapshot records")
    world = progress_world(in_progress(download_cr()), exposure=exposure(upload=False), assignment=result)
    step = set_phase(decide(replace(world, target_pvc=replace(TARGET_PVC, volume_name="pv-1"))))
    assert step is not None
    assert step.phase is Phase.COMPLETED
    assert step.message == "restored without the privileges the snapshot records"


def test_in_progress_download_target_gone_fails() -> None:
    result = finished(Outcome.COMPLETED)
    world = progress_world(in_progress(download_cr()), exposure=exposure(upload=False), assignment=result)
    step = set_phase(decide(replace(world, target_pvc=None)))
    assert step is not None
    assert step.phase is Phase.FAILED
    assert step.message == (
        "the target PVC app-restored/data disappeared; the restored volume has nowhere to go"
    )


def test_in_progress_agent_failed_fails() -> None:
    actions = decide(progress_world(assignment=finished(Outcome.FAILED, message="disk read error")))
    step = set_phase(actions)
    assert step is not None
    assert step.phase is Phase.FAILED
    assert step.message == "the agent on node node-a failed: disk read error"
    assert_cleaned_up(actions)
    assert not of_type(actions, StopAssignment)  # it already stopped


def test_in_progress_handed_off_reexposes() -> None:
    actions = decide(progress_world(assignment=finished(Outcome.HANDED_OFF, message="drained")))
    assert_reexposed(actions)
    assert not of_type(actions, StopAssignment)


def test_in_progress_operation_timeout_fails() -> None:
    actions = decide(progress_world(now=T0 + timedelta(hours=4)))
    step = set_phase(actions)
    assert step is not None
    assert step.phase is Phase.FAILED
    assert step.message == (
        "timed out after 4h0m0s (operationTimeout) waiting for the agent on node node-a to move more "
        "data (5 of 10 bytes done)"
    )
    assert StopAssignment(NODE, 1, step.message) in actions
    assert RevokeAssignment(2) in actions
    assert_cleaned_up(actions)
    custom = replace(in_progress(upload_cr()), operation_timeout=timedelta(minutes=10))
    assert phase_after(decide(progress_world(custom))) is Phase.FAILED


@pytest.mark.parametrize(
    "pod",
    [
        None,
        PodView("u", PodPhase.FAILED, NODE, reason="Evicted"),
        PodView("u", PodPhase.RUNNING, NODE, deleting=True),
    ],
)
def test_in_progress_pod_lost_reexposes(pod: PodView | None) -> None:
    actions = decide(progress_world(exposure=replace(exposure(), pod=pod)))
    assert_reexposed(actions)
    (cancel,) = of_type(actions, StopAssignment)
    assert cancel.hand_off  # type: ignore[attr-defined]
    assert (cancel.node, cancel.epoch) == (NODE, 1)  # type: ignore[attr-defined]
    assert of_type(actions, RevokeAssignment) == [RevokeAssignment(2)]


def test_in_progress_agent_disconnected_past_grace_reexposes() -> None:
    gone = agent(connected=False, disconnected_since=T0 + minutes(9))
    actions = decide(progress_world(agents=(gone, agent(OTHER_NODE))))
    assert_reexposed(actions)
    step = set_phase(actions)
    assert step is not None
    assert "the agent on node node-a has been disconnected for more than 1m0s" in step.message
    assert CreateExposure not in {type(a) for a in actions}


def test_in_progress_agent_disconnected_within_grace_waits() -> None:
    gone = agent(connected=False, disconnected_since=T0 + minutes(9) + timedelta(seconds=10))
    assert decide(progress_world(agents=(gone,))) == (Requeue(timedelta(seconds=10)),)


@pytest.mark.parametrize(
    "missing",
    [agent(connected=False), agent(connected=False, disconnected_since=T0 + minutes(2))],
    ids=["never-seen-by-a-new-leader", "gone-before-a-re-election"],
)
def test_in_progress_agent_not_back_after_a_failover_waits(missing: AgentView) -> None:
    """This leader began 40 s ago: an agent missing since the work started (9 min ago) or since
    before the term gets agentGracePeriod from the term's start to find the leader and report what
    it runs."""
    began = T0 + minutes(10) - timedelta(seconds=40)
    world = progress_world(agents=(missing, agent(OTHER_NODE)), assignment=None, leading_since=began)
    assert decide(world) == (Requeue(timedelta(seconds=20)),)
    assert_reexposed(decide(replace(world, now=began + minutes(1))))


def rated(done: int, total: int, since_s: float, now_min: float = 10) -> AssignmentView:
    """Running since ``since_s`` seconds before ``now_min`` with 0 bytes then and ``done`` now."""
    since = T0 + minutes(now_min) - timedelta(seconds=since_s)
    return running(bytes_done=done, bytes_total=total, running_since=since, bytes_at_running_since=0)


def test_in_progress_cordoned_node_finishes_within_drain_grace() -> None:
    draining = agent(cordoned=True, cordoned_since=T0 + minutes(9))
    # 60 s for 800 bytes: 200 left take 15 s, well before the grace ends (9 min away).
    world = progress_world(agents=(draining, agent(OTHER_NODE)), assignment=rated(800, 1000, 60))
    assert decide(world) == (Requeue(timedelta(seconds=15)),)


def test_in_progress_cordoned_node_hands_off_when_it_cannot_finish_in_grace() -> None:
    draining = agent(cordoned=True, cordoned_since=T0 + minutes(9))
    others = (draining, agent(OTHER_NODE))
    slow = progress_world(agents=others, assignment=rated(10, 1000, 60))  # 99 min left
    no_rate = progress_world(agents=others, assignment=running())  # no progress report yet
    over = progress_world(now=T0 + minutes(19), agents=others, assignment=rated(990, 1000, 60, 19))
    reasons = {
        "slow": "node node-a is cordoned; at its current rate the transfer would not end within 10m0s",
        "no_rate": "node node-a is cordoned and no data has moved yet",
        "over": "node node-a is cordoned and drainGracePeriod (10m0s) is over",
    }
    for case, world in (("slow", slow), ("no_rate", no_rate), ("over", over)):
        assert decide(world) == (
            StopAssignment(NODE, 1, reasons[case], hand_off=True),
            Requeue(MAX_WAIT),
        ), case


def test_in_progress_handoff_unconfirmed_reexposes() -> None:
    draining = agent(cordoned=True, cordoned_since=T0)
    asked = running(cancel_sent_at=T0 + minutes(10), cancel_hand_off=True)
    world = progress_world(now=T0 + minutes(10.5), agents=(draining,), assignment=asked)
    assert decide(world) == (Requeue(timedelta(seconds=30)),)
    actions = decide(replace(world, now=T0 + minutes(11)))
    assert_reexposed(actions)
    assert not of_type(actions, StopAssignment)  # already asked


def test_in_progress_restarted_agent_is_reassigned() -> None:
    actions = decide(progress_world(assignment=None))
    assign = of_type(actions, Assign)
    assert len(assign) == 1
    assert (assign[0].node, assign[0].epoch) == (NODE, 2)  # type: ignore[attr-defined]
    stale = decide(progress_world(assignment=running(epoch=0)))
    assert of_type(stale, Assign)
    absent = decide(
        progress_world(
            assignment=None, agents=(agent(connected=False, disconnected_since=T0 + minutes(9.9)),)
        )
    )
    assert only_waits(absent)


def test_a_just_reconnected_agent_gets_a_moment_to_resend_its_results_before_work_is_reassigned() -> None:
    """A new leader knows nothing of results an agent kept while it was away; they come right after
    its Hello. Reassigning at once would send finished work again (seen in a 2,000-item failover)."""
    world = progress_world(
        assignment=None, agents=(agent(connected_since=T0 + minutes(10) - READOPT_GRACE / 2),)
    )
    actions = decide(world)
    assert only_waits(actions)
    assert actions == (Requeue(READOPT_GRACE / 2),)
    later = replace(world, now=world.now + READOPT_GRACE / 2)
    assert of_type(decide(later), Assign)


def test_in_progress_reexposure_limit_fails() -> None:
    cr = replace(in_progress(upload_cr()), reexposures=3)
    actions = decide(progress_world(cr, exposure=replace(exposure(), pod=None)))
    step = set_phase(actions)
    assert step is not None
    assert step.phase is Phase.FAILED
    assert step.message == (
        "exposer pod velero/backup-1-abcde disappeared; gave up after 3 re-exposures (maxReexposures=3)"
    )


def test_a_transfer_that_keeps_moving_never_times_out() -> None:
    """A long transfer is not a stall: the deadline runs from the last progress."""
    moving = running(progressed_at=T0 + timedelta(hours=9), bytes_done=9)
    assert set_phase(decide(progress_world(now=T0 + timedelta(hours=10), assignment=moving))) is None


def test_in_progress_waits_while_running() -> None:
    assert decide(progress_world()) == (Requeue(MAX_WAIT),)
    near = progress_world(now=T0 + timedelta(hours=4) - timedelta(seconds=5))
    assert decide(near) == (Requeue(timedelta(seconds=5)),)


# --------------------------------------------------------------------------------------- Canceling


def canceling_world(**changes: object) -> Observed:
    cr = replace(in_progress(upload_cr(cancel=True)), phase=Phase.CANCELING)
    asked = running(cancel_sent_at=T0 + minutes(10))
    return replace(progress_world(cr, assignment=asked), **changes)  # type: ignore[arg-type]


def test_canceling_agent_confirms_canceled() -> None:
    actions = decide(canceling_world(assignment=finished(Outcome.CANCELED, message="stopped")))
    assert phase_after(actions) is Phase.CANCELED
    assert_cleaned_up(actions)


def test_canceling_agent_gone_canceled() -> None:
    gone = agent(connected=False, disconnected_since=T0 + minutes(8))
    assert phase_after(decide(canceling_world(agents=(gone,)))) is Phase.CANCELED
    assert phase_after(decide(canceling_world(exposure=ExposureView()))) is Phase.CANCELED


def test_canceling_timeout_canceled() -> None:
    """operationTimeout after the cancel was sent (at T0 + 10m) with no confirmation."""
    assert set_phase(decide(canceling_world(now=T0 + timedelta(hours=4)))) is None
    step = set_phase(decide(canceling_world(now=T0 + minutes(10) + timedelta(hours=4))))
    assert step is not None
    assert step.phase is Phase.CANCELED
    assert "operationTimeout" in step.message


def test_canceling_resends_cancel() -> None:
    assert only_waits(decide(canceling_world()))
    not_sent = decide(canceling_world(assignment=running()))
    assert of_type(not_sent, StopAssignment) == [StopAssignment(NODE, 1, "canceled by spec.cancel")]


# -------------------------------------------------------------------------------- deletion, terminal


@pytest.mark.parametrize(
    "phase", [Phase.NEW, Phase.ACCEPTED, Phase.PREPARED, Phase.IN_PROGRESS, Phase.CANCELING]
)
def test_deleting_non_final_cancels_and_cleans_up(phase: Phase) -> None:
    cr = replace(in_progress(upload_cr()), phase=phase, deleting=True)
    actions = decide(progress_world(cr))
    step = set_phase(actions)
    assert step is not None
    assert step.phase is Phase.CANCELED
    assert step.message == "the DataUpload was deleted before it finished"
    assert StopAssignment(NODE, 1, step.message) in actions
    assert_cleaned_up(actions)
    assert not of_type(actions, RemoveFinalizer)


def test_deleting_without_finalizer_or_exposure_does_nothing() -> None:
    cr = upload_cr(deleting=True, has_finalizer=False)
    assert decide(observed(cr)) == ()


@pytest.mark.parametrize("phase", [Phase.COMPLETED, Phase.FAILED, Phase.CANCELED])
def test_terminal_cancels_leftover_assignment(phase: Phase) -> None:
    cr = replace(in_progress(upload_cr()), phase=phase)
    actions = decide(progress_world(cr, exposure=ExposureView()))
    assert of_type(actions, StopAssignment) == [StopAssignment(NODE, 1, f"the DataUpload is {phase}")]
    assert phase_after(actions) is None


@pytest.mark.parametrize("phase", [Phase.COMPLETED, Phase.FAILED, Phase.CANCELED])
def test_terminal_deletes_exposure(phase: Phase) -> None:
    cr = replace(in_progress(upload_cr()), phase=phase)
    actions = decide(progress_world(cr, assignment=None))
    assert actions == (DeleteExposure(f"the DataUpload is {phase}", snapshot=True), Requeue(MAX_WAIT))


def test_terminal_leaves_the_clone_content_to_the_snapshot_controller_for_a_while() -> None:
    """Deleting the clone VolumeSnapshot is enough: the snapshot controller deletes its Delete-policy
    content. Only a content nobody deletes CONTENT_FOLLOW_GRACE after the end is deleted by Barge."""
    done_at = T0 + minutes(5)
    cr = replace(in_progress(upload_cr()), phase=Phase.COMPLETED, completed_at=done_at)
    only_content = ExposureView(snapshot_content=True, snapshot_handle="snap-1")
    world = progress_world(cr, exposure=only_content, assignment=None, now=done_at + timedelta(seconds=29))
    reason = "the DataUpload is Completed"
    assert decide(world) == (DeleteExposure(reason, snapshot=True), Requeue(MAX_WAIT))
    late = replace(world, now=done_at + CONTENT_FOLLOW_GRACE)
    assert decide(late) == (DeleteExposure(reason, snapshot=True, snapshot_content=True), Requeue(MAX_WAIT))
    going = replace(late, exposure=replace(only_content, snapshot_content_deleting=True))
    assert decide(going) == (DeleteExposure(reason, snapshot=True), Requeue(MAX_WAIT))


def test_terminal_download_completed_hands_over_volume_first() -> None:
    cr = replace(in_progress(download_cr()), phase=Phase.COMPLETED)
    world = progress_world(cr, exposure=exposure(upload=False), assignment=None)
    assert decide(world) == (BindRestoredVolume("pv-1", "app-restored", "data"), Requeue(MAX_WAIT))
    bound = replace(world, target_pvc=replace(TARGET_PVC, volume_name="pv-1"))
    assert of_type(decide(bound), DeleteExposure)
    # Already pointed at the target, waiting for the binder: no second hand-over, only cleanup.
    handed = replace(
        world, exposure=replace(world.exposure, pv_claim=f"{TARGET_PVC.namespace}/{TARGET_PVC.name}")
    )
    assert not of_type(decide(handed), BindRestoredVolume)
    assert of_type(decide(handed), DeleteExposure)


def test_terminal_removes_finalizer_when_clean() -> None:
    cr = replace(upload_cr(), phase=Phase.FAILED)
    assert decide(observed(cr, snapshot=SnapshotView())) == (RemoveFinalizer(),)
    going = replace(READY_SNAPSHOT, deleting=True)  # the snapshot controller finishes that
    assert decide(observed(cr, snapshot=going)) == (RemoveFinalizer(),)


def test_terminal_clean_without_finalizer_does_nothing() -> None:
    cr = replace(upload_cr(), phase=Phase.COMPLETED, has_finalizer=False)
    assert decide(observed(cr, snapshot=SnapshotView())) == ()


# ------------------------------------------------------------------------- the source snapshot

RELEASE = ReleaseSourceSnapshot("app", "velero-data-abc", "snapcontent-1", "handle-1", "backup-1-abcde")


def test_accepted_releases_the_source_once_the_clone_is_ready() -> None:
    """Velero's exposer sequence: clone (Delete) first, then the source goes Retain and is deleted."""
    just_exposed = observed(accepted(upload_cr()), exposure=exposure(pod=PodView("p", PodPhase.PENDING)))
    world = replace(just_exposed, source_content=SOURCE_CONTENT)
    assert decide(world) == (RELEASE, Requeue(timedelta(seconds=1)))
    # A crash after the source VolumeSnapshot went: the clone's annotation still finds the content.
    half_done = replace(
        world, snapshot=SnapshotView(), source_content=replace(SOURCE_CONTENT, deletion_policy="Retain")
    )
    assert decide(half_done)[0] == RELEASE


@pytest.mark.parametrize(
    "changes",
    [
        {"exposure": replace(exposure(), **clone_fields(ready=False))},  # the clone is not ready yet
        {"exposure": replace(exposure(), snapshot_handle="another-handle")},  # not the same snapshot
        {"exposure": ExposureView()},  # nothing cloned
        {"source_content": None},  # the source content is gone already
        {"source_content": replace(SOURCE_CONTENT, snapshot_handle="another-handle")},
        {  # both on their way out
            "source_content": replace(SOURCE_CONTENT, deleting=True),
            "snapshot": replace(READY_SNAPSHOT, deleting=True),
        },
    ],
)
def test_accepted_release_waits_for_the_clone_and_never_touches_another_snapshot(
    changes: dict[str, object],
) -> None:
    world = observed(accepted(upload_cr()), **{"source_content": SOURCE_CONTENT, **changes})
    actions = decide(world)
    assert not of_type(actions, ReleaseSourceSnapshot)
    assert not of_type(actions, DeleteSourceSnapshot)


@pytest.mark.parametrize("phase", [Phase.PREPARED, Phase.IN_PROGRESS])
def test_live_upload_finishes_a_release_cut_short(phase: Phase) -> None:
    """A coordinator died between exposing and releasing; its successor releases before moving on."""
    cr = replace(in_progress(upload_cr()), phase=phase)
    world = progress_world(cr, snapshot=READY_SNAPSHOT, source_content=SOURCE_CONTENT)
    assert decide(world) == (RELEASE, Requeue(timedelta(seconds=1)))
    assert not of_type(
        decide(replace(world, snapshot=SnapshotView(), source_content=None)), ReleaseSourceSnapshot
    )


def test_accepted_reexposes_from_the_clone_after_the_release() -> None:
    """After a drain the source is gone: the new pod's PVC comes from the clone, which is kept."""
    kept = ExposureView(snapshot_content=True, snapshot=True, **clone_fields())  # type: ignore[arg-type]
    cr = replace(accepted(upload_cr()), reexposures=1, reexposed_at=T0 + minutes(3))
    world = observed(cr, now=T0 + minutes(3), exposure=kept, snapshot=SnapshotView())
    actions = decide(world)
    (create,) = of_type(actions, CreateExposure)
    plan = create.plan  # type: ignore[attr-defined]
    assert (plan.snapshot_handle, plan.size, plan.generation) == ("handle-1", str(10 * 2**30), 1)
    assert plan.source_content == "snapcontent-1"
    assert not of_type(actions, SetPhase)  # the missing source is not a problem while the clone exists
    gone = replace(world, exposure=ExposureView(), now=T0 + minutes(3))
    assert phase_after(decide(gone)) is Phase.FAILED  # neither source nor clone: nothing to back up


@pytest.mark.parametrize("phase", [Phase.COMPLETED, Phase.FAILED, Phase.CANCELED])
def test_terminal_releases_the_source_before_deleting_the_clone(phase: Phase) -> None:
    """Cloned but not released yet (a crash, or a cancel right after the clone became ready): the
    source is released to the clone first, so the storage snapshot is deleted once, by the clone."""
    cr = replace(in_progress(upload_cr()), phase=phase)
    world = progress_world(cr, assignment=None, snapshot=READY_SNAPSHOT, source_content=SOURCE_CONTENT)
    reason = f"the DataUpload is {phase}"
    assert decide(world) == (RELEASE, DeleteExposure(reason, snapshot=True), Requeue(MAX_WAIT))
    # A clone that never became ready is not trusted with the snapshot: the source goes its own way.
    not_ready = replace(world, exposure=replace(exposure(), **clone_fields(ready=False)))
    assert decide(not_ready) == (
        DeleteSourceSnapshot("app", "velero-data-abc"),
        DeleteExposure(reason, snapshot=True),
        Requeue(MAX_WAIT),
    )


def test_terminal_deletes_a_source_that_was_never_cloned() -> None:
    for phase in (Phase.COMPLETED, Phase.FAILED, Phase.CANCELED):
        cr = replace(accepted(upload_cr()), phase=phase)
        assert decide(observed(cr)) == (DeleteSourceSnapshot("app", "velero-data-abc"), Requeue(MAX_WAIT))
    failed = SnapshotView(SnapshotState.ERROR, error="no space")
    cr = replace(accepted(upload_cr()), phase=Phase.FAILED)
    assert decide(observed(cr, snapshot=failed))[0] == DeleteSourceSnapshot("app", "velero-data-abc")
    settled = decide(observed(accepted(upload_cr()), snapshot=failed))  # Accepted -> Failed
    assert phase_after(settled) is Phase.FAILED
    assert of_type(settled, DeleteSourceSnapshot) == [DeleteSourceSnapshot("app", "velero-data-abc")]
    download = replace(accepted(download_cr()), phase=Phase.CANCELED)
    assert decide(observed(download)) == (RemoveFinalizer(),)


# -------------------------------------------------------------------------------------- properties

times = st.integers(0, 6 * 3600).map(lambda s: T0 + timedelta(seconds=s))
optional_times = st.none() | times
pods = st.none() | st.builds(
    PodView,
    uid=st.just("pod-uid"),
    phase=st.sampled_from(list(PodPhase)),
    node=st.sampled_from(["", NODE, OTHER_NODE]),
    deleting=st.booleans(),
    generation=st.integers(0, 2),
)
exposures = st.builds(
    ExposureView,
    snapshot_content=st.booleans(),
    snapshot=st.booleans(),
    pvc=st.booleans(),
    pv_name=st.sampled_from(["", "pv-1"]),
    pod=pods,
    terminating=st.booleans(),
    disruption_budget=st.booleans(),
    snapshot_handle=st.sampled_from(["", "handle-1", "handle-2"]),
    snapshot_ready=st.booleans(),
    source_content=st.sampled_from(["", "snapcontent-1"]),
)
source_contents = st.none() | st.builds(
    ContentView,
    name=st.just("snapcontent-1"),
    snapshot_handle=st.sampled_from(["", "handle-1", "handle-2"]),
    deletion_policy=st.sampled_from(["Delete", "Retain"]),
    deleting=st.booleans(),
)
assignments = st.none() | st.builds(
    AssignmentView,
    epoch=st.integers(0, 3),
    node=st.sampled_from([NODE, OTHER_NODE]),
    state=st.sampled_from(list(HubState)),
    result=st.none() | st.sampled_from(list(Outcome)).map(lambda o: finished(o).result),
    cancel_sent_at=optional_times,
    cancel_hand_off=st.booleans(),
    running_since=optional_times,
    bytes_at_running_since=st.integers(0, 10),
)
agents = st.lists(
    st.builds(
        agent,
        node=st.sampled_from([NODE, OTHER_NODE]),
        connected=st.booleans(),
        disconnected_since=optional_times,
        cordoned=st.booleans(),
        cordoned_since=optional_times,
    ),
    max_size=2,
    unique_by=lambda a: a.node,
).map(tuple)


@st.composite
def observations(draw: st.DrawFn) -> Observed:
    base = draw(st.sampled_from([upload_cr(), download_cr()]))
    cr = replace(
        base,
        phase=draw(st.sampled_from(list(Phase))),
        cancel=draw(st.booleans()),
        deleting=draw(st.booleans()),
        has_finalizer=draw(st.booleans()),
        accepted_at=draw(optional_times),
        node=draw(st.sampled_from(["", NODE, OTHER_NODE])),
        fence=draw(st.none() | st.builds(Fence, st.integers(1, 3), st.sampled_from([NODE, OTHER_NODE]))),
        reexposures=draw(st.integers(0, 4)),
        snapshot_type=draw(st.sampled_from(["CSI", "CSI", "other"])),
    )
    return observed(
        cr,
        now=draw(times),
        exposure=draw(exposures),
        snapshot=draw(
            st.builds(
                SnapshotView,
                st.sampled_from(list(SnapshotState)),
                snapshot_handle=st.just("handle-1"),
                restore_size=st.just(1),
                deleting=st.booleans(),
            )
        ),
        source_content=draw(source_contents),
        target_pvc=draw(st.none() | st.just(TARGET_PVC)),
        bsl_present=draw(st.booleans()),
        agents=draw(agents),
        assignment=draw(assignments),
        admitted=draw(st.booleans()),
    )


@settings(max_examples=400, deadline=None)
@given(world=observations())
def test_properties_of_every_decision(world: Observed) -> None:
    actions = decide(world)
    assert decide(world) == actions  # deterministic
    steps = of_type(actions, SetPhase)
    assert len(steps) <= 1  # at most one phase step
    if world.cr.phase.is_terminal:
        assert steps == []  # terminal phases are absorbing
    letting_go = [step for step in steps if step.remove_finalizer]  # type: ignore[attr-defined]
    if of_type(actions, RemoveFinalizer) or letting_go:
        assert not world.exposure.exists  # never let go while something of ours is left
        assert world.cr.phase.is_terminal or all(step.phase.is_terminal for step in letting_go)  # type: ignore[attr-defined]
        if world.cr.is_upload:  # nor while Velero's source snapshot is left
            assert world.snapshot.state is SnapshotState.ABSENT or world.snapshot.deleting
    finishing = world.cr.phase.is_terminal or any(step.phase.is_terminal for step in steps)  # type: ignore[attr-defined]
    clone = world.exposure
    for release in of_type(actions, ReleaseSourceSnapshot):
        # Never delete the source unless the clone holds its snapshot (and, while live, is ready).
        assert world.cr.is_upload
        assert clone.snapshot_content
        assert clone.snapshot_handle
        assert world.source_content is not None
        assert release.snapshot_handle == clone.snapshot_handle == world.source_content.snapshot_handle  # type: ignore[attr-defined]
        assert clone.snapshot_ready
    if of_type(actions, DeleteSourceSnapshot):
        assert finishing  # a live upload keeps its source until the clone takes it over
        assert not of_type(actions, ReleaseSourceSnapshot)
    deletes = of_type(actions, DeleteExposure)
    if any(d.snapshot for d in deletes):  # type: ignore[attr-defined]
        assert finishing  # the clone goes only with the CR: re-exposures keep it
        releases = [i for i, a in enumerate(actions) if isinstance(a, ReleaseSourceSnapshot)]
        assert all(i < actions.index(deletes[0]) for i in releases)  # released before the clone goes
    if any(isinstance(a, SetPhase) and a.add_finalizer for a in actions):
        assert phase_after(actions) is Phase.ACCEPTED
    latest = max(
        world.cr.fence.epoch if world.cr.fence else 0, world.assignment.epoch if world.assignment else 0
    )
    sent = world.assignment.epoch if world.assignment else 0
    for fenced in (*of_type(actions, Assign), *of_type(actions, RevokeAssignment)):
        epoch: int = fenced.epoch  # type: ignore[attr-defined]
        # Epochs only move forward; the one exception is sending the epoch reserved with Prepared,
        # which the fence names for that very node and the hub never sent.
        reserved = (
            isinstance(fenced, Assign) and world.cr.fence == Fence(latest, fenced.node) and sent < latest
        )
        assert epoch > latest or (reserved and epoch == latest)
    for step in of_type(actions, SetPhase):
        for key, value in step.annotations:  # type: ignore[attr-defined]
            if key == ASSIGNMENT_ANNOTATION:
                assert Fence.parse(value).epoch > latest  # a reservation is a new epoch


# ------------------------------------------------------------------ adopting agents' claims after a failover


FENCED = in_progress(upload_cr(), epoch=3)  # the fence names epoch 3 on NODE


def claim(epoch: int = 3) -> RunningAssignment:
    return RunningAssignment(upload_cr().uid, epoch, 5, 50)


@pytest.mark.parametrize(
    "cr",
    [
        FENCED,
        replace(prepared(upload_cr()), fence=Fence(3, NODE)),  # the fence reserved with Prepared
        replace(FENCED, phase=Phase.CANCELING),
    ],
    ids=["in-progress", "prepared", "canceling"],
)
def test_a_claim_that_matches_the_fence_of_a_runnable_cr_is_adopted(cr: CrView) -> None:
    assert claim_problem(cr, NODE, claim(3)) == ""


@pytest.mark.parametrize(
    ("cr", "node", "epoch", "problem"),
    [
        (FENCED, NODE, 2, "is fenced to 3:node-a, not 2:node-a"),
        (FENCED, NODE, 4, "is fenced to 3:node-a, not 4:node-a"),
        (FENCED, OTHER_NODE, 3, "is fenced to 3:node-a, not 3:node-b"),
        (replace(FENCED, fence=Fence(4, "-")), NODE, 3, "fenced to 4:-"),
        (replace(prepared(upload_cr()), fence=None), NODE, 3, "is fenced to no assignment, not 3:node-a"),
        (replace(FENCED, phase=Phase.COMPLETED), NODE, 3, "is Completed"),
        (replace(FENCED, phase=Phase.FAILED), NODE, 3, "is Failed"),
        (replace(FENCED, phase=Phase.ACCEPTED), NODE, 3, "is Accepted"),
        (replace(FENCED, deleting=True), NODE, 3, "is being deleted"),
        (replace(FENCED, datamover="velero"), NODE, 3, "is not served by Barge"),
        (replace(FENCED, uid="recreated"), NODE, 3, "no DataUpload or DataDownload"),
        (None, NODE, 3, "no DataUpload or DataDownload has uid uid-upload-1"),
    ],
    ids=[
        "older-epoch",
        "forged-newer-epoch",
        "other-node",
        "revoked",
        "no-fence",
        "completed",
        "failed",
        "re-exposing",
        "deleted",
        "other-mover",
        "recreated",
        "unknown",
    ],
)
def test_a_claim_the_fence_does_not_name_is_not_adopted(
    cr: CrView | None, node: str, epoch: int, problem: str
) -> None:
    assert problem in claim_problem(cr, node, claim(epoch))
