"""``helm install charts/barge`` onto the real node, as a user of a one-node cluster does it."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any

from barge.kube.resources import POD, KubeObjects
from devenv.helm import CHART_DIR, Helm
from devenv.realnode.bargeimage import BARGE_IMAGE
from devenv.realnode.node import NodeEndpoints
from tests.integration.kubetest import eventually
from tests.realnode.pods import POD_TIMEOUT, condition

RELEASE = NAMESPACE_NAME = "barge"


def one_node_values(endpoints: NodeEndpoints) -> dict[str, Any]:
    """What a user sets for a one-node cluster and an image of their own: one coordinator (a
    standby has no other node to survive on), the image by name, never pulled. The agent's cache
    goes to the node's work directory instead of the host's /var/cache."""
    return {
        "image": {
            "repository": f"localhost/{BARGE_IMAGE.name}", "tag": BARGE_IMAGE.tag, "pullPolicy": "Never",
        },
        "coordinator": {"replicas": 1},
        "agent": {"cacheDir": str(endpoints.workdir / "agent-cache")},
    }


def all_pods_ready(objects: KubeObjects) -> bool:
    pods = objects.list(POD, NAMESPACE_NAME, label_selector=f"app.kubernetes.io/instance={RELEASE}")
    return bool(pods) and all(condition(pod, "Ready") == "True" for pod in pods)


@contextlib.contextmanager
def installed_chart(
    endpoints: NodeEndpoints, objects: KubeObjects, values: dict[str, Any] | None = None
) -> Iterator[Helm]:
    """The chart installed with ``helm install --wait`` (Velero's CRDs and namespace must exist),
    with ``values`` (default: ``one_node_values``),
    then every pod of it Ready: helm's wait expects a DaemonSet's desired pods minus its
    maxUnavailable Ready, which on one node with the chart's ``agent.maxUnavailable: 1`` is none
    (helm v3 pkg/kube/ready.go). ``helm uninstall`` afterwards."""
    helm = Helm.installed(endpoints.control_plane.kubeconfig)
    helm.run(
        "install", RELEASE, str(CHART_DIR), "--namespace", NAMESPACE_NAME, "--create-namespace",
        "--wait", "--timeout", "4m", values=one_node_values(endpoints) if values is None else values,
    )
    try:
        eventually(lambda: all_pods_ready(objects), POD_TIMEOUT)
        yield helm
    finally:
        helm.run("uninstall", RELEASE, "--namespace", NAMESPACE_NAME, "--wait", "--timeout", "2m")
