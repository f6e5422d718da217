"""barge.repo.retention: which snapshots --keep-last/--keep-daily/--keep-weekly keep."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from barge.errors import InvalidInput
from barge.repo.retention import RetentionPolicy, SnapshotEntry, group_of, keep

MONDAY = datetime(2026, 6, 1, 23, 0, tzinfo=UTC)  # ISO week 23 of 2026


def at(name: str, when: datetime, group: str = "db") -> SnapshotEntry:
    return SnapshotEntry(name, when, group)


def hourly(days: int, per_day: int = 3, group: str = "db") -> list[SnapshotEntry]:
    """``per_day`` snapshots an hour apart on each of ``days`` days before and including MONDAY."""
    return [
        at(f"{group}-d{d}-h{h}", MONDAY - timedelta(days=d, hours=h), group)
        for d in range(days)
        for h in range(per_day)
    ]


def test_keep_last_keeps_the_newest() -> None:
    assert keep(hourly(2), RetentionPolicy(last=2)) == {"db-d0-h0", "db-d0-h1"}


def test_keep_daily_keeps_the_newest_of_each_recent_day() -> None:
    assert keep(hourly(5), RetentionPolicy(daily=3)) == {"db-d0-h0", "db-d1-h0", "db-d2-h0"}


def test_keep_daily_counts_days_that_have_a_snapshot_not_calendar_days() -> None:
    entries = [
        at("new", MONDAY),
        at("old", MONDAY - timedelta(days=30)),
        at("older", MONDAY - timedelta(days=60)),
    ]
    assert keep(entries, RetentionPolicy(daily=2)) == {"new", "old"}


def test_keep_weekly_follows_iso_weeks() -> None:
    sunday_before = MONDAY - timedelta(days=1)  # week 22
    entries = [at("mon", MONDAY), at("sun", sunday_before), at("sat", sunday_before - timedelta(days=1))]
    assert keep(entries, RetentionPolicy(weekly=2)) == {"mon", "sun"}


def test_rules_add_up_and_each_source_is_on_its_own() -> None:
    entries = hourly(3) + hourly(3, group="web")
    kept = keep(entries, RetentionPolicy(last=1, daily=2))
    assert kept == {"db-d0-h0", "db-d1-h0", "web-d0-h0", "web-d1-h0"}


def test_a_velero_volume_is_one_source_wherever_its_pod_ran() -> None:
    tags = {"barge.io/source-namespace": "shop", "barge.io/source-pvc": "data", "velero.io/backup-name": "a"}
    first = group_of("node-a", ["/var/lib/kubelet/pods/1/volumes/x"], tags)
    second = group_of("node-b", ["/var/lib/kubelet/pods/2/volumes/y"], {**tags, "velero.io/backup-name": "b"})
    assert first == second
    assert group_of("host", ["/srv"], {}) != group_of("host", ["/home"], {})
    assert group_of("host", ["/srv"], {}) != group_of("other", ["/srv"], {})


@pytest.mark.parametrize("policy", [{}, {"last": -1}, {"daily": -2, "last": 1}])
def test_a_policy_that_keeps_nothing_or_negative_counts_are_refused(policy: dict[str, int]) -> None:
    with pytest.raises(InvalidInput):
        RetentionPolicy(**policy)
