"""A real S3 server (MinIO, built from pinned Go modules) on loopback, for tests and ``barge demo``."""

from __future__ import annotations

import os
import secrets
from dataclasses import dataclass

from barge.devenv.processes import ServerProcess, TemporaryServer, free_port, http_ok
from barge.devenv.tools import tool_path

_START_TIMEOUT = 60.0


@dataclass(frozen=True)
class S3Endpoint:
    url: str
    access_key: str
    secret_key: str
    region: str = "us-east-1"


class LocalS3Server(TemporaryServer[S3Endpoint]):
    """Starts MinIO on a temporary directory; stops it and removes the directory."""

    name = "s3"

    def start(self) -> S3Endpoint:
        port, console_port = free_port(), free_port()
        access_key, secret_key = "barge-test", secrets.token_hex(16)
        data = self.workdir / "data"
        data.mkdir(parents=True, exist_ok=True)
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
                str(tool_path("minio")),
                "server",
                "--quiet",
                "--address",
                f"127.0.0.1:{port}",
                "--console-address",
                f"127.0.0.1:{console_port}",
                str(data),
            ],
            self.workdir / "minio.log",
            env=env,
        )
        self.process.start()
        self.process.wait_ready(
            lambda: http_ok("127.0.0.1", port, "/minio/health/ready"), _START_TIMEOUT, "ready"
        )
        return S3Endpoint(f"http://127.0.0.1:{port}", access_key, secret_key)
