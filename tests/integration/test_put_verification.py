"""Every cloud put is verified: a mismatching MD5 ETag or stored size is a temporary error (retry)."""

from __future__ import annotations

import hashlib

import pytest

from barge.errors import TemporaryError
from barge.storage.cloud import CloudObjectStore
from devenv.azureserver import AzureEndpoint
from devenv.gcsserver import GCSEndpoint
from devenv.s3server import S3Endpoint
from tests.integration import test_azure_store, test_gcs_store, test_s3_store

pytestmark = pytest.mark.integration


@pytest.fixture(params=["s3", "gcs", "azure"])
def store(request: pytest.FixtureRequest) -> CloudObjectStore:
    if request.param == "s3":
        s3: S3Endpoint = request.getfixturevalue("s3_server")
        return test_s3_store.store_for(s3, test_s3_store.make_bucket(s3))
    if request.param == "gcs":
        gcs: GCSEndpoint = request.getfixturevalue("gcs_server")
        return test_gcs_store.store_for(gcs, test_gcs_store.make_bucket(gcs))
    azure: AzureEndpoint = request.getfixturevalue("azure_server")
    return test_azure_store.store_for(azure, test_azure_store.make_container(azure))


def test_an_md5_etag_that_differs_from_what_was_sent_fails_the_put(store: CloudObjectStore) -> None:
    store.put("k", b"sent")
    other_md5 = hashlib.md5(b"something else", usedforsecurity=False).hexdigest()
    with pytest.raises(TemporaryError, match="corrupted in transit"):
        store._verify_put("k", b"sent", other_md5)
    store._verify_put("k", b"sent", hashlib.md5(b"sent", usedforsecurity=False).hexdigest())


def test_without_an_md5_etag_the_stored_size_is_checked(store: CloudObjectStore) -> None:
    store.put("k", b"sent")
    with pytest.raises(TemporaryError, match="stored size differs"):
        store._verify_put("k", b"longer than sent", '"0x8DC0FFEE"')
    store._verify_put("k", b"sent", "0x8DC0FFEE")
