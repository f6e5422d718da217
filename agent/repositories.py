"""Opening the repository an assignment writes to: BackupStorageLocation + Secrets -> Repository.

The agent reads the BSL and the Secrets it names (``spec.credential``,
``spec.objectStorage.caCertRef``) from Velero's namespace (as Velero does), writes credentials and
CA bundles into private files under its cache directory, and opens the repository, creating it on
first use. Two agents may race to create the same repository: creation is create-only in every
backend, so the loser simply opens what the winner made.
"""

from __future__ import annotations

import base64
import hashlib
import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import structlog

from barge.clock import Clock
from barge.control.messages import Assignment
from barge.errors import InvalidInput, NotFound, TemporaryError
from barge.repo.repository import Repository, RepositoryNotFound, RepositorySettings
from barge.storage.url import open_store
from barge.velero.bsl import LEGACY_ROOT, ca_cert_ref, repository_url

log = structlog.get_logger("barge.agent")

ObjectGetter = Callable[[str, str], dict[str, Any]]  # (namespace, name) -> object; raises NotFound


@dataclass(frozen=True)
class SecretKey:
    name: str
    key: str

    @classmethod
    def parse(cls, text: str) -> SecretKey:
        name, sep, key = text.partition("/")
        if not sep or not name or not key:
            raise InvalidInput(f"secret reference {text!r}: use NAME/KEY")
        return cls(name, key)


def secret_value(get_secret: ObjectGetter, namespace: str, ref: SecretKey, purpose: str) -> bytes:
    try:
        secret = get_secret(namespace, ref.name)
    except NotFound:
        raise NotFound(f"{purpose}: Secret {namespace}/{ref.name} does not exist") from None
    data = secret.get("data") or {}
    if ref.key not in data:
        raise InvalidInput(f"{purpose}: Secret {namespace}/{ref.name} has no key {ref.key!r}")
    return base64.b64decode(data[ref.key])


class BslRepositories:
    """Implements the runner's ``RepositoryOpener``."""

    def __init__(
        self,
        *,
        get_bsl: ObjectGetter,
        get_secret: ObjectGetter,
        password_secret: SecretKey,
        cache_dir: Path,
        clock: Clock,
        settings: RepositorySettings | None = None,
    ) -> None:
        self._settings = settings or RepositorySettings()
        self._get_bsl = get_bsl
        self._get_secret = get_secret
        self._password_secret = password_secret
        self._files = cache_dir / "credentials"
        self._clock = clock

    def open(self, assignment: Assignment) -> Repository:
        namespace = assignment.cr.namespace
        bsl = self._bsl(namespace, assignment.backup_storage_location)
        credential = self._credential(namespace, bsl)
        ca_cert = self._ca_cert(namespace, bsl)
        url = repository_url(bsl, assignment.source_namespace, credential, self._materialize, ca_cert=ca_cert)
        password = secret_value(self._get_secret, namespace, self._password_secret, "repository password")
        store = open_store(url)
        try:
            return Repository.open(store, password, clock=self._clock)
        except RepositoryNotFound:
            pass
        self._refuse_legacy_layout(bsl, assignment.source_namespace, credential, ca_cert)
        try:
            repo = Repository.init(store, password, self._settings, clock=self._clock)
            log.info("repository created", location=store.describe())
            return repo
        except InvalidInput:  # another agent created it a moment ago
            return Repository.open(store, password, clock=self._clock)

    def _refuse_legacy_layout(
        self, bsl: dict[str, Any], source_namespace: str, credential: bytes | None, ca_cert: bytes | None
    ) -> None:
        """A repository at the pre-``plugins/`` location must be moved, never forked by a new one."""
        legacy_url = repository_url(
            bsl, source_namespace, credential, self._materialize, ca_cert=ca_cert, root=LEGACY_ROOT
        )
        legacy = open_store(legacy_url)
        try:
            legacy.stat("config")
        except NotFound:
            return
        name = bsl.get("metadata", {}).get("name", "?")
        raise InvalidInput(
            f"BackupStorageLocation {name}: the repository for namespace {source_namespace} is at the "
            f"legacy location {legacy.describe()}, which makes Velero mark the location Unavailable; "
            f"move it with `barge repo move --repo <legacy URL> --to <new URL>` "
            f"(docs/operator-guide.md, 'Repositories from before the plugins/ layout'), then retry"
        )

    def _bsl(self, namespace: str, name: str) -> dict[str, Any]:
        try:
            return self._get_bsl(namespace, name)
        except NotFound:
            raise NotFound(f"BackupStorageLocation {namespace}/{name} does not exist") from None

    def _credential(self, namespace: str, bsl: dict[str, Any]) -> bytes | None:
        ref = (bsl.get("spec") or {}).get("credential")
        if not ref:
            return None  # the agent's own environment (e.g. IRSA, workload identity) applies
        key = SecretKey(str(ref.get("name", "")), str(ref.get("key", "")))
        name = bsl.get("metadata", {}).get("name", "?")
        return secret_value(self._get_secret, namespace, key, f"BackupStorageLocation {name} credential")

    def _ca_cert(self, namespace: str, bsl: dict[str, Any]) -> bytes | None:
        """The CA bundle in the Secret ``spec.objectStorage.caCertRef`` names, if it names one."""
        ref = ca_cert_ref(bsl)
        if ref is None:
            return None  # no bundle, or the deprecated inline caCert (repository_url decodes it)
        name = bsl.get("metadata", {}).get("name", "?")
        purpose = f"BackupStorageLocation {name} CA bundle (caCertRef)"
        return secret_value(self._get_secret, namespace, SecretKey(*ref), purpose)

    def _materialize(self, purpose: str, content: bytes) -> Path:
        """A private file per distinct content: concurrent assignments never rewrite a file in use."""
        path = self._files / f"{purpose}-{hashlib.sha256(content).hexdigest()[:16]}"
        try:
            self._files.mkdir(parents=True, exist_ok=True, mode=0o700)
            if not path.exists():
                temp = path.with_suffix(f".tmp{os.getpid()}")
                fd = os.open(temp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
                with os.fdopen(fd, "wb") as out:
                    out.write(content)
                temp.replace(path)
        except OSError as err:
            raise TemporaryError(
                f"cannot write {path} (the agent's --cache-dir): {err.strerror or err}"
            ) from err
        return path
