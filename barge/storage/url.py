"""Opening a store from a repository URL (the CLI's and the agent's single entry point)."""

from __future__ import annotations

from pathlib import Path
from urllib.parse import parse_qs, unquote, urlsplit

from barge.errors import InvalidInput
from barge.storage import ObjectStore
from barge.storage.local import LocalDirectoryStore


def open_store(url: str) -> ObjectStore:
    """``file:///abs/path`` (or a plain absolute path) and ``s3://bucket/prefix?endpoint=...``."""
    parts = urlsplit(url)
    if parts.scheme in ("", "file"):
        path = unquote(parts.path)
        if parts.netloc not in ("", "localhost") or not path.startswith("/"):
            raise InvalidInput(f"repository URL {url!r}: use file:///absolute/path")
        return LocalDirectoryStore(Path(path))
    if parts.scheme == "s3":
        from barge.storage.s3 import S3Options, S3Store  # noqa: PLC0415 - optional backend, loaded on use

        if not parts.netloc:
            raise InvalidInput(f"repository URL {url!r}: missing bucket (s3://BUCKET/PREFIX)")
        query = {k: v[-1] for k, v in parse_qs(parts.query).items()}
        return S3Store(S3Options.from_query(parts.netloc, parts.path.strip("/"), query))
    raise InvalidInput(
        f"repository URL {url!r}: unsupported scheme {parts.scheme!r} (supported: file://, s3://)"
    )
