"""Barge's GCS backend against the real GCS emulator (fake-gcs-server): conformance, round trip."""

from __future__ import annotations

import dataclasses
import http.client
import json
import uuid
from pathlib import Path
from typing import Any

import pytest

from barge.errors import PermanentError, TemporaryError
from barge.storage.cloud import Transport
from barge.storage.gcs import GCSOptions, GCSStore, read_service_account_key
from barge.storage.url import open_store
from devenv.gcsserver import GCSEndpoint
from devenv.processes import free_port
from tests.roundtrip import assert_repository_round_trip
from tests.storage_conformance import ObjectStoreConformance

pytestmark = pytest.mark.integration


def make_bucket(server: GCSEndpoint) -> str:
    name = f"barge-{uuid.uuid4().hex[:12]}"
    server.create_bucket(name)
    return name


def store_for(server: GCSEndpoint, bucket: str, prefix: str = "repo", **transport: Any) -> GCSStore:
    return GCSStore(
        GCSOptions(
            bucket=bucket,
            prefix=prefix,
            service_account_key=read_service_account_key(server.credentials_file),
            transport=dataclasses.replace(Transport(endpoint=server.url), **transport),
        )
    )


class TestGCSStoreConformance(ObjectStoreConformance):
    @pytest.fixture
    def store(self, gcs_server: GCSEndpoint) -> GCSStore:
        return store_for(gcs_server, make_bucket(gcs_server))


def test_repository_round_trip_on_gcs(gcs_server: GCSEndpoint, tmp_path: Path) -> None:
    assert_repository_round_trip(store_for(gcs_server, make_bucket(gcs_server)), tmp_path)


def test_url_with_a_service_account_key_file(gcs_server: GCSEndpoint) -> None:
    bucket = make_bucket(gcs_server)
    store = open_store(
        f"gs://{bucket}/p?endpoint={gcs_server.url}&credentials_file={gcs_server.credentials_file}"
    )
    store.put("hello", b"world")
    assert store.get("hello") == b"world"
    assert [i.key for i in store_for(gcs_server, bucket, "p").list("")] == ["hello"]


def test_prefixes_isolate_repositories_in_one_bucket(gcs_server: GCSEndpoint) -> None:
    bucket = make_bucket(gcs_server)
    one, two = store_for(gcs_server, bucket, "one"), store_for(gcs_server, bucket, "two")
    one.put("config", b"1")
    assert [i.key for i in one.list("")] == ["config"]
    assert list(two.list("")) == []


def test_the_credentials_are_not_in_the_description(gcs_server: GCSEndpoint) -> None:
    store = store_for(gcs_server, "b")
    key = json.loads(gcs_server.credentials_file.read_text())
    assert key["private_key"] not in store.describe()
    assert store.describe() == f"gs://b/repo at {gcs_server.url}"


def test_an_unreachable_endpoint_is_a_temporary_error_not_a_hang(gcs_server: GCSEndpoint) -> None:
    store = store_for(
        dataclasses.replace(gcs_server, url=f"http://127.0.0.1:{free_port()}"),
        "nobucket",
        max_retries=2,
        retry_timeout_s=5.0,
    )
    with pytest.raises(TemporaryError, match="object store error after retries"):
        store.get("x")


def _raw_put(server: GCSEndpoint, path: str, body: bytes) -> tuple[int, bytes]:
    host, port = server.url.removeprefix("http://").split(":")
    conn = http.client.HTTPConnection(host, int(port), timeout=10)
    try:
        conn.request("PUT", path, body, {"x-goog-if-generation-match": "0"})
        response = conn.getresponse()
        return response.status, response.read()
    finally:
        conn.close()


def test_why_the_wrapper_exists_upstream_has_no_create_only_xml_upload(gcs_server: GCSEndpoint) -> None:
    """Requests with a query string reach upstream fake-gcs-server unchanged (see main.go): its XML
    upload is refused, and its signed-URL upload ignores the create-only precondition."""
    bucket = make_bucket(gcs_server)
    status, body = _raw_put(gcs_server, f"/{bucket}/obj?upstream=as-is", b"one")
    assert status == 400
    assert b"invalid uploadType" in body
    assert _raw_put(gcs_server, f"/{bucket}/obj?X-Goog-Algorithm=x", b"one")[0] == 200
    assert _raw_put(gcs_server, f"/{bucket}/obj?X-Goog-Algorithm=x", b"two")[0] == 200  # overwritten
    assert store_for(gcs_server, bucket, prefix="").get("obj") == b"two"
    assert _raw_put(gcs_server, f"/{bucket}/obj", b"three")[0] == 412  # through the wrapper


def test_a_missing_bucket_is_a_permanent_error_naming_it(gcs_server: GCSEndpoint) -> None:
    """Only the put: fake-gcs-server answers a listing of a missing bucket with 500 (an lstat error
    of its filesystem backend) where GCS answers 404 NoSuchBucket (docs/storage.md)."""
    with pytest.raises(PermanentError, match=r"gs://no-such-bucket/repo .*does not exist"):
        store_for(gcs_server, "no-such-bucket").put("k", b"v")
