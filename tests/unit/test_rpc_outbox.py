"""The agent's outbox and reconnect backoff: pure logic, no network."""

from __future__ import annotations

import random

from barge.clock import ManualClock
from barge.control.messages import (
    AssignmentResult,
    Heartbeat,
    Hello,
    MaintenanceResult,
    Outcome,
    ProgressReport,
    SweepResult,
)
from barge.control.naming import AGENT_RECONNECT_MAX_S, AGENT_RECONNECT_WINDOW_S, COORDINATOR_LOSS_S
from barge.rpc.client import CLIENT_OPTIONS, RECONNECT_BACKOFF, RESULT_RETENTION_S, Outbox
from barge.rpc.convert import event_from_pb

RESULT = AssignmentResult("a", 1, Outcome.FAILED, message="disk full")


def drain(outbox: Outbox, stream: int) -> list[tuple[str, object]]:
    taken = []
    while (message := outbox.take(stream, timeout=0)) is not None:
        taken.append((message.message_id, event_from_pb(message)))
    return taken


def test_offline_progress_is_coalesced_per_assignment_and_results_are_kept() -> None:
    outbox = Outbox(ManualClock())
    outbox.put(ProgressReport("a", 1, 1, 10))
    outbox.put(ProgressReport("b", 1, 1, 10))
    outbox.put(RESULT)
    outbox.put(ProgressReport("a", 1, 9, 10))
    outbox.put(Heartbeat())
    outbox.put(Hello("n", "v", 1))
    assert outbox.waiting() == [ProgressReport("b", 1, 1, 10), RESULT, ProgressReport("a", 1, 9, 10)]


def test_heartbeats_are_queued_only_while_a_stream_is_open() -> None:
    outbox = Outbox(ManualClock())
    stream = outbox.open_stream()
    outbox.put(Heartbeat())
    assert [event for _, event in drain(outbox, stream)] == [Heartbeat()]


def test_sent_results_are_resent_with_their_id_on_the_next_stream_until_retention_ends() -> None:
    clock = ManualClock()
    outbox = Outbox(clock)
    first = outbox.open_stream()
    outbox.put(RESULT)
    outbox.put(ProgressReport("a", 1, 5, 10))
    sent = drain(outbox, first)
    result_id = sent[0][0]
    outbox.close_stream()
    second = outbox.open_stream()
    assert drain(outbox, second) == [(result_id, RESULT)]  # progress is not re-sent, the result is
    outbox.close_stream()
    clock.advance(RESULT_RETENTION_S + 1)
    assert drain(outbox, outbox.open_stream()) == []


def test_take_returns_nothing_for_a_closed_stream() -> None:
    outbox = Outbox(ManualClock())
    stream = outbox.open_stream()
    outbox.close_stream()
    outbox.put(RESULT)
    assert outbox.take(stream, timeout=0) is None
    assert outbox.waiting() == [RESULT]  # still waiting for the next stream


def test_reconnects_back_off_doubling_with_jitter_between_half_a_second_and_thirty_seconds() -> None:
    rng = random.Random(7)
    first, most = RECONNECT_BACKOFF.first_s, RECONNECT_BACKOFF.max_s
    assert (first, most) == (0.5, 30.0)
    delays = [[RECONNECT_BACKOFF.delay(failures, rng) for _ in range(50)] for failures in range(1, 13)]
    assert all(first <= d <= most for row in delays for d in row)
    assert max(delays[0]) == first
    assert min(delays[3]) >= 2.0
    assert max(delays[3]) <= 4.0
    assert min(delays[11]) >= most / 2
    assert len(set(delays[11])) > 1  # jittered, so agents do not reconnect in lockstep
    assert RECONNECT_BACKOFF.delay(10_000, rng) <= most
    assert [RECONNECT_BACKOFF.delay(n) for n in (1, 2, 3, 7, 8)] == [
        0.5,
        1.0,
        2.0,
        30.0,
        30.0,
    ]  # no rng: exact


def test_the_drain_bound_and_a_new_leaders_patience_follow_the_clients_timings() -> None:
    """DRAIN_BOUND_S counts the keepalive that notices a coordinator gone without closing the
    stream; a new leader waits for agents at least as long as their reconnect backoff's ceiling."""
    options = dict(CLIENT_OPTIONS)
    noticed_s = (options["grpc.keepalive_time_ms"] + options["grpc.keepalive_timeout_ms"]) / 1000
    assert noticed_s == COORDINATOR_LOSS_S
    assert RECONNECT_BACKOFF.max_s == AGENT_RECONNECT_MAX_S < AGENT_RECONNECT_WINDOW_S


def test_answers_to_sweeps_and_maintenance_are_sent() -> None:
    outbox = Outbox(ManualClock())
    stream = outbox.open_stream()
    answers = [SweepResult("s1", repositories=("shop",)), MaintenanceResult("m1", reclaimed_bytes=3)]
    for answer in answers:
        outbox.put(answer)
    assert [event for _, event in drain(outbox, stream)] == answers
