"""The executor's snapshot actions against an in-memory API: the order of the writes that hand the
storage snapshot from Velero's source objects to Barge's clone, and what it refuses to touch."""

from __future__ import annotations

import copy
from typing import Any, cast

import pytest

from barge.control.naming import LABEL_OWNER_UID
from barge.kube.resources import KubeObjects, Resource
from coordinator.executor import Executor
from coordinator.model import CrView, DeleteSourceSnapshot, ReleaseSourceSnapshot
from tests import fakecluster
from tests.coordinator_world import upload_cr

Obj = dict[str, Any]
RELEASE = ReleaseSourceSnapshot("app", "velero-data-abc", "snapcontent-1", "handle-1", "backup-1-abcde")


class FakeObjects(fakecluster.FakeObjects):
    """The shared fake, stricter where these tests look: a patch must carry the resourceVersion it
    was computed from, its write names the spec it set, and deleting a Delete-policy content shows
    the storage snapshot going with it."""

    def patch(
        self, resource: Resource, namespace: str | None, name: str, patch: Obj, subresource: str = ""
    ) -> Obj:
        assert (
            patch["metadata"]["resourceVersion"]
            == self.store[(resource.kind, namespace, name)]["metadata"]["resourceVersion"]
        )
        patched = super().patch(resource, namespace, name, patch, subresource)
        self.writes[-1] += f" {patch['spec']}"
        return patched

    def delete(self, resource: Resource, namespace: str | None, name: str, uid: str | None = None) -> bool:
        obj = self.store.get((resource.kind, namespace, name))
        if not super().delete(resource, namespace, name, uid):
            return False
        assert obj is not None
        if resource.kind == "VolumeSnapshotContent" and obj["spec"].get("deletionPolicy") == "Delete":
            self.writes.insert(-1, f"storage snapshot {obj['status']['snapshotHandle']} deleted")
        return True


def content(name: str, policy: str, handle: str = "handle-1", spec_only: bool = False) -> Obj:
    return {
        "kind": "VolumeSnapshotContent",
        "metadata": {"name": name, "uid": f"uid-{name}", "resourceVersion": "7", "labels": {}},
        "spec": {"deletionPolicy": policy, "source": {"snapshotHandle": handle} if spec_only else {}},
        "status": {"snapshotHandle": handle},
    }


def source_snapshot(bound: str = "snapcontent-1") -> Obj:
    return {
        "kind": "VolumeSnapshot",
        "metadata": {"namespace": "app", "name": "velero-data-abc", "uid": "uid-vs"},
        "status": {"boundVolumeSnapshotContentName": bound},
    }


def clone(handle: str = "handle-1", owner: str = "uid-upload-1") -> Obj:
    made = content("backup-1-abcde", "Delete", handle, spec_only=True)
    made["metadata"]["labels"] = {LABEL_OWNER_UID: owner}
    return made


def run(objects: FakeObjects, *actions: Any) -> Any:
    executor = Executor(
        objects=cast(KubeObjects, objects),
        status=cast(Any, None),
        hub=cast(Any, None),
        recorder=cast(Any, None),
        metrics=cast(Any, None),
        clock=cast(Any, None),
    )
    cr: CrView = upload_cr()
    return executor.execute({}, cr, tuple(actions))


def test_release_retains_the_source_content_before_deleting_anything() -> None:
    objects = FakeObjects(source_snapshot(), content("snapcontent-1", "Delete"), clone())
    assert run(objects, RELEASE).requeue_after is None
    assert objects.writes == [
        "patch VolumeSnapshotContent snapcontent-1 {'deletionPolicy': 'Retain'}",
        "delete VolumeSnapshot velero-data-abc",
        "delete VolumeSnapshotContent snapcontent-1",
    ]
    assert list(objects.store) == [("VolumeSnapshotContent", None, "backup-1-abcde")]  # only the clone


def test_release_finishes_what_a_predecessor_started() -> None:
    """Retained and the snapshot deleted, then the coordinator died: only the content is left."""
    objects = FakeObjects(content("snapcontent-1", "Retain"), clone())
    run(objects, RELEASE)
    assert objects.writes == ["delete VolumeSnapshotContent snapcontent-1"]
    run(objects, RELEASE)  # and once more: nothing left to do
    assert objects.writes == ["delete VolumeSnapshotContent snapcontent-1"]


@pytest.mark.parametrize(
    "objects",
    [
        FakeObjects(source_snapshot(), content("snapcontent-1", "Delete")),  # no clone
        FakeObjects(source_snapshot(), content("snapcontent-1", "Delete"), clone("handle-2")),
        FakeObjects(source_snapshot(), content("snapcontent-1", "Delete", "handle-2"), clone()),
        FakeObjects(source_snapshot(), content("snapcontent-1", "Delete"), clone(owner="someone-else")),
    ],
    ids=["no-clone", "clone-holds-another-snapshot", "source-is-another-snapshot", "not-our-clone"],
)
def test_release_touches_nothing_unless_the_clone_holds_the_sources_snapshot(objects: FakeObjects) -> None:
    before = copy.deepcopy(objects.store)
    assert run(objects, RELEASE).requeue_after is not None  # re-decided later from fresh state
    assert objects.writes == []
    assert objects.store == before


def test_release_leaves_a_snapshot_bound_to_another_content() -> None:
    objects = FakeObjects(source_snapshot(bound="snapcontent-9"), content("snapcontent-1", "Delete"), clone())
    run(objects, RELEASE)
    assert ("VolumeSnapshot", "app", "velero-data-abc") in objects.store
    assert objects.writes[0].startswith("patch VolumeSnapshotContent snapcontent-1")


def test_delete_source_snapshot_is_idempotent() -> None:
    objects = FakeObjects(source_snapshot())
    action = DeleteSourceSnapshot("app", "velero-data-abc")
    run(objects, action, action)
    assert objects.writes == ["delete VolumeSnapshot velero-data-abc"]


def test_a_release_run_again_before_the_objects_are_gone_deletes_nothing_twice() -> None:
    """The source objects were asked to go and wait on their finalizers; a reconcile that comes
    back meanwhile (its cache not showing the deletion yet) reads them terminating and asks nothing."""
    going = {"deletionTimestamp": "2026-11-30T10:00:00Z"}
    snapshot, source = source_snapshot(), content("snapcontent-1", "Retain")
    snapshot["metadata"].update(going)
    source["metadata"].update(going)
    objects = FakeObjects(snapshot, source, clone())
    assert run(objects, RELEASE).requeue_after is None
    assert objects.writes == []
