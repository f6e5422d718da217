"""Barge's Azure Blob backend against the real Azure emulator (Azurite): conformance, round trip."""

from __future__ import annotations

import base64
import dataclasses
import os
import uuid
from pathlib import Path
from typing import Any

import pytest

from barge.errors import PermanentError, TemporaryError
from barge.storage.azure import AzureBlobStore, AzureOptions
from barge.storage.cloud import Transport
from barge.storage.url import open_store
from devenv.azureserver import AzureEndpoint
from devenv.processes import free_port
from tests.roundtrip import assert_repository_round_trip
from tests.storage_conformance import ObjectStoreConformance

pytestmark = pytest.mark.integration


def make_container(server: AzureEndpoint) -> str:
    name = f"barge-{uuid.uuid4().hex[:12]}"
    server.create_container(name)
    return name


def store_for(
    server: AzureEndpoint, container: str, prefix: str = "repo", key: str | None = None, **transport: Any
) -> AzureBlobStore:
    return AzureBlobStore(
        AzureOptions(
            container=container,
            account=server.account,
            prefix=prefix,
            account_key=key or server.key,
            transport=dataclasses.replace(Transport(endpoint=server.url), **transport),
        )
    )


class TestAzureStoreConformance(ObjectStoreConformance):
    @pytest.fixture
    def store(self, azure_server: AzureEndpoint) -> AzureBlobStore:
        return store_for(azure_server, make_container(azure_server))


def test_repository_round_trip_on_azure(azure_server: AzureEndpoint, tmp_path: Path) -> None:
    assert_repository_round_trip(store_for(azure_server, make_container(azure_server)), tmp_path)


def test_url_with_a_velero_credentials_file(azure_server: AzureEndpoint, tmp_path: Path) -> None:
    creds = tmp_path / "cloud"
    creds.write_text(
        "AZURE_SUBSCRIPTION_ID=00000000-0000-0000-0000-000000000000\n"
        "AZURE_RESOURCE_GROUP=barge\n"
        f"AZURE_STORAGE_ACCOUNT={azure_server.account}\n"
        f"AZURE_STORAGE_ACCOUNT_ACCESS_KEY={azure_server.key}\n"
        "AZURE_CLOUD_NAME=AzurePublicCloud\n"
    )
    container = make_container(azure_server)
    store = open_store(f"azure://{container}/p?endpoint={azure_server.url}&credentials_file={creds}")
    store.put("hello", b"world")
    assert store.get("hello") == b"world"
    assert [i.key for i in store_for(azure_server, container, "p").list("")] == ["hello"]


def test_url_with_the_key_in_the_environment(
    azure_server: AzureEndpoint, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("AZURE_STORAGE_ACCOUNT_KEY", azure_server.key)
    container = make_container(azure_server)
    store = open_store(f"azure://{container}?account={azure_server.account}&endpoint={azure_server.url}")
    store.put("k", b"v")
    assert store.get("k") == b"v"


def test_wrong_key_is_a_permanent_error_naming_the_cause(azure_server: AzureEndpoint) -> None:
    wrong = base64.b64encode(os.urandom(32)).decode()
    store = store_for(azure_server, make_container(azure_server), key=wrong)
    with pytest.raises(PermanentError, match="access denied"):
        store.put("x", b"y")


def test_the_key_is_not_in_the_description(azure_server: AzureEndpoint) -> None:
    store = store_for(azure_server, "c")
    assert azure_server.key not in store.describe()
    assert store.describe() == f"azure://c/repo at {azure_server.url}"


def test_an_unreachable_endpoint_is_a_temporary_error_not_a_hang(azure_server: AzureEndpoint) -> None:
    dead = f"http://127.0.0.1:{free_port()}/{azure_server.account}"
    store = store_for(azure_server, "nocontainer", endpoint=dead, max_retries=2, retry_timeout_s=5.0)
    with pytest.raises(TemporaryError, match="object store error after retries"):
        store.get("x")


def test_a_missing_container_is_a_permanent_error_naming_it(azure_server: AzureEndpoint) -> None:
    store = store_for(azure_server, "no-such-container")
    for call in (lambda: store.put("k", b"v"), lambda: list(store.list(""))):
        with pytest.raises(PermanentError, match=r"azure://no-such-container/repo .*does not exist"):
            call()
