"""Builders for the objects Velero creates, for the integration tests (one definition, in devenv)."""

from __future__ import annotations

from typing import Any

from devenv.velero import data_upload as velero_data_upload

VELERO_NS = "velero"


def data_upload(backup: str = "nightly", pvc: str = "data-db-0", source_ns: str = "app") -> dict[str, Any]:
    """A DataUpload as Velero's CSI plugin creates it, for a snapshot that need not exist."""
    return velero_data_upload(
        backup=backup, pvc=pvc, source_namespace=source_ns, volume_snapshot=f"velero-{pvc}-abcde"
    )
