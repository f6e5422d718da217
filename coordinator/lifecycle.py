"""Which snapshots of deleted Velero backups to forget: a pure decision over what was observed.

Velero creates no snapshot-info ConfigMap for a custom data mover, so nothing tells Barge which
snapshots a deleted backup leaves. Barge derives it instead: every snapshot is tagged with its
backup's name and UID, and a backup is deleted when neither the location holds its
``velero-backup.json`` nor the cluster a Backup of that name. The location is the truth Velero
itself keeps: backup deletion removes the folder ``backups/<name>/`` before the Backup object,
and backup sync recreates Backup objects from it. Requiring both to be absent keeps every
snapshot whose backup a new cluster has not synced yet, whose Backup was deleted from the cluster
only (sync brings it back), and whose backup is still running (its metadata is not written yet).

A backup is forgotten only after it has been seen deleted for ``grace``, and only its snapshots
that finished at least ``grace`` ago. When it was first seen deleted is recorded in the cluster
(``coordinator.sweeper``), so a new leader continues the same grace. Everything else is read
afresh at every sweep, so a decision repeated after a failover asks for nothing new: forgetting
an absent snapshot is a no-op.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime, timedelta

from barge.control.messages import BackupSnapshot, ForgetBackup


@dataclass(frozen=True, order=True)
class BackupRef:
    """A Velero backup as its snapshots' tags name it (the name as Velero's labels spell it)."""

    name: str
    uid: str


@dataclass(frozen=True)
class Observed:
    now: datetime
    grace: timedelta
    location_writable: bool  # Available and ReadWrite: Velero deletes nothing from other locations
    backups_in_cluster: frozenset[str]  # Backup objects' names, as labels spell them
    backups_in_location: frozenset[str]  # names with backups/<name>/velero-backup.json, likewise
    snapshots: tuple[BackupSnapshot, ...]  # every snapshot of the location tagged with a backup
    deleted_since: Mapping[BackupRef, datetime]  # the recorded grace starts of this location


@dataclass(frozen=True)
class StartGrace:
    """The backup is gone from the location and the cluster: its snapshots go after the grace."""

    backup: BackupRef
    since: datetime


@dataclass(frozen=True)
class EndGrace:
    """Nothing to wait for any more: the backup exists again, or none of its snapshots is left."""

    backup: BackupRef
    reason: str


@dataclass(frozen=True)
class Forget:
    """Forget these snapshots of a deleted backup (one entry per repository)."""

    backup: BackupRef
    repositories: tuple[ForgetBackup, ...]


Action = StartGrace | EndGrace | Forget


def decide(o: Observed) -> tuple[Action, ...]:
    by_backup: dict[BackupRef, list[BackupSnapshot]] = defaultdict(list)
    for snapshot in o.snapshots:
        by_backup[BackupRef(snapshot.backup_name, snapshot.backup_uid)].append(snapshot)
    actions: list[Action] = [
        EndGrace(ref, "none of its snapshots is left")
        for ref in sorted(set(o.deleted_since) - set(by_backup))
    ]
    if not o.location_writable:
        return tuple(actions)
    for ref in sorted(by_backup):
        actions.extend(_for_backup(o, ref, by_backup[ref]))
    return tuple(actions)


def _for_backup(o: Observed, ref: BackupRef, snapshots: list[BackupSnapshot]) -> list[Action]:
    since = o.deleted_since.get(ref)
    if ref.name in o.backups_in_location or ref.name in o.backups_in_cluster:
        where = "location" if ref.name in o.backups_in_location else "cluster"
        return [EndGrace(ref, f"the backup is in the {where} again")] if since else []
    if since is None:
        return [StartGrace(ref, o.now)]
    if o.now - since < o.grace:
        return []
    ripe = [s for s in snapshots if _finished_before(s, o.now - o.grace)]
    if not ripe:
        return []
    namespaces = sorted({s.source_namespace for s in ripe})
    return [
        Forget(
            ref,
            tuple(
                ForgetBackup(
                    ns,
                    ref.name,
                    ref.uid,
                    tuple(sorted(s.snapshot_id for s in ripe if s.source_namespace == ns)),
                )
                for ns in namespaces
            ),
        )
    ]


def _finished_before(snapshot: BackupSnapshot, moment: datetime) -> bool:
    """True when the snapshot finished before ``moment``; an unreadable time is never old enough."""
    try:
        finished = datetime.fromisoformat(snapshot.time)
    except ValueError:
        return False
    if finished.tzinfo is None or moment.tzinfo is None:
        return False
    return finished <= moment
