"""What every cloud backend (S3, GCS, Azure Blob) shares: one obstore-backed ``ObjectStore``.

obstore (Rust's ``object_store``) was chosen over the vendors' SDKs: native speed, connection
pooling, retries with jittered exponential backoff on 5xx/throttling/connection errors built in,
create-only writes (each service's conditional put), and no dependency conflict with the Kubernetes
client. A backend supplies the configured obstore store, a description and its error translation.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from datetime import timedelta
from pathlib import Path
from typing import TYPE_CHECKING

import obstore
from obstore import exceptions as obs_errors

from barge.errors import InvalidInput, PermanentError, TemporaryError
from barge.storage import Credentials, ObjectExists, ObjectInfo, ObjectNotFound
from barge.storage.url import has_userinfo

if TYPE_CHECKING:
    from obstore.store import AzureStore, ClientConfig, GCSStore, RetryConfig, S3Store

    CloudStore = S3Store | GCSStore | AzureStore

TRUE_WORDS = ("1", "true", "yes")

Translate = Callable[[Exception, str], Exception]


@dataclass(frozen=True)
class Transport:
    """How to reach a service: the same knobs for every backend."""

    endpoint: str | None = None
    ca_bundle: Path | None = None
    ca_pem: bytes | None = field(default=None, repr=False)  # the bundle itself, handed in memory
    insecure_skip_tls_verify: bool = False
    # Throttling (503 SlowDown) can last minutes: retry for up to retry_timeout_s (jittered backoff,
    # 0.2 s growing to 20 s between attempts); max_retries is only a backstop. Then the error is
    # final and the operation fails with it.
    max_retries: int = 60
    retry_timeout_s: float = 180.0

    @classmethod
    def from_query(cls, query: Mapping[str, str], ca_pem: bytes | None = None) -> Transport:
        endpoint = query.get("endpoint")
        if endpoint and has_userinfo(endpoint):
            raise InvalidInput(
                "storage option endpoint: remove the user:password@ part (it would show in every "
                "message); credentials go in the credentials file"
            )
        return cls(
            endpoint=endpoint,
            ca_bundle=Path(query["ca_bundle"]) if "ca_bundle" in query else None,
            ca_pem=ca_pem,
            insecure_skip_tls_verify=query.get("insecure_skip_tls_verify", "false").lower() in TRUE_WORDS,
            retry_timeout_s=_retry_timeout(query.get("retry_timeout")),
        )

    def client_config(self) -> ClientConfig:
        client: ClientConfig = {"timeout": "120s", "connect_timeout": "10s"}
        if self.endpoint and self.endpoint.startswith("http://"):
            client["allow_http"] = True
        if self.ca_pem:
            client["root_certificate"] = self.ca_pem
        elif self.ca_bundle:
            try:
                client["root_certificate"] = self.ca_bundle.read_bytes()
            except OSError as err:
                raise InvalidInput(f"cannot read CA bundle {self.ca_bundle}: {err.strerror}") from err
        if self.insecure_skip_tls_verify:
            client["allow_invalid_certificates"] = True
        return client

    def retry_config(self) -> RetryConfig:
        return {
            "max_retries": self.max_retries,
            "retry_timeout": timedelta(seconds=self.retry_timeout_s),
            "backoff": {
                "init_backoff": timedelta(milliseconds=200),
                "max_backoff": timedelta(seconds=20),
                "base": 2,
            },
        }


TRANSPORT_OPTIONS = frozenset({"endpoint", "ca_bundle", "insecure_skip_tls_verify", "retry_timeout"})
_MAX_RETRY_TIMEOUT_S = 3600.0  # an hour of retrying one request is the most that makes sense


def _retry_timeout(text: str | None) -> float:
    if text is None:
        return Transport.retry_timeout_s
    try:
        seconds = float(text)
    except ValueError:
        seconds = -1.0
    if not 1 <= seconds <= _MAX_RETRY_TIMEOUT_S:
        raise InvalidInput(f"storage option retry_timeout={text!r}: give seconds between 1 and 3600")
    return seconds


def load_credentials(
    service: str, query: Mapping[str, str], given: Credentials | None, env_file: str | None = None
) -> Credentials | None:
    """The credentials handed in memory, else the URL's ``credentials_file`` (the CLI's way), else
    the file the ``env_file`` variable names; None when there are none (the service's defaults)."""
    path = query.get("credentials_file")
    if given is not None:
        if path:
            raise InvalidInput(f"{service}: credentials were given both in memory and as credentials_file")
        return given
    path = path or (os.environ.get(env_file) if env_file else None)
    return read_credentials(service, Path(path)) if path else None


def read_credentials(service: str, path: Path) -> Credentials:
    try:
        return Credentials(path.read_bytes(), f"{service} credentials file {path}")
    except OSError as err:
        raise InvalidInput(f"cannot read {service} credentials file {path}: {err.strerror}") from err


def credentials_text(credentials: Credentials) -> str:
    try:
        return credentials.content.decode("utf-8")
    except UnicodeDecodeError:
        raise InvalidInput(f"{credentials.source}: not UTF-8 text") from None


_SHORTEST_HIDDEN = 4  # shorter strings are too common to replace (and no real key is that short)


def scrub(text: str, hidden: Iterable[str]) -> str:
    """``text`` with every credential value in ``hidden`` replaced: a service that echoes a key in
    its answer (S3's ``<AWSAccessKeyId>``) must not put it into a status, an Event or a log."""
    for value in hidden:
        if len(value) >= _SHORTEST_HIDDEN:
            text = text.replace(value, "[redacted]")
    return text


def reject_unknown_options(service: str, query: Mapping[str, str], known: frozenset[str]) -> None:
    unknown = sorted(set(query) - known)
    if unknown:
        raise InvalidInput(
            f"unknown {service} option(s) {', '.join(unknown)}; known: {', '.join(sorted(known))}"
        )


_MESSAGE_LIMIT = 400


def first_line(err: Exception) -> str:
    """obstore's message as one line without its multi-line debug dump (it ends up in a CLI error
    and a CR's status.message), keeping what the service answered (e.g. 503 ... SlowDown)."""
    text = " ".join(str(err).split("Debug source:", 1)[0].split())
    if not text:
        return type(err).__name__
    return text if len(text) <= _MESSAGE_LIMIT else text[: _MESSAGE_LIMIT - 3] + "..."


def translate_common(err: Exception, what: str, no_bucket_code: str) -> Exception:
    """obstore's error classes (and the builtin OSErrors some calls raise) as Barge errors.

    ``no_bucket_code`` is the service's error code for a missing bucket, which obstore reports
    as a generic error on listings (and puts and lists turn "not found" into a bucket error).
    """
    if isinstance(err, obs_errors.NotFoundError | FileNotFoundError) or (
        isinstance(err, obs_errors.GenericError) and f"<Code>{no_bucket_code}</Code>" in str(err)
    ):
        return ObjectNotFound(f"{what}: not found")
    if isinstance(err, obs_errors.AlreadyExistsError | obs_errors.PreconditionError | FileExistsError):
        return ObjectExists(f"{what}: already exists")
    if isinstance(err, obs_errors.PermissionDeniedError | obs_errors.UnauthenticatedError | PermissionError):
        return PermanentError(
            f"{what}: access denied by the object store; check the credentials ({first_line(err)})"
        )
    return TemporaryError(f"{what}: object store error after retries: {first_line(err)}")


def open_obstore(
    service: str,
    factory: Callable[..., CloudStore],
    bucket: str,
    prefix: str,
    *,
    config: Mapping[str, object],
    transport: Transport,
    hidden: tuple[str, ...] = (),
) -> CloudStore:
    """The obstore store for ``bucket``/``prefix``; a configuration obstore rejects is bad input
    (``hidden``: the credential values, kept out of the message)."""
    try:
        return factory(
            bucket,
            prefix=prefix or None,
            config=config,
            client_options=transport.client_config(),
            retry_config=transport.retry_config(),
        )
    except (obs_errors.BaseError, ValueError) as err:
        text = first_line(err)
        cause = None if scrub(text, hidden) != text else err
        raise InvalidInput(f"invalid {service} configuration: {scrub(text, hidden)}") from cause


def looks_like_md5(etag: str) -> bool:
    """S3 single-part uploads and GCS non-composite objects use the content MD5 as ETag."""
    return len(etag) == 32 and all(c in "0123456789abcdef" for c in etag.lower())


class CloudObjectStore:
    """The ``ObjectStore`` operations on an obstore store, with verified puts."""

    # Whether the service reads "the last N bytes" in one request; without it, a tail read is a
    # stat then a range (object_store refuses suffix ranges for Azure).
    suffix_ranges = True

    def __init__(
        self, store: CloudStore, description: str, translate: Translate, hidden: tuple[str, ...] = ()
    ) -> None:
        self._store = store
        self._description = description
        self._translate_error = translate
        self._hidden = hidden

    def _translate(self, err: Exception, what: str) -> Exception:
        """The backend's translation, with credential values scrubbed from the message."""
        error = self._translate_error(err, what)
        clean = scrub(str(error), self._hidden)
        return error if clean == str(error) else type(error)(clean)

    def _cause(self, err: Exception) -> Exception | None:
        """The library's error as the cause of Barge's, unless its text holds a credential (a logged
        traceback prints the cause)."""
        return err if scrub(str(err), self._hidden) == str(err) else None

    def describe(self) -> str:
        return self._description

    def put(self, key: str, data: bytes | memoryview, *, overwrite: bool = False) -> None:
        payload = bytes(data)
        try:
            result = obstore.put(
                self._store, key, payload, mode="overwrite" if overwrite else "create", use_multipart=False
            )
        except Exception as err:
            raise self._no_bucket_if_not_found(self._translate(err, f"put {key}")) from self._cause(err)
        self._verify_put(key, payload, (result.get("e_tag") or "").strip('"'))

    def _verify_put(self, key: str, payload: bytes, etag: str) -> None:
        """Proof the service holds what was sent: the MD5 ETag where it has one, else the size."""
        if looks_like_md5(etag):
            if etag.lower() != hashlib.md5(payload, usedforsecurity=False).hexdigest():
                raise TemporaryError(
                    f"put {key}: the store's ETag does not match what was sent (corrupted in transit)"
                )
        elif self.stat(key).size != len(payload):
            raise TemporaryError(f"put {key}: stored size differs from what was sent")

    def _no_bucket_if_not_found(self, error: Exception) -> Exception:
        """A put or list can only be "not found" when the bucket (container) itself is missing."""
        if isinstance(error, ObjectNotFound):
            return PermanentError(
                f"{self.describe()}: the bucket or container does not exist; create it first ({error})"
            )
        return error

    def get(self, key: str) -> bytes:
        try:
            return bytes(obstore.get(self._store, key).bytes())
        except Exception as err:
            raise self._translate(err, f"get {key}") from self._cause(err)

    def get_range(self, key: str, offset: int, length: int) -> bytes:
        if offset < 0 and not self.suffix_ranges:
            offset = max(0, self.stat(key).size + offset)
        try:
            if offset < 0:
                tail = obstore.get(self._store, key, options={"range": {"suffix": -offset}})
                return bytes(tail.bytes())[:length]
            return bytes(obstore.get_range(self._store, key, start=offset, length=length))
        except Exception as err:
            raise self._translate(err, f"get {key} [{offset}:+{length}]") from self._cause(err)

    def stat(self, key: str) -> ObjectInfo:
        try:
            meta = obstore.head(self._store, key)
        except Exception as err:
            raise self._translate(err, f"stat {key}") from self._cause(err)
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
            raise self._no_bucket_if_not_found(self._translate(err, f"list {prefix}")) from self._cause(err)
        yield from sorted(found, key=lambda info: info.key)

    def folders(self, prefix: str) -> tuple[str, ...]:
        directory = prefix.rstrip("/")
        try:
            found = obstore.list_with_delimiter(self._store, prefix=directory or None)
        except Exception as err:
            raise self._no_bucket_if_not_found(self._translate(err, f"list {prefix}")) from err
        base = f"{directory}/" if directory else ""
        return tuple(sorted(p.removeprefix(base) for p in found["common_prefixes"]))

    def delete(self, key: str) -> None:
        try:
            obstore.delete(self._store, key)
        except (obs_errors.NotFoundError, FileNotFoundError):
            return
        except Exception as err:
            raise self._translate(err, f"delete {key}") from self._cause(err)
