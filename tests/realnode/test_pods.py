"""Pods on the real kubelet: a hostPath volume, a readiness probe, logs through the API."""

from __future__ import annotations

import ipaddress

from barge.kube.resources import NAMESPACE, POD, KubeObjects
from devenv.realnode.node import POD_SUBNET, NodeEndpoints
from tests.integration.kubetest import eventually, unique
from tests.realnode.pods import POD_TIMEOUT, condition, running, web_pod


def test_a_pod_with_a_hostpath_volume_and_a_readiness_probe_runs_ready_with_its_logs_readable(
    node_endpoints: NodeEndpoints, node_objects: KubeObjects
) -> None:
    namespace = unique("web")
    node_objects.create(NAMESPACE, {"metadata": {"name": namespace}})
    data_dir = node_endpoints.workdir / unique("hostpath")
    data_dir.mkdir()
    node_objects.create(POD, web_pod(namespace, "web", data_dir))

    pod = eventually(lambda: running(node_objects, namespace, "web"), POD_TIMEOUT)
    assert pod["status"]["hostIP"] == node_endpoints.address
    assert ipaddress.ip_address(pod["status"]["podIP"]) in ipaddress.ip_network(POD_SUBNET)
    # The container wrote through the hostPath mount: the file is on the host, not in the image.
    assert eventually((data_dir / "from-pod.txt").exists, POD_TIMEOUT)
    assert (data_dir / "from-pod.txt").read_text() == "written-by-the-pod\n"
    # Nothing to serve yet at /ready.txt: the kubelet's probe (HTTP to the pod's address) fails.
    assert condition(node_objects.get(POD, namespace, "web"), "Ready") == "False"

    (data_dir / "ready.txt").write_text("ready\n")
    eventually(lambda: condition(node_objects.get(POD, namespace, "web"), "Ready") == "True", POD_TIMEOUT)

    # The apiserver fetches the log from the kubelet on the node's address (TLS both ways).
    log = node_objects.read_text(POD, namespace, "web", "log")
    assert "web pod web starting" in log
