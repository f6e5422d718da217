"""coordinator.sweeper over in-memory ports: the grace recorded in the cluster carries over to a new
leader, a forget is visible (Event, counter) once, and a location's own backups are never touched."""

from __future__ import annotations

import copy
import threading
from dataclasses import dataclass, field
from datetime import timedelta

from barge import __version__
from barge.clock import ManualClock
from barge.control.messages import BackupSnapshot, CoordinatorCommand, Hello, Sweep, SweepResult
from barge.errors import Conflict, NotFound
from barge.kube.resources import BACKUP, BACKUP_STORAGE_LOCATION, CONFIG_MAP, Resource
from barge.probes import Vitals
from coordinator.config import DeletedBackupsConfig
from coordinator.hub import Hub
from coordinator.metrics import CoordinatorMetrics
from coordinator.sweeper import STATE_CONFIG_MAP, Sweeper
from devenv.waiting import wait_for
from tests.fakecluster import FakeEvents, FakeObjects, Obj

GRACE = timedelta(hours=1)
PROMPTLY = timedelta(milliseconds=1)  # the loop's first pass at once
BSL: Obj = {
    "kind": "BackupStorageLocation",
    "metadata": {"name": "default", "namespace": "velero"},
    "spec": {"accessMode": "ReadWrite"},
    "status": {"phase": "Available"},
}


class Objects(FakeObjects):
    """Adds what the sweeper reads and writes: lists and replaces guarded by resourceVersion."""

    def list(self, resource: Resource, namespace: str | None, selector: str | None = None) -> list[Obj]:
        return [
            copy.deepcopy(o)
            for (kind, ns, _), o in self.store.items()
            if kind == resource.kind and ns == namespace
        ]

    def create(self, resource: Resource, body: Obj, exist_ok: bool = False) -> Obj:
        body = copy.deepcopy(body)
        body["metadata"]["resourceVersion"] = "1"
        return super().create(resource, body, exist_ok)

    def replace(self, resource: Resource, body: Obj, subresource: str = "") -> Obj:
        current = self.get(resource, body["metadata"]["namespace"], body["metadata"]["name"])
        if current["metadata"]["resourceVersion"] != body["metadata"]["resourceVersion"]:
            raise Conflict("resourceVersion changed")
        body = copy.deepcopy(body)
        body["metadata"]["resourceVersion"] = str(int(current["metadata"]["resourceVersion"]) + 1)
        self.put({**body, "kind": resource.kind})
        return body


@dataclass
class Location:
    """What the agent would find in the location, and its forget (with the agent's own check)."""

    backups: set[str] = field(default_factory=set)
    snapshots: list[BackupSnapshot] = field(default_factory=list)
    forgets: int = 0

    def answer(self, sweep: Sweep) -> SweepResult:
        forgotten = []
        for item in sweep.forget:
            if item.backup_name in self.backups:
                continue
            gone = [s for s in self.snapshots if s.snapshot_id in item.snapshot_ids]
            self.snapshots = [s for s in self.snapshots if s not in gone]
            forgotten += [s.snapshot_id for s in gone]
        self.forgets += len(forgotten)
        return SweepResult(
            sweep.sweep_id, "", tuple(sorted(self.backups)), tuple(self.snapshots), tuple(forgotten)
        )


@dataclass
class Agent:
    hub: Hub
    location: Location
    node: str = "node-a"
    hello: Hello = field(default_factory=lambda: Hello("node-a", __version__, 2))

    def send(self, command: CoordinatorCommand) -> None:
        if isinstance(command, Sweep):
            self.hub.agent_event(self, self.location.answer(command))

    def close(self, reason: str) -> None:
        pass


def setup() -> tuple[Objects, FakeEvents, Hub, CoordinatorMetrics, ManualClock, Location]:
    clock = ManualClock()
    metrics = CoordinatorMetrics()
    hub = Hub(clock, metrics)
    old = (clock.now() - timedelta(days=2)).isoformat()
    location = Location(
        backups={"weekly"},
        snapshots=[
            BackupSnapshot("shop", "a" * 64, "nightly", "u1", old),
            BackupSnapshot("erp", "b" * 64, "nightly", "u1", old),
            BackupSnapshot("shop", "c" * 64, "weekly", "u2", old),
        ],
    )
    hub.agent_connected(Agent(hub, location))
    return Objects(copy.deepcopy(BSL)), FakeEvents(), hub, metrics, clock, location


def sweeper(
    objects: Objects,
    events: FakeEvents,
    hub: Hub,
    metrics: CoordinatorMetrics,
    clock: ManualClock,
    *,
    vitals: Vitals | None = None,
    check_interval: timedelta = timedelta(minutes=10),
) -> Sweeper:
    config = DeletedBackupsConfig(check_interval, GRACE)
    return Sweeper(
        objects=objects,
        events=events,
        hub=hub,
        metrics=metrics,
        clock=clock,
        namespace="velero",
        config=config,
        vitals=vitals,
    )


def grace_records(objects: Objects) -> dict[str, str]:
    return dict(objects.store.get(("ConfigMap", "velero", STATE_CONFIG_MAP), {}).get("data") or {})


def test_a_deleted_backup_is_forgotten_after_the_grace_even_across_a_new_leader() -> None:
    objects, events, hub, metrics, clock, location = setup()
    sweeper(objects, events, hub, metrics, clock).sweep(copy.deepcopy(BSL))
    assert list(grace_records(objects)) == ["default.u1"]  # "weekly" is in the location: no grace
    clock.advance(GRACE.total_seconds() / 2)
    sweeper(objects, events, hub, metrics, clock).sweep(copy.deepcopy(BSL))
    assert location.forgets == 0

    clock.advance(GRACE.total_seconds() / 2)
    new_leader = sweeper(objects, events, hub, metrics, clock)
    new_leader.sweep(copy.deepcopy(BSL))
    assert location.forgets == 2
    assert [s.backup_name for s in location.snapshots] == ["weekly"]
    assert [reason for reason, _ in events.recorded] == ["SnapshotsForgotten"]
    assert "nightly (uid u1)" in events.recorded[0][1]
    forgotten = metrics.registry.get_sample_value(
        "barge_coordinator_snapshots_forgotten_total", {"location": "default"}
    )
    assert forgotten == 2.0

    new_leader.sweep(copy.deepcopy(BSL))  # nothing left of it: the record goes, nothing else happens
    assert grace_records(objects) == {}
    assert location.forgets == 2
    assert len(events.recorded) == 1


def test_a_backup_object_in_the_cluster_keeps_its_snapshots() -> None:
    objects, events, hub, metrics, clock, location = setup()
    objects.put({"kind": BACKUP.kind, "metadata": {"name": "nightly", "namespace": "velero"}})
    for _ in range(3):
        sweeper(objects, events, hub, metrics, clock).sweep(copy.deepcopy(BSL))
        clock.advance(GRACE.total_seconds())
    assert location.forgets == 0
    assert grace_records(objects) == {}


def test_a_read_only_location_is_left_alone() -> None:
    objects, events, hub, metrics, clock, location = setup()
    read_only = {**copy.deepcopy(BSL), "spec": {"accessMode": "ReadOnly"}}
    for _ in range(3):
        sweeper(objects, events, hub, metrics, clock).sweep(read_only)
        clock.advance(GRACE.total_seconds())
    assert location.forgets == 0
    assert CONFIG_MAP.kind not in {kind for kind, _, _ in objects.store}


def test_a_failure_to_decide_on_deleted_backups_still_returns_the_survey_for_maintenance() -> None:
    class NoBackupKind(Objects):
        def list(self, resource: Resource, namespace: str | None, selector: str | None = None) -> list[Obj]:
            if resource is BACKUP:
                raise NotFound("list backups in velero: 404 page not found")
            return super().list(resource, namespace, selector)

    _, events, hub, metrics, clock, location = setup()
    broken = NoBackupKind(copy.deepcopy(BSL))
    survey = sweeper(broken, events, hub, metrics, clock).sweep(copy.deepcopy(BSL))
    assert survey is not None
    assert location.forgets == 0
    sweeps = "barge_coordinator_location_sweeps_total"
    assert metrics.registry.get_sample_value(sweeps, {"result": "failed"}) == 1


def test_a_sweeper_loop_that_dies_is_reported_dead() -> None:
    class BrokenObjects(Objects):
        def list(self, resource: Resource, namespace: str | None, selector: str | None = None) -> list[Obj]:
            if resource is BACKUP_STORAGE_LOCATION:
                raise RuntimeError("the client broke")
            return super().list(resource, namespace, selector)

    _, events, hub, metrics, clock, _ = setup()
    vitals, died = Vitals(clock), threading.Event()
    vitals.on_death = lambda loop, reason: died.set()
    broken = BrokenObjects(copy.deepcopy(BSL))
    dying = sweeper(broken, events, hub, metrics, clock, vitals=vitals, check_interval=PROMPTLY)
    dying.start()
    try:
        assert died.wait(timeout=30)
    finally:
        dying.stop()
    assert vitals.problems() == ["sweeper died: RuntimeError: the client broke"]


def test_an_unexpected_error_with_one_location_is_retried_at_the_next_check_not_a_crash() -> None:
    """As controller-runtime recovers a panicking reconcile: one location's bug must not end the
    leader (it would restart into the same bug, over and over)."""

    class BuggyBackups(Objects):
        def list(self, resource: Resource, namespace: str | None, selector: str | None = None) -> list[Obj]:
            if resource is BACKUP:
                raise KeyError("a bug")
            return super().list(resource, namespace, selector)

    _, events, hub, metrics, clock, _ = setup()
    vitals = Vitals(clock)
    buggy = BuggyBackups(copy.deepcopy(BSL))
    sweeping = sweeper(buggy, events, hub, metrics, clock, vitals=vitals, check_interval=PROMPTLY)
    sweeping.start()
    failed = "barge_coordinator_location_sweeps_total"
    try:
        wait_for(lambda: (metrics.registry.get_sample_value(failed, {"result": "failed"}) or 0) >= 2, 30)
    finally:
        sweeping.stop()
    assert vitals.problems() == []


def test_a_sweeper_waiting_on_an_agent_longer_than_the_stall_bound_is_healthy() -> None:
    """A maintenance run waits up to maintenance.timeout (2 h) for the agent's answer, beyond any
    useful stall bound: the sweeper is watched for its death only."""

    @dataclass
    class SilentAgent:
        asked: threading.Event = field(default_factory=threading.Event)
        node: str = "node-b"
        hello: Hello = field(default_factory=lambda: Hello("node-b", __version__, 2))

        def send(self, command: CoordinatorCommand) -> None:
            self.asked.set()

        def close(self, reason: str) -> None:
            pass

    clock, metrics = ManualClock(), CoordinatorMetrics()
    hub, agent = Hub(clock, metrics), SilentAgent()
    hub.agent_connected(agent)
    objects, events = Objects(copy.deepcopy(BSL)), FakeEvents()
    vitals = Vitals(clock, stall_after_s=60)
    deaths: list[str] = []
    vitals.on_death = lambda loop, reason: deaths.append(loop)
    waiting = sweeper(objects, events, hub, metrics, clock, vitals=vitals, check_interval=PROMPTLY)
    waiting.start()
    try:
        assert agent.asked.wait(timeout=30)
        clock.advance(7200)
        assert vitals.problems() == []
    finally:
        hub.agent_disconnected(agent)  # ends the wait (NoAnswer) so that the loop sees the stop
        waiting.stop()
    assert deaths == []
    assert vitals.problems() == []


def test_a_location_whose_storage_does_not_answer_holds_up_no_other() -> None:
    """The agent never answers sweeps of ``stuck`` (its storage hangs); ``default`` is still swept,
    again and again, and ``stuck`` gets no second pass while its first one waits."""

    @dataclass
    class HalfAgent(Agent):
        asked: list[str] = field(default_factory=list)

        def send(self, command: CoordinatorCommand) -> None:
            if isinstance(command, Sweep):
                self.asked.append(command.backup_storage_location)
                if command.backup_storage_location != "stuck":
                    super().send(command)

    clock = ManualClock()
    metrics = CoordinatorMetrics()
    hub = Hub(clock, metrics)
    agent = HalfAgent(hub, Location())
    hub.agent_connected(agent)
    stuck = copy.deepcopy(BSL)
    stuck["metadata"]["name"] = "stuck"
    objects = Objects(copy.deepcopy(BSL))
    objects.put(stuck)
    sweeping = sweeper(objects, FakeEvents(), hub, metrics, clock, check_interval=PROMPTLY)
    sweeping.start()
    ok = "barge_coordinator_location_sweeps_total"
    try:
        wait_for(lambda: (metrics.registry.get_sample_value(ok, {"result": "ok"}) or 0) >= 5, 30)
    finally:
        sweeping.stop()
    assert agent.asked.count("stuck") == 1
    assert agent.asked.count("default") >= 5
