"""``world.read_state`` is complete: any change to an exposure or source object that ``observe`` or
``work_items`` sees changes the object's read state too, so skipping events that leave the read
state unchanged (``routing.Changes``) never hides a change from a decision.

The check is exhaustive over real-shaped objects: every field is changed and removed in turn, and a
few fields that appear later in an object's life (a deletionTimestamp, a snapshot error) are added.
"""

from __future__ import annotations

import copy
from collections.abc import Iterator, Mapping
from typing import Any

import pytest

from barge.control.naming import EXPOSER_BUDGET, LABEL_OWNER_KIND, LABEL_OWNER_NAME, LABEL_OWNER_UID
from coordinator.config import CoordinatorConfig
from coordinator.model import SOURCE_CONTENT_ANNOTATION
from coordinator.world import Context, CrViews, observe, read_state, work_items
from tests.coordinator_world import T0
from tests.unit.test_coordinator_world import Caches, Hub

NS = "velero"
Obj = dict[str, Any]


def owned(kind: str, name: str, uid: str, **metadata: Any) -> Obj:
    labels = {LABEL_OWNER_UID: uid, LABEL_OWNER_KIND: kind, LABEL_OWNER_NAME: name}
    return {"namespace": NS, "name": name, "uid": f"{name}-own", "labels": labels, **metadata}


UPLOAD: Obj = {
    "kind": "DataUpload",
    "metadata": {"namespace": NS, "name": "b1-up", "uid": "u1", "resourceVersion": "7"},
    "spec": {
        "datamover": "barge",
        "snapshotType": "CSI",
        "sourceNamespace": "app",
        "sourcePVC": "data",
        "backupStorageLocation": "default",
        "csiSnapshot": {"volumeSnapshot": "velero-data-abcde", "storageClass": "standard"},
    },
    "status": {"phase": "Accepted"},
}
DOWNLOAD: Obj = {
    "kind": "DataDownload",
    "metadata": {"namespace": NS, "name": "r1-down", "uid": "d1", "resourceVersion": "8"},
    "spec": {
        "datamover": "barge",
        "backupStorageLocation": "default",
        "snapshotID": "abc",
        "sourceNamespace": "app",
        "targetVolume": {"pvc": "data", "namespace": "app-restored"},
    },
    "status": {"phase": "Accepted"},
}


def pod(cr: Obj) -> Obj:
    meta = cr["metadata"]
    return {
        "kind": "Pod",
        "metadata": {**owned(cr["kind"], meta["name"], meta["uid"]), "resourceVersion": "3"},
        "spec": {"nodeName": "node-a", "containers": [{"name": "hold", "image": "barge"}]},
        "status": {
            "phase": "Running",
            "conditions": [{"type": "Ready", "status": "True", "lastProbeTime": None}],
            "podIP": "10.0.0.5",
        },
    }


def claim(cr: Obj, volume: str) -> Obj:
    meta = cr["metadata"]
    owner = [{"kind": "Pod", "name": meta["name"], "uid": f"{meta['name']}-own"}]
    return {
        "kind": "PersistentVolumeClaim",
        "metadata": {**owned(cr["kind"], meta["name"], meta["uid"]), "ownerReferences": owner},
        "spec": {
            "storageClassName": "standard",
            "volumeMode": "Filesystem",
            "accessModes": ["ReadWriteOnce"],
            "resources": {"requests": {"storage": "1Gi"}},
            "volumeName": volume,
        },
        "status": {"phase": "Bound", "capacity": {"storage": "1Gi"}},
    }


def volume(name: str, claim_ns: str, claim_name: str) -> Obj:
    return {
        "kind": "PersistentVolume",
        "metadata": {"name": name, "uid": f"{name}-uid", "resourceVersion": "9"},
        "spec": {
            "claimRef": {"namespace": claim_ns, "name": claim_name, "uid": "c-uid"},
            "persistentVolumeReclaimPolicy": "Delete",
            "capacity": {"storage": "1Gi"},
        },
        "status": {"phase": "Bound"},
    }


def world() -> list[Obj]:
    """An upload exposed (clone snapshot, claim, volume, pod) and a download exposed, with the
    upload's source snapshot, content and claim, the download's target claim and their volumes."""
    up, down = UPLOAD["metadata"]["name"], DOWNLOAD["metadata"]["name"]
    return [
        {"kind": "BackupStorageLocation", "metadata": {"namespace": NS, "name": "default"}},
        {"kind": "StorageClass", "metadata": {"name": "standard"}, "volumeBindingMode": "Immediate"},
        {
            "kind": "VolumeSnapshot",
            "metadata": {"namespace": "app", "name": "velero-data-abcde", "uid": "vs-uid"},
            "spec": {"source": {"persistentVolumeClaimName": "data"}},
            "status": {
                "readyToUse": True,
                "boundVolumeSnapshotContentName": "snapcontent-1",
                "restoreSize": "1Gi",
            },
        },
        {
            "kind": "VolumeSnapshotContent",
            "metadata": {"name": "snapcontent-1", "uid": "vsc-uid"},
            "spec": {
                "deletionPolicy": "Delete",
                "driver": "d",
                "source": {"volumeHandle": "pv-src"},
                "volumeSnapshotRef": {"namespace": "app", "name": "velero-data-abcde"},
            },
            "status": {"snapshotHandle": "h-1", "restoreSize": 2048, "readyToUse": True},
        },
        {
            "kind": "VolumeSnapshotContent",
            "metadata": {
                **owned("DataUpload", up, "u1"),
                "annotations": {SOURCE_CONTENT_ANNOTATION: "snapcontent-1"},
            },
            "spec": {
                "deletionPolicy": "Delete",
                "driver": "d",
                "source": {"snapshotHandle": "h-1"},
                "volumeSnapshotRef": {"namespace": NS, "name": up},
            },
            "status": {"snapshotHandle": "h-1", "restoreSize": 2048, "readyToUse": True},
        },
        {
            "kind": "VolumeSnapshot",
            "metadata": owned("DataUpload", up, "u1"),
            "status": {"readyToUse": True, "boundVolumeSnapshotContentName": up},
        },
        claim(UPLOAD, "pv-up"),
        volume("pv-up", NS, up),
        pod(UPLOAD),
        {
            "kind": "PersistentVolumeClaim",
            "metadata": {"namespace": "app", "name": "data", "uid": "src-uid"},
            "spec": {"storageClassName": "standard", "resources": {"requests": {"storage": "1Gi"}}},
        },
        claim(DOWNLOAD, "pv-down"),
        volume("pv-down", NS, down),
        pod(DOWNLOAD),
        {
            "kind": "PersistentVolumeClaim",
            "metadata": {
                "namespace": "app-restored",
                "name": "data",
                "uid": "target-uid",
                "annotations": {"volume.kubernetes.io/selected-node": "node-a"},
            },
            "spec": {"storageClassName": "standard", "resources": {"requests": {"storage": "1Gi"}}},
        },
        {
            "kind": "PodDisruptionBudget",
            "metadata": {"namespace": NS, "name": EXPOSER_BUDGET, "uid": "pdb"},
            "status": {"currentHealthy": 2},
        },
    ]


EXPOSURE_KINDS = (
    "Pod",
    "PodDisruptionBudget",
    "PersistentVolumeClaim",
    "PersistentVolume",
    "VolumeSnapshot",
    "VolumeSnapshotContent",
)
# Fields objects gain later in their life; each is added where it is missing.
LATER_FIELDS = (
    ("metadata", "deletionTimestamp"),
    ("metadata", "labels", "extra"),
    ("metadata", "annotations", "volume.kubernetes.io/selected-node"),
    ("metadata", "annotations", SOURCE_CONTENT_ANNOTATION),
    ("status", "error", "message"),
    ("status", "reason"),
    ("status", "message"),
    ("spec", "volumeName"),
    ("spec", "nodeName"),
    ("spec", "claimRef", "name"),
    ("status", "readyToUse"),
    ("status", "boundVolumeSnapshotContentName"),
)


def seen(objects: list[Obj]) -> object:
    """Everything the coordinator's decisions are made from, for both CRs."""
    caches, hub = Caches(*objects), Hub()
    context = Context(T0, CoordinatorConfig(), "c", ())
    crs = [("DataUpload", UPLOAD), ("DataDownload", DOWNLOAD)]
    return (
        [observe(cr, caches, hub, context, admitted=True) for _, cr in crs],
        work_items(crs, caches, hub, T0, CrViews()),
    )


def leaves(obj: Any, path: tuple[Any, ...] = ()) -> Iterator[tuple[Any, ...]]:
    """Every path to a value and to each dict key (removing a key is a change too)."""
    if isinstance(obj, Mapping):
        for key, value in obj.items():
            yield (*path, key)
            yield from leaves(value, (*path, key))
    elif isinstance(obj, list):
        for i, value in enumerate(obj):
            yield from leaves(value, (*path, i))


def changed_value(value: Any) -> Any:
    if isinstance(value, bool):
        return not value
    if isinstance(value, int):
        return value + 1
    if isinstance(value, str):
        return value + "-changed" if value else "something"
    if isinstance(value, list):
        return [*value, "extra"]
    if value is None:
        return "something"
    return {}


# Where an object is in the caches: a rename is another object (a deletion and an addition).
IDENTITY = {("kind",), ("metadata",), ("metadata", "name"), ("metadata", "namespace")}


def mutations(obj: Obj) -> Iterator[tuple[str, Obj]]:
    for path in leaves(obj):
        if path in IDENTITY:
            continue
        parent = _at(obj, path[:-1])
        for how in ("change", "remove"):
            mutated = copy.deepcopy(obj)
            target = _at(mutated, path[:-1])
            if how == "change":
                target[path[-1]] = changed_value(parent[path[-1]])
            elif isinstance(target, dict):
                del target[path[-1]]
            else:
                target.pop(path[-1])
            yield f"{how} {'.'.join(map(str, path))}", mutated
    for path in LATER_FIELDS:
        mutated = copy.deepcopy(obj)
        target = mutated
        for part in path[:-1]:
            target = target.setdefault(part, {}) if isinstance(target, dict) else {}
        if isinstance(target, dict) and path[-1] not in target:
            target[path[-1]] = "2026-12-01T00:00:00Z" if path[-1] == "deletionTimestamp" else "x"
            yield f"add {'.'.join(path)}", mutated


def _at(obj: Any, path: tuple[Any, ...]) -> Any:
    for part in path:
        obj = obj[part]
    return obj


@pytest.mark.unit
@pytest.mark.parametrize("kind", EXPOSURE_KINDS)
def test_every_change_observe_sees_changes_the_read_state(kind: str) -> None:
    objects = world()
    before = seen(objects)
    visible = invisible = 0
    for i, obj in enumerate(objects):
        if obj["kind"] != kind:
            continue
        for what, mutated in mutations(obj):
            after = seen([*objects[:i], mutated, *objects[i + 1 :]])
            if after != before:
                visible += 1
                assert read_state(kind, mutated) != read_state(kind, obj), (
                    f"{kind} {obj['metadata']['name']}: {what} changes what observe sees, not its read state"
                )
            elif read_state(kind, mutated) == read_state(kind, obj):
                invisible += 1
    # Of a budget only its existence is read, and additions and deletions always count.
    exercised = visible > 0 or kind == "PodDisruptionBudget"
    assert exercised, f"no change to a {kind} was seen: the world does not exercise it"
    assert invisible > 0, f"every change to a {kind} wakes its CR: nothing is filtered"


@pytest.mark.unit
def test_the_noise_of_a_real_cluster_leaves_the_read_state_alone() -> None:
    objects = {(o["kind"], o["metadata"]["name"]): o for o in world()}
    noise = [
        ("PersistentVolume", "pv-up", ("status", "phase"), "Released"),
        ("Pod", "b1-up", ("status", "podIP"), "10.0.0.6"),
        ("Pod", "b1-up", ("status", "conditions"), []),
        ("PersistentVolumeClaim", "b1-up", ("status", "phase"), "Lost"),
        ("VolumeSnapshotContent", "snapcontent-1", ("status", "readyToUse"), False),
        ("PodDisruptionBudget", EXPOSER_BUDGET, ("status", "currentHealthy"), 1),
    ]
    for kind, name, (section, field), value in noise:
        obj = objects[(kind, name)]
        changed = copy.deepcopy(obj)
        changed[section][field] = value
        changed["metadata"]["resourceVersion"] = "99"
        assert read_state(kind, changed) == read_state(kind, obj), (kind, name, field)
