"""The Velero tier: the unmodified Velero server and CLI drive Barge, as in a user's cluster.

Each module gets its own cluster (``devenv.velerocluster``): a control plane with Velero's own
CRDs, a simulated cluster, Barge, and ``velero server`` with the AWS plugin, all on one
BackupStorageLocation in the session's MinIO. Tests drive only the ``velero`` CLI, as a user would,
and check what Velero, Barge and the bucket hold afterwards.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from devenv.s3server import S3Endpoint
from devenv.velerocluster import VeleroCluster, velero_cluster
from devenv.veleroserver import S3Location


def print_logs(workdir: Path) -> None:
    for log in sorted(workdir.rglob("*.log")):
        tail = "\n".join(log.read_text(errors="replace").splitlines()[-60:])
        print(f"---- {log.relative_to(workdir)} (tail)\n{tail}")


@pytest.fixture(scope="module")
def location(s3_server: S3Endpoint) -> S3Location:
    return S3Location(s3_server, bucket=f"velero-{uuid.uuid4().hex[:8]}", prefix="cluster-a")


@pytest.fixture(scope="module")
def cluster(location: S3Location, tmp_path_factory: pytest.TempPathFactory) -> Iterator[VeleroCluster]:
    workdir = tmp_path_factory.mktemp("velero-cluster")
    try:
        with velero_cluster(workdir, location) as env:
            yield env
            assert env.sim.errors == [], f"the simulated cluster hit unexpected errors: {env.sim.errors}"
    finally:
        print_logs(workdir)
