"""Sweeps of a location for the leader's handling of deleted Velero backups.

The leader decides which snapshots of deleted backups to forget (``coordinator.lifecycle``); it
holds no repository credentials, so an agent, which does, lists what the location holds and
forgets what the leader names. The agent checks again before forgetting: it never forgets a
snapshot whose backup's ``velero-backup.json`` is in the location, nor one whose tags name
another backup, whatever the leader asked. Forgetting removes only the snapshot's manifest
(``Repository.forget_snapshot``); garbage collection reclaims its data later.
"""

from __future__ import annotations

import threading
from typing import Protocol

import structlog

from agent.repositories import Location
from barge.control.messages import BackupSnapshot, ForgetBackup, Sweep, SweepResult
from barge.errors import BargeError, CorruptionDetected, InvalidInput, NotFound
from barge.repo.repository import Repository
from barge.storage import ObjectStore
from barge.velero.backups import (
    BACKUP_NAME_LABEL,
    BACKUP_UID_LABEL,
    BACKUPS_FOLDER,
    backups_in_location,
    label_value,
)
from barge.velero.bsl import REPOSITORY_ROOT

log = structlog.get_logger("barge.agent")


class LocationOpener(Protocol):
    def location(self, namespace: str, bsl_name: str) -> Location:
        """The BackupStorageLocation ``namespace/bsl_name``, opened with its credentials."""


class ManifestCache:
    """What sweeps read from snapshot manifests, by repository and snapshot ID. A manifest never
    changes (its ID is the hash of its sealed bytes), so each is read once per agent rather than at
    every sweep; entries of snapshots no longer listed are dropped, so memory follows the snapshots."""

    def __init__(self) -> None:
        self._entries: dict[tuple[str, str, str], BackupSnapshot | None] = {}
        self._lock = threading.Lock()  # sweeps of different locations run at once

    def backup_snapshot(
        self, repo: Repository, where: tuple[str, str], snapshot_id: str
    ) -> BackupSnapshot | None:
        """The snapshot as a sweep reports it; None when it names no Velero backup."""
        key = (*where, snapshot_id)
        with self._lock:
            if key in self._entries:
                return self._entries[key]
        snapshot = repo.load_snapshot(snapshot_id)
        name, uid = snapshot.tags.get(BACKUP_NAME_LABEL), snapshot.tags.get(BACKUP_UID_LABEL, "")
        entry = BackupSnapshot(where[1], snapshot_id, name, uid, snapshot.time) if name else None
        with self._lock:
            self._entries[key] = entry
        return entry

    def keep_only(self, location: str, listed: set[tuple[str, str, str]]) -> None:
        with self._lock:
            for key in [k for k in self._entries if k[0] == location and k not in listed]:
                del self._entries[key]


def run_sweep(sweep: Sweep, locations: LocationOpener, cache: ManifestCache | None = None) -> SweepResult:
    """Forget what ``sweep`` names (where still allowed), then list the location; never raises for
    what the location or the repositories hold: a failure is the result's message."""
    with structlog.contextvars.bound_contextvars(location=sweep.backup_storage_location):
        try:
            location = locations.location(sweep.velero_namespace, sweep.backup_storage_location)
            return _sweep(sweep, location, cache or ManifestCache())
        except BargeError as err:
            log.warning("sweep failed", error=str(err))
            return SweepResult(sweep.sweep_id, message=f"sweep of {sweep.backup_storage_location}: {err}")


def _sweep(sweep: Sweep, location: Location, cache: ManifestCache) -> SweepResult:
    present = frozenset(
        label_value(name) for name in backups_in_location(i.key for i in location.store.list(BACKUPS_FOLDER))
    )
    forgotten: list[str] = []
    kept: list[str] = []
    for item in sweep.forget:
        if item.backup_name in present:
            log.warning(
                "not forgetting: the backup is in the location", backup=item.backup_name, uid=item.backup_uid
            )
            kept.extend(item.snapshot_ids)
            continue
        repo = location.repository(item.source_namespace)
        if repo is not None:
            forgotten.extend(s for s in item.snapshot_ids if _forget(repo, s, item))
    name = f"{sweep.velero_namespace}/{sweep.backup_storage_location}"
    snapshots, repositories = _backup_snapshots(location, name, cache)
    return SweepResult(
        sweep.sweep_id,
        backups_in_location=tuple(sorted(present)),
        snapshots=tuple(snapshots),
        forgotten=tuple(forgotten),
        kept=tuple(kept),
        repositories=tuple(repositories),
    )


def _forget(repo: Repository, snapshot_id: str, item: ForgetBackup) -> bool:
    """Forget one snapshot of ``item``'s backup; False when it is already gone or is not that
    backup's (a damaged manifest is never forgotten here: ``barge check`` reports it)."""
    try:
        tags = repo.load_snapshot(snapshot_id).tags
    except (NotFound, InvalidInput, CorruptionDetected) as err:
        log.info("not forgetting", snapshot=snapshot_id[:16], reason=str(err))
        return False
    if tags.get(BACKUP_NAME_LABEL) != item.backup_name or tags.get(BACKUP_UID_LABEL) != item.backup_uid:
        log.warning("not forgetting: the snapshot belongs to another backup", snapshot=snapshot_id[:16])
        return False
    repo.forget_snapshot(snapshot_id)
    log.info(
        "snapshot of a deleted backup forgotten",
        snapshot=snapshot_id,
        namespace=item.source_namespace,
        backup=item.backup_name,
        uid=item.backup_uid,
    )
    return True


def _backup_snapshots(
    location: Location, name: str, cache: ManifestCache
) -> tuple[list[BackupSnapshot], list[str]]:
    """Every snapshot in the location's repositories that names the Velero backup it belongs to,
    and the source namespaces that have a repository there."""
    found = []
    repositories = []
    listed: set[tuple[str, str, str]] = set()
    for namespace in repository_namespaces(location.store):
        repo = location.repository(namespace)
        if repo is None:
            continue
        repositories.append(namespace)
        for snapshot_id in repo.snapshot_ids():
            listed.add((name, namespace, snapshot_id))
            try:
                entry = cache.backup_snapshot(repo, (name, namespace), snapshot_id)
            except CorruptionDetected as err:
                log.warning("unreadable snapshot manifest skipped", snapshot=snapshot_id[:16], error=str(err))
                continue
            if entry is not None:
                found.append(entry)
    cache.keep_only(name, listed)
    return found, repositories


def repository_namespaces(store: ObjectStore) -> tuple[str, ...]:
    """The source namespaces with a folder under ``plugins/barge/`` (a delimiter listing: the
    repositories' packs are not listed); one without a repository config is skipped when opened."""
    return store.folders(f"{REPOSITORY_ROOT}/")
