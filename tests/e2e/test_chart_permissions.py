"""Barge running with exactly the permissions the Helm chart grants, not the admin's.

The chart is installed into the real API server; the coordinator and the agents then authenticate
as the chart's ServiceAccounts (tokens from TokenRequest, as a pod's projected token would be), and
a backup and a restore must go through. A missing RBAC rule fails here, not in a user's cluster.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest
from kubernetes import client

from barge.errors import NotFound
from barge.kube.resources import (
    NAMESPACE,
    PERSISTENT_VOLUME_CLAIM,
    SERVICE_ACCOUNT,
    VOLUME_SNAPSHOT,
    KubeObjects,
)
from devenv.controlplane import ControlPlaneEndpoints, write_kubeconfig
from devenv.helm import CHART_DIR, Helm
from devenv.localbarge import LocalBarge
from devenv.simcluster import SimCluster
from devenv.trees import capture
from devenv.velero import data_download, data_upload, restore_target_pvc
from devenv.waiting import wait_for
from tests.fsbuild import write

pytestmark = pytest.mark.integration
VELERO_NS, BARGE_NS = "velero-rbac", "barge-rbac"


def service_account_kubeconfig(
    objects: KubeObjects, endpoints: ControlPlaneEndpoints, name: str, path: Path
) -> Path:
    request = {
        "apiVersion": "authentication.k8s.io/v1",
        "kind": "TokenRequest",
        "spec": {"expirationSeconds": 3600},
    }
    token = objects.create_subresource(SERVICE_ACCOUNT, BARGE_NS, name, "token", request)["status"]["token"]
    return write_kubeconfig(path, endpoints.url, endpoints.pki.ca.cert_path, {"token": token}, name)


@pytest.fixture(scope="module")
def env(
    control_plane: ControlPlaneEndpoints,
    kube: client.ApiClient,
    objects: KubeObjects,
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[LocalBarge]:
    for namespace in (VELERO_NS, BARGE_NS):
        objects.create(NAMESPACE, {"metadata": {"name": namespace}}, exist_ok=True)
    helm = Helm.installed(control_plane.kubeconfig)
    helm.run(
        "install", "barge", str(CHART_DIR), "--namespace", BARGE_NS, values={"veleroNamespace": VELERO_NS}
    )
    work = tmp_path_factory.mktemp("rbac")
    coordinator = service_account_kubeconfig(
        objects, control_plane, "barge-coordinator", work / "coordinator.kubeconfig"
    )
    agent = service_account_kubeconfig(objects, control_plane, "barge-agent", work / "agent.kubeconfig")
    try:
        with SimCluster(kube, work / "sim") as sim:
            barge = LocalBarge(
                control_plane,
                sim,
                objects,
                work / "barge",
                nodes=("rbac-a", "rbac-b"),
                velero_namespace=VELERO_NS,
                barge_namespace=BARGE_NS,
                coordinator_kubeconfig=coordinator,
                agent_kubeconfig=agent,
            )
            with barge:
                yield barge
            assert sim.errors == []
    finally:
        helm.run("uninstall", "barge", "--namespace", BARGE_NS, check=False)


def test_backup_and_restore_need_no_more_than_the_chart_grants(
    env: LocalBarge, objects: KubeObjects, app_namespace: str, tmp_path: Path
) -> None:
    volume = tmp_path / "volume"
    for index in range(6):
        write(volume / f"f{index}.bin", os.urandom(100_000))
    vs_name, handle = env.sim.snapshot_source(app_namespace, "data", volume)
    body = data_upload(
        backup="rbac",
        pvc="data",
        source_namespace=app_namespace,
        volume_snapshot=vs_name,
        namespace=VELERO_NS,
    )
    uploaded = env.wait_phase("DataUpload", env.create("DataUpload", body)["metadata"]["name"])["status"]
    assert uploaded["phase"] == "Completed", uploaded.get("message")

    def snapshot_disposed() -> bool:
        """Source released to the clone (patch, deletes in the app namespace), clone deleted."""
        try:
            objects.get(VOLUME_SNAPSHOT, app_namespace, vs_name)
        except NotFound:
            return handle not in env.sim.storage_snapshots()
        return False

    wait_for(snapshot_disposed, 60, what="the snapshot Velero left to be deleted", interval=0.3)
    target_ns = f"{app_namespace}-restored"
    objects.create(
        PERSISTENT_VOLUME_CLAIM,
        restore_target_pvc(restore="rbac", name="data", namespace=target_ns, size="1Gi"),
    )
    restore = data_download(
        restore="rbac",
        snapshot_id=uploaded["snapshotID"],
        target_pvc="data",
        target_namespace=target_ns,
        source_namespace=app_namespace,
        namespace=VELERO_NS,
    )
    done = env.wait_phase("DataDownload", env.create("DataDownload", restore)["metadata"]["name"])["status"]
    assert done["phase"] == "Completed", done.get("message")
    env.wait_pvc_bound(target_ns, "data")
    assert capture(env.sim.claim_data(target_ns, "data")) == capture(volume)
    for log in sorted(env.workdir.glob("*.log")):
        text = log.read_text(errors="replace")
        assert "is forbidden" not in text, f"{log.name} shows a permission the chart does not grant"
