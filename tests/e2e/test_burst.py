"""A large Velero backup's burst: 200 DataUploads at once on a 2-node cluster, default settings.

Velero creates one DataUpload per PVC of a backup in one burst. With the coordinator's default
configuration (one transfer per node at a time, no prepare queue limit) every one must complete,
and a small backup created right after a big one must not wait for all of the big one: the
scheduler interleaves backups (round-robin across backups, oldest first within one).
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from kubernetes import client

from barge.kube.resources import DATA_UPLOAD, NAMESPACE, KubeObjects
from devenv.controlplane import ControlPlaneEndpoints
from devenv.localbarge import LocalBarge
from devenv.simcluster import SimCluster
from devenv.velero import data_upload
from tests.fsbuild import write

pytestmark = pytest.mark.integration

BIG, SMALL = 180, 20


@pytest.fixture(scope="module")
def defaults_env(
    control_plane: ControlPlaneEndpoints, kube: client.ApiClient, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[LocalBarge]:
    """Barge exactly on its defaults (an empty coordinator config)."""
    objects = KubeObjects(kube)
    with SimCluster(kube, tmp_path_factory.mktemp("burst-sim")) as sim:
        workdir = tmp_path_factory.mktemp("burst-barge")
        with LocalBarge(control_plane, sim, objects, workdir, nodes=("burst-a", "burst-b")) as env:
            yield env
        assert sim.errors == [], sim.errors


def test_a_burst_of_200_uploads_completes_on_defaults_and_backups_interleave(
    defaults_env: LocalBarge, tmp_path: Path
) -> None:
    env, objects = defaults_env, defaults_env.objects
    namespace = "burst-app"
    objects.create(NAMESPACE, {"metadata": {"name": namespace}}, exist_ok=True)
    snapshots = []
    for index in range(BIG + SMALL):  # set up first: only the burst itself is timed
        volume = write(tmp_path / f"v{index}" / "data.bin", f"volume {index}\n".encode() * 100).parent
        snapshots.append(env.sim.snapshot_source(namespace, f"pvc-{index}", volume)[0])
    started = time.monotonic()
    names: dict[str, str] = {}
    for index, snapshot in enumerate(snapshots):
        backup = "big" if index < BIG else "small"
        body = data_upload(
            backup=backup, pvc=f"pvc-{index}", source_namespace=namespace, volume_snapshot=snapshot
        )
        names[env.create("DataUpload", body)["metadata"]["name"]] = backup

    def final() -> list[dict[str, object]]:
        items = objects.list(DATA_UPLOAD, env.velero_namespace)
        return [i for i in items if i["metadata"]["name"] in names and (i.get("status") or {}).get("phase") in
                ("Completed", "Failed", "Canceled")]  # fmt: skip

    deadline = started + 600
    done = final()
    while len(done) < len(names) and time.monotonic() < deadline:
        time.sleep(2)
        done = final()
    took = time.monotonic() - started
    phases = {str(i["status"]["phase"]) for i in done}  # type: ignore[index]
    print(f"burst of {len(names)} uploads on 2 nodes: {len(done)} final after {took:.0f}s, phases {phases}")
    assert len(done) == len(names), f"only {len(done)} of {len(names)} final after {took:.0f}s"
    failed = [i["status"].get("message") for i in done if i["status"]["phase"] != "Completed"]  # type: ignore[index]
    assert not failed, f"{len(failed)} did not complete, e.g. {failed[:3]}"

    finished = {
        str(i["metadata"]["name"]): str(i["status"]["completionTimestamp"])  # type: ignore[index]
        for i in done
    }
    small_created = min(
        str(i["metadata"]["creationTimestamp"])
        for i in done
        if names[str(i["metadata"]["name"])] == "small"  # type: ignore[index]
    )
    small_last = max(t for name, t in finished.items() if names[name] == "small")
    big_meanwhile = sum(
        1 for name, t in finished.items() if names[name] == "big" and small_created < t <= small_last
    )
    print(
        f"while the small backup ran ({small_created} to {small_last}): {big_meanwhile} big uploads finished"
    )
    # Round-robin across backups: while the small backup's 20 run, about as many of the big one's
    # finish; first-come-first-served would finish every big one still waiting first (over 100).
    assert big_meanwhile <= 2 * SMALL + 10, f"{big_meanwhile} big uploads finished while the small one waited"
