"""``kubectl drain`` of the real node while Barge moves a volume: the real eviction API and the
real PodDisruptionBudget hold the exposer pod while its agent vouches for it, Barge hands the work
off, the drain completes, and after ``kubectl uncordon`` the work is re-exposed and the Velero
backup completes and restores bit-exact.

The chart is installed with its default coordinator replica count (two), as a user of a one-node
cluster who keeps the defaults would: the drain must evict both coordinators, so the chart renders
no coordinator budget on a one-node cluster (one would hold the last coordinator for good).

There is one node, so the work cannot move: it is handed back and waits, unexposed, for the node
to be uncordoned. The agent's CPU is limited (``agent.resources.limits.cpu``) so that the transfer
outlasts the drain: the drain must meet the upload mid-transfer, which the test checks rather
than assumes.
"""

from __future__ import annotations

import contextlib
import os
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from barge.control.naming import EXPOSER_BUDGET
from barge.kube.resources import (
    DATA_UPLOAD,
    NAMESPACE,
    PERSISTENT_VOLUME,
    PERSISTENT_VOLUME_CLAIM,
    POD,
    POD_DISRUPTION_BUDGET,
    KubeObjects,
)
from coordinator.model import REEXPOSURES_ANNOTATION
from devenv.helm import Helm
from devenv.realnode.bargeimage import BuiltImage
from devenv.realnode.node import NODE_NAME, RealNode
from devenv.realnode.storage import STORAGE_CLASS_NAME
from devenv.simcluster import SimCluster
from devenv.tools import tool_path
from devenv.trees import capture
from devenv.veleroserver import LocalVelero
from devenv.waiting import wait_for
from tests.fsbuild import awkward_tree, write
from tests.realnode.backups import MOVE_TIMEOUT, app_pod, wait_finished
from tests.realnode.chart import NAMESPACE_NAME, RELEASE, installed_chart, one_node_values
from tests.realnode.pods import POD_TIMEOUT, fresh_namespace, ready, running

MIB = 1 << 20
VOLUME_MIB = 1024  # at the agent's CPU limit, a transfer takes 25 s or more
# At most ~40 MB/s, which the drain (seconds after the cordon, Barge hands the work off) cannot
# miss; and enough for the agent to start within its liveness probe (100m does not, ~35 s).
AGENT_CPU_LIMIT = "300m"
# kubectl drain --timeout: far above what Barge may hold it here (the coordinators are evicted
# too, so DRAIN_BOUND_S), and short of pytest's timeout, so a drain that cannot finish fails with
# kubectl's own account of what it still waits for.
DRAIN_TIMEOUT_S = 150
# The volume is read twice (before the drain and after) and restored at the agent's limited CPU,
# and a loaded machine slows that down several times: bounds well above the idle ~3 minutes.
MOVE_AT_LIMIT_TIMEOUT = 600.0
pytestmark = pytest.mark.timeout(1500)
REFUSED = "Cannot evict pod as it would violate the pod's disruption budget"
COORDINATOR_SELECTOR = f"app.kubernetes.io/instance={RELEASE},app.kubernetes.io/component=coordinator"


@pytest.fixture(scope="module")
def barge(
    velero: LocalVelero, barge_image: BuiltImage, real_node: RealNode, node_objects: KubeObjects
) -> Iterator[Helm]:
    """The chart with its default coordinator replicas, the agent's CPU limited."""
    assert real_node.endpoints is not None
    values: dict[str, Any] = one_node_values(real_node.endpoints)
    del values["coordinator"]
    values["agent"]["resources"] = {"limits": {"cpu": AGENT_CPU_LIMIT}}
    with installed_chart(real_node.endpoints, node_objects, values) as helm:
        yield helm


def kubectl(real_node: RealNode, *args: str) -> list[str]:
    """The command line of the pinned kubectl (``hack/install-tools.sh kubectl``) on the node's API."""
    assert real_node.endpoints is not None
    kubeconfig = real_node.endpoints.control_plane.kubeconfig
    return [str(tool_path("kubectl")), "--kubeconfig", str(kubeconfig), *args]


@contextlib.contextmanager
def draining(real_node: RealNode, log: Path) -> Iterator[subprocess.Popen[bytes]]:
    """``kubectl drain`` of the node running (its output in ``log``); the node uncordoned after,
    whatever happened (stopping the drain first if it still runs)."""
    drain = kubectl(
        real_node, "drain", NODE_NAME, "--ignore-daemonsets", "--delete-emptydir-data",
        # The application (and any pod an earlier test left) is a bare pod: --force evicts it too.
        "--force", f"--timeout={DRAIN_TIMEOUT_S}s",
    )  # fmt: skip
    with log.open("wb") as out:
        process = subprocess.Popen(drain, stdout=out, stderr=subprocess.STDOUT)
    try:
        yield process
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
        subprocess.run(kubectl(real_node, "uncordon", NODE_NAME), check=True, capture_output=True)


def refusals(log: Path, pod: str) -> int:
    """The evictions of ``pod`` kubectl drain was refused (429: the budget held the pod)."""
    return sum(1 for line in log.read_text().splitlines() if f'pods/"{pod}"' in line and REFUSED in line)


def big_tree(root: Path) -> Path:
    """Every kind of entry, and ``VOLUME_MIB`` of incompressible files."""
    awkward_tree(root)
    for index in range(VOLUME_MIB // 4):
        write(root / "big" / f"d{index % 8}" / f"f{index}.bin", os.urandom(4 * MIB))
    return root


@pytest.mark.usefixtures("barge")
def test_kubectl_drain_waits_for_barge_to_hand_the_upload_off_and_the_backup_completes_bit_exact(
    velero: LocalVelero, real_node: RealNode, node_objects: KubeObjects, node_storage: SimCluster,
    tmp_path: Path,
) -> None:  # fmt: skip
    began = time.monotonic()
    # The chart kept its two coordinators but rendered no budget for them on one node.
    coordinators = node_objects.list(POD, NAMESPACE_NAME, label_selector=COORDINATOR_SELECTOR)
    assert len(coordinators) == 2
    assert node_objects.list(POD_DISRUPTION_BUDGET, NAMESPACE_NAME) == []

    app = fresh_namespace(node_objects, "drained")
    volume = node_storage.provision_claim(app, "data", big_tree(tmp_path / "source"),
                                          storage_class=STORAGE_CLASS_NAME)  # fmt: skip
    node_objects.create(POD, app_pod(app))
    wait_for(lambda: running(node_objects, app, "app"), POD_TIMEOUT, what="the app pod running")
    wait_for((volume / "app.txt").exists, POD_TIMEOUT, what="the app's file")
    expected = capture(volume)
    app_volume = node_objects.get(PERSISTENT_VOLUME_CLAIM, app, "data")["spec"]["volumeName"]

    velero.cli("backup", "create", "drained-backup", "--include-namespaces", app,
               "--snapshot-move-data", "--data-mover", "barge")  # fmt: skip

    def in_progress() -> dict[str, Any] | None:
        uploads = node_objects.list(DATA_UPLOAD, velero.namespace, "velero.io/backup-name=drained-backup")
        return next((u for u in uploads if u.get("status", {}).get("phase") == "InProgress"), None)

    upload = wait_for(in_progress, MOVE_TIMEOUT, what="the DataUpload InProgress")
    name = upload["metadata"]["name"]
    # The exposer pod is Ready: its agent vouches for it, so the budget holds it.
    wait_for(lambda: ready(node_objects, velero.namespace, name), POD_TIMEOUT, what="the exposer pod Ready")
    exposer_uid = node_objects.get(POD, velero.namespace, name)["metadata"]["uid"]
    budget = node_objects.get(POD_DISRUPTION_BUDGET, velero.namespace, EXPOSER_BUDGET)
    assert budget["spec"]["maxUnavailable"] == 0

    log = tmp_path / "drain.log"
    with draining(real_node, log) as drain:
        started = time.monotonic()
        wait_for(lambda: refusals(log, name), POD_TIMEOUT, what="the exposer pod's eviction refused")
        drain.wait(timeout=DRAIN_TIMEOUT_S + 30)
        drain_s = time.monotonic() - started
        output = log.read_text()
        assert drain.returncode == 0, output
        refused = refusals(log, name)
        # The drain met the upload mid-transfer: the exposer pod is gone, the upload not done.
        after = node_objects.get(DATA_UPLOAD, velero.namespace, name)
        assert after["status"]["phase"] not in ("Completed", "Failed", "Canceled"), after["status"]
        exposer = node_objects.find(POD, velero.namespace, name)
        assert exposer is None or exposer["metadata"]["uid"] != exposer_uid
    # Uncordoned: a coordinator runs again, re-exposes the handed-back work, the backup completes.
    wait_finished(velero, "backup", "drained-backup", timeout=MOVE_AT_LIMIT_TIMEOUT)
    done = node_objects.get(DATA_UPLOAD, velero.namespace, name)
    assert done["status"]["phase"] == "Completed", done["status"]
    assert int(done["metadata"]["annotations"].get(REEXPOSURES_ANNOTATION, "0")) >= 1, done["metadata"]
    total = int(done["status"]["progress"]["totalBytes"])
    new = int(done["status"]["dataMoverResult"]["barge.io/bytes-new"])

    node_objects.delete(NAMESPACE, None, app)
    wait_for(lambda: node_objects.find(NAMESPACE, None, app) is None, MOVE_TIMEOUT,
             what=f"namespace {app} deleted")  # fmt: skip
    wait_for(lambda: node_objects.find(PERSISTENT_VOLUME, None, app_volume) is None, POD_TIMEOUT,
             what="the lost volume reclaimed")  # fmt: skip
    velero.cli("restore", "create", "drained-restore", "--from-backup", "drained-backup")
    wait_finished(velero, "restore", "drained-restore", timeout=MOVE_AT_LIMIT_TIMEOUT)
    wait_for(lambda: running(node_objects, app, "app"), POD_TIMEOUT, what="the restored app pod")
    assert capture(node_storage.claim_data(app, "data")) == expected
    print(
        f"drain: kubectl drain took {drain_s:.1f}s; the exposer pod's eviction was refused {refused} "
        f"times before the hand-off; after uncordon the agent stored {new / MIB:.1f} of "
        f"{total / MIB:.1f} MiB anew; the test took {time.monotonic() - began:.0f}s"
    )
