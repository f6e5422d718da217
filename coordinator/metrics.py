"""The coordinator's Prometheus metrics: the control plane's view of all work.

Labels are bounded sets (kind, phase, reason, node); CR names never appear in labels.
"""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

_DURATION_BUCKETS = (5, 15, 30, 60, 120, 300, 600, 1800, 3600, 7200, 14400, 43200, 86400)
_FAST_BUCKETS = (0.001, 0.005, 0.01, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10)


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
