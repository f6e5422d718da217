"""Opening an assignment's repository from its BackupStorageLocation and Secrets."""

from __future__ import annotations

import base64
from pathlib import Path
from typing import Any

import pytest

from agent.repositories import BslRepositories, remove_stale_credentials
from barge.clock import ManualClock
from barge.control.messages import Assignment, AssignmentKind, CrRef, VolumeMode
from barge.errors import InvalidInput, NotFound, PermissionDenied
from barge.repo.crypto import KdfParams, WrongPassword
from barge.repo.pack import BlobType
from barge.repo.repository import Repository
from barge.storage import Credentials
from barge.storage.local import LocalDirectoryStore
from barge.velero.password import SecretKey


def objects(tmp_path: Path) -> tuple[dict[str, Any], dict[str, Any]]:
    bsls = {
        "default": {
            "metadata": {"name": "default"},
            "spec": {"provider": "barge.io/local", "objectStorage": {"bucket": "b"},
                     "config": {"path": str(tmp_path / "store")}},
        }
    }  # fmt: skip
    secrets = {"velero-repo-credentials": {"data": {"repository-password": base64.b64encode(b"pw").decode()}}}
    return bsls, secrets


def getter(table: dict[str, Any]) -> Any:
    def get(namespace: str, name: str) -> dict[str, Any]:
        if name not in table:
            raise NotFound(name)
        return dict(table[name])

    return get


def assignment(bsl: str = "default") -> Assignment:
    cr = CrRef("DataUpload", "velero", "du", "uid")
    return Assignment("uid", 1, AssignmentKind.UPLOAD, cr, "pod", "pv", VolumeMode.FILESYSTEM, bsl, "shop")


def opener(
    tmp_path: Path, bsls: dict[str, Any], secrets: dict[str, Any], allow_velero_default: bool = False
) -> BslRepositories:
    return BslRepositories(
        get_bsl=getter(bsls), get_secret=getter(secrets),
        password_secret=SecretKey("velero-repo-credentials", "repository-password"),
        clock=ManualClock(), allow_velero_default_password=allow_velero_default,
    )  # fmt: skip


def test_first_use_creates_the_repository_then_it_is_reused(tmp_path: Path) -> None:
    bsls, secrets = objects(tmp_path)
    first = opener(tmp_path, bsls, secrets).open(assignment())
    again = opener(tmp_path, bsls, secrets).open(assignment())
    assert first.config.repository_id == again.config.repository_id
    assert (tmp_path / "store" / "b" / "plugins" / "barge" / "shop" / "config").exists()


def test_an_opened_repository_keeps_its_index_in_the_cache_dir(tmp_path: Path) -> None:
    bsls, secrets = objects(tmp_path)
    repos = BslRepositories(
        get_bsl=getter(bsls), get_secret=getter(secrets), clock=ManualClock(), cache_dir=tmp_path / "cache",
        password_secret=SecretKey("velero-repo-credentials", "repository-password"),
    )  # fmt: skip
    created = repos.open(assignment())
    with created.writer() as writer:
        writer.add_blob(BlobType.DATA, b"some data")
    repo = repos.open(assignment())
    assert list((tmp_path / "cache" / "index" / repo.config.repository_id).glob("layer-*"))


def test_a_repository_at_the_legacy_location_is_reported_not_forked(tmp_path: Path) -> None:
    """Before the plugins/ layout Barge wrote <prefix>/barge/<ns>: say how to move it, create nothing."""
    bsls, secrets = objects(tmp_path)
    legacy = tmp_path / "store" / "b" / "barge" / "shop"
    Repository.init(LocalDirectoryStore(legacy), b"pw", clock=ManualClock())
    with pytest.raises(InvalidInput, match=r"legacy location .*barge/shop.*barge repo move"):
        opener(tmp_path, bsls, secrets).open(assignment())
    assert not (tmp_path / "store" / "b" / "plugins" / "barge" / "shop" / "config").exists()


def test_the_credential_and_ca_bundle_reach_the_store_in_memory_only(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Both Secrets are read from Velero's namespace and handed over as values: no file anywhere,
    no secret in the URL, and messages name the Secret, not its content."""
    bsls, secrets = objects(tmp_path)
    bsls["default"]["spec"] = {
        "provider": "aws",
        "objectStorage": {"bucket": "b", "caCertRef": {"name": "store-ca", "key": "ca.crt"}},
        "config": {"s3Url": "https://minio.example:9000"},
        "credential": {"name": "cloud-credentials", "key": "cloud"},
    }
    secrets["store-ca"] = {"data": {"ca.crt": base64.b64encode(b"-----BEGIN CERTIFICATE-----").decode()}}
    secrets["cloud-credentials"] = {"data": {"cloud": base64.b64encode(b"[default]\nkey=SECRET\n").decode()}}
    calls: list[tuple[str, Credentials | None, bytes | None]] = []

    def open_store(url: str, credentials: Credentials | None, ca_bundle: bytes | None) -> LocalDirectoryStore:
        calls.append((url, credentials, ca_bundle))  # the S3 store, kept on disk here
        return LocalDirectoryStore(tmp_path / "store" / str(len(calls)))

    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr("agent.repositories.open_store", open_store)
    opener(tmp_path, bsls, secrets).open(assignment())
    assert {(c.content, c.source) for _, c, _ in calls if c} == {
        (b"[default]\nkey=SECRET\n", "BackupStorageLocation default credential "
         "(Secret velero/cloud-credentials key cloud)")
    }  # fmt: skip
    assert {bundle for _, _, bundle in calls} == {b"-----BEGIN CERTIFICATE-----"}
    assert not any("SECRET" in url or "credentials_file" in url for url, _, _ in calls)
    files = [p for p in tmp_path.rglob("*") if p.is_file()]
    assert not [p for p in files if b"SECRET" in p.read_bytes()]


def test_credential_files_an_earlier_release_left_in_the_cache_are_removed(tmp_path: Path) -> None:
    stale = tmp_path / "cache" / "credentials"
    stale.mkdir(parents=True)
    (stale / "s3-credentials-0123456789abcdef").write_text("[default]\naws_secret_access_key=x\n")
    (tmp_path / "cache" / "other").write_text("kept")
    remove_stale_credentials(tmp_path / "cache")
    assert [p.name for p in (tmp_path / "cache").iterdir()] == ["other"]
    remove_stale_credentials(tmp_path / "nothing-there")


def test_velero_published_default_password_is_refused_unless_accepted(tmp_path: Path) -> None:
    """Velero fills velero-repo-credentials with a static password from its source code."""
    bsls, secrets = objects(tmp_path)
    default = base64.b64encode(b"static-passw0rd").decode()
    secrets["velero-repo-credentials"] = {"data": {"repository-password": default}}
    with pytest.raises(InvalidInput, match=r"Secret velero/velero-repo-credentials key repository-password "
                       r"is Velero's published default.*allowVeleroDefault=true"):  # fmt: skip
        opener(tmp_path, bsls, secrets).open(assignment())
    assert not (tmp_path / "store").exists()  # nothing created with it
    repo = opener(tmp_path, bsls, secrets, allow_velero_default=True).open(assignment())
    assert repo.config.repository_id


def test_a_repository_made_with_another_password_names_the_secret_to_fix(tmp_path: Path) -> None:
    bsls, secrets = objects(tmp_path)
    store = LocalDirectoryStore(tmp_path / "store" / "b" / "plugins" / "barge" / "shop")
    Repository.init(store, b"saved", kdf=KdfParams.for_tests())
    with pytest.raises(WrongPassword, match="another password than the one in Secret velero/velero-repo-"
                       "credentials key repository-password: put the saved password there"):  # fmt: skip
        opener(tmp_path, bsls, secrets).open(assignment())


def test_a_secret_the_agents_may_not_read_says_which_value_grants_it(tmp_path: Path) -> None:
    bsls, secrets = objects(tmp_path)
    bsls["default"]["spec"]["credential"] = {"name": "team-creds", "key": "cloud"}

    def forbidden(namespace: str, name: str) -> dict[str, Any]:
        if name == "team-creds":
            raise PermissionDenied(f'secrets "{name}" is forbidden')
        return dict(secrets[name])

    repos = BslRepositories(
        get_bsl=getter(bsls), get_secret=forbidden, clock=ManualClock(),
        password_secret=SecretKey("velero-repo-credentials", "repository-password"),
    )  # fmt: skip
    with pytest.raises(PermissionDenied, match=r"may not read Secret velero/team-creds; add team-creds to "
                       r"the chart value rbac\.agentSecrets"):  # fmt: skip
        repos.open(assignment())


@pytest.mark.parametrize(
    ("change", "error", "message"),
    [
        ("no-bsl", NotFound, "BackupStorageLocation velero/missing does not exist"),
        (
            "no-password",
            NotFound,
            "repository password: Secret velero/velero-repo-credentials does not exist",
        ),
        ("wrong-key", InvalidInput, "has no key 'repository-password'"),
        ("no-credential-secret", NotFound, "BackupStorageLocation default credential: Secret velero/creds"),
        ("no-ca-secret", NotFound, r"BackupStorageLocation default CA bundle \(caCertRef\): Secret velero/"),
        ("ca-secret-without-key", InvalidInput, r"CA bundle \(caCertRef\): .* has no key 'ca.crt'"),
        ("both-ca-forms", InvalidInput, "has both caCert and caCertRef; keep only caCertRef"),
    ],
)
def test_missing_pieces_say_which(tmp_path: Path, change: str, error: type[Exception], message: str) -> None:
    bsls, secrets = objects(tmp_path)
    name = "default"
    if change == "no-bsl":
        name = "missing"
    elif change == "no-password":
        secrets.clear()
    elif change == "wrong-key":
        secrets["velero-repo-credentials"] = {"data": {"other": ""}}
    elif change == "no-credential-secret":
        bsls["default"]["spec"]["credential"] = {"name": "creds", "key": "cloud"}
    else:
        storage = bsls["default"]["spec"]["objectStorage"]
        storage["caCertRef"] = {"name": "ca", "key": "ca.crt"}
        if change == "ca-secret-without-key":
            secrets["ca"] = {"data": {"tls.crt": ""}}
        elif change == "both-ca-forms":
            storage["caCert"] = base64.b64encode(b"PEM").decode()
    with pytest.raises(error, match=message):
        opener(tmp_path, bsls, secrets).open(assignment(name))
