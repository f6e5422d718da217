"""A real S3 server (MinIO, built from pinned Go modules) on loopback, for tests and the demo."""

from __future__ import annotations

import os
import secrets
import shutil
import ssl
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from devenv.pki import make_serving_pki
from devenv.processes import ServerProcess, TemporaryServer, free_port, http_ok, namespace_port
from devenv.tools import tool_path

_START_TIMEOUT = 60.0


@dataclass(frozen=True)
class S3Endpoint:
    url: str
    access_key: str
    secret_key: str
    region: str = "us-east-1"
    ca_cert_pem: bytes | None = None  # set when the server speaks HTTPS with a private CA


class LocalS3Server(TemporaryServer[S3Endpoint]):
    """Starts MinIO on a temporary directory; stops it and removes the directory.

    ``tls=True``: HTTPS with a certificate for 127.0.0.1 from a throw-away CA (``ca_cert_pem``).
    ``address`` and ``command_prefix``: where else to serve, e.g. a real node's address from inside
    its network namespace (``RealNode.namespace.enter()``), where its pods reach it too."""

    name = "s3"

    def __init__(
        self,
        workdir: Path | None = None,
        *,
        tls: bool = False,
        address: str = "127.0.0.1",
        command_prefix: Sequence[str] = (),
    ) -> None:
        super().__init__(workdir)
        self.tls = tls
        self.address = address
        self.command_prefix = list(command_prefix)

    def start(self) -> S3Endpoint:
        pick = namespace_port if self.command_prefix else free_port
        port, console_port = pick(), pick()
        access_key, secret_key = "barge-test", secrets.token_hex(16)
        data = self.workdir / "data"
        data.mkdir(parents=True, exist_ok=True)
        certs = self.workdir / "certs"
        tls_args, ca_pem, context = self._tls(certs)
        env = {
            **os.environ,
            "MINIO_ROOT_USER": access_key,
            "MINIO_ROOT_PASSWORD": secret_key,
            "MINIO_BROWSER": "off",
            "MINIO_UPDATE": "off",
            "MINIO_CALLHOME_ENABLE": "off",
        }
        self.process = ServerProcess(
            "minio",
            [
                *self.command_prefix,
                str(tool_path("minio")),
                "server",
                "--quiet",
                "--address",
                f"{self.address}:{port}",
                "--console-address",
                f"{self.address}:{console_port}",
                *tls_args,
                str(data),
            ],
            self.workdir / "minio.log",
            env=env,
        )
        self.process.start()
        self.process.wait_ready(
            lambda: http_ok(self.address, port, "/minio/health/ready", context), _START_TIMEOUT, "ready"
        )
        scheme = "https" if self.tls else "http"
        return S3Endpoint(f"{scheme}://{self.address}:{port}", access_key, secret_key, ca_cert_pem=ca_pem)

    def _tls(self, certs: Path) -> tuple[list[str], bytes | None, ssl.SSLContext | None]:
        """MinIO's ``--certs-dir`` layout (public.crt + private.key), or nothing for plain HTTP."""
        if not self.tls:
            return [], None, None
        pki = make_serving_pki(self.workdir / "pki", "barge-test-s3")
        certs.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(pki.serving.cert_path, certs / "public.crt")
        shutil.copyfile(pki.serving.key_path, certs / "private.key")
        context = ssl.create_default_context(cafile=str(pki.ca.cert_path))
        return ["--certs-dir", str(certs)], pki.ca.cert_path.read_bytes(), context
