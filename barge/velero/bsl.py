"""From a Velero BackupStorageLocation to the URL of the Barge repository inside it.

One repository per (BackupStorageLocation, source namespace), like Velero's own mover, at
``<bucket>/<prefix>/plugins/barge/<source-namespace>``: namespaces never share dedup or keys, and
deleting a namespace's backups never touches another's. Velero validates the top level of every
location's prefix and marks the BSL *Unavailable* when it finds a folder other than ``backups``,
``restores``, ``restic``, ``metadata``, ``plugins`` or ``kopia``
(``pkg/persistence/object_store_layout.go``); ``plugins/`` is the folder it leaves to plugins.
Barge 0.x before this layout wrote ``<prefix>/barge/<source-namespace>`` (``LEGACY_ROOT``); such a
repository is never opened in place, only reported with the command that moves it.
Pure: secrets and CA bundles are handed to a ``materialize`` callback that writes them somewhere
private and returns the path.
"""

from __future__ import annotations

import base64
import binascii
import re
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any
from urllib.parse import quote, urlencode

from barge.errors import InvalidInput

Materialize = Callable[[str, bytes], Path]  # (purpose, content) -> path of a private file

_S3_PROVIDERS = ("aws", "velero.io/aws")
_GCS_PROVIDERS = ("gcp", "velero.io/gcp")
_AZURE_PROVIDERS = ("azure", "velero.io/azure")
_LOCAL_PROVIDERS = ("barge.io/local",)
_TRUE = ("true", "1", "yes")
# Barge's own BSL config key (S3): how long one request is retried (throttling, resets, 5xx) before
# the transfer fails; seconds, default 180.
RETRY_TIMEOUT_KEY = "barge.io/retryTimeoutSeconds"
_NAMESPACE = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")
# Where repositories live under a BSL's prefix: a folder Velero's store validation accepts.
REPOSITORY_ROOT = "plugins/barge"
# Where Barge wrote them before (Velero rejects a top-level ``barge/`` folder).
LEGACY_ROOT = "barge"


def repository_url(
    bsl: Mapping[str, Any],
    source_namespace: str,
    credential: bytes | None,
    materialize: Materialize,
    *,
    root: str = REPOSITORY_ROOT,
) -> str:
    """The repository URL for ``source_namespace``'s volumes in this BSL (see module docstring);
    ``root=LEGACY_ROOT`` gives where Barge wrote it before the current layout."""
    name = bsl.get("metadata", {}).get("name", "?")
    spec = bsl.get("spec") or {}
    storage = spec.get("objectStorage") or {}
    bucket = storage.get("bucket")
    if not bucket:
        raise InvalidInput(f"BackupStorageLocation {name}: spec.objectStorage.bucket is empty")
    if not _NAMESPACE.match(source_namespace):
        raise InvalidInput(f"source namespace {source_namespace!r} is not a valid namespace name")
    base = str(storage.get("prefix") or "").strip("/")
    prefix = "/".join(p for p in (base, root, source_namespace) if p)
    config: Mapping[str, str] = spec.get("config") or {}
    provider = str(spec.get("provider") or "")
    ca_cert = _ca_cert(name, storage.get("caCert"))
    if provider in _S3_PROVIDERS:
        return _url("s3", bucket, prefix, _s3_query(config, credential, ca_cert, materialize))
    if provider in _GCS_PROVIDERS:
        query = {"credentials_file": str(materialize("gcs-credentials", credential))} if credential else {}
        return _url("gs", bucket, prefix, query)
    if provider in _AZURE_PROVIDERS:
        query = {"account": config.get("storageAccount", "")}
        if credential:
            query["credentials_file"] = str(materialize("azure-credentials", credential))
        return _url("azure", bucket, prefix, query)
    if provider in _LOCAL_PROVIDERS:
        return _local_url(name, bucket, prefix, config)
    known = ", ".join(_S3_PROVIDERS + _GCS_PROVIDERS + _AZURE_PROVIDERS + _LOCAL_PROVIDERS)
    raise InvalidInput(f"BackupStorageLocation {name}: provider {provider!r} is not supported ({known})")


def _s3_query(
    config: Mapping[str, str],
    credential: bytes | None,
    ca_cert: bytes | None,
    materialize: Materialize,
) -> dict[str, str]:
    query: dict[str, str] = {"region": config.get("region") or "us-east-1"}
    if config.get("s3Url"):
        query["endpoint"] = config["s3Url"]
    if str(config.get("s3ForcePathStyle", "")).lower() in _TRUE:
        query["path_style"] = "true"
    if str(config.get("insecureSkipTLSVerify", "")).lower() in _TRUE:
        query["insecure_skip_tls_verify"] = "true"
    if config.get("profile"):
        query["profile"] = config["profile"]
    if config.get(RETRY_TIMEOUT_KEY):
        query["retry_timeout"] = str(config[RETRY_TIMEOUT_KEY])
    if ca_cert:
        query["ca_bundle"] = str(materialize("ca-bundle", ca_cert))
    if credential:
        query["credentials_file"] = str(materialize("s3-credentials", credential))
    return query


def _local_url(name: str, bucket: str, prefix: str, config: Mapping[str, str]) -> str:
    root = config.get("path", "")
    if not root.startswith("/"):
        raise InvalidInput(
            f"BackupStorageLocation {name}: provider barge.io/local needs config.path, an absolute "
            "directory every agent can reach (a shared hostPath or NFS mount)"
        )
    return f"file://{quote(root.rstrip('/'))}/{quote(bucket)}/{quote(prefix)}"


def _url(scheme: str, bucket: str, prefix: str, query: Mapping[str, str]) -> str:
    return f"{scheme}://{quote(bucket)}/{quote(prefix)}" + (f"?{urlencode(query)}" if query else "")


def _ca_cert(name: str, value: object) -> bytes | None:
    """``objectStorage.caCert`` is base64 of a PEM bundle in Velero's API."""
    if not value:
        return None
    try:
        return base64.b64decode(str(value), validate=True)
    except (binascii.Error, ValueError):
        raise InvalidInput(
            f"BackupStorageLocation {name}: spec.objectStorage.caCert is not valid base64"
        ) from None
