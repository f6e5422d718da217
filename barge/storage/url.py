"""Opening a store from a repository URL (the CLI's and the agent's single entry point)."""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from pathlib import Path
from urllib.parse import parse_qs, unquote, urlsplit

from barge.errors import InvalidInput
from barge.storage import Credentials, ObjectStore
from barge.storage.local import LocalDirectoryStore

_CLOUD_FORMS = {
    "s3": "s3://BUCKET/PREFIX?endpoint=...&region=...&credentials_file=...",
    "gs": "gs://BUCKET/PREFIX?endpoint=...&credentials_file=SERVICE-ACCOUNT.json",
    "azure": "azure://CONTAINER/PREFIX?account=...&endpoint=...&credentials_file=...",
}


# "scheme://user:password@": the password may hold an unencoded "/", which ends urlsplit's netloc
_USERINFO = re.compile(r"^[A-Za-z][A-Za-z0-9+.-]*://([^/?#@]*@|[^/?#@:]*:[^?#]*@)")


def has_userinfo(url: str) -> bool:
    """Whether ``url`` carries a user (and password) before its host."""
    return _USERINFO.match(url) is not None


def open_store(
    url: str, *, credentials: Credentials | None = None, ca_bundle: bytes | None = None
) -> ObjectStore:
    """``file:///abs/path`` (or a plain absolute path), or one of ``_CLOUD_FORMS``.

    ``credentials`` (what a ``credentials_file`` would hold) and ``ca_bundle`` (PEM) are handed in
    memory by the agent, which has them from Secrets: nothing secret is written to a disk, and the
    URL, which messages quote, holds no secret.
    """
    if has_userinfo(url):
        raise InvalidInput(
            "repository URL: remove the user:password@ part (a URL is quoted in messages); "
            "credentials go in the credentials_file option"
        )
    parts = urlsplit(url)
    if parts.scheme in ("", "file"):
        path = unquote(parts.path)
        if parts.netloc not in ("", "localhost") or not path.startswith("/"):
            raise InvalidInput(f"repository URL {url!r}: use file:///absolute/path")
        return LocalDirectoryStore(Path(path))
    if parts.scheme not in _CLOUD_FORMS:
        raise InvalidInput(
            f"repository URL {url!r}: unsupported scheme {parts.scheme!r} "
            "(supported: file://, s3://, gs://, azure://)"
        )
    if not parts.netloc:
        form = _CLOUD_FORMS[parts.scheme]
        raise InvalidInput(f"repository URL {url!r}: missing bucket or container ({form})")
    query = {k: v[-1] for k, v in parse_qs(parts.query).items()}
    opener = _cloud_opener(parts.scheme)
    return opener(parts.netloc, parts.path.strip("/"), query, credentials, ca_bundle)


_Opener = Callable[[str, str, Mapping[str, str], Credentials | None, bytes | None], ObjectStore]


def _cloud_opener(scheme: str) -> _Opener:
    """Each backend's module is imported only when a URL names it (each loads its obstore store)."""
    if scheme == "s3":
        from barge.storage.s3 import S3Options, S3Store  # noqa: PLC0415

        return lambda *where: S3Store(S3Options.from_query(*where))
    if scheme == "gs":
        from barge.storage.gcs import GCSOptions, GCSStore  # noqa: PLC0415

        return lambda *where: GCSStore(GCSOptions.from_query(*where))
    from barge.storage.azure import AzureBlobStore, AzureOptions  # noqa: PLC0415

    return lambda *where: AzureBlobStore(AzureOptions.from_query(*where))
