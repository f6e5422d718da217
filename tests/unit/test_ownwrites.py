"""The coordinator's own writes over a lagging informer cache (``coordinator.ownwrites``): a read
sees the write's answer while the cache shows what the write replaced, and the cache again as soon
as it catches up or moves on; never for longer than the time-to-live."""

from __future__ import annotations

from typing import Any

from barge.clock import ManualClock
from coordinator.ownwrites import OwnWrites

Obj = dict[str, Any]


def obj(version: str, uid: str = "uid-1", **meta: Any) -> Obj:
    meta = {"namespace": "velero", "name": "pod-1", "uid": uid, "resourceVersion": version, **meta}
    return {"metadata": meta}


def test_a_created_object_is_seen_until_the_cache_shows_it() -> None:
    own = OwnWrites(ManualClock())
    own.created("Pod", obj("5"))
    assert own.overlay("Pod", "velero", "pod-1", None) == obj("5")
    assert own.overlay("Pod", "velero", "pod-1", obj("6")) == obj("6")  # caught up: the cache again
    assert own.overlay("Pod", "velero", "pod-1", None) is None  # and forgotten: gone is gone
    assert len(own) == 0


def test_an_update_is_seen_only_while_the_cache_shows_a_version_it_replaced() -> None:
    own = OwnWrites(ManualClock())
    own.replaced("DataUpload", obj("9"), ("7", "8"))
    assert own.overlay("DataUpload", "velero", "pod-1", obj("7")) == obj("9")
    assert own.overlay("DataUpload", "velero", "pod-1", obj("8")) == obj("9")
    assert own.overlay("DataUpload", "velero", "pod-1", obj("10")) == obj("10")  # someone wrote after us
    assert own.overlay("DataUpload", "velero", "pod-1", obj("8")) == obj("8")  # forgotten once moved on


def test_a_write_that_changed_nothing_is_not_kept() -> None:
    own = OwnWrites(ManualClock())
    own.replaced("DataUpload", obj("7"), ("7", None))
    assert len(own) == 0


def test_a_deleted_object_the_cache_still_shows_is_seen_going() -> None:
    own = OwnWrites(ManualClock())
    own.deleted("Pod", "velero", "pod-1", "uid-1")
    seen = own.overlay("Pod", "velero", "pod-1", obj("5"))
    assert seen is not None
    assert seen["metadata"]["deletionTimestamp"]
    # another object of the same name is not the one deleted
    assert own.overlay("Pod", "velero", "pod-1", obj("6", uid="uid-2")) == obj("6", uid="uid-2")


def test_a_deletion_the_cache_shows_itself_ends_the_entry() -> None:
    own = OwnWrites(ManualClock())
    own.deleted("VolumeSnapshot", "velero", "pod-1", None)
    going = obj("6", deletionTimestamp="2026-11-30T10:00:00Z")
    assert own.overlay("VolumeSnapshot", "velero", "pod-1", going) == going
    assert len(own) == 0


def test_entries_expire_so_a_missed_event_is_never_hidden_for_long() -> None:
    clock = ManualClock()
    own = OwnWrites(clock)
    own.created("Pod", obj("5"))
    clock.advance(31)
    assert own.overlay("Pod", "velero", "pod-1", None) is None
    own.created("Pod", obj("5"))
    clock.advance(31)
    own.deleted("Pod", "velero", "other", None)  # any later write purges what expired
    assert len(own) == 1


def test_writes_in_a_row_are_seen_over_a_cache_behind_all_of_them() -> None:
    """Accepted, then Prepared, before the cache showed either: the cache's copy from before the
    first write is still older than the second write's answer."""
    own = OwnWrites(ManualClock())
    own.replaced("DataUpload", obj("8"), ("7",))
    own.replaced("DataUpload", obj("9"), ("8",))
    assert own.overlay("DataUpload", "velero", "pod-1", obj("7")) == obj("9")
    assert own.overlay("DataUpload", "velero", "pod-1", obj("8")) == obj("9")
    assert own.overlay("DataUpload", "velero", "pod-1", obj("9")) == obj("9")
    assert len(own) == 0
