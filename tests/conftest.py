"""Session fixtures that start the real servers: etcd + kube-apiserver, MinIO, fake-gcs-server, Azurite.

A missing binary is a test *error* with the command that installs it, never a skip: a green run
must mean the integration tests really ran against the real servers.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator

import pytest
import structlog
from kubernetes import client

from barge.kube.client import api_client
from barge.logs import NOISY, SECRET_BEARING
from devenv.azureserver import AzureEndpoint, LocalAzureServer
from devenv.controlplane import ControlPlaneEndpoints, LocalControlPlane
from devenv.crds import install_crds
from devenv.gcsserver import GCSEndpoint, LocalGCSServer
from devenv.s3server import LocalS3Server, S3Endpoint

TIERS = ("unit", "integration", "e2e", "velero", "realnode")  # folders of tests/, and the markers they get


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Mark every test with its tier, the folder it lives in (``make test-unit``: ``-m unit``)."""
    for item in items:
        folder = item.path.parent.name
        if folder in TIERS:
            item.add_marker(folder)


@pytest.fixture(autouse=True)
def _cache_home(tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch) -> None:
    """The CLI keeps its index cache under $XDG_CACHE_HOME: one per test, never the user's (tests
    copy one template repository, and a cache shared between them would make them depend on order)."""
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path_factory.mktemp("xdg-cache")))


@pytest.fixture(scope="session")
def control_plane() -> Iterator[ControlPlaneEndpoints]:
    with LocalControlPlane() as endpoints:
        with api_client(endpoints.kubeconfig) as api:
            install_crds(api)
        yield endpoints


@pytest.fixture(scope="session")
def kube(control_plane: ControlPlaneEndpoints) -> Iterator[client.ApiClient]:
    """An admin (system:masters) client of the real API server."""
    with api_client(control_plane.kubeconfig) as api:
        yield api


@pytest.fixture(scope="session")
def s3_server() -> Iterator[S3Endpoint]:
    with LocalS3Server() as endpoint:
        yield endpoint


@pytest.fixture(scope="session")
def gcs_server() -> Iterator[GCSEndpoint]:
    with LocalGCSServer() as endpoint:
        yield endpoint


@pytest.fixture(scope="session")
def azure_server() -> Iterator[AzureEndpoint]:
    with LocalAzureServer() as endpoint:
        yield endpoint


@pytest.fixture
def restored_logging() -> Iterator[None]:
    """configure_logging (which the processes' main() calls) changes process-wide state: put it
    back for the other tests, or a handler writing to this test's captured stderr outlives it."""
    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level
    levels = {name: logging.getLogger(name).level for name in (*NOISY, *SECRET_BEARING)}
    yield
    root.handlers[:] = handlers
    root.setLevel(level)
    for name, saved in levels.items():
        logging.getLogger(name).setLevel(saved)
    structlog.reset_defaults()
