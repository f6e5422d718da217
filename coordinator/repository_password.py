"""The repository password, generated once when the operator supplied none.

The chart names a Secret in Velero's namespace (``barge-repository-password`` by default). When it
does not exist, the coordinator creates it at start with a random 256-bit password; when it exists
(the operator's, or generated earlier) it is left as it is: creation is create-only, so nothing is
ever overwritten and the coordinator needs no permission to read Secrets. The Secret is no Helm
object and has no owner, so ``helm upgrade``, ``helm uninstall`` and a reinstall under any release
name keep it; the operator saves a copy for disaster recovery (operator guide).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import structlog

from barge.errors import Conflict
from barge.velero.password import SecretKey, generate_password

log = structlog.get_logger("barge.coordinator")

CreateSecret = Callable[[dict[str, Any]], object]  # POST the Secret; Conflict when it exists


def ensure_repository_password(create: CreateSecret, namespace: str, ref: SecretKey) -> bool:
    """Create the Secret with a new password unless it exists; True when it was created."""
    body = {
        "metadata": {
            "name": ref.name,
            "namespace": namespace,
            "labels": {"app.kubernetes.io/part-of": "barge"},
            "annotations": {
                "barge.io/purpose": "the password of Barge's repositories: without it the backups "
                "cannot be read; save a copy outside the cluster (docs/operator-guide.md)",
            },
        },
        "type": "Opaque",
        "stringData": {ref.key: generate_password()},
    }
    try:
        create(body)
    except Conflict:  # AlreadyExists: the operator's, or generated before
        return False
    log.warning(
        "generated a repository password: save a copy outside the cluster, restores need it",
        secret=ref.describe(namespace),
    )
    return True
