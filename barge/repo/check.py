"""Verifying a repository: structure always, and the stored bytes of a share of its packs.

Problems are collected, not raised, so one run reports all the damage an operator must know about.
A check is safe beside backups and garbage collection: a pack that vanishes during the check is
damage only if the index still lists it afterwards and garbage collection has not condemned it.
"""

from __future__ import annotations

import hashlib
import random
from collections.abc import Callable
from dataclasses import dataclass, field

from barge.errors import CorruptionDetected
from barge.repo.crypto import KeyObject
from barge.repo.objects import MAX_KEY_OBJECT, parse_hex_id, read_bounded
from barge.repo.pack import BlobLocation, BlobType, open_blob, pack_id_from_key, pack_key, parse_pack_header
from barge.repo.repository import Repository, index_object_id, key_object_name
from barge.repo.session import read_pending
from barge.repo.snapshot import Snapshot
from barge.repo.sources import SOURCES_PREFIX, Entry, entry_keys, is_sources_object, parse_entry
from barge.storage import ObjectNotFound


@dataclass
class CheckReport:
    snapshots: int = 0
    trees: int = 0
    packs: int = 0
    blobs_verified: int = 0
    problems: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)  # worth knowing, harmless: not damage

    @property
    def ok(self) -> bool:
        return not self.problems


def check_repository(
    repo: Repository,
    *,
    read_data: float = 0.0,
    sample_start: float | None = None,
    log: Callable[[str], None] = lambda _: None,
) -> CheckReport:
    """``read_data``: the share of packs read in full (0: none, 1 or True: all). The share is a
    window of pack IDs starting at ``sample_start`` (random by default), so successive sampled
    checks read different packs and, in time, all of them."""
    report = CheckReport()
    repo.load_index(cached=False)  # every index object read again: damage must not hide behind a cache
    report.problems.extend(repo.index_problems)
    log(f"index: {len(repo.index)} blobs in {len(repo.index.packs)} packs")
    _check_names_and_keys(repo, report)
    start = random.random() if sample_start is None else sample_start  # noqa: S311 (a sample, not a secret)
    sample = PackSample(float(read_data), start)
    _check_packs(repo, report, sample, log)
    # Entries listed before the manifests: a backup writes its manifest before its entries, so an
    # entry whose manifest the later listing lacks was forgotten, not about to be written.
    entries = [entry for info in repo.store.list(SOURCES_PREFIX) if (entry := parse_entry(info.key))]
    snapshots, damaged = repo.read_snapshots()
    _check_snapshots(repo, report, snapshots, damaged)
    _check_source_entries(repo, report, entries, snapshots, damaged)
    return report


@dataclass(frozen=True)
class PackSample:
    """The packs whose bytes a check reads: those whose ID, as a fraction of the ID space, falls in
    ``[start, start + share)`` (wrapping around). Pack IDs are hashes, so the window is a uniform
    sample of the packs and of their bytes."""

    share: float
    start: float

    def __contains__(self, pack_id: bytes) -> bool:
        if self.share >= 1:
            return True
        if self.share <= 0:
            return False
        position = int.from_bytes(pack_id[:8], "big") / 2**64
        return (position - self.start) % 1.0 < self.share


def _check_names_and_keys(repo: Repository, report: CheckReport) -> None:
    """Objects the format does not define (someone else wrote them) and malformed key objects."""
    for prefix, valid in _NAMES.items():
        for info in repo.store.list(prefix):
            if not valid(info.key):
                report.problems.append(f"unexpected object {info.key} (not part of the repository format)")
            elif prefix == "keys/":
                try:
                    KeyObject.parse(
                        read_bounded(repo.store, info.key, MAX_KEY_OBJECT, info.key, info.size), info.key
                    )
                except CorruptionDetected as err:
                    report.problems.append(str(err))
                except ObjectNotFound:
                    continue


_NAMES: dict[str, Callable[[str], bool]] = {
    "keys/": key_object_name,
    "index/": lambda key: index_object_id(key) is not None,
    "snapshots/": lambda key: parse_hex_id(key.removeprefix("snapshots/")) is not None,
    SOURCES_PREFIX: is_sources_object,
    "data/": lambda key: pack_id_from_key(key) is not None,
}


def _check_packs(
    repo: Repository, report: CheckReport, sample: PackSample, log: Callable[[str], None]
) -> None:
    stored = {info.key: info.size for info in repo.store.list("data/")}
    by_pack: dict[bytes, dict[bytes, BlobLocation]] = {}
    for blob_id, location in repo.index.items():
        by_pack.setdefault(location.pack_id, {})[blob_id] = location
    missing: list[bytes] = []
    for number, pack_id in enumerate(sorted(by_pack), start=1):
        report.packs += 1
        key = pack_key(pack_id)
        if key not in stored:
            missing.append(pack_id)
            continue
        try:
            if pack_id in sample:
                _verify_pack_bytes(repo, pack_id, stored[key], report)
            else:
                header = repo.read_pack_header(pack_id)
                for blob_id, location in by_pack[pack_id].items():
                    if header.get(blob_id) != location:
                        report.problems.append(
                            f"pack {pack_id.hex()[:16]}: blob {blob_id.hex()[:16]} disagrees with the index"
                        )
        except ObjectNotFound:
            missing.append(pack_id)
        except CorruptionDetected as err:
            report.problems.append(str(err))
        if number % 100 == 0:
            log(f"checked {number}/{len(by_pack)} packs")
    for pack_id in _still_expected(repo, missing):
        report.problems.append(f"pack {pack_id.hex()} is in the index but missing from storage")


def _still_expected(repo: Repository, missing: list[bytes]) -> list[bytes]:
    """The missing packs a concurrent garbage collection does not explain. Its sweep deletes only
    packs ``gc/pending`` condemns, and removes ``gc/pending`` only after an index without them is
    written: so read ``gc/pending`` first, then the index again."""
    if not missing:
        return []
    try:
        pending = read_pending(repo.store)
    except CorruptionDetected:
        pending = None  # check reports the damaged object as unexpected content elsewhere
    condemned = pending.packs if pending else frozenset()
    repo.load_index()
    return [p for p in missing if p not in condemned and p in repo.index.packs]


def _verify_pack_bytes(repo: Repository, pack_id: bytes, size: int, report: CheckReport) -> None:
    data = repo.store.get(pack_key(pack_id))
    if len(data) != size or hashlib.sha256(data).digest() != pack_id:
        report.problems.append(f"pack {pack_id.hex()} content does not match its name (damaged)")
        return
    for blob_id, location in parse_pack_header(repo.keys, pack_id, len(data), data).items():
        sealed = data[location.offset : location.offset + location.stored_length]
        open_blob(repo.keys, blob_id, location, sealed)
        report.blobs_verified += 1


def _check_snapshots(
    repo: Repository, report: CheckReport, snapshots: dict[str, Snapshot], damaged: dict[str, str]
) -> None:
    seen_trees: set[bytes] = set()
    report.snapshots = len(snapshots) + len(damaged)
    report.problems.extend(damaged.values())
    for snapshot_id, snapshot in snapshots.items():
        if snapshot.tree is not None:
            _check_tree(repo, snapshot.tree, snapshot_id, seen_trees, report)


def _check_tree(
    repo: Repository, root: bytes, snapshot_id: str, seen: set[bytes], report: CheckReport
) -> None:
    stack = [root]
    while stack:
        tree_id = stack.pop()
        if tree_id in seen:
            continue
        seen.add(tree_id)
        report.trees += 1
        location = repo.index.get(tree_id)
        if location is None or location.blob_type != BlobType.TREE:
            report.problems.append(f"snapshot {snapshot_id[:16]}: tree {tree_id.hex()[:16]} is missing")
            continue
        try:
            nodes = repo.read_tree(tree_id)
        except CorruptionDetected as err:
            report.problems.append(f"snapshot {snapshot_id[:16]}: {err}")
            continue
        for node in nodes:
            if node.subtree is not None:
                stack.append(node.subtree)
            for blob_id, _ in node.content:
                if blob_id is not None and blob_id not in repo.index:
                    missing = blob_id.hex()[:16]
                    report.problems.append(
                        f"snapshot {snapshot_id[:16]}: {node.name!r} references missing data {missing}"
                    )


def _check_source_entries(
    repo: Repository,
    report: CheckReport,
    entries: list[Entry],
    snapshots: dict[str, Snapshot],
    damaged: dict[str, str],
) -> None:
    """An entry its manifest would not get is a problem: Barge never writes one, so someone crafted
    it (lookups ignore it). An entry whose manifest is gone is only a note: a Barge without source
    entries forgetting the snapshot, or a forget of a damaged manifest, leaves exactly that; lookups
    skip it and the next garbage collection removes it."""
    expected = {key for sid, snapshot in snapshots.items() for key in entry_keys(repo.keys, sid, snapshot)}
    gone: dict[str, int] = {}
    for entry in entries:
        if entry.key in expected or entry.snapshot_id in damaged:
            continue
        if entry.snapshot_id in snapshots:
            report.problems.append(
                f"source entry {entry.key} does not match the manifest of snapshot "
                f"{entry.snapshot_id[:16]} (not written by Barge: remove it)"
            )
        else:
            gone[entry.snapshot_id] = gone.get(entry.snapshot_id, 0) + 1
    for snapshot_id, count in gone.items():
        report.notes.append(
            f"snapshot {snapshot_id[:16]} no longer exists but {count} source "
            f"entr{'ies' if count > 1 else 'y'} still name it (forgotten by an older Barge?): "
            "lookups skip it, `barge gc` removes it"
        )
