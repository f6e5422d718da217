"""Azure Blob Storage through obstore.

Create-only writes are Put Blob with ``If-None-Match: *`` (409 BlobAlreadyExists when the blob
exists). Azure's ETag is not a content hash, so every put is verified by the stored size.
Credentials are the storage account's shared key, as Velero's Azure plugin is given it.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from obstore.store import AzureStore as _ObstoreAzure

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
    from obstore.store import AzureConfig

_KNOWN_OPTIONS = TRANSPORT_OPTIONS | {"account", "credentials_file"}
_ACCOUNT_VAR = "AZURE_STORAGE_ACCOUNT"
_KEY_VAR = "AZURE_STORAGE_ACCOUNT_KEY"
_FILE_KEY_VAR = "AZURE_STORAGE_ACCOUNT_ACCESS_KEY"  # the name Velero's Azure plugin uses


@dataclass(frozen=True)
class AzureOptions:
    container: str
    account: str
    prefix: str = ""
    # None: obstore's other credential sources (managed identity, ...)
    account_key: str | None = field(default=None, repr=False)
    transport: Transport = field(default_factory=Transport)

    @classmethod
    def from_query(
        cls,
        container: str,
        prefix: str,
        query: Mapping[str, str],
        credentials: Credentials | None = None,
        ca_pem: bytes | None = None,
    ) -> AzureOptions:
        """Options from ``azure://container/prefix?account=...&endpoint=...&credentials_file=...``.

        The key comes in memory (``credentials``) or from ``credentials_file`` (Velero's Azure
        plugin format: ``NAME=value`` lines with AZURE_STORAGE_ACCOUNT_ACCESS_KEY and optionally
        AZURE_STORAGE_ACCOUNT), else the AZURE_STORAGE_ACCOUNT_KEY variable. ``account`` defaults to
        the file's or the environment's.
        """
        reject_unknown_options("Azure", query, _KNOWN_OPTIONS)
        given = load_credentials("Azure", query, credentials)
        settings = parse_credentials(given) if given else {}
        account = query.get("account") or settings.get(_ACCOUNT_VAR) or os.environ.get(_ACCOUNT_VAR)
        if not account:
            raise InvalidInput(
                "Azure storage account unknown: add ?account=NAME to the URL "
                f"(or {_ACCOUNT_VAR} to the credentials file or the environment)"
            )
        if given and _FILE_KEY_VAR not in settings:
            raise InvalidInput(f"{given.source} lacks {_FILE_KEY_VAR}")
        return cls(
            container=container,
            account=account,
            prefix=prefix,
            account_key=settings.get(_FILE_KEY_VAR) or os.environ.get(_KEY_VAR),
            transport=Transport.from_query(query, ca_pem),
        )


def parse_credentials(credentials: Credentials) -> dict[str, str]:
    """Velero's Azure credentials file: ``NAME=value`` lines; blank lines and ``#`` comments skipped.
    A bad line is reported by its number, never its content."""
    lines = credentials_text(credentials).splitlines()
    settings: dict[str, str] = {}
    for number, line in enumerate(lines, start=1):
        stripped = line.strip()
        if not stripped or stripped.startswith("#"):
            continue
        name, equals, value = stripped.partition("=")
        if not equals or not name.strip():
            raise InvalidInput(f"{credentials.source} line {number}: expected NAME=value")
        settings[name.strip()] = value.strip().strip("\"'")
    return settings


def read_credentials_file(path: Path) -> dict[str, str]:
    """The same, from a file."""
    return parse_credentials(read_credentials("Azure", path))


def _translate(err: Exception, what: str) -> Exception:
    """The one place Azure errors become Barge's temporary/permanent hierarchy.

    obstore reports a lost ``If-None-Match: *`` race (409 BlobAlreadyExists) as AlreadyExistsError
    and a rejected shared key (403 AuthenticationFailed) as PermissionDeniedError, both of which the
    shared mapping covers.
    """
    return translate_common(err, what, no_bucket_code="ContainerNotFound")


class AzureBlobStore(CloudObjectStore):
    suffix_ranges = False  # Azure's Get Blob has no "last N bytes" form

    def __init__(self, options: AzureOptions) -> None:
        self.options = options
        config: AzureConfig = {"account_name": options.account}
        if options.account_key:
            config["account_key"] = options.account_key
        if options.transport.endpoint:
            config["endpoint"] = options.transport.endpoint
        hidden = (options.account_key,) if options.account_key else ()
        store = open_obstore(
            "Azure",
            _ObstoreAzure,
            options.container,
            options.prefix,
            config=config,
            transport=options.transport,
            hidden=hidden,
        )
        where = f"azure://{options.container}/{options.prefix}".rstrip("/")
        endpoint = options.transport.endpoint or f"https://{options.account}.blob.core.windows.net"
        super().__init__(store, f"{where} at {endpoint}", _translate, hidden)
