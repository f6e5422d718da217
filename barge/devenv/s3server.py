"""A real S3 server (MinIO, built from pinned Go modules) on loopback, for tests and ``barge demo``."""

from __future__ import annotations

import os
import secrets
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType

from barge.devenv.processes import ServerProcess, free_port, http_ok
from barge.devenv.tools import tool_path

_START_TIMEOUT = 60.0


@dataclass(frozen=True)
class S3Endpoint:
    url: str
    access_key: str
    secret_key: str
    region: str = "us-east-1"


class LocalS3Server:
    """Starts MinIO on a temporary directory; stops it and removes the directory."""

    def __init__(self, workdir: Path | None = None) -> None:
        self._own_workdir = workdir is None
        self.workdir = workdir or Path(tempfile.mkdtemp(prefix="barge-s3-"))
        self.process: ServerProcess | None = None
        self.endpoint: S3Endpoint | None = None

    def __enter__(self) -> S3Endpoint:
        try:
            return self.start()
        except BaseException:
            self.stop()
            raise

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

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
        self.endpoint = S3Endpoint(f"http://127.0.0.1:{port}", access_key, secret_key)
        return self.endpoint

    def stop(self) -> None:
        if self.process is not None:
            self.process.stop()
        if self._own_workdir:
            shutil.rmtree(self.workdir, ignore_errors=True)
