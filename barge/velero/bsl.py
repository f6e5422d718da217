"""From a Velero BackupStorageLocation to the URL of the Barge repository inside it.

One repository per (BackupStorageLocation, source namespace), like Velero's own mover, at
``<bucket>/<prefix>/plugins/barge/<source-namespace>``: namespaces never share dedup or keys, and
deleting a namespace's backups never touches another's. Velero validates the top level of every
location's prefix and marks the BSL *Unavailable* when it finds a folder other than ``backups``,
``restores``, ``restic``, ``metadata``, ``plugins`` or ``kopia``
(``pkg/persistence/object_store_layout.go``); ``plugins/`` is the folder it leaves to plugins.
Barge 0.x before this layout wrote ``<prefix>/barge/<source-namespace>`` (``LEGACY_ROOT``); such a
repository is never opened in place, only reported with the command that moves it.
Pure: the URL holds no secret. The caller reads the Secrets a location names (``spec.credential``,
``spec.objectStorage.caCertRef``, see ``ca_cert_ref``) from the location's namespace and hands the
credential and the CA bundle (``ca_bundle``) to the store in memory, never through a file.
"""

from __future__ import annotations

import base64
import binascii
import re
from collections.abc import Mapping
from typing import Any
from urllib.parse import quote, urlencode

from barge.errors import InvalidInput

_S3_PROVIDERS = ("aws", "velero.io/aws")
_GCS_PROVIDERS = ("gcp", "velero.io/gcp")
_AZURE_PROVIDERS = ("azure", "velero.io/azure")
_LOCAL_PROVIDERS = ("barge.io/local",)
_TRUE = ("true", "1", "yes")
# How long one object-store request is retried (throttling, resets, 5xx) before the transfer
# fails; seconds, default 180. An annotation on the BSL, which Velero and its plugins ignore...
RETRY_TIMEOUT_ANNOTATION = "barge.io/retry-timeout-seconds"
# ...rather than this config key, read for compatibility (S3 only, where it was documented): Velero
# hands `config` to the object-store plugin, and velero-plugin-for-aws refuses unknown keys
# ("config has invalid keys"), so Velero marks such a BSL Unavailable. The annotation wins.
RETRY_TIMEOUT_KEY = "barge.io/retryTimeoutSeconds"
_NAMESPACE = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")
# Where repositories live under a BSL's prefix: a folder Velero's store validation accepts.
REPOSITORY_ROOT = "plugins/barge"
# Where Barge wrote them before (Velero rejects a top-level ``barge/`` folder).
LEGACY_ROOT = "barge"


def repository_url(bsl: Mapping[str, Any], source_namespace: str, *, root: str = REPOSITORY_ROOT) -> str:
    """The repository URL for ``source_namespace``'s volumes in this BSL (see module docstring);
    ``root=LEGACY_ROOT`` gives where Barge wrote it before the current layout."""
    if not _NAMESPACE.match(source_namespace):
        raise InvalidInput(f"source namespace {source_namespace!r} is not a valid namespace name")
    return location_url(bsl, path=f"{root}/{source_namespace}")


def location_url(bsl: Mapping[str, Any], *, path: str = "") -> str:
    """The URL of ``path`` under the location's prefix (the prefix itself by default: where
    Velero keeps ``backups/``)."""
    name = bsl.get("metadata", {}).get("name", "?")
    spec = bsl.get("spec") or {}
    storage = spec.get("objectStorage") or {}
    bucket = storage.get("bucket")
    if not bucket:
        raise InvalidInput(f"BackupStorageLocation {name}: spec.objectStorage.bucket is empty")
    base = str(storage.get("prefix") or "").strip("/")
    prefix = "/".join(p for p in (base, path.strip("/")) if p)
    config: Mapping[str, str] = spec.get("config") or {}
    provider = str(spec.get("provider") or "")
    retry: dict[str, str] = {}
    annotations: Mapping[str, str] = bsl.get("metadata", {}).get("annotations") or {}
    if timeout := annotations.get(RETRY_TIMEOUT_ANNOTATION):
        retry["retry_timeout"] = str(timeout)
    if provider in _S3_PROVIDERS:
        if config.get(RETRY_TIMEOUT_KEY):
            retry.setdefault("retry_timeout", str(config[RETRY_TIMEOUT_KEY]))
        return _url("s3", bucket, prefix, _s3_query(config) | retry)
    if provider in _GCS_PROVIDERS:
        return _url("gs", bucket, prefix, retry)
    if provider in _AZURE_PROVIDERS:
        return _url("azure", bucket, prefix, {"account": config.get("storageAccount", "")} | retry)
    if provider in _LOCAL_PROVIDERS:
        return _local_url(name, bucket, prefix, config)
    known = ", ".join(_S3_PROVIDERS + _GCS_PROVIDERS + _AZURE_PROVIDERS + _LOCAL_PROVIDERS)
    raise InvalidInput(f"BackupStorageLocation {name}: provider {provider!r} is not supported ({known})")


def _s3_query(config: Mapping[str, str]) -> dict[str, str]:
    query: dict[str, str] = {"region": config.get("region") or "us-east-1"}
    if config.get("s3Url"):
        query["endpoint"] = config["s3Url"]
    if str(config.get("s3ForcePathStyle", "")).lower() in _TRUE:
        query["path_style"] = "true"
    if str(config.get("insecureSkipTLSVerify", "")).lower() in _TRUE:
        query["insecure_skip_tls_verify"] = "true"
    if config.get("profile"):
        query["profile"] = config["profile"]
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


def ca_cert_ref(bsl: Mapping[str, Any]) -> tuple[str, str] | None:
    """``spec.objectStorage.caCertRef`` (Velero 1.18's way to give a CA bundle) as the Secret's
    ``(name, key)`` in the location's namespace, or None. Velero refuses a location that also has
    the deprecated inline ``caCert``, and so does Barge."""
    name = bsl.get("metadata", {}).get("name", "?")
    storage = (bsl.get("spec") or {}).get("objectStorage") or {}
    ref = storage.get("caCertRef")
    if ref is None:
        return None
    if storage.get("caCert"):
        raise InvalidInput(
            f"BackupStorageLocation {name}: spec.objectStorage has both caCert and caCertRef; "
            "keep only caCertRef (caCert is deprecated, and Velero rejects the location too)"
        )
    selector: Mapping[str, Any] = ref if isinstance(ref, Mapping) else {}
    secret, key = str(selector.get("name") or ""), str(selector.get("key") or "")
    if not secret or not key:
        raise InvalidInput(
            f"BackupStorageLocation {name}: spec.objectStorage.caCertRef needs the name and key "
            "of a Secret in Velero's namespace"
        )
    return secret, key


def ca_bundle(bsl: Mapping[str, Any], from_ref: bytes | None) -> bytes | None:
    """The PEM bundle: ``from_ref``, the value of the caCertRef Secret (required when the location
    has one), else the inline (base64) ``caCert``; None when the location has neither."""
    ref = ca_cert_ref(bsl)
    name = bsl.get("metadata", {}).get("name", "?")
    if ref is not None:
        if not from_ref:
            raise InvalidInput(
                f"BackupStorageLocation {name}: spec.objectStorage.caCertRef names Secret {ref[0]} "
                f"key {ref[1]}, which is empty"
            )
        return from_ref
    value = ((bsl.get("spec") or {}).get("objectStorage") or {}).get("caCert")
    if not value:
        return None
    try:
        return base64.b64decode(str(value), validate=True)
    except (binascii.Error, ValueError):
        raise InvalidInput(
            f"BackupStorageLocation {name}: spec.objectStorage.caCert is not valid base64"
        ) from None
