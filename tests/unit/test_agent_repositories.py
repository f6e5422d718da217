"""Opening an assignment's repository from its BackupStorageLocation and Secrets."""

from __future__ import annotations

import base64
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

import pytest

from agent.repositories import BslRepositories, SecretKey
from barge.clock import ManualClock
from barge.control.messages import Assignment, AssignmentKind, CrRef, VolumeMode
from barge.errors import InvalidInput, NotFound
from barge.repo.repository import Repository
from barge.storage.local import LocalDirectoryStore


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


def opener(tmp_path: Path, bsls: dict[str, Any], secrets: dict[str, Any]) -> BslRepositories:
    return BslRepositories(
        get_bsl=getter(bsls), get_secret=getter(secrets),
        password_secret=SecretKey("velero-repo-credentials", "repository-password"),
        cache_dir=tmp_path / "cache", clock=ManualClock(),
    )  # fmt: skip


def test_first_use_creates_the_repository_then_it_is_reused(tmp_path: Path) -> None:
    bsls, secrets = objects(tmp_path)
    first = opener(tmp_path, bsls, secrets).open(assignment())
    again = opener(tmp_path, bsls, secrets).open(assignment())
    assert first.config.repository_id == again.config.repository_id
    assert (tmp_path / "store" / "b" / "plugins" / "barge" / "shop" / "config").exists()


def test_a_repository_at_the_legacy_location_is_reported_not_forked(tmp_path: Path) -> None:
    """Before the plugins/ layout Barge wrote <prefix>/barge/<ns>: say how to move it, create nothing."""
    bsls, secrets = objects(tmp_path)
    legacy = tmp_path / "store" / "b" / "barge" / "shop"
    Repository.init(LocalDirectoryStore(legacy), b"pw", clock=ManualClock())
    with pytest.raises(InvalidInput, match=r"legacy location .*barge/shop.*barge repo move"):
        opener(tmp_path, bsls, secrets).open(assignment())
    assert not (tmp_path / "store" / "b" / "plugins" / "barge" / "shop" / "config").exists()


def test_credentials_are_written_privately(tmp_path: Path) -> None:
    bsls, secrets = objects(tmp_path)
    repos = opener(tmp_path, bsls, secrets)
    path = repos._materialize("s3-credentials", b"[default]\n")
    assert path.read_bytes() == b"[default]\n"
    assert path.stat().st_mode & 0o777 == 0o600
    assert repos._materialize("s3-credentials", b"[default]\n") == path


def test_the_ca_bundle_comes_from_the_secret_ca_cert_ref_names(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The Secret is read from Velero's namespace, like the credential, and written privately."""
    bsls, secrets = objects(tmp_path)
    bsls["default"]["spec"] = {
        "provider": "aws",
        "objectStorage": {"bucket": "b", "caCertRef": {"name": "store-ca", "key": "ca.crt"}},
        "config": {"s3Url": "https://minio.example:9000"},
    }
    secrets["store-ca"] = {"data": {"ca.crt": base64.b64encode(b"-----BEGIN CERTIFICATE-----").decode()}}
    urls: list[str] = []

    def open_store(url: str) -> LocalDirectoryStore:  # the S3 store, kept on disk here
        urls.append(url)
        return LocalDirectoryStore(tmp_path / "store" / str(len(urls)))

    monkeypatch.setattr("agent.repositories.open_store", open_store)
    opener(tmp_path, bsls, secrets).open(assignment())
    (bundle,) = {parse_qs(urlsplit(url).query)["ca_bundle"][0] for url in urls}
    assert Path(bundle).read_bytes() == b"-----BEGIN CERTIFICATE-----"
    assert Path(bundle).stat().st_mode & 0o777 == 0o600


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
