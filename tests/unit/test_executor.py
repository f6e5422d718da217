"""The executor's writes for the exposure and the restored volume's hand-over, against in-memory
ports (``coordinator.ports``): which requests each action makes, in which order, and what it
must leave alone."""

from __future__ import annotations

import threading
import time
from dataclasses import replace
from datetime import timedelta
from typing import Any

from barge.clock import ManualClock
from barge.control.naming import EXPOSER_BUDGET, LABEL_OWNER_UID
from coordinator.executor import ORIGINAL_RECLAIM_ANNOTATION, Executor
from coordinator.exposer import plan_exposure
from coordinator.metrics import CoordinatorMetrics
from coordinator.model import BindRestoredVolume, CreateExposure, DeleteExposure, Phase, SetPhase
from tests.coordinator_world import download_cr, observed, upload_cr
from tests.fakecluster import FakeObjects

Obj = dict[str, Any]
Key = tuple[str, str | None, str]


def executor(objects: FakeObjects) -> Executor:
    unused: Any = None  # ports these actions never touch
    return Executor(
        objects=objects,
        status=unused,
        hub=unused,
        recorder=unused,
        metrics=unused,
        clock=unused,
        cached=objects.cached,
    )


def owned(kind: str, name: str, owner_uid: str, namespace: str | None = "velero", **fields: Any) -> Obj:
    meta: Obj = {"name": name, "labels": {LABEL_OWNER_UID: owner_uid}}
    if namespace is not None:
        meta["namespace"] = namespace
    return {"kind": kind, "metadata": meta, **fields}


def test_the_restored_volume_is_handed_to_the_target_claim_keeping_it_safe_throughout() -> None:
    cr = download_cr()
    pv = {
        "kind": "PersistentVolume",
        "metadata": {"name": "pv-1"},
        "spec": {"persistentVolumeReclaimPolicy": "Delete", "claimRef": {"name": cr.name}},
    }
    target = {
        "kind": "PersistentVolumeClaim",
        "metadata": {"namespace": "app-restored", "name": "data", "uid": "uid-target"},
        "spec": {"selector": {"matchLabels": {"velero.io/dynamic-pv-restore": "app.data.abc"}}},
    }
    objects = FakeObjects(
        pv, target, owned("Pod", cr.name, cr.uid), owned("PersistentVolumeClaim", cr.name, cr.uid)
    )
    executor(objects).execute({}, cr, (BindRestoredVolume("pv-1", "app-restored", "data"),))
    # Retain before the temporary claim goes (or the volume would be deleted with it), then the
    # hand-over restores the original policy in the same write that points it at the target.
    assert objects.writes == [
        "patch PersistentVolume pv-1",
        "delete Pod restore-1-xyz",
        "delete PersistentVolumeClaim restore-1-xyz",
        "patch PersistentVolume pv-1",
    ]
    handed = objects.store[("PersistentVolume", None, "pv-1")]
    assert handed["spec"]["persistentVolumeReclaimPolicy"] == "Delete"
    assert handed["spec"]["claimRef"] == {
        "apiVersion": "v1",
        "kind": "PersistentVolumeClaim",
        "namespace": "app-restored",
        "name": "data",
        "uid": "uid-target",
    }
    assert handed["metadata"]["labels"] == {"velero.io/dynamic-pv-restore": "app.data.abc"}
    assert ORIGINAL_RECLAIM_ANNOTATION not in handed["metadata"].get("annotations", {})


def test_a_hand_over_cut_short_keeps_the_policy_it_remembered() -> None:
    """A predecessor set Retain and remembered Delete, then died: the original is not lost."""
    cr = download_cr()
    pv = {
        "kind": "PersistentVolume",
        "metadata": {"name": "pv-1", "annotations": {ORIGINAL_RECLAIM_ANNOTATION: "Delete"}},
        "spec": {"persistentVolumeReclaimPolicy": "Retain"},
    }
    target = {"kind": "PersistentVolumeClaim", "metadata": {"namespace": "app-restored", "name": "data"}}
    objects = FakeObjects(pv, target)
    executor(objects).execute({}, cr, (BindRestoredVolume("pv-1", "app-restored", "data"),))
    assert objects.writes == ["patch PersistentVolume pv-1"]  # the claim and pod were already gone
    assert (
        objects.store[("PersistentVolume", None, "pv-1")]["spec"]["persistentVolumeReclaimPolicy"] == "Delete"
    )


def test_a_hand_over_is_not_repeated_once_the_volume_names_the_target() -> None:
    """A reconcile on a cache that does not show the hand-over yet decides it again: the volume,
    read fresh, already names the target claim, so nothing is written a second time."""
    cr = download_cr()
    pv = {
        "kind": "PersistentVolume",
        "metadata": {"name": "pv-1"},
        "spec": {"persistentVolumeReclaimPolicy": "Delete", "claimRef": {"name": cr.name}},
    }
    target = {
        "kind": "PersistentVolumeClaim",
        "metadata": {"namespace": "app-restored", "name": "data", "uid": "uid-t"},
    }
    objects = FakeObjects(pv, target)
    action = BindRestoredVolume("pv-1", "app-restored", "data")
    executor(objects).execute({}, cr, (action,))
    assert len(objects.writes) == 2
    executor(objects).execute({}, cr, (action,))
    assert len(objects.writes) == 2


def test_an_exposure_creates_only_what_the_cache_does_not_show_and_the_budget_before_the_pod() -> None:
    cr = upload_cr()
    plan = plan_exposure(observed(cr))
    objects = FakeObjects(owned("VolumeSnapshot", cr.name, cr.uid))
    executor(objects).execute({}, cr, (CreateExposure(plan),))
    assert objects.writes == [
        f"create VolumeSnapshotContent {cr.name}",
        f"create PodDisruptionBudget {EXPOSER_BUDGET}",
        f"create Pod {cr.name}",
        f"create PersistentVolumeClaim {cr.name}",
    ]
    objects.writes.clear()
    executor(objects).execute({}, cr, (CreateExposure(plan),))
    assert objects.writes == []  # all there: no request at all


class SlowCreates(FakeObjects):
    """Creates that take a while, as the API server's do under a burst."""

    def create(self, resource: Any, body: Obj, exist_ok: bool = False) -> Obj:
        time.sleep(0.02)
        return super().create(resource, body, exist_ok)


def test_a_burst_of_exposures_in_one_namespace_creates_its_shared_budget_once() -> None:
    """Each worker checked the cache before the first create was answered, and each sent one
    (test_api_writes counted up to four budget creates for eight DataUploads)."""
    objects, crs = SlowCreates(), [replace(upload_cr(), name=f"backup-{n}", uid=f"uid-{n}") for n in range(8)]
    shared = executor(objects)
    workers = [
        threading.Thread(target=shared.execute, args=({}, cr, (CreateExposure(plan_exposure(observed(cr))),)))
        for cr in crs
    ]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join()
    assert objects.writes.count(f"create PodDisruptionBudget {EXPOSER_BUDGET}") == 1
    assert objects.writes.count("create Pod backup-7") == 1


def test_the_claim_is_made_for_the_pod_and_goes_with_it() -> None:
    """The claim is created after its pod, owned by it (the uid the pod was created with), so the
    exposure's cleanup deletes the pod alone: the garbage collector deletes the claim after it."""
    cr = download_cr()
    objects = FakeObjects()
    executor(objects).execute({}, cr, (CreateExposure(plan_exposure(observed(cr))),))
    pod = objects.store[("Pod", "velero", cr.name)]
    claim = objects.store[("PersistentVolumeClaim", "velero", cr.name)]
    assert [(r["kind"], r["uid"]) for r in claim["metadata"]["ownerReferences"]] == [
        ("Pod", pod["metadata"]["uid"])
    ]
    objects.writes.clear()
    executor(objects).execute({}, cr, (DeleteExposure("done", snapshot=True),))
    assert objects.writes == [f"delete Pod {cr.name}"]
    earlier = owned("PersistentVolumeClaim", cr.name, cr.uid)  # an earlier version's: the CR's
    objects = FakeObjects(owned("Pod", cr.name, cr.uid), earlier)
    executor(objects).execute({}, cr, (DeleteExposure("done", snapshot=True),))
    assert objects.writes == [f"delete Pod {cr.name}", f"delete PersistentVolumeClaim {cr.name}"]


def test_a_budget_made_by_an_earlier_version_is_brought_up_to_date_not_replaced() -> None:
    """Without AlwaysAllow it would hold an unready exposer pod, and so a drain, while Barge is down.
    Patched in place: deleting it would leave every exposer pod of the namespace unprotected."""
    cr = upload_cr()
    plan = plan_exposure(observed(cr))
    earlier = owned("PodDisruptionBudget", EXPOSER_BUDGET, "", spec={"maxUnavailable": 0})
    objects = FakeObjects(earlier)
    executor(objects).execute({}, cr, (CreateExposure(plan),))
    assert f"patch PodDisruptionBudget {EXPOSER_BUDGET}" in objects.writes
    budget = objects.store[("PodDisruptionBudget", "velero", EXPOSER_BUDGET)]
    assert budget["spec"]["unhealthyPodEvictionPolicy"] == "AlwaysAllow"
    objects.writes.clear()
    executor(objects).execute({}, cr, (CreateExposure(plan),))
    assert objects.writes == []  # up to date: no more writes


def test_cleanup_deletes_only_this_crs_objects_once_and_leaves_the_content_to_the_snapshot_controller() -> (
    None
):
    cr = upload_cr()
    terminating = owned("Pod", cr.name, cr.uid)
    terminating["metadata"]["deletionTimestamp"] = "2026-03-01T12:00:00Z"
    objects = FakeObjects(
        terminating,  # already going: asking again adds nothing
        owned("PersistentVolumeClaim", cr.name, "uid-another-cr"),  # same name, not ours
        owned("VolumeSnapshot", cr.name, cr.uid),
        owned("VolumeSnapshotContent", cr.name, cr.uid, namespace=None),
    )
    executor(objects).execute({}, cr, (DeleteExposure("done", snapshot=True),))
    assert objects.writes == [f"delete VolumeSnapshot {cr.name}"]
    executor(objects).execute({}, cr, (DeleteExposure("done", snapshot=True, snapshot_content=True),))
    assert objects.writes == [f"delete VolumeSnapshot {cr.name}", f"delete VolumeSnapshotContent {cr.name}"]
    assert ("PersistentVolumeClaim", "velero", cr.name) in objects.store


def test_a_reexposure_keeps_the_clone_snapshot() -> None:
    cr = upload_cr()
    objects = FakeObjects(
        owned("Pod", cr.name, cr.uid),
        owned("PersistentVolumeClaim", cr.name, cr.uid),
        owned("PodDisruptionBudget", cr.name, cr.uid),  # an earlier version's own budget goes too
        owned("VolumeSnapshot", cr.name, cr.uid),
        owned("VolumeSnapshotContent", cr.name, cr.uid, namespace=None),
    )
    executor(objects).execute({}, cr, (DeleteExposure("node drained"),))
    assert objects.writes == [
        f"delete Pod {cr.name}",
        f"delete PodDisruptionBudget {cr.name}",
        f"delete PersistentVolumeClaim {cr.name}",
    ]


class RacedStatus:
    """A status write computed from a stale copy (phase New), refused with a 409, and retried on a
    fresh read that shows the phase already moved on (as a StatusWriter does)."""

    def update_status(self, kind: Any, namespace: str, name: str, mutate: Any, **_: Any) -> Obj:
        assert mutate({"phase": "New"}) is not None  # the first attempt: a 409 follows
        fresh = {"phase": "Accepted"}
        assert mutate(dict(fresh)) is None
        return {"metadata": {"name": name, "resourceVersion": "3"}, "status": fresh}


def test_a_phase_write_that_lost_its_race_counts_as_no_write() -> None:
    """The last attempt decides: the first attempt's 'wrote' logged a transition nobody made,
    counted it in the metrics, and (for a final phase) would let the CR go twice."""
    metrics, unused = CoordinatorMetrics(), None
    executor = Executor(
        objects=FakeObjects(), status=RacedStatus(), hub=unused, recorder=unused, metrics=metrics,
        clock=ManualClock(),
    )  # fmt: skip
    cr = upload_cr(phase=Phase.NEW)
    done = executor.execute({"metadata": {"resourceVersion": "1"}}, cr, (SetPhase(Phase.ACCEPTED),))
    assert done.requeue_after == timedelta(0)  # decide again, on the fresh copy
    written = {"kind": cr.kind, "phase": "Accepted"}
    assert not metrics.registry.get_sample_value("barge_coordinator_phase_transitions_total", written)
