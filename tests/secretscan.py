"""Searching everything Barge shows for secret values: statuses, Events, logs, CLI output, files.

A credential or the repository password must never reach a place an operator, a tenant with read
access to CRs or Events, or a log pipeline sees. Tests that run a real flow collect every output
and hand it here with the secret values they used.
"""

from __future__ import annotations

import base64
import json
from collections.abc import Iterable
from pathlib import Path

from barge.errors import NotFound
from barge.kube.resources import BACKUP, DATA_DOWNLOAD, DATA_UPLOAD, EVENT, RESTORE, KubeObjects, Resource

_CR_KINDS: tuple[Resource, ...] = (DATA_UPLOAD, DATA_DOWNLOAD, BACKUP, RESTORE)


def forms(secret: str) -> set[str]:
    """The secret as it would appear: itself, and base64-encoded as in a dumped Secret."""
    return {secret, base64.b64encode(secret.encode()).decode()}


def cluster_outputs(objects: KubeObjects, namespaces: Iterable[str]) -> dict[str, str]:
    """Every DataUpload, DataDownload, Backup and Restore (spec and status) and every Event in
    ``namespaces``, as text, by where it came from (kinds whose CRD is not installed are skipped)."""
    found: dict[str, str] = {}
    for namespace in namespaces:
        for resource in (*_CR_KINDS, EVENT):
            try:
                listed = objects.list(resource, namespace)
            except NotFound:
                continue
            for obj in listed:
                found[f"{resource.kind} {namespace}/{obj['metadata']['name']}"] = json.dumps(obj)
    return found


def log_outputs(*directories: Path) -> dict[str, str]:
    """Every ``*.log`` file under ``directories`` (the processes' stdout and stderr)."""
    return {
        str(path): path.read_text(errors="replace")
        for directory in directories
        for path in sorted(directory.rglob("*.log"))
    }


def file_contents(*directories: Path) -> dict[str, str]:
    """Every file under ``directories``, for places where nothing secret may be stored at all."""
    return {
        str(path): path.read_bytes().decode("latin-1")
        for directory in directories
        for path in sorted(directory.rglob("*"))
        if path.is_file()
    }


def leaks(outputs: dict[str, str], secrets: Iterable[str]) -> list[str]:
    """Where in ``outputs`` a secret appears (empty: nowhere)."""
    needles = {form for secret in secrets for form in forms(secret)}
    return sorted(where for where, text in outputs.items() if any(needle in text for needle in needles))
