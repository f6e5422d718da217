"""barge.control.messages <-> protobuf, and errors <-> gRPC status codes."""

from __future__ import annotations

import grpc
import pytest
from hypothesis import given
from hypothesis import strategies as st

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
    ProgressReport,
    RunningAssignment,
    Sweep,
    SweepResult,
    VolumeMode,
    Welcome,
)
from barge.errors import (
    BargeError,
    Canceled,
    CorruptionDetected,
    InvalidInput,
    NotFound,
    PermanentError,
    PermissionDenied,
    TemporaryError,
    Unauthenticated,
)
from barge.rpc.convert import command_from_pb, command_to_pb, event_from_pb, event_to_pb
from barge.rpc.generated import control_pb2 as pb
from barge.rpc.status import code_for, error_for

text = st.text(max_size=20)
int64 = st.integers(min_value=-(2**63), max_value=2**63 - 1)
int32 = st.integers(min_value=-(2**31), max_value=2**31 - 1)
finite = st.floats(allow_nan=False)
pairs = st.lists(st.tuples(text, text), max_size=4).map(tuple)
texts = st.lists(text, max_size=3).map(tuple)
running = st.lists(st.builds(RunningAssignment, text, int64, int64, int64), max_size=3).map(tuple)

assignments = st.builds(
    Assignment,
    assignment_id=text,
    epoch=int64,
    kind=st.sampled_from(AssignmentKind),
    cr=st.builds(CrRef, text, text, text, text),
    pod_uid=text,
    volume_name=text,
    volume_mode=st.sampled_from(VolumeMode),
    backup_storage_location=text,
    source_namespace=text,
    snapshot_id=text,
    source_pvc=text,
    tags=pairs,
    data_mover_config=pairs,
)
commands: st.SearchStrategy[CoordinatorCommand] = st.one_of(
    st.builds(Welcome, text, finite),
    assignments,
    st.builds(CancelAssignment, text, int64, text, st.booleans()),
    st.builds(Drain, finite, text),
    st.builds(
        Sweep,
        text,
        text,
        text,
        st.lists(st.builds(ForgetBackup, text, text, text, texts), max_size=3).map(tuple),
    ),
    st.builds(Maintain, text, text, text, text, st.booleans(), st.booleans(), finite),
)
events: st.SearchStrategy[AgentEvent] = st.one_of(
    st.builds(Hello, text, text, int32, running),
    st.builds(Heartbeat, running),
    st.builds(ProgressReport, text, int64, int64, int64),
    st.builds(
        AssignmentResult,
        assignment_id=text,
        epoch=int64,
        outcome=st.sampled_from(Outcome),
        message=text,
        snapshot_id=text,
        path=text,
        bytes_total=int64,
        bytes_done=int64,
        bytes_new=int64,
        result=pairs,
    ),
    st.builds(
        SweepResult,
        sweep_id=text,
        message=text,
        backups_in_location=texts,
        snapshots=st.lists(st.builds(BackupSnapshot, text, text, text, text, text), max_size=3).map(tuple),
        forgotten=texts,
        kept=texts,
        repositories=texts,
    ),
    st.builds(
        MaintenanceResult,
        maintenance_id=text,
        message=text,
        gc_phase=text,
        reclaimed_bytes=int64,
        deleted_packs=int64,
        size_bytes=int64,
        checked=st.booleans(),
        problems=texts,
        problem_count=int64,
        gc_seconds=finite,
        check_seconds=finite,
    ),
)


@given(commands, text)
def test_every_command_survives_the_wire(command: CoordinatorCommand, message_id: str) -> None:
    wire = pb.CoordinatorMessage.FromString(command_to_pb(command, message_id).SerializeToString())
    assert wire.message_id == message_id
    assert command_from_pb(wire) == command


@given(events, text)
def test_every_event_survives_the_wire(event: AgentEvent, message_id: str) -> None:
    wire = pb.AgentMessage.FromString(event_to_pb(event, message_id).SerializeToString())
    assert wire.message_id == message_id
    assert event_from_pb(wire) == event


def test_an_empty_envelope_is_invalid_input() -> None:
    with pytest.raises(InvalidInput, match="'m1' carries no event"):
        event_from_pb(pb.AgentMessage(message_id="m1"))
    with pytest.raises(InvalidInput, match="'m2' carries no command"):
        command_from_pb(pb.CoordinatorMessage(message_id="m2"))


def test_an_unset_enum_names_the_field() -> None:
    result = pb.AgentMessage(message_id="m", result=pb.AssignmentResult(assignment_id="a"))
    with pytest.raises(InvalidInput, match=r"AssignmentResult\.outcome=0"):
        event_from_pb(result)
    assignment = pb.Assignment(kind=pb.ASSIGNMENT_KIND_UPLOAD)
    with pytest.raises(InvalidInput, match=r"Assignment\.volume_mode=0"):
        command_from_pb(pb.CoordinatorMessage(assignment=assignment))


@pytest.mark.parametrize(
    ("error", "code"),
    [
        (TemporaryError("x"), grpc.StatusCode.UNAVAILABLE),
        (InvalidInput("x"), grpc.StatusCode.INVALID_ARGUMENT),
        (NotFound("x"), grpc.StatusCode.NOT_FOUND),
        (Unauthenticated("x"), grpc.StatusCode.UNAUTHENTICATED),
        (PermissionDenied("x"), grpc.StatusCode.PERMISSION_DENIED),
        (CorruptionDetected("x"), grpc.StatusCode.FAILED_PRECONDITION),
        (PermanentError("x"), grpc.StatusCode.FAILED_PRECONDITION),
        (Canceled("x"), grpc.StatusCode.CANCELLED),
        (BargeError("x"), grpc.StatusCode.INTERNAL),
        (ValueError("x"), grpc.StatusCode.INTERNAL),
    ],
)
def test_errors_map_to_status_codes(error: BaseException, code: grpc.StatusCode) -> None:
    assert code_for(error) is code


@pytest.mark.parametrize(
    "cls",
    [TemporaryError, InvalidInput, NotFound, Unauthenticated, PermissionDenied, PermanentError, Canceled],
)
def test_status_codes_map_back_to_the_same_error_class(cls: type[BargeError]) -> None:
    back = error_for(code_for(cls("boom")), "boom")
    assert type(back) is cls
    assert "boom" in str(back)


def test_unknown_failures_are_temporary() -> None:
    assert type(error_for(grpc.StatusCode.INTERNAL, "bug")) is TemporaryError
    assert type(error_for(grpc.StatusCode.DEADLINE_EXCEEDED, "slow")) is TemporaryError
