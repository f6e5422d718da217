"""``coordinator.world.observe``: what the coordinator sees of a DataUpload's source snapshot and of
its clone, from plain informer-cache dicts."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from datetime import datetime, timedelta
from typing import Any

from barge.control.naming import AGENT_RECONNECT_WINDOW_S, LABEL_OWNER_UID
from coordinator.config import CoordinatorConfig
from coordinator.model import (
    SOURCE_CONTENT_ANNOTATION,
    AssignmentView,
    ContentView,
    Phase,
    SnapshotState,
)
from coordinator.scheduler import Stage
from coordinator.world import Context, CrViews, agent_views, observe, work_items
from tests.coordinator_world import T0

Obj = Mapping[str, Any]
UPLOAD = {
    "kind": "DataUpload",
    "metadata": {"namespace": "velero", "name": "b1-x", "uid": "u1"},
    "spec": {
        "datamover": "barge",
        "snapshotType": "CSI",
        "sourceNamespace": "app",
        "backupStorageLocation": "default",
        "csiSnapshot": {"volumeSnapshot": "velero-data-abcde"},
    },
    "status": {"phase": "Accepted"},
}


class Caches:
    def __init__(self, *objects: Obj) -> None:
        self._objects = {
            (o["kind"], o["metadata"].get("namespace"), o["metadata"]["name"]): o for o in objects
        }

    def get(self, kind: str, namespace: str | None, name: str) -> Obj | None:
        return self._objects.get((kind, namespace, name))

    def items(self, kind: str) -> Iterable[Obj]:
        return [o for (k, _, _), o in self._objects.items() if k == kind]


class Hub:
    def __init__(self, released: frozenset[str] = frozenset()) -> None:
        self._released = released

    def assignment(self, assignment_id: str) -> AssignmentView | None:
        return None

    def released(self, assignment_id: str) -> bool:
        return assignment_id in self._released

    def connected(self, node: str) -> bool:
        return False

    def disconnected_since(self, node: str) -> datetime | None:
        return None

    def connected_since(self, node: str) -> datetime | None:
        return None


def source_snapshot(**metadata: Any) -> Obj:
    return {
        "kind": "VolumeSnapshot",
        "metadata": {"namespace": "app", "name": "velero-data-abcde", **metadata},
        "status": {"readyToUse": True, "boundVolumeSnapshotContentName": "snapcontent-1"},
    }


def source_content(policy: str = "Delete") -> Obj:
    return {
        "kind": "VolumeSnapshotContent",
        "metadata": {"name": "snapcontent-1"},
        "spec": {"deletionPolicy": policy, "driver": "d", "source": {"volumeHandle": "pv-1"}},
        "status": {"snapshotHandle": "h-1", "restoreSize": 2048},
    }


def clone_content(ready: bool = True) -> Obj:
    return {
        "kind": "VolumeSnapshotContent",
        "metadata": {
            "name": "b1-x",
            "labels": {LABEL_OWNER_UID: "u1"},
            "annotations": {SOURCE_CONTENT_ANNOTATION: "snapcontent-1"},
        },
        "spec": {"deletionPolicy": "Delete", "driver": "d", "source": {"snapshotHandle": "h-1"}},
        "status": {"snapshotHandle": "h-1", "restoreSize": 2048} if ready else {},
    }


def clone_snapshot(ready: bool = True) -> Obj:
    return {
        "kind": "VolumeSnapshot",
        "metadata": {"namespace": "velero", "name": "b1-x", "labels": {LABEL_OWNER_UID: "u1"}},
        "status": {"readyToUse": True, "boundVolumeSnapshotContentName": "b1-x"} if ready else {},
    }


def look(*objects: Obj) -> Any:
    context = Context(T0, CoordinatorConfig(), "c", ())
    return observe(UPLOAD, Caches(*objects), Hub(), context, admitted=True)


def test_before_exposure_the_source_and_its_content_are_seen() -> None:
    seen = look(source_snapshot(), source_content())
    assert seen.snapshot.state is SnapshotState.READY
    assert seen.source_content == ContentView("snapcontent-1", "h-1", "Delete")
    assert not seen.exposure.exists


def test_the_clone_says_what_it_holds_and_when_it_is_ready() -> None:
    seen = look(source_snapshot(), source_content(), clone_content(ready=False), clone_snapshot(ready=False))
    clone = seen.exposure
    assert (clone.snapshot_content, clone.snapshot_handle, clone.snapshot_driver) == (True, "h-1", "d")
    assert (clone.snapshot_ready, clone.restore_size, clone.source_content) == (False, 0, "snapcontent-1")
    ready = look(source_snapshot(), source_content(), clone_content(), clone_snapshot()).exposure
    assert (ready.snapshot_ready, ready.restore_size) == (True, 2048)


def test_after_the_source_snapshot_went_its_content_is_found_through_the_clone() -> None:
    """A release cut short between deleting the VolumeSnapshot and its content."""
    seen = look(source_content("Retain"), clone_content(), clone_snapshot())
    assert seen.snapshot.state is SnapshotState.ABSENT
    assert seen.source_content == ContentView("snapcontent-1", "h-1", "Retain")
    released = look(clone_content(), clone_snapshot())
    assert released.source_content is None


def test_a_terminating_source_snapshot_is_marked() -> None:
    seen = look(source_snapshot(deletionTimestamp="2026-03-01T12:00:00Z"), source_content())
    assert seen.snapshot.deleting


def upload(name: str, phase: str | None, version: str = "1", **metadata: Any) -> Obj:
    status = {"phase": phase} if phase else {}
    meta = {"namespace": "velero", "name": name, "uid": f"uid-{name}", "resourceVersion": version}
    return {**UPLOAD, "metadata": {**meta, **metadata}, "status": status}


def exposer_pod(name: str, node: str) -> Obj:
    labels = {LABEL_OWNER_UID: f"uid-{name}"}
    return {
        "kind": "Pod",
        "metadata": {"namespace": "velero", "name": name, "labels": labels},
        "spec": {"nodeName": node},
    }


def test_work_items_leave_out_final_deleted_and_let_go_crs_and_see_where_exposer_pods_run() -> None:
    crs = [
        upload("new", None),
        upload("let-go", "Prepared"),  # an older cache copy of a CR the hub let go
        upload("accepted", "Accepted"),
        upload("done", "Completed"),
        upload("failed", "Failed"),
        upload("going", "InProgress", deletionTimestamp="2026-03-01T12:00:00Z"),
    ]
    caches = Caches(
        exposer_pod("accepted", "node-a"),
        {**exposer_pod("new", "node-b"), "metadata": {"namespace": "velero", "name": "new"}},
    )
    hub = Hub(released=frozenset({"uid-let-go"}))
    items = work_items([("DataUpload", cr) for cr in crs], caches, hub, T0, CrViews())
    assert {(i.key.name, i.stage, i.node) for i in items} == {
        ("new", Stage.WAITING, ""),  # a pod of that name not labelled as its own is not its pod
        ("accepted", Stage.PREPARING, "node-a"),
    }


def test_a_cr_is_parsed_again_only_when_its_resource_version_changes() -> None:
    views = CrViews()
    first = views.view("DataUpload", upload("a", "Accepted", version="7"))
    assert views.view("DataUpload", upload("a", "Prepared", version="7")) is first  # same version
    changed = views.view("DataUpload", upload("a", "Prepared", version="8"))
    assert changed.phase is Phase.PREPARED
    views.keep_only(set())
    assert views.view("DataUpload", upload("a", "InProgress", version="8")).phase is Phase.IN_PROGRESS


def test_agents_a_new_leader_has_not_seen_get_until_the_reconnect_window_ends() -> None:
    node = {"kind": "Node", "metadata": {"name": "node-a"}, "spec": {}}
    (fresh,) = agent_views(Caches(node), Hub(), {}, leading_since=T0)
    assert fresh.reconnect_by == T0 + timedelta(seconds=AGENT_RECONNECT_WINDOW_S)
    assert not fresh.unusable(T0)
    assert fresh.unusable(T0 + timedelta(seconds=AGENT_RECONNECT_WINDOW_S))
    (unknown,) = agent_views(Caches(node), Hub(), {})  # no term start known: nothing to wait for
    assert unknown.reconnect_by is None
    assert unknown.unusable(T0)


def exposure_part(kind: str, uid: str, owner_pod: str = "") -> Obj:
    meta: dict[str, Any] = {"namespace": "velero", "name": "b1-x", "uid": uid}
    meta["labels"] = {LABEL_OWNER_UID: "u1"}
    if owner_pod:
        meta["ownerReferences"] = [{"apiVersion": "v1", "kind": "Pod", "name": "b1-x", "uid": owner_pod}]
    return {"kind": kind, "metadata": meta, "spec": {}, "status": {}}


def test_a_claim_whose_pod_is_gone_is_seen_terminating_until_the_garbage_collector_deletes_it() -> None:
    """A claim owned by a pod that is gone (or replaced) is the collector's: nothing may build a
    new exposure on it (it is about to be deleted), nor delete it a second time."""
    claim = exposure_part("PersistentVolumeClaim", "uid-claim", owner_pod="uid-pod-1")
    assert not look(claim, exposure_part("Pod", "uid-pod-1")).exposure.terminating
    assert look(claim).exposure.terminating
    assert look(claim, exposure_part("Pod", "uid-pod-2")).exposure.terminating
    earlier = exposure_part("PersistentVolumeClaim", "uid-claim")  # an earlier version's: the CR's
    assert not look(earlier).exposure.terminating
