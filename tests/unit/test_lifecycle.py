"""coordinator.lifecycle.decide: which snapshots of deleted Velero backups are forgotten, and when."""

from __future__ import annotations

import dataclasses
from datetime import UTC, datetime, timedelta

from barge.control.messages import BackupSnapshot, ForgetBackup
from coordinator.lifecycle import BackupRef, EndGrace, Forget, Observed, StartGrace, decide

NOW = datetime(2026, 6, 1, 12, 0, tzinfo=UTC)
GRACE = timedelta(hours=1)
OLD = (NOW - timedelta(days=1)).isoformat()
NIGHTLY = BackupRef("nightly", "uid-1")


def snapshot(sid: str, ref: BackupRef = NIGHTLY, namespace: str = "shop", time: str = OLD) -> BackupSnapshot:
    return BackupSnapshot(namespace, sid * 64, ref.name, ref.uid, time)


def observed(**changes: object) -> Observed:
    base = Observed(
        now=NOW,
        grace=GRACE,
        location_writable=True,
        backups_in_cluster=frozenset(),
        backups_in_location=frozenset(),
        snapshots=(snapshot("a"), snapshot("b", namespace="erp")),
        deleted_since={},
    )
    return dataclasses.replace(base, **changes)  # type: ignore[arg-type]


def test_a_backup_still_in_the_location_is_kept_whatever_the_cluster_says() -> None:
    """A new cluster before backup sync, or a Backup deleted from the cluster only."""
    long_ago = {NIGHTLY: NOW - timedelta(days=30)}
    assert decide(observed(backups_in_location=frozenset({"nightly"}))) == ()
    assert decide(observed(backups_in_location=frozenset({"nightly"}), deleted_since=long_ago)) == (
        EndGrace(NIGHTLY, "the backup is in the location again"),
    )


def test_a_backup_still_in_the_cluster_is_kept() -> None:
    """A running backup: its metadata is not in the location yet."""
    assert decide(observed(backups_in_cluster=frozenset({"nightly"}))) == ()


def test_a_deleted_backup_starts_its_grace_first() -> None:
    assert decide(observed()) == (StartGrace(NIGHTLY, NOW),)


def test_nothing_is_forgotten_before_the_grace_ends() -> None:
    almost = {NIGHTLY: NOW - GRACE + timedelta(seconds=1)}
    assert decide(observed(deleted_since=almost)) == ()


def test_after_the_grace_every_snapshot_of_the_backup_is_forgotten_per_repository() -> None:
    assert decide(observed(deleted_since={NIGHTLY: NOW - GRACE})) == (
        Forget(
            NIGHTLY,
            (
                ForgetBackup("erp", "nightly", "uid-1", ("b" * 64,)),
                ForgetBackup("shop", "nightly", "uid-1", ("a" * 64,)),
            ),
        ),
    )


def test_snapshots_younger_than_the_grace_wait() -> None:
    young = (NOW - timedelta(minutes=5)).isoformat()
    snapshots = (snapshot("a"), snapshot("b", time=young), snapshot("c", time="not a time"))
    actions = decide(observed(snapshots=snapshots, deleted_since={NIGHTLY: NOW - GRACE}))
    assert actions == (Forget(NIGHTLY, (ForgetBackup("shop", "nightly", "uid-1", ("a" * 64,)),)),)


def test_only_the_deleted_backup_is_touched() -> None:
    other = BackupRef("weekly", "uid-2")
    snapshots = (snapshot("a"), snapshot("c", other))
    actions = decide(
        observed(
            snapshots=snapshots,
            backups_in_location=frozenset({"weekly"}),
            deleted_since={NIGHTLY: NOW - GRACE},
        )
    )
    assert actions == (Forget(NIGHTLY, (ForgetBackup("shop", "nightly", "uid-1", ("a" * 64,)),)),)


def test_a_grace_ends_once_nothing_is_left_so_deciding_again_asks_for_nothing() -> None:
    """Idempotent: after the forget, the same observation asks for no forget again."""
    done = observed(snapshots=(), deleted_since={NIGHTLY: NOW - GRACE})
    assert decide(done) == (EndGrace(NIGHTLY, "none of its snapshots is left"),)
    assert decide(observed(snapshots=())) == ()


def test_a_location_velero_would_not_delete_from_is_left_alone() -> None:
    """Read-only or unavailable: the grace neither starts nor ends in a forget."""
    assert decide(observed(location_writable=False)) == ()
    assert decide(observed(location_writable=False, deleted_since={NIGHTLY: NOW - GRACE})) == ()


def test_a_new_backup_with_the_same_name_keeps_the_old_ones_snapshots() -> None:
    """Compared by name: the conservative side (they go when that name is deleted again)."""
    assert decide(observed(backups_in_cluster=frozenset({"nightly"}), deleted_since={})) == ()
