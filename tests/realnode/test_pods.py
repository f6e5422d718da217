"""Pods on the real kubelet: a hostPath volume, a readiness probe, logs through the API; a
Deployment the real scheduler and controller-manager place, whose pod has a real projected token."""

from __future__ import annotations

import ipaddress
from typing import Any
from urllib.parse import urlsplit

from barge.kube.resources import DEPLOYMENT, POD, TOKEN_REVIEW, KubeObjects
from devenv.realnode.node import NODE_NAME, POD_SUBNET, NodeEndpoints
from tests.integration.kubetest import eventually, unique
from tests.realnode.pods import (
    BUSYBOX,
    POD_TIMEOUT,
    TOKEN,
    condition,
    finished,
    fresh_namespace,
    ready,
    running,
    script_pod_spec,
    web_pod_spec,
    web_service,
)


def test_a_pod_with_a_hostpath_volume_and_a_readiness_probe_runs_ready_with_its_logs_readable(
    node_endpoints: NodeEndpoints, node_objects: KubeObjects
) -> None:
    namespace = fresh_namespace(node_objects, "web")
    data_dir = node_endpoints.workdir / unique("hostpath")
    data_dir.mkdir()
    pod = {"metadata": {"name": "web", "namespace": namespace}, "spec": web_pod_spec(data_dir, NODE_NAME)}
    node_objects.create(POD, pod)

    started = eventually(lambda: running(node_objects, namespace, "web"), POD_TIMEOUT)
    assert started["status"]["hostIP"] == node_endpoints.address
    assert ipaddress.ip_address(started["status"]["podIP"]) in ipaddress.ip_network(POD_SUBNET)
    # The container wrote through the hostPath mount: the file is on the host, not in the image.
    assert eventually((data_dir / "from-pod.txt").exists, POD_TIMEOUT)
    assert (data_dir / "from-pod.txt").read_text() == "written-by-the-pod\n"
    # Nothing to serve yet at /ready.txt: the kubelet's probe (HTTP to the pod's address) fails.
    assert condition(node_objects.get(POD, namespace, "web"), "Ready") == "False"

    (data_dir / "ready.txt").write_text("ready\n")
    eventually(lambda: ready(node_objects, namespace, "web"), POD_TIMEOUT)

    # The apiserver fetches the log from the kubelet on the node's address (TLS both ways).
    log = node_objects.read_text(POD, namespace, "web", "log")
    assert "web pod starting" in log


def test_a_deployment_is_scheduled_and_its_pod_has_a_projected_token_and_reaches_the_apiserver(
    node_endpoints: NodeEndpoints, node_objects: KubeObjects
) -> None:
    namespace = fresh_namespace(node_objects, "deploy")
    data_dir = node_endpoints.workdir / unique("hostpath")
    data_dir.mkdir()
    (data_dir / "ready.txt").write_text("ready\n")
    apiserver = urlsplit(node_endpoints.control_plane.url)
    # The pod hands its token to the test through the hostPath, and connects to the apiserver.
    script = (
        f"cp {TOKEN} /data/token; "
        f"nc -w 5 {apiserver.hostname} {apiserver.port} </dev/null && echo connected > /data/apiserver.txt"
    )
    labels = {"app": "web"}
    template = {"metadata": {"labels": labels}, "spec": web_pod_spec(data_dir, extra_script=script)}
    node_objects.create(
        DEPLOYMENT,
        {
            "metadata": {"name": "web", "namespace": namespace},
            "spec": {
                "replicas": 1,
                "selector": {"matchLabels": labels},
                "template": template,
            },
        },
    )

    def ready_pod() -> dict[str, Any] | None:
        pods = node_objects.list(POD, namespace, label_selector="app=web")
        return next((p for p in pods if condition(p, "Ready") == "True"), None)

    pod = eventually(ready_pod, POD_TIMEOUT)
    assert pod["spec"]["nodeName"] == NODE_NAME  # the scheduler bound it
    assert pod["metadata"]["ownerReferences"][0]["kind"] == "ReplicaSet"  # the controller-manager made it
    assert pod["spec"]["containers"][0]["image"] == str(BUSYBOX)
    assert (data_dir / "apiserver.txt").read_text() == "connected\n"

    review = node_objects.create(TOKEN_REVIEW, {"spec": {"token": (data_dir / "token").read_text()}})
    status = review["status"]
    assert status["authenticated"] is True
    assert status["user"]["username"] == f"system:serviceaccount:{namespace}:default"
    # Bound to this pod: the kubelet requested it with TokenRequest for the pod's projected volume.
    assert status["user"]["extra"]["authentication.kubernetes.io/pod-name"] == [pod["metadata"]["name"]]



def test_a_pod_reaches_another_through_its_service_and_the_apiserver_through_kubernetes_default(
    node_endpoints: NodeEndpoints, node_objects: KubeObjects
) -> None:
    """kube-proxy's iptables rules: a ClusterIP Service, and the ``kubernetes`` Service in-cluster
    clients use (10.0.0.1:443, to the apiserver on the node's address)."""
    namespace = fresh_namespace(node_objects, "service")
    data_dir = node_endpoints.workdir / unique("hostpath")
    service = web_service(node_objects, namespace, data_dir)
    cluster_ip = service["spec"]["clusterIP"]
    # Until kube-proxy has the Service's endpoints, the address answers nothing: retry for a while.
    script = (
        f"for i in $(seq 60); do wget -q -O /data/via-service.txt http://{cluster_ip}/ready.txt && break; "
        "sleep 1; done; "
        "nc -w 5 10.0.0.1 443 </dev/null && echo connected > /data/kubernetes-service.txt"
    )
    client = script_pod_spec(data_dir, script)
    node_objects.create(POD, {"metadata": {"name": "client", "namespace": namespace}, "spec": client})
    finished(node_objects, namespace, "client")
    assert (data_dir / "via-service.txt").read_text() == "ready\n"
    assert (data_dir / "kubernetes-service.txt").read_text() == "connected\n"
