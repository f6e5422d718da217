"""The liveness logic behind ``/healthz`` (barge.probes.Vitals), on a manual clock."""

from __future__ import annotations

import threading

import pytest

from barge.clock import ManualClock
from barge.errors import InvalidInput
from barge.probes import Vitals


def test_loops_that_beat_within_the_bound_are_healthy_and_a_silent_one_is_reported_as_stalled() -> None:
    clock = ManualClock()
    vitals = Vitals(clock, stall_after_s=60)
    vitals.beat("leader-election")
    vitals.beat("admission")
    clock.advance(60)
    vitals.beat("admission")
    assert vitals.problems() == []  # 60 s is the bound itself, not beyond it
    clock.advance(1)
    assert vitals.problems() == ["leader-election made no progress for 61s (limit 60s)"]
    vitals.beat("leader-election")
    assert vitals.problems() == []


def test_a_retired_loop_is_no_longer_watched() -> None:
    clock = ManualClock()
    vitals = Vitals(clock, stall_after_s=60)
    vitals.beat("reconcile-0")
    vitals.retire("reconcile-0")
    clock.advance(3600)
    assert vitals.problems() == []


def test_a_death_is_a_problem_for_good_and_is_reported_once_to_the_listener() -> None:
    clock = ManualClock()
    vitals = Vitals(clock, stall_after_s=60)
    deaths: list[tuple[str, str]] = []
    vitals.on_death = lambda loop, reason: deaths.append((loop, reason))
    vitals.beat("admission")
    vitals.died("admission", "KeyError: 'spec'")
    vitals.retire("admission")
    vitals.beat("resync")
    assert vitals.problems() == ["admission died: KeyError: 'spec'"]
    assert deaths == [("admission", "KeyError: 'spec'")]


def test_run_turns_an_unexpected_exception_into_a_death_but_not_one_raised_while_stopping() -> None:
    vitals, stopping = Vitals(ManualClock()), threading.Event()
    deaths: list[str] = []
    vitals.on_death = lambda loop, reason: deaths.append(f"{loop}: {reason}")

    def broken() -> None:
        raise RuntimeError("the queue is gone")

    vitals.run("reconcile-0", broken, stopping)
    stopping.set()
    vitals.run("reconcile-1", broken, stopping)  # torn down on purpose: a retirement
    vitals.run("resync", lambda: None, stopping)
    assert deaths == ["reconcile-0: RuntimeError: the queue is gone"]
    assert vitals.problems() == ["reconcile-0 died: RuntimeError: the queue is gone"]


def test_run_watches_a_loop_from_its_start() -> None:
    clock = ManualClock()
    vitals, stopping = Vitals(clock, stall_after_s=10), threading.Event()
    seen: list[list[str]] = []

    def hung() -> None:
        clock.advance(11)
        seen.append(vitals.problems())

    vitals.run("admission", hung, stopping)
    assert seen == [["admission made no progress for 11s (limit 10s)"]]
    assert vitals.problems() == []  # it ended: retired


@pytest.mark.parametrize("bound", [0.0, -1.0])
def test_the_stall_bound_must_be_positive(bound: float) -> None:
    with pytest.raises(InvalidInput, match="positive"):
        Vitals(ManualClock(), stall_after_s=bound)


def test_a_loop_run_for_its_death_only_is_never_a_stall_but_its_death_is_a_problem() -> None:
    """The sweeper and the informers wait longer than any stall bound on purpose (a maintenance
    run, a quiet watch): each of their waits is bounded by its own timeout, so only a death counts."""
    clock = ManualClock()
    vitals, stopping = Vitals(clock, stall_after_s=10), threading.Event()
    seen: list[list[str]] = []

    def waits_long() -> None:
        clock.advance(7200)
        seen.append(vitals.problems())
        raise RuntimeError("no answer handled")

    vitals.run("sweeper", waits_long, stopping, stalls=False)
    assert seen == [[]]
    assert vitals.problems() == ["sweeper died: RuntimeError: no answer handled"]
