"""Barge's S3 backend against the real S3 server: conformance, round trips, clear failures."""

from __future__ import annotations

import dataclasses
import uuid
from pathlib import Path
from typing import Any

import boto3
import pytest
from botocore.config import Config
from hypothesis import HealthCheck, given, settings

from barge.errors import PermanentError, TemporaryError
from barge.repo.crypto import KdfParams
from barge.repo.repository import Repository
from barge.storage.s3 import S3Options, S3Store
from barge.storage.url import open_store
from devenv.s3server import S3Endpoint
from tests import fsgen
from tests.roundtrip import SMALL_PACKS, assert_generated_tree_round_trips, assert_repository_round_trip
from tests.storage_conformance import ObjectStoreConformance

pytestmark = pytest.mark.integration


def make_bucket(endpoint: S3Endpoint) -> str:
    name = f"barge-{uuid.uuid4().hex[:12]}"
    boto3.client(
        "s3",
        endpoint_url=endpoint.url,
        aws_access_key_id=endpoint.access_key,
        aws_secret_access_key=endpoint.secret_key,
        region_name=endpoint.region,
        config=Config(s3={"addressing_style": "path"}),
    ).create_bucket(Bucket=name)
    return name


def store_for(server: S3Endpoint, bucket: str, prefix: str = "repo", **overrides: Any) -> S3Store:
    options = S3Options(
        bucket=bucket,
        prefix=prefix,
        endpoint=server.url,
        region=server.region,
        path_style=True,
        access_key=server.access_key,
        secret_key=server.secret_key,
    )
    return S3Store(dataclasses.replace(options, **overrides))


class TestS3StoreConformance(ObjectStoreConformance):
    @pytest.fixture
    def store(self, s3_server: S3Endpoint) -> S3Store:
        return store_for(s3_server, make_bucket(s3_server))


def test_prefixes_isolate_repositories_in_one_bucket(s3_server: S3Endpoint) -> None:
    bucket = make_bucket(s3_server)
    one, two = store_for(s3_server, bucket, "one"), store_for(s3_server, bucket, "two")
    one.put("config", b"1")
    assert [i.key for i in one.list("")] == ["config"]
    assert list(two.list("")) == []


def test_repository_round_trip_on_s3(s3_server: S3Endpoint, tmp_path: Path) -> None:
    assert_repository_round_trip(store_for(s3_server, make_bucket(s3_server)), tmp_path)


def test_url_with_a_velero_credentials_file(s3_server: S3Endpoint, tmp_path: Path) -> None:
    creds = tmp_path / "cloud"
    creds.write_text(
        f"[default]\naws_access_key_id={s3_server.access_key}\naws_secret_access_key={s3_server.secret_key}\n"
    )
    bucket = make_bucket(s3_server)
    store = open_store(f"s3://{bucket}/p?endpoint={s3_server.url}&path_style=true&credentials_file={creds}")
    store.put("hello", b"world")
    assert store.get("hello") == b"world"


def test_wrong_credentials_are_a_permanent_error_naming_the_cause(s3_server: S3Endpoint) -> None:
    store = store_for(s3_server, make_bucket(s3_server), secret_key="wrong")
    with pytest.raises(PermanentError, match="access denied"):
        store.put("x", b"y")


def test_an_unreachable_endpoint_is_a_temporary_error_not_a_hang(s3_server: S3Endpoint) -> None:
    from devenv.processes import free_port

    store = store_for(
        s3_server, "nobucket", endpoint=f"http://127.0.0.1:{free_port()}", max_retries=2, retry_timeout_s=5.0
    )
    with pytest.raises(TemporaryError, match="object store error after retries"):
        store.get("x")


@settings(
    max_examples=10,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(tree=fsgen.trees(max_leaves=12))
def test_generated_trees_round_trip_bit_exact_on_s3(
    s3_server: S3Endpoint, tmp_path: Path, tree: fsgen.Dir
) -> None:
    """Fewer, smaller examples than on the local backend (tests/unit/test_fs_roundtrip.py): bounded time."""
    case = tmp_path / uuid.uuid4().hex
    case.mkdir()
    store = store_for(s3_server, _shared_bucket(s3_server), prefix=case.name)
    repo = Repository.init(store, b"pw", SMALL_PACKS, KdfParams.for_tests())
    assert_generated_tree_round_trips(repo, case, tree)


_buckets: dict[str, str] = {}


def _shared_bucket(server: S3Endpoint) -> str:
    """One bucket for all the generated examples (each gets its own prefix)."""
    if server.url not in _buckets:
        _buckets[server.url] = make_bucket(server)
    return _buckets[server.url]


def test_a_missing_bucket_is_a_permanent_error_naming_it(s3_server: S3Endpoint) -> None:
    store = store_for(s3_server, "no-such-bucket")
    for call in (lambda: store.put("k", b"v"), lambda: list(store.list(""))):
        with pytest.raises(PermanentError, match=r"s3://no-such-bucket/repo .*does not exist"):
            call()
