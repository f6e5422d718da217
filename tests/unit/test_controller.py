"""The controller's wiring, with in-memory adapters (``tests/fakecluster.py``): the cache read,
the admission pass, decide and the executor's writes, as one reconcile does them."""

from __future__ import annotations

import threading
from typing import Any

import pytest

from barge.clock import ManualClock
from barge.control.messages import CancelAssignment, Hello, RunningAssignment
from barge.control.naming import (
    ASSIGNMENT_ANNOTATION,
    FINALIZER,
    LABEL_OWNER_KIND,
    LABEL_OWNER_NAME,
    LABEL_OWNER_UID,
)
from barge.errors import TemporaryError
from barge.probes import Vitals
from coordinator.config import CoordinatorConfig
from coordinator.controller import Controller
from coordinator.hub import Hub
from coordinator.metrics import CoordinatorMetrics
from coordinator.model import ACCEPTED_AT_ANNOTATION
from coordinator.ports import ControllerAdapters
from coordinator.scheduler import ItemKey
from devenv.waiting import wait_for
from tests.fakecluster import FakeCrWrites, FakeEvents, FakeObjects, RecordingSession, feeds_over

Obj = dict[str, Any]


def world(uploads: int) -> FakeObjects:
    objects = FakeObjects(
        {"kind": "BackupStorageLocation", "metadata": {"namespace": "velero", "name": "default"}},
        {"kind": "Node", "metadata": {"name": "node-a"}, "spec": {}},
    )
    for n in range(uploads):
        objects.put(
            {
                "kind": "DataUpload",
                "metadata": {
                    "namespace": "velero",
                    "name": f"backup-{n}",
                    "uid": f"uid-{n}",
                    "resourceVersion": "1",
                    "creationTimestamp": f"2026-01-01T00:00:{n:02d}Z",
                    "labels": {"velero.io/backup-name": "backup"},
                },
                "spec": {
                    "datamover": "barge",
                    "snapshotType": "CSI",
                    "sourceNamespace": "app",
                    "sourcePVC": f"data-{n}",
                    "backupStorageLocation": "default",
                    "operationTimeout": "10m0s",
                    "csiSnapshot": {"volumeSnapshot": f"velero-data-{n}", "storageClass": "standard"},
                },
            }
        )
    return objects


def controller(
    objects: FakeObjects,
    config: CoordinatorConfig,
    status: FakeCrWrites | None = None,
    clock: ManualClock | None = None,
    vitals: Vitals | None = None,
) -> Controller:
    clock = clock or ManualClock()
    metrics = CoordinatorMetrics()
    adapters = ControllerAdapters(
        feeds=feeds_over(objects),
        objects=objects,
        status=status or FakeCrWrites(objects),
        events=FakeEvents(),
    )
    return Controller(
        adapters,
        namespace="velero",
        config=config,
        hub=Hub(clock, metrics),
        metrics=metrics,
        clock=clock,
        identity="barge-coordinator-0",
        vitals=vitals,
    )


def test_an_admitted_upload_is_accepted_in_one_write_with_its_finalizer() -> None:
    objects = world(1)
    loop = controller(objects, CoordinatorConfig())
    loop.recompute_admissions()
    loop.reconcile(ItemKey("DataUpload", "velero", "backup-0"))
    assert objects.writes == ["update DataUpload backup-0 status.phase=Accepted"]
    stored = objects.store[("DataUpload", "velero", "backup-0")]
    assert stored["metadata"]["finalizers"] == [FINALIZER]
    assert stored["status"]["acceptedByNode"] == "barge-coordinator-0"
    assert stored["metadata"]["annotations"][ACCEPTED_AT_ANNOTATION] == stored["status"]["acceptedTimestamp"]


def test_the_prepare_queue_admits_no_more_than_its_length_and_the_rest_wait_without_writing() -> None:
    objects = world(5)
    loop = controller(objects, CoordinatorConfig(prepare_queue_length=2))
    loop.recompute_admissions()
    for n in range(5):
        loop.reconcile(ItemKey("DataUpload", "velero", f"backup-{n}"))
    # The oldest two (created first) hold the queue; the others stay New, untouched.
    assert objects.writes == [
        "update DataUpload backup-0 status.phase=Accepted",
        "update DataUpload backup-1 status.phase=Accepted",
    ]


def test_a_cr_of_another_data_mover_is_never_touched() -> None:
    objects = world(1)
    objects.store[("DataUpload", "velero", "backup-0")]["spec"]["datamover"] = "velero"
    loop = controller(objects, CoordinatorConfig())
    loop.recompute_admissions()
    assert loop.reconcile(ItemKey("DataUpload", "velero", "backup-0")) is None
    assert objects.writes == []


def exposer_pod(upload: str, node: str) -> Obj:
    labels = {LABEL_OWNER_KIND: "DataUpload", LABEL_OWNER_NAME: upload}
    return {
        "kind": "Pod",
        "metadata": {"namespace": "velero", "name": f"{upload}-expose", "labels": labels},
        "spec": {"nodeName": node},
    }


def reconciled(loop: Controller) -> list[str]:
    """The CRs the queue holds now, reconciled in order until it is empty."""
    names = []
    while (key := loop.process_next(timeout=0)) is not None:
        names.append(key.name)
    return names


def test_a_node_cordon_wakes_only_the_crs_exposed_on_that_node() -> None:
    objects = world(3)
    objects.put({"kind": "Node", "metadata": {"name": "node-b"}, "spec": {}})
    loop = controller(objects, CoordinatorConfig())
    for node in ("node-a", "node-b"):
        objects.announce("ADDED", objects.store[("Node", None, node)])
    for upload, node in (("backup-0", "node-a"), ("backup-1", "node-b"), ("backup-2", "node-a")):
        objects.announce("ADDED", exposer_pod(upload, node))
    reconciled(loop)

    cordoned = {"kind": "Node", "metadata": {"name": "node-a"}, "spec": {"unschedulable": True}}
    objects.announce("MODIFIED", cordoned)
    assert sorted(reconciled(loop)) == ["backup-0", "backup-2"]
    objects.announce("MODIFIED", cordoned)  # a status heartbeat: nothing decisions read changed
    assert reconciled(loop) == []


def test_an_event_on_an_exposure_object_wakes_only_the_cr_it_belongs_to() -> None:
    objects = world(3)
    loop = controller(objects, CoordinatorConfig())
    claim = {
        "kind": "PersistentVolumeClaim",
        "metadata": {
            "namespace": "velero",
            "name": "backup-1-expose",
            "labels": {LABEL_OWNER_KIND: "DataUpload", LABEL_OWNER_NAME: "backup-1"},
        },
        "spec": {},
    }
    objects.announce("ADDED", claim)
    assert reconciled(loop) == ["backup-1"]


class FlakyCrWrites(FakeCrWrites):
    """CR writes whose first ``failures`` attempts fail as an overloaded API server's would."""

    def __init__(self, objects: FakeObjects, failures: int) -> None:
        super().__init__(objects)
        self.failures = failures

    def update_status(self, *args: Any, **kwargs: Any) -> Obj:
        if self.failures:
            self.failures -= 1
            raise TemporaryError("the API server is overloaded (HTTP 503)")
        return super().update_status(*args, **kwargs)


def test_a_reconcile_that_meets_a_temporary_error_is_retried_after_a_backoff_not_dropped() -> None:
    objects, clock = world(1), ManualClock()
    loop = controller(objects, CoordinatorConfig(), status=FlakyCrWrites(objects, failures=1), clock=clock)
    loop.recompute_admissions()
    objects.announce("ADDED", objects.store[("DataUpload", "velero", "backup-0")])
    assert reconciled(loop) == ["backup-0"]
    assert objects.writes == []
    assert reconciled(loop) == []  # not retried at once: the backoff holds it
    clock.advance(1)
    assert reconciled(loop) == ["backup-0"]
    assert objects.writes == ["update DataUpload backup-0 status.phase=Accepted"]


class BuggyCrWrites(FakeCrWrites):
    """CR writes that hit a bug (an exception outside barge.errors) the first time."""

    def __init__(self, objects: FakeObjects) -> None:
        super().__init__(objects)
        self.broken = True

    def update_status(self, *args: Any, **kwargs: Any) -> Obj:
        if self.broken:
            self.broken = False
            raise KeyError("spec")
        return super().update_status(*args, **kwargs)


def test_an_unexpected_error_in_one_reconcile_is_retried_after_a_backoff_and_the_worker_lives_on() -> None:
    """As controller-runtime recovers a panicking Reconcile: one CR's bug must not end a worker."""
    objects, clock = world(1), ManualClock()
    loop = controller(objects, CoordinatorConfig(), status=BuggyCrWrites(objects), clock=clock)
    loop.recompute_admissions()
    objects.announce("ADDED", objects.store[("DataUpload", "velero", "backup-0")])
    assert reconciled(loop) == ["backup-0"]  # the KeyError did not escape the worker's loop
    assert reconciled(loop) == []
    clock.advance(1)
    assert reconciled(loop) == ["backup-0"]
    assert objects.writes == ["update DataUpload backup-0 status.phase=Accepted"]


def test_every_loop_of_a_running_controller_keeps_beating_and_a_stopped_one_is_no_longer_watched() -> None:
    clock = ManualClock()
    vitals = Vitals(clock, stall_after_s=60)
    loop = controller(world(0), CoordinatorConfig(), clock=clock, vitals=vitals)
    loop.start()
    try:
        assert vitals.watched() == ["admission", "reconcile-0", "reconcile-1", "resync"]
        clock.advance(61)
        assert vitals.problems()  # nothing beat since the start
        # On real time: the loops wait on Events between passes.
        wait_for(lambda: vitals.problems() == [], 30, what="every loop's next beat")
    finally:
        loop.stop()
    assert vitals.watched() == []


def test_a_controller_loop_that_dies_is_reported_as_dead() -> None:
    vitals, died = Vitals(ManualClock()), threading.Event()
    vitals.on_death = lambda loop, reason: died.set()
    loop = controller(world(0), CoordinatorConfig(), vitals=vitals)
    loop.start()
    try:
        loop.recompute_admissions = broken_admissions  # type: ignore[method-assign]
        assert died.wait(timeout=30)
    finally:
        loop.stop()
    assert vitals.problems() == ["admission died: RuntimeError: the scheduler broke"]


def broken_admissions() -> None:
    raise RuntimeError("the scheduler broke")


@pytest.mark.parametrize("event", ["ADDED", "MODIFIED"])
def test_a_cr_event_queues_the_cr_once_however_often_it_comes(event: str) -> None:
    objects = world(1)
    loop = controller(objects, CoordinatorConfig())
    upload = objects.store[("DataUpload", "velero", "backup-0")]
    for _ in range(3):
        objects.announce(event, upload)
    assert reconciled(loop) == ["backup-0"]


def stops(session: RecordingSession) -> list[tuple[str, int, str]]:
    return [(c.assignment_id, c.epoch, c.reason) for c in session.sent if isinstance(c, CancelAssignment)]


def test_a_new_leader_adopts_only_claims_the_cached_fence_names_and_stops_the_others() -> None:
    """The hub asks the controller about each claim of a connecting agent, and the controller asks
    the DataUpload in its informer cache (found by uid through the index its events keep): three
    are fenced to epoch 3 on node-a, one of them Completed."""
    objects = world(3)
    clock, metrics = ManualClock(), CoordinatorMetrics()
    hub = Hub(clock, metrics)
    adapters = ControllerAdapters(feeds_over(objects), objects, FakeCrWrites(objects), FakeEvents())
    Controller(adapters, namespace="velero", config=CoordinatorConfig(), hub=hub, metrics=metrics,
               clock=clock, identity="barge-coordinator-1")  # fmt: skip
    for n in range(3):  # what the informer delivers from its first list
        cr = objects.store[("DataUpload", "velero", f"backup-{n}")]
        cr["metadata"]["annotations"] = {ASSIGNMENT_ANNOTATION: "3:node-a"}
        cr["status"] = {"phase": "Completed" if n == 1 else "InProgress", "node": "node-a"}
        objects.announce("ADDED", cr)
    claims = (
        RunningAssignment("uid-0", 3, 5, 50),  # what the fence names
        RunningAssignment("uid-1", 3, 5, 50),  # a finished DataUpload
        RunningAssignment("uid-2", 2, 5, 50),  # an older epoch
        RunningAssignment("uid-9", 1, 0, 10),  # no such DataUpload
    )
    a = RecordingSession("node-a", Hello("node-a", "1", 4, claims))
    hub.agent_connected(a)
    b = RecordingSession("node-b", Hello("node-b", "1", 1, (RunningAssignment("uid-2", 3),)))
    hub.agent_connected(b)  # another node's epoch
    adopted = hub.assignment("uid-0")
    assert adopted is not None
    assert (adopted.epoch, adopted.node) == (3, "node-a")
    assert [hub.assignment(uid) for uid in ("uid-1", "uid-2", "uid-9")] == [None, None, None]
    assert stops(a) == [
        ("uid-1", 3, "not adopted: DataUpload velero/backup-1 is Completed"),
        ("uid-2", 2, "not adopted: DataUpload velero/backup-2 is fenced to 3:node-a, not 2:node-a"),
        ("uid-9", 1, "not adopted: no DataUpload or DataDownload has uid uid-9"),
    ]
    assert stops(b) == [
        ("uid-2", 3, "not adopted: DataUpload velero/backup-2 is fenced to 3:node-a, not 3:node-b")
    ]


def test_a_new_terms_first_pass_reaches_ready_exposures_before_admitting_new_crs() -> None:
    objects = world(5)
    for name, phase in (("backup-1", "InProgress"), ("backup-2", "Prepared"), ("backup-3", "Accepted")):
        objects.store[("DataUpload", "velero", name)]["status"] = {"phase": phase}
    objects.store[("DataUpload", "velero", "backup-4")]["status"] = {"phase": "Prepared"}
    loop = controller(objects, CoordinatorConfig())
    loop._enqueue_all()
    assert reconciled(loop) == ["backup-2", "backup-4", "backup-1", "backup-3", "backup-0"]


def test_an_agent_that_connects_gets_its_nodes_ready_exposure_ahead_of_every_waiting_cr() -> None:
    """A new leader's first pass finds no agent yet; when one connects, the admission pass runs
    again and the exposure now assignable on its node goes before the rest of the pass."""
    objects = world(4)
    ready = objects.store[("DataUpload", "velero", "backup-3")]
    ready["status"] = {"phase": "Prepared", "node": "node-a"}
    objects.put(exposer_pod("backup-3", "node-a"))
    loop = controller(objects, CoordinatorConfig())
    hub = loop._hub
    loop.recompute_admissions()
    reconciled(loop)  # the others are accepted; backup-3 is not admitted: no agent on node-a
    for n in range(3):
        objects.announce("MODIFIED", objects.store[("DataUpload", "velero", f"backup-{n}")])
    loop._admission_dirty.clear()

    hub.agent_connected(RecordingSession("node-a", Hello("node-a", "1", 1, ())))
    assert loop._admission_dirty.is_set()
    loop.recompute_admissions()
    assert loop.process_next(timeout=0) == ItemKey("DataUpload", "velero", "backup-3")


def test_an_admission_to_accept_is_no_admission_to_assign() -> None:
    """test_api_writes caught this: a pass admitted two DataDownloads to be accepted; both were
    exposed on node-a and Prepared before the next pass, and each was assigned on the admission to
    accept, two transfers on a node with loadConcurrency 1 (the agent refused the second, which
    was exposed again). The Prepared CRs wait for a pass that counts node-a's slots."""
    objects = world(2)
    objects.announce("ADDED", objects.store[("Node", None, "node-a")])
    loop = controller(objects, CoordinatorConfig())
    hub = loop._hub
    hub.agent_connected(RecordingSession("node-a", Hello("node-a", "1", 1, ())))
    loop.recompute_admissions()
    assert sorted(reconciled(loop)) == ["backup-0", "backup-1"]  # both accepted by this pass
    for n in range(2):  # exposed and Prepared on node-a before the next pass
        name = f"backup-{n}"
        pod = {**exposer_pod(name, "node-a"), "status": {"phase": "Running"}}
        pod["metadata"]["name"] = name  # the exposure's objects are named after the CR
        pod["metadata"]["labels"][LABEL_OWNER_UID] = f"uid-{n}"
        objects.announce("ADDED", pod)
        upload = objects.store[("DataUpload", "velero", name)]
        upload["metadata"]["resourceVersion"] = "2"
        upload["status"] = {**upload["status"], "phase": "Prepared", "node": "node-a"}
        objects.announce("MODIFIED", upload)
    objects.writes.clear()
    assert sorted(reconciled(loop)) == ["backup-0", "backup-1"]
    assert hub.assignment("uid-0") is None
    assert hub.assignment("uid-1") is None

    loop.recompute_admissions()  # node-a has one slot: the older one is queued and assigned
    assert reconciled(loop) == ["backup-0"]
    assert hub.assignment("uid-0") is not None
    assert hub.assignment("uid-1") is None


def test_a_cr_let_go_is_not_assigned_again_from_a_cache_copy_older_than_the_let_go() -> None:
    """bench-scale at 2,000 with a failover: a DataDownload got its Assignment a second time 12
    minutes later. Once the let-go write's 30 s in coordinator.ownwrites were over, a cache copy
    still showing it Prepared was reconciled, and the hub, which had forgotten it, sent it again."""
    objects = world(1)
    objects.announce("ADDED", objects.store[("Node", None, "node-a")])
    loop = controller(objects, CoordinatorConfig())
    hub = loop._hub
    session = RecordingSession("node-a", Hello("node-a", "1", 1, ()))
    hub.agent_connected(session)
    pod = {**exposer_pod("backup-0", "node-a"), "status": {"phase": "Running"}}
    pod["metadata"]["name"] = "backup-0"
    pod["metadata"]["labels"][LABEL_OWNER_UID] = "uid-0"
    objects.announce("ADDED", pod)
    upload = objects.store[("DataUpload", "velero", "backup-0")]
    upload["metadata"]["resourceVersion"] = "2"
    upload["metadata"]["finalizers"] = [FINALIZER]
    upload["status"] = {"phase": "Prepared", "node": "node-a"}
    objects.announce("MODIFIED", upload)
    loop.recompute_admissions()
    reconciled(loop)
    assert len(session.sent) == 1  # assigned
    stale = {**upload, "metadata": {**upload["metadata"]}}

    hub.forget("uid-0")  # what the executor's let-go does once the CR is final and cleaned up
    objects.writes.clear()
    objects.announce("MODIFIED", stale)  # the cache, behind, still shows it Prepared
    loop.recompute_admissions()
    reconciled(loop)
    assert len(session.sent) == 1
    assert objects.writes == []


@pytest.mark.parametrize("safety_net", ["resync pass", "informer re-delivery"])
def test_a_resync_queues_behind_the_events_that_come_during_it(safety_net: str) -> None:
    objects = world(3)
    loop = controller(objects, CoordinatorConfig())
    if safety_net == "resync pass":
        loop._enqueue_all(resync=True)
    else:
        for n in range(3):
            objects.announce("SYNC", objects.store[("DataUpload", "velero", f"backup-{n}")])
    upload = objects.store[("DataUpload", "velero", "backup-2")]
    upload["metadata"]["resourceVersion"] = "2"
    objects.announce("MODIFIED", upload)
    assert reconciled(loop) == ["backup-2", "backup-0", "backup-1"]


def test_every_wakeup_is_counted_by_what_queued_it() -> None:
    objects = world(2)
    loop = controller(objects, CoordinatorConfig())
    upload = objects.store[("DataUpload", "velero", "backup-0")]
    objects.announce("MODIFIED", upload)
    objects.announce("SYNC", upload)
    loop._enqueue_all(resync=True)
    pod = {**exposer_pod("backup-1", "node-a"), "status": {"phase": "Running"}}
    pod["metadata"]["name"] = "backup-1"
    pod["metadata"]["labels"][LABEL_OWNER_UID] = "uid-1"
    objects.announce("ADDED", pod)

    def woken(source: str) -> float | None:
        return loop._metrics.registry.get_sample_value("barge_coordinator_wakeups_total", {"source": source})

    assert (woken("DataUpload"), woken("sync"), woken("resync"), woken("Pod")) == (1, 1, 2, 1)
