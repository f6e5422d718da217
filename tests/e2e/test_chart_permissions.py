"""Barge running with exactly the permissions the Helm chart grants, not the admin's.

The chart is installed into the real API server; the coordinator and the agents then authenticate
as the chart's ServiceAccounts (tokens from TokenRequest, as a pod's projected token would be), and
a backup and a restore must go through: the coordinator generates the repository password Secret
(create only), the agents read it and the location's credential Secret (by name only) and talk to
S3 with it. A missing RBAC rule fails here, not in a user's cluster; so does a secret value in any
status, Event or log, or a credential left on the node's cache directory.
"""

from __future__ import annotations

import base64
import os
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from kubernetes import client

from barge.errors import NotFound, PermissionDenied
from barge.kube.client import api_client
from barge.kube.resources import (
    BACKUP_STORAGE_LOCATION,
    NAMESPACE,
    PERSISTENT_VOLUME_CLAIM,
    SECRET,
    SERVICE_ACCOUNT,
    VOLUME_SNAPSHOT,
    KubeObjects,
)
from barge.velero.password import VELERO_DEFAULT_PASSWORD
from devenv.controlplane import ControlPlaneEndpoints, write_kubeconfig
from devenv.helm import CHART_DIR, Helm
from devenv.localbarge import LocalBarge
from devenv.s3server import S3Endpoint
from devenv.simcluster import SimCluster
from devenv.trees import capture
from devenv.velero import data_download, data_upload, restore_target_pvc
from devenv.veleroserver import S3Location, create_bucket
from devenv.waiting import wait_for
from tests.fsbuild import write
from tests.secretscan import cluster_outputs, file_contents, leaks, log_outputs

pytestmark = pytest.mark.integration
VELERO_NS, BARGE_NS = "velero-rbac", "barge-rbac"
CREDENTIALS, GARBLED = "cloud-credentials", "garbled-credentials"


def s3_location(name: str, location: S3Location, secret: str) -> dict[str, Any]:
    """A BackupStorageLocation as `velero install --provider aws` makes it."""
    config = {"region": location.endpoint.region, "s3ForcePathStyle": "true", "s3Url": location.endpoint.url}
    return {
        "metadata": {"name": name, "namespace": VELERO_NS},
        "spec": {
            "provider": "aws",
            "objectStorage": {"bucket": location.bucket, "prefix": location.prefix},
            "credential": {"name": secret, "key": "cloud"},
            "config": config,
        },
    }


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
    s3_server: S3Endpoint,
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[LocalBarge]:
    work = tmp_path_factory.mktemp("rbac")
    for namespace in (VELERO_NS, BARGE_NS):
        objects.create(NAMESPACE, {"metadata": {"name": namespace}}, exist_ok=True)
    location = S3Location(s3_server, bucket=f"rbac-{uuid.uuid4().hex[:8]}", prefix="cluster")
    create_bucket(location, work)
    key_id = f"[default]\naws_access_key_id={s3_server.access_key}\n"
    good = f"{key_id}aws_secret_access_key={s3_server.secret_key}\n"
    garbled = f"{key_id}{s3_server.secret_key}\n"  # the key alone on line 3, without its name
    for name, text in ((CREDENTIALS, good), (GARBLED, garbled), ("not-for-barge", "private")):
        secret = {"metadata": {"name": name, "namespace": VELERO_NS}, "stringData": {"cloud": text}}
        objects.create(SECRET, secret, exist_ok=True)
    objects.create(BACKUP_STORAGE_LOCATION, s3_location("garbled", location, GARBLED), exist_ok=True)
    helm = Helm.installed(control_plane.kubeconfig)
    values = {"veleroNamespace": VELERO_NS, "rbac": {"agentSecrets": [CREDENTIALS, GARBLED]}}
    helm.run("install", "barge", str(CHART_DIR), "--namespace", BARGE_NS, values=values)
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
                bsl=s3_location("default", location, CREDENTIALS),
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


def test_the_agents_read_only_their_secrets_and_the_coordinator_none(env: LocalBarge) -> None:
    """What a stolen agent or coordinator token could read: the agent only the Secrets named in the
    chart (the password and the locations' credentials), the coordinator no Secret at all."""
    with api_client(env.agent_kubeconfig) as as_agent, api_client(env.coordinator_kubeconfig) as as_coord:
        agent, coordinator = KubeObjects(as_agent), KubeObjects(as_coord)
        assert agent.get(SECRET, VELERO_NS, CREDENTIALS)["metadata"]["name"] == CREDENTIALS
        with pytest.raises(PermissionDenied):
            agent.get(SECRET, VELERO_NS, "not-for-barge")
        with pytest.raises(PermissionDenied):
            agent.list(SECRET, VELERO_NS)
        for name in ("barge-repository-password", CREDENTIALS):
            with pytest.raises(PermissionDenied):
                coordinator.get(SECRET, VELERO_NS, name)


def test_no_secret_reaches_a_status_an_event_a_log_or_the_node(
    env: LocalBarge, objects: KubeObjects, app_namespace: str, s3_server: S3Endpoint, tmp_path: Path
) -> None:
    """A location whose credentials file is garbled (the secret key alone on a line) fails its
    DataUpload naming the Secret and the line; then every output of this module's flows (CRs,
    Events, the coordinator's and agents' logs) and the agents' cache directories are searched for
    the S3 secret key and the repository password."""
    volume = tmp_path / "volume"
    write(volume / "f.bin", os.urandom(10_000))
    vs_name, _ = env.sim.snapshot_source(app_namespace, "garbled", volume)
    body = data_upload(backup="garbled", pvc="garbled", source_namespace=app_namespace,
                       volume_snapshot=vs_name, namespace=VELERO_NS, bsl="garbled")  # fmt: skip
    failed = env.wait_phase("DataUpload", env.create("DataUpload", body)["metadata"]["name"])["status"]
    assert failed["phase"] == "Failed"
    assert f"(Secret {VELERO_NS}/{GARBLED} key cloud): line 3: expected NAME = VALUE" in failed["message"]
    secrets = (s3_server.secret_key, env.password)
    namespaces = (VELERO_NS, app_namespace, f"{app_namespace}-restored")
    outputs = cluster_outputs(objects, namespaces) | log_outputs(env.workdir)
    assert any(where.startswith("DataUpload") for where in outputs)
    assert leaks(outputs, secrets) == []
    caches = [env.workdir / "agents" / node / "cache" for node in env.nodes]
    stored = file_contents(*caches)
    assert leaks(stored, (*secrets, "aws_secret_access_key")) == []


def test_veleros_published_default_password_fails_the_upload_saying_what_to_do(
    env: LocalBarge, objects: KubeObjects, app_namespace: str, tmp_path: Path
) -> None:
    """An operator who points Barge at Velero's default password (e.g. Velero's own Secret) gets a
    Failed DataUpload that says why and how to fix it, and nothing is written with it."""
    saved = objects.get(SECRET, VELERO_NS, "barge-repository-password")["data"]
    default = {"repository-password": base64.b64encode(VELERO_DEFAULT_PASSWORD).decode()}
    objects.patch(SECRET, VELERO_NS, "barge-repository-password", {"data": default})
    try:
        volume = tmp_path / "volume"
        write(volume / "f.bin", os.urandom(10_000))
        vs_name, _ = env.sim.snapshot_source(app_namespace, "weak", volume)
        body = data_upload(backup="weak", pvc="weak", source_namespace=app_namespace,
                           volume_snapshot=vs_name, namespace=VELERO_NS)  # fmt: skip
        failed = env.wait_phase("DataUpload", env.create("DataUpload", body)["metadata"]["name"])["status"]
    finally:
        objects.patch(SECRET, VELERO_NS, "barge-repository-password", {"data": saved})
    assert failed["phase"] == "Failed"
    assert "is Velero's published default" in failed["message"]
    assert "config.repositoryPasswordSecret" in failed["message"]
