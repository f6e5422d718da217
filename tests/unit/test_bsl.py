"""BackupStorageLocation -> repository URL: every provider, every option, every bad input."""

from __future__ import annotations

import base64
from typing import Any
from urllib.parse import parse_qs, urlsplit

import pytest

from barge.errors import InvalidInput
from barge.storage.s3 import S3Options
from barge.velero.bsl import LEGACY_ROOT, ca_bundle, ca_cert_ref, repository_url


def bsl(provider: str, config: dict[str, str] | None = None, **storage: str) -> dict[str, Any]:
    return {
        "metadata": {"name": "default", "namespace": "velero"},
        "spec": {
            "provider": provider,
            "objectStorage": {"bucket": "backups", **storage},
            "config": config or {},
        },
    }


def test_s3_with_every_velero_option() -> None:
    """The URL holds the location's options and nothing secret: credentials and the CA bundle go
    to the store in memory (the agent), never through a file or the URL."""
    config = {"region": "eu-west-1", "s3Url": "https://minio:9000", "s3ForcePathStyle": "true",
              "insecureSkipTLSVerify": "true", "profile": "team"}  # fmt: skip
    location = bsl("velero.io/aws", config, prefix="/cluster-a/", caCert=base64.b64encode(b"PEM").decode())
    url = urlsplit(repository_url(location, "shop"))
    query = {k: v[0] for k, v in parse_qs(url.query).items()}
    assert (url.scheme, url.netloc, url.path) == ("s3", "backups", "/cluster-a/plugins/barge/shop")
    assert query == {
        "region": "eu-west-1", "endpoint": "https://minio:9000", "path_style": "true",
        "insecure_skip_tls_verify": "true", "profile": "team",
    }  # fmt: skip
    assert ca_bundle(location, None) == b"PEM"


def test_s3_retry_timeout_reaches_the_store_options() -> None:
    location = bsl("aws", {"barge.io/retryTimeoutSeconds": "20"})
    url = urlsplit(repository_url(location, "shop"))
    query = {k: v[0] for k, v in parse_qs(url.query).items()}
    assert query["retry_timeout"] == "20"
    assert S3Options.from_query("backups", "p", query).retry_timeout_s == 20.0
    assert S3Options.from_query("backups", "p", {}).retry_timeout_s == 180.0
    with pytest.raises(InvalidInput, match="retry_timeout='0': give seconds between 1 and 3600"):
        S3Options.from_query("backups", "p", {"retry_timeout": "0"})


def test_retry_timeout_as_an_annotation_velero_plugins_ignore() -> None:
    """velero-plugin-for-aws refuses unknown config keys (the BSL turns Unavailable): the annotation
    is the way to set it; the config key is still read, and the annotation wins over it."""

    def retry(location: dict[str, Any]) -> str | None:
        query = parse_qs(urlsplit(repository_url(location, "shop")).query)
        return query["retry_timeout"][0] if "retry_timeout" in query else None

    annotated = bsl("aws")
    annotated["metadata"]["annotations"] = {"barge.io/retry-timeout-seconds": "45"}
    assert retry(annotated) == "45"
    both = bsl("aws", {"barge.io/retryTimeoutSeconds": "20"})
    both["metadata"]["annotations"] = {"barge.io/retry-timeout-seconds": "45"}
    assert retry(both) == "45"
    assert retry(bsl("aws", {"barge.io/retryTimeoutSeconds": "20"})) == "20"
    assert retry(bsl("aws")) is None
    for provider in ("gcp", "velero.io/azure"):  # the annotation works for every cloud provider
        location = bsl(provider, {"storageAccount": "acct"} if "azure" in provider else {})
        location["metadata"]["annotations"] = {"barge.io/retry-timeout-seconds": "30"}
        assert retry(location) == "30"


def test_ca_bundle_from_the_secret_named_by_ca_cert_ref() -> None:
    """Velero 1.18 prefers objectStorage.caCertRef (a Secret key) to the deprecated inline caCert."""
    location = bsl("aws")
    location["spec"]["objectStorage"]["caCertRef"] = {"name": "minio-ca", "key": "ca.crt"}
    assert ca_cert_ref(location) == ("minio-ca", "ca.crt")
    assert ca_bundle(location, b"PEM FROM SECRET") == b"PEM FROM SECRET"
    with pytest.raises(InvalidInput, match=r"caCertRef names Secret minio-ca key ca\.crt, which is empty"):
        ca_bundle(location, None)
    assert ca_cert_ref(bsl("aws", caCert=base64.b64encode(b"PEM").decode())) is None
    assert ca_bundle(bsl("aws"), None) is None
    with pytest.raises(InvalidInput, match="caCert is not valid base64"):
        ca_bundle(bsl("aws", caCert="not base64!"), None)


@pytest.mark.parametrize(
    ("storage", "message"),
    [
        (
            {"caCert": base64.b64encode(b"PEM").decode(), "caCertRef": {"name": "ca", "key": "ca.crt"}},
            "has both caCert and caCertRef; keep only caCertRef",
        ),
        ({"caCertRef": {"name": "ca"}}, "caCertRef needs the name and key of a Secret"),
        ({"caCertRef": {"key": "ca.crt"}}, "caCertRef needs the name and key of a Secret"),
    ],
)
def test_bad_ca_cert_refs_say_what_to_fix(storage: dict[str, Any], message: str) -> None:
    location = bsl("aws")
    location["spec"]["objectStorage"].update(storage)
    with pytest.raises(InvalidInput, match=message):
        ca_cert_ref(location)
    with pytest.raises(InvalidInput, match=message):
        ca_bundle(location, b"PEM")


def test_each_namespace_gets_its_own_repository() -> None:
    a = repository_url(bsl("aws"), "shop")
    b = repository_url(bsl("aws"), "billing")
    assert a != b
    assert a.startswith("s3://backups/plugins/barge/shop?")


def test_repositories_live_in_the_folder_velero_leaves_to_plugins() -> None:
    """Velero marks a BSL Unavailable for any other top-level folder under its prefix."""
    velero_allows = {"backups", "restores", "restic", "metadata", "plugins", "kopia"}
    url = urlsplit(repository_url(bsl("aws", prefix="velero"), "shop"))
    top_level = url.path.removeprefix("/velero/").split("/")[0]
    assert top_level in velero_allows
    legacy = repository_url(bsl("aws", prefix="velero"), "shop", root=LEGACY_ROOT)
    assert urlsplit(legacy).path == "/velero/barge/shop"


def test_gcs_azure_and_local() -> None:
    assert repository_url(bsl("gcp"), "ns") == "gs://backups/plugins/barge/ns"
    azure = repository_url(bsl("velero.io/azure", {"storageAccount": "acct"}), "ns")
    assert azure == "azure://backups/plugins/barge/ns?account=acct"
    local = repository_url(bsl("barge.io/local", {"path": "/srv/repos"}), "ns")
    assert local == "file:///srv/repos/backups/plugins/barge/ns"


@pytest.mark.parametrize(
    ("location", "namespace", "message"),
    [
        (bsl("openstack"), "ns", "provider 'openstack' is not supported"),
        (
            {"metadata": {"name": "x"}, "spec": {"provider": "aws", "objectStorage": {}}},
            "ns",
            "bucket is empty",
        ),
        (bsl("barge.io/local", {"path": "relative"}), "ns", "needs config.path"),
        (bsl("aws"), "../escape", "not a valid namespace name"),
    ],
)
def test_bad_locations_say_what_to_fix(location: dict[str, Any], namespace: str, message: str) -> None:
    with pytest.raises(InvalidInput, match=message):
        repository_url(location, namespace)
