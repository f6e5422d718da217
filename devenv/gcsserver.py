"""A real GCS emulator (fake-gcs-server, built from pinned Go modules) on loopback, for tests.

The wrapper in ``hack/tools/fake-gcs-server`` adds the XML API upload upstream lacks; see its
``main.go``. The server ignores credentials, but the endpoint still comes with a genuine
service-account key file so the client's JWT signing path runs as it does against GCS.
"""

from __future__ import annotations

import http.client
import json
from dataclasses import dataclass
from pathlib import Path

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa

from barge.errors import TemporaryError
from devenv.processes import ServerProcess, TemporaryServer, free_port, http_ok
from devenv.tools import tool_path

_START_TIMEOUT = 60.0


@dataclass(frozen=True)
class GCSEndpoint:
    url: str
    credentials_file: Path  # a service-account key (JSON) with a fresh RSA key

    def create_bucket(self, name: str) -> None:
        """Through the JSON API (``objects`` calls go through the XML API, as Barge's client does)."""
        host, port = self.url.removeprefix("http://").split(":")
        conn = http.client.HTTPConnection(host, int(port), timeout=10)
        try:
            conn.request(
                "POST", "/storage/v1/b", json.dumps({"name": name}), {"Content-Type": "application/json"}
            )
            response = conn.getresponse()
            body = response.read()
        finally:
            conn.close()
        if response.status != 200:
            raise TemporaryError(f"creating bucket {name}: HTTP {response.status}: {body[:200]!r}")


def write_service_account_key(path: Path) -> Path:
    """A key file in the format GCS issues (and Velero's GCP plugin takes), with a new RSA key."""
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    pem = key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    ).decode()
    document = {
        "type": "service_account",
        "project_id": "barge-test",
        "private_key_id": "barge-test-key",
        "private_key": pem,
        "client_email": "barge-test@barge-test.iam.gserviceaccount.com",
        "client_id": "1",
        "token_uri": "https://oauth2.googleapis.com/token",
    }
    path.write_text(json.dumps(document))
    path.chmod(0o600)
    return path


class LocalGCSServer(TemporaryServer[GCSEndpoint]):
    """Starts fake-gcs-server (objects on disk) in a temporary directory."""

    name = "gcs"

    def start(self) -> GCSEndpoint:
        port = free_port()
        self.process = ServerProcess(
            "fake-gcs-server",
            [
                str(tool_path("fake-gcs-server")),
                "-host",
                "127.0.0.1",
                "-port",
                str(port),
                "-filesystem-root",
                str(self.workdir / "data"),
            ],
            self.workdir / "fake-gcs-server.log",
        )
        self.process.start()
        self.process.wait_ready(
            lambda: http_ok("127.0.0.1", port, "/_internal/healthcheck"), _START_TIMEOUT, "ready"
        )
        key = write_service_account_key(self.workdir / "service-account.json")
        return GCSEndpoint(f"http://127.0.0.1:{port}", key)
