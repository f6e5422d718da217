"""A Velero backup and restore on the real node, through Barge installed with helm.

An application's pod writes to its claim of the simulated CSI driver; ``velero backup create
--snapshot-move-data --data-mover barge``: the simulated driver cuts the snapshot, Barge's
coordinator exposes it in a real pod whose volume the kubelet mounts through the driver's node
plugin, and Barge's agent (a pod from the image built here) reads it through the kubelet's pod
directory into the repository on MinIO. The namespace is lost; ``velero restore create`` brings
it back through a restore exposer pod, bit-exact, and nothing of the movement is left behind.
"""

from __future__ import annotations

import contextlib
import re
from collections.abc import Iterator
from pathlib import Path

import pytest

from barge.errors import TemporaryError
from barge.kube.resources import (
    DATA_DOWNLOAD,
    DATA_UPLOAD,
    NAMESPACE,
    PERSISTENT_VOLUME,
    PERSISTENT_VOLUME_CLAIM,
    POD,
    VOLUME_SNAPSHOT,
    KubeObjects,
)
from devenv.helm import Helm
from devenv.realnode.bargeimage import BuiltImage
from devenv.realnode.node import RealNode
from devenv.realnode.storage import STORAGE_CLASS_NAME
from devenv.simcluster import SimCluster
from devenv.trees import capture
from devenv.veleroserver import LocalVelero
from devenv.waiting import wait_for
from tests.fsbuild import awkward_tree
from tests.integration.kubetest import eventually
from tests.realnode.backups import MOVE_TIMEOUT, app_pod, finish
from tests.realnode.chart import installed_chart
from tests.realnode.pods import POD_TIMEOUT, fresh_namespace, running


@pytest.fixture(scope="module")
def barge(
    velero: LocalVelero, barge_image: BuiltImage, real_node: RealNode, node_objects: KubeObjects
) -> Iterator[Helm]:
    assert real_node.endpoints is not None
    with installed_chart(real_node.endpoints, node_objects) as helm:
        yield helm


def published_volumes(node: RealNode) -> set[tuple[str, str]]:
    """(volume, pod uid) of every publication the kubelet asked the driver's node plugin for."""
    log = (node.workdir / "csi-plugin.log").read_text()
    return set(re.findall(r"^published (\S+) at /var/lib/kubelet/pods/([^/]+)/", log, re.MULTILINE))


@pytest.mark.usefixtures("barge")
def test_velero_backs_up_and_restores_a_volume_through_barge_pods_on_the_real_node_bit_exact(
    velero: LocalVelero, real_node: RealNode, node_objects: KubeObjects, node_storage: SimCluster,
    tmp_path: Path,
) -> None:  # fmt: skip
    app = fresh_namespace(node_objects, "shop")
    volumes_before = {v["metadata"]["name"] for v in node_objects.list(PERSISTENT_VOLUME)}  # other tests'
    published_before = published_volumes(real_node)
    volume = node_storage.provision_claim(app, "data", awkward_tree(tmp_path / "source"),
                                          storage_class=STORAGE_CLASS_NAME)  # fmt: skip
    app_uid = node_objects.create(POD, app_pod(app))["metadata"]["uid"]
    eventually(lambda: running(node_objects, app, "app"), POD_TIMEOUT)
    assert eventually((volume / "app.txt").exists, POD_TIMEOUT)
    expected = capture(volume)
    app_volume = node_objects.get(PERSISTENT_VOLUME_CLAIM, app, "data")["spec"]["volumeName"]

    finish(velero, "backup", "shop-backup", "--include-namespaces", app,
           "--snapshot-move-data", "--data-mover", "barge")  # fmt: skip
    (upload,) = node_objects.list(DATA_UPLOAD, velero.namespace, "velero.io/backup-name=shop-backup")
    assert upload["spec"]["datamover"] == "barge"
    assert upload["status"]["phase"] == "Completed", upload["status"]
    # Barge read a snapshot's volume, mounted by the kubelet in a pod of its own.
    backup_exposed = {v for v, pod in published_volumes(real_node) - published_before if pod != app_uid}
    assert backup_exposed - {app_volume}, "the kubelet published no exposer volume for the backup"

    node_objects.delete(NAMESPACE, None, app)
    namespace_gone = lambda: node_objects.find(NAMESPACE, None, app) is None  # noqa: E731
    wait_for(namespace_gone, MOVE_TIMEOUT, what=f"namespace {app} deleted")
    wait_for(lambda: node_objects.find(PERSISTENT_VOLUME, None, app_volume) is None, POD_TIMEOUT,
             what="the lost volume reclaimed")  # fmt: skip

    finish(velero, "restore", "shop-restore", "--from-backup", "shop-backup")
    (download,) = node_objects.list(DATA_DOWNLOAD, velero.namespace, "velero.io/restore-name=shop-restore")
    assert download["status"]["phase"] == "Completed", download["status"]
    restored = wait_for(lambda: running(node_objects, app, "app"), POD_TIMEOUT, what="the restored app pod")
    # The restored claim got the volume a restore exposer pod held (the agent wrote it there).
    restored_volume = node_objects.get(PERSISTENT_VOLUME_CLAIM, app, "data")["spec"]["volumeName"]
    holders = {pod for v, pod in published_volumes(real_node) if v == restored_volume}
    assert holders - {restored["metadata"]["uid"]}, f"only the restored app pod mounted {restored_volume}"
    assert capture(node_storage.claim_data(app, "data")) == expected

    # Nothing of the data movement is left: no exposer pod or claim, no snapshot, no stray volume.
    def leftovers() -> dict[str, list[str]]:
        found = {
            "pods": [p["metadata"]["name"] for p in node_objects.list(POD, velero.namespace)],
            "claims": [c["metadata"]["name"]
                       for c in node_objects.list(PERSISTENT_VOLUME_CLAIM, velero.namespace)],
            "snapshots": [s["metadata"]["name"] for s in node_objects.list(VOLUME_SNAPSHOT)],
            "volumes": [f"{v['metadata']['name']} ({v.get('status', {}).get('phase')})"
                        for v in node_objects.list(PERSISTENT_VOLUME)
                        if v["metadata"]["name"] not in volumes_before
                        and (v["spec"].get("claimRef") or {}).get("namespace") != app],
            "storage snapshots": sorted(node_storage.storage_snapshots()),
        }  # fmt: skip
        return {kind: names for kind, names in found.items() if names}

    with contextlib.suppress(TemporaryError):
        wait_for(lambda: not leftovers(), POD_TIMEOUT, what="the exposers and snapshots cleaned up")
    assert leftovers() == {}
