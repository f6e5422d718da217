"""S3 and S3-compatible object storage (AWS, MinIO, Ceph RGW, ...) through obstore.

Create-only writes are ``If-None-Match: *`` puts; every put is verified against the MD5 ETag
(single-part uploads) or the stored size. The shared machinery is in ``barge.storage.cloud``.
"""

from __future__ import annotations

import configparser
import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from obstore.store import S3Store as _ObstoreS3

from barge.errors import InvalidInput
from barge.storage import Credentials
from barge.storage.cloud import (
    TRANSPORT_OPTIONS,
    TRUE_WORDS,
    CloudObjectStore,
    Transport,
    credentials_text,
    load_credentials,
    open_obstore,
    reject_unknown_options,
    translate_common,
)

if TYPE_CHECKING:
    from obstore.store import S3Config

_KNOWN_OPTIONS = TRANSPORT_OPTIONS | {"region", "path_style", "credentials_file", "profile"}


@dataclass(frozen=True)
class S3Options:
    bucket: str
    prefix: str = ""
    endpoint: str | None = None
    region: str = "us-east-1"
    path_style: bool = False
    ca_bundle: Path | None = None
    ca_pem: bytes | None = field(default=None, repr=False)
    insecure_skip_tls_verify: bool = False
    access_key: str | None = field(default=None, repr=False)
    secret_key: str | None = field(default=None, repr=False)
    session_token: str | None = field(default=None, repr=False)
    # Throttling (503 SlowDown) can last minutes: retry for up to retry_timeout_s (jittered backoff,
    # 0.2 s growing to 20 s between attempts); max_retries is only a backstop. Then the error is
    # TemporaryError and the DataUpload fails with it, so a dead store never hangs a transfer.
    max_retries: int = 60
    retry_timeout_s: float = 180.0

    @classmethod
    def from_query(
        cls,
        bucket: str,
        prefix: str,
        query: Mapping[str, str],
        credentials: Credentials | None = None,
        ca_pem: bytes | None = None,
    ) -> S3Options:
        """Options from ``s3://bucket/prefix?endpoint=...&region=...`` query parameters.

        Credentials (Velero's AWS shared-credentials format, with ``profile``) come in memory
        (``credentials``), else from ``credentials_file``, else ``AWS_SHARED_CREDENTIALS_FILE``,
        else ``AWS_ACCESS_KEY_ID``/``..._SECRET_...``.
        """
        reject_unknown_options("S3", query, _KNOWN_OPTIONS)
        given = load_credentials("S3", query, credentials, env_file="AWS_SHARED_CREDENTIALS_FILE")
        access_key, secret_key, token = (
            parse_credentials(given, query.get("profile", "default"))
            if given
            else (
                os.environ.get("AWS_ACCESS_KEY_ID"),
                os.environ.get("AWS_SECRET_ACCESS_KEY"),
                os.environ.get("AWS_SESSION_TOKEN"),
            )
        )
        transport = Transport.from_query(query, ca_pem)
        return cls(
            bucket=bucket,
            prefix=prefix,
            endpoint=transport.endpoint,
            region=query.get("region", "us-east-1"),
            path_style=query.get("path_style", "false").lower() in TRUE_WORDS,
            ca_bundle=transport.ca_bundle,
            ca_pem=ca_pem,
            insecure_skip_tls_verify=transport.insecure_skip_tls_verify,
            retry_timeout_s=transport.retry_timeout_s,
            access_key=access_key,
            secret_key=secret_key,
            session_token=token,
        )

    def transport(self) -> Transport:
        return Transport(
            endpoint=self.endpoint,
            ca_bundle=self.ca_bundle,
            ca_pem=self.ca_pem,
            insecure_skip_tls_verify=self.insecure_skip_tls_verify,
            max_retries=self.max_retries,
            retry_timeout_s=self.retry_timeout_s,
        )


def parse_credentials(credentials: Credentials, profile: str = "default") -> tuple[str, str, str | None]:
    """Velero's cloud-credentials file: an AWS shared-credentials INI file. A malformed one is
    reported by line number only: configparser's own messages quote the line, which may be the key."""
    # No interpolation: AWS's own parser has none, and a '%' in a key would raise with the value.
    parser = configparser.ConfigParser(interpolation=None)
    try:
        parser.read_string(credentials_text(credentials))
    except configparser.Error as err:
        raise InvalidInput(f"{credentials.source}: {_ini_problem(err)}") from None
    if profile not in parser:
        raise InvalidInput(f"{credentials.source} has no [{profile}] profile")
    section = parser[profile]
    try:
        return (
            section["aws_access_key_id"],
            section["aws_secret_access_key"],
            section.get("aws_session_token"),
        )
    except KeyError as err:
        raise InvalidInput(f"{credentials.source} [{profile}] lacks {err.args[0]}") from None


def _ini_problem(err: configparser.Error) -> str:
    """What is wrong and where, without the content of the line."""
    if isinstance(err, configparser.MissingSectionHeaderError):
        return f"line {err.lineno}: expected a [profile] header before any setting"
    if isinstance(err, configparser.DuplicateOptionError):
        return f"line {err.lineno}: {err.option} is set twice in [{err.section}]"
    if isinstance(err, configparser.DuplicateSectionError):
        return f"line {err.lineno}: [{err.section}] appears twice"
    if isinstance(err, configparser.ParsingError):
        numbers = ", ".join(str(number) for number, _ in err.errors)
        return f"line {numbers}: expected NAME = VALUE (an AWS shared-credentials file)"
    return "not an AWS shared-credentials (INI) file"


def _translate(err: Exception, what: str) -> Exception:
    """The one place S3 errors become Barge's temporary/permanent hierarchy.

    A lost ``If-None-Match`` race is 412 (obstore: PreconditionError), so the shared mapping holds;
    AWS's 409 ConditionalRequestConflict (a concurrent conditional write still in flight) stays
    temporary on purpose: the other writer may yet fail, so the put must be retried, not skipped.
    """
    return translate_common(err, what, no_bucket_code="NoSuchBucket")


class S3Store(CloudObjectStore):
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
        hidden = tuple(v for v in (options.access_key, options.secret_key, options.session_token) if v)
        store = open_obstore(
            "S3",
            _ObstoreS3,
            options.bucket,
            options.prefix,
            config=config,
            transport=options.transport(),
            hidden=hidden,
        )
        where = f"s3://{options.bucket}/{options.prefix}".rstrip("/")
        description = f"{where} at {options.endpoint}" if options.endpoint else where
        super().__init__(store, description, _translate, hidden)
