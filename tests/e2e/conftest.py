"""Barge end to end: the coordinator and agents as real processes against the real API server.

``SimCluster`` plays the kubelet, scheduler and CSI driver; ``LocalBarge`` starts Barge as the Helm
chart would run it. One environment per module keeps the suite inside CI's time budget; every test
uses its own source namespace and names, so tests do not see each other's objects.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from kubernetes import client

from barge.kube.resources import NAMESPACE, KubeObjects
from devenv.controlplane import ControlPlaneEndpoints
from devenv.localbarge import LocalBarge
from devenv.simcluster import SimCluster
from tests.fsbuild import remove_tree


@pytest.fixture(scope="module")
def sim(kube: client.ApiClient, tmp_path_factory: pytest.TempPathFactory) -> Iterator[SimCluster]:
    workdir = tmp_path_factory.mktemp("sim")
    try:
        with SimCluster(kube, workdir) as cluster:
            yield cluster
            assert cluster.errors == [], f"the simulated cluster hit unexpected errors: {cluster.errors}"
    finally:  # volumes may hold trees too deep for pytest's own clean-up (it recurses), even after a failure
        remove_tree(workdir)


@pytest.fixture(scope="module")
def objects(kube: client.ApiClient) -> KubeObjects:
    return KubeObjects(kube)


@pytest.fixture(scope="module")
def barge_env(
    control_plane: ControlPlaneEndpoints,
    sim: SimCluster,
    objects: KubeObjects,
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[LocalBarge]:
    workdir = tmp_path_factory.mktemp("barge")
    env = LocalBarge(
        control_plane,
        sim,
        objects,
        workdir,
        nodes=("node-a", "node-b"),
        velero_namespace="velero",
        coordinator_config="prepareTimeout: 2m\nagentGracePeriod: 10s\n",
    )
    with env:
        yield env
    for log in sorted(Path(workdir).glob("*.log")):
        print(f"---- {log.name} (tail)\n" + "\n".join(log.read_text(errors="replace").splitlines()[-40:]))


@pytest.fixture
def app_namespace(objects: KubeObjects) -> str:
    """A fresh application namespace: where the source PVC and its VolumeSnapshot live."""
    name = f"app-{uuid.uuid4().hex[:6]}"
    for namespace in (name, f"{name}-restored"):
        objects.create(NAMESPACE, {"metadata": {"name": namespace}})
    return name
