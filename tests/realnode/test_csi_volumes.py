"""Volumes of the simulated CSI driver on the real kubelet: a pod's claim is provisioned by the
simulated driver once the real PV controller hands it over, and bound by that controller; the
kubelet mounts it through the driver's node plugin at the kubelet's CSI path (the one Barge's
agent reads), unmounts it when the pod goes, and it is reclaimed with its claim."""

from __future__ import annotations

import subprocess
from pathlib import Path

from barge.kube.resources import PERSISTENT_VOLUME, PERSISTENT_VOLUME_CLAIM, POD, KubeObjects
from devenv.realnode.node import NODE_NAME, RealNode
from devenv.realnode.storage import KUBELET_ROOT, STORAGE_CLASS_NAME
from devenv.simcluster import DRIVER, SimCluster
from devenv.simstorage import PROVISIONER_ANNOTATION
from devenv.waiting import wait_for, wait_for_deletion
from tests.integration.kubetest import eventually
from tests.realnode.pods import POD_TIMEOUT, claim_pod, finished, fresh_namespace


def node_mounts(node: RealNode) -> str:
    done = subprocess.run([*node.namespace.enter(), "cat", "/proc/self/mountinfo"],
                          capture_output=True, text=True, check=True)  # fmt: skip
    return done.stdout


def test_a_pod_reads_and_writes_a_claim_of_the_simulated_driver_through_the_kubelets_csi_mount(
    real_node: RealNode, node_objects: KubeObjects, node_storage: SimCluster, tmp_path: Path
) -> None:
    namespace = fresh_namespace(node_objects, "csi")
    source = tmp_path / "source"
    (source / "dir").mkdir(parents=True)
    (source / "dir" / "given.txt").write_text("provisioned before the pod\n")
    volume = node_storage.provision_claim(namespace, "data", source, storage_class=STORAGE_CLASS_NAME)
    pv = node_objects.get(PERSISTENT_VOLUME_CLAIM, namespace, "data")["spec"]["volumeName"]

    script = "cat /data/dir/given.txt > /data/seen.txt && echo from-the-pod > /data/written.txt && sleep 3600"
    uid = node_objects.create(POD, claim_pod(namespace, "data", script))["metadata"]["uid"]
    assert eventually((volume / "written.txt").exists, POD_TIMEOUT)
    assert (volume / "seen.txt").read_text() == "provisioned before the pod\n"
    assert (volume / "written.txt").read_text() == "from-the-pod\n"
    # Mounted where the kubelet mounts any CSI volume, the path Barge's agent reads.
    target = KUBELET_ROOT / "pods" / uid / "volumes" / "kubernetes.io~csi" / pv / "mount"
    assert f" {target} " in node_mounts(real_node)

    node_objects.delete(POD, namespace, "app")
    wait_for_deletion(lambda: node_objects.get(POD, namespace, "app"), POD_TIMEOUT, what="the app pod")
    assert f" {target} " not in node_mounts(real_node)  # the kubelet unpublished it

    node_objects.delete(PERSISTENT_VOLUME_CLAIM, namespace, "data")
    reclaimed = lambda: node_objects.find(PERSISTENT_VOLUME, None, pv) is None  # noqa: E731
    wait_for(reclaimed, POD_TIMEOUT, what=f"PV {pv} reclaimed")
    assert not volume.exists()


def test_a_claim_provisioned_empty_is_written_by_its_pod(
    node_objects: KubeObjects, node_storage: SimCluster
) -> None:
    namespace = fresh_namespace(node_objects, "csi-empty")
    node_objects.create(PERSISTENT_VOLUME_CLAIM, {
        "metadata": {"name": "fresh", "namespace": namespace},
        "spec": {"accessModes": ["ReadWriteOnce"], "storageClassName": STORAGE_CLASS_NAME,
                 "resources": {"requests": {"storage": "1Gi"}}},
    })  # fmt: skip
    node_objects.create(POD, claim_pod(namespace, "fresh", "echo hello > /data/hello.txt"))
    pod = finished(node_objects, namespace, "app")
    assert pod["status"]["phase"] == "Succeeded"
    assert pod["spec"]["nodeName"] == NODE_NAME  # placed by the real scheduler
    assert node_storage.claim_data(namespace, "fresh").joinpath("hello.txt").read_text() == "hello\n"
    # The real PV controller handed the claim to the driver and bound the volume it provisioned.
    annotations = node_objects.get(PERSISTENT_VOLUME_CLAIM, namespace, "fresh")["metadata"]["annotations"]
    assert annotations[PROVISIONER_ANNOTATION] == DRIVER
