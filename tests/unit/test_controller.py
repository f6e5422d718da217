"""The controller's wiring, with in-memory adapters (``tests/fakecluster.py``): the cache read,
the admission pass, decide and the executor's writes, as one reconcile does them."""

from __future__ import annotations

from typing import Any

from barge.clock import ManualClock
from barge.control.naming import FINALIZER
from coordinator.config import CoordinatorConfig
from coordinator.controller import Controller
from coordinator.hub import Hub
from coordinator.metrics import CoordinatorMetrics
from coordinator.model import ACCEPTED_AT_ANNOTATION
from coordinator.ports import ControllerAdapters
from coordinator.scheduler import ItemKey
from tests.fakecluster import FakeCrWrites, FakeEvents, FakeObjects, feeds_over

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


def controller(objects: FakeObjects, config: CoordinatorConfig) -> Controller:
    clock = ManualClock()
    metrics = CoordinatorMetrics()
    adapters = ControllerAdapters(
        feeds=feeds_over(objects), objects=objects, status=FakeCrWrites(objects), events=FakeEvents()
    )
    return Controller(
        adapters,
        namespace="velero",
        config=config,
        hub=Hub(clock, metrics),
        metrics=metrics,
        clock=clock,
        identity="barge-coordinator-0",
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
