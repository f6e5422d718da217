"""Faults while data moves: agents killed, the leader killed, nodes drained (with Barge running, and
with every coordinator stopped). No backup is lost.

Each test prints its measured time-to-recover (docs/reliability.md records them).

One environment for the module: two coordinator replicas (one leads), three nodes. Each test
brings what it broke back, so the next starts from a healthy cluster.
"""

from __future__ import annotations

import os
import signal
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from kubernetes import client

from barge.control.naming import ASSIGNMENT_ANNOTATION, DRAIN_BOUND_S, EXPOSER_BUDGET
from barge.errors import NotFound
from barge.kube.resources import (
    EVENT,
    PERSISTENT_VOLUME_CLAIM,
    POD,
    POD_DISRUPTION_BUDGET,
    VOLUME_SNAPSHOT,
    VOLUME_SNAPSHOT_CONTENT,
    KubeObjects,
)
from coordinator.model import REEXPOSURES_ANNOTATION
from devenv.controlplane import ControlPlaneEndpoints
from devenv.faultproxy import FaultProxy
from devenv.localbarge import LocalBarge
from devenv.s3server import S3Endpoint
from devenv.simcluster import SimCluster
from devenv.trees import capture
from devenv.velero import data_upload
from devenv.waiting import wait_for
from tests.e2e.faulty_s3 import FaultyS3, faulty_s3_location, restored_from_s3
from tests.fsbuild import write

pytestmark = pytest.mark.integration
NODES = ("fault-a", "fault-b", "fault-c")
MIB = 2**20
ONE_PACK_PER_WORKER = 4 * 32 * MIB  # the agent's default --workers times the 32 MiB pack target
SLOW_BSL = "slow-s3"
# The agents' upload limit, so that a fault lands mid-upload however fast this machine is: the
# 384 MiB volume takes about 12 s (unthrottled, a quiet machine uploaded 256 MiB in 1.1 s).
UPLOAD_RATE = "32Mi"
PACK_DELAY_S = 45.0  # every pack upload waits this long: the transfer outlasts any drain here


def fault_barge(
    endpoints: ControlPlaneEndpoints,
    sim: SimCluster,
    objects: KubeObjects,
    workdir: Path,
    *,
    nodes: tuple[str, ...],
    config: str,
) -> LocalBarge:
    """Two coordinators and throttled agents: what every fault test here and in
    test_apiserver_outage runs, so that the fault lands mid-upload."""
    return LocalBarge(
        endpoints,
        sim,
        objects,
        workdir,
        nodes=nodes,
        coordinators=2,
        coordinator_config=config,
        extra_agent_args=("--max-upload-rate", UPLOAD_RATE),
    )


@pytest.fixture(scope="module")
def env(
    control_plane: ControlPlaneEndpoints,
    kube: client.ApiClient,
    objects: KubeObjects,
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[LocalBarge]:
    with SimCluster(kube, tmp_path_factory.mktemp("fault-sim")) as sim:
        config = "prepareTimeout: 2m\nagentGracePeriod: 5s\ndrainGracePeriod: 0s\n"
        workdir = tmp_path_factory.mktemp("fault-barge")
        with fault_barge(control_plane, sim, objects, workdir, nodes=NODES, config=config) as barge:
            yield barge
        assert sim.errors == []


@pytest.fixture(scope="module")
def slow_s3(s3_server: S3Endpoint, env: LocalBarge) -> Iterator[FaultyS3]:
    """A BackupStorageLocation on MinIO through a proxy that can hold the pack uploads back."""
    with FaultProxy(s3_server.url) as proxy:
        yield faulty_s3_location(env, s3_server, proxy, SLOW_BSL, retry_timeout_s=180)


def big_volume(root: Path, megabytes: int = 384) -> Path:
    """Big enough that the transfer takes seconds at ``UPLOAD_RATE``, so the fault lands mid-upload."""
    for index in range(megabytes // 4):
        write(root / f"d{index % 8}" / f"f{index}.bin", os.urandom(4 * MIB))
    return root


# DataUpload name -> (namespace, VolumeSnapshot, VolumeSnapshotContent, handle) Velero left for it.
SOURCES: dict[str, tuple[str, str, str, str]] = {}


def start_upload(env: LocalBarge, namespace: str, volume: Path, bsl: str = "default") -> str:
    vs_name, handle = env.sim.snapshot_source(namespace, "data", volume)
    content = env.objects.get(VOLUME_SNAPSHOT, namespace, vs_name)["status"]["boundVolumeSnapshotContentName"]
    body = data_upload(
        backup="faulty", pvc="data", source_namespace=namespace, volume_snapshot=vs_name, bsl=bsl
    )
    body["spec"]["operationTimeout"] = "5m"
    name = str(env.create("DataUpload", body)["metadata"]["name"])
    SOURCES[name] = (namespace, vs_name, content, handle)
    return name


def assert_source_released(env: LocalBarge, name: str) -> None:
    """The source VolumeSnapshot/Content are gone, the clone holds the storage snapshot alone
    (unless the upload has finished meanwhile and the clone went too)."""
    namespace, vs_name, content, handle = SOURCES[name]
    for resource, scope, object_name in (
        (VOLUME_SNAPSHOT, namespace, vs_name),
        (VOLUME_SNAPSHOT_CONTENT, None, content),
    ):
        with pytest.raises(NotFound):
            env.objects.get(resource, scope, object_name)
    try:
        clone = env.objects.get(VOLUME_SNAPSHOT_CONTENT, None, name)
    except NotFound:
        assert env.get("DataUpload", name)["status"]["phase"] in ("Completed", "Failed", "Canceled")
        return
    assert (clone["spec"]["deletionPolicy"], clone["spec"]["source"]["snapshotHandle"]) == ("Delete", handle)


def wait_progress(env: LocalBarge, name: str, fraction: float) -> dict[str, object]:
    def far_enough() -> dict[str, object] | None:
        status = env.get("DataUpload", name).get("status") or {}
        progress = status.get("progress") or {}
        total = progress.get("totalBytes") or 0
        if status.get("phase") in ("Completed", "Failed", "Canceled"):
            pytest.fail(f"{name} ended {status['phase']} before the fault: did the agents get UPLOAD_RATE?")
        done = (
            status.get("phase") == "InProgress" and total and progress.get("bytesDone", 0) >= fraction * total
        )
        return status if done else None

    return wait_for(far_enough, 120, what=f"{name} to pass {fraction:.0%}", interval=0.1)


def wait_exposer_ready(env: LocalBarge, name: str) -> dict[str, Any]:
    """The exposer pod once Ready: its agent vouches that it moves the data with a coordinator on
    its stream, so the budget protects it (the kubelet's readiness probe, played by the simulator,
    reads the agent's vouch)."""

    def ready() -> dict[str, Any] | None:
        try:
            pod = env.objects.get(POD, env.velero_namespace, name)
        except NotFound:
            return None
        conditions = {c["type"]: c["status"] for c in (pod.get("status") or {}).get("conditions") or []}
        return pod if conditions.get("Ready") == "True" else None

    return wait_for(ready, 60, what=f"exposer pod {name} Ready", interval=0.1)


def agent_running(env: LocalBarge, node: str) -> float:
    return env.metric(env.processes.agent_metrics[node], "barge_agent_running_assignments") or 0.0


def assert_nothing_left(env: LocalBarge, name: str, timeout: float = 60.0) -> None:
    """After the fault: every exposure object, the source snapshot Velero left and the storage
    snapshot are deleted, and the finalizer released (no leak)."""
    parts = (
        (POD, env.velero_namespace),
        (POD_DISRUPTION_BUDGET, env.velero_namespace),
        (PERSISTENT_VOLUME_CLAIM, env.velero_namespace),
        (VOLUME_SNAPSHOT, env.velero_namespace),
        (VOLUME_SNAPSHOT_CONTENT, None),
    )

    source_namespace, vs_name, content, handle = SOURCES[name]
    sources = ((VOLUME_SNAPSHOT, source_namespace, vs_name), (VOLUME_SNAPSHOT_CONTENT, None, content))

    def left() -> list[str]:
        found = []
        for resource, namespace, object_name in (*((r, n, name) for r, n in parts), *sources):
            try:
                env.objects.get(resource, namespace, object_name)
                found.append(f"{resource.kind} {object_name}")
            except NotFound:
                pass
        if env.get("DataUpload", name)["metadata"].get("finalizers"):
            found.append("finalizer")
        if handle in env.sim.storage_snapshots():
            found.append(f"storage snapshot {handle}")
        return found

    wait_for(lambda: not left(), timeout, what=f"the exposure of {name} to be cleaned up", interval=0.2)


def test_an_agent_killed_mid_upload_is_replaced_and_the_upload_completes(
    env: LocalBarge, app_namespace: str, tmp_path: Path
) -> None:
    name = start_upload(env, app_namespace, big_volume(tmp_path / "v"))
    status = wait_progress(env, name, 0.4)
    victim = str(status["node"])
    assert_source_released(env, name)  # long before the data moves
    os.kill(env.processes.agents[victim].pid, signal.SIGKILL)
    killed = time.monotonic()
    try:
        done = env.wait_phase("DataUpload", name, timeout=180)
        recovered_s = time.monotonic() - killed
    finally:
        env.start_agent(victim)
    final = done["status"]
    assert final["phase"] == "Completed", final.get("message")
    assert final["node"] != victim
    assert done["metadata"]["annotations"][ASSIGNMENT_ANNOTATION].split(":")[0] != "1"
    total = int(final["progress"]["totalBytes"])
    new = int(final["dataMoverResult"]["barge.io/bytes-new"])
    twice = uploaded_twice(env, app_namespace, total)
    print(
        f"agent kill: Completed on {final['node']} {recovered_s:.1f}s after the kill; the second agent "
        f"stored {new / MIB:.1f} of {total / MIB:.1f} MiB; {twice / MIB:.1f} MiB were uploaded twice"
    )
    assert new < total  # what the killed agent uploaded was reused, not uploaded again
    assert twice <= ONE_PACK_PER_WORKER
    assert_nothing_left(env, name)


def test_the_leader_killed_mid_upload_hands_over_without_restarting_the_transfer(
    env: LocalBarge, app_namespace: str, tmp_path: Path
) -> None:
    name = start_upload(env, app_namespace, big_volume(tmp_path / "v"))
    wait_progress(env, name, 0.2)
    leader = env.leader()
    assert leader is not None
    os.kill(env.processes.coordinators[leader].pid, signal.SIGKILL)
    killed = time.monotonic()
    try:
        new_leader = wait_for(
            lambda: env.leader() not in (None, leader) and env.leader(), 60, what="a new leader", interval=0.1
        )
        took_over_s = time.monotonic() - killed
        done = env.wait_phase("DataUpload", name, timeout=180)
        completed_s = time.monotonic() - killed
        env.wait_agents_connected(len(NODES))
    finally:
        env.start_coordinator(leader)
    final = done["status"]
    assert final["phase"] == "Completed", final.get("message")
    assert new_leader != leader
    epoch = done["metadata"]["annotations"][ASSIGNMENT_ANNOTATION].split(":")[0]
    assert epoch == "1"  # the same assignment ran to the end: nothing was redone
    assert_nothing_left(env, name)  # the new leader cleaned up what the old one created
    print(
        f"leader kill: {new_leader} leads {took_over_s:.1f}s after the kill; "
        f"Completed {completed_s:.1f}s after it"
    )


def uploaded_twice(env: LocalBarge, namespace: str, total: int) -> int:
    """Bytes in the namespace's repository beyond one copy of the (incompressible) volume: what was
    uploaded again after the fault. The issue's bound: at most one pack per worker."""
    root = env.repository_dir(namespace)
    return sum(p.stat().st_size for p in root.rglob("*") if p.is_file()) - total


def events_of(env: LocalBarge, name: str, reason: str) -> list[str]:
    """Messages of the Events recorded on the DataUpload ``name`` with ``reason``."""
    return [
        str(e.get("message", ""))
        for e in env.objects.list(EVENT, env.velero_namespace)
        if (e.get("involvedObject") or {}).get("name") == name and e.get("reason") == reason
    ]


def test_a_drain_waits_for_the_hand_off_and_the_upload_completes_on_another_node(
    env: LocalBarge, app_namespace: str, tmp_path: Path
) -> None:
    # drainGracePeriod 0s: cordoned work is handed off at once (unit tests cover the projection
    # that lets work finish within a longer grace); 384 MiB so that the hand-off wins the race.
    name = start_upload(env, app_namespace, big_volume(tmp_path / "v"))
    status = wait_progress(env, name, 0.1)
    drained = str(status["node"])
    wait_exposer_ready(env, name)  # the budget protects only a Ready exposer pod
    budget = env.objects.get(POD_DISRUPTION_BUDGET, env.velero_namespace, EXPOSER_BUDGET)
    assert budget["spec"]["maxUnavailable"] == 0
    assert budget["status"]["expectedPods"] >= 1  # it covers this upload's exposer pod
    started = time.monotonic()
    try:
        left = env.sim.drain(drained, timeout=90)
        drain_s = time.monotonic() - started
        when_drained = env.get("DataUpload", name)
        assert_source_released(env, name)  # the re-exposure kept the clone: it is all there is
        done = env.wait_phase("DataUpload", name, timeout=180)
        complete_s = time.monotonic() - started
    finally:
        env.sim.uncordon(drained)
    assert left == []
    # The budget refused every eviction: the pod left only when the coordinator deleted the exposure
    # after the agent handed the work off, so the drain ended after the hand-off, not before.
    assert int(when_drained["metadata"]["annotations"].get(REEXPOSURES_ANNOTATION, "0")) >= 1
    reexposures = events_of(env, name, "Reexposing")
    assert reexposures, "no Reexposing event"
    assert "handed the work off" in reexposures[0], reexposures
    final = done["status"]
    assert final["phase"] == "Completed", final.get("message")
    assert final["node"] != drained
    total = int(final["progress"]["totalBytes"])
    new = int(final["dataMoverResult"]["barge.io/bytes-new"])
    assert new < total  # what the drained agent uploaded was reused
    twice = uploaded_twice(env, app_namespace, total)
    assert twice <= ONE_PACK_PER_WORKER
    assert_nothing_left(env, name)
    print(
        f"drain: kubectl drain took {drain_s:.1f}s (waited for the hand-off); upload completed on "
        f"{final['node']} {complete_s:.1f}s after the drain began; the second agent stored "
        f"{new / MIB:.1f} of {total / MIB:.1f} MiB; {twice / MIB:.1f} MiB were uploaded twice"
    )


def test_with_every_coordinator_stopped_a_drain_ends_within_the_bound_and_the_upload_resumes_later(
    env: LocalBarge, slow_s3: FaultyS3, app_namespace: str, tmp_path: Path
) -> None:
    """Nobody can hand the work off, so the exposer pod must not hold the drain: its agent stops
    vouching for it, the pod turns unready and the budget (AlwaysAllow) lets the drain evict it. The
    agent lets go of the volume; the next coordinator re-exposes it on another node. The pack
    uploads are held back meanwhile: with 3 packs in flight, reading stops at about 128 of the
    384 MiB, so the agent cannot simply finish the transfer before the drain."""
    volume = big_volume(tmp_path / "v")
    drained, stopped = "", list[str]()
    slow_s3.proxy.plan.delay(PACK_DELAY_S, path_contains="/data/")
    try:
        try:
            name = start_upload(env, app_namespace, volume, bsl=SLOW_BSL)
            env.wait_phase("DataUpload", name, ("InProgress",), timeout=120)
            drained = str(wait_exposer_ready(env, name)["spec"]["nodeName"])
            assert env.sim.evict(env.velero_namespace, name) is False  # while Barge runs, it is held
            leader = env.leader()
            stopped = sorted(env.processes.coordinators, key=lambda c: c == leader)  # no failover
            for coordinator in stopped:
                env.processes.coordinators[coordinator].stop()
            started = time.monotonic()
            left = env.sim.drain(drained, timeout=DRAIN_BOUND_S)
            drain_s = time.monotonic() - started
            assert left == [], f"the drain still waits after DRAIN_BOUND_S ({DRAIN_BOUND_S} s): {left}"
            # No coordinator, yet the agent let go of the volume: it handed the work back, unfinished.
            wait_for(lambda: agent_running(env, drained) == 0, 120, what=f"the agent on {drained} to stop")
            while_down = env.get("DataUpload", name)["status"]
            assert (while_down["phase"], while_down["node"]) == ("InProgress", drained)
        finally:
            slow_s3.proxy.plan.clear()
            for coordinator in stopped:
                env.start_coordinator(coordinator)
        done = env.wait_phase("DataUpload", name, timeout=240)
        resumed_s = time.monotonic() - started
        env.wait_agents_connected(len(NODES))
    finally:
        if drained:
            env.sim.uncordon(drained)
    final = done["status"]
    assert final["phase"] == "Completed", final.get("message")
    assert final["node"] != drained
    assert int(done["metadata"]["annotations"].get(REEXPOSURES_ANNOTATION, "0")) >= 1
    snapshot = final["snapshotID"]
    out = restored_from_s3(env, slow_s3, namespace=app_namespace, snapshot=snapshot, out=tmp_path / "out")
    assert capture(out) == capture(volume)
    assert_nothing_left(env, name)
    print(
        f"drain with every coordinator stopped: kubectl drain took {drain_s:.1f}s (bound {DRAIN_BOUND_S}s); "
        f"the upload Completed on {final['node']} {resumed_s:.1f}s after the drain began, restored bit-exact"
    )
