"""Backup storage locations behind TLS: a private CA in `objectStorage.caCert`, and
`insecureSkipTLSVerify`. Velero's AWS plugin and Barge's agents must both reach the bucket."""

from __future__ import annotations

import dataclasses
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from barge.kube.resources import BACKUP_STORAGE_LOCATION, NAMESPACE
from devenv.s3server import LocalS3Server, S3Endpoint
from devenv.velerocluster import VeleroCluster
from devenv.veleroserver import S3Location
from devenv.waiting import wait_for
from tests.fsbuild import awkward_tree
from tests.velero.flows import backup, uploads

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def tls_s3(tmp_path_factory: pytest.TempPathFactory) -> Iterator[S3Endpoint]:
    with LocalS3Server(tmp_path_factory.mktemp("tls-minio"), tls=True) as endpoint:
        yield endpoint


@pytest.fixture(scope="module")
def location(tls_s3: S3Endpoint) -> S3Location:
    assert tls_s3.url.startswith("https://")
    return S3Location(
        tls_s3, bucket=f"velero-{uuid.uuid4().hex[:8]}", prefix="tls", ca_cert_pem=tls_s3.ca_cert_pem
    )


def test_a_location_with_a_private_ca_certificate(cluster: VeleroCluster, tmp_path: Path) -> None:
    cluster.objects.create(NAMESPACE, {"metadata": {"name": "ca-app"}})
    cluster.sim.provision_claim("ca-app", "data", awkward_tree(tmp_path / "tree"))
    backup(cluster, "with-ca", "ca-app")
    assert uploads(cluster, "with-ca")["data"]["status"]["phase"] == "Completed"


def test_a_location_that_skips_tls_verification(
    cluster: VeleroCluster, location: S3Location, tmp_path: Path
) -> None:
    velero = cluster.velero
    insecure = dataclasses.replace(location, ca_cert_pem=None, insecure_skip_tls_verify=True)
    body = velero.bsl(location=insecure)
    current = velero.get(BACKUP_STORAGE_LOCATION, "default")
    body["metadata"]["resourceVersion"] = current["metadata"]["resourceVersion"]
    cluster.objects.replace(BACKUP_STORAGE_LOCATION, body)
    wait_for(lambda: velero.bsl_status().get("phase") == "Available", 60, what="the BSL to be Available")
    cluster.objects.create(NAMESPACE, {"metadata": {"name": "insecure-app"}})
    cluster.sim.provision_claim("insecure-app", "data", awkward_tree(tmp_path / "tree"))
    backup(cluster, "without-verification", "insecure-app")
    assert uploads(cluster, "without-verification")["data"]["status"]["phase"] == "Completed"
