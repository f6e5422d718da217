"""When each repository is maintained, and what its record says afterwards: pure decisions.

The leader keeps one record per repository (location and source namespace) in the ConfigMap
``barge-maintenance`` (``coordinator.maintainer``): when garbage collection and the check last ran
and last succeeded, what they reclaimed and found. The record is all the state there is, so a new
leader continues the same schedule, and users read it with ``kubectl``.

A task is due when its interval has passed since its last attempt; after a failed attempt it is
retried sooner (``RETRY_AFTER``, when shorter than the interval), since most failures (a collector
lock still held, an unreachable location) are temporary. The most overdue repository goes first.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, replace
from datetime import datetime, timedelta
from typing import Any

from barge.control.messages import MaintenanceResult
from barge.errors import InvalidInput

RETRY_AFTER = timedelta(hours=1)
_EPOCH = datetime.fromisoformat("1970-01-01T00:00:00+00:00")


@dataclass(frozen=True)
class MaintenanceConfig:
    """Defaults follow what reclaims space in Velero's own mover: Kopia's full maintenance runs
    every 24 h; Barge's collector needs two passes (mark, then sweep), so forgotten data is gone
    within two days. Verification has no Velero counterpart; a weekly check reading 10% of the
    packs reads every pack in about 20 weeks at a tenth of the cost of a full read."""

    gc_interval: timedelta = timedelta(hours=24)  # 0: never
    check_interval: timedelta = timedelta(days=7)  # 0: never
    read_data_fraction: float = 0.1
    timeout: timedelta = timedelta(hours=2)  # one repository's run, then the leader moves on

    @property
    def enabled(self) -> bool:
        return self.gc_interval > timedelta(0) or self.check_interval > timedelta(0)


@dataclass(frozen=True)
class RepositoryRecord:
    """What users see per repository; times are when the leader sent or heard back."""

    location: str
    namespace: str
    first_seen: datetime
    gc_attempted: datetime | None = None
    gc_succeeded: datetime | None = None
    gc_phase: str = ""
    gc_seconds: float = 0.0
    reclaimed_bytes: int = 0  # by the last garbage collection
    reclaimed_bytes_total: int = 0
    size_bytes: int = -1  # pack bytes stored after the last run; -1: not measured yet
    check_attempted: datetime | None = None
    check_succeeded: datetime | None = None
    check_seconds: float = 0.0
    problems: tuple[str, ...] = ()  # from the last check (or a refused collection): the first few
    problem_count: int = 0
    last_error: str = ""

    @property
    def key(self) -> str:
        return record_key(self.location, self.namespace)


@dataclass(frozen=True)
class Task:
    namespace: str
    collect_garbage: bool
    check: bool


def record_key(location: str, namespace: str) -> str:
    """A ConfigMap key: both names are DNS labels, so the dot cannot be part of either."""
    return f"{location}.{namespace}"


def due_tasks(
    now: datetime,
    config: MaintenanceConfig,
    location: str,
    repositories: Iterable[str],
    records: Mapping[str, RepositoryRecord],
    *,
    read_only: bool = False,
) -> tuple[Task, ...]:
    """The runs due now in ``location``, most overdue first (one per repository). A ReadOnly
    location is only checked: it is another cluster's to collect (as Velero skips maintenance of
    repositories in ReadOnly locations)."""
    ranked: list[tuple[datetime, Task]] = []
    gc_interval = timedelta(0) if read_only else config.gc_interval
    for namespace in sorted(set(repositories)):
        record = records.get(record_key(location, namespace)) or RepositoryRecord(location, namespace, now)
        gc_due = _due_at(gc_interval, record.gc_attempted, record.gc_succeeded)
        check_due = _due_at(config.check_interval, record.check_attempted, record.check_succeeded)
        when = min((d for d in (gc_due, check_due) if d is not None), default=None)
        if when is None or when > now:
            continue
        task = Task(
            namespace,
            collect_garbage=gc_due is not None and gc_due <= now,
            check=check_due is not None and check_due <= now,
        )
        ranked.append((when, task))
    return tuple(task for _, task in sorted(ranked, key=lambda item: (item[0], item[1].namespace)))


def _due_at(interval: timedelta, attempted: datetime | None, succeeded: datetime | None) -> datetime | None:
    """When the task is next due; None when it never runs."""
    if interval <= timedelta(0):
        return None
    if attempted is None:
        return _EPOCH  # never attempted: due from the first sweep that sees the repository
    failed = succeeded is None or succeeded < attempted
    return attempted + (min(interval, RETRY_AFTER) if failed else interval)


def attempted(record: RepositoryRecord, task: Task, now: datetime) -> RepositoryRecord:
    """Before sending: a run that never answers still counts as an attempt (no tight retry loop)."""
    return replace(
        record,
        gc_attempted=now if task.collect_garbage else record.gc_attempted,
        check_attempted=now if task.check else record.check_attempted,
    )


def answered(
    record: RepositoryRecord, task: Task, result: MaintenanceResult, now: datetime
) -> RepositoryRecord:
    """The record after the agent's answer."""
    ok = not result.message
    gc_ran = task.collect_garbage and bool(result.gc_phase)
    changes: dict[str, Any] = {"last_error": result.message}
    if gc_ran:
        changes |= {
            "gc_succeeded": now,
            "gc_phase": result.gc_phase,
            "gc_seconds": result.gc_seconds,
            "reclaimed_bytes": result.reclaimed_bytes,
            "reclaimed_bytes_total": record.reclaimed_bytes_total + result.reclaimed_bytes,
        }
    if result.size_bytes >= 0:
        changes["size_bytes"] = result.size_bytes
    if result.checked and ok:
        changes |= {"check_succeeded": now, "check_seconds": result.check_seconds}
    if result.checked or result.problem_count:
        changes |= {"problems": result.problems, "problem_count": result.problem_count}
    return replace(record, **changes)


# -- the record as the ConfigMap holds it ------------------------------------------------------------

_TIMES = ("first_seen", "gc_attempted", "gc_succeeded", "check_attempted", "check_succeeded")
_FIELDS = {
    "location": "location",
    "namespace": "namespace",
    "first_seen": "firstSeen",
    "gc_attempted": "gcAttempted",
    "gc_succeeded": "gcSucceeded",
    "gc_phase": "gcPhase",
    "gc_seconds": "gcSeconds",
    "reclaimed_bytes": "reclaimedBytes",
    "reclaimed_bytes_total": "reclaimedBytesTotal",
    "size_bytes": "sizeBytes",
    "check_attempted": "checkAttempted",
    "check_succeeded": "checkSucceeded",
    "check_seconds": "checkSeconds",
    "problems": "problems",
    "problem_count": "problemCount",
    "last_error": "lastError",
}


def encode(record: RepositoryRecord) -> str:
    doc: dict[str, Any] = {}
    for attribute, name in _FIELDS.items():
        value = getattr(record, attribute)
        if isinstance(value, datetime):
            value = value.isoformat()
        elif isinstance(value, tuple):
            value = list(value)
        doc[name] = value
    return json.dumps(doc, sort_keys=True)


def decode(text: str) -> RepositoryRecord:
    """InvalidInput for anything that is not a record (the caller starts that repository afresh)."""
    try:
        doc = json.loads(text)
        values: dict[str, Any] = {a: doc.get(n) for a, n in _FIELDS.items() if doc.get(n) is not None}
        for attribute in _TIMES:
            if attribute in values:
                values[attribute] = datetime.fromisoformat(values[attribute])
                if values[attribute].tzinfo is None:
                    raise ValueError(f"{_FIELDS[attribute]} has no time zone")
        values["problems"] = tuple(str(p) for p in values.get("problems", ()))
        record = RepositoryRecord(**values)
        if not isinstance(record.location, str) or not isinstance(record.namespace, str):
            raise TypeError("names")
        return record
    except (ValueError, TypeError, AttributeError) as err:
        raise InvalidInput(f"not a maintenance record: {err}") from None
