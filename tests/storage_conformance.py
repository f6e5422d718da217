"""The one conformance suite every ObjectStore backend passes (subclass it with a ``store`` fixture)."""

from __future__ import annotations

import os
import threading
from datetime import UTC, datetime, timedelta

import pytest

from barge.storage import ObjectExists, ObjectNotFound, ObjectStore


class ObjectStoreConformance:
    def test_put_then_get_round_trips(self, store: ObjectStore) -> None:
        payload = os.urandom(100_000)
        store.put("data/ab/abc", payload)
        assert store.get("data/ab/abc") == payload

    def test_empty_object(self, store: ObjectStore) -> None:
        store.put("empty", b"")
        assert store.get("empty") == b""
        assert store.stat("empty").size == 0

    def test_create_only_put_refuses_to_overwrite(self, store: ObjectStore) -> None:
        store.put("once", b"first")
        with pytest.raises(ObjectExists):
            store.put("once", b"second")
        assert store.get("once") == b"first"

    def test_overwrite_put_replaces(self, store: ObjectStore) -> None:
        store.put("lease", b"v1")
        store.put("lease", b"v2", overwrite=True)
        assert store.get("lease") == b"v2"

    def test_missing_object_is_object_not_found(self, store: ObjectStore) -> None:
        for call in (
            lambda: store.get("nope"),
            lambda: store.stat("nope"),
            lambda: store.get_range("nope", 0, 1),
        ):
            with pytest.raises(ObjectNotFound):
                call()

    def test_ranges_and_tails(self, store: ObjectStore) -> None:
        store.put("r", bytes(range(256)) * 4)
        assert store.get_range("r", 10, 5) == bytes(range(10, 15))
        assert store.get_range("r", -4, 4) == bytes(range(252, 256))
        assert store.get_range("r", -5000, 5000) == bytes(range(256)) * 4

    def test_stat_reports_size_and_a_store_side_time(self, store: ObjectStore) -> None:
        store.put("s", b"12345")
        info = store.stat("s")
        assert info.size == 5
        assert abs(info.modified - datetime.now(UTC)) < timedelta(minutes=5)

    def test_list_is_prefix_filtered_and_sorted(self, store: ObjectStore) -> None:
        for key in ("data/bb/b2", "data/aa/a1", "data/aa/a0", "index/i1", "dataset"):
            store.put(key, key.encode())
        assert [i.key for i in store.list("data/")] == ["data/aa/a0", "data/aa/a1", "data/bb/b2"]
        assert [i.key for i in store.list("data/aa/")] == ["data/aa/a0", "data/aa/a1"]
        assert [i.key for i in store.list("data")] == ["data/aa/a0", "data/aa/a1", "data/bb/b2", "dataset"]
        assert {i.key: i.size for i in store.list("index/")} == {"index/i1": 8}
        assert list(store.list("nothing-here/")) == []

    def test_folders_are_the_next_path_segments_that_hold_objects(self, store: ObjectStore) -> None:
        for key in ("plugins/barge/shop/config", "plugins/barge/erp/data/aa/p1", "plugins/readme", "top"):
            store.put(key, b"x")
        assert store.folders("plugins/barge/") == ("erp", "shop")
        assert store.folders("plugins/") == ("barge",)
        assert store.folders("") == ("plugins",)
        assert store.folders("nothing-here/") == ()
        store.delete("plugins/barge/shop/config")
        assert store.folders("plugins/barge/") == ("erp",)

    def test_delete_is_idempotent(self, store: ObjectStore) -> None:
        store.put("d", b"x")
        store.delete("d")
        store.delete("d")
        with pytest.raises(ObjectNotFound):
            store.get("d")
        assert [i.key for i in store.list("d")] == []

    def test_racing_create_only_writers_exactly_one_wins(self, store: ObjectStore) -> None:
        winners: list[int] = []
        barrier = threading.Barrier(4)

        def race(n: int) -> None:
            barrier.wait()
            try:
                store.put("contended", str(n).encode())
                winners.append(n)
            except ObjectExists:
                pass

        threads = [threading.Thread(target=race, args=(n,)) for n in range(4)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert len(winners) == 1
        assert store.get("contended") == str(winners[0]).encode()

    def test_large_object_round_trips(self, store: ObjectStore) -> None:
        payload = os.urandom(12 * 1024 * 1024 + 17)
        store.put("big", memoryview(payload))
        assert store.get("big") == payload
        assert store.stat("big").size == len(payload)
