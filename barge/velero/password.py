"""The repository password: where it may come from, and the one it must never be.

Velero fills its ``velero-repo-credentials`` Secret with a static password published in its source
(``pkg/repository/keys/keys.go``: ``encryptionKey = "static-passw0rd"``) whenever the Secret is
missing at server start, so a repository encrypted with it is readable by anyone who can read the
bucket. Barge refuses it unless the operator says the repositories already use it (and then
migrates them: operator guide, "The repository password"). Pure.
"""

from __future__ import annotations

import secrets
from dataclasses import dataclass

from barge.errors import InvalidInput

VELERO_DEFAULT_PASSWORD = b"static-passw0rd"  # Velero's published default: refused
GENERATED_PASSWORD_BYTES = 32  # 256 bits: the master keys' own strength


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

    def describe(self, namespace: str) -> str:
        return f"Secret {namespace}/{self.name} key {self.key}"


# The Secret the chart names by default; the coordinator creates it with a generated password.
DEFAULT_PASSWORD_SECRET = SecretKey("barge-repository-password", "repository-password")


def check_repository_password(password: bytes, where: str, *, allow_velero_default: bool) -> bytes:
    """``password`` if Barge may use it; ``where`` names the Secret and key for the message."""
    if not password.strip():
        raise InvalidInput(f"the repository password in {where} is empty: put a strong password there")
    if password.rstrip(b"\r\n") == VELERO_DEFAULT_PASSWORD and not allow_velero_default:
        raise InvalidInput(
            f"the repository password in {where} is Velero's published default, which anyone can use "
            "to decrypt the backups: point the chart's config.repositoryPasswordSecret at a Secret "
            "with a strong password (or let Barge generate one), or, for repositories already "
            "created with the default, set config.repositoryPasswordSecret.allowVeleroDefault=true "
            "until they are migrated (docs/operator-guide.md, 'The repository password')"
        )
    return password


def generate_password() -> str:
    """A new random repository password (URL-safe text, so it survives copy and paste)."""
    return secrets.token_urlsafe(GENERATED_PASSWORD_BYTES)
