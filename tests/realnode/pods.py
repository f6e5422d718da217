"""What the real-node tests run: the busybox image (no registry) and a small web pod."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from barge.kube.resources import NAMESPACE, POD, SERVICE_ACCOUNT, KubeObjects, Resource
from devenv.realnode.image import ImageRef, busybox_layer, oci_archive
from devenv.realnode.node import NODE_NAME, RealNode
from tests.integration.kubetest import eventually, unique

BUSYBOX = ImageRef("busybox", "1.35.0")
POD_TIMEOUT = 120.0
TOKEN = "/var/run/secrets/kubernetes.io/serviceaccount/token"
SERVICE = Resource("Service", "", "v1", "services", True)


def load_busybox(node: RealNode) -> ImageRef:
    """Assemble the busybox image from Debian's static busybox and load it into the node."""
    archive = oci_archive(node.workdir / "images" / "busybox.tar", BUSYBOX, [busybox_layer()], cmd=["sh"])
    node.import_image(archive)
    return BUSYBOX


def fresh_namespace(objects: KubeObjects, prefix: str) -> str:
    """A new namespace, once the controller-manager gave it the ``default`` ServiceAccount (the
    ServiceAccount admission refuses pods before)."""
    name = unique(prefix)
    objects.create(NAMESPACE, {"metadata": {"name": name}})
    eventually(lambda: objects.find(SERVICE_ACCOUNT, name, "default"), POD_TIMEOUT)
    return name


def web_pod_spec(data_dir: Path, node_name: str | None = None, extra_script: str = "") -> dict[str, Any]:
    """busybox httpd serving a hostPath directory, Ready once the directory holds ``ready.txt``;
    before serving it writes ``from-pod.txt`` there and runs ``extra_script``. ``node_name`` None:
    the scheduler places it."""
    steps = ["echo 'web pod starting'", "echo written-by-the-pod > /data/from-pod.txt", extra_script]
    script = "; ".join([*filter(None, steps), "exec httpd -f -p 8080 -h /data"])
    spec: dict[str, Any] = {
        "containers": [
            {
                "name": "web",
                "image": str(BUSYBOX),
                "imagePullPolicy": "Never",
                "command": ["sh", "-c", script],
                "volumeMounts": [{"name": "data", "mountPath": "/data"}],
                "readinessProbe": {
                    "httpGet": {"path": "/ready.txt", "port": 8080},
                    "periodSeconds": 1,
                    "failureThreshold": 1,
                },
            }
        ],
        "volumes": [{"name": "data", "hostPath": {"path": str(data_dir), "type": "Directory"}}],
        "terminationGracePeriodSeconds": 1,
    }
    if node_name is not None:
        spec["nodeName"] = node_name
    return spec


def web_service(objects: KubeObjects, namespace: str, data_dir: Path) -> dict[str, Any]:
    """A web pod on the node serving ``data_dir`` (with ``ready.txt`` in it), behind the Service
    ``web`` (port 80); the Service as created."""
    data_dir.mkdir()
    (data_dir / "ready.txt").write_text("ready\n")
    web = {"metadata": {"name": "web", "namespace": namespace, "labels": {"app": "web"}},
           "spec": web_pod_spec(data_dir, NODE_NAME)}  # fmt: skip
    objects.create(POD, web)
    return objects.create(
        SERVICE,
        {
            "metadata": {"name": "web", "namespace": namespace},
            "spec": {"selector": {"app": "web"}, "ports": [{"port": 80, "targetPort": 8080}]},
        },
    )


def script_pod_spec(data_dir: Path, script: str) -> dict[str, Any]:
    """A busybox pod that runs ``script`` once, with ``data_dir`` (hostPath) at ``/data`` to hand
    its findings to the test."""
    return {
        "nodeName": NODE_NAME,
        "restartPolicy": "Never",
        "containers": [{
            "name": "client",
            "image": str(BUSYBOX),
            "imagePullPolicy": "Never",
            "command": ["sh", "-c", script],
            "volumeMounts": [{"name": "data", "mountPath": "/data"}],
        }],
        "volumes": [{"name": "data", "hostPath": {"path": str(data_dir), "type": "Directory"}}],
    }


def finished(objects: KubeObjects, namespace: str, name: str) -> dict[str, Any]:
    """The pod once it Succeeded or Failed (waits up to ``POD_TIMEOUT``)."""

    def done() -> dict[str, Any] | None:
        pod = objects.get(POD, namespace, name)
        return pod if pod.get("status", {}).get("phase") in ("Succeeded", "Failed") else None

    return eventually(done, POD_TIMEOUT)


def condition(pod: dict[str, Any], kind: str) -> str | None:
    for entry in pod.get("status", {}).get("conditions") or []:
        if entry.get("type") == kind:
            return str(entry.get("status"))
    return None


def running(objects: KubeObjects, namespace: str, name: str) -> dict[str, Any] | None:
    pod = objects.get(POD, namespace, name)
    return pod if pod.get("status", {}).get("phase") == "Running" else None


def ready(objects: KubeObjects, namespace: str, name: str) -> bool:
    return condition(objects.get(POD, namespace, name), "Ready") == "True"


def claim_pod(namespace: str, claim: str, script: str) -> dict[str, object]:
    """A busybox pod ``app`` running ``script`` once, with the claim at ``/data``."""
    return {
        "metadata": {"name": "app", "namespace": namespace},
        "spec": {
            "restartPolicy": "Never",
            "terminationGracePeriodSeconds": 1,
            "containers": [{
                "name": "app", "image": str(BUSYBOX), "imagePullPolicy": "Never",
                "command": ["sh", "-c", script], "volumeMounts": [{"name": "data", "mountPath": "/data"}],
            }],
            "volumes": [{"name": "data", "persistentVolumeClaim": {"claimName": claim}}],
        },
    }  # fmt: skip
