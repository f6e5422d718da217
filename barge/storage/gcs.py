"""Google Cloud Storage through obstore.

Create-only writes are puts with ``x-goog-if-generation-match: 0``; every put is verified against
the ETag, which GCS's XML API sets to the content MD5 for the single-request uploads Barge makes.
Credentials are a service-account key (JSON), the same file Velero's GCP plugin is given.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from obstore.store import GCSStore as _ObstoreGCS

from barge.errors import InvalidInput
from barge.storage import Credentials
from barge.storage.cloud import (
    TRANSPORT_OPTIONS,
    CloudObjectStore,
    Transport,
    credentials_text,
    load_credentials,
    open_obstore,
    read_credentials,
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
    # the key file's JSON text; None: obstore's defaults
    service_account_key: str | None = field(default=None, repr=False)
    transport: Transport = field(default_factory=Transport)

    @classmethod
    def from_query(
        cls,
        bucket: str,
        prefix: str,
        query: Mapping[str, str],
        credentials: Credentials | None = None,
        ca_pem: bytes | None = None,
    ) -> GCSOptions:
        """Options from ``gs://bucket/prefix?endpoint=...&credentials_file=...``.

        The key comes in memory (``credentials``), else from ``credentials_file``, else
        ``GOOGLE_APPLICATION_CREDENTIALS`` (how Velero's GCP plugin receives it).
        """
        reject_unknown_options("GCS", query, _KNOWN_OPTIONS)
        given = load_credentials("GCS", query, credentials, env_file="GOOGLE_APPLICATION_CREDENTIALS")
        return cls(
            bucket=bucket,
            prefix=prefix,
            service_account_key=service_account_key(given) if given else None,
            transport=Transport.from_query(query, ca_pem),
        )


def service_account_key(credentials: Credentials) -> str:
    """The key's JSON text, checked early so a wrong key is a clear message, not a failed request.
    json's messages give a position, never the text."""
    text = credentials_text(credentials)
    try:
        key = json.loads(text)
    except ValueError as err:
        raise InvalidInput(f"cannot read {credentials.source}: not JSON ({err})") from None
    if not isinstance(key, dict):
        raise InvalidInput(f"{credentials.source} is not a JSON object (a service-account key)")
    if not key.get("disable_oauth"):
        missing = [field for field in ("client_email", "private_key") if not key.get(field)]
        if missing:
            raise InvalidInput(
                f"{credentials.source} lacks {', '.join(missing)}; "
                "it must be a service-account key (JSON), as `gcloud iam service-accounts keys create` writes"
            )
    return text


def read_service_account_key(path: Path) -> str:
    """The same, from a file."""
    return service_account_key(read_credentials("GCS", path))


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
        hidden = _key_secrets(options.service_account_key)
        store = open_obstore(
            "GCS",
            _ObstoreGCS,
            options.bucket,
            options.prefix,
            config=config,
            transport=options.transport,
            hidden=hidden,
        )
        where = f"gs://{options.bucket}/{options.prefix}".rstrip("/")
        endpoint = options.transport.endpoint
        super().__init__(store, f"{where} at {endpoint}" if endpoint else where, _translate, hidden)


def _key_secrets(text: str | None) -> tuple[str, ...]:
    """The values of a service-account key that must never be shown, and their PEM lines."""
    if not text:
        return ()
    key = json.loads(text)
    private = str(key.get("private_key") or "")
    lines = [line for line in private.splitlines() if line and not line.startswith("-----")]
    return tuple(v for v in (private, str(key.get("private_key_id") or ""), *lines) if v)
