"""The Barge image, built here from Debian packages and Barge's wheel, runs on the real node as
non-root: the coordinator's and the agent's programs start from it, and Barge's Kubernetes adapter
in it reaches the apiserver as the pod's ServiceAccount, the way both components do in a cluster;
the exposer pods' shell tools are there."""

from __future__ import annotations

from typing import Any

from barge.kube.resources import POD, KubeObjects
from devenv.realnode.bargeimage import BARGE_IMAGE, BuiltImage
from devenv.realnode.node import NODE_NAME
from tests.realnode.pods import finished, fresh_namespace

# In-cluster configuration (the kubernetes Service, the projected token and CA), then discovery
# through KubeObjects: the request path every read and write of Barge takes.
IN_CLUSTER = (
    "from barge.kube.client import api_client; from barge.kube.resources import KubeObjects; "
    "print('core/v1 serves', len(KubeObjects(api_client()).api_resources('', 'v1')), 'resources')"
)


def program(name: str, command: list[str]) -> dict[str, Any]:
    return {"name": name, "image": str(BARGE_IMAGE), "imagePullPolicy": "Never", "command": command}


def test_the_barge_image_runs_the_coordinator_and_the_agent_as_non_root(
    barge_image: BuiltImage, node_objects: KubeObjects
) -> None:
    namespace = fresh_namespace(node_objects, "image")
    pod = {
        "metadata": {"name": "barge", "namespace": namespace},
        "spec": {
            "nodeName": NODE_NAME,
            "restartPolicy": "Never",
            # No runAsUser: the kubelet checks the image's own numeric user is not root.
            "securityContext": {"runAsNonRoot": True},
            "containers": [
                program("coordinator", ["barge-coordinator", "--help"]),
                program("agent", ["barge-agent", "--help"]),
                program("in-cluster", ["python3.11", "-c", IN_CLUSTER]),
                # What the exposer pods run from this image: sh, sleep, and date in their probe.
                program("exposer", ["/bin/sh", "-c", "sleep 0 && echo exposer tools at $(date +%s)"]),
            ],
        },
    }
    node_objects.create(POD, pod)

    done = finished(node_objects, namespace, "barge")
    logs = {
        name: node_objects.read_text(POD, namespace, "barge", "log", [("container", name)])
        for name in ("coordinator", "agent", "in-cluster", "exposer")
    }
    assert done["status"]["phase"] == "Succeeded", (done["status"], logs)
    assert "usage: barge-coordinator" in logs["coordinator"]
    assert "usage: barge-agent" in logs["agent"]
    assert "core/v1 serves" in logs["in-cluster"]
    assert "exposer tools at " in logs["exposer"]
