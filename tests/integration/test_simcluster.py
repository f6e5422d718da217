"""The cluster simulator against the real kube-apiserver: every component it stands in for."""

from __future__ import annotations

import contextlib
import os
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from kubernetes import client
from kubernetes.client.exceptions import ApiException

from barge.control.naming import kubelet_empty_dir_path, kubelet_volume_path
from barge.errors import InvalidInput
from devenv.simcluster import DRIVER, SimCluster
from devenv.simsnapshots import CONTENT_FINALIZER
from devenv.waiting import wait_for
from tests.integration.objects import data_upload

pytestmark = pytest.mark.integration

WAIT = 20.0
SNAP = ("snapshot.storage.k8s.io", "v1")
VS_TYPE = {"apiVersion": "snapshot.storage.k8s.io/v1", "kind": "VolumeSnapshot"}


@pytest.fixture
def ns(kube: client.ApiClient) -> Iterator[str]:
    name = f"sim-{uuid.uuid4().hex[:8]}"
    client.CoreV1Api(kube).create_namespace({"metadata": {"name": name}})
    yield name
    client.CoreV1Api(kube).delete_namespace(name)


@pytest.fixture
def sim(kube: client.ApiClient, ns: str, tmp_path: Path) -> Iterator[SimCluster]:
    cluster = SimCluster(kube, tmp_path / "sim", namespaces=(ns,), poll_s=0.1)
    with cluster:
        yield cluster
    assert cluster.errors == []


@contextlib.contextmanager
def sim_paused(sim: SimCluster) -> Iterator[None]:
    """Let objects pile up unseen, so the next pass meets them all at once (a race on purpose)."""
    sim.stop()
    try:
        yield
    finally:
        sim.start()


def node_name() -> str:
    return f"node-{uuid.uuid4().hex[:8]}"


def pvc_body(
    name: str, *, snapshot: str | None = None, block: bool = False, size: str = "1Gi"
) -> dict[str, Any]:
    spec: dict[str, Any] = {
        "accessModes": ["ReadWriteOnce"],
        "storageClassName": "standard",
        "volumeMode": "Block" if block else "Filesystem",
        "resources": {"requests": {"storage": size}},
    }
    if snapshot is not None:
        spec["dataSource"] = {
            "apiGroup": "snapshot.storage.k8s.io",
            "kind": "VolumeSnapshot",
            "name": snapshot,
        }
    return {"metadata": {"name": name}, "spec": spec}


def pod_body(
    name: str,
    claim: str | None = None,
    *,
    block: bool = False,
    labels: dict[str, str] | None = None,
    node_selector: dict[str, str] | None = None,
    affinity: dict[str, Any] | None = None,
) -> dict[str, Any]:
    container: dict[str, Any] = {"name": "main", "image": "busybox"}
    spec: dict[str, Any] = {"containers": [container]}
    if claim is not None:
        spec["volumes"] = [{"name": "vol", "persistentVolumeClaim": {"claimName": claim}}]
        if block:
            container["volumeDevices"] = [{"name": "vol", "devicePath": "/dev/barge-volume"}]
        else:
            container["volumeMounts"] = [{"name": "vol", "mountPath": "/data"}]
    if node_selector:
        spec["nodeSelector"] = node_selector
    if affinity:
        spec["affinity"] = affinity
    return {"metadata": {"name": name, "labels": labels or {}}, "spec": spec}


def read_pod(core: client.CoreV1Api, ns: str, name: str) -> client.V1Pod | None:
    try:
        return core.read_namespaced_pod(name, ns)
    except ApiException as err:
        if err.status == 404:
            return None
        raise


def wait_running(core: client.CoreV1Api, ns: str, name: str) -> client.V1Pod:
    def running() -> client.V1Pod | None:
        pod = read_pod(core, ns, name)
        return pod if pod is not None and pod.status.phase == "Running" else None

    return wait_for(running, WAIT, what=f"pod {ns}/{name} Running")


def wait_gone(read: Any, *args: Any) -> None:
    def gone() -> bool:
        try:
            read(*args)
        except ApiException as err:
            if err.status == 404:
                return True
            raise
        return False

    wait_for(gone, WAIT, what=f"{args} deleted")


def write_tree(root: Path) -> Path:
    (root / "sub").mkdir(parents=True)
    (root / "a.txt").write_text("alpha\n")
    (root / "sub" / "b.bin").write_bytes(os.urandom(5000))
    (root / "link").symlink_to("a.txt")
    return root


def tree(root: Path) -> dict[str, bytes | str]:
    result: dict[str, bytes | str] = {}
    for path in sorted(root.rglob("*")):
        rel = str(path.relative_to(root))
        if path.is_symlink():
            result[rel] = f"-> {os.readlink(path)}"
        elif path.is_file():
            result[rel] = path.read_bytes()
    return result


def volume_path(sim: SimCluster, pod: client.V1Pod, pv_name: str, block: bool) -> Path:
    return Path(
        kubelet_volume_path(str(sim.kubelet_root(pod.spec.node_name)), pod.metadata.uid, pv_name, block)
    )


def bound_pv(core: client.CoreV1Api, ns: str, claim: str) -> str:
    def volume() -> str | None:
        pvc = core.read_namespaced_persistent_volume_claim(claim, ns)
        return str(pvc.spec.volume_name) if pvc.status.phase == "Bound" else None

    return wait_for(volume, WAIT, what=f"PVC {ns}/{claim} Bound")


class TestRestoreFromSnapshotOnTheRightNode:
    def test_pod_runs_on_the_matching_node_and_sees_the_snapshot_data(
        self, kube: client.ApiClient, sim: SimCluster, ns: str, tmp_path: Path
    ) -> None:
        core = client.CoreV1Api(kube)
        zone_a, zone_b = node_name(), node_name()
        sim.add_node(zone_a, {"zone": "a"})
        sim.add_node(zone_b, {"zone": "b"})
        source = write_tree(tmp_path / "source")
        vs_name, handle = sim.snapshot_source(ns, "data-db-0", source)
        assert vs_name.startswith("velero-data-db-0-")
        assert len(vs_name) == len("velero-data-db-0-") + 5
        assert handle.startswith("sim-snap:")

        core.create_namespaced_persistent_volume_claim(ns, pvc_body("exposed", snapshot=vs_name))
        core.create_namespaced_pod(ns, pod_body("exposer", "exposed", node_selector={"zone": "b"}))
        pod = wait_running(core, ns, "exposer")

        assert pod.spec.node_name == zone_b
        assert pod.status.pod_ip.startswith("127.0.0.")
        assert pod.status.container_statuses[0].ready is True
        assert {c.type for c in pod.status.conditions if c.status == "True"} >= {"PodScheduled", "Ready"}
        pv_name = bound_pv(core, ns, "exposed")
        pv = core.read_persistent_volume(pv_name)
        assert pv.spec.csi.driver == DRIVER
        assert pv.spec.capacity["storage"] == "1Gi"
        assert (
            pv.spec.claim_ref.uid == core.read_namespaced_persistent_volume_claim("exposed", ns).metadata.uid
        )
        mount = volume_path(sim, pod, pv_name, block=False)
        assert mount.is_symlink()
        assert tree(mount.resolve()) == tree(source)
        (mount / "a.txt").write_text("changed in the restored copy\n")
        assert (source / "a.txt").read_text() == "alpha\n"

    def test_required_node_affinity_terms_are_ored_and_expressions_anded(
        self, kube: client.ApiClient, sim: SimCluster, ns: str
    ) -> None:
        core = client.CoreV1Api(kube)
        plain, gpu_a, gpu_b = node_name(), node_name(), node_name()
        sim.add_node(plain)
        sim.add_node(gpu_a, {"gpu": "yes", "zone": "a"})
        sim.add_node(gpu_b, {"gpu": "yes", "zone": "b"})
        affinity = {
            "nodeAffinity": {
                "requiredDuringSchedulingIgnoredDuringExecution": {
                    "nodeSelectorTerms": [
                        {"matchExpressions": [{"key": "zone", "operator": "In", "values": ["nowhere"]}]},
                        {
                            "matchExpressions": [
                                {"key": "gpu", "operator": "Exists"},
                                {"key": "zone", "operator": "NotIn", "values": ["a"]},
                            ]
                        },
                    ]
                }
            }
        }
        core.create_namespaced_pod(ns, pod_body("picky", affinity=affinity))
        assert wait_running(core, ns, "picky").spec.node_name == gpu_b

    def test_pods_spread_to_the_least_loaded_node(
        self, kube: client.ApiClient, sim: SimCluster, ns: str
    ) -> None:
        core = client.CoreV1Api(kube)
        nodes = {node_name(), node_name()}
        for node in nodes:
            sim.add_node(node, {"pool": ns})
        for index in range(4):
            core.create_namespaced_pod(ns, pod_body(f"p{index}", node_selector={"pool": ns}))
        placed = [wait_running(core, ns, f"p{index}").spec.node_name for index in range(4)]
        assert sorted(placed.count(node) for node in nodes) == [2, 2]


def test_block_volume_is_an_image_copied_with_its_holes(
    kube: client.ApiClient, sim: SimCluster, ns: str, tmp_path: Path
) -> None:
    core = client.CoreV1Api(kube)
    sim.add_node(node_name())
    image = tmp_path / "disk.img"
    payload = os.urandom(8192)
    with image.open("wb") as handle:
        handle.truncate(64 << 20)
        handle.seek(32 << 20)
        handle.write(payload)
    vs_name, _ = sim.snapshot_source(ns, "raw-disk", image, block=True)
    snapshot = client.CustomObjectsApi(kube).get_namespaced_custom_object(
        *SNAP, ns, "volumesnapshots", vs_name
    )
    assert snapshot["status"]["restoreSize"] == "64Mi"

    core.create_namespaced_persistent_volume_claim(
        ns, pvc_body("raw", snapshot=vs_name, block=True, size="64Mi")
    )
    core.create_namespaced_pod(ns, pod_body("reader", "raw", block=True))
    pod = wait_running(core, ns, "reader")
    device = volume_path(sim, pod, bound_pv(core, ns, "raw"), block=True)
    assert device.is_symlink()
    copy = device.resolve()
    assert copy.name.endswith(".img")
    assert copy != image
    assert copy.stat().st_size == 64 << 20
    assert copy.stat().st_blocks * 512 < 4 << 20  # sparse, not 64 MiB of written zeros
    with copy.open("rb") as handle:
        handle.seek(32 << 20)
        assert handle.read(8192) == payload
        handle.seek(0)
        assert handle.read(4096) == bytes(4096)


def test_a_cordoned_or_not_ready_node_gets_no_pods(kube: client.ApiClient, sim: SimCluster, ns: str) -> None:
    core = client.CoreV1Api(kube)
    node = node_name()
    sim.add_node(node, {"pool": ns})
    sim.cordon(node)
    core.create_namespaced_pod(ns, pod_body("waiting", node_selector={"pool": ns}))

    def unschedulable() -> client.V1PodCondition | None:
        """The node counted: a pass whose listing predates the new node may first report 0/0."""
        conditions = core.read_namespaced_pod("waiting", ns).status.conditions or []
        return next(
            (
                c
                for c in conditions
                if c.type == "PodScheduled"
                and c.reason == "Unschedulable"
                and "0/1 nodes" in (c.message or "")
            ),
            None,
        )

    condition = wait_for(unschedulable, WAIT, what="PodScheduled=False with 0/1 nodes available")
    assert condition.status == "False"
    assert "0/1 nodes are available" in condition.message
    pod = core.read_namespaced_pod("waiting", ns)
    assert pod.spec.node_name is None
    assert pod.status.phase == "Pending"

    sim.set_node_ready(node, False)
    sim.uncordon(node)
    sim.reconcile_once()
    assert core.read_namespaced_pod("waiting", ns).spec.node_name is None
    sim.set_node_ready(node, True)
    assert wait_running(core, ns, "waiting").spec.node_name == node


def test_a_pod_waits_for_its_claim_to_exist_and_bind(
    kube: client.ApiClient, sim: SimCluster, ns: str
) -> None:
    core = client.CoreV1Api(kube)
    sim.add_node(node_name())
    core.create_namespaced_pod(ns, pod_body("early", "later"))

    def reason() -> str | None:
        conditions = core.read_namespaced_pod("early", ns).status.conditions or []
        return next((c.message for c in conditions if c.type == "PodScheduled"), None)

    assert wait_for(reason, WAIT, what="unschedulable reason") == 'persistentvolumeclaim "later" not found'
    core.create_namespaced_persistent_volume_claim(ns, pvc_body("later"))
    pod = wait_running(core, ns, "early")
    mount = volume_path(sim, pod, bound_pv(core, ns, "later"), block=False)
    assert mount.resolve().is_dir()
    assert list(mount.iterdir()) == []


class TestClaimAndVolumeLifecycle:
    def test_deleting_a_claim_waits_for_its_pod_then_deletes_the_volume_and_data(
        self, kube: client.ApiClient, sim: SimCluster, ns: str
    ) -> None:
        core = client.CoreV1Api(kube)
        sim.add_node(node_name())
        core.create_namespaced_persistent_volume_claim(ns, pvc_body("scratch"))
        core.create_namespaced_pod(ns, pod_body("user", "scratch"))
        pod = wait_running(core, ns, "user")
        pv_name = bound_pv(core, ns, "scratch")
        mount = volume_path(sim, pod, pv_name, block=False)
        data_dir = mount.resolve()
        (mount / "file").write_text("x")

        core.delete_namespaced_persistent_volume_claim("scratch", ns)
        claim = core.read_namespaced_persistent_volume_claim("scratch", ns)
        assert claim.metadata.deletion_timestamp is not None
        assert "kubernetes.io/pvc-protection" in claim.metadata.finalizers
        sim.reconcile_once()
        assert core.read_namespaced_persistent_volume_claim("scratch", ns).metadata.deletion_timestamp

        core.delete_namespaced_pod("user", ns)
        wait_gone(core.read_namespaced_pod, "user", ns)
        assert not mount.exists()
        assert not mount.is_symlink()
        wait_gone(core.read_namespaced_persistent_volume_claim, "scratch", ns)
        wait_gone(core.read_persistent_volume, pv_name)
        assert not data_dir.exists()

    def test_a_volume_in_use_on_the_node_keeps_its_data_until_its_user_lets_go(
        self, kube: client.ApiClient, sim: SimCluster, ns: str
    ) -> None:
        """A real volume cannot be deleted while a node has it mounted, nor unmounted while a
        process uses it: an agent still reading an exposure whose pod and claim are gone does not
        see its data vanish under it."""
        core = client.CoreV1Api(kube)
        sim.add_node(node_name())
        core.create_namespaced_persistent_volume_claim(ns, pvc_body("held"))
        core.create_namespaced_pod(ns, pod_body("user", "held"))
        pod = wait_running(core, ns, "user")
        pv_name = bound_pv(core, ns, "held")
        data_dir = volume_path(sim, pod, pv_name, block=False).resolve()
        (data_dir / "file").write_text("x")
        with (data_dir / "file").open() as reading:
            core.delete_namespaced_pod("user", ns)
            core.delete_namespaced_persistent_volume_claim("held", ns)
            wait_gone(core.read_namespaced_persistent_volume_claim, "held", ns)
            for _ in range(3):
                sim.reconcile_once()
            assert reading.read() == "x"
            assert (data_dir / "file").exists()
        wait_gone(core.read_persistent_volume, pv_name)
        assert not data_dir.exists()

    def test_a_retained_volume_is_released_and_keeps_its_data(
        self, kube: client.ApiClient, sim: SimCluster, ns: str
    ) -> None:
        core = client.CoreV1Api(kube)
        storage = client.StorageV1Api(kube)
        class_name = f"retain-{ns}"
        storage.create_storage_class(
            {"metadata": {"name": class_name}, "provisioner": DRIVER, "reclaimPolicy": "Retain"}
        )
        try:
            body = pvc_body("kept")
            body["spec"]["storageClassName"] = class_name
            core.create_namespaced_persistent_volume_claim(ns, body)
            pv_name = bound_pv(core, ns, "kept")
            assert core.read_persistent_volume(pv_name).spec.persistent_volume_reclaim_policy == "Retain"
            data_dir = sim.root / "volumes" / pv_name
            (data_dir / "keep.txt").write_text("kept")
            core.delete_namespaced_persistent_volume_claim("kept", ns)
            wait_gone(core.read_namespaced_persistent_volume_claim, "kept", ns)
            wait_for(
                lambda: core.read_persistent_volume(pv_name).status.phase == "Released", WAIT, what="Released"
            )
            assert (data_dir / "keep.txt").read_text() == "kept"
            core.delete_persistent_volume(pv_name)
            wait_gone(core.read_persistent_volume, pv_name)
        finally:
            storage.delete_storage_class(class_name)

    def test_a_volume_pre_bound_to_a_new_claim_is_handed_over_with_its_data(
        self, kube: client.ApiClient, sim: SimCluster, ns: str
    ) -> None:
        """The restore hand-over: the temporary claim goes, the target claim (with a selector) gets the PV."""
        core = client.CoreV1Api(kube)
        core.create_namespaced_persistent_volume_claim(ns, pvc_body("temporary"))
        pv_name = bound_pv(core, ns, "temporary")
        (sim.root / "volumes" / pv_name / "restored.txt").write_text("restored data")
        core.patch_persistent_volume(
            pv_name,
            {
                "spec": {
                    "persistentVolumeReclaimPolicy": "Retain",
                    "claimRef": {"namespace": ns, "name": "target", "uid": None, "resourceVersion": None},
                }
            },
        )
        core.delete_namespaced_persistent_volume_claim("temporary", ns)
        wait_gone(core.read_namespaced_persistent_volume_claim, "temporary", ns)
        target = pvc_body("target")
        target["spec"]["selector"] = {"matchLabels": {"velero.io/dynamic-pv-restore": "app.target.abcde"}}
        created = core.create_namespaced_persistent_volume_claim(ns, target)

        assert bound_pv(core, ns, "target") == pv_name
        assert (sim.claim_data(ns, "target") / "restored.txt").read_text() == "restored data"
        pv = core.read_persistent_volume(pv_name)
        assert pv.status.phase == "Bound"
        assert (pv.spec.claim_ref.name, pv.spec.claim_ref.uid) == ("target", created.metadata.uid)
        assert (sim.root / "volumes" / pv_name / "restored.txt").read_text() == "restored data"


class TestSnapshots:
    def test_a_pre_provisioned_snapshot_pair_becomes_ready_with_the_handles_size(
        self, kube: client.ApiClient, sim: SimCluster, ns: str, tmp_path: Path
    ) -> None:
        crs = client.CustomObjectsApi(kube)
        _, handle = sim.snapshot_source(ns, "origin", write_tree(tmp_path / "src"), size=3 << 30)
        content_name = f"clone-{ns}"
        crs.create_cluster_custom_object(
            *SNAP,
            "volumesnapshotcontents",
            {
                "apiVersion": "snapshot.storage.k8s.io/v1",
                "kind": "VolumeSnapshotContent",
                "metadata": {"name": content_name},
                "spec": {
                    "deletionPolicy": "Retain",
                    "driver": DRIVER,
                    "source": {"snapshotHandle": handle},
                    "volumeSnapshotRef": {"namespace": ns, "name": "clone"},
                },
            },
        )
        try:
            crs.create_namespaced_custom_object(
                *SNAP,
                ns,
                "volumesnapshots",
                {
                    **VS_TYPE,
                    "metadata": {"name": "clone"},
                    "spec": {"source": {"volumeSnapshotContentName": content_name}},
                },
            )

            def ready() -> dict[str, Any] | None:
                vs = crs.get_namespaced_custom_object(*SNAP, ns, "volumesnapshots", "clone")
                return vs if (vs.get("status") or {}).get("readyToUse") else None

            status = wait_for(ready, WAIT, what="clone ready")["status"]
            assert status["restoreSize"] == "3Gi"
            assert status["boundVolumeSnapshotContentName"] == content_name
            content = crs.get_cluster_custom_object(*SNAP, "volumesnapshotcontents", content_name)
            assert content["status"]["snapshotHandle"] == handle
            assert content["status"]["restoreSize"] == 3 << 30
            assert content["metadata"]["finalizers"] == [CONTENT_FINALIZER]
        finally:
            crs.delete_cluster_custom_object(*SNAP, "volumesnapshotcontents", content_name)
        wait_gone(crs.get_cluster_custom_object, *SNAP, "volumesnapshotcontents", content_name)
        assert handle in sim.storage_snapshots()  # Retain: the storage snapshot outlives its content

    def test_an_unknown_handle_and_fail_snapshot_set_an_error(
        self, kube: client.ApiClient, sim: SimCluster, ns: str, tmp_path: Path
    ) -> None:
        crs = client.CustomObjectsApi(kube)
        content_name = f"bogus-{ns}"
        crs.create_cluster_custom_object(
            *SNAP,
            "volumesnapshotcontents",
            {
                "apiVersion": "snapshot.storage.k8s.io/v1",
                "kind": "VolumeSnapshotContent",
                "metadata": {"name": content_name},
                "spec": {
                    "deletionPolicy": "Retain",
                    "driver": DRIVER,
                    "source": {"snapshotHandle": "sim-snap:doesnotexist"},
                    "volumeSnapshotRef": {"namespace": ns, "name": "bogus"},
                },
            },
        )
        try:
            crs.create_namespaced_custom_object(
                *SNAP,
                ns,
                "volumesnapshots",
                {
                    **VS_TYPE,
                    "metadata": {"name": "bogus"},
                    "spec": {"source": {"volumeSnapshotContentName": content_name}},
                },
            )

            def error() -> str | None:
                vs = crs.get_namespaced_custom_object(*SNAP, ns, "volumesnapshots", "bogus")
                return ((vs.get("status") or {}).get("error") or {}).get("message")

            assert "does not exist" in wait_for(error, WAIT, what="snapshot error")
        finally:
            crs.delete_cluster_custom_object(*SNAP, "volumesnapshotcontents", content_name)
        wait_gone(crs.get_cluster_custom_object, *SNAP, "volumesnapshotcontents", content_name)

        vs_name, _ = sim.snapshot_source(ns, "other", write_tree(tmp_path / "other"))
        sim.fail_snapshot(ns, vs_name, "disk on fire")
        status = crs.get_namespaced_custom_object(*SNAP, ns, "volumesnapshots", vs_name)["status"]
        assert status["readyToUse"] is False
        assert status["error"]["message"] == "disk on fire"

    def test_a_snapshot_of_a_claim_is_a_point_in_time_copy(
        self, kube: client.ApiClient, sim: SimCluster, ns: str
    ) -> None:
        core, crs = client.CoreV1Api(kube), client.CustomObjectsApi(kube)
        core.create_namespaced_persistent_volume_claim(ns, pvc_body("live"))
        data = sim.root / "volumes" / bound_pv(core, ns, "live")
        (data / "v.txt").write_text("v1")
        crs.create_namespaced_custom_object(
            *SNAP,
            ns,
            "volumesnapshots",
            {
                **VS_TYPE,
                **VS_TYPE,
                "metadata": {"name": "cut"},
                "spec": {"source": {"persistentVolumeClaimName": "live"}},
            },
        )
        wait_for(
            lambda: (
                crs.get_namespaced_custom_object(*SNAP, ns, "volumesnapshots", "cut").get("status") or {}
            ).get("readyToUse"),
            WAIT,
            what="snapshot ready",
        )
        (data / "v.txt").write_text("v2")
        core.create_namespaced_persistent_volume_claim(ns, pvc_body("from-cut", snapshot="cut"))
        restored = sim.root / "volumes" / bound_pv(core, ns, "from-cut")
        assert (restored / "v.txt").read_text() == "v1"

    def test_a_bad_source_is_refused_with_a_message(self, sim: SimCluster, ns: str, tmp_path: Path) -> None:
        with pytest.raises(InvalidInput, match="must be an image file"):
            sim.snapshot_source(ns, "x", tmp_path, block=True)

    def test_a_deleted_delete_policy_content_deletes_its_storage_snapshot_first(
        self, kube: client.ApiClient, sim: SimCluster, ns: str
    ) -> None:
        """The external-snapshotter's contract: the finalizer holds the content until the storage
        snapshot (record and the registry's data copy) is gone."""
        crs = client.CustomObjectsApi(kube)
        handle, content_name, copy = take_snapshot(kube, sim, ns, "cut")
        content = crs.get_cluster_custom_object(*SNAP, "volumesnapshotcontents", content_name)
        assert content["spec"]["deletionPolicy"] == "Delete"
        assert content["metadata"]["finalizers"] == [CONTENT_FINALIZER]
        assert copy.is_dir()

        crs.delete_namespaced_custom_object(*SNAP, ns, "volumesnapshots", "cut")
        wait_gone(crs.get_cluster_custom_object, *SNAP, "volumesnapshotcontents", content_name)
        assert handle not in sim.storage_snapshots()
        assert not copy.exists()

    def test_a_retained_content_lets_go_and_keeps_its_storage_snapshot(
        self, kube: client.ApiClient, sim: SimCluster, ns: str
    ) -> None:
        crs = client.CustomObjectsApi(kube)
        handle, content_name, copy = take_snapshot(kube, sim, ns, "kept")
        crs.patch_cluster_custom_object(
            *SNAP, "volumesnapshotcontents", content_name, {"spec": {"deletionPolicy": "Retain"}}
        )
        crs.delete_namespaced_custom_object(*SNAP, ns, "volumesnapshots", "kept")
        for _ in range(3):
            sim.reconcile_once()
        assert crs.get_cluster_custom_object(*SNAP, "volumesnapshotcontents", content_name)  # Retain: kept
        crs.delete_cluster_custom_object(*SNAP, "volumesnapshotcontents", content_name)
        wait_gone(crs.get_cluster_custom_object, *SNAP, "volumesnapshotcontents", content_name)
        assert sim.storage_snapshots()[handle].path == copy
        assert copy.is_dir()


def take_snapshot(kube: client.ApiClient, sim: SimCluster, ns: str, name: str) -> tuple[str, str, Path]:
    """A dynamic snapshot of a fresh claim: (handle, content name, the registry's data copy)."""
    core, crs = client.CoreV1Api(kube), client.CustomObjectsApi(kube)
    core.create_namespaced_persistent_volume_claim(ns, pvc_body(f"{name}-src"))
    (sim.root / "volumes" / bound_pv(core, ns, f"{name}-src") / "f.txt").write_text(name)
    crs.create_namespaced_custom_object(
        *SNAP,
        ns,
        "volumesnapshots",
        {
            **VS_TYPE,
            "metadata": {"name": name},
            "spec": {"source": {"persistentVolumeClaimName": f"{name}-src"}},
        },
    )

    def ready() -> dict[str, Any] | None:
        status = crs.get_namespaced_custom_object(*SNAP, ns, "volumesnapshots", name).get("status") or {}
        return status if status.get("readyToUse") else None

    content_name = wait_for(ready, WAIT, what=f"snapshot {name} ready")["boundVolumeSnapshotContentName"]
    handle = crs.get_cluster_custom_object(*SNAP, "volumesnapshotcontents", content_name)["status"][
        "snapshotHandle"
    ]
    data = sim.storage_snapshots()[handle]
    assert (data.path / "f.txt").read_text() == name
    return handle, content_name, data.path


def pdb(name: str, selector: dict[str, str], min_available: int) -> dict[str, Any]:
    return {
        "metadata": {"name": name},
        "spec": {"minAvailable": min_available, "selector": {"matchLabels": selector}},
    }


class TestDisruption:
    def test_eviction_is_refused_at_zero_disruptions_allowed_and_allowed_at_one(
        self, kube: client.ApiClient, sim: SimCluster, ns: str
    ) -> None:
        core, policy = client.CoreV1Api(kube), client.PolicyV1Api(kube)
        sim.add_node(node_name())
        core.create_namespaced_pod(ns, pod_body("db-0", labels={"app": "db"}))
        wait_running(core, ns, "db-0")
        policy.create_namespaced_pod_disruption_budget(ns, pdb("db", {"app": "db"}, 1))

        def status(allowed: int) -> client.V1PodDisruptionBudgetStatus | None:
            budget = policy.read_namespaced_pod_disruption_budget("db", ns)
            current = budget.status
            fresh = current.observed_generation == budget.metadata.generation
            return current if fresh and current.disruptions_allowed == allowed else None

        zero = wait_for(lambda: status(0), WAIT, what="PDB with 0 disruptions allowed")
        assert (zero.current_healthy, zero.desired_healthy, zero.expected_pods) == (1, 1, 1)
        assert sim.evict(ns, "db-0") is False
        assert read_pod(core, ns, "db-0") is not None

        core.create_namespaced_pod(ns, pod_body("db-1", labels={"app": "db"}))
        wait_running(core, ns, "db-1")
        one = wait_for(lambda: status(1), WAIT, what="PDB with 1 disruption allowed")
        assert (one.current_healthy, one.expected_pods) == (2, 2)
        assert sim.evict(ns, "db-0") is True
        wait_gone(core.read_namespaced_pod, "db-0", ns)
        assert sim.evict(ns, "db-1") is False  # the budget is spent

    def test_drain_evicts_everything_and_retries_what_a_budget_refuses(
        self, kube: client.ApiClient, sim: SimCluster, ns: str
    ) -> None:
        core, policy = client.CoreV1Api(kube), client.PolicyV1Api(kube)
        draining, spare = node_name(), node_name()
        sim.add_node(draining, {"role": "draining"})
        sim.add_node(spare, {"role": "spare"})
        core.create_namespaced_pod(ns, pod_body("free", node_selector={"role": "draining"}))
        core.create_namespaced_pod(
            ns, pod_body("guarded", labels={"app": "web"}, node_selector={"role": "draining"})
        )
        for name in ("free", "guarded"):
            wait_running(core, ns, name)
        policy.create_namespaced_pod_disruption_budget(ns, pdb("web", {"app": "web"}, 1))

        assert sim.drain(draining, timeout=3.0) == [f"{ns}/guarded"]
        assert read_pod(core, ns, "free") is None
        assert core.read_node(draining).spec.unschedulable is True

        result: list[list[str]] = []
        drainer = threading.Thread(target=lambda: result.append(sim.drain(draining, timeout=WAIT)))
        drainer.start()
        core.create_namespaced_pod(
            ns, pod_body("web-2", labels={"app": "web"}, node_selector={"role": "spare"})
        )
        drainer.join(WAIT + 5)
        assert result == [[]]
        assert read_pod(core, ns, "guarded") is None
        assert wait_running(core, ns, "web-2").spec.node_name == spare


    def test_readiness_is_what_an_exec_probe_says_and_always_allow_lets_an_unready_pod_go(
        self, kube: client.ApiClient, sim: SimCluster, ns: str
    ) -> None:
        """The probe runs in the emptyDir mounted at the container's workingDir: a file there (put
        by whatever writes it, as Barge's agent does through the kubelet root) makes it pass."""
        core, policy = client.CoreV1Api(kube), client.PolicyV1Api(kube)
        node = node_name()
        sim.add_node(node)
        body = pod_body("probed", labels={"app": "probed"})
        body["spec"]["volumes"] = [{"name": "status", "emptyDir": {}}]
        body["spec"]["containers"][0] |= {
            "workingDir": "/status",
            "volumeMounts": [{"name": "status", "mountPath": "/status"}],
            "readinessProbe": {"exec": {"command": ["sh", "-c", "test -e ok"]}, "periodSeconds": 1},
        }
        core.create_namespaced_pod(ns, body)
        pod = wait_running(core, ns, "probed")
        budget = pdb("probed", {"app": "probed"}, 1)
        budget["spec"] = {**budget["spec"], "unhealthyPodEvictionPolicy": "AlwaysAllow"}
        policy.create_namespaced_pod_disruption_budget(ns, budget)
        status_dir = Path(kubelet_empty_dir_path(str(sim.kubelet_root(node)), pod.metadata.uid, "status"))

        def ready(value: bool) -> bool:
            current = read_pod(core, ns, "probed")
            conditions = {c.type: c.status for c in (current.status.conditions or [])} if current else {}
            return conditions.get("Ready") == str(value) and conditions.get("ContainersReady") == str(value)

        assert ready(False)  # unready until the probe first passes
        (status_dir / "ok").write_text("")
        wait_for(lambda: ready(True), WAIT, what="the probe to pass")
        assert sim.evict(ns, "probed") is False  # Ready: the budget protects it
        (status_dir / "ok").unlink()
        wait_for(lambda: ready(False), WAIT, what="the probe to fail 3 times in a row")
        assert sim.evict(ns, "probed") is True  # unready: AlwaysAllow lets it go
        wait_gone(core.read_namespaced_pod, "probed", ns)
        assert not status_dir.exists()


class TestPodFailureAndNodeRemoval:
    def test_a_failed_pod_releases_its_volume(self, kube: client.ApiClient, sim: SimCluster, ns: str) -> None:
        core = client.CoreV1Api(kube)
        sim.add_node(node_name())
        core.create_namespaced_persistent_volume_claim(ns, pvc_body("c"))
        core.create_namespaced_pod(ns, pod_body("crashy", "c"))
        pod = wait_running(core, ns, "crashy")
        mount = volume_path(sim, pod, bound_pv(core, ns, "c"), block=False)
        assert mount.exists()
        sim.fail_pod(ns, "crashy", "OOMKilled")
        failed = core.read_namespaced_pod("crashy", ns)
        assert failed.status.phase == "Failed"
        assert failed.status.container_statuses[0].state.terminated.reason == "OOMKilled"
        wait_for(lambda: not mount.is_symlink(), WAIT, what="volume unmounted")
        core.delete_namespaced_persistent_volume_claim("c", ns)
        wait_gone(core.read_namespaced_persistent_volume_claim, "c", ns)

    def test_pods_of_a_removed_node_are_deleted(
        self, kube: client.ApiClient, sim: SimCluster, ns: str
    ) -> None:
        core = client.CoreV1Api(kube)
        node = node_name()
        sim.add_node(node)
        core.create_namespaced_pod(ns, pod_body("stranded"))
        wait_running(core, ns, "stranded")
        sim.remove_node(node)
        wait_gone(core.read_namespaced_pod, "stranded", ns)


def test_orphans_are_garbage_collected_and_owned_objects_kept(
    kube: client.ApiClient, sim: SimCluster, ns: str
) -> None:
    core, crs = client.CoreV1Api(kube), client.CustomObjectsApi(kube)
    owner = core.create_namespaced_config_map(ns, {"metadata": {"name": "owner"}})
    survivor = core.create_namespaced_config_map(ns, {"metadata": {"name": "survivor"}})

    def owned_by(cm: client.V1ConfigMap) -> list[dict[str, Any]]:
        return [{"apiVersion": "v1", "kind": "ConfigMap", "name": cm.metadata.name, "uid": cm.metadata.uid}]

    for suffix, cm in (("orphan", owner), ("kept", survivor)):
        refs = owned_by(cm)
        core.create_namespaced_pod(
            ns, {**pod_body(f"pod-{suffix}"), "metadata": {"name": f"pod-{suffix}", "ownerReferences": refs}}
        )
        claim = pvc_body(f"pvc-{suffix}")
        claim["metadata"]["ownerReferences"] = refs
        core.create_namespaced_persistent_volume_claim(ns, claim)
        crs.create_namespaced_custom_object(
            *SNAP,
            ns,
            "volumesnapshots",
            {
                **VS_TYPE,
                "metadata": {"name": f"vs-{suffix}", "ownerReferences": refs},
                "spec": {"source": {"persistentVolumeClaimName": f"pvc-{suffix}"}},
            },
        )
    sim.reconcile_once()
    assert read_pod(core, ns, "pod-orphan") is not None

    core.delete_namespaced_config_map("owner", ns)
    wait_gone(core.read_namespaced_pod, "pod-orphan", ns)
    wait_gone(core.read_namespaced_persistent_volume_claim, "pvc-orphan", ns)
    wait_gone(crs.get_namespaced_custom_object, *SNAP, ns, "volumesnapshots", "vs-orphan")
    sim.reconcile_once()
    assert read_pod(core, ns, "pod-kept") is not None
    assert core.read_namespaced_persistent_volume_claim("pvc-kept", ns) is not None
    assert crs.get_namespaced_custom_object(*SNAP, ns, "volumesnapshots", "vs-kept") is not None


def test_the_coordinators_backup_exposure_runs_and_is_collected_with_its_data_upload(
    kube: client.ApiClient, tmp_path: Path
) -> None:
    """docs/control-plane.md "Exposure", step by step (the clone takes the storage snapshot over from
    Velero's source objects), then the DataUpload goes and takes it all along, storage snapshot too."""
    core, crs = client.CoreV1Api(kube), client.CustomObjectsApi(kube)
    app_ns, cr_ns = f"app-{uuid.uuid4().hex[:6]}", f"velero-{uuid.uuid4().hex[:6]}"
    for namespace in (app_ns, cr_ns):
        core.create_namespace({"metadata": {"name": namespace}})
    with SimCluster(kube, tmp_path / "sim", namespaces=(app_ns, cr_ns), poll_s=0.1) as sim:
        node = node_name()
        sim.add_node(node)
        source = write_tree(tmp_path / "app-data")
        vs_name, handle = sim.snapshot_source(app_ns, "data-db-0", source)
        original = crs.get_namespaced_custom_object(*SNAP, app_ns, "volumesnapshots", vs_name)
        original_name = original["status"]["boundVolumeSnapshotContentName"]
        original_content = crs.get_cluster_custom_object(*SNAP, "volumesnapshotcontents", original_name)
        assert original_content["status"]["snapshotHandle"] == handle
        assert original_content["spec"]["deletionPolicy"] == "Delete"
        assert original_content["metadata"]["finalizers"] == [CONTENT_FINALIZER]

        upload = data_upload(pvc="data-db-0", source_ns=app_ns)
        upload["metadata"]["namespace"] = cr_ns
        upload["spec"]["csiSnapshot"]["volumeSnapshot"] = vs_name
        upload = crs.create_namespaced_custom_object("velero.io", "v2alpha1", cr_ns, "datauploads", upload)
        name = upload["metadata"]["name"]
        owner = [
            {
                "apiVersion": "velero.io/v2alpha1",
                "kind": "DataUpload",
                "name": name,
                "uid": upload["metadata"]["uid"],
                "controller": True,
            }
        ]
        crs.create_cluster_custom_object(
            *SNAP,
            "volumesnapshotcontents",
            {
                "apiVersion": "snapshot.storage.k8s.io/v1",
                "kind": "VolumeSnapshotContent",
                "metadata": {"name": name},
                "spec": {
                    "deletionPolicy": "Delete",
                    "driver": original_content["spec"]["driver"],
                    "source": {"snapshotHandle": handle},
                    "volumeSnapshotRef": {"namespace": cr_ns, "name": name},
                },
            },
        )
        crs.create_namespaced_custom_object(
            *SNAP,
            cr_ns,
            "volumesnapshots",
            {
                **VS_TYPE,
                "metadata": {"name": name, "ownerReferences": owner},
                "spec": {"source": {"volumeSnapshotContentName": name}},
            },
        )
        wait_for(
            lambda: (
                crs.get_namespaced_custom_object(*SNAP, cr_ns, "volumesnapshots", name).get("status") or {}
            ).get("readyToUse"),
            WAIT,
            what="clone ready",
        )
        # The release: the source content goes Retain, then the source snapshot and content go.
        crs.patch_cluster_custom_object(
            *SNAP, "volumesnapshotcontents", original_name, {"spec": {"deletionPolicy": "Retain"}}
        )
        crs.delete_namespaced_custom_object(*SNAP, app_ns, "volumesnapshots", vs_name)
        crs.delete_cluster_custom_object(*SNAP, "volumesnapshotcontents", original_name)
        wait_gone(crs.get_cluster_custom_object, *SNAP, "volumesnapshotcontents", original_name)
        assert handle in sim.storage_snapshots()  # the clone holds it now

        claim = pvc_body(name, snapshot=name, size=str(original["status"]["restoreSize"]))
        claim["metadata"]["ownerReferences"] = owner
        core.create_namespaced_persistent_volume_claim(cr_ns, claim)
        exposer = pod_body(name, name)
        exposer["metadata"]["ownerReferences"] = owner
        core.create_namespaced_pod(cr_ns, exposer)

        pod = wait_running(core, cr_ns, name)
        pv_name = bound_pv(core, cr_ns, name)
        mount = volume_path(sim, pod, pv_name, block=False)
        assert tree(mount.resolve()) == tree(source)
        data_dir = mount.resolve()

        crs.delete_namespaced_custom_object("velero.io", "v2alpha1", cr_ns, "datauploads", name)
        wait_gone(core.read_namespaced_pod, name, cr_ns)
        wait_gone(core.read_namespaced_persistent_volume_claim, name, cr_ns)
        wait_gone(crs.get_namespaced_custom_object, *SNAP, cr_ns, "volumesnapshots", name)
        wait_gone(core.read_persistent_volume, pv_name)
        # The clone content (Delete) followed its snapshot, and took the storage snapshot with it.
        wait_gone(crs.get_cluster_custom_object, *SNAP, "volumesnapshotcontents", name)
        assert handle not in sim.storage_snapshots()
        assert not data_dir.exists()
        assert tree(source)  # the application's data is untouched
    assert sim.errors == []


def test_foreground_deletion_removes_dependents_before_the_owner(
    kube: client.ApiClient, sim: SimCluster, ns: str
) -> None:
    core = client.CoreV1Api(kube)
    sim.add_node(node_name())
    owner = core.create_namespaced_config_map(ns, {"metadata": {"name": "parent"}})
    refs = [
        {
            "apiVersion": "v1",
            "kind": "ConfigMap",
            "name": "parent",
            "uid": owner.metadata.uid,
            "blockOwnerDeletion": True,
        }
    ]
    child = pod_body("child")
    child["metadata"]["ownerReferences"] = refs
    core.create_namespaced_pod(ns, child)
    wait_running(core, ns, "child")

    core.delete_namespaced_config_map("parent", ns, propagation_policy="Foreground")
    parent = core.read_namespaced_config_map("parent", ns)
    assert "foregroundDeletion" in parent.metadata.finalizers
    wait_gone(core.read_namespaced_pod, "child", ns)
    wait_gone(core.read_namespaced_config_map, "parent", ns)


def test_a_claim_with_a_selector_binds_the_smallest_available_volume_that_fits(
    kube: client.ApiClient, sim: SimCluster, ns: str
) -> None:
    core = client.CoreV1Api(kube)
    names = {size: f"static-{ns}-{size.lower()}" for size in ("1Gi", "2Gi", "5Gi")}
    for size, name in names.items():
        core.create_persistent_volume(
            {
                "metadata": {"name": name, "labels": {"set": ns}},
                "spec": {
                    "capacity": {"storage": size},
                    "accessModes": ["ReadWriteOnce"],
                    "storageClassName": "manual",
                    "persistentVolumeReclaimPolicy": "Retain",
                    "csi": {"driver": DRIVER, "volumeHandle": name},
                },
            }
        )
    try:
        wait_for(
            lambda: core.read_persistent_volume(names["5Gi"]).status.phase == "Available",
            WAIT,
            what="Available",
        )
        claim = pvc_body("static", size="1500Mi")
        claim["spec"]["storageClassName"] = "manual"
        claim["spec"]["selector"] = {"matchLabels": {"set": ns}}
        core.create_namespaced_persistent_volume_claim(ns, claim)
        assert bound_pv(core, ns, "static") == names["2Gi"]
        assert core.read_persistent_volume(names["1Gi"]).status.phase == "Available"
    finally:
        for name in names.values():
            core.delete_persistent_volume(name)


def test_simulators_sharing_an_api_server_run_only_their_own_nodes_and_stop_promptly(
    kube: client.ApiClient, sim: SimCluster, ns: str, tmp_path: Path
) -> None:
    """Disjoint namespaces, one API server: each simulator schedules to and mounts on its own nodes."""
    core = client.CoreV1Api(kube)
    sim.add_node(node_name(), {"owner": "first"})
    second_ns = f"{ns}-2"
    core.create_namespace({"metadata": {"name": second_ns}})
    other = SimCluster(kube, tmp_path / "second", namespaces=(second_ns,), poll_s=0.1)
    with other:
        theirs = node_name()
        other.add_node(theirs, {"owner": "second"})
        core.create_namespaced_pod(ns, pod_body("for-second", node_selector={"owner": "second"}))
        core.create_namespaced_persistent_volume_claim(second_ns, pvc_body("claim"))
        core.create_namespaced_pod(second_ns, pod_body("with-volume", "claim"))
        with_volume = wait_running(core, second_ns, "with-volume")
        assert with_volume.spec.node_name == theirs
        assert volume_path(other, with_volume, bound_pv(core, second_ns, "claim"), block=False).is_symlink()
        sim.reconcile_once()
        assert core.read_namespaced_pod("for-second", ns).spec.node_name is None  # not first's to place
        started = time.monotonic()
    assert time.monotonic() - started < 2.0
    assert other.errors == []


def test_two_claims_racing_for_one_available_volume_get_it_once(
    kube: client.ApiClient, sim: SimCluster, ns: str
) -> None:
    core = client.CoreV1Api(kube)
    pv_name = f"only-{ns}"
    core.create_persistent_volume(
        {
            "metadata": {"name": pv_name, "labels": {"set": ns}},
            "spec": {
                "capacity": {"storage": "1Gi"},
                "accessModes": ["ReadWriteOnce"],
                "storageClassName": "manual",
                "csi": {"driver": DRIVER, "volumeHandle": pv_name},
            },
        }
    )
    try:
        with sim_paused(sim):
            for name in ("left", "right"):
                claim = pvc_body(name)
                claim["spec"]["storageClassName"] = "manual"
                claim["spec"]["selector"] = {"matchLabels": {"set": ns}}
                core.create_namespaced_persistent_volume_claim(ns, claim)
        winner = wait_for(
            lambda: core.read_persistent_volume(pv_name).status.phase == "Bound", WAIT, what="PV Bound"
        )
        assert winner
        for _ in range(3):
            sim.reconcile_once()
        phases = sorted(
            core.read_namespaced_persistent_volume_claim(n, ns).status.phase for n in ("left", "right")
        )
        assert phases == ["Bound", "Pending"]
    finally:
        core.delete_persistent_volume(pv_name)
