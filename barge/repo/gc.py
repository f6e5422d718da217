"""Garbage collection that is safe while backups run, without any lock for writers.

Two phases, run by successive ``barge gc`` invocations (one collector at a time, by ``gc/lock``):

*Mark.* Compute the blobs every snapshot references. Packs with no live blob, and packs whose live
part is small (their live blobs are first copied into new packs), are *condemned*: listed in
``gc/pending`` with the store's time of that write, ``t_mark``. From then on new sessions neither
deduplicate against nor adopt condemned packs; the index still lists them, so readers keep working.

*Sweep.* Allowed once no live session began before ``t_mark`` (plus a clock-granularity margin):
every session that might have started depending on a condemned pack before it was condemned has
committed or died (leases expire). Re-check the references against the snapshots that exist now,
keep any condemned pack something still references, delete the rest, then write one consolidated
index that supersedes every old index object, and delete those.

Why it is safe: a blob can be referenced only by a snapshot whose writer saw it as usable. Writers
starting after ``t_mark`` never see condemned blobs as usable; writers starting before it are
waited for, and their snapshots exist before the re-check. A writer frozen past its lease refuses
to commit (``Session.ensure_valid``).
"""

from __future__ import annotations

import contextlib
import json
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import timedelta

from barge.errors import CorruptionDetected, NotFound, TemporaryError
from barge.repo.index import encode_indexes, index_key
from barge.repo.objects import read_bounded
from barge.repo.pack import BlobLocation, BlobType, pack_id_from_key, pack_key
from barge.repo.repository import Repository
from barge.repo.session import (
    DEFAULT_LEASE,
    PENDING_KEY,
    PendingMark,
    list_sessions,
    read_pending,
    store_now,
)
from barge.repo.sources import COMPLETE_KEY, SOURCES_PREFIX, parse_entry
from barge.storage import ObjectExists, ObjectNotFound

LOCK_KEY = "gc/lock"
CLOCK_MARGIN = timedelta(seconds=5)


@dataclass(frozen=True)
class GcPolicy:
    lease: timedelta = DEFAULT_LEASE
    repack_below_live_fraction: float = 0.5  # repack packs whose live bytes are below this share


@dataclass
class GcReport:
    phase: str = "idle"  # "mark", "sweep+mark", "waiting"
    condemned_packs: int = 0
    repacked_packs: int = 0
    deleted_packs: int = 0
    deleted_bytes: int = 0
    kept_packs: int = 0
    waiting_for_sessions: int = 0
    expired_sessions: int = 0
    source_entries_added: int = 0  # for manifests a Barge without source entries wrote
    source_entries_removed: int = 0  # naming manifests that no longer exist
    notes: list[str] = field(default_factory=list)


def referenced_blobs(repo: Repository) -> set[bytes]:
    """Every blob reachable from any snapshot (trees and data).

    Fails closed: a manifest or tree that cannot be read could reference anything, so garbage
    collection stops (CorruptionDetected) rather than count its data as garbage."""
    snapshots, damaged = repo.read_snapshots()
    if damaged:
        snapshot_id, problem = next(iter(damaged.items()))
        raise CorruptionDetected(
            f"{problem}; garbage collection cannot tell what that snapshot references and deletes "
            f"nothing while it exists: `barge forget {snapshot_id}` if it is beyond repair"
        )
    live: set[bytes] = set()
    for snapshot in snapshots.values():
        stack = [snapshot.tree] if snapshot.tree is not None else []
        while stack:
            tree_id = stack.pop()
            if tree_id in live:
                continue
            live.add(tree_id)
            for node in repo.read_tree(tree_id):
                if node.subtree is not None:
                    stack.append(node.subtree)
                live.update(b for b, _ in node.content if b is not None)
    return live


def _refuse_unreadable_indexes(problems: list[str]) -> None:
    """Packs listed only in an unreadable index object would look like garbage: stop instead."""
    if problems:
        raise CorruptionDetected(
            f"{problems[0]}; garbage collection deletes nothing while an index object cannot be "
            "read (remove it, and the next backup indexes its packs again from their headers)"
        )


@contextmanager
def _collector_lock(repo: Repository, lease: timedelta) -> Iterator[None]:
    """One collector at a time; a lock older than the lease belongs to a dead collector."""
    body = json.dumps({"id": uuid.uuid4().hex}).encode()
    try:
        repo.store.put(LOCK_KEY, body)
    except ObjectExists:
        held_since = repo.store.stat(LOCK_KEY).modified
        if store_now(repo.store) - held_since < lease:
            raise TemporaryError(f"another garbage collection holds {LOCK_KEY} since {held_since}") from None
        repo.store.put(LOCK_KEY, body, overwrite=True)
    try:
        yield
    finally:
        with contextlib.suppress(CorruptionDetected, ObjectNotFound):
            if read_bounded(repo.store, LOCK_KEY, len(body), LOCK_KEY) == body:
                repo.store.delete(LOCK_KEY)


def collect_garbage(
    repo: Repository, policy: GcPolicy | None = None, log: Callable[[str], None] = lambda _: None
) -> GcReport:
    policy = policy or GcPolicy()
    report = GcReport()
    with _collector_lock(repo, policy.lease):
        now = store_now(repo.store)
        live_sessions = []
        for session in list_sessions(repo.store):
            if now - session.renewed > policy.lease:
                repo.store.delete(session.key)
                report.expired_sessions += 1
            else:
                live_sessions.append(session)
        pending = _read_pending(repo, report, log)
        if pending is not None:
            blocking = [s for s in live_sessions if s.started <= pending.marked + CLOCK_MARGIN]
            if blocking:
                report.phase = "waiting"
                report.waiting_for_sessions = len(blocking)
                report.condemned_packs = len(pending.packs)
                waiting = f"waiting for {len(blocking)} older session(s) to end"
                log(f"{report.condemned_packs} packs condemned; {waiting}")
                return report
            _sweep(repo, set(pending.packs), report, log)
            report.phase = "sweep+mark"
        else:
            report.phase = "mark"
        _mark(repo, policy, report, log)
    return report


def _read_pending(repo: Repository, report: GcReport, log: Callable[[str], None]) -> PendingMark | None:
    """The previous mark; one that cannot be read is never swept on (nothing it names is
    deleted): the mark is made afresh, and a fresh mark waits for every older session."""
    try:
        return read_pending(repo.store)
    except CorruptionDetected as err:
        note = f"{err}: ignored, marking afresh"
        report.notes.append(note)
        log(note)
        return None


def _packs_in_index(repo: Repository) -> dict[bytes, dict[bytes, BlobLocation]]:
    packs: dict[bytes, dict[bytes, BlobLocation]] = {}
    for blob_id, location in repo.index.items():
        packs.setdefault(location.pack_id, {})[blob_id] = location
    return packs


def _mark(repo: Repository, policy: GcPolicy, report: GcReport, log: Callable[[str], None]) -> None:
    repo.load_index(cached=False)  # an index object damaged in storage must stop gc, cached or not
    _refuse_unreadable_indexes(repo.index_problems)
    live = referenced_blobs(repo)
    _reconcile_source_entries(repo, report, log)
    condemned: set[bytes] = set()
    to_repack: dict[bytes, list[bytes]] = {}
    for pack_id, blobs in _packs_in_index(repo).items():
        live_ids = [b for b in blobs if b in live]
        live_bytes = sum(blobs[b].stored_length for b in live_ids)
        total = sum(loc.stored_length for loc in blobs.values())
        if not live_ids:
            condemned.add(pack_id)
        elif live_bytes < total * policy.repack_below_live_fraction:
            to_repack[pack_id] = live_ids
    if to_repack:
        with repo.writer(avoid_packs=frozenset(to_repack)) as writer:
            for blob_id in (b for live_ids in to_repack.values() for b in live_ids):
                writer.add_blob(_blob_type(repo, blob_id), repo.read_blob(blob_id), blob_id)
        condemned.update(to_repack)
        report.repacked_packs = len(to_repack)
    condemned.update(_old_orphan_packs(repo, policy.lease))
    if condemned:
        doc = {"packs": sorted(p.hex() for p in condemned)}
        repo.store.put(PENDING_KEY, json.dumps(doc).encode(), overwrite=True)
        log(f"condemned {len(condemned)} packs ({len(to_repack)} after copying their live blobs)")
    else:
        repo.store.delete(PENDING_KEY)  # none, or one that could not be read: nothing is condemned
    report.condemned_packs = len(condemned)


def _reconcile_source_entries(repo: Repository, report: GcReport, log: Callable[[str], None]) -> None:
    """Bring the source entries in line with the manifests, then mark them complete, so a source
    without entries needs no full scan: entries naming a manifest that is gone are removed, and
    manifests without entries (written by an older Barge) get theirs.

    The entries are listed before the manifests: a backup writes its manifest before its entries,
    so an entry whose manifest the later listing lacks names a forgotten snapshot, never one being
    written. Other names under the prefix are left alone (``barge check`` reports them)."""
    listed = [entry for info in repo.store.list(SOURCES_PREFIX) if (entry := parse_entry(info.key))]
    manifests = set(repo.snapshot_ids())
    for entry in listed:
        if entry.snapshot_id not in manifests:
            repo.store.delete(entry.key)
            report.source_entries_removed += 1
    for snapshot_id in sorted(manifests - {entry.snapshot_id for entry in listed}):
        try:
            snapshot = repo.load_snapshot(snapshot_id)
        except (CorruptionDetected, NotFound):
            continue  # forgotten meanwhile, or damaged since referenced_blobs read it: never a parent
        repo.write_source_entries(snapshot_id, snapshot)
        report.source_entries_added += 1
    with contextlib.suppress(ObjectExists):
        repo.store.put(COMPLETE_KEY, b"")
    if report.source_entries_added or report.source_entries_removed:
        log(
            f"source entries: added for {report.source_entries_added} snapshots, "
            f"removed {report.source_entries_removed} naming forgotten ones"
        )


def _blob_type(repo: Repository, blob_id: bytes) -> BlobType:
    location = repo.index.get(blob_id)
    return location.blob_type if location else BlobType.DATA


def _old_orphan_packs(repo: Repository, lease: timedelta) -> set[bytes]:
    """Packs no index lists, older than a lease: left by writers that died (live ones index
    their packs within seconds). Condemning them still waits for older sessions to end."""
    now = store_now(repo.store)
    orphans = set()
    for info in repo.store.list("data/"):
        pack_id = pack_id_from_key(info.key)
        if pack_id is None:
            continue  # not a pack: never ours to delete
        if pack_id not in repo.index.packs and now - info.modified > lease:
            orphans.add(pack_id)
    return orphans


def _sweep(repo: Repository, condemned: set[bytes], report: GcReport, log: Callable[[str], None]) -> None:
    # Fix the set of index objects first: exactly these are consolidated and deleted, so index
    # objects written by concurrent writers meanwhile survive untouched.
    old_indexes = repo.index_objects()
    found = repo.read_index_objects(old_indexes)
    _refuse_unreadable_indexes(found.problems)
    packs = found.packs
    repo.load_index()
    live = referenced_blobs(repo)
    elsewhere = {b for pack_id, blobs in packs.items() if pack_id not in condemned for b in blobs}
    for pack_id in sorted(condemned):
        blobs = packs.get(pack_id)
        if blobs is None:
            try:
                blobs = repo.read_pack_header(pack_id)  # an orphan someone adopted after our listing
            except ObjectNotFound:
                blobs = {}
            except CorruptionDetected as err:  # cannot tell what it holds: keep it (fail closed)
                report.kept_packs += 1
                report.notes.append(f"kept {pack_id.hex()[:16]}: {err}")
                continue
        if any(b in live and b not in elsewhere for b in blobs):
            report.kept_packs += 1  # a session that began before the mark now depends on it
            packs[pack_id] = blobs
            continue
        key = pack_key(pack_id)
        with contextlib.suppress(ObjectNotFound):
            report.deleted_bytes += repo.store.stat(key).size
        repo.store.delete(key)
        packs.pop(pack_id, None)
        report.deleted_packs += 1
    superseded = [bytes.fromhex(info.key.removeprefix("index/")) for info in old_indexes]
    written = set()
    for index_id, sealed in encode_indexes(repo.keys, packs, supersedes=superseded):
        with contextlib.suppress(ObjectExists):
            repo.store.put(index_key(index_id), sealed)
        written.add(index_key(index_id))
    for info in old_indexes:
        if info.key not in written:
            repo.store.delete(info.key)
    repo.store.delete(PENDING_KEY)
    repo.load_index()
    log(f"deleted {report.deleted_packs} packs ({report.deleted_bytes:,} bytes); kept {report.kept_packs}")
