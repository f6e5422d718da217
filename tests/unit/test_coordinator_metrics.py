"""The coordinator's scrape-time metrics: the oldest non-final item per kind and phase."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from coordinator.metrics import CoordinatorMetrics, oldest_active_ages

NOW = datetime(2026, 11, 25, 12, 0, 0, tzinfo=UTC)


def cr(kind: str, phase: str | None, created: str, datamover: str = "barge") -> dict[str, Any]:
    status = {"phase": phase} if phase else {}
    return {"kind": kind, "metadata": {"creationTimestamp": created}, "spec": {"datamover": datamover},
            "status": status}  # fmt: skip


def test_the_oldest_non_final_item_per_kind_and_phase_counts_and_the_rest_reads_zero() -> None:
    ages = oldest_active_ages(
        [
            cr("DataUpload", "Prepared", "2026-11-25T11:00:00Z"),
            cr("DataUpload", "Prepared", "2026-11-25T11:30:00Z"),
            cr("DataUpload", None, "2026-11-25T11:59:00Z"),  # no status yet: New
            cr("DataUpload", "Completed", "2026-11-20T00:00:00Z"),  # final: never stuck
            cr("DataDownload", "InProgress", "2026-11-25T10:00:00Z", datamover="velero"),  # not ours
        ],
        NOW,
    )
    assert ages[("DataUpload", "Prepared")] == 3600.0
    assert ages[("DataUpload", "New")] == 60.0
    assert ages[("DataDownload", "InProgress")] == 0.0
    assert len(ages) == 10  # every kind x non-final phase is exported, so alerts see a series


def test_the_age_is_read_from_the_source_at_every_scrape() -> None:
    items = [cr("DataDownload", "Accepted", "2026-11-25T11:58:00Z")]
    metrics = CoordinatorMetrics()
    metrics.watch_items(lambda: items, lambda: NOW)
    name = "barge_coordinator_oldest_item_age_seconds"
    labels = {"kind": "DataDownload", "phase": "Accepted"}
    assert metrics.registry.get_sample_value(name, labels) == 120.0
    items.clear()
    assert metrics.registry.get_sample_value(name, labels) == 0.0


def test_failure_counters_exist_at_zero_before_the_first_failure() -> None:
    """increase() skips a series' first sample: a counter born at 1 would hide the first failure."""
    registry = CoordinatorMetrics().registry
    assert (
        registry.get_sample_value(
            "barge_coordinator_results_total", {"kind": "download", "outcome": "failed"}
        )
        == 0.0
    )
    transitions = {"kind": "DataUpload", "phase": "Failed"}
    assert registry.get_sample_value("barge_coordinator_phase_transitions_total", transitions) == 0.0
