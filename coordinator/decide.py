"""The phase machine of a Barge DataUpload/DataDownload: ``decide(observed) -> tuple[Action, ...]``.

Pure and deterministic: the same ``Observed`` always yields the same actions, and one call makes
at most one phase step (at most one ``SetPhase``). The controller executes the actions in order and
calls ``decide`` again whenever anything it observes changes, or after a ``Requeue``. The phases and
their meaning match Velero's built-in data mover, so Velero reads Barge's results unchanged:

    New -> Accepted -> Prepared -> InProgress -> Completed | Failed | Canceled
                                   InProgress -> Canceling -> Canceled

Who writes what: the coordinator writes every phase except InProgress, which the agent writes (with
progress) when it starts, fenced by the assignment annotation. Terminal phases come from the agent's
``AssignmentResult`` (the coordinator writes them, so a DataDownload's volume is handed to the target
PVC before it is Completed). ``docs/phase-machine.md`` is the transition table; every row has a test
in ``tests/unit/test_decide.py`` named after it.
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import datetime, timedelta

from barge.control import messages
from barge.control.messages import Outcome, VolumeMode
from barge.control.naming import ASSIGNMENT_ANNOTATION, DATAMOVER, Fence, data_mover_config_problem
from coordinator.config import format_go_duration
from coordinator.exposer import plan_exposure
from coordinator.model import (
    ACCEPTED_AT_ANNOTATION,
    REVOKED_NODE,
    Action,
    Assign,
    AssignmentView,
    BindRestoredVolume,
    CreateExposure,
    CrView,
    DeleteExposure,
    DeleteSourceSnapshot,
    MarkReexposure,
    Observed,
    Pairs,
    Phase,
    PodPhase,
    RecordEvent,
    ReleaseSourceSnapshot,
    RemoveFinalizer,
    Requeue,
    RevokeAssignment,
    SetPhase,
    SnapshotState,
    StatusValue,
    StopAssignment,
    format_timestamp,
)

# A just-created CR may reach us before the objects it names reach the informer caches.
MISSING_OBJECT_GRACE = timedelta(seconds=30)
# Longest sleep between reconciles while waiting (deadlines are re-checked at least this often).
MAX_WAIT = timedelta(seconds=30)
CONTENT_FOLLOW_GRACE = timedelta(seconds=30)
READOPT_GRACE = timedelta(seconds=10)
AGENT_WRITE_GRACE = timedelta(seconds=10)
MIN_WAIT = timedelta(seconds=1)

Actions = tuple[Action, ...]


def decide(observed: Observed) -> Actions:
    """The next step for one CR (see the module docstring and docs/phase-machine.md)."""
    cr = observed.cr
    if cr.datamover != DATAMOVER:
        return ()
    if cr.phase.is_terminal:
        return _finish(observed)
    if cr.deleting:
        return _abort_for_deletion(observed)
    return _first(observed, _RULES[cr.phase])


# ---------------------------------------------------------------------------------------------
# Phase handlers: ordered rules, the first that applies decides


Rule = Callable[[Observed], "Actions | None"]


def _first(o: Observed, rules: tuple[Rule, ...]) -> Actions:
    for rule in rules:
        actions = rule(o)
        if actions is not None:
            return actions
    return (_wait(o, None),)


def _cancel_rule(o: Observed) -> Actions | None:
    return _cancel_now(o) if o.cr.cancel else None


def _bad_spec_rule(o: Observed) -> Actions | None:
    problem = _spec_problem(o)
    return _fail(o, problem) if problem else None


def _broken_world_rule(o: Observed) -> Actions | None:
    problem = _world_problem(o)
    return _fail(o, problem) if problem else None


def _accept_rule(o: Observed) -> Actions | None:
    if not o.admitted:
        return (Requeue(MAX_WAIT),)
    accepted_at = format_timestamp(o.now)
    fields: tuple[tuple[str, StatusValue], ...] = (
        ("acceptedByNode", o.coordinator_id),
        ("acceptedTimestamp", accepted_at),
    )
    # The annotation keeps the time where a CRD prunes status.acceptedTimestamp (Velero 1.18's).
    annotations = ((ACCEPTED_AT_ANNOTATION, accepted_at),)
    actions: list[Action] = [
        SetPhase(Phase.ACCEPTED, "", fields, add_finalizer=not o.cr.has_finalizer, annotations=annotations)
    ]
    if o.cr.operation_timeout_problem:
        actions.append(RecordEvent("Warning", "InvalidOperationTimeout", o.cr.operation_timeout_problem))
    return tuple(actions)


def _exposure_terminating_rule(o: Observed) -> Actions | None:
    return (_wait(o, _prepare_deadline(o)),) if o.exposure.terminating else None


def _stale_pod_rule(o: Observed) -> Actions | None:
    pod = o.exposure.pod
    if pod is None or pod.generation == o.cr.reexposures:
        return None
    return (DeleteExposure(f"pod {_object(o)} belongs to an earlier exposure"), _wait(o, None))


def _pod_failed_rule(o: Observed) -> Actions | None:
    pod = o.exposure.pod
    if pod is None or not (pod.phase in (PodPhase.FAILED, PodPhase.SUCCEEDED) or pod.deleting):
        return None
    return _reexpose(o, f"exposer pod {_object(o)} failed: {pod.reason or pod.phase}")


def _exposed_rule(o: Observed) -> Actions | None:
    pod = o.exposure.pod
    if pod is None or pod.phase is not PodPhase.RUNNING or not pod.node or not o.exposure.pv_name:
        return None
    return (SetPhase(Phase.PREPARED, "", (("node", pod.node),), annotations=_reserve_epoch(o, pod.node)),)


def _reserve_epoch(o: Observed, node: str) -> Pairs:
    """The fence of the coming assignment, written with Prepared (the same write on Velero's CRDs)
    so that assigning costs no write of its own. Only while nothing of an earlier epoch may run:
    the fence names who may write, and the reserved epoch is sent to ``node`` alone, once admitted."""
    if o.assignment is not None and o.assignment.may_run:
        return ()
    return ((ASSIGNMENT_ANNOTATION, Fence(_latest_epoch(o) + 1, node).render()),)


def _prepare_timeout_rule(o: Observed) -> Actions | None:
    deadline = _prepare_deadline(o)
    if deadline is None or o.now < deadline:
        return None
    waited = format_go_duration(o.config.prepare_timeout)
    return _fail(o, f"timed out after {waited} (prepareTimeout) {_waiting_for(o)}")


def _release_source_rule(o: Observed) -> Actions | None:
    """Uploads: once the clone holds the storage snapshot (the clone VolumeSnapshot is ready on the
    source's handle), Velero's source VolumeSnapshot/Content are released, as Velero's exposer does.
    Checked in every phase an exposure exists in, so a successor finishes a release cut short."""
    release = _source_release(o)
    return (release, _wait(o, o.now)) if release is not None else None


def _expose_rule(o: Observed) -> Actions | None:
    if o.exposure.complete(o.cr.is_upload) or not _ready_to_expose(o):
        return (_wait(o, _prepare_deadline(o)),)
    return (CreateExposure(plan_exposure(o)), _wait(o, _prepare_deadline(o)))


def _start_timeout_rule(o: Observed) -> Actions | None:
    return _operation_timeout(o, f"for the agent on node {o.cr.node} to start moving data")


def _unusable_exposure_rule(o: Observed) -> Actions | None:
    lost = _lost_exposure(o) or _unusable_node(o, o.cr.node)
    return _reexpose(o, lost) if lost else None


def _assign_rule(o: Observed) -> Actions | None:
    agent = o.agent(o.cr.node)
    usable = agent is not None and agent.connected and not agent.cordoned
    if _active(o) is not None or not o.admitted or not usable:
        return (_wait(o, _operation_deadline(o)),)
    return (_assign(o, o.cr.node, reserved=_reserved_epoch(o)),)


def _start_canceling_rule(o: Observed) -> Actions | None:
    if not o.cr.cancel:
        return None
    active = _active(o)
    actions: list[Action] = [SetPhase(Phase.CANCELING, "canceling: waiting for the agent to stop")]
    if active is not None:
        actions.append(StopAssignment(active.node, active.epoch, "canceled by spec.cancel"))
    return (*actions, _wait(o, None))


def _finish_timeout_rule(o: Observed) -> Actions | None:
    node = _current_node(o)
    return _operation_timeout(o, f"for the agent on node {node} to move more data{_progress(o)}")


def _lost_worker_rule(o: Observed) -> Actions | None:
    lost = _lost_exposure(o) or _agent_gone(o, _current_node(o))
    return _reexpose(o, lost) if lost else None


def _drain_rule(o: Observed) -> Actions | None:
    """A cordoned node: work that will finish within drainGracePeriod (at its current rate) runs to
    its end; any other is handed off at once, and everything still running when the grace is over.
    The exposer pod's PodDisruptionBudget holds ``kubectl drain`` until the exposure is deleted."""
    node = _current_node(o)
    agent = o.agent(node)
    if agent is None or not agent.cordoned:
        return None
    view = _current_assignment(o)
    if view is not None and view.cancel_sent_at is not None and view.cancel_hand_off:
        confirmed_by = view.cancel_sent_at + o.config.agent_grace_period
        if o.now >= confirmed_by:
            return _reexpose(o, f"node {node} is cordoned; the agent did not hand off in time")
        return (_wait(o, confirmed_by),)
    deadline = (agent.cordoned_since or o.now) + o.config.drain_grace_period
    active = _active(o)
    if active is None:
        return (_wait(o, deadline),)
    grace = format_go_duration(o.config.drain_grace_period)
    finish = _projected_finish(o, active)
    if o.now >= deadline:
        reason = f"node {node} is cordoned and drainGracePeriod ({grace}) is over"
    elif finish is None:
        reason = f"node {node} is cordoned and no data has moved yet"
    elif finish > deadline:
        reason = f"node {node} is cordoned; at its current rate the transfer would not end within {grace}"
    else:
        return (_wait(o, finish),)
    return (StopAssignment(active.node, active.epoch, reason, hand_off=True), _wait(o, None))


def _projected_finish(o: Observed, view: AssignmentView) -> datetime | None:
    """When the transfer ends if it keeps its rate since ``running_since`` (None: no rate yet)."""
    if view.running_since is None or view.bytes_total <= 0:
        return None
    elapsed = (o.now - view.running_since).total_seconds()
    moved = view.bytes_done - view.bytes_at_running_since
    if elapsed <= 0 or moved <= 0:
        return None
    remaining = max(0, view.bytes_total - view.bytes_done)
    return o.now + timedelta(seconds=remaining * elapsed / moved)


def _readopt_rule(o: Observed) -> Actions | None:
    """InProgress, the agent is connected but does not run the current epoch (it restarted): the
    exposure is still good, so assign again on the same node with a new epoch. Not in the first
    READOPT_GRACE of its stream: an agent re-sends the results it kept right after its Hello (a
    new leader knows nothing of them yet), and work it already finished must not be sent again."""
    node = _current_node(o)
    agent = o.agent(node)
    if _current_assignment(o) is not None or agent is None or not agent.connected:
        return None
    since = agent.connected_since
    if since is not None and o.now < since + READOPT_GRACE:
        return (_wait(o, since + READOPT_GRACE),)
    return (_assign(o, node), RecordEvent("Normal", "Reassigned", f"the agent on {node} lost the work"))


def _keep_watching_rule(o: Observed) -> Actions | None:
    """Work is running: come back at the operation deadline or when a disconnected agent's grace ends."""
    deadlines = [d for d in (_operation_deadline(o), _agent_grace_end(o, _current_node(o))) if d]
    return (_wait(o, min(deadlines, default=None)),)


def _cancel_confirmed_rule(o: Observed) -> Actions | None:
    view = _current_assignment(o)
    if view is None or view.result is None:
        return None
    return _settle(o, Phase.CANCELED, f"canceled: {view.result.message or 'the agent stopped'}")


def _cancel_unconfirmable_rule(o: Observed) -> Actions | None:
    node = _current_node(o)
    if _agent_gone(o, node) or o.exposure.pod is None:
        return _settle(o, Phase.CANCELED, f"canceled; the agent on node {node} did not confirm")
    deadline = _operation_deadline(o)
    if deadline is not None and o.now >= deadline:
        return _settle(o, Phase.CANCELED, "canceled; operationTimeout passed before the agent confirmed")
    return None


def _cancel_resend_rule(o: Observed) -> Actions | None:
    active = _active(o)
    wait = _wait(o, _operation_deadline(o))
    if active is None:
        return (wait,)
    return (StopAssignment(active.node, active.epoch, "canceled by spec.cancel"), wait)


def _finish(o: Observed) -> Actions:
    """Terminal: stop any leftover assignment, hand over a restored volume, clean up (the exposure
    and, for uploads, the snapshot Velero handed over), let go."""
    actions: list[Action] = []
    active = _active(o)
    if active is not None:
        actions.append(StopAssignment(active.node, active.epoch, f"the {o.cr.kind} is {o.cr.phase}"))
    cleanup = _cleanup(o, f"the {o.cr.kind} is {o.cr.phase}")
    if _needs_hand_over(o):
        actions.extend((_bind(o), _wait(o, None)))
    elif cleanup:
        actions.extend((*cleanup, _wait(o, None)))
    elif o.cr.has_finalizer:
        actions.append(RemoveFinalizer())
    return tuple(actions)


def _abort_for_deletion(o: Observed) -> Actions:
    if not o.cr.has_finalizer and not o.exposure.exists:
        return ()
    return _settle(o, Phase.CANCELED, f"the {o.cr.kind} was deleted before it finished")


# ---------------------------------------------------------------------------------------------
# Steps shared by several phases


def _settle(
    o: Observed, phase: Phase, message: str, extra: tuple[tuple[str, StatusValue], ...] = ()
) -> Actions:
    """Enter a terminal phase: stop the agent, record the outcome, remove the exposure."""
    actions: list[Action] = []
    active = _active(o)
    if active is not None:
        actions += [StopAssignment(active.node, active.epoch, message), RevokeAssignment(active.epoch + 1)]
    fields = (*extra, ("completionTimestamp", format_timestamp(o.now)))
    hand_over = _needs_hand_over(o)
    cleanup = [] if hand_over else _cleanup(o, f"the {o.cr.kind} is {phase}")
    # Nothing left to clean up (a download handed over and its exposure gone, a CR canceled before
    # anything was made): the finalizer goes with the phase, one write instead of two. Not for a
    # CR being deleted: without its finalizer it would vanish before its phase is written.
    let_go = not (hand_over or cleanup or active or o.cr.deleting) and o.cr.has_finalizer
    actions.append(SetPhase(phase, message, fields, remove_finalizer=let_go))
    if phase is Phase.FAILED:
        actions.append(RecordEvent("Warning", "Failed", message))
    actions.extend(cleanup)
    return tuple(actions)


def _cleanup(o: Observed, reason: str) -> list[Action]:
    """What a finished CR leaves to delete: for an upload first the source snapshot Velero handed
    over (released to a ready clone that holds its handle, so the clone alone deletes the storage
    snapshot; otherwise the source VolumeSnapshot is deleted and its content follows its own
    policy), then the whole exposure, clone snapshot included."""
    actions: list[Action] = []
    source = _source_cleanup(o)
    if source is not None:
        actions.append(source)
    if o.exposure.exists:
        left = _content_left_behind(o)
        actions.append(DeleteExposure(reason, snapshot=True, snapshot_content=left))
    return actions


def _content_left_behind(o: Observed) -> bool:
    """The clone content outlived its VolumeSnapshot by ``CONTENT_FOLLOW_GRACE`` after the CR
    finished, and nothing is deleting it: the snapshot controller, which deletes the Delete-policy
    content of a deleted snapshot, did not (the snapshot never bound it, or no controller runs)."""
    clone = o.exposure
    if not clone.snapshot_content or clone.snapshot or clone.snapshot_content_deleting:
        return False
    finished = o.cr.completed_at or o.cr.created_at or o.now
    return o.now >= finished + CONTENT_FOLLOW_GRACE


def _source_cleanup(o: Observed) -> Action | None:
    if not o.cr.is_upload:
        return None
    release = _source_release(o)
    if release is not None:
        return release
    if o.snapshot.state is not SnapshotState.ABSENT and not o.snapshot.deleting:
        return DeleteSourceSnapshot(o.cr.source_namespace, o.cr.volume_snapshot)
    return None


def _source_release(o: Observed) -> ReleaseSourceSnapshot | None:
    """Release the source when something of it is left and the clone holds the same storage
    snapshot: the clone content has its handle and the clone VolumeSnapshot is ready on it (the
    storage system accepted the clone; the snapshot controller protects the clone content)."""
    clone, source = o.exposure, o.source_content
    if not o.cr.is_upload or not (clone.snapshot_content and clone.snapshot_ready and clone.snapshot_handle):
        return None
    if source is None:
        return None
    if source.snapshot_handle != clone.snapshot_handle:
        return None  # not the snapshot the clone holds: never touch it
    snapshot_left = o.snapshot.state is not SnapshotState.ABSENT and not o.snapshot.deleting
    if source.deleting and not snapshot_left:
        return None  # both are on their way out
    return ReleaseSourceSnapshot(
        o.cr.source_namespace, o.cr.volume_snapshot, source.name, clone.snapshot_handle, o.cr.name
    )


def _fail(o: Observed, message: str) -> Actions:
    return _settle(o, Phase.FAILED, message)


def _cancel_now(o: Observed) -> Actions:
    """spec.cancel before any data moves: nothing to wait for."""
    return _settle(o, Phase.CANCELED, f"canceled by spec.cancel in phase {o.cr.phase}")


def _reexpose(o: Observed, reason: str) -> Actions:
    """Throw the exposure away and expose again (elsewhere if the node is the problem)."""
    count, limit = o.cr.reexposures + 1, o.config.max_reexposures
    if count > limit:
        return _fail(o, f"{reason}; gave up after {limit} re-exposures (maxReexposures={limit})")
    actions: list[Action] = []
    active = _active(o)
    if active is not None:
        actions.append(StopAssignment(active.node, active.epoch, reason, hand_off=True))
    if _latest_epoch(o) and not _revoked(o):
        actions.append(RevokeAssignment(_latest_epoch(o) + 1))
    actions += [
        DeleteExposure(reason),
        MarkReexposure(count, o.now),
        SetPhase(Phase.ACCEPTED, f"re-exposing ({count} of {limit}): {reason}", (("node", ""),)),
        RecordEvent("Warning", "Reexposing", reason),
    ]
    return tuple(actions)


def _result_rule(o: Observed) -> Actions | None:
    """The agent's result for the current epoch, turned into the next step (None: no result)."""
    view = _current_assignment(o)
    result = view.result if view is not None else None
    if result is None:
        return None
    if result.outcome is Outcome.COMPLETED:
        due = _agent_write_due(o, view)
        return (_wait(o, due),) if due is not None else _complete(o, result)
    node = view.node if view is not None else ""
    if result.outcome is Outcome.FAILED:
        return _fail(o, f"the agent on node {node} failed: {result.message}")
    if result.outcome is Outcome.CANCELED:
        return _settle(o, Phase.CANCELED, f"canceled by the agent: {result.message}")
    return _reexpose(o, f"the agent on node {node} handed the work off: {result.message}")


def _agent_write_due(o: Observed, view: AssignmentView | None) -> datetime | None:
    """An upload's agent writes Completed itself before it sends its result, so a result that
    arrives before the cache shows that write is given AGENT_WRITE_GRACE for it to show (its
    event wakes the CR) instead of a write that could only conflict. None: write now."""
    if not o.cr.is_upload or view is None or view.progressed_at is None:
        return None
    due = view.progressed_at + AGENT_WRITE_GRACE
    return due if o.now < due else None


def _complete(o: Observed, result: messages.AssignmentResult) -> Actions:
    fields: list[tuple[str, StatusValue]] = [
        ("path", result.path),
        ("progress.totalBytes", result.bytes_total),
        ("progress.bytesDone", result.bytes_done),
        ("dataMoverResult", result.result),
    ]
    if o.cr.is_upload:
        fields += [
            ("snapshotID", result.snapshot_id),
            ("incrementalBytes", result.bytes_new),
            ("snapshotSize", result.bytes_total),
        ]
        return _settle(o, Phase.COMPLETED, "", tuple(fields))
    target = o.target_pvc
    if target is None:
        return _fail(o, f"the target PVC {_target(o)} disappeared; the restored volume has nowhere to go")
    if target.volume_name:  # the agent's message: what the restore withheld, if anything
        return _settle(o, Phase.COMPLETED, result.message, tuple(fields))
    if o.exposure.pv_name and not _pointed_at_target(o):
        return (_bind(o), _wait(o, _operation_deadline(o)))
    timeout = _operation_timeout(o, f"for the restored volume to bind to PVC {_target(o)}")
    return timeout or (_wait(o, _operation_deadline(o)),)


def _spec_problem(o: Observed) -> str:
    """What is wrong with the spec itself (the first problem), or ""."""
    cr = o.cr
    config_problem = data_mover_config_problem(cr.data_mover_config)
    checks: list[tuple[object, str]] = [
        (cr.backup_storage_location, "spec.backupStorageLocation is empty: name the BackupStorageLocation"),
        (cr.source_namespace, "spec.sourceNamespace is empty: name the namespace the volume belongs to"),
        (not config_problem, config_problem),
    ]
    if cr.is_upload:
        checks += [
            (
                cr.snapshot_type == "CSI",
                f"spec.snapshotType is {cr.snapshot_type!r}: Barge moves CSI snapshot data only "
                "(snapshotType: CSI)",
            ),
            (cr.volume_snapshot, "spec.csiSnapshot.volumeSnapshot is empty: name the VolumeSnapshot"),
        ]
    else:
        checks += [
            (cr.target_pvc, "spec.targetVolume.pvc is empty: name the PVC to restore into"),
            (cr.target_namespace, "spec.targetVolume.namespace is empty: name the target PVC's namespace"),
            (cr.snapshot_id, "spec.snapshotID is empty: name the repository snapshot to restore"),
        ]
    return next((message for satisfied, message in checks if not satisfied), "")


def _world_problem(o: Observed) -> str:
    """A referenced object that is missing for good or broken, or ""."""
    cr = o.cr
    settled = cr.created_at is None or o.now >= cr.created_at + MISSING_OBJECT_GRACE
    if not o.bsl_present and settled:
        return (
            f"BackupStorageLocation {cr.namespace}/{cr.backup_storage_location} not found: "
            "create it or fix spec.backupStorageLocation"
        )
    if not cr.is_upload:
        return ""
    snapshot = f"VolumeSnapshot {cr.source_namespace}/{cr.volume_snapshot}"
    if o.snapshot.state is SnapshotState.ERROR:
        return f"{snapshot} failed: {o.snapshot.error}"
    if o.snapshot.state is SnapshotState.ABSENT and settled and not o.exposure.exists:
        return f"{snapshot} not found: fix spec.csiSnapshot.volumeSnapshot or recreate the snapshot"
    return ""


def _ready_to_expose(o: Observed) -> bool:
    if o.cr.is_upload:
        return o.snapshot.state is SnapshotState.READY or o.exposure.snapshot_content
    target = o.target_pvc
    if target is None:
        return False
    waits_for_consumer = target.wait_for_first_consumer and not o.config.restore_pvc.ignore_delay_binding
    return not waits_for_consumer or bool(target.selected_node)


def _waiting_for(o: Observed) -> str:
    """What an Accepted item is waiting for, for the timeout message."""
    cr, pod = o.cr, o.exposure.pod
    if cr.is_upload and o.snapshot.state is not SnapshotState.READY and not o.exposure.snapshot_content:
        return f"waiting for VolumeSnapshot {cr.source_namespace}/{cr.volume_snapshot} to become ready"
    if not cr.is_upload and o.target_pvc is None:
        return f"waiting for the target PVC {_target(o)} to exist"
    if not cr.is_upload and not _ready_to_expose(o):
        return f"waiting for the target PVC {_target(o)} to be used by a pod (WaitForFirstConsumer)"
    if not o.exposure.pvc or not o.exposure.pv_name:
        return f"waiting for PVC {_object(o)} to be bound"
    if pod is None:
        return f"waiting for exposer pod {_object(o)} to be created"
    return f"waiting for exposer pod {_object(o)} to be Running (it is {pod.phase}{_reason(pod.reason)})"


def _lost_exposure(o: Observed) -> str:
    pod = o.exposure.pod
    if pod is None:
        return f"exposer pod {_object(o)} disappeared"
    if pod.deleting:
        return f"exposer pod {_object(o)} is being deleted{_reason(pod.reason)}"
    if pod.phase is not PodPhase.RUNNING:
        return f"exposer pod {_object(o)} is {pod.phase}{_reason(pod.reason)}"
    return ""


def _unusable_node(o: Observed, node: str) -> str:
    """Prepared, nothing running yet: a cordoned node is abandoned at once, a missing agent after
    agentGracePeriod."""
    agent = o.agent(node)
    if agent is not None and agent.cordoned:
        return f"node {node} is cordoned"
    return _agent_gone(o, node)


def _agent_grace_end(o: Observed, node: str) -> datetime | None:
    """When a missing agent's work on ``node`` may be moved (None: the agent is connected): the
    grace counts from when it was last seen (or the work started), but no earlier than this leader's
    term began, since no agent can reach a coordinator that does not lead: after a failover or a
    re-election every agent needs a moment to find the leader and report what it runs."""
    agent = o.agent(node)
    if agent is not None and agent.connected:
        return None
    since = agent.disconnected_since if agent is not None else None
    since = since or o.cr.started_at or o.cr.accepted_at
    if since is not None and o.leading_since is not None:
        since = max(since, o.leading_since)  # no agent could reach this leader before its term began
    ends = [since + o.config.agent_grace_period if since else None, agent.reconnect_by if agent else None]
    return max((end for end in ends if end is not None), default=None)


def _agent_gone(o: Observed, node: str) -> str:
    grace_end = _agent_grace_end(o, node)
    if grace_end is None or o.now < grace_end:
        return ""
    grace = format_go_duration(o.config.agent_grace_period)
    return f"the agent on node {node} has been disconnected for more than {grace}"


def _needs_hand_over(o: Observed) -> bool:
    """A completed DataDownload whose restored PV is neither bound to the target PVC nor already
    pointed at it (then only the binder is left to act: binding again would only repeat writes)."""
    if o.cr.is_upload or o.cr.phase is not Phase.COMPLETED:
        return False
    target = o.target_pvc
    if not o.exposure.pv_name or target is None or target.volume_name:
        return False
    return not _pointed_at_target(o)


def _pointed_at_target(o: Observed) -> bool:
    """The restored PV's claimRef already names the target PVC: the hand-over is done and only the
    binder is left to act (handing over again would only repeat the writes)."""
    target = o.target_pvc
    return target is not None and o.exposure.pv_claim == f"{target.namespace}/{target.name}"


# ---------------------------------------------------------------------------------------------
# Assignments and epochs


def _latest_epoch(o: Observed) -> int:
    """The newest epoch anyone knows: the fence annotation may lag the hub's record in the cache."""
    fence_epoch = o.cr.fence.epoch if o.cr.fence else 0
    hub_epoch = o.assignment.epoch if o.assignment else 0
    return max(fence_epoch, hub_epoch)


def _revoked(o: Observed) -> bool:
    fence = o.cr.fence
    return fence is not None and fence.node == REVOKED_NODE and fence.epoch == _latest_epoch(o)


def _current_assignment(o: Observed) -> AssignmentView | None:
    view = o.assignment
    return view if view is not None and view.epoch == _latest_epoch(o) else None


def _active(o: Observed) -> AssignmentView | None:
    """The current assignment if an agent may still be working on it and was not told to stop."""
    view = _current_assignment(o)
    if view is None or not view.may_run:
        return None
    return view


def _current_node(o: Observed) -> str:
    view = _current_assignment(o)
    if view is not None:
        return view.node
    return o.cr.fence.node if o.cr.fence else o.cr.node


# The phases in which the agent the fence names may be running the CR's assignment.
_RUNNABLE_PHASES = (Phase.PREPARED, Phase.IN_PROGRESS, Phase.CANCELING)


def claim_problem(cr: CrView | None, node: str, claim: messages.RunningAssignment) -> str:
    """Why an agent's claim to run ``claim`` on ``node`` must not be adopted ("": adopt it).

    A new leader knows only what agents claim in their Hello and what the CRs say. The fence is
    the CR's record of the one epoch and node that may run it (written before the assignment is
    sent), so a claim that matches it, on a CR still in a runnable phase, is the work the previous
    leader handed out; any other (an older epoch, another node's, a finished or deleted CR's, or a
    forged one) would let the agent steer the CR's decisions, and is stopped instead."""
    if cr is None or cr.uid != claim.assignment_id:
        return f"no DataUpload or DataDownload has uid {claim.assignment_id}"
    if cr.datamover != DATAMOVER:
        return f"{cr.ref} is not served by Barge"
    if cr.deleting or cr.phase not in _RUNNABLE_PHASES:
        return f"{cr.ref} is {'being deleted' if cr.deleting else cr.phase}"
    claimed = Fence(claim.epoch, node)
    if cr.fence != claimed:
        holder = cr.fence.render() if cr.fence is not None else "no assignment"
        return f"{cr.ref} is fenced to {holder}, not {claimed.render()}"
    return ""


def _reserved_epoch(o: Observed) -> int | None:
    """The epoch ``_reserve_epoch`` wrote for this exposure's node, if the hub never sent it."""
    latest, fence = _latest_epoch(o), o.cr.fence
    sent = o.assignment.epoch if o.assignment else 0
    if fence is None or fence != Fence(latest, o.cr.node) or sent >= latest:
        return None
    return latest


def _assign(o: Observed, node: str, reserved: int | None = None) -> Assign:
    """Assign the next epoch, or the one reserved with Prepared (its fence is already written)."""
    epoch = reserved or _latest_epoch(o) + 1
    return Assign(node, epoch, _assignment_message(o, epoch))


def _assignment_message(o: Observed, epoch: int) -> messages.Assignment:
    cr = o.cr
    pod = o.exposure.pod
    if cr.is_upload:
        mode = o.source_pvc.volume_mode if o.source_pvc else VolumeMode.FILESYSTEM
    else:
        mode = o.target_pvc.volume_mode if o.target_pvc else VolumeMode.FILESYSTEM
    tags = tuple(sorted((k, v) for k, v in cr.labels if k.startswith("velero.io/")))
    return messages.Assignment(
        assignment_id=cr.uid,
        epoch=epoch,
        kind=messages.AssignmentKind.UPLOAD if cr.is_upload else messages.AssignmentKind.DOWNLOAD,
        cr=messages.CrRef(cr.kind, cr.namespace, cr.name, cr.uid),
        pod_uid=pod.uid if pod else "",
        volume_name=o.exposure.pv_name,
        volume_mode=mode,
        backup_storage_location=cr.backup_storage_location,
        source_namespace=cr.source_namespace,
        snapshot_id=cr.snapshot_id,
        source_pvc=cr.source_pvc,
        tags=tags,
        data_mover_config=cr.data_mover_config,
    )


def _bind(o: Observed) -> BindRestoredVolume:
    return BindRestoredVolume(o.exposure.pv_name, o.cr.target_namespace, o.cr.target_pvc)


# ---------------------------------------------------------------------------------------------
# Deadlines and messages


def _prepare_deadline(o: Observed) -> datetime | None:
    started = o.cr.prepare_started_at
    return started + o.config.prepare_timeout if started else None


def _operation_deadline(o: Observed) -> datetime | None:
    """When ``spec.operationTimeout`` runs out: that long after the agent last showed life for the
    current assignment (sent or adopted, bytes moved, result reported; for a cancel, since it was
    sent). Velero's own mover uses operationTimeout only to bound waits on one step, and Velero
    sets it to the CSI snapshot timeout (10m by default): counting the queue for a transfer slot or
    a long transfer that keeps moving would fail large backups. Nothing assigned: no deadline (the
    work is queued; prepareTimeout bounds the exposure, Velero's itemOperationTimeout the whole)."""
    view = _current_assignment(o)
    if view is None or view.progressed_at is None:
        return None
    since = view.progressed_at
    if o.cr.phase is Phase.CANCELING and view.cancel_sent_at is not None:
        since = view.cancel_sent_at
    return since + o.cr.operation_timeout


def _operation_timeout(o: Observed, waiting_for: str) -> Actions | None:
    deadline = _operation_deadline(o)
    if deadline is None or o.now < deadline:
        return None
    limit = format_go_duration(o.cr.operation_timeout)
    return _fail(o, f"timed out after {limit} (operationTimeout) waiting {waiting_for}")


def _wait(o: Observed, deadline: datetime | None) -> Requeue:
    """Come back at the deadline, but at least every MAX_WAIT (and no sooner than MIN_WAIT)."""
    if deadline is None:
        return Requeue(MAX_WAIT)
    return Requeue(max(MIN_WAIT, min(MAX_WAIT, deadline - o.now)))


def _object(o: Observed) -> str:
    return f"{o.cr.namespace}/{o.cr.name}"


def _target(o: Observed) -> str:
    return f"{o.cr.target_namespace}/{o.cr.target_pvc}"


def _reason(reason: str) -> str:
    return f": {reason}" if reason else ""


def _progress(o: Observed) -> str:
    view = _current_assignment(o)
    done, total = (view.bytes_done, view.bytes_total) if view else (o.cr.bytes_done, o.cr.bytes_total)
    return f" ({done} of {total} bytes done)" if total else ""


_RULES: dict[Phase, tuple[Rule, ...]] = {
    Phase.NEW: (_cancel_rule, _bad_spec_rule, _broken_world_rule, _accept_rule),
    Phase.ACCEPTED: (
        _cancel_rule,
        _broken_world_rule,
        _release_source_rule,
        _exposure_terminating_rule,
        _stale_pod_rule,
        _pod_failed_rule,
        _exposed_rule,
        _prepare_timeout_rule,
        _expose_rule,
    ),
    Phase.PREPARED: (
        _cancel_rule,
        _result_rule,
        _start_timeout_rule,
        _release_source_rule,
        _unusable_exposure_rule,
        _assign_rule,
    ),
    Phase.IN_PROGRESS: (
        _start_canceling_rule,
        _result_rule,
        _finish_timeout_rule,
        _release_source_rule,
        _lost_worker_rule,
        _drain_rule,
        _readopt_rule,
        _keep_watching_rule,
    ),
    Phase.CANCELING: (_cancel_confirmed_rule, _cancel_unconfirmable_rule, _cancel_resend_rule),
}
