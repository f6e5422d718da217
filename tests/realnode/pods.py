"""What the real-node tests run: the busybox image (no registry) and a small web pod."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from barge.kube.resources import POD, KubeObjects
from devenv.realnode.image import ImageRef, busybox_layer, oci_archive
from devenv.realnode.node import NODE_NAME, RealNode

BUSYBOX = ImageRef("busybox", "1.35.0")
POD_TIMEOUT = 120.0


def web_pod(namespace: str, name: str, data_dir: Path) -> dict[str, Any]:
    """busybox httpd serving a hostPath directory, Ready once the directory holds ``ready.txt``."""
    script = (
        f"echo 'web pod {name} starting'; echo written-by-the-pod > /data/from-pod.txt; "
        "exec httpd -f -p 8080 -h /data"
    )
    return {
        "metadata": {"name": name, "namespace": namespace},
        "spec": {
            "nodeName": NODE_NAME,
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
        },
    }


def condition(pod: dict[str, Any], kind: str) -> str | None:
    for entry in pod.get("status", {}).get("conditions") or []:
        if entry.get("type") == kind:
            return str(entry.get("status"))
    return None


def running(objects: KubeObjects, namespace: str, name: str) -> dict[str, Any] | None:
    pod = objects.get(POD, namespace, name)
    return pod if pod.get("status", {}).get("phase") == "Running" else None


def load_busybox(node: RealNode) -> ImageRef:
    """Assemble the busybox image from Debian's static busybox and load it into the node."""
    archive = oci_archive(node.workdir / "images" / "busybox.tar", BUSYBOX, [busybox_layer()], cmd=["sh"])
    node.import_image(archive)
    return BUSYBOX
