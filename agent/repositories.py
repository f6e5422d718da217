"""Opening the repository an assignment writes to: BackupStorageLocation + Secrets -> Repository.

The agent reads the BSL and the Secrets it names (``spec.credential``,
``spec.objectStorage.caCertRef``) from Velero's namespace (as Velero does), hands the credential
and the CA bundle to the store in memory (nothing secret is ever written to the node), and opens
the repository, creating it on first use. Two agents may race to create the same repository:
creation is create-only in every backend, so the loser simply opens what the winner made.
"""

from __future__ import annotations

import base64
import shutil
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import structlog

from barge.clock import Clock
from barge.control.messages import Assignment
from barge.errors import InvalidInput, NotFound, PermissionDenied
from barge.repo.crypto import WrongPassword
from barge.repo.repository import Repository, RepositoryNotFound, RepositorySettings
from barge.storage import Credentials, ObjectStore
from barge.storage.throttle import RateLimit, throttled
from barge.storage.url import open_store
from barge.velero.bsl import LEGACY_ROOT, ca_bundle, ca_cert_ref, location_url, repository_url
from barge.velero.password import SecretKey, check_repository_password

log = structlog.get_logger("barge.agent")

ObjectGetter = Callable[[str, str], dict[str, Any]]  # (namespace, name) -> object; raises NotFound


def remove_stale_credentials(cache_dir: Path) -> None:
    """Releases before in-memory credentials wrote them under ``<cache-dir>/credentials`` on the
    node and never removed them: remove what such a release left."""
    stale = cache_dir / "credentials"
    if stale.exists():
        shutil.rmtree(stale, ignore_errors=True)
        log.info("removed the credential files an earlier release left in the cache", path=str(stale))


def secret_value(get_secret: ObjectGetter, namespace: str, ref: SecretKey, purpose: str) -> bytes:
    try:
        secret = get_secret(namespace, ref.name)
    except NotFound:
        raise NotFound(f"{purpose}: Secret {namespace}/{ref.name} does not exist") from None
    except PermissionDenied:
        raise PermissionDenied(
            f"{purpose}: the agents may not read Secret {namespace}/{ref.name}; add {ref.name} to the "
            "chart value rbac.agentSecrets (the Secrets the agents may read)"
        ) from None
    data = secret.get("data") or {}
    if ref.key not in data:
        raise InvalidInput(f"{purpose}: Secret {namespace}/{ref.name} has no key {ref.key!r}")
    return base64.b64decode(data[ref.key])


@dataclass(frozen=True)
class Location:
    """A BackupStorageLocation opened for maintenance of its snapshot manifests."""

    store: ObjectStore  # the location's prefix: Velero's backups/ and Barge's plugins/barge/
    # A source namespace's repository, unlocked without reading its index; None if there is none.
    repository: Callable[[str], Repository | None]


class BslRepositories:
    """Implements the runner's ``RepositoryOpener``."""

    def __init__(
        self,
        *,
        get_bsl: ObjectGetter,
        get_secret: ObjectGetter,
        password_secret: SecretKey,
        clock: Clock,
        settings: RepositorySettings | None = None,
        allow_velero_default_password: bool = False,
        cache_dir: Path | None = None,
        upload_limit: RateLimit | None = None,
    ) -> None:
        """``upload_limit``: shared by every store opened here, so it holds for the node."""
        self._settings = settings or RepositorySettings()
        self._upload_limit = upload_limit
        self._cache_dir = cache_dir  # the repositories' indexes, kept across assignments
        self._get_bsl = get_bsl
        self._get_secret = get_secret
        self._password_secret = password_secret
        self._allow_velero_default = allow_velero_default_password
        self._clock = clock

    def open(self, assignment: Assignment) -> Repository:
        namespace = assignment.cr.namespace
        bsl = self._bsl(namespace, assignment.backup_storage_location)
        credentials = self._credentials(namespace, bsl)
        bundle = ca_bundle(bsl, self._ca_cert(namespace, bsl))
        password = self._password(namespace)
        store = self._open_store(repository_url(bsl, assignment.source_namespace), credentials, bundle)
        try:
            return self._unlock(store, password, namespace)
        except RepositoryNotFound:
            pass
        legacy = self._open_store(
            repository_url(bsl, assignment.source_namespace, root=LEGACY_ROOT), credentials, bundle
        )
        self._refuse_legacy_layout(bsl, assignment.source_namespace, legacy)
        try:
            repo = Repository.init(store, password, self._settings, clock=self._clock)
            log.info("repository created", location=store.describe())
            return repo
        except InvalidInput:  # another agent created it a moment ago
            return self._unlock(store, password, namespace)

    def location(self, namespace: str, bsl_name: str) -> Location:
        """The location's stores: its own prefix (Velero's ``backups/``) and each repository's."""
        bsl = self._bsl(namespace, bsl_name)
        credentials = self._credentials(namespace, bsl)
        bundle = ca_bundle(bsl, self._ca_cert(namespace, bsl))
        password = self._password(namespace)

        def repository(source_namespace: str) -> Repository | None:
            url = repository_url(bsl, source_namespace)
            store = self._open_store(url, credentials, bundle)
            try:
                return Repository.open(store, password, clock=self._clock, with_index=False)
            except RepositoryNotFound:
                return None

        return Location(self._open_store(location_url(bsl), credentials, bundle), repository)

    def _open_store(self, url: str, credentials: Credentials | None, bundle: bytes | None) -> ObjectStore:
        return throttled(open_store(url, credentials=credentials, ca_bundle=bundle), self._upload_limit)

    def _password(self, namespace: str) -> bytes:
        ref = self._password_secret
        password = secret_value(self._get_secret, namespace, ref, "repository password")
        return check_repository_password(
            password, ref.describe(namespace), allow_velero_default=self._allow_velero_default
        )

    def _unlock(self, store: ObjectStore, password: bytes, namespace: str) -> Repository:
        try:
            return Repository.open(store, password, clock=self._clock, cache_dir=self._cache_dir)
        except WrongPassword:
            raise WrongPassword(
                f"the repository at {store.describe()} was created with another password than the one "
                f"in {self._password_secret.describe(namespace)}: put the saved password there "
                "(docs/operator-guide.md, 'The repository password')"
            ) from None

    def _refuse_legacy_layout(self, bsl: dict[str, Any], source_namespace: str, legacy: ObjectStore) -> None:
        """A repository at the pre-``plugins/`` location must be moved, never forked by a new one."""
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

    def _credentials(self, namespace: str, bsl: dict[str, Any]) -> Credentials | None:
        ref = (bsl.get("spec") or {}).get("credential")
        if not ref:
            return None  # the agent's own environment (e.g. IRSA, workload identity) applies
        key = SecretKey(str(ref.get("name", "")), str(ref.get("key", "")))
        purpose = f"BackupStorageLocation {bsl.get('metadata', {}).get('name', '?')} credential"
        content = secret_value(self._get_secret, namespace, key, purpose)
        return Credentials(content, f"{purpose} ({key.describe(namespace)})")

    def _ca_cert(self, namespace: str, bsl: dict[str, Any]) -> bytes | None:
        """The CA bundle in the Secret ``spec.objectStorage.caCertRef`` names, if it names one."""
        ref = ca_cert_ref(bsl)
        if ref is None:
            return None  # no bundle, or the deprecated inline caCert (repository_url decodes it)
        name = bsl.get("metadata", {}).get("name", "?")
        purpose = f"BackupStorageLocation {name} CA bundle (caCertRef)"
        return secret_value(self._get_secret, namespace, SecretKey(*ref), purpose)
