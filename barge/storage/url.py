"""Opening a store from a repository URL (the CLI's and the agent's single entry point)."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from pathlib import Path
from urllib.parse import parse_qs, unquote, urlsplit

from barge.errors import InvalidInput
from barge.storage import ObjectStore
from barge.storage.local import LocalDirectoryStore

_CLOUD_FORMS = {
    "s3": "s3://BUCKET/PREFIX?endpoint=...&region=...&credentials_file=...",
    "gs": "gs://BUCKET/PREFIX?endpoint=...&credentials_file=SERVICE-ACCOUNT.json",
    "azure": "azure://CONTAINER/PREFIX?account=...&endpoint=...&credentials_file=...",
}


def open_store(url: str) -> ObjectStore:
    """``file:///abs/path`` (or a plain absolute path), or one of ``_CLOUD_FORMS``."""
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
    return _cloud_opener(parts.scheme)(parts.netloc, parts.path.strip("/"), query)


def _cloud_opener(scheme: str) -> Callable[[str, str, Mapping[str, str]], ObjectStore]:
    """Each backend's module is imported only when a URL names it (each loads its obstore store)."""
    if scheme == "s3":
        from barge.storage.s3 import S3Options, S3Store  # noqa: PLC0415

        return lambda bucket, prefix, query: S3Store(S3Options.from_query(bucket, prefix, query))
    if scheme == "gs":
        from barge.storage.gcs import GCSOptions, GCSStore  # noqa: PLC0415

        return lambda bucket, prefix, query: GCSStore(GCSOptions.from_query(bucket, prefix, query))
    from barge.storage.azure import AzureBlobStore, AzureOptions  # noqa: PLC0415

    return lambda container, prefix, query: AzureBlobStore(AzureOptions.from_query(container, prefix, query))
