"""Property: whatever is done to a repository's objects, every command ends in a correct result or
a clean error (exit 1, 2 or 3 with one line, no traceback), never a hang; and garbage collection
never deletes what a readable snapshot needs because some other object was unreadable.

Objects come from a real small repository (tests/repocraft.py). Stored bytes get bit flips,
truncation, junk and swaps; JSON documents (manifests, trees, the config, key objects, gc/pending,
sessions) get fields replaced by wrong types, huge numbers and deep nesting, and are sealed again
with the repository's keys where the format seals them, so the checks behind the authentication
are reached too. Examples are few and each is a handful of in-process commands: unit-tier speed.
"""

from __future__ import annotations

import json
import tempfile
from collections.abc import Callable
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from barge.cli.main import EXIT_DAMAGED, EXIT_FAILED, EXIT_OK, EXIT_USAGE
from barge.repo.session import PENDING_KEY
from barge.storage.local import LocalDirectoryStore
from devenv.trees import capture
from tests.repocraft import (
    CliResult,
    Template,
    cli,
    copy_repo,
    make_template,
    manifest_json,
    nested,
    open_repo,
    put_sealed_manifest,
    put_tree_snapshot,
    root_tree,
)

pytestmark = pytest.mark.timeout(300)

FUZZ = settings(
    max_examples=10,
    deadline=timedelta(seconds=20),  # a KDF or parser DoS takes minutes; a loaded CI box, seconds
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
    derandomize=True,
)
DEEP = "\x00deep\x00"  # stands for JSON nested 1,200 levels deep, spliced in after encoding

# The values that have broken readers before come first: out of range, wrong type, deep, huge.
NASTY = [-1, 2**32, 2**63, 2**64, 2**70, 10**30, 1.5, float("inf"), DEEP, "", "zz" * 32, "ab" * 32, [], {}]
leaves = st.one_of(
    st.sampled_from(NASTY),
    st.integers(-(2**80), 2**80),
    st.none() | st.booleans() | st.floats(allow_nan=True, allow_infinity=True),
    st.text(max_size=12),
)
json_values = st.recursive(
    leaves,
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=6), inner, max_size=3),
)


@pytest.fixture(scope="module")
def template(tmp_path_factory: pytest.TempPathFactory) -> Template:
    return make_template(tmp_path_factory.mktemp("template"))


def paths(document: object, prefix: tuple[object, ...] = ()) -> list[tuple[object, ...]]:
    """Every place in a JSON document a value sits (keys of objects, indexes of lists)."""
    found = [prefix] if prefix else []
    if isinstance(document, dict):
        for key, value in document.items():
            found += paths(value, (*prefix, key))
    elif isinstance(document, list):
        for number, value in enumerate(document):
            found += paths(value, (*prefix, number))
    return found


def mutate_json(data: st.DataObject, document: Any) -> bytes:
    """``document`` with one to three values replaced by drawn ones or removed, encoded. The
    depth is drawn first, so the whole document, its fields and their parts are all likely."""
    for _ in range(data.draw(st.integers(1, 3), label="changes")):
        by_depth: dict[int, list[tuple[object, ...]]] = {0: [()]}
        for where in paths(document):
            by_depth.setdefault(len(where), []).append(where)
        depth = data.draw(st.sampled_from(sorted(by_depth)), label="depth")
        where = data.draw(st.sampled_from(by_depth[depth]), label="path")
        if not where:
            document = data.draw(json_values, label="document")
            continue
        parent = document
        for step in where[:-1]:
            parent = parent[step]
        if isinstance(parent, dict) and data.draw(st.booleans(), label="remove"):
            del parent[where[-1]]
        else:
            parent[where[-1]] = data.draw(json_values, label="value")
    return json.dumps(document).replace(json.dumps(DEEP), nested(1200)).encode()


def assert_clean(result: CliResult, *allowed: int) -> None:
    """An allowed exit code, no traceback, and a failure says why: one ``barge:`` line (or, from
    check, its list of problems)."""
    assert result.code in (allowed or (EXIT_OK, EXIT_FAILED, EXIT_USAGE, EXIT_DAMAGED)), result
    assert "Traceback" not in result.err + result.out, result
    errors = [line for line in result.err.splitlines() if line.startswith("barge: ")]
    if result.code != EXIT_OK:
        assert len(errors) == 1 or "problem(s)" in result.out, result


def restores_exactly(template: Template, repo: Path, snapshot_id: str, target: Path) -> bool:
    """Restore: True when bit-exact, False after a clean error; anything else fails the test."""
    result = cli(repo, "restore", snapshot_id, str(target))
    assert_clean(result)
    if result.code == EXIT_OK:
        assert capture(target) == capture(template.source)
    return result.code == EXIT_OK


def gc_keeps_what_restores(template: Template, repo: Path, work: Path) -> None:
    """Two collections (mark, then sweep) leave the kept snapshot as restorable as it was."""
    before = restores_exactly(template, repo, template.snapshot_id, work / "before")
    assert_clean(cli(repo, "gc"))
    assert_clean(cli(repo, "gc"))
    assert restores_exactly(template, repo, template.snapshot_id, work / "after") == before


def in_copy(template: Template, check: Callable[[Path, Path], None]) -> None:
    with tempfile.TemporaryDirectory() as work:
        check(copy_repo(template, Path(work) / "repo"), Path(work))


# -- stored bytes ------------------------------------------------------------------------------------


def _flip(data: bytes, at: int) -> bytes:
    if not data:
        return b"\x01"
    at %= len(data) * 8
    return data[: at // 8] + bytes([data[at // 8] ^ (1 << at % 8)]) + data[at // 8 + 1 :]


damage = st.one_of(
    st.builds(lambda at: lambda data, other: _flip(data, at), st.integers(0, 2**20)),
    st.builds(lambda keep: lambda data, other: data[: keep % (len(data) + 1)], st.integers(0, 2**20)),
    st.builds(lambda junk: lambda data, other: data + junk, st.binary(min_size=1, max_size=64)),
    st.just(lambda data, other: other),
    st.just(lambda data, other: b""),
)


@FUZZ
@given(data=st.data(), change=damage)
def test_damaged_stored_objects_end_in_a_correct_result_or_a_clean_error(
    template: Template, data: st.DataObject, change: Callable[[bytes, bytes], bytes]
) -> None:
    objects = sorted(p.relative_to(template.path) for p in template.path.rglob("*") if p.is_file())
    objects = [p for p in objects if p.parts[0] != ".tmp"]
    target, other = data.draw(st.sampled_from(objects)), data.draw(st.sampled_from(objects))

    def check(repo: Path, work: Path) -> None:
        (repo / target).write_bytes(change((repo / target).read_bytes(), (repo / other).read_bytes()))
        assert_clean(cli(repo, "snapshots"))
        assert_clean(cli(repo, "check", "--read-data"))
        gc_keeps_what_restores(template, repo, work)

    in_copy(template, check)


# -- sealed JSON documents ---------------------------------------------------------------------------


@FUZZ
@given(data=st.data())
def test_crafted_manifests_and_trees_never_break_a_command_or_the_good_snapshot(
    template: Template, data: st.DataObject
) -> None:
    def check(repo_path: Path, work: Path) -> None:
        repo = open_repo(repo_path)
        if data.draw(st.booleans(), label="tree"):
            crafted = put_tree_snapshot(
                repo, template.snapshot_id, mutate_json(data, root_tree(repo, template.snapshot_id))
            )
        else:
            crafted = put_sealed_manifest(repo, mutate_json(data, manifest_json(repo, template.snapshot_id)))
        assert_clean(cli(repo_path, "snapshots"), EXIT_OK, EXIT_DAMAGED)
        assert_clean(cli(repo_path, "restore", crafted, str(work / "crafted")))
        assert_clean(cli(repo_path, "check"), EXIT_OK, EXIT_DAMAGED)
        assert restores_exactly(template, repo_path, template.snapshot_id, work / "good")
        gc_keeps_what_restores(template, repo_path, work)

    in_copy(template, check)


@FUZZ
@given(data=st.data())
def test_a_crafted_config_is_refused_or_harmless(template: Template, data: st.DataObject) -> None:
    magic, aad = b"BARGE-REPOSITORY v1\n", b"barge:config:v1"

    def check(repo_path: Path, work: Path) -> None:
        repo = open_repo(repo_path)
        document = json.loads(repo.keys.open((repo_path / "config").read_bytes()[len(magic) :], aad, "c"))
        (repo_path / "config").write_bytes(magic + repo.keys.seal(mutate_json(data, document), aad))
        assert_clean(cli(repo_path, "snapshots"), EXIT_OK, EXIT_DAMAGED)
        restores_exactly(template, repo_path, template.snapshot_id, work / "out")

    in_copy(template, check)


# -- plain JSON objects --------------------------------------------------------------------------------


@FUZZ
@given(data=st.data())
def test_a_crafted_key_object_never_locks_out_the_good_one(template: Template, data: st.DataObject) -> None:
    def check(repo_path: Path, work: Path) -> None:
        good = next((repo_path / "keys").iterdir())
        crafted = mutate_json(data, json.loads(good.read_bytes()))
        (repo_path / "keys" / ("0" * 32)).write_bytes(crafted)  # listed, and so tried, first
        assert restores_exactly(template, repo_path, template.snapshot_id, work / "out")
        assert_clean(cli(repo_path, "check"), EXIT_OK, EXIT_DAMAGED)

    in_copy(template, check)


@FUZZ
@given(data=st.data(), key=st.sampled_from([PENDING_KEY, "sessions/" + "5" * 32]))
def test_crafted_gc_pending_and_sessions_never_cost_live_data(
    template: Template, data: st.DataObject, key: str
) -> None:
    def check(repo_path: Path, work: Path) -> None:
        live = sorted(p.name for p in (repo_path / "data").rglob("*") if p.is_file())
        document: Any = (
            {"packs": live} if key == PENDING_KEY else {"host": "h", "pid": 1, "started_store": ""}
        )
        LocalDirectoryStore(repo_path).put(key, mutate_json(data, document), overwrite=True)
        backup = cli(repo_path, "backup", str(template.source))
        assert_clean(backup, EXIT_OK)
        gc_keeps_what_restores(template, repo_path, work)

    in_copy(template, check)
