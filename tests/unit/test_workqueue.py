"""The coordinator's work queue: dedup, no concurrent processing of a key, delayed adds."""

from __future__ import annotations

from barge.clock import ManualClock, SystemClock
from coordinator.workqueue import WorkQueue


def test_adds_are_deduplicated_and_ordered() -> None:
    queue: WorkQueue[str] = WorkQueue(SystemClock())
    for key in ("a", "b", "a", "c", "b"):
        queue.add(key)
    got = [queue.get(0.1) for _ in range(3)]
    assert got == ["a", "b", "c"]
    assert queue.get(0.01) is None


def test_a_key_added_while_processing_comes_back_after_done() -> None:
    queue: WorkQueue[str] = WorkQueue(SystemClock())
    queue.add("a")
    assert queue.get(0.1) == "a"
    queue.add("a")
    assert queue.get(0.01) is None  # never handed to a second worker while in flight
    queue.done("a")
    assert queue.get(0.1) == "a"


def test_delayed_add_keeps_the_earliest_due_time() -> None:
    clock = ManualClock()
    queue: WorkQueue[str] = WorkQueue(clock)
    queue.add_after("a", 10)
    queue.add_after("a", 5)
    queue.add_after("a", 20)
    clock.advance(4)
    assert queue.get(0) is None
    clock.advance(1)
    assert queue.get(0) == "a"
    queue.done("a")
    clock.advance(30)
    assert queue.get(0) is None  # the later adds were folded into the earliest


def test_close_wakes_getters() -> None:
    queue: WorkQueue[str] = WorkQueue(SystemClock())
    queue.close()
    assert queue.get(5) is None


def test_clear_forgets_waiting_keys_but_not_one_in_flight_nor_a_delayed_one() -> None:
    clock = ManualClock()
    queue: WorkQueue[str] = WorkQueue(clock)
    for key in ("busy", "a", "b"):
        queue.add(key)
    assert queue.get(0) == "busy"
    queue.add("busy")  # changed while processing: it must come back
    queue.add_after("later", 5)
    queue.clear()
    assert queue.get(0) is None
    queue.add("b")  # a cleared key can be queued again
    assert queue.get(0) == "b"
    queue.done("busy")
    assert queue.get(0) == "busy"
    clock.advance(5)
    assert queue.get(0) == "later"


def test_an_urgent_key_goes_before_those_waiting() -> None:
    queue: WorkQueue[str] = WorkQueue(SystemClock())
    for key in ("a", "b"):
        queue.add(key)
    queue.add("now", urgent=True)
    queue.add("b", urgent=True)  # already waiting: keeps its place
    assert [queue.get(0.1) for _ in range(3)] == ["now", "a", "b"]


def test_each_key_handed_out_reports_how_long_it_waited_ready() -> None:
    clock, waits = ManualClock(), []
    queue: WorkQueue[str] = WorkQueue(clock, on_wait=waits.append)
    queue.add("a")
    clock.advance(2)
    queue.add("a")  # already waiting: it still waits since the first add
    queue.add("b")
    queue.add_after("later", 5)
    clock.advance(1)
    assert [queue.get(0), queue.get(0)] == ["a", "b"]
    assert waits == [3, 1]
    queue.add("a")  # added while processing: waits from when it is ready again
    clock.advance(4)
    queue.done("a")
    clock.advance(0.5)
    assert queue.get(0) == "a"
    clock.advance(10)
    assert queue.get(0) == "later"
    assert waits == [3, 1, 0.5, 10.5]  # "later" fell due at 7 s, and waits from then


def test_a_cleared_key_queued_again_waits_from_its_new_add() -> None:
    clock, waits = ManualClock(), []
    queue: WorkQueue[str] = WorkQueue(clock, on_wait=waits.append)
    queue.add("a")
    clock.advance(5)
    queue.clear()
    queue.add("a")
    clock.advance(1)
    assert queue.get(0) == "a"
    assert waits == [1]


def test_background_keys_wait_behind_events_and_take_one_turn_in_eight() -> None:
    queue: WorkQueue[str] = WorkQueue(SystemClock())
    for n in range(3):
        queue.add_background(f"resync-{n}")
    for n in range(10):
        queue.add(f"event-{n}")
    order = [queue.get(0) for _ in range(13)]
    assert order[:7] == [f"event-{n}" for n in range(7)]
    assert order[7] == "resync-0"  # one turn in BACKGROUND_SHARE while events wait
    assert order[8:11] == ["event-7", "event-8", "event-9"]
    assert order[11:] == ["resync-1", "resync-2"]  # nothing else waits
    assert queue.get(0) is None


def test_an_event_for_a_key_in_the_background_moves_it_forward_and_it_comes_once() -> None:
    queue: WorkQueue[str] = WorkQueue(SystemClock())
    queue.add_background("a")
    queue.add_background("b")
    queue.add("b")
    queue.add_background("b")  # queued in front already: stays there
    assert queue.get(0) == "b"
    assert queue.get(0) == "a"
    assert queue.get(0) is None
    queue.add_background("a")  # in a worker's hands: it is being looked at now
    queue.done("a")
    queue.done("b")
    assert queue.get(0) is None
    assert len(queue) == 0


def test_background_waits_are_not_reported_as_anyone_s_latency() -> None:
    clock, waits = ManualClock(), []
    queue: WorkQueue[str] = WorkQueue(clock, on_wait=waits.append)
    queue.add_background("resync")
    clock.advance(30)
    assert queue.get(0) == "resync"
    assert waits == []
    queue.add_background("x")
    queue.clear()
    assert queue.get(0) is None


def test_only_a_delayed_add_that_falls_due_is_reported_due() -> None:
    clock, fired = ManualClock(), []
    queue: WorkQueue[str] = WorkQueue(clock, on_due=lambda: fired.append(1))
    queue.add_after("a", 10)
    queue.add_after("a", 5)  # replaces the 10 s timer
    queue.add_after("b", 20)
    clock.advance(12)
    assert queue.get(0) == "a"
    assert len(fired) == 1
