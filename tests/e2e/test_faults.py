"""Faults while data moves: agents killed, the leader killed, nodes drained. No backup is lost.

One environment for the module: two coordinator replicas (one leads), three nodes. Each test
brings what it broke back, so the next starts from a healthy cluster.
"""

from __future__ import annotations

import os
import signal
from collections.abc import Iterator
from pathlib import Path

import pytest
from kubernetes import client

from barge.control.naming import ASSIGNMENT_ANNOTATION
from barge.devenv.controlplane import ControlPlaneEndpoints
from barge.devenv.localbarge import LocalBarge
from barge.devenv.simcluster import SimCluster
from barge.devenv.velero import data_upload
from barge.devenv.waiting import wait_for
from barge.kube.resources import KubeObjects
from tests.fsbuild import write

pytestmark = pytest.mark.integration
NODES = ("fault-a", "fault-b", "fault-c")
MIB = 2**20


@pytest.fixture(scope="module")
def env(
    control_plane: ControlPlaneEndpoints,
    kube: client.ApiClient,
    objects: KubeObjects,
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[LocalBarge]:
    with SimCluster(kube, tmp_path_factory.mktemp("fault-sim")) as sim:
        config = "prepareTimeout: 2m\nagentGracePeriod: 5s\ndrainGracePeriod: 5s\n"
        workdir = tmp_path_factory.mktemp("fault-barge")
        barge = LocalBarge(
            control_plane, sim, objects, workdir, nodes=NODES, coordinators=2, coordinator_config=config
        )
        with barge:
            yield barge
        assert sim.errors == []


def big_volume(root: Path, megabytes: int = 192) -> Path:
    for index in range(megabytes // 4):
        write(root / f"d{index % 8}" / f"f{index}.bin", os.urandom(4 * MIB))
    return root


def start_upload(env: LocalBarge, namespace: str, volume: Path) -> str:
    vs_name, _ = env.sim.snapshot_source(namespace, "data", volume)
    body = data_upload(backup="faulty", pvc="data", source_namespace=namespace, volume_snapshot=vs_name)
    body["spec"]["operationTimeout"] = "5m"
    return str(env.create("DataUpload", body)["metadata"]["name"])


def wait_progress(env: LocalBarge, name: str, fraction: float) -> dict[str, object]:
    def far_enough() -> dict[str, object] | None:
        status = env.get("DataUpload", name).get("status") or {}
        progress = status.get("progress") or {}
        total = progress.get("totalBytes") or 0
        done = (
            status.get("phase") == "InProgress" and total and progress.get("bytesDone", 0) >= fraction * total
        )
        return status if done else None

    return wait_for(far_enough, 120, what=f"{name} to pass {fraction:.0%}", interval=0.1)


def test_an_agent_killed_mid_upload_is_replaced_and_the_upload_completes(
    env: LocalBarge, app_namespace: str, tmp_path: Path
) -> None:
    name = start_upload(env, app_namespace, big_volume(tmp_path / "v"))
    status = wait_progress(env, name, 0.4)
    victim = str(status["node"])
    os.kill(env.processes.agents[victim].pid, signal.SIGKILL)
    try:
        done = env.wait_phase("DataUpload", name, timeout=180)
    finally:
        env.start_agent(victim)
    final = done["status"]
    assert final["phase"] == "Completed", final.get("message")
    assert final["node"] != victim
    assert done["metadata"]["annotations"][ASSIGNMENT_ANNOTATION].split(":")[0] != "1"
    total = int(final["progress"]["totalBytes"])
    new = int(final["dataMoverResult"]["barge.io/bytes-new"])
    print(f"agent kill: {new / MIB:.1f} MiB of {total / MIB:.1f} MiB uploaded again after the fault")
    assert new < total  # what the killed agent uploaded was reused, not uploaded again


def test_the_leader_killed_mid_upload_hands_over_without_restarting_the_transfer(
    env: LocalBarge, app_namespace: str, tmp_path: Path
) -> None:
    name = start_upload(env, app_namespace, big_volume(tmp_path / "v"))
    wait_progress(env, name, 0.2)
    leader = env.leader()
    assert leader is not None
    os.kill(env.processes.coordinators[leader].pid, signal.SIGKILL)
    try:
        done = env.wait_phase("DataUpload", name, timeout=180)
        new_leader = wait_for(
            lambda: env.leader() not in (None, leader) and env.leader(), 60, what="a new leader"
        )
        env.wait_agents_connected(len(NODES))
    finally:
        env.start_coordinator(leader)
    final = done["status"]
    assert final["phase"] == "Completed", final.get("message")
    assert new_leader != leader
    epoch = done["metadata"]["annotations"][ASSIGNMENT_ANNOTATION].split(":")[0]
    assert epoch == "1"  # the same assignment ran to the end: nothing was redone


def test_a_node_drained_mid_upload_hands_the_work_to_another_node(
    env: LocalBarge, app_namespace: str, tmp_path: Path
) -> None:
    name = start_upload(env, app_namespace, big_volume(tmp_path / "v"))
    status = wait_progress(env, name, 0.3)
    drained = str(status["node"])
    try:
        left = env.sim.drain(drained, timeout=90)
        done = env.wait_phase("DataUpload", name, timeout=180)
    finally:
        env.sim.uncordon(drained)
    assert left == []
    final = done["status"]
    assert final["phase"] == "Completed", final.get("message")
    assert final["node"] != drained
