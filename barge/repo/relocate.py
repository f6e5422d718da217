"""Moving a whole repository to another place in object storage (``barge repo move``).

Why: Barge once kept repositories at ``<prefix>/barge/<namespace>``, a top-level folder Velero's
store validation rejects; they now live under ``<prefix>/plugins/barge/<namespace>``. A repository
is position-independent (every object is named relative to its root), so moving it is a copy of its
objects followed by the removal of the originals.

Crash safety: ``config`` is what makes a location a repository, so it is copied *last* and removed
from the source *first*. An interrupted move leaves either the source intact (target not yet a
repository) or the target complete (source no longer a repository); running the move again
finishes it, skipping objects already copied with the right content (both holding the same
``config`` is a move interrupted between copying and removing it).
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass

from barge.errors import InvalidInput
from barge.storage import ObjectExists, ObjectNotFound, ObjectStore

_CONFIG = "config"


@dataclass(frozen=True)
class MoveReport:
    objects: int
    bytes: int
    already_there: int


def _is_repository(store: ObjectStore) -> bool:
    try:
        store.stat(_CONFIG)
    except ObjectNotFound:
        return False
    return True


def _copy(source: ObjectStore, target: ObjectStore, key: str) -> tuple[int, bool]:
    """(bytes, already there): create-only, and an existing target object must be identical."""
    data = source.get(key)
    try:
        target.put(key, data)
    except ObjectExists:
        if hashlib.sha256(target.get(key)).digest() != hashlib.sha256(data).digest():
            raise InvalidInput(
                f"{target.describe()}/{key} exists with other content: the target holds another "
                "repository's objects; choose an empty location"
            ) from None
        return len(data), True
    return len(data), False


def move_repository(source: ObjectStore, target: ObjectStore) -> MoveReport:
    """Copy every object of the repository at ``source`` to ``target``, then delete the originals."""
    source_is_repo, target_is_repo = _is_repository(source), _is_repository(target)
    if not source_is_repo and not target_is_repo:
        raise InvalidInput(f"no Barge repository at {source.describe()} (nothing to move)")
    if source_is_repo and target_is_repo and source.get(_CONFIG) != target.get(_CONFIG):
        raise InvalidInput(
            f"both {source.describe()} and {target.describe()} hold a repository; a move needs an "
            "empty target"
        )
    keys = [info.key for info in source.list("") if info.key != _CONFIG]
    copied = total = present = 0
    for key in keys:
        size, existed = _copy(source, target, key)
        copied, total, present = copied + 1, total + size, present + int(existed)
    if source_is_repo:
        size, existed = _copy(source, target, _CONFIG)
        copied, total, present = copied + 1, total + size, present + int(existed)
        source.delete(_CONFIG)
    for key in keys:
        source.delete(key)
    return MoveReport(objects=copied, bytes=total, already_there=present)
