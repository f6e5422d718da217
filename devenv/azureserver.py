"""A real Azure Blob emulator (Azurite, installed from npm by ``hack/install-azurite.sh``) on
loopback, for tests. It runs with a random account name and key, telemetry off.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import http.client
import os
import secrets
from dataclasses import dataclass
from email.utils import formatdate

from barge.errors import TemporaryError
from devenv.processes import ServerProcess, TemporaryServer, free_port, http_answers
from devenv.tools import tool_path

_START_TIMEOUT = 60.0
_API_VERSION = "2021-08-06"


@dataclass(frozen=True)
class AzureEndpoint:
    url: str  # the account's blob endpoint, path style: http://127.0.0.1:PORT/ACCOUNT
    account: str
    key: str  # base64, as Azure shows account keys

    def create_container(self, name: str) -> None:
        """One Shared Key signed ``Create Container`` request (obstore cannot create containers)."""
        host_port, account_path = self.url.removeprefix("http://").split("/", 1)
        host, port = host_port.split(":")
        path = f"/{account_path}/{name}"
        date = formatdate(usegmt=True)
        standard_headers = [""] * 11  # Content-Encoding ... Range: none on this request
        signed = "\n".join(
            [
                "PUT",
                *standard_headers,
                f"x-ms-date:{date}\nx-ms-version:{_API_VERSION}",
                f"/{self.account}{path}\nrestype:container",
            ]
        )
        signature = hmac.new(base64.b64decode(self.key), signed.encode(), hashlib.sha256).digest()
        conn = http.client.HTTPConnection(host, int(port), timeout=10)
        try:
            conn.request(
                "PUT",
                f"{path}?restype=container",
                headers={
                    "x-ms-date": date,
                    "x-ms-version": _API_VERSION,
                    "Authorization": f"SharedKey {self.account}:{base64.b64encode(signature).decode()}",
                    "Content-Length": "0",
                },
            )
            response = conn.getresponse()
            body = response.read()
        finally:
            conn.close()
        if response.status != 201:
            raise TemporaryError(f"creating container {name}: HTTP {response.status}: {body[:300]!r}")


class LocalAzureServer(TemporaryServer[AzureEndpoint]):
    """Starts Azurite's blob service on a temporary directory."""

    name = "azure"

    def start(self) -> AzureEndpoint:
        port = free_port()
        account = f"barge{secrets.token_hex(4)}"
        key = base64.b64encode(secrets.token_bytes(32)).decode()
        self.process = ServerProcess(
            "azurite",
            [
                str(tool_path("azurite-blob", installer="bash hack/install-azurite.sh")),
                "--blobHost",
                "127.0.0.1",
                "--blobPort",
                str(port),
                "--location",
                str(self.workdir / "data"),
                "--disableTelemetry",
                "--silent",
            ],
            self.workdir / "azurite.log",
            env={**os.environ, "AZURITE_ACCOUNTS": f"{account}:{key}"},
        )
        self.process.start()
        self.process.wait_ready(lambda: http_answers("127.0.0.1", port), _START_TIMEOUT, "ready")
        return AzureEndpoint(f"http://127.0.0.1:{port}/{account}", account, key)
