"""Velero backups as Barge sees them: the labels that name a backup, and what a location holds.

Velero labels every DataUpload with its backup's name and UID; Barge copies both into the tags of
the snapshot it writes, so a snapshot always says which backup it belongs to. A backup exists in
a location while ``<prefix>/backups/<name>/velero-backup.json`` does: Velero writes it before the
data movement ends (``persistBackup``), backup sync recreates Backup objects from it, and backup
deletion removes the folder only after everything else of the backup is gone
(``pkg/controller/backup_deletion_controller.go``). Pure.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable

BACKUP_NAME_LABEL = "velero.io/backup-name"
BACKUP_UID_LABEL = "velero.io/backup-uid"
BACKUPS_FOLDER = "backups/"
BACKUP_METADATA = "velero-backup.json"
_LABEL_MAX = 63  # validation.DNS1035LabelMaxLength


def label_value(name: str) -> str:
    """What Velero puts in a label for ``name`` (``pkg/label.GetValidName``): names longer than 63
    characters are cut to 57 plus the first 6 hex digits of their SHA-256, so a long backup name is
    compared with a snapshot's tag only through this."""
    if len(name) <= _LABEL_MAX:
        return name
    return name[: _LABEL_MAX - 6] + hashlib.sha256(name.encode()).hexdigest()[:6]


def backups_in_location(keys: Iterable[str]) -> frozenset[str]:
    """The backup names whose metadata is among ``keys`` (relative to the location's prefix)."""
    names = set()
    for key in keys:
        folder, _, rest = key.removeprefix(BACKUPS_FOLDER).partition("/")
        if key.startswith(BACKUPS_FOLDER) and folder and rest == BACKUP_METADATA:
            names.add(folder)
    return frozenset(names)
