"""barge.control.messages <-> protobuf (proto/barge/v1/control.proto), both directions.

Dataclass -> protobuf never fails. Protobuf -> dataclass raises ``InvalidInput`` for what a
well-behaved peer never sends (an unset enum, an empty envelope), naming the field.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import TypeVar

from barge.control.messages import (
    AgentEvent,
    Assignment,
    AssignmentKind,
    AssignmentResult,
    BackupSnapshot,
    CancelAssignment,
    CoordinatorCommand,
    CrRef,
    Drain,
    ForgetBackup,
    Heartbeat,
    Hello,
    Maintain,
    MaintenanceResult,
    Outcome,
    Pairs,
    ProgressReport,
    RunningAssignment,
    Sweep,
    SweepResult,
    VolumeMode,
    Welcome,
)
from barge.errors import InvalidInput
from barge.rpc.generated import control_pb2 as pb

_KINDS = {
    AssignmentKind.UPLOAD: pb.ASSIGNMENT_KIND_UPLOAD,
    AssignmentKind.DOWNLOAD: pb.ASSIGNMENT_KIND_DOWNLOAD,
}
_MODES = {VolumeMode.FILESYSTEM: pb.VOLUME_MODE_FILESYSTEM, VolumeMode.BLOCK: pb.VOLUME_MODE_BLOCK}
_OUTCOMES = {
    Outcome.COMPLETED: pb.OUTCOME_COMPLETED,
    Outcome.FAILED: pb.OUTCOME_FAILED,
    Outcome.CANCELED: pb.OUTCOME_CANCELED,
    Outcome.HANDED_OFF: pb.OUTCOME_HANDED_OFF,
}


_K = TypeVar("_K")
_V = TypeVar("_V")


def _inverse(mapping: dict[_K, _V]) -> dict[_V, _K]:
    return {v: k for k, v in mapping.items()}


_KINDS_BACK = _inverse(_KINDS)
_MODES_BACK = _inverse(_MODES)
_OUTCOMES_BACK = _inverse(_OUTCOMES)


def _enum_back(table: dict[_K, _V], value: _K, field: str) -> _V:
    try:
        return table[value]
    except KeyError:
        raise InvalidInput(f"{field}={value} is not a known value; the peer must set it") from None


# --- dataclass -> protobuf -------------------------------------------------------------------------


def _pairs(pairs: Pairs) -> list[pb.StringPair]:
    return [pb.StringPair(key=k, value=v) for k, v in pairs]


def _running(items: Iterable[RunningAssignment]) -> list[pb.RunningAssignment]:
    return [
        pb.RunningAssignment(
            assignment_id=r.assignment_id, epoch=r.epoch, bytes_done=r.bytes_done, bytes_total=r.bytes_total
        )
        for r in items
    ]


def _assignment_to_pb(a: Assignment) -> pb.Assignment:
    return pb.Assignment(
        assignment_id=a.assignment_id,
        epoch=a.epoch,
        kind=_KINDS[a.kind],
        cr=pb.CrRef(kind=a.cr.kind, namespace=a.cr.namespace, name=a.cr.name, uid=a.cr.uid),
        pod_uid=a.pod_uid,
        volume_name=a.volume_name,
        volume_mode=_MODES[a.volume_mode],
        backup_storage_location=a.backup_storage_location,
        source_namespace=a.source_namespace,
        snapshot_id=a.snapshot_id,
        source_pvc=a.source_pvc,
        tags=_pairs(a.tags),
        data_mover_config=_pairs(a.data_mover_config),
    )


def _result_to_pb(r: AssignmentResult) -> pb.AssignmentResult:
    return pb.AssignmentResult(
        assignment_id=r.assignment_id,
        epoch=r.epoch,
        outcome=_OUTCOMES[r.outcome],
        message=r.message,
        snapshot_id=r.snapshot_id,
        path=r.path,
        bytes_total=r.bytes_total,
        bytes_done=r.bytes_done,
        bytes_new=r.bytes_new,
        result=_pairs(r.result),
    )


def _sweep_to_pb(s: Sweep) -> pb.Sweep:
    forget = [
        pb.ForgetBackup(
            source_namespace=f.source_namespace,
            backup_name=f.backup_name,
            backup_uid=f.backup_uid,
            snapshot_ids=list(f.snapshot_ids),
        )
        for f in s.forget
    ]
    return pb.Sweep(
        sweep_id=s.sweep_id,
        velero_namespace=s.velero_namespace,
        backup_storage_location=s.backup_storage_location,
        forget=forget,
    )


def _sweep_result_to_pb(r: SweepResult) -> pb.SweepResult:
    snapshots = [
        pb.BackupSnapshot(
            source_namespace=b.source_namespace,
            snapshot_id=b.snapshot_id,
            backup_name=b.backup_name,
            backup_uid=b.backup_uid,
            time=b.time,
        )
        for b in r.snapshots
    ]
    return pb.SweepResult(
        sweep_id=r.sweep_id,
        message=r.message,
        backups_in_location=list(r.backups_in_location),
        snapshots=snapshots,
        forgotten=list(r.forgotten),
        kept=list(r.kept),
        repositories=list(r.repositories),
    )


def command_to_pb(command: CoordinatorCommand, message_id: str) -> pb.CoordinatorMessage:
    match command:
        case Welcome():
            welcome = pb.Welcome(
                coordinator_id=command.coordinator_id, heartbeat_interval_s=command.heartbeat_interval_s
            )
            return pb.CoordinatorMessage(message_id=message_id, welcome=welcome)
        case Assignment():
            return pb.CoordinatorMessage(message_id=message_id, assignment=_assignment_to_pb(command))
        case CancelAssignment():
            cancel = pb.CancelAssignment(
                assignment_id=command.assignment_id,
                epoch=command.epoch,
                reason=command.reason,
                hand_off=command.hand_off,
            )
            return pb.CoordinatorMessage(message_id=message_id, cancel=cancel)
        case Drain():
            drain = pb.Drain(grace_seconds=command.grace_seconds, reason=command.reason)
            return pb.CoordinatorMessage(message_id=message_id, drain=drain)
        case Sweep():
            return pb.CoordinatorMessage(message_id=message_id, sweep=_sweep_to_pb(command))
        case Maintain():
            return pb.CoordinatorMessage(message_id=message_id, maintain=_maintain_to_pb(command))


def event_to_pb(event: AgentEvent, message_id: str) -> pb.AgentMessage:
    match event:
        case Hello():
            hello = pb.Hello(
                node_name=event.node_name,
                agent_version=event.agent_version,
                max_concurrent=event.max_concurrent,
                running=_running(event.running),
            )
            return pb.AgentMessage(message_id=message_id, hello=hello)
        case Heartbeat():
            heartbeat = pb.Heartbeat(running=_running(event.running))
            return pb.AgentMessage(message_id=message_id, heartbeat=heartbeat)
        case ProgressReport():
            progress = pb.ProgressReport(
                assignment_id=event.assignment_id,
                epoch=event.epoch,
                bytes_done=event.bytes_done,
                bytes_total=event.bytes_total,
            )
            return pb.AgentMessage(message_id=message_id, progress=progress)
        case AssignmentResult():
            return pb.AgentMessage(message_id=message_id, result=_result_to_pb(event))
        case SweepResult():
            return pb.AgentMessage(message_id=message_id, sweep_result=_sweep_result_to_pb(event))
        case MaintenanceResult():
            result = _maintenance_result_to_pb(event)
            return pb.AgentMessage(message_id=message_id, maintenance_result=result)


# --- protobuf -> dataclass -------------------------------------------------------------------------


def _pairs_back(pairs: Iterable[pb.StringPair]) -> Pairs:
    return tuple((p.key, p.value) for p in pairs)


def _running_back(items: Iterable[pb.RunningAssignment]) -> tuple[RunningAssignment, ...]:
    return tuple(RunningAssignment(r.assignment_id, r.epoch, r.bytes_done, r.bytes_total) for r in items)


def _assignment_back(a: pb.Assignment) -> Assignment:
    return Assignment(
        assignment_id=a.assignment_id,
        epoch=a.epoch,
        kind=_enum_back(_KINDS_BACK, a.kind, "Assignment.kind"),
        cr=CrRef(kind=a.cr.kind, namespace=a.cr.namespace, name=a.cr.name, uid=a.cr.uid),
        pod_uid=a.pod_uid,
        volume_name=a.volume_name,
        volume_mode=_enum_back(_MODES_BACK, a.volume_mode, "Assignment.volume_mode"),
        backup_storage_location=a.backup_storage_location,
        source_namespace=a.source_namespace,
        snapshot_id=a.snapshot_id,
        source_pvc=a.source_pvc,
        tags=_pairs_back(a.tags),
        data_mover_config=_pairs_back(a.data_mover_config),
    )


def _result_back(r: pb.AssignmentResult) -> AssignmentResult:
    return AssignmentResult(
        assignment_id=r.assignment_id,
        epoch=r.epoch,
        outcome=_enum_back(_OUTCOMES_BACK, r.outcome, "AssignmentResult.outcome"),
        message=r.message,
        snapshot_id=r.snapshot_id,
        path=r.path,
        bytes_total=r.bytes_total,
        bytes_done=r.bytes_done,
        bytes_new=r.bytes_new,
        result=_pairs_back(r.result),
    )


def _sweep_back(s: pb.Sweep) -> Sweep:
    forget = tuple(
        ForgetBackup(f.source_namespace, f.backup_name, f.backup_uid, tuple(f.snapshot_ids))
        for f in s.forget
    )
    return Sweep(s.sweep_id, s.velero_namespace, s.backup_storage_location, forget)


def _sweep_result_back(r: pb.SweepResult) -> SweepResult:
    snapshots = tuple(
        BackupSnapshot(b.source_namespace, b.snapshot_id, b.backup_name, b.backup_uid, b.time)
        for b in r.snapshots
    )
    return SweepResult(
        sweep_id=r.sweep_id,
        message=r.message,
        backups_in_location=tuple(r.backups_in_location),
        snapshots=snapshots,
        forgotten=tuple(r.forgotten),
        kept=tuple(r.kept),
        repositories=tuple(r.repositories),
    )


def _maintain_to_pb(m: Maintain) -> pb.Maintain:
    return pb.Maintain(
        maintenance_id=m.maintenance_id,
        velero_namespace=m.velero_namespace,
        backup_storage_location=m.backup_storage_location,
        source_namespace=m.source_namespace,
        collect_garbage=m.collect_garbage,
        check=m.check,
        read_data_fraction=m.read_data_fraction,
    )


def _maintain_back(m: pb.Maintain) -> Maintain:
    return Maintain(
        maintenance_id=m.maintenance_id,
        velero_namespace=m.velero_namespace,
        backup_storage_location=m.backup_storage_location,
        source_namespace=m.source_namespace,
        collect_garbage=m.collect_garbage,
        check=m.check,
        read_data_fraction=m.read_data_fraction,
    )


def _maintenance_result_to_pb(r: MaintenanceResult) -> pb.MaintenanceResult:
    return pb.MaintenanceResult(
        maintenance_id=r.maintenance_id,
        message=r.message,
        gc_phase=r.gc_phase,
        reclaimed_bytes=r.reclaimed_bytes,
        deleted_packs=r.deleted_packs,
        size_bytes=r.size_bytes,
        checked=r.checked,
        problems=list(r.problems),
        problem_count=r.problem_count,
        gc_seconds=r.gc_seconds,
        check_seconds=r.check_seconds,
    )


def _maintenance_result_back(r: pb.MaintenanceResult) -> MaintenanceResult:
    return MaintenanceResult(
        maintenance_id=r.maintenance_id,
        message=r.message,
        gc_phase=r.gc_phase,
        reclaimed_bytes=r.reclaimed_bytes,
        deleted_packs=r.deleted_packs,
        size_bytes=r.size_bytes,
        checked=r.checked,
        problems=tuple(r.problems),
        problem_count=r.problem_count,
        gc_seconds=r.gc_seconds,
        check_seconds=r.check_seconds,
    )


def command_from_pb(message: pb.CoordinatorMessage) -> CoordinatorCommand:
    body = message.WhichOneof("body")
    if body == "welcome":
        w = message.welcome
        return Welcome(coordinator_id=w.coordinator_id, heartbeat_interval_s=w.heartbeat_interval_s)
    if body == "assignment":
        return _assignment_back(message.assignment)
    if body == "cancel":
        c = message.cancel
        return CancelAssignment(c.assignment_id, c.epoch, c.reason, c.hand_off)
    if body == "drain":
        return Drain(grace_seconds=message.drain.grace_seconds, reason=message.drain.reason)
    if body == "sweep":
        return _sweep_back(message.sweep)
    if body == "maintain":
        return _maintain_back(message.maintain)
    raise InvalidInput(f"CoordinatorMessage {message.message_id!r} carries no command")


def event_from_pb(message: pb.AgentMessage) -> AgentEvent:
    body = message.WhichOneof("body")
    if body == "hello":
        h = message.hello
        return Hello(h.node_name, h.agent_version, h.max_concurrent, _running_back(h.running))
    if body == "heartbeat":
        return Heartbeat(_running_back(message.heartbeat.running))
    if body == "progress":
        p = message.progress
        return ProgressReport(p.assignment_id, p.epoch, p.bytes_done, p.bytes_total)
    if body == "result":
        return _result_back(message.result)
    if body == "sweep_result":
        return _sweep_result_back(message.sweep_result)
    if body == "maintenance_result":
        return _maintenance_result_back(message.maintenance_result)
    raise InvalidInput(f"AgentMessage {message.message_id!r} carries no event")
