"""The agent's Prometheus metrics.

Velero's node-agent exports only success/failure/cancel counters per node; Barge keeps those (same
meaning, ``barge_agent_data_{upload,download}_{success,failure,cancel}_total{node}``) and adds what
operators need to see the data move. No CR names in labels: cardinality stays bounded.
"""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

from barge.control.messages import AssignmentKind, Outcome

_DURATION_BUCKETS = (1, 5, 15, 30, 60, 120, 300, 600, 1800, 3600, 7200, 14400, 43200)
REPOSITORY_OPERATIONS = ("open", "backup", "restore")
_VELERO_OUTCOME = {Outcome.COMPLETED: "success", Outcome.FAILED: "failure", Outcome.CANCELED: "cancel"}


class AgentMetrics:
    def __init__(self, node: str, registry: CollectorRegistry | None = None) -> None:
        self.node = node
        self.registry = registry or CollectorRegistry()
        r = self.registry
        self.velero_counters = {
            (kind, word): Counter(
                f"barge_agent_data_{kind.value}_{word}",
                f"Data {kind.value}s ended in {word} (Velero's meaning)",
                ["node"],
                registry=r,
            )
            for kind in AssignmentKind
            for word in ("success", "failure", "cancel")
        }
        self.assignments = Counter(
            "barge_agent_assignments",
            "Assignments finished, by kind and outcome",
            ["kind", "outcome"],
            registry=r,
        )
        self.duration = Histogram(
            "barge_agent_assignment_duration_seconds",
            "Wall time of an assignment, start to end",
            ["kind", "outcome"],
            buckets=_DURATION_BUCKETS,
            registry=r,
        )
        self.bytes_done = Counter(
            "barge_agent_bytes_processed",
            "Bytes read from (upload) or written to (download) volumes",
            ["kind"],
            registry=r,
        )
        self.bytes_new = Counter(
            "barge_agent_bytes_new", "Bytes of data not already in the repository (after dedup)", registry=r
        )
        self.running = Gauge("barge_agent_running_assignments", "Assignments running now", registry=r)
        self.connected = Gauge(
            "barge_agent_connected", "1 while the stream to the coordinator is up", registry=r
        )
        self.repository_errors = Counter(
            "barge_agent_repository_errors",
            "Repository operations that failed, by operation (open, backup, restore)",
            ["operation"],
            registry=r,
        )
        for operation in REPOSITORY_OPERATIONS:
            self.repository_errors.labels(operation)
        self.status_write_errors = Counter(
            "barge_agent_status_write_errors", "CR status writes that failed (retried)", registry=r
        )

        self._export_zeros()

    def _export_zeros(self) -> None:
        """Every known label set starts at 0: increase() and rate() never see a series' first step,
        so without this the first failure (or the first upload's bytes) would not show in alerts."""
        for counter in self.velero_counters.values():
            counter.labels(self.node)
        for kind in AssignmentKind:
            self.bytes_done.labels(kind.value)
            for outcome in Outcome:
                self.assignments.labels(kind.value, outcome.value)

    def finished(self, kind: AssignmentKind, outcome: Outcome, seconds: float, done: int, new: int) -> None:
        self.assignments.labels(kind.value, outcome.value).inc()
        self.duration.labels(kind.value, outcome.value).observe(seconds)
        word = _VELERO_OUTCOME.get(outcome)
        if word:
            self.velero_counters[(kind, word)].labels(self.node).inc()
        self.bytes_done.labels(kind.value).inc(done)
        self.bytes_new.inc(new)

    def repository_error(self, operation: str) -> None:
        self.repository_errors.labels(operation).inc()
