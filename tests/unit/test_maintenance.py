"""coordinator.maintenance: when each repository's maintenance is due, and what its record says."""

from __future__ import annotations

from datetime import datetime, timedelta

import pytest

from barge.control.messages import MaintenanceResult
from barge.errors import InvalidInput
from coordinator.maintenance import (
    RETRY_AFTER,
    MaintenanceConfig,
    RepositoryRecord,
    Task,
    answered,
    attempted,
    decode,
    due_tasks,
    encode,
)

pytestmark = pytest.mark.unit
T0 = datetime.fromisoformat("2026-11-30T12:00:00+00:00")
CONFIG = MaintenanceConfig()  # gc daily, check weekly
BOTH = Task("shop", collect_garbage=True, check=True)


def record(**changes: object) -> RepositoryRecord:
    return RepositoryRecord("default", "shop", T0, **changes)  # type: ignore[arg-type]


def succeeded(at: datetime, task: Task = BOTH) -> RepositoryRecord:
    ok = MaintenanceResult("m", gc_phase="mark" if task.collect_garbage else "", checked=task.check)
    return answered(attempted(record(), task, at), task, ok, at)


def test_a_repository_never_maintained_is_due_for_both_at_once() -> None:
    assert due_tasks(T0, CONFIG, "default", ["shop"], {}) == (BOTH,)


def test_after_success_each_task_waits_for_its_own_interval() -> None:
    records = {"default.shop": succeeded(T0)}
    assert due_tasks(T0 + timedelta(hours=23), CONFIG, "default", ["shop"], records) == ()
    assert due_tasks(T0 + timedelta(hours=24), CONFIG, "default", ["shop"], records) == (
        Task("shop", collect_garbage=True, check=False),
    )
    assert due_tasks(T0 + timedelta(days=7), CONFIG, "default", ["shop"], records) == (BOTH,)


def test_a_failed_attempt_is_retried_after_an_hour_not_a_day() -> None:
    failed = answered(attempted(record(), BOTH, T0), BOTH, MaintenanceResult("m", message="lock held"), T0)
    assert failed.last_error == "lock held"
    assert failed.gc_succeeded is None
    records = {"default.shop": failed}
    assert due_tasks(T0 + RETRY_AFTER - timedelta(seconds=1), CONFIG, "default", ["shop"], records) == ()
    assert due_tasks(T0 + RETRY_AFTER, CONFIG, "default", ["shop"], records) == (BOTH,)


def test_an_attempt_that_never_answers_is_not_retried_at_once() -> None:
    records = {"default.shop": attempted(record(), BOTH, T0)}
    assert due_tasks(T0 + timedelta(minutes=10), CONFIG, "default", ["shop"], records) == ()


def test_a_zero_interval_turns_a_task_off() -> None:
    gc_only = MaintenanceConfig(check_interval=timedelta(0))
    assert due_tasks(T0, gc_only, "default", ["shop"], {}) == (Task("shop", True, False),)
    off = MaintenanceConfig(gc_interval=timedelta(0), check_interval=timedelta(0))
    assert not off.enabled
    assert due_tasks(T0, off, "default", ["shop"], {}) == ()


def test_a_read_only_location_is_checked_but_never_collected() -> None:
    assert due_tasks(T0, CONFIG, "default", ["shop"], {}, read_only=True) == (Task("shop", False, True),)


def test_the_most_overdue_repository_goes_first_and_other_locations_do_not_count() -> None:
    records = {
        "default.a": RepositoryRecord("default", "a", T0, gc_attempted=T0, gc_succeeded=T0,
                                      check_attempted=T0, check_succeeded=T0),
        "default.b": RepositoryRecord("default", "b", T0, gc_attempted=T0 - timedelta(hours=5),
                                      gc_succeeded=T0 - timedelta(hours=5), check_attempted=T0,
                                      check_succeeded=T0),
        "other.c": RepositoryRecord("other", "c", T0, gc_attempted=T0, gc_succeeded=T0),
    }  # fmt: skip
    now = T0 + timedelta(days=1, hours=1)
    due = due_tasks(now, CONFIG, "default", ["a", "b", "c"], records)
    assert [t.namespace for t in due] == ["c", "b", "a"]


def test_the_record_accumulates_what_gc_reclaimed_and_keeps_the_last_size() -> None:
    first = answered(
        attempted(record(), BOTH, T0), BOTH,
        MaintenanceResult("m", gc_phase="sweep+mark", reclaimed_bytes=100, size_bytes=900, checked=True), T0,
    )  # fmt: skip
    gc_only = Task("shop", True, False)
    later = T0 + timedelta(days=1)
    mark = MaintenanceResult("m", gc_phase="mark", size_bytes=900)
    second = answered(attempted(first, gc_only, later), gc_only, mark, later)
    assert (second.reclaimed_bytes, second.reclaimed_bytes_total, second.size_bytes) == (0, 100, 900)
    assert (second.gc_succeeded, second.check_succeeded) == (later, T0)


def test_damage_is_kept_until_a_clean_check_clears_it() -> None:
    damaged = MaintenanceResult(
        "m", gc_phase="mark", checked=True, problems=("pack 1f damaged",), problem_count=3
    )
    found = answered(attempted(record(), BOTH, T0), BOTH, damaged, T0)
    assert (found.problems, found.problem_count, found.check_succeeded) == (("pack 1f damaged",), 3, T0)
    gc_only = Task("shop", True, False)
    after_gc = answered(found, gc_only, MaintenanceResult("m", gc_phase="mark"), T0)
    assert after_gc.problem_count == 3
    clean = answered(after_gc, BOTH, MaintenanceResult("m", gc_phase="mark", checked=True), T0)
    assert (clean.problems, clean.problem_count) == ((), 0)


def test_a_refused_gc_records_the_problem_and_not_a_success() -> None:
    refused = MaintenanceResult(
        "m", message="garbage collection refused: x", problems=("x",), problem_count=1
    )
    gc_only = Task("shop", True, False)
    after = answered(attempted(record(), gc_only, T0), gc_only, refused, T0)
    assert after.gc_succeeded is None
    assert after.problem_count == 1
    assert after.last_error.startswith("garbage collection refused")


def test_records_round_trip_and_garbage_is_refused() -> None:
    full = succeeded(T0)
    assert decode(encode(full)) == full
    assert decode(encode(record(problems=("a", "b"), problem_count=2))).problems == ("a", "b")
    for text in ("", "[]", '{"location": "default"}', '{"location": "d", "namespace": "n", "firstSeen": "x"}',
                 '{"location": "d", "namespace": "n", "firstSeen": "2026-01-01T00:00:00"}'):  # fmt: skip
        with pytest.raises(InvalidInput):
            decode(text)
