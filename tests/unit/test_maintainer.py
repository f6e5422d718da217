"""coordinator.maintainer over in-memory ports: runs what is due, records it where users read it,
exports it as metrics, and a new leader continues the same schedule."""

from __future__ import annotations

import copy
import json
import threading
from dataclasses import dataclass, field
from datetime import timedelta

import pytest

from barge import __version__
from barge.clock import ManualClock
from barge.control.messages import CoordinatorCommand, Hello, Maintain, MaintenanceResult
from coordinator.hub import Hub
from coordinator.maintainer import STATUS_CONFIG_MAP, Maintainer
from coordinator.maintenance import MaintenanceConfig
from coordinator.metrics import CoordinatorMetrics
from tests.fakecluster import FakeEvents
from tests.unit.test_sweeper import BSL, Objects

pytestmark = pytest.mark.unit


@dataclass
class Agent:
    """Answers each Maintain with the next prepared result (or not at all once they run out)."""

    hub: Hub
    results: list[MaintenanceResult] = field(default_factory=list)
    asked: list[Maintain] = field(default_factory=list)
    node: str = "node-a"
    hello: Hello = field(default_factory=lambda: Hello("node-a", __version__, 2))

    def send(self, command: CoordinatorCommand) -> None:
        if isinstance(command, Maintain):
            self.asked.append(command)
            if self.results:
                answer = self.results.pop(0)
                self.hub.agent_event(self, MaintenanceResult(command.maintenance_id, **_fields(answer)))

    def close(self, reason: str) -> None:
        pass


def _fields(result: MaintenanceResult) -> dict[str, object]:
    return {k: v for k, v in result.__dict__.items() if k != "maintenance_id"}


class World:
    def __init__(self) -> None:
        self.clock = ManualClock()
        self.metrics = CoordinatorMetrics()
        self.hub = Hub(self.clock, self.metrics)
        self.agent = Agent(self.hub)
        self.hub.agent_connected(self.agent)
        self.objects = Objects(copy.deepcopy(BSL))
        self.events = FakeEvents()

    def leader(self, config: MaintenanceConfig | None = None) -> Maintainer:
        return Maintainer(objects=self.objects, events=self.events, hub=self.hub, metrics=self.metrics,
                          clock=self.clock, namespace="velero",
                          config=config or MaintenanceConfig(timeout=timedelta(seconds=1)))  # fmt: skip

    def maintain(self, leader: Maintainer, repositories: tuple[str, ...] = ("shop",)) -> None:
        leader.maintain(copy.deepcopy(BSL), repositories, ["node-a"], threading.Event())

    def records(self) -> dict[str, dict[str, object]]:
        data = self.objects.store.get(("ConfigMap", "velero", STATUS_CONFIG_MAP), {}).get("data") or {}
        return {k: json.loads(v) for k, v in data.items()}

    def sample(self, name: str, labels: dict[str, str]) -> float | None:
        return self.metrics.registry.get_sample_value(name, labels)


SHOP = {"location": "default", "source_namespace": "shop"}


def test_a_due_run_is_recorded_counted_and_told_and_not_repeated_until_due() -> None:
    w = World()
    w.agent.results.append(MaintenanceResult("", gc_phase="sweep+mark", reclaimed_bytes=5000, deleted_packs=2,
                                             size_bytes=70_000, checked=True, gc_seconds=1.5))  # fmt: skip
    leader = w.leader()
    w.maintain(leader)
    (asked,) = w.agent.asked
    assert (asked.source_namespace, asked.collect_garbage, asked.check, asked.read_data_fraction) == (
        "shop", True, True, 0.1)  # fmt: skip
    record = w.records()["default.shop"]
    assert record["reclaimedBytesTotal"] == 5000
    assert record["sizeBytes"] == 70_000
    assert record["gcSucceeded"] == w.clock.now().isoformat()
    assert record["lastError"] == ""
    assert w.sample("barge_repository_size_bytes", SHOP) == 70_000
    assert w.sample("barge_repository_reclaimed_bytes_total", {"location": "default"}) == 5000
    assert w.sample("barge_repository_maintenance_runs_total", {"task": "gc", "result": "ok"}) == 1
    last_gc = w.sample("barge_repository_maintenance_last_success_timestamp_seconds", {**SHOP, "task": "gc"})
    assert last_gc == w.clock.now().timestamp()
    assert [reason for reason, _ in w.events.recorded] == ["SpaceReclaimed"]

    w.clock.advance(3600)
    w.maintain(leader)
    assert len(w.agent.asked) == 1  # not due for another 23 hours


def test_a_new_leader_continues_the_schedule_and_exports_the_records() -> None:
    w = World()
    w.agent.results.append(MaintenanceResult("", gc_phase="mark", size_bytes=10, checked=True))
    w.maintain(w.leader())
    w.metrics.forget_repositories()  # the term ends
    assert w.sample("barge_repository_size_bytes", SHOP) is None

    new_leader = w.leader()
    new_leader.export()
    assert w.sample("barge_repository_size_bytes", SHOP) == 10
    w.clock.advance(timedelta(hours=2).total_seconds())
    w.maintain(new_leader)
    assert len(w.agent.asked) == 1
    w.clock.advance(timedelta(hours=22).total_seconds())
    w.agent.results.append(MaintenanceResult("", gc_phase="sweep+mark", size_bytes=8))
    w.maintain(new_leader)
    assert [(a.collect_garbage, a.check) for a in w.agent.asked] == [(True, True), (True, False)]


def test_damage_is_a_warning_event_a_metric_and_in_the_record() -> None:
    w = World()
    w.agent.results.append(MaintenanceResult("", gc_phase="mark", checked=True, size_bytes=1,
                                             problems=("pack 1f damaged",), problem_count=4))  # fmt: skip
    w.maintain(w.leader())
    assert w.sample("barge_repository_check_problems", SHOP) == 4
    assert w.records()["default.shop"]["problems"] == ["pack 1f damaged"]
    ((reason, message),) = w.events.recorded
    assert reason == "RepositoryDamaged"
    assert "4 problem(s)" in message


def test_an_agent_that_does_not_answer_is_an_attempt_retried_later() -> None:
    w = World()  # no prepared result: the agent never answers within the 1 s timeout
    leader = w.leader()
    w.maintain(leader)
    record = w.records()["default.shop"]
    assert "did not answer" in str(record["lastError"])
    assert record["gcSucceeded"] is None
    assert w.sample("barge_repository_maintenance_runs_total", {"task": "gc", "result": "failed"}) == 1
    w.maintain(leader)
    assert len(w.agent.asked) == 1
    w.clock.advance(3600)
    w.maintain(leader)
    assert len(w.agent.asked) == 2


def test_records_of_repositories_gone_from_the_location_are_dropped() -> None:
    w = World()
    w.agent.results += [MaintenanceResult("", gc_phase="mark", size_bytes=1, checked=True)] * 2
    leader = w.leader()
    w.maintain(leader, ("shop", "erp"))
    assert set(w.records()) == {"default.shop", "default.erp"}
    w.maintain(leader, ("erp",))
    assert set(w.records()) == {"default.erp"}
    assert w.sample("barge_repository_size_bytes", SHOP) is None


def test_nothing_runs_when_both_intervals_are_zero() -> None:
    w = World()
    off = MaintenanceConfig(gc_interval=timedelta(0), check_interval=timedelta(0))
    w.maintain(w.leader(off))
    assert w.agent.asked == []
    assert w.records() == {}
