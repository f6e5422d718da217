"""Stopping a real node leaves the host as it found it: no process, mount, network link, cgroup or
hard-coded host path of the node survives, and its work directory is gone, also with a volume of the
simulated CSI driver mounted by the kubelet through the driver's node plugin."""

from __future__ import annotations

from barge.kube.client import api_client
from barge.kube.resources import POD, KubeObjects
from devenv.realnode.namespace import HostFootprint
from devenv.realnode.node import RealNode
from devenv.realnode.storage import STORAGE_CLASS_NAME, NodeStorage
from tests.integration.kubetest import eventually
from tests.realnode.pods import POD_TIMEOUT, claim_pod, fresh_namespace, load_busybox, ready, web_pod_spec


def test_stopping_the_node_leaves_nothing_on_the_host() -> None:
    before = HostFootprint.capture()
    node = RealNode()
    with node as endpoints:
        load_busybox(node)
        data_dir = endpoints.workdir / "data"
        data_dir.mkdir()
        (data_dir / "ready.txt").write_text("ready\n")
        with api_client(endpoints.control_plane.kubeconfig) as api, NodeStorage(node, api) as sim:
            objects = KubeObjects(api)
            namespace = fresh_namespace(objects, "teardown")
            pod = {"metadata": {"name": "web", "namespace": namespace}, "spec": web_pod_spec(data_dir)}
            objects.create(POD, pod)
            eventually(lambda: ready(objects, namespace, "web"), POD_TIMEOUT)
            volume = sim.provision_claim(namespace, "data", data_dir, storage_class=STORAGE_CLASS_NAME)
            objects.create(POD, claim_pod(namespace, "data", "echo mounted > /data/by-app; sleep 3600"))
            assert eventually((volume / "by-app").exists, POD_TIMEOUT)
        ids = node.namespace.ids
        assert ids is not None
        during = HostFootprint.capture().added_since(before)
        # The comparison below can fail: while the node runs, the host has its veth and cgroups.
        assert node.namespace.host_link in during["links"]
        assert any(node.namespace.cgroup_root.lstrip("/") in path for path in during["cgroups"])
        assert len(ids.processes()) > 3  # anchor, control plane, containerd, kubelet, shims, containers
    assert ids.processes() == []
    assert HostFootprint.capture().added_since(before) == {}
    assert not node.workdir.exists()
