"""The API server stops answering mid-upload: data keeps moving, status catches up, nothing exits.

This module runs its OWN etcd + kube-apiserver (the session's is shared with other modules), so it
can SIGSTOP the API server: its sockets stay open and nothing answers, the nastiest form of an
outage (requests hang instead of failing). The simulated cluster's components fail their calls
during the pause, so its error list is not asserted empty here.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from barge.kube.client import api_client
from barge.kube.resources import NAMESPACE, KubeObjects
from devenv.controlplane import LocalControlPlane
from devenv.crds import install_crds
from devenv.localbarge import LocalBarge
from devenv.simcluster import SimCluster
from devenv.waiting import wait_for
from tests.e2e.test_faults import MIB, big_volume, fault_barge, start_upload, wait_progress

pytestmark = pytest.mark.integration
NODES = ("outage-a", "outage-b")
OUTAGE_S = 15.0


@dataclass
class OutageEnv:
    plane: LocalControlPlane
    barge: LocalBarge


@pytest.fixture(scope="module")
def outage(tmp_path_factory: pytest.TempPathFactory) -> Iterator[OutageEnv]:
    plane = LocalControlPlane(tmp_path_factory.mktemp("outage-plane"))
    with plane as endpoints, api_client(endpoints.kubeconfig) as api:
        install_crds(api)
        objects = KubeObjects(api)
        with SimCluster(api, tmp_path_factory.mktemp("outage-sim")) as sim:
            config = "prepareTimeout: 2m\nagentGracePeriod: 30s\n"
            workdir = tmp_path_factory.mktemp("outage-barge")
            # throttled agents: the 256 MiB upload takes about 8 s
            with fault_barge(endpoints, sim, objects, workdir, nodes=NODES, config=config) as barge:
                yield OutageEnv(plane, barge)


def stored_bytes(root: Path) -> int:
    return sum(p.stat().st_size for p in root.rglob("*") if p.is_file())


def test_api_server_paused_mid_upload_the_data_keeps_moving_and_status_catches_up(
    outage: OutageEnv, tmp_path: Path
) -> None:
    env, apiserver = outage.barge, outage.plane.apiserver
    assert apiserver is not None
    namespace = "outage-app"
    env.objects.create(NAMESPACE, {"metadata": {"name": namespace}}, exist_ok=True)
    name = start_upload(env, namespace, big_volume(tmp_path / "v", megabytes=256))
    wait_progress(env, name, 0.05)
    before = stored_bytes(env.repository_root)
    apiserver.pause()
    try:
        time.sleep(OUTAGE_S)
        during = stored_bytes(env.repository_root) - before
    finally:
        apiserver.resume()
    resumed = time.monotonic()
    done = env.wait_phase("DataUpload", name, timeout=240)
    caught_up_s = time.monotonic() - resumed
    final = done["status"]
    assert final["phase"] == "Completed", final.get("message")
    assert final["progress"]["bytesDone"] == final["progress"]["totalBytes"] == 256 * MIB
    assert during > 32 * MIB  # packs kept landing in the repository while the API was down
    env.wait_agents_connected(len(NODES))  # a leader again, every agent back on its stream
    reconnected_s = time.monotonic() - resumed
    exited = {
        name: process.exit_code()
        for name, process in {**env.processes.coordinators, **env.processes.agents}.items()
        if process.exit_code() is not None
    }
    assert exited == {}, f"processes exited during the outage: {exited}"
    leader = wait_for(env.leader, 60, what="a leader after the outage")
    print(
        f"API server outage: {OUTAGE_S:.0f}s paused; {during / MIB:.0f} MiB stored meanwhile; "
        f"Completed {caught_up_s:.1f}s after it answered again; leader {leader} with every agent "
        f"connected after {reconnected_s:.1f}s; no process exited"
    )
