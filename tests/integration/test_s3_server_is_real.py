"""Proof that the S3 fixture is a real S3 server: buckets, objects, listing, multipart."""

from __future__ import annotations

import hashlib
import os
import uuid
from typing import Any

import boto3
import pytest
from botocore.config import Config
from botocore.exceptions import ClientError

from devenv.s3server import S3Endpoint

pytestmark = pytest.mark.integration

MIB = 1024 * 1024


@pytest.fixture
def s3(s3_server: S3Endpoint) -> Any:
    return boto3.client(
        "s3",
        endpoint_url=s3_server.url,
        aws_access_key_id=s3_server.access_key,
        aws_secret_access_key=s3_server.secret_key,
        region_name=s3_server.region,
        config=Config(s3={"addressing_style": "path"}, retries={"max_attempts": 1}),
    )


@pytest.fixture
def bucket(s3: Any) -> str:
    name = f"barge-{uuid.uuid4().hex[:12]}"
    s3.create_bucket(Bucket=name)
    return name


def test_put_get_list_delete(s3: Any, bucket: str) -> None:
    s3.put_object(Bucket=bucket, Key="repo/packs/aa/one", Body=b"first")
    s3.put_object(Bucket=bucket, Key="repo/packs/bb/two", Body=b"second")
    s3.put_object(Bucket=bucket, Key="repo/index/x", Body=b"")

    assert s3.get_object(Bucket=bucket, Key="repo/packs/aa/one")["Body"].read() == b"first"
    listed = s3.list_objects_v2(Bucket=bucket, Prefix="repo/packs/")
    assert [o["Key"] for o in listed["Contents"]] == ["repo/packs/aa/one", "repo/packs/bb/two"]
    assert s3.head_object(Bucket=bucket, Key="repo/index/x")["ContentLength"] == 0

    s3.delete_object(Bucket=bucket, Key="repo/packs/aa/one")
    with pytest.raises(ClientError) as raised:
        s3.get_object(Bucket=bucket, Key="repo/packs/aa/one")
    assert raised.value.response["Error"]["Code"] == "NoSuchKey"


def test_listing_pages_with_continuation_tokens(s3: Any, bucket: str) -> None:
    for i in range(25):
        s3.put_object(Bucket=bucket, Key=f"k/{i:03d}", Body=b"x")
    keys: list[str] = []
    token: dict[str, str] = {}
    pages = 0
    while True:
        page = s3.list_objects_v2(Bucket=bucket, Prefix="k/", MaxKeys=10, **token)
        pages += 1
        keys += [o["Key"] for o in page.get("Contents", [])]
        if not page.get("IsTruncated"):
            break
        token = {"ContinuationToken": page["NextContinuationToken"]}
    assert pages == 3
    assert keys == [f"k/{i:03d}" for i in range(25)]


def test_multipart_upload_round_trips(s3: Any, bucket: str) -> None:
    parts = [os.urandom(5 * MIB), os.urandom(5 * MIB), os.urandom(MIB // 3)]
    upload = s3.create_multipart_upload(Bucket=bucket, Key="big")
    etags = [
        s3.upload_part(Bucket=bucket, Key="big", UploadId=upload["UploadId"], PartNumber=n, Body=data)["ETag"]
        for n, data in enumerate(parts, start=1)
    ]
    s3.complete_multipart_upload(
        Bucket=bucket,
        Key="big",
        UploadId=upload["UploadId"],
        MultipartUpload={"Parts": [{"ETag": e, "PartNumber": n} for n, e in enumerate(etags, start=1)]},
    )
    body = s3.get_object(Bucket=bucket, Key="big")["Body"].read()
    assert hashlib.sha256(body).digest() == hashlib.sha256(b"".join(parts)).digest()
    head = s3.head_object(Bucket=bucket, Key="big")
    assert head["ETag"].strip('"').endswith("-3")


def test_aborted_multipart_upload_leaves_no_object(s3: Any, bucket: str) -> None:
    upload = s3.create_multipart_upload(Bucket=bucket, Key="abandoned")
    s3.upload_part(Bucket=bucket, Key="abandoned", UploadId=upload["UploadId"], PartNumber=1, Body=b"x" * MIB)
    s3.abort_multipart_upload(Bucket=bucket, Key="abandoned", UploadId=upload["UploadId"])
    assert s3.list_objects_v2(Bucket=bucket).get("KeyCount") == 0


def test_conditional_put_refuses_to_overwrite(s3: Any, bucket: str) -> None:
    """Repository writers rely on If-None-Match: * so two writers never overwrite an object."""
    s3.put_object(Bucket=bucket, Key="once", Body=b"a", IfNoneMatch="*")
    with pytest.raises(ClientError) as raised:
        s3.put_object(Bucket=bucket, Key="once", Body=b"b", IfNoneMatch="*")
    assert raised.value.response["ResponseMetadata"]["HTTPStatusCode"] == 412
    assert s3.get_object(Bucket=bucket, Key="once")["Body"].read() == b"a"


def test_wrong_credentials_are_rejected(s3_server: S3Endpoint) -> None:
    intruder = boto3.client(
        "s3",
        endpoint_url=s3_server.url,
        aws_access_key_id=s3_server.access_key,
        aws_secret_access_key="wrong-secret",
        region_name=s3_server.region,
        config=Config(s3={"addressing_style": "path"}, retries={"max_attempts": 1}),
    )
    with pytest.raises(ClientError) as raised:
        intruder.list_buckets()
    assert raised.value.response["Error"]["Code"] == "SignatureDoesNotMatch"
