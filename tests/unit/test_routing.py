"""Events reach only the CRs they concern: the work per event does not grow with the number of CRs."""

from __future__ import annotations

from typing import Any

from coordinator.routing import Changes, References, keys_for_event, references_of
from coordinator.scheduler import ItemKey

NS = "velero"


def upload(name: str, snapshot: str = "vs-1", pvc: str = "data", app: str = "shop") -> dict[str, Any]:
    return {
        "metadata": {"name": name, "namespace": NS, "uid": f"uid-{name}"},
        "spec": {
            "backupStorageLocation": "default",
            "sourceNamespace": app,
            "sourcePVC": pvc,
            "csiSnapshot": {"volumeSnapshot": snapshot},
        },
    }


def download(name: str, target: str = "data", app: str = "shop-restored") -> dict[str, Any]:
    return {
        "metadata": {"name": name, "namespace": NS, "uid": f"uid-{name}"},
        "spec": {"backupStorageLocation": "default", "targetVolume": {"pvc": target, "namespace": app}},
    }


def index(*crs: tuple[str, dict[str, Any]]) -> References:
    refs = References()
    for kind, cr in crs:
        refs.update(ItemKey(kind, NS, cr["metadata"]["name"]), cr)
    return refs


def test_a_data_upload_names_its_snapshot_claim_and_location() -> None:
    assert references_of("DataUpload", upload("a")) == {
        ("BackupStorageLocation", NS, "default"),
        ("VolumeSnapshot", "shop", "vs-1"),
        ("PersistentVolumeClaim", "shop", "data"),
    }
    assert ("PersistentVolumeClaim", "shop-restored", "data") in references_of("DataDownload", download("d"))


def test_snapshot_events_wake_only_the_upload_that_names_them() -> None:
    refs = index(*[("DataUpload", upload(f"u{i}", snapshot=f"vs-{i}", pvc=f"p{i}")) for i in range(1000)])
    snapshot = {"metadata": {"namespace": "shop", "name": "vs-7"}}
    assert keys_for_event("VolumeSnapshot", snapshot, refs, NS) == {ItemKey("DataUpload", NS, "u7")}
    content = {
        "metadata": {"name": "snapcontent-x"},
        "spec": {"volumeSnapshotRef": {"namespace": "shop", "name": "vs-9"}},
    }
    assert keys_for_event("VolumeSnapshotContent", content, refs, NS) == {ItemKey("DataUpload", NS, "u9")}
    unrelated = {"metadata": {"namespace": "other", "name": "vs-7"}}
    assert keys_for_event("VolumeSnapshot", unrelated, refs, NS) == set()


def test_volume_events_wake_the_claims_owner_and_the_exposure_named_after_the_cr() -> None:
    refs = index(("DataDownload", download("d1", target="db")))
    bound_to_target = {
        "metadata": {"name": "pv-1"},
        "spec": {"claimRef": {"namespace": "shop-restored", "name": "db"}},
    }
    assert keys_for_event("PersistentVolume", bound_to_target, refs, NS) == {
        ItemKey("DataDownload", NS, "d1")
    }
    bound_to_exposure = {"metadata": {"name": "pv-2"}, "spec": {"claimRef": {"namespace": NS, "name": "d1"}}}
    assert ItemKey("DataDownload", NS, "d1") in keys_for_event(
        "PersistentVolume", bound_to_exposure, refs, NS
    )


def test_owned_objects_wake_their_owner() -> None:
    pod = {"metadata": {"namespace": NS, "name": "u1", "labels": {
        "barge.io/owner-kind": "DataUpload", "barge.io/owner-name": "u1"}}}  # fmt: skip
    assert keys_for_event("Pod", pod, References(), NS) == {ItemKey("DataUpload", NS, "u1")}


def test_the_index_follows_changes_and_deletions() -> None:
    refs = References()
    key = ItemKey("DataUpload", NS, "u1")
    refs.update(key, upload("u1", snapshot="old"))
    refs.update(key, upload("u1", snapshot="new"))
    assert refs.naming("VolumeSnapshot", "shop", "old") == set()
    assert refs.naming("VolumeSnapshot", "shop", "new") == {key}
    assert refs.by_uid("uid-u1") == key
    refs.update(key, None)
    assert refs.naming("VolumeSnapshot", "shop", "new") == set()
    assert refs.by_uid("uid-u1") is None


def test_a_node_heartbeat_is_not_a_change_but_a_cordon_is() -> None:
    changes = Changes()
    node = {"metadata": {"name": "n1", "labels": {"zone": "a"}}, "spec": {}, "status": {"conditions": [1]}}
    assert changes.changed("Node", "ADDED", node)
    heartbeat = {**node, "status": {"conditions": [2]}}
    assert not changes.changed("Node", "MODIFIED", heartbeat)
    assert changes.changed("Node", "MODIFIED", {**node, "spec": {"unschedulable": True}})
    assert changes.changed("Node", "DELETED", node)


def test_a_location_validation_is_not_a_change_but_a_spec_edit_is() -> None:
    changes = Changes()
    bsl = {
        "metadata": {"namespace": NS, "name": "default", "generation": 1},
        "status": {"phase": "Available"},
    }
    assert changes.changed("BackupStorageLocation", "ADDED", bsl)
    validated = {**bsl, "status": {"phase": "Available", "lastValidationTime": "now"}}
    assert not changes.changed("BackupStorageLocation", "MODIFIED", validated)
    edited = {**bsl, "metadata": {**bsl["metadata"], "generation": 2}}
    assert changes.changed("BackupStorageLocation", "MODIFIED", edited)


def test_an_exposure_volume_wakes_only_the_cr_of_that_name_that_exists() -> None:
    refs = index(("DataUpload", upload("u1")))
    volume = {"metadata": {"name": "pv-9"}, "spec": {"claimRef": {"namespace": NS, "name": "u1"}}}
    assert keys_for_event("PersistentVolume", volume, refs, NS) == {ItemKey("DataUpload", NS, "u1")}


def test_a_volume_status_phase_is_not_a_change_but_its_claim_and_its_deletion_are() -> None:
    changes = Changes()
    volume = {"metadata": {"name": "pv-1"}, "spec": {"claimRef": {"namespace": NS, "name": "u1"}}}
    assert changes.changed("PersistentVolume", "ADDED", {**volume, "status": {"phase": "Pending"}})
    assert not changes.changed("PersistentVolume", "MODIFIED", {**volume, "status": {"phase": "Bound"}})
    handed = {**volume, "spec": {"claimRef": {"namespace": "shop", "name": "data"}}}
    assert changes.changed("PersistentVolume", "MODIFIED", handed)
    assert changes.changed("PersistentVolume", "DELETED", handed)


def test_a_forgotten_object_counts_as_changed_at_its_next_event() -> None:
    """While no CR named it, its changes went unrecorded: the next event cannot be compared."""
    changes = Changes()
    snapshot = {"metadata": {"namespace": "shop", "name": "vs-1"}, "status": {"readyToUse": False}}
    assert changes.changed("VolumeSnapshot", "ADDED", snapshot)
    changes.forget("VolumeSnapshot", snapshot)
    assert changes.changed("VolumeSnapshot", "MODIFIED", snapshot)
    assert not changes.changed("VolumeSnapshot", "MODIFIED", snapshot)
    changes.forget("VolumeSnapshot", snapshot)
    assert changes.changed("VolumeSnapshot", "DELETED", snapshot)
