"""The directory-descriptor walk: any depth with one descriptor, and a moved directory is noticed."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest

from barge.fs.walk import DirCursor, Subdir, TreeChanged, identity, walk_tree
from tests.fsbuild import remove_tree


def test_the_walk_visits_every_directory_once_and_leaves_each_after_its_children(tmp_path: Path) -> None:
    for rel in ("a/x/deep", "a/y", "b"):
        (tmp_path / "root" / rel).mkdir(parents=True)
    (tmp_path / "root" / "link").symlink_to(tmp_path / "root" / "a")
    cursor = DirCursor.open(os.fsencode(tmp_path / "root"))
    events: list[tuple[str, bytes]] = []

    def enter(rel: bytes) -> list[Subdir[bytes]]:
        events.append(("enter", rel))
        assert cursor.relpath() == rel
        names = sorted(os.fsencode(n) for n in os.listdir(cursor.fd))
        stats = {n: os.stat(n, dir_fd=cursor.fd, follow_symlinks=False) for n in names}
        return [Subdir(n, cursor.relpath(n)) for n, st in stats.items() if stat.S_ISDIR(st.st_mode)]

    def leave(rel: bytes, fd: int) -> None:
        events.append(("leave", rel))
        assert identity(os.fstat(fd)) == identity(os.stat(tmp_path / "root" / os.fsdecode(rel)))

    walk_tree(cursor, b"", enter, leave)
    cursor.close()
    assert events == [
        ("enter", b""), ("enter", b"a"), ("enter", b"a/x"), ("enter", b"a/x/deep"), ("leave", b"a/x/deep"),
        ("leave", b"a/x"), ("enter", b"a/y"), ("leave", b"a/y"), ("leave", b"a"), ("enter", b"b"),
        ("leave", b"b"), ("leave", b""),
    ]  # fmt: skip


def test_a_walk_of_any_depth_holds_a_bounded_number_of_descriptors(tmp_path: Path) -> None:
    deep = tmp_path / "chain"
    deep.mkdir()
    fd = os.open(deep, os.O_RDONLY | os.O_DIRECTORY)
    for _ in range(300):  # deeper than KEEP_OPEN
        os.mkdir(b"d", dir_fd=fd)
        below = os.open(b"d", os.O_RDONLY | os.O_DIRECTORY, dir_fd=fd)
        os.close(fd)
        fd = below
    os.close(fd)
    cursor = DirCursor.open(os.fsencode(deep))
    held: list[int] = []

    def enter(depth: int) -> list[Subdir[int]]:
        held.append(open_below(deep))
        return [Subdir(b"d", depth + 1)] if os.path.lexists(f"/proc/self/fd/{cursor.fd}/d") else []

    left: list[int] = []
    try:
        walk_tree(cursor, 0, enter, lambda depth, fd: left.append(depth))
    finally:
        cursor.close()
        remove_tree(deep)
    assert len(held) == 301
    assert left == list(range(300, -1, -1))
    assert max(held) <= DirCursor.KEEP_OPEN + 1  # the kept levels and the cursor
    assert open_below(tmp_path) == 0


def open_below(root: Path) -> int:
    """This process's descriptors on ``root`` or below it (a count of all of them also counted
    what other tests' leftover threads opened meanwhile, and flaked under ``make test-unit``)."""
    count = 0
    for name in os.listdir("/proc/self/fd"):
        try:
            target = os.readlink(f"/proc/self/fd/{name}")
        except FileNotFoundError:
            continue  # closed meanwhile (listdir's own)
        count += target == str(root) or target.startswith(f"{root}/")
    return count


def test_the_way_up_must_lead_where_the_walk_came_from(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(DirCursor, "KEEP_OPEN", 0)  # the way up is by '..' from the first level on
    (tmp_path / "a" / "b").mkdir(parents=True)
    (tmp_path / "elsewhere").mkdir()
    cursor = DirCursor.open(os.fsencode(tmp_path / "a"))
    cursor.down(b"b")
    (tmp_path / "a" / "b").rename(tmp_path / "elsewhere" / "b")  # '..' now leads elsewhere
    with pytest.raises(TreeChanged, match="b: moved while being read"):
        cursor.up()
    cursor.close()


def test_the_walk_never_goes_down_through_a_symlink(tmp_path: Path) -> None:
    (tmp_path / "a" / "real").mkdir(parents=True)
    (tmp_path / "a" / "b").symlink_to(tmp_path / "a" / "real")
    cursor = DirCursor.open(os.fsencode(tmp_path / "a"))
    with pytest.raises(OSError, match=r"Not a directory|Too many levels"):
        cursor.down(b"b")
    assert cursor.relpath() == b""
    cursor.close()
