"""Which snapshots a retention policy keeps (``barge forget --keep-last/--keep-daily/--keep-weekly``).

Snapshots are grouped by what they back up, and the policy applies to each group on its own: a
group's newest ``last`` snapshots are kept, and the newest snapshot of each of the ``daily`` most
recent days that have one, and of each of the ``weekly`` most recent ISO weeks that have one (days
and weeks in UTC). A snapshot any rule keeps is kept. Pure: the caller lists and forgets.
"""

from __future__ import annotations

from collections.abc import Callable, Hashable, Iterable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime

from barge.errors import InvalidInput

SOURCE_TAGS = ("barge.io/source-namespace", "barge.io/source-pvc")  # what the agent tags a volume with


@dataclass(frozen=True)
class RetentionPolicy:
    last: int = 0
    daily: int = 0
    weekly: int = 0

    def __post_init__(self) -> None:
        if min(self.last, self.daily, self.weekly) < 0:
            raise InvalidInput("--keep-last/--keep-daily/--keep-weekly must be 0 or more")
        if not (self.last or self.daily or self.weekly):
            raise InvalidInput("the retention policy keeps nothing: give --keep-last, -daily or -weekly")


@dataclass(frozen=True)
class SnapshotEntry:
    snapshot_id: str
    time: datetime  # when the backup finished, timezone-aware
    group: Hashable  # snapshots of the same source (see ``group_of``)


def group_of(hostname: str, paths: Iterable[str], tags: Mapping[str, str]) -> Hashable:
    """A volume Barge backed up for Velero is one source wherever its exposer pod ran (its tags
    name the namespace and PVC); anything else is one source per host and paths, as in restic."""
    if all(tags.get(tag) for tag in SOURCE_TAGS):
        return ("volume", *(tags[tag] for tag in SOURCE_TAGS))
    return ("paths", hostname, *sorted(paths))


def keep(entries: Iterable[SnapshotEntry], policy: RetentionPolicy) -> set[str]:
    """The IDs of the snapshots ``policy`` keeps; every other one may be forgotten."""
    groups: dict[Hashable, list[SnapshotEntry]] = {}
    for entry in entries:
        groups.setdefault(entry.group, []).append(entry)
    kept: set[str] = set()
    for members in groups.values():
        newest_first = sorted(members, key=lambda e: (e.time, e.snapshot_id), reverse=True)
        kept.update(e.snapshot_id for e in newest_first[: policy.last])
        kept.update(_newest_per_period(newest_first, policy.daily, lambda t: t.date()))
        kept.update(_newest_per_period(newest_first, policy.weekly, lambda t: t.isocalendar()[:2]))
    return kept


def _newest_per_period(
    newest_first: list[SnapshotEntry], periods: int, period_of: Callable[[datetime], Hashable]
) -> list[str]:
    chosen: dict[Hashable, str] = {}
    for entry in newest_first:
        period = period_of(entry.time.astimezone(UTC))
        if period not in chosen:
            if len(chosen) == periods:
                break
            chosen[period] = entry.snapshot_id
    return list(chosen.values())
