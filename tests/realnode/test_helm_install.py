"""``helm install charts/barge`` onto the real node, as a user of a one-node cluster with Velero
does it: the coordinator and the agent run from the Barge image built here, the kubelet's real
probes pass, the agent reaches the coordinator through its Service name (cluster DNS, kube-proxy)
over TLS and is admitted with its projected ServiceAccount token (TokenReview), and ``helm test``
passes."""

from __future__ import annotations

import json
import re
import subprocess
from collections.abc import Iterator
from typing import Any

import pytest
from kubernetes import client

from barge.kube.resources import NAMESPACE, POD, TOKEN_REVIEW, KubeObjects
from devenv.crds import install_crds
from devenv.helm import Helm
from devenv.realnode.bargeimage import BARGE_IMAGE, BuiltImage
from devenv.realnode.node import NODE_NAME, NodeEndpoints, RealNode
from tests.integration.kubetest import eventually
from tests.realnode.chart import NAMESPACE_NAME, RELEASE, installed_chart
from tests.realnode.pods import POD_TIMEOUT, SERVICE, condition

VELERO_NAMESPACE = "velero"
AGENT_IDENTITY = f"system:serviceaccount:{NAMESPACE_NAME}:barge-agent"
AUDIENCE = "barge"  # the chart's agent.token.audience


@pytest.fixture
def installed(
    barge_image: BuiltImage,
    node_endpoints: NodeEndpoints,
    node_api: client.ApiClient,
    node_objects: KubeObjects,
) -> Iterator[Helm]:
    """Velero's CRDs and namespace (what ``velero install`` leaves), then the chart."""
    install_crds(node_api)
    node_objects.create(NAMESPACE, {"metadata": {"name": VELERO_NAMESPACE}}, exist_ok=True)
    with installed_chart(node_endpoints, node_objects) as helm:
        yield helm


def pods_of(objects: KubeObjects, component: str) -> list[dict[str, Any]]:
    return objects.list(POD, NAMESPACE_NAME, label_selector=f"app.kubernetes.io/component={component}")


def agents_connected(objects: KubeObjects) -> float | None:
    """The coordinator's ``barge_coordinator_agents_connected``, read through the apiserver's proxy
    to its Service's metrics port (``kubectl get --raw``); None until at least one."""
    metrics = objects.read_text(SERVICE, NAMESPACE_NAME, "http:barge-coordinator:metrics", "proxy/metrics")
    values = re.findall(r"^barge_coordinator_agents_connected (\S+)$", metrics, re.MULTILINE)
    return float(values[0]) if values and float(values[0]) > 0 else None


def projected_token(node: RealNode, pod: dict[str, Any]) -> str:
    """The token the kubelet projected for the agent to present to the coordinator, read where the
    kubelet keeps it (the pod's volume directory, inside the node's mounts)."""
    path = (f"/var/lib/kubelet/pods/{pod['metadata']['uid']}/volumes/kubernetes.io~projected/"
            "coordinator-token/token")
    done = subprocess.run([*node.namespace.enter(), "cat", path], capture_output=True, text=True, check=True)
    return done.stdout


def test_helm_install_runs_the_coordinator_and_the_agent_ready_and_connected_and_helm_test_passes(
    installed: Helm, real_node: RealNode, node_objects: KubeObjects
) -> None:
    coordinators, agents = pods_of(node_objects, "coordinator"), pods_of(node_objects, "agent")
    assert len(coordinators) == 1
    assert len(agents) == 1
    for pod in (*coordinators, *agents):
        assert pod["spec"]["nodeName"] == NODE_NAME
        assert pod["status"]["phase"] == "Running"
        # the kubelet's HTTP readiness probe passed
        assert condition(pod, "Ready") == "True", (pod["metadata"]["name"], pod["status"])
        (container,) = pod["status"]["containerStatuses"]
        assert container["image"].endswith(str(BARGE_IMAGE).removeprefix("localhost/"))
        assert container["restartCount"] == 0  # and no liveness probe failed meanwhile

    # The agent dialed the coordinator by the Service's name over TLS, and the coordinator admitted
    # it once a TokenReview accepted its projected token (audience barge, the agents' account).
    assert eventually(lambda: agents_connected(node_objects), POD_TIMEOUT) == 1.0
    (coordinator,) = coordinators
    log = node_objects.read_text(POD, NAMESPACE_NAME, coordinator["metadata"]["name"], "log")
    events = [json.loads(line) for line in log.splitlines() if line.startswith("{")]
    assert {"event": "agent connected", "node": NODE_NAME} in [
        {key: event.get(key) for key in ("event", "node")} for event in events
    ]
    (agent,) = agents
    token = projected_token(real_node, agent)
    review = node_objects.create(TOKEN_REVIEW, {"spec": {"token": token, "audiences": [AUDIENCE]}})["status"]
    assert review["authenticated"] is True
    assert review["user"]["username"] == AGENT_IDENTITY
    assert review["user"]["extra"]["authentication.kubernetes.io/pod-name"] == [agent["metadata"]["name"]]
    # Bound to the coordinator's audience: the apiserver does not take it as a credential.
    as_api_credential = node_objects.create(TOKEN_REVIEW, {"spec": {"token": token}})["status"]
    assert as_api_credential.get("authenticated") is not True

    # The test pod exits 0 once the coordinator's metrics show a connected agent. (No --logs: the
    # chart deletes a test pod that succeeded, so helm would find no pod to read.)
    tested = installed.run("test", RELEASE, "--namespace", NAMESPACE_NAME, "--timeout", "3m")
    assert re.search(r"^Phase: +Succeeded$", tested.stdout, re.MULTILINE), tested.stdout
