"""Whole lives of a DataUpload and a DataDownload, driven only by ``decide``: a tiny in-memory
world executes each action the way the controller's adapters will, and the "cluster" (scheduler,
kubelet, agent) reacts in between. Shows how the pieces fit and that the machine reaches its end."""

from __future__ import annotations

from dataclasses import replace
from datetime import timedelta

from barge.control.messages import Outcome
from barge.control.naming import Fence
from coordinator.decide import decide
from coordinator.exposer import manifests
from coordinator.model import (
    Action,
    Assign,
    AssignmentView,
    BindRestoredVolume,
    CreateExposure,
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
    SnapshotView,
    StopAssignment,
    parse_timestamp,
)
from tests.coordinator_world import (
    NODE,
    OTHER_NODE,
    SOURCE_CONTENT,
    TARGET_PVC,
    agent,
    clone_fields,
    download_cr,
    finished,
    observed,
    upload_cr,
)


def execute(world: Observed, log: list[str]) -> Observed:
    """Run decide once and apply its actions to the world, as the controller would."""
    cr = world.cr
    for action in decide(world):
        log.append(type(action).__name__)
        if isinstance(action, RemoveFinalizer):
            cr = replace(cr, has_finalizer=False)
        elif isinstance(action, SetPhase):
            fields = dict(action.fields)
            cr = replace(cr, phase=action.phase, node=str(fields.get("node", cr.node)))
            kept = (cr.has_finalizer or action.add_finalizer) and not action.remove_finalizer
            cr = replace(cr, has_finalizer=kept)
            if "acceptedTimestamp" in fields:
                cr = replace(cr, accepted_at=parse_timestamp(str(fields["acceptedTimestamp"])))
        elif isinstance(action, Assign):
            cr = replace(cr, fence=Fence(action.epoch, action.node))
            world = replace(world, assignment=AssignmentView(action.epoch, action.node, HubState.SENT))
        elif isinstance(action, RevokeAssignment):
            cr = replace(cr, fence=Fence(action.epoch, "-"))
        elif isinstance(action, MarkReexposure):
            cr = replace(cr, reexposures=action.count, reexposed_at=action.at)
        else:
            world = apply_to_volumes(replace(world, cr=cr), action)
    return replace(world, cr=cr, now=world.now + timedelta(seconds=5))


def apply_to_volumes(world: Observed, action: Action) -> Observed:
    """The actions on exposure objects and snapshots (the rest only talk to agents or log)."""
    cr = world.cr
    if isinstance(action, CreateExposure):
        created = manifests(action.plan)
        assert created.pod["metadata"]["name"] == cr.name
        pod = PodView("pod-1", PodPhase.PENDING, generation=action.plan.generation)
        exposed = replace(world.exposure, pvc=True, pv_name="", pod=pod, disruption_budget=True)
        if cr.is_upload and not world.exposure.snapshot_content:  # a new clone, not ready yet
            exposed = replace(exposed, snapshot_content=True, snapshot=True, **clone_fields(ready=False))  # type: ignore[arg-type]
        return replace(world, exposure=exposed)
    if isinstance(action, DeleteExposure):
        kept = ExposureView()
        if not action.snapshot:  # a re-exposure keeps the clone
            kept = replace(world.exposure, pvc=False, pv_name="", pod=None, disruption_budget=False)
        return replace(world, exposure=kept)
    if isinstance(action, ReleaseSourceSnapshot):
        assert world.exposure.snapshot_handle == action.snapshot_handle  # the clone holds it
        return replace(world, snapshot=SnapshotView(), source_content=None)
    if isinstance(action, DeleteSourceSnapshot):
        return replace(world, snapshot=SnapshotView(), source_content=None)
    assert isinstance(action, (Requeue, RecordEvent, StopAssignment, BindRestoredVolume))
    if isinstance(action, BindRestoredVolume):
        return replace(
            world, target_pvc=replace(TARGET_PVC, volume_name=action.pv_name), exposure=ExposureView()
        )
    return world


def snapshot_controller_readies_clone(world: Observed) -> Observed:
    return replace(world, exposure=replace(world.exposure, **clone_fields(ready=True)))  # type: ignore[arg-type]


def kubelet_runs_pod(world: Observed, node: str) -> Observed:
    pod = world.exposure.pod
    assert pod is not None
    running_pod = replace(pod, phase=PodPhase.RUNNING, node=node)
    return replace(world, exposure=replace(world.exposure, pv_name="pv-1", pod=running_pod))


def agent_starts_and_finishes(world: Observed, outcome: Outcome = Outcome.COMPLETED) -> Observed:
    fence = world.cr.fence
    assert fence is not None
    started = replace(world, cr=replace(world.cr, phase=Phase.IN_PROGRESS))
    return replace(started, assignment=finished(outcome, fence.node, fence.epoch, snapshot_id="s1"))


def test_an_upload_goes_from_new_to_completed_and_lets_go() -> None:
    log: list[str] = []
    world = observed(upload_cr(has_finalizer=False), source_content=SOURCE_CONTENT)
    world = execute(world, log)  # New -> Accepted
    assert (world.cr.phase, world.cr.has_finalizer) == (Phase.ACCEPTED, True)
    world = execute(world, log)  # exposure created
    world = execute(world, log)  # the clone is not ready yet: the source stays
    assert world.source_content == SOURCE_CONTENT
    world = execute(snapshot_controller_readies_clone(world), log)  # source released to the clone
    assert world.source_content is None
    world = execute(kubelet_runs_pod(world, NODE), log)  # -> Prepared
    assert (world.cr.phase, world.cr.node) == (Phase.PREPARED, NODE)
    world = execute(world, log)  # assigned
    assert world.cr.fence == Fence(1, NODE)
    world = execute(agent_starts_and_finishes(world), log)  # -> Completed, exposure deleted
    assert world.cr.phase is Phase.COMPLETED
    world = execute(world, log)
    assert world.cr.has_finalizer is False
    assert world.exposure == ExposureView()  # the clone, and with it the storage snapshot, is gone
    assert decide(world) == ()
    assert log == [
        "SetPhase",
        "CreateExposure",
        "Requeue",
        "Requeue",
        "ReleaseSourceSnapshot",
        "Requeue",
        "SetPhase",
        "Assign",
        "SetPhase",
        "DeleteExposure",
        "RemoveFinalizer",
    ]


def test_a_lost_agent_moves_the_upload_to_another_node() -> None:
    log: list[str] = []
    world = observed(upload_cr(), source_content=SOURCE_CONTENT)
    for _ in range(2):
        world = execute(world, log)
    world = execute(snapshot_controller_readies_clone(world), log)  # released
    world = execute(kubelet_runs_pod(world, NODE), log)
    world = execute(world, log)  # assigned epoch 1 on NODE
    gone = agent(NODE, connected=False, disconnected_since=world.now)
    world = replace(world, cr=replace(world.cr, phase=Phase.IN_PROGRESS), agents=(gone, agent(OTHER_NODE)))
    world = execute(world, log)  # within the grace: wait
    assert world.cr.phase is Phase.IN_PROGRESS
    world = execute(replace(world, now=world.now + timedelta(minutes=2)), log)  # re-expose
    assert (world.cr.phase, world.cr.reexposures, world.cr.fence) == (Phase.ACCEPTED, 1, Fence(2, "-"))
    assert world.exposure.snapshot_ready  # the clone survives: the source is gone, it is all there is
    assert world.snapshot == SnapshotView()
    world = execute(world, log)  # new exposure from the clone, avoiding NODE
    assert log[-2] == "CreateExposure"
    world = execute(kubelet_runs_pod(world, OTHER_NODE), log)
    world = execute(world, log)
    assert world.cr.fence == Fence(3, OTHER_NODE)
    world = execute(agent_starts_and_finishes(world), log)
    assert world.cr.phase is Phase.COMPLETED


def test_a_download_hands_its_volume_to_the_target_pvc_before_completing() -> None:
    log: list[str] = []
    world = observed(download_cr())
    for _ in range(2):
        world = execute(world, log)
    world = execute(kubelet_runs_pod(world, NODE), log)
    world = execute(world, log)
    world = execute(agent_starts_and_finishes(world), log)  # bind first
    assert world.cr.phase is Phase.IN_PROGRESS
    assert world.target_pvc is not None
    assert world.target_pvc.volume_name == "pv-1"
    world = execute(world, log)  # now Completed, and let go in the same write: nothing is left
    assert world.cr.phase is Phase.COMPLETED
    assert not world.cr.has_finalizer
    assert decide(world) == ()
    assert log[-3:] == ["BindRestoredVolume", "Requeue", "SetPhase"]
