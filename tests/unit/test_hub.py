"""The coordinator's hub: agent sessions, assignment records, idempotent results, adoption."""

from __future__ import annotations

import pytest

from barge.clock import ManualClock
from barge.control.messages import (
    Assignment,
    AssignmentKind,
    AssignmentResult,
    CancelAssignment,
    CrRef,
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
)
from barge.errors import TemporaryError
from coordinator.hub import ClaimCheck, Hub, NoAnswer
from coordinator.metrics import CoordinatorMetrics
from coordinator.model import HubState
from tests.fakecluster import RecordingSession as Session


def assignment(epoch: int = 1) -> Assignment:
    cr = CrRef("DataUpload", "velero", "du", "uid-1")
    return Assignment(
        "uid-1", epoch, AssignmentKind.UPLOAD, cr, "pod", "pv", VolumeMode.FILESYSTEM, "default", "ns"
    )


def fenced_to(*fences: tuple[str, int, str]) -> ClaimCheck:
    """A claim check that finds nothing wrong with exactly these (assignment, epoch, node) claims."""

    def check(node: str, claim: RunningAssignment) -> str:
        return "" if (claim.assignment_id, claim.epoch, node) in fences else "not what the fence names"

    return check


def hub(*fences: tuple[str, int, str]) -> tuple[Hub, list[str], ManualClock]:
    changes: list[str] = []
    clock = ManualClock()
    return Hub(clock, CoordinatorMetrics(), changes.append, fenced_to(*fences)), changes, clock


def test_assign_progress_result_and_replays() -> None:
    h, changes, _ = hub()
    session = Session("node-a", Hello("node-a", "1", 2))
    h.agent_connected(session)
    assert h.assign("node-a", assignment()) is True
    assert h.assign("node-a", assignment()) is True
    assert session.sent == [assignment()]  # a repeated Assign is not sent twice
    h.agent_event(session, ProgressReport("uid-1", 1, 10, 100))
    view = h.assignment("uid-1")
    assert view is not None
    assert (view.state, view.bytes_done) == (HubState.RUNNING, 10)
    result = AssignmentResult("uid-1", 1, Outcome.COMPLETED, bytes_done=100)
    h.agent_event(session, result)
    h.agent_event(session, result)  # re-sent after a reconnect: changes nothing
    view = h.assignment("uid-1")
    assert view is not None
    assert view.state is HubState.FINISHED
    assert changes.count("uid-1") == 2  # first progress, then the result


def test_the_rate_origin_is_the_first_progress_or_the_adoption() -> None:
    h, _, clock = hub()
    session = Session("node-a", Hello("node-a", "1", 2))
    h.agent_connected(session)
    h.assign("node-a", assignment())
    clock.advance(5)
    started = clock.now()
    h.agent_event(session, ProgressReport("uid-1", 1, 10, 100))
    clock.advance(5)
    h.agent_event(session, ProgressReport("uid-1", 1, 60, 100))
    view = h.assignment("uid-1")
    assert view is not None
    assert (view.running_since, view.bytes_at_running_since, view.bytes_done) == (started, 10, 60)
    adopter, _, clock = hub(("uid-1", 3, "node-a"))
    running = (RunningAssignment("uid-1", 3, 5, 50),)
    adopter.agent_connected(Session("node-a", Hello("node-a", "1", 2, running)))
    adopted = adopter.assignment("uid-1")
    assert adopted is not None
    assert (adopted.running_since, adopted.bytes_at_running_since) == (clock.now(), 5)


def test_reports_of_a_superseded_epoch_or_another_node_are_ignored() -> None:
    h, _, _ = hub()
    a, b = Session("node-a", Hello("node-a", "1", 2)), Session("node-b", Hello("node-b", "1", 2))
    h.agent_connected(a)
    h.agent_connected(b)
    h.assign("node-b", assignment(epoch=2))
    h.agent_event(a, AssignmentResult("uid-1", 1, Outcome.FAILED, "stale"))
    h.agent_event(a, AssignmentResult("uid-1", 2, Outcome.FAILED, "wrong node"))
    view = h.assignment("uid-1")
    assert view is not None
    assert (view.epoch, view.node, view.state) == (2, "node-b", HubState.SENT)


def test_a_new_leader_adopts_what_agents_run() -> None:
    h, changes, _ = hub(("uid-1", 3, "node-a"))
    session = Session("node-a", Hello("node-a", "1", 2, (RunningAssignment("uid-1", 3, 5, 50),)))
    h.agent_connected(session)
    view = h.assignment("uid-1")
    assert view is not None
    assert (view.epoch, view.node, view.state, view.bytes_done) == (3, "node-a", HubState.RUNNING, 5)
    assert changes == ["uid-1"]
    assert session.sent == []


def test_a_new_leader_stops_claims_the_fence_does_not_name_and_adopts_none_of_them() -> None:
    """Only uid-1 at epoch 3 on node-a is fenced; a forged or stale claim (another epoch, another
    node, another CR) is not adopted, and the agent making it is told to stop it (a hand-off, so it
    writes no status)."""
    h, changes, _ = hub(("uid-1", 3, "node-a"))
    forged = (RunningAssignment("uid-1", 4, 5, 50), RunningAssignment("uid-2", 1, 0, 10))
    a = Session("node-a", Hello("node-a", "1", 2, forged))
    b = Session("node-b", Hello("node-b", "1", 2, (RunningAssignment("uid-1", 3, 5, 50),)))
    h.agent_connected(a)
    h.agent_connected(b)
    assert (h.assignment("uid-1"), h.assignment("uid-2"), changes) == (None, None, [])
    assert a.sent == [
        CancelAssignment("uid-1", 4, "not adopted: not what the fence names", hand_off=True),
        CancelAssignment("uid-2", 1, "not adopted: not what the fence names", hand_off=True),
    ]
    assert b.sent == [CancelAssignment("uid-1", 3, "not adopted: not what the fence names", hand_off=True)]


def test_a_hub_without_a_controller_adopts_nothing() -> None:
    h = Hub(ManualClock(), CoordinatorMetrics())
    session = Session("node-a", Hello("node-a", "1", 2, (RunningAssignment("uid-1", 3),)))
    h.agent_connected(session)
    assert h.assignment("uid-1") is None
    assert [type(c) for c in session.sent] == [CancelAssignment]


def test_a_reconnecting_agent_is_told_to_stop_an_epoch_the_hub_has_superseded() -> None:
    h, _, _ = hub()
    h.agent_connected(Session("node-b", Hello("node-b", "1", 2)))
    h.assign("node-b", assignment(epoch=2))
    a = Session("node-a", Hello("node-a", "1", 2, (RunningAssignment("uid-1", 1, 5, 50),)))
    h.agent_connected(a)
    assert a.sent == [
        CancelAssignment("uid-1", 1, "not adopted: the assignment is epoch 2 on node node-b", hand_off=True)
    ]
    view = h.assignment("uid-1")
    assert view is not None
    assert (view.epoch, view.node) == (2, "node-b")


def test_disconnect_is_timed_and_a_restarted_agent_loses_its_running_work() -> None:
    h, _, clock = hub()
    session = Session("node-a", Hello("node-a", "1", 2))
    h.agent_connected(session)
    h.assign("node-a", assignment())
    h.agent_event(session, ProgressReport("uid-1", 1, 1, 10))
    clock.advance(5)
    h.agent_disconnected(session)
    assert not h.connected("node-a")
    assert h.disconnected_since("node-a") == clock.now()
    h.agent_connected(Session("node-a", Hello("node-a", "1", 2)))  # came back running nothing
    assert h.assignment("uid-1") is None
    assert h.connected("node-a")
    assert h.disconnected_since("node-a") is None


def test_a_heartbeat_without_a_finished_assignment_keeps_its_result() -> None:
    h, _, _ = hub()
    session = Session("node-a", Hello("node-a", "1", 2))
    h.agent_connected(session)
    h.assign("node-a", assignment())
    h.agent_event(session, AssignmentResult("uid-1", 1, Outcome.COMPLETED))
    h.agent_event(session, Heartbeat(()))
    view = h.assignment("uid-1")
    assert view is not None
    assert view.state is HubState.FINISHED


def test_an_old_stream_ending_after_a_reconnect_does_not_disconnect_the_node() -> None:
    h, _, _ = hub()
    old, new = Session("node-a", Hello("node-a", "1", 2)), Session("node-a", Hello("node-a", "1", 2))
    h.agent_connected(old)
    h.agent_connected(new)
    h.agent_disconnected(old)
    assert h.connected("node-a")


def test_a_new_leader_term_starts_from_what_agents_report() -> None:
    h, _, _ = hub()
    session = Session("node-a", Hello("node-a", "1", 2))
    h.agent_connected(session)
    h.assign("node-a", assignment())
    h.agent_disconnected(session)  # the term ends: streams closed
    h.reset()
    h.claim_problem = fenced_to(("uid-1", 1, "node-a"))  # the next term's controller
    assert h.assignment("uid-1") is None
    assert h.disconnected_since("node-a") is None  # the next term has not seen it go
    h.agent_connected(Session("node-a", Hello("node-a", "1", 2, (RunningAssignment("uid-1", 1, 7, 9),))))
    view = h.assignment("uid-1")
    assert view is not None
    assert (view.epoch, view.state, view.bytes_done) == (1, HubState.RUNNING, 7)


def test_the_hub_knows_since_when_each_agent_is_connected() -> None:
    h, _, clock = hub()
    session = Session("node-a", Hello("node-a", "1", 2, ()))
    assert h.connected_since("node-a") is None
    h.agent_connected(session)
    connected_at = clock.now()
    clock.advance(7)
    assert h.connected_since("node-a") == connected_at
    h.agent_disconnected(session)
    assert h.connected_since("node-a") is None
    assert h.disconnected_since("node-a") == clock.now()


def test_a_sweep_is_answered_only_by_the_agent_asked() -> None:
    h, _, _ = hub()
    asked, other = Session("node-a", Hello("node-a", "1", 2)), Session("node-b", Hello("node-b", "1", 2))
    h.agent_connected(asked)
    h.agent_connected(other)
    assert h.connected_nodes() == ["node-a", "node-b"]
    h.agent_connected(Session("node-old", Hello("node-old", "0.9", 2)))
    assert h.connected_nodes("1") == ["node-a", "node-b"]  # an earlier agent does not know Sweep
    sweep = Sweep("s1", "velero", "default")
    answer = h.ask("node-a", sweep)
    assert answer is not None
    assert asked.sent == [sweep]
    h.agent_event(other, SweepResult("s1", backups_in_location=("forged",)))
    assert not answer.done()
    h.agent_event(asked, SweepResult("s1", backups_in_location=("nightly",)))
    assert answer.result(timeout=0).backups_in_location == ("nightly",)
    h.agent_event(asked, SweepResult("s1"))  # a duplicate changes nothing
    assert h.ask("node-c", sweep) is None


def test_a_sweep_ends_when_its_agent_disconnects_or_the_term_ends() -> None:
    h, _, _ = hub()
    a, b = Session("node-a", Hello("node-a", "1", 2)), Session("node-b", Hello("node-b", "1", 2))
    h.agent_connected(a)
    h.agent_connected(b)
    on_a, on_b = h.ask("node-a", Sweep("s1", "velero", "default")), h.ask("node-b", Sweep("s2", "v", "d"))
    assert on_a is not None
    assert on_b is not None
    h.agent_disconnected(a)
    assert isinstance(on_a.exception(timeout=0), TemporaryError)
    assert not on_b.done()
    h.reset()
    assert isinstance(on_b.exception(timeout=0), TemporaryError)


def test_a_maintenance_run_is_answered_by_its_id_and_request_gives_up_on_disconnect() -> None:
    h, _, _ = hub()
    a = Session("node-a", Hello("node-a", "1", 2))
    h.agent_connected(a)
    task = Maintain("m1", "velero", "default", "shop", collect_garbage=True, check=False)
    answer = h.ask("node-a", task)
    assert answer is not None
    h.agent_event(a, MaintenanceResult("other", reclaimed_bytes=1))
    assert not answer.done()
    h.agent_event(a, MaintenanceResult("m1", reclaimed_bytes=7))
    assert answer.result(timeout=0).reclaimed_bytes == 7  # type: ignore[union-attr]
    with pytest.raises(NoAnswer, match="not connected"):
        h.request("node-b", task, timeout_s=1)
    h.agent_disconnected(a)
    with pytest.raises(NoAnswer, match="not connected"):
        h.request("node-a", task, timeout_s=1)


def test_work_let_go_is_never_assigned_again_and_is_remembered_for_an_hour() -> None:
    h, _, clock = hub()
    session = Session("node-a", Hello("node-a", "1", 2))
    h.agent_connected(session)
    h.assign("node-a", assignment())
    h.forget("uid-1")
    assert h.released("uid-1")
    assert h.assign("node-a", assignment()) is True  # nothing to retry: the work is done
    assert session.sent == [assignment()]
    clock.advance(3599)
    h.forget("uid-2")
    assert h.released("uid-1")
    clock.advance(2)
    h.forget("uid-3")  # each let-go drops what is older than the memory: bounded by the rate
    assert not h.released("uid-1")
    assert h.released("uid-2")
