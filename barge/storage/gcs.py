"""Google Cloud Storage through obstore.

Create-only writes are puts with ``x-goog-if-generation-match: 0``; every put is verified against
the ETag, which GCS's XML API sets to the content MD5 for the single-request uploads Barge makes.
Credentials are a service-account key (JSON), the same file Velero's GCP plugin is given.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from obstore.store import GCSStore as _ObstoreGCS

from barge.errors import InvalidInput
from barge.storage.cloud import (
    TRANSPORT_OPTIONS,
    CloudObjectStore,
    Transport,
    open_obstore,
    reject_unknown_options,
    translate_common,
)

if TYPE_CHECKING:
    from obstore.store import GCSConfig

_KNOWN_OPTIONS = TRANSPORT_OPTIONS | {"credentials_file"}


@dataclass(frozen=True)
class GCSOptions:
    bucket: str
    prefix: str = ""
    service_account_key: str | None = None  # the key file's JSON text; None: obstore's defaults
    transport: Transport = field(default_factory=Transport)

    @classmethod
    def from_query(cls, bucket: str, prefix: str, query: Mapping[str, str]) -> GCSOptions:
        """Options from ``gs://bucket/prefix?endpoint=...&credentials_file=...``.

        The key comes from ``credentials_file``, else ``GOOGLE_APPLICATION_CREDENTIALS`` (how
        Velero's GCP plugin receives it).
        """
        reject_unknown_options("GCS", query, _KNOWN_OPTIONS)
        credentials_file = query.get("credentials_file") or os.environ.get("GOOGLE_APPLICATION_CREDENTIALS")
        key = read_service_account_key(Path(credentials_file)) if credentials_file else None
        return cls(
            bucket=bucket,
            prefix=prefix,
            service_account_key=key,
            transport=Transport.from_query(query),
        )


def read_service_account_key(path: Path) -> str:
    """The key file's text, checked early so a wrong file is a clear message, not a failed request."""
    try:
        text = path.read_text()
        key = json.loads(text)
    except (OSError, ValueError) as err:
        raise InvalidInput(f"cannot read GCS credentials file {path}: {err}") from err
    if not isinstance(key, dict):
        raise InvalidInput(f"GCS credentials file {path} is not a JSON object (a service-account key)")
    if not key.get("disable_oauth"):
        missing = [field for field in ("client_email", "private_key") if not key.get(field)]
        if missing:
            raise InvalidInput(
                f"GCS credentials file {path} lacks {', '.join(missing)}; "
                "it must be a service-account key (JSON), as `gcloud iam service-accounts keys create` writes"
            )
    return text


def _translate(err: Exception, what: str) -> Exception:
    """The one place GCS errors become Barge's temporary/permanent hierarchy.

    A lost ``if-generation-match: 0`` race is 412 (obstore: PreconditionError), which the shared
    mapping makes ObjectExists; nothing else in GCS needs a special case.
    """
    return translate_common(err, what, no_bucket_code="NoSuchBucket")


class GCSStore(CloudObjectStore):
    def __init__(self, options: GCSOptions) -> None:
        self.options = options
        config: GCSConfig = {}
        if options.service_account_key:
            config["service_account_key"] = options.service_account_key
        if options.transport.endpoint:
            config["base_url"] = options.transport.endpoint
        store = open_obstore(
            "GCS", _ObstoreGCS, options.bucket, options.prefix, config=config, transport=options.transport
        )
        where = f"gs://{options.bucket}/{options.prefix}".rstrip("/")
        endpoint = options.transport.endpoint
        super().__init__(store, f"{where} at {endpoint}" if endpoint else where, _translate)
