from __future__ import annotations

from pathlib import Path

import pytest

from barge.errors import InvalidInput
from barge.storage.local import LocalDirectoryStore
from tests.storage_conformance import ObjectStoreConformance


class TestLocalDirectoryStore(ObjectStoreConformance):
    @pytest.fixture
    def store(self, tmp_path: Path) -> LocalDirectoryStore:
        return LocalDirectoryStore(tmp_path / "repo")


@pytest.mark.parametrize("key", ["", "/abs", "a/../b", "a//b", ".tmp/x", "./a"])
def test_keys_that_could_escape_or_collide_are_refused(tmp_path: Path, key: str) -> None:
    with pytest.raises(InvalidInput):
        LocalDirectoryStore(tmp_path).put(key, b"x")


def test_no_temporary_files_are_left_behind(tmp_path: Path) -> None:
    store = LocalDirectoryStore(tmp_path)
    store.put("a", b"1")
    with pytest.raises(Exception, match="already exists"):
        store.put("a", b"2")
    assert list((tmp_path / ".tmp").iterdir()) == []
