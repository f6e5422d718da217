"""The repository password: Velero's published default refused, a generated one created once."""

from __future__ import annotations

from typing import Any

import pytest

from barge.errors import Conflict, InvalidInput
from barge.velero.password import SecretKey, check_repository_password, generate_password
from coordinator.repository_password import ensure_repository_password

WHERE = "Secret velero/velero-repo-credentials key repository-password"


@pytest.mark.parametrize("password", [b"static-passw0rd", b"static-passw0rd\n"])
def test_veleros_default_is_refused_with_what_to_do(password: bytes) -> None:
    with pytest.raises(InvalidInput, match=f"{WHERE} is Velero's published default") as raised:
        check_repository_password(password, WHERE, allow_velero_default=False)
    assert "config.repositoryPasswordSecret" in str(raised.value)
    assert "static-passw0rd" not in str(raised.value)
    assert check_repository_password(password, WHERE, allow_velero_default=True) == password


@pytest.mark.parametrize("password", [b"", b"  \n"])
def test_an_empty_password_is_refused_even_when_the_default_is_accepted(password: bytes) -> None:
    with pytest.raises(InvalidInput, match=f"{WHERE} is empty"):
        check_repository_password(password, WHERE, allow_velero_default=True)


def test_generated_passwords_are_long_and_never_repeat() -> None:
    passwords = {generate_password() for _ in range(100)}
    assert len(passwords) == 100
    assert min(len(p) for p in passwords) >= 43  # 32 random bytes, URL-safe base64


class Secrets:
    """The API server's create-only answer: 409 when the name is taken."""

    def __init__(self) -> None:
        self.stored: dict[str, dict[str, Any]] = {}

    def create(self, body: dict[str, Any]) -> dict[str, Any]:
        name = body["metadata"]["name"]
        if name in self.stored:
            raise Conflict(f'secrets "{name}" already exists')
        self.stored[name] = body
        return body


def test_the_password_secret_is_generated_once_and_never_replaced() -> None:
    secrets = Secrets()
    ref = SecretKey("barge-repository-password", "repository-password")
    assert ensure_repository_password(secrets.create, "velero", ref) is True
    first = secrets.stored["barge-repository-password"]
    assert first["metadata"]["namespace"] == "velero"
    assert "ownerReferences" not in first["metadata"]  # outlives the release
    password = first["stringData"]["repository-password"]
    assert len(password) >= 43
    assert ensure_repository_password(secrets.create, "velero", ref) is False
    assert secrets.stored["barge-repository-password"]["stringData"]["repository-password"] == password
