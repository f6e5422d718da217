"""Cluster DNS on the real node: a pod's resolv.conf names the node's CoreDNS, which answers for
``cluster.local`` from the apiserver, so a pod resolves the ``kubernetes`` Service and reaches a
Service of its own namespace by its short name, as in a user's cluster."""

from __future__ import annotations

from barge.kube.resources import POD, KubeObjects
from devenv.realnode.node import NodeEndpoints
from tests.integration.kubetest import unique
from tests.realnode.pods import finished, fresh_namespace, script_pod_spec, web_service


def test_a_pod_resolves_the_kubernetes_service_and_reaches_a_service_of_its_namespace_by_name(
    node_endpoints: NodeEndpoints, node_objects: KubeObjects
) -> None:
    namespace = fresh_namespace(node_objects, "dns")
    data_dir = node_endpoints.workdir / unique("hostpath")
    service = web_service(node_objects, namespace, data_dir)
    # The short name goes through the search domains the kubelet wrote; the Service answers once
    # kube-proxy has its endpoints, so the fetch is retried for a while.
    script = (
        "cp /etc/resolv.conf /data/resolv.conf; "
        "nslookup kubernetes.default.svc.cluster.local > /data/kubernetes.txt 2>&1; "
        "nslookup web > /data/web.txt 2>&1; "
        "for i in $(seq 60); do wget -q -O /data/via-name.txt http://web/ready.txt && break; sleep 1; done"
    )
    client = script_pod_spec(data_dir, script)
    node_objects.create(POD, {"metadata": {"name": "client", "namespace": namespace}, "spec": client})
    finished(node_objects, namespace, "client")

    resolv = (data_dir / "resolv.conf").read_text().split("\n")
    assert f"nameserver {node_endpoints.address}" in resolv
    assert f"search {namespace}.svc.cluster.local svc.cluster.local cluster.local" in resolv
    assert "Address: 10.0.0.1" in (data_dir / "kubernetes.txt").read_text()
    assert f"Address: {service['spec']['clusterIP']}" in (data_dir / "web.txt").read_text()
    assert (data_dir / "via-name.txt").read_text() == "ready\n"
