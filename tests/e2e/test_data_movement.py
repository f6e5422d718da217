"""DataUploads and DataDownloads served end to end, exactly as Velero creates and reads them."""

from __future__ import annotations

import base64
import os
import socket
import stat
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from barge.control.naming import FINALIZER, LABEL_OWNER_UID
from barge.errors import NotFound
from barge.kube.resources import (
    BACKUP_STORAGE_LOCATION,
    DATA_UPLOAD,
    PERSISTENT_VOLUME_CLAIM,
    POD,
    SECRET,
    VOLUME_SNAPSHOT,
    VOLUME_SNAPSHOT_CONTENT,
    KubeObjects,
    Obj,
    Resource,
)
from devenv.localbarge import LocalBarge
from devenv.trees import capture
from devenv.velero import data_download, data_upload, restore_target_pvc
from devenv.waiting import wait_for
from tests.fsbuild import nested_tree, privileged_volume, remove_tree, write

pytestmark = pytest.mark.integration


def make_volume(root: Path, files: int = 20, size: int = 50_000) -> Path:
    for index in range(files):
        write(root / f"dir{index % 4}" / f"file{index}.bin", os.urandom(size))
    write(root / "empty", b"")
    return root


@dataclass(frozen=True)
class SourceSnapshot:
    """What Velero's CSI plugin left for one DataUpload: its VolumeSnapshot, content and handle."""

    namespace: str
    snapshot: str
    content: str
    handle: str


SOURCES: dict[str, SourceSnapshot] = {}  # DataUpload name -> its source snapshot


def snapshot_source(
    env: LocalBarge, namespace: str, pvc: str, volume: Path, **options: Any
) -> SourceSnapshot:
    vs_name, handle = env.sim.snapshot_source(namespace, pvc, volume, **options)
    content = env.objects.get(VOLUME_SNAPSHOT, namespace, vs_name)["status"]["boundVolumeSnapshotContentName"]
    return SourceSnapshot(namespace, vs_name, content, handle)


def create_upload(
    env: LocalBarge, source: SourceSnapshot, pvc: str, backup: str = "nightly", **spec: Any
) -> str:
    body = data_upload(
        backup=backup, pvc=pvc, source_namespace=source.namespace, volume_snapshot=source.snapshot
    )
    body["spec"].update(spec)
    name = str(env.create("DataUpload", body)["metadata"]["name"])
    SOURCES[name] = source
    return name


def upload(
    env: LocalBarge, namespace: str, volume: Path, backup: str = "nightly", pvc: str = "data", **spec: Any
) -> str:
    return create_upload(env, snapshot_source(env, namespace, pvc, volume), pvc, backup, **spec)


def download(
    env: LocalBarge,
    app_namespace: str,
    snapshot_id: str,
    *,
    restore: str,
    pvc: str,
    size: str = "1Gi",
    block: bool = False,
    timeout: float = 120.0,
) -> tuple[str, str, Obj]:
    """Velero's part of a restore: the target PVC in ``<app_namespace>-restored``, then a
    DataDownload into it. Returns the target namespace, the DataDownload's name and its final status."""
    target_ns = f"{app_namespace}-restored"
    target = restore_target_pvc(restore=restore, name=pvc, namespace=target_ns, size=size, block=block)
    env.objects.create(PERSISTENT_VOLUME_CLAIM, target)
    body = data_download(
        restore=restore,
        snapshot_id=snapshot_id,
        target_pvc=pvc,
        target_namespace=target_ns,
        source_namespace=app_namespace,
    )
    name = str(env.create("DataDownload", body)["metadata"]["name"])
    return target_ns, name, env.wait_phase("DataDownload", name, timeout=timeout)["status"]


def assert_cleaned_up(env: LocalBarge, objects: KubeObjects, kind: str, name: str) -> None:
    """Nothing Barge created is left, and for a DataUpload nothing of the snapshot Velero handed it
    either: the source VolumeSnapshot and content are gone, and so is the storage snapshot."""
    uid = env.get(kind, name)["metadata"]["uid"]
    source = SOURCES.get(name) if kind == "DataUpload" else None

    def gone(resource: Resource, namespace: str | None, object_name: str) -> bool:
        try:
            objects.get(resource, namespace, object_name)
        except NotFound:
            return True
        return False

    def nothing_left() -> bool:
        selector = f"{LABEL_OWNER_UID}={uid}"
        leftovers = [
            *objects.list(POD, "velero", selector),
            *objects.list(PERSISTENT_VOLUME_CLAIM, "velero", selector),
            *objects.list(VOLUME_SNAPSHOT, "velero", selector),
            *objects.list(VOLUME_SNAPSHOT_CONTENT, None, selector),
        ]
        finalizers = env.get(kind, name)["metadata"].get("finalizers") or []
        if source is not None and not (
            gone(VOLUME_SNAPSHOT, source.namespace, source.snapshot)
            and gone(VOLUME_SNAPSHOT_CONTENT, None, source.content)
            and source.handle not in env.sim.storage_snapshots()
        ):
            return False
        return not leftovers and FINALIZER not in finalizers

    wait_for(nothing_left, 60, what=f"everything Barge created for {kind} {name} to be removed", interval=0.3)


def test_a_data_upload_completes_with_what_velero_reads(
    barge_env: LocalBarge, objects: KubeObjects, app_namespace: str, tmp_path: Path
) -> None:
    volume = make_volume(tmp_path / "volume")
    name = upload(barge_env, app_namespace, volume)
    done = barge_env.wait_phase("DataUpload", name)
    status = done["status"]
    assert status["phase"] == "Completed", status.get("message")
    assert len(status["snapshotID"]) == 64
    assert status["node"] in ("node-a", "node-b")
    assert status["progress"] == {"totalBytes": 20 * 50_000, "bytesDone": 20 * 50_000}
    assert status["startTimestamp"] <= status["completionTimestamp"]
    assert status["path"]
    accepted_at = done["metadata"]["annotations"][
        "barge.io/accepted-at"
    ]  # the seed CRD prunes acceptedTimestamp
    assert accepted_at <= status["startTimestamp"]
    assert_cleaned_up(barge_env, objects, "DataUpload", name)


def test_a_data_download_restores_bit_exact_into_the_target_pvc(
    barge_env: LocalBarge, objects: KubeObjects, app_namespace: str, tmp_path: Path
) -> None:
    volume = make_volume(tmp_path / "volume", files=8)
    os.symlink("dir0", volume / "link")
    upload_name = upload(barge_env, app_namespace, volume)
    uploaded = barge_env.wait_phase("DataUpload", upload_name)["status"]
    assert uploaded["phase"] == "Completed", uploaded.get("message")
    # The snapshot is gone from the cluster and the storage: the data lives in the repository only.
    assert_cleaned_up(barge_env, objects, "DataUpload", upload_name)
    target_ns, name, status = download(
        barge_env, app_namespace, uploaded["snapshotID"], restore="r1", pvc="data"
    )
    assert status["phase"] == "Completed", status.get("message")
    barge_env.wait_pvc_bound(target_ns, "data")
    restored = capture(barge_env.sim.claim_data(target_ns, "data"))
    restored.pop(b"lost+found", None)
    assert restored == capture(volume)
    assert_cleaned_up(barge_env, objects, "DataDownload", name)


def test_a_tree_deeper_than_the_recursion_limit_moves_both_ways_bit_exact(
    barge_env: LocalBarge, objects: KubeObjects, app_namespace: str, tmp_path: Path
) -> None:
    """A tenant's 1,100-level directory: the agent's walk used to die in RecursionError, sending no
    result, so the DataUpload stayed InProgress and the node's agent at capacity."""
    volume = nested_tree(tmp_path / "deep", 1_100)
    restored_data: Path | None = None
    try:
        upload_name = upload(barge_env, app_namespace, volume, pvc="deep")
        uploaded = barge_env.wait_phase("DataUpload", upload_name, timeout=240)["status"]
        assert uploaded["phase"] == "Completed", uploaded.get("message")
        assert uploaded["dataMoverResult"]["barge.io/skipped"] == "0"
        assert_cleaned_up(barge_env, objects, "DataUpload", upload_name)
        target_ns, _, status = download(
            barge_env, app_namespace, uploaded["snapshotID"], restore="r-deep", pvc="deep", timeout=240
        )
        assert status["phase"] == "Completed", status.get("message")
        barge_env.wait_pvc_bound(target_ns, "deep")
        restored_data = barge_env.sim.claim_data(target_ns, "deep")
        restored = capture(restored_data)
        restored.pop(b"lost+found", None)
        assert restored == capture(volume)
    finally:  # rm -rf: pytest's own clean-up of old temporary directories recurses
        remove_tree(volume)
        if restored_data is not None:
            remove_tree(restored_data)


def test_a_restore_withholds_what_grants_privilege_and_the_data_download_says_so(
    barge_env: LocalBarge, objects: KubeObjects, app_namespace: str, tmp_path: Path
) -> None:
    """A tenant's device nodes, setuid-root file and file capability do not come back unless the
    DataDownload asks (barge.io/restore-privileged); its status.message says what was withheld."""
    volume = privileged_volume(tmp_path / "volume")
    upload_name = upload(barge_env, app_namespace, volume)
    uploaded = barge_env.wait_phase("DataUpload", upload_name)["status"]
    assert uploaded["phase"] == "Completed", uploaded.get("message")
    snapshot_id = uploaded["snapshotID"]
    target_ns, _, status = download(barge_env, app_namespace, snapshot_id, restore="rp", pvc="data")
    assert status["phase"] == "Completed", status.get("message")
    assert status["message"] == (
        "restored without the privileges the snapshot records: 2 device node(s) not created; "
        "2 file(s) restored without their setuid/setgid bits; 2 security.*/trusted.* extended "
        'attribute(s) not set (set spec.dataMoverConfig barge.io/restore-privileged: "true" to restore them)'
    )
    barge_env.wait_pvc_bound(target_ns, "data")
    restored = barge_env.sim.claim_data(target_ns, "data")
    assert not os.path.lexists(restored / "null")
    assert stat.S_IMODE(os.lstat(restored / "bin" / "su").st_mode) == 0o755
    assert "security.capability" not in os.listxattr(restored / "bin" / "ping")
    assert (restored / "bin" / "su").read_bytes() == (volume / "bin" / "su").read_bytes()


def test_many_uploads_from_two_backups_spread_over_both_nodes(
    barge_env: LocalBarge, objects: KubeObjects, app_namespace: str, tmp_path: Path
) -> None:
    names = []
    for index in range(6):
        volume = make_volume(tmp_path / f"v{index}", files=4, size=20_000)
        backup = "big" if index < 4 else "small"
        names.append(upload(barge_env, app_namespace, volume, backup=backup, pvc=f"data-{index}"))
    statuses = [barge_env.wait_phase("DataUpload", name, timeout=240)["status"] for name in names]
    assert [s["phase"] for s in statuses] == ["Completed"] * 6, [s.get("message") for s in statuses]
    assert {s["node"] for s in statuses} == {"node-a", "node-b"}
    assert len({s["snapshotID"] for s in statuses}) == 6
    for name in names:
        assert_cleaned_up(barge_env, objects, "DataUpload", name)


def test_data_uploads_of_other_data_movers_are_left_alone(
    barge_env: LocalBarge, app_namespace: str, tmp_path: Path
) -> None:
    name = upload(barge_env, app_namespace, make_volume(tmp_path / "v", files=1), datamover="velero")
    ours = upload(barge_env, app_namespace, make_volume(tmp_path / "w", files=1), pvc="other")
    barge_env.wait_phase("DataUpload", ours)
    other = barge_env.get("DataUpload", name)
    assert (other.get("status") or {}).get("phase") in (None, "", "New")
    assert FINALIZER not in (other["metadata"].get("finalizers") or [])


def test_cancel_before_the_data_moves(
    barge_env: LocalBarge, objects: KubeObjects, app_namespace: str, tmp_path: Path
) -> None:
    name = upload(barge_env, app_namespace, make_volume(tmp_path / "v", files=1), cancel=True)
    status = barge_env.wait_phase("DataUpload", name)["status"]
    assert status["phase"] == "Canceled"
    assert_cleaned_up(barge_env, objects, "DataUpload", name)


def test_cancel_while_the_data_moves(
    barge_env: LocalBarge, objects: KubeObjects, app_namespace: str, tmp_path: Path
) -> None:
    volume = make_volume(tmp_path / "big", files=40, size=4 * 2**20)
    name = upload(barge_env, app_namespace, volume)
    barge_env.wait_phase("DataUpload", name, phases=("InProgress", "Completed"))
    barge_env.patch_spec("DataUpload", name, {"cancel": True})
    status = barge_env.wait_phase("DataUpload", name)["status"]
    assert status["phase"] in ("Canceled", "Completed")  # Completed only if it finished first
    assert_cleaned_up(barge_env, objects, "DataUpload", name)


def test_an_unknown_backup_storage_location_fails_with_a_message(
    barge_env: LocalBarge, objects: KubeObjects, app_namespace: str, tmp_path: Path
) -> None:
    name = upload(
        barge_env, app_namespace, make_volume(tmp_path / "v", files=1), backupStorageLocation="nowhere"
    )
    status = barge_env.wait_phase("DataUpload", name, timeout=90)["status"]
    assert status["phase"] == "Failed"
    assert "nowhere" in status["message"]
    assert_cleaned_up(barge_env, objects, "DataUpload", name)


def test_deleting_a_data_upload_cleans_everything_up(
    barge_env: LocalBarge, objects: KubeObjects, app_namespace: str, tmp_path: Path
) -> None:
    name = upload(barge_env, app_namespace, make_volume(tmp_path / "big", files=20, size=2**20))
    barge_env.wait_phase("DataUpload", name, phases=("Accepted", "Prepared", "InProgress", "Completed"))
    uid = barge_env.get("DataUpload", name)["metadata"]["uid"]
    objects.delete(DATA_UPLOAD, "velero", name)
    barge_env.wait_gone("DataUpload", name)
    leftovers = objects.list(POD, "velero", f"{LABEL_OWNER_UID}={uid}")
    assert leftovers == []
    assert objects.list(VOLUME_SNAPSHOT_CONTENT, None, f"{LABEL_OWNER_UID}={uid}") == []
    source = SOURCES[name]

    def snapshot_gone() -> bool:
        try:
            objects.get(VOLUME_SNAPSHOT, source.namespace, source.snapshot)
        except NotFound:
            return source.handle not in barge_env.sim.storage_snapshots()
        return False

    wait_for(
        snapshot_gone, 30, what="the source snapshot and its storage snapshot to be deleted", interval=0.3
    )


def test_metrics_show_the_work(barge_env: LocalBarge, app_namespace: str, tmp_path: Path) -> None:
    name = upload(barge_env, app_namespace, make_volume(tmp_path / "v", files=2))
    node = barge_env.wait_phase("DataUpload", name)["status"]["node"]
    leader = barge_env.leader()
    assert leader is not None
    port = barge_env.processes.coordinator_metrics[leader]
    assert barge_env.metric(port, "barge_coordinator_agents_connected") == 2.0
    assert (barge_env.metric(port, "barge_coordinator_assignments_total", {"kind": "upload"}) or 0) >= 1
    transitions = "barge_coordinator_phase_transitions_total"
    assert (barge_env.metric(port, transitions, {"kind": "DataUpload", "phase": "Accepted"}) or 0) >= 1
    assert (barge_env.metric(port, transitions, {"kind": "DataUpload", "phase": "Prepared"}) or 0) >= 1
    agent_port = barge_env.processes.agent_metrics[node]
    assert (barge_env.metric(agent_port, "barge_agent_data_upload_success_total", {"node": node}) or 0) >= 1
    assert (
        barge_env.metric(agent_port, "barge_agent_bytes_processed_total", {"kind": "upload"}) or 0
    ) >= 100_000


def test_a_block_volume_round_trips_bit_exact(
    barge_env: LocalBarge, objects: KubeObjects, app_namespace: str, tmp_path: Path
) -> None:
    image = tmp_path / "disk.img"
    with image.open("wb") as out:
        out.truncate(64 * 2**20)
        out.seek(10 * 2**20)
        out.write(os.urandom(3 * 2**20))
        out.seek(50 * 2**20)
        out.write(b"tail of the device")
    source = snapshot_source(barge_env, app_namespace, "raw", image, block=True)
    upload_name = create_upload(barge_env, source, "raw", backup="blocks")
    uploaded = barge_env.wait_phase("DataUpload", upload_name)
    status = uploaded["status"]
    assert status["phase"] == "Completed", status.get("message")
    assert status["progress"]["totalBytes"] == 64 * 2**20
    assert_cleaned_up(barge_env, objects, "DataUpload", upload_name)
    target_ns, _, done = download(
        barge_env, app_namespace, status["snapshotID"], restore="rb", pvc="raw", size="64Mi", block=True
    )
    assert done["phase"] == "Completed", done.get("message")
    barge_env.wait_pvc_bound(target_ns, "raw")
    restored = barge_env.sim.claim_data(target_ns, "raw")
    assert restored.read_bytes() == image.read_bytes()


def test_a_snapshot_that_failed_fails_the_upload_with_its_error(
    barge_env: LocalBarge, objects: KubeObjects, app_namespace: str, tmp_path: Path
) -> None:
    volume = make_volume(tmp_path / "v", files=1)
    source = snapshot_source(barge_env, app_namespace, "data", volume)
    barge_env.sim.fail_snapshot(app_namespace, source.snapshot, "the storage backend refused the snapshot")
    name = create_upload(barge_env, source, "data")
    status = barge_env.wait_phase("DataUpload", name)["status"]
    assert status["phase"] == "Failed"
    assert "the storage backend refused the snapshot" in status["message"]
    assert_cleaned_up(barge_env, objects, "DataUpload", name)


def test_a_missing_credentials_secret_fails_with_what_to_fix(
    barge_env: LocalBarge, objects: KubeObjects, app_namespace: str, tmp_path: Path
) -> None:
    bsl = {
        "metadata": {"name": f"creds-{app_namespace}", "namespace": "velero"},
        "spec": {
            "provider": "aws",
            "objectStorage": {"bucket": "b"},
            "credential": {"name": "no-such-secret", "key": "cloud"},
            "config": {"region": "us-east-1", "s3Url": "http://127.0.0.1:9"},
        },
    }
    objects.create(BACKUP_STORAGE_LOCATION, bsl)
    name = upload(
        barge_env,
        app_namespace,
        make_volume(tmp_path / "v", files=1),
        backupStorageLocation=f"creds-{app_namespace}",
    )
    status = barge_env.wait_phase("DataUpload", name, timeout=90)["status"]
    assert status["phase"] == "Failed"
    assert "Secret velero/no-such-secret does not exist" in status["message"]
    assert_cleaned_up(barge_env, objects, "DataUpload", name)


def test_an_operation_timeout_fails_the_upload_naming_what_it_waited_for(
    barge_env: LocalBarge, objects: KubeObjects, app_namespace: str, tmp_path: Path
) -> None:
    """The object store accepts connections and never answers: the agent hangs, the timeout does not."""
    with socket.create_server(("127.0.0.1", 0)) as silent:
        credentials = base64.b64encode(b"[default]\naws_access_key_id=a\naws_secret_access_key=b\n").decode()
        objects.create(
            SECRET,
            {
                "metadata": {"name": f"s3-{app_namespace}", "namespace": "velero"},
                "data": {"cloud": credentials},
            },
        )
        objects.create(
            BACKUP_STORAGE_LOCATION,
            {
                "metadata": {"name": f"silent-{app_namespace}", "namespace": "velero"},
                "spec": {
                    "provider": "aws",
                    "objectStorage": {"bucket": "b"},
                    "credential": {"name": f"s3-{app_namespace}", "key": "cloud"},
                    "config": {
                        "region": "us-east-1",
                        "s3Url": f"http://127.0.0.1:{silent.getsockname()[1]}",
                        "s3ForcePathStyle": "true",
                    },
                },
            },
        )
        volume = make_volume(tmp_path / "v", files=2)
        name = upload(
            barge_env,
            app_namespace,
            volume,
            operationTimeout="5s",
            backupStorageLocation=f"silent-{app_namespace}",
        )
        status = barge_env.wait_phase("DataUpload", name, timeout=120)["status"]
    assert status["phase"] == "Failed", status
    assert "timed out after 5s (operationTimeout) waiting for the agent on node" in status["message"]
    assert_cleaned_up(barge_env, objects, "DataUpload", name)
