"""S3 and S3-compatible object storage (AWS, MinIO, Ceph RGW, ...) through obstore.

obstore (Rust's ``object_store``) was chosen over boto3: native speed, connection pooling,
retries with jittered exponential backoff on 5xx/throttling/connection errors built in,
create-only writes (``If-None-Match: *``), and no dependency conflict with the Kubernetes client.
"""

from __future__ import annotations

import configparser
import hashlib
import os
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import TYPE_CHECKING

import obstore
from obstore import exceptions as obs_errors
from obstore.store import S3Store as _ObstoreS3

from barge.errors import InvalidInput, PermanentError, TemporaryError
from barge.storage import ObjectExists, ObjectInfo, ObjectNotFound

if TYPE_CHECKING:
    from obstore.store import ClientConfig, RetryConfig, S3Config

_TRUE = ("1", "true", "yes")


@dataclass(frozen=True)
class S3Options:
    bucket: str
    prefix: str = ""
    endpoint: str | None = None
    region: str = "us-east-1"
    path_style: bool = False
    ca_bundle: Path | None = None
    insecure_skip_tls_verify: bool = False
    access_key: str | None = None
    secret_key: str | None = None
    session_token: str | None = None
    # Throttling (503 SlowDown) can last minutes: retry for up to retry_timeout_s (jittered backoff,
    # 0.2 s growing to 20 s between attempts); max_retries is only a backstop. Then the error is
    # TemporaryError and the DataUpload fails with it, so a dead store never hangs a transfer.
    max_retries: int = 60
    retry_timeout_s: float = 180.0

    @classmethod
    def from_query(cls, bucket: str, prefix: str, query: Mapping[str, str]) -> S3Options:
        """Options from ``s3://bucket/prefix?endpoint=...&region=...`` query parameters.

        Credentials come from ``credentials_file`` (Velero's AWS shared-credentials format, with
        ``profile``), else ``AWS_SHARED_CREDENTIALS_FILE``, else ``AWS_ACCESS_KEY_ID``/``..._SECRET_...``.
        """
        known = {"endpoint", "region", "path_style", "ca_bundle", "insecure_skip_tls_verify",
                 "credentials_file", "profile", "retry_timeout"}  # fmt: skip
        unknown = sorted(set(query) - known)
        if unknown:
            raise InvalidInput(
                f"unknown S3 option(s) {', '.join(unknown)}; known: {', '.join(sorted(known))}"
            )
        credentials_file = query.get("credentials_file") or os.environ.get("AWS_SHARED_CREDENTIALS_FILE")
        access_key, secret_key, token = (
            read_credentials_file(Path(credentials_file), query.get("profile", "default"))
            if credentials_file
            else (
                os.environ.get("AWS_ACCESS_KEY_ID"),
                os.environ.get("AWS_SECRET_ACCESS_KEY"),
                os.environ.get("AWS_SESSION_TOKEN"),
            )
        )
        return cls(
            bucket=bucket,
            prefix=prefix,
            endpoint=query.get("endpoint"),
            region=query.get("region", "us-east-1"),
            path_style=query.get("path_style", "false").lower() in _TRUE,
            ca_bundle=Path(query["ca_bundle"]) if "ca_bundle" in query else None,
            insecure_skip_tls_verify=query.get("insecure_skip_tls_verify", "false").lower() in _TRUE,
            retry_timeout_s=_retry_timeout(query.get("retry_timeout")),
            access_key=access_key,
            secret_key=secret_key,
            session_token=token,
        )


_MAX_RETRY_TIMEOUT_S = 3600.0  # an hour of retrying one request is the most that makes sense


def _retry_timeout(text: str | None) -> float:
    if text is None:
        return S3Options.retry_timeout_s
    try:
        seconds = float(text)
    except ValueError:
        seconds = -1.0
    if not 1 <= seconds <= _MAX_RETRY_TIMEOUT_S:
        raise InvalidInput(f"S3 option retry_timeout={text!r}: give seconds between 1 and 3600")
    return seconds


def read_credentials_file(path: Path, profile: str = "default") -> tuple[str, str, str | None]:
    """Velero's cloud-credentials file: an AWS shared-credentials INI file."""
    parser = configparser.ConfigParser()
    try:
        parser.read_string(path.read_text())
    except (OSError, configparser.Error) as err:
        raise InvalidInput(f"cannot read S3 credentials file {path}: {err}") from err
    if profile not in parser:
        raise InvalidInput(f"S3 credentials file {path} has no [{profile}] profile")
    section = parser[profile]
    try:
        return (
            section["aws_access_key_id"],
            section["aws_secret_access_key"],
            section.get("aws_session_token"),
        )
    except KeyError as err:
        raise InvalidInput(f"S3 credentials file {path} [{profile}] lacks {err.args[0]}") from None


def _translate(err: Exception, what: str) -> Exception:
    """The one place obstore errors become Barge's temporary/permanent hierarchy."""
    # obstore raises its own classes for some calls and the builtin OSError subclasses for others.
    if isinstance(err, obs_errors.NotFoundError | FileNotFoundError):
        return ObjectNotFound(f"{what}: not found")
    if isinstance(err, obs_errors.AlreadyExistsError | obs_errors.PreconditionError | FileExistsError):
        return ObjectExists(f"{what}: already exists")
    if isinstance(err, obs_errors.PermissionDeniedError | obs_errors.UnauthenticatedError | PermissionError):
        return PermanentError(f"{what}: access denied by the object store; check the credentials ({err})")
    return TemporaryError(f"{what}: object store error after retries: {_summary(err)}")


_MESSAGE_LIMIT = 400


def _summary(err: Exception) -> str:
    """obstore's text without its multi-line debug dump: it ends up in a CR's status.message."""
    text = str(err).split("Debug source:", 1)[0]
    text = " ".join(text.split())
    return text if len(text) <= _MESSAGE_LIMIT else text[: _MESSAGE_LIMIT - 3] + "..."


class S3Store:
    def __init__(self, options: S3Options) -> None:
        self.options = options
        config: S3Config = {"region": options.region, "virtual_hosted_style_request": not options.path_style}
        if options.endpoint:
            config["endpoint"] = options.endpoint
        if options.access_key and options.secret_key:
            config["access_key_id"] = options.access_key
            config["secret_access_key"] = options.secret_key
            if options.session_token:
                config["session_token"] = options.session_token
        client: ClientConfig = {"timeout": "120s", "connect_timeout": "10s"}
        if options.endpoint and options.endpoint.startswith("http://"):
            client["allow_http"] = True
        if options.ca_bundle:
            try:
                client["root_certificate"] = options.ca_bundle.read_bytes()
            except OSError as err:
                raise InvalidInput(f"cannot read CA bundle {options.ca_bundle}: {err.strerror}") from err
        if options.insecure_skip_tls_verify:
            client["allow_invalid_certificates"] = True
        retry: RetryConfig = {
            "max_retries": options.max_retries,
            "retry_timeout": timedelta(seconds=options.retry_timeout_s),
            "backoff": {
                "init_backoff": timedelta(milliseconds=200),
                "max_backoff": timedelta(seconds=20),
                "base": 2,
            },
        }
        try:
            self._store = _ObstoreS3(
                options.bucket,
                prefix=options.prefix or None,
                config=config,
                client_options=client,
                retry_config=retry,
            )
        except (obs_errors.BaseError, ValueError) as err:
            raise InvalidInput(f"invalid S3 configuration: {err}") from err

    def describe(self) -> str:
        where = f"s3://{self.options.bucket}/{self.options.prefix}".rstrip("/")
        return f"{where} at {self.options.endpoint}" if self.options.endpoint else where

    def put(self, key: str, data: bytes | memoryview, *, overwrite: bool = False) -> None:
        payload = bytes(data)
        try:
            result = obstore.put(
                self._store, key, payload, mode="overwrite" if overwrite else "create", use_multipart=False
            )
        except Exception as err:
            raise _translate(err, f"put {key}") from err
        etag = (result.get("e_tag") or "").strip('"')
        if (
            len(etag) == 32
            and "-" not in etag
            and etag != hashlib.md5(payload, usedforsecurity=False).hexdigest()
        ):
            raise TemporaryError(
                f"put {key}: the store's ETag does not match what was sent (corrupted in transit)"
            )
        if len(etag) != 32 and self.stat(key).size != len(payload):
            raise TemporaryError(f"put {key}: stored size differs from what was sent")

    def get(self, key: str) -> bytes:
        try:
            return bytes(obstore.get(self._store, key).bytes())
        except Exception as err:
            raise _translate(err, f"get {key}") from err

    def get_range(self, key: str, offset: int, length: int) -> bytes:
        try:
            if offset < 0:
                return bytes(obstore.get(self._store, key, options={"range": {"suffix": -offset}}).bytes())[
                    :length
                ]
            return bytes(obstore.get_range(self._store, key, start=offset, length=length))
        except Exception as err:
            raise _translate(err, f"get {key} [{offset}:+{length}]") from err

    def stat(self, key: str) -> ObjectInfo:
        try:
            meta = obstore.head(self._store, key)
        except Exception as err:
            raise _translate(err, f"stat {key}") from err
        return ObjectInfo(key, int(meta["size"]), meta["last_modified"])

    def list(self, prefix: str) -> Iterator[ObjectInfo]:
        # object_store matches prefixes per path segment; list the enclosing "directory" and
        # filter, so the protocol's plain string-prefix semantics hold ("data" matches "dataset").
        directory = prefix.rsplit("/", 1)[0] if "/" in prefix else None
        found: list[ObjectInfo] = []
        try:
            for batch in obstore.list(self._store, prefix=directory, chunk_size=1000):
                found.extend(
                    ObjectInfo(m["path"], int(m["size"]), m["last_modified"])
                    for m in batch
                    if m["path"].startswith(prefix)
                )
        except Exception as err:
            raise _translate(err, f"list {prefix}") from err
        yield from sorted(found, key=lambda info: info.key)

    def delete(self, key: str) -> None:
        try:
            obstore.delete(self._store, key)
        except (obs_errors.NotFoundError, FileNotFoundError):
            return
        except Exception as err:
            raise _translate(err, f"delete {key}") from err
