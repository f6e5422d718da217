"""What the real-node Velero tests share: the application pod on its claim, and running a Velero
backup or restore to its end."""

from __future__ import annotations

from barge.kube.resources import BACKUP, DATA_DOWNLOAD, DATA_UPLOAD, RESTORE
from devenv.veleroserver import LocalVelero
from tests.realnode.pods import BUSYBOX

FINAL = ("Completed", "PartiallyFailed", "Failed", "FailedValidation")
MOVE_TIMEOUT = 300.0
# Writes once: the restored pod, started on the restored volume, leaves it as it was.
APP_SCRIPT = "[ -e /data/app.txt ] || echo written-by-the-app > /data/app.txt; exec sleep 2147483647"


def app_pod(namespace: str) -> dict[str, object]:
    return {
        "metadata": {"name": "app", "namespace": namespace},
        "spec": {
            "terminationGracePeriodSeconds": 1,
            "containers": [{
                "name": "app", "image": str(BUSYBOX), "imagePullPolicy": "Never",
                "command": ["sh", "-c", APP_SCRIPT], "volumeMounts": [{"name": "data", "mountPath": "/data"}],
            }],
            "volumes": [{"name": "data", "persistentVolumeClaim": {"claimName": "data"}}],
        },
    }  # fmt: skip


def wait_finished(velero: LocalVelero, kind: str, name: str, timeout: float = MOVE_TIMEOUT) -> None:
    """The backup or restore ``name`` Completed (the assertion shows Velero's view and the movers')."""
    resource = BACKUP if kind == "backup" else RESTORE
    done = velero.wait_phase(resource, name, FINAL, timeout=timeout)
    movers = DATA_UPLOAD if kind == "backup" else DATA_DOWNLOAD
    selector = f"velero.io/{kind}-name={name}"
    statuses = [m.get("status") for m in velero.objects.list(movers, velero.namespace, selector)]
    assert done["status"]["phase"] == "Completed", f"{velero.describe(kind, name)}\n{statuses}"


def finish(velero: LocalVelero, kind: str, name: str, *args: str) -> None:
    """``velero KIND create NAME ARGS`` and its end, Completed."""
    velero.cli(kind, "create", name, *args)
    wait_finished(velero, kind, name)
