"""The coordinator's Prometheus metrics: the control plane's view of all work.

Labels are bounded sets (kind, phase, reason, node); CR names never appear in labels.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Callable, Iterable, Iterator, Mapping
from datetime import datetime
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector

from barge.control.messages import AssignmentKind, Outcome
from barge.control.naming import DATAMOVER
from coordinator.model import Phase, parse_timestamp

ACTIVE_PHASES = ("New", "Accepted", "Prepared", "InProgress", "Canceling")
CR_KINDS = ("DataUpload", "DataDownload")
MAINTENANCE_TASKS = ("gc", "check")
CrSource = Callable[[], Iterable[Mapping[str, Any]]]

_DURATION_BUCKETS = (5, 15, 30, 60, 120, 300, 600, 1800, 3600, 7200, 14400, 43200, 86400)
_FAST_BUCKETS = (0.001, 0.005, 0.01, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10)
_WAIT_BUCKETS = (0.001, 0.01, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300)


class CoordinatorMetrics:
    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry or CollectorRegistry()
        r = self.registry
        self.is_leader = Gauge("barge_coordinator_is_leader", "1 while this replica leads", registry=r)
        self.agents_connected = Gauge(
            "barge_coordinator_agents_connected", "Agents with an open stream to this coordinator", registry=r
        )
        self.items = Gauge(
            "barge_coordinator_items",
            "DataUploads/DataDownloads served by Barge, by phase",
            ["kind", "phase"],
            registry=r,
        )
        self.queue = Gauge(
            "barge_coordinator_queue_depth",
            "Non-final items waiting, by what they wait for",
            ["reason"],
            registry=r,
        )
        self.queue_wait = Histogram(
            "barge_coordinator_queue_wait_seconds",
            "Time an item waited in the work queue for a reconcile worker (its step's share spent "
            "in Barge before any API call)",
            buckets=_WAIT_BUCKETS,
            registry=r,
        )
        self.wakeups = Counter(
            "barge_coordinator_wakeups",
            "CRs queued for a reconcile, by what queued them: an event's kind (sync: an informer's "
            "re-delivery), hub, admission, requeue (a timer fell due), resync, first_pass (a CR already "
            "queued counts again)",
            ["source"],
            registry=r,
        )
        self.transitions = Counter(
            "barge_coordinator_phase_transitions", "Phase changes written", ["kind", "phase"], registry=r
        )
        self.assignments = Counter(
            "barge_coordinator_assignments", "Assignments sent to agents", ["kind"], registry=r
        )
        self.reassignments = Counter(
            "barge_coordinator_reassignments", "Work moved to another node, by reason", ["reason"], registry=r
        )
        self.results = Counter(
            "barge_coordinator_results",
            "Results agents reported, by kind and outcome",
            ["kind", "outcome"],
            registry=r,
        )
        self.duration = Histogram(
            "barge_coordinator_item_duration_seconds",
            "Creation to final phase, by kind and final phase",
            ["kind", "phase"],
            buckets=_DURATION_BUCKETS,
            registry=r,
        )
        self.bytes_processed = Counter(
            "barge_coordinator_bytes_processed",
            "Bytes moved as agents report progress",
            ["kind", "node"],
            registry=r,
        )
        self.snapshots_forgotten = Counter(
            "barge_coordinator_snapshots_forgotten",
            "Snapshots of deleted Velero backups forgotten, by BackupStorageLocation",
            ["location"],
            registry=r,
        )
        self.location_sweeps = Counter(
            "barge_coordinator_location_sweeps",
            "Sweeps of a location for deleted backups, by result (ok, failed, no_agent)",
            ["result"],
            registry=r,
        )
        self.maintenance_runs = Counter(
            "barge_repository_maintenance_runs",
            "Repository maintenance runs, by task (gc, check) and result (ok, failed)",
            ["task", "result"],
            registry=r,
        )
        self.maintenance_last_success = Gauge(
            "barge_repository_maintenance_last_success_timestamp_seconds",
            "When the task last succeeded on the repository (or, before its first success, when the "
            "leader first saw the repository); exported by the leader",
            ["location", "source_namespace", "task"],
            registry=r,
        )
        self.maintenance_interval = Gauge(
            "barge_repository_maintenance_interval_seconds",
            "The configured interval of each maintenance task (0: off)",
            ["task"],
            registry=r,
        )
        self.maintenance_duration = Histogram(
            "barge_repository_maintenance_duration_seconds",
            "Time an agent spent on one repository's task",
            ["task"],
            buckets=_DURATION_BUCKETS,
            registry=r,
        )
        self.repository_size = Gauge(
            "barge_repository_size_bytes",
            "Pack bytes stored by the repository after its last maintenance; exported by the leader",
            ["location", "source_namespace"],
            registry=r,
        )
        self.repository_reclaimed = Counter(
            "barge_repository_reclaimed_bytes",
            "Pack bytes garbage collection deleted, by BackupStorageLocation",
            ["location"],
            registry=r,
        )
        self.repository_problems = Gauge(
            "barge_repository_check_problems",
            "Problems the last check (or a refused garbage collection) found; exported by the leader",
            ["location", "source_namespace"],
            registry=r,
        )
        self.api_errors = Counter(
            "barge_coordinator_api_errors",
            "Kubernetes API calls that failed, by action",
            ["action"],
            registry=r,
        )
        self.reconcile = Histogram(
            "barge_coordinator_reconcile_duration_seconds",
            "Time to decide and act on one item",
            buckets=_FAST_BUCKETS,
            registry=r,
        )

        self._export_zeros()

    def _export_zeros(self) -> None:
        """Every known label set starts at 0: increase() and rate() never see a series' first step,
        so without this an alert on the first failure after a restart would not fire."""
        for kind in CR_KINDS:
            for phase in Phase:
                self.transitions.labels(kind, phase.value)
                if phase.is_terminal:
                    self.duration.labels(kind, phase.value)
        for assignment_kind in AssignmentKind:
            self.assignments.labels(assignment_kind.value)
            for outcome in Outcome:
                self.results.labels(assignment_kind.value, outcome.value)
        for reason in ("new_epoch", "reexposed"):
            self.reassignments.labels(reason)
        for task in MAINTENANCE_TASKS:
            self.maintenance_duration.labels(task)
            for result in ("ok", "failed"):
                self.maintenance_runs.labels(task, result)

    def forget_repositories(self) -> None:
        """A leader term ended: only the leader exports what it knows of the repositories."""
        for gauge in (self.maintenance_last_success, self.repository_size, self.repository_problems):
            gauge.clear()

    def node_seen(self, node: str) -> None:
        """A node's byte counters start at 0 when its agent connects, before its first progress."""
        for kind in AssignmentKind:
            self.bytes_processed.labels(kind.value, node)

    def watch_items(self, crs: CrSource, now: Callable[[], datetime]) -> None:
        """Export the oldest non-final item's age, read from ``crs`` (the informer caches) per scrape."""
        self.registry.register(OldestItems(crs, now))


def oldest_active_ages(crs: Iterable[Mapping[str, Any]], now: datetime) -> dict[tuple[str, str], float]:
    """Seconds since creation of the oldest Barge item per (kind, non-final phase); 0 where none.

    Creation, not the last phase change, is what Velero's operation timeout counts from, and it is
    the only time every phase has.
    """
    ages: dict[tuple[str, str], float] = defaultdict(float)
    for cr in crs:
        if (cr.get("spec") or {}).get("datamover") != DATAMOVER:
            continue
        key = (str(cr.get("kind", "")), str((cr.get("status") or {}).get("phase") or "New"))
        created = parse_timestamp((cr.get("metadata") or {}).get("creationTimestamp"))
        if key[1] in ACTIVE_PHASES and created is not None:
            ages[key] = max(ages[key], (now - created).total_seconds())
    return {(kind, phase): max(0.0, ages[(kind, phase)]) for kind in CR_KINDS for phase in ACTIVE_PHASES}


class OldestItems(Collector):
    """``barge_coordinator_oldest_item_age_seconds{kind,phase}``: what the "stuck" alert watches.

    Computed at scrape time: a gauge updated by the controller would go stale exactly when the
    controller is stuck. Only the leader's caches hold items; a standby exports zeros.
    """

    def __init__(self, crs: CrSource, now: Callable[[], datetime]) -> None:
        self._crs = crs
        self._now = now

    def collect(self) -> Iterator[GaugeMetricFamily]:
        family = GaugeMetricFamily(
            "barge_coordinator_oldest_item_age_seconds",
            "Age since creation of the oldest non-final DataUpload/DataDownload, by kind and phase",
            labels=["kind", "phase"],
        )
        for (kind, phase), age in sorted(oldest_active_ages(self._crs(), self._now()).items()):
            family.add_metric([kind, phase], age)
        yield family
