"""The agent's assignment runner on a local repository, with an in-memory status sink.

The sink stands in for the fenced Kubernetes status writer (tested against the real API server in
tests/integration); here it records writes and can refuse them like the real one.
"""

from __future__ import annotations

import os
import stat
import threading
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest
import structlog

from agent import runner as runner_module
from agent.agent import Agent
from agent.metrics import AgentMetrics
from agent.runner import AssignmentRunner, Mutation, RunnerSettings
from barge.clock import ManualClock
from barge.control.messages import (
    Assignment,
    AssignmentKind,
    AssignmentResult,
    CancelAssignment,
    CrRef,
    Outcome,
    ProgressReport,
    VolumeMode,
)
from barge.control.naming import Fence, kubelet_volume_path
from barge.errors import Fenced, TemporaryError
from barge.fs.backup import BackupOptions
from barge.fs.block import backup_device
from barge.fs.restore import restore_tree
from barge.repo.crypto import KdfParams
from barge.repo.repository import Repository
from barge.storage.local import LocalDirectoryStore
from devenv.trees import capture
from tests.capabilities import unreadable_file, without_file_read_override
from tests.fsbuild import MIB, privileged_volume, write

PASSWORD = b"runner-test"


class MemoryStatus:
    def __init__(self) -> None:
        self.status: dict[str, Any] = {}
        self.writes: list[dict[str, Any]] = []
        self.fence_epoch = 1
        self.failures_left = 0
        self.lock = threading.Lock()

    def update(self, assignment: Assignment, fence: Fence, mutate: Mutation) -> None:
        with self.lock:
            if self.failures_left:
                self.failures_left -= 1
                raise TemporaryError("API server unavailable")
            if fence.epoch != self.fence_epoch:
                raise Fenced(f"epoch {fence.epoch} is stale")
            new = mutate(dict(self.status))
            if new is not None:
                self.status = new
                self.writes.append(new)


class Repos:
    def __init__(self, repo: Repository) -> None:
        self.repo = repo

    def open(self, assignment: Assignment) -> Repository:
        return self.repo


@pytest.fixture
def repo(tmp_path: Path) -> Repository:
    return Repository.init(LocalDirectoryStore(tmp_path / "repo"), PASSWORD, kdf=KdfParams.for_tests())


def exposed_volume(kubelet: Path, pod_uid: str, pv: str, data: Path) -> None:
    mount = Path(kubelet_volume_path(str(kubelet), pod_uid, pv, block=False))
    mount.parent.mkdir(parents=True)
    mount.symlink_to(data)


def assignment(
    kind: AssignmentKind = AssignmentKind.UPLOAD, snapshot_id: str = "", epoch: int = 1
) -> Assignment:
    cr = CrRef(
        "DataUpload" if kind is AssignmentKind.UPLOAD else "DataDownload", "velero", "nightly-x", "uid-1"
    )
    return Assignment("uid-1", epoch, kind, cr, "pod-1", "pv-1", VolumeMode.FILESYSTEM, "default", "shop",
                      snapshot_id=snapshot_id, source_pvc="data-0")  # fmt: skip


def runner(tmp_path: Path, a: Assignment, status: MemoryStatus, repo: Repository) -> AssignmentRunner:
    settings = RunnerSettings(node="node-a", kubelet_root=tmp_path / "kubelet", status_interval_s=0.0)
    return AssignmentRunner(a, settings, status=status, repositories=Repos(repo),
                            progress=lambda *_: None, clock=ManualClock())  # fmt: skip


def test_upload_completes_with_what_velero_reads(tmp_path: Path, repo: Repository) -> None:
    data = tmp_path / "volume"
    write(data / "a.bin", os.urandom(200_000))
    write(data / "dir" / "b.txt", b"hello")
    exposed_volume(tmp_path / "kubelet", "pod-1", "pv-1", data)
    status = MemoryStatus()
    result = runner(tmp_path, assignment(), status, repo).run()
    assert result.outcome is Outcome.COMPLETED
    final = status.status
    assert final["phase"] == "Completed"
    assert final["snapshotID"] == result.snapshot_id
    assert final["progress"] == {"totalBytes": 200_005, "bytesDone": 200_005}
    assert final["path"] == str(data)
    assert final["node"] == "node-a"
    assert final["nodeOS"] == "linux"  # Velero copies it into the restore's DataDownload spec.nodeOS
    assert final["startTimestamp"]
    assert final["completionTimestamp"]
    assert final["dataMoverResult"]["barge.io/files"] == "2"
    assert status.writes[0]["phase"] == "InProgress"
    assert repo.load_snapshot(result.snapshot_id).tags["barge.io/source-pvc"] == "data-0"


def test_second_upload_uses_the_previous_snapshot_as_parent(tmp_path: Path, repo: Repository) -> None:
    data = tmp_path / "volume"
    write(data / "a.bin", os.urandom(100_000))
    exposed_volume(tmp_path / "kubelet", "pod-1", "pv-1", data)
    first = runner(tmp_path, assignment(), MemoryStatus(), repo).run()
    status = MemoryStatus()
    second = runner(tmp_path, assignment(), status, repo).run()
    assert repo.load_snapshot(second.snapshot_id).parent == first.snapshot_id
    assert status.status["dataMoverResult"]["barge.io/files-unchanged"] == "1"
    assert second.bytes_new == 0


def test_empty_volume_completes_with_a_message(tmp_path: Path, repo: Repository) -> None:
    (tmp_path / "volume").mkdir()
    exposed_volume(tmp_path / "kubelet", "pod-1", "pv-1", tmp_path / "volume")
    status = MemoryStatus()
    assert runner(tmp_path, assignment(), status, repo).run().outcome is Outcome.COMPLETED
    assert "empty" in status.status["message"]


def test_download_restores_into_a_fresh_volume_and_leaves_completion_to_the_coordinator(
    tmp_path: Path, repo: Repository
) -> None:
    source = tmp_path / "volume"
    write(source / "x" / "y.bin", os.urandom(50_000))
    exposed_volume(tmp_path / "kubelet", "pod-1", "pv-1", source)
    uploaded = runner(tmp_path, assignment(), MemoryStatus(), repo).run()
    target = tmp_path / "new-volume"
    (target / "lost+found").mkdir(parents=True)
    exposed_volume(tmp_path / "kubelet2", "pod-1", "pv-1", target)
    status = MemoryStatus()
    settings = RunnerSettings(node="node-a", kubelet_root=tmp_path / "kubelet2", status_interval_s=0.0)
    download = assignment(AssignmentKind.DOWNLOAD, uploaded.snapshot_id)
    result = AssignmentRunner(download, settings, status=status, repositories=Repos(repo),
                              progress=lambda *_: None, clock=ManualClock()).run()  # fmt: skip
    assert result.outcome is Outcome.COMPLETED
    assert status.status["phase"] == "InProgress"
    assert status.writes[0]["nodeOS"] == "linux"
    assert status.status["progress"] == {"totalBytes": 50_000, "bytesDone": 50_000}
    restored = capture(target)
    del restored[b"lost+found"]
    assert restored == capture(source)


def restore_through_runner(
    tmp_path: Path, repo: Repository, source: Path, config: tuple[tuple[str, str], ...]
) -> tuple[AssignmentResult, MemoryStatus, Path]:
    """Back ``source`` up and restore it into a fresh volume with this dataMoverConfig."""
    exposed_volume(tmp_path / "kubelet", "pod-1", "pv-1", source)
    uploaded = runner(tmp_path, assignment(), MemoryStatus(), repo).run()
    target = tmp_path / "new-volume"
    target.mkdir()
    exposed_volume(tmp_path / "kubelet2", "pod-1", "pv-1", target)
    status = MemoryStatus()
    settings = RunnerSettings(node="node-a", kubelet_root=tmp_path / "kubelet2", status_interval_s=0.0)
    download = replace(assignment(AssignmentKind.DOWNLOAD, uploaded.snapshot_id), data_mover_config=config)
    result = AssignmentRunner(download, settings, status=status, repositories=Repos(repo),
                              progress=lambda *_: None, clock=ManualClock()).run()  # fmt: skip
    return result, status, target


@pytest.mark.parametrize(("value", "max_allocated"), [("false", None), ("True", 320 * 1024)])
def test_write_sparse_files_decides_whether_zero_data_is_restored_as_holes(
    tmp_path: Path, repo: Repository, value: str, max_allocated: int | None
) -> None:
    """Velero sets WriteSparseFiles on every DataDownload ("false" unless the restore asks)."""
    data = os.urandom(256 * 1024) + bytes(2 * 1024 * 1024)
    source = tmp_path / "volume"
    write(source / "zeros.bin", data)
    result, _, target = restore_through_runner(tmp_path, repo, source, (("WriteSparseFiles", value),))
    assert result.outcome is Outcome.COMPLETED
    restored = target / "zeros.bin"
    assert restored.read_bytes() == data
    allocated = restored.stat().st_blocks * 512
    if max_allocated is None:
        assert allocated >= len(data)  # the zeros were data in the source: they stay data
    else:
        assert allocated < max_allocated


@pytest.mark.parametrize(
    ("key", "value", "message"),
    [
        ("WriteSparseFiles", "yes", "spec.dataMoverConfig WriteSparseFiles='yes': use 'true' or 'false'"),
        ("ParallelFilesDownload", "0", "ParallelFilesDownload='0': use a positive whole number"),
        ("ParallelFilesDownload", "two", "ParallelFilesDownload='two': use a positive whole number"),
        ("barge.io/restore-privileged", "yes", "barge.io/restore-privileged='yes': use 'true' or 'false'"),
    ],
)
def test_a_bad_restore_setting_fails_the_download_naming_the_key(
    tmp_path: Path, repo: Repository, key: str, value: str, message: str
) -> None:
    write(tmp_path / "volume" / "f", b"x")
    result, status, target = restore_through_runner(tmp_path, repo, tmp_path / "volume", ((key, value),))
    assert result.outcome is Outcome.FAILED
    assert status.status["phase"] == "Failed"
    assert status.status["message"].startswith("restore failed on node node-a: ")
    assert status.status["message"].endswith(message)
    assert list(target.iterdir()) == []  # nothing was written


def test_parallel_files_bound_the_workers_of_one_assignment(
    tmp_path: Path, repo: Repository, monkeypatch: pytest.MonkeyPatch
) -> None:
    """ParallelFilesUpload/-Download lower the agent's workers (4 here) for that assignment only."""
    seen: dict[str, int] = {}
    real_backup, real_restore = runner_module.backup_tree, runner_module.restore_tree

    def backup(*args: Any, options: BackupOptions, **kwargs: Any) -> Any:
        seen["upload"] = options.workers
        return real_backup(*args, options=options, **kwargs)

    def restore(*args: Any, workers: int, **kwargs: Any) -> Any:
        seen["download"] = workers
        return real_restore(*args, workers=workers, **kwargs)

    monkeypatch.setattr(runner_module, "backup_tree", backup)
    monkeypatch.setattr(runner_module, "restore_tree", restore)
    write(tmp_path / "volume" / "f", os.urandom(1000))
    exposed_volume(tmp_path / "kubelet", "pod-1", "pv-1", tmp_path / "volume")
    for bound, upload_workers in (("2", 2), ("64", 4)):
        upload = replace(assignment(), data_mover_config=(("ParallelFilesUpload", bound),))
        assert runner(tmp_path, upload, MemoryStatus(), repo).run().outcome is Outcome.COMPLETED
        assert seen["upload"] == upload_workers  # never above the agent's own setting
    bad = replace(assignment(), data_mover_config=(("ParallelFilesUpload", "-1"),))
    status = MemoryStatus()
    assert runner(tmp_path, bad, status, repo).run().outcome is Outcome.FAILED
    assert status.status["message"].endswith("ParallelFilesUpload='-1': use a positive whole number")
    result, _, _ = restore_through_runner(
        tmp_path / "restore", repo, tmp_path / "volume", (("ParallelFilesDownload", "1"),)
    )
    assert result.outcome is Outcome.COMPLETED
    assert seen["download"] == 1


def test_a_download_withholds_privileges_unless_the_data_download_asks_for_them(
    tmp_path: Path, repo: Repository
) -> None:
    """barge.io/restore-privileged (Barge's own key, off by default): device nodes, setuid/setgid
    bits and security/trusted xattrs of a tenant's volume come back only when asked; what was
    withheld reaches the DataDownload through the result's message."""
    assert os.geteuid() == 0, "builds device nodes and setuid-root files: run as root, as the agent does"
    source = privileged_volume(tmp_path / "volume")
    result, _, target = restore_through_runner(tmp_path, repo, source, ())
    assert result.outcome is Outcome.COMPLETED
    assert not os.path.lexists(target / "null")
    assert stat.S_IMODE(os.lstat(target / "bin" / "su").st_mode) == 0o755
    assert os.listxattr(target / "bin" / "ping") == ["user.note"]
    assert result.message == (
        "restored without the privileges the snapshot records: 2 device node(s) not created; "
        "2 file(s) restored without their setuid/setgid bits; 2 security.*/trusted.* extended "
        'attribute(s) not set (set spec.dataMoverConfig barge.io/restore-privileged: "true" to restore them)'
    )

    asked = (("barge.io/restore-privileged", "True"),)
    result, _, target = restore_through_runner(tmp_path / "asked", repo, source, asked)
    assert result.outcome is Outcome.COMPLETED
    assert result.message == ""
    assert capture(target) == capture(source)
    assert os.lstat(target / "null").st_rdev == os.lstat(source / "null").st_rdev


def block_volume(kubelet: Path, pod_uid: str, pv: str, device: Path) -> None:
    path = Path(kubelet_volume_path(str(kubelet), pod_uid, pv, block=True))
    path.parent.mkdir(parents=True)
    path.symlink_to(device)


def download(
    tmp_path: Path, kubelet: str, a: Assignment, repo: Repository
) -> tuple[AssignmentResult, MemoryStatus]:
    status = MemoryStatus()
    settings = RunnerSettings(node="node-a", kubelet_root=tmp_path / kubelet, status_interval_s=0.0)
    result = AssignmentRunner(a, settings, status=status, repositories=Repos(repo),
                              progress=lambda *_: None, clock=ManualClock()).run()  # fmt: skip
    return result, status


def test_the_target_pvcs_volume_mode_not_the_snapshot_decides_how_a_download_restores(
    tmp_path: Path, repo: Repository
) -> None:
    write(tmp_path / "volume" / "f", b"file data")
    exposed_volume(tmp_path / "kubelet", "pod-1", "pv-1", tmp_path / "volume")
    tree = runner(tmp_path, assignment(), MemoryStatus(), repo).run().snapshot_id
    with (tmp_path / "disk.img").open("wb") as disk:
        disk.truncate(4 * MIB)
        disk.seek(MIB)
        disk.write(os.urandom(MIB))
    image = backup_device(repo, tmp_path / "disk.img").snapshot_id

    device = tmp_path / "device.img"  # the exposed Block PVC, holding an earlier tenant's bytes
    device.write_bytes(b"\xee" * MIB)
    block_volume(tmp_path / "kubelet-block", "pod-1", "pv-1", device)
    block_pvc = replace(assignment(AssignmentKind.DOWNLOAD, tree), volume_mode=VolumeMode.BLOCK)
    result, status = download(tmp_path, "kubelet-block", block_pvc, repo)
    assert result.outcome is Outcome.FAILED
    assert status.status["message"] == (
        f"restore failed on node node-a: the target PVC has volumeMode Block but snapshot {tree[:16]} "
        "holds a filesystem; restore it into a PVC with volumeMode Filesystem"
    )
    assert device.read_bytes() == b"\xee" * MIB

    (tmp_path / "new-volume").mkdir()
    exposed_volume(tmp_path / "kubelet-fs", "pod-1", "pv-1", tmp_path / "new-volume")
    result, status = download(tmp_path, "kubelet-fs", assignment(AssignmentKind.DOWNLOAD, image), repo)
    assert result.outcome is Outcome.FAILED
    assert status.status["message"].endswith(
        f"the target PVC has volumeMode Filesystem but snapshot {image[:16]} holds a block device "
        "image; restore it into a PVC with volumeMode Block"
    )
    assert list((tmp_path / "new-volume").iterdir()) == []

    # The exposed PVC is this DataDownload's own: the agent overwrites whatever it held.
    block_pvc = replace(assignment(AssignmentKind.DOWNLOAD, image), volume_mode=VolumeMode.BLOCK)
    result, _ = download(tmp_path, "kubelet-block", block_pvc, repo)
    assert result.outcome is Outcome.COMPLETED
    assert device.read_bytes() == (tmp_path / "disk.img").read_bytes()


def test_missing_volume_fails_with_the_path(tmp_path: Path, repo: Repository) -> None:
    status = MemoryStatus()
    result = runner(tmp_path, assignment(), status, repo).run()
    assert result.outcome is Outcome.FAILED
    assert status.status["phase"] == "Failed"
    assert "is not mounted at" in status.status["message"]
    assert "node node-a" in status.status["message"]


def unreadable_volume(tmp_path: Path) -> Path:
    """A volume whose ``locked/secret.bin`` the kernel refuses to an agent without DAC override."""
    data = tmp_path / "volume"
    write(data / "a.bin", os.urandom(100_000))
    write(data / "locked" / "secret.bin", os.urandom(1000))
    write(data / "z.txt", b"after the unreadable file")
    unreadable_file(data / "locked" / "secret.bin")
    exposed_volume(tmp_path / "kubelet", "pod-1", "pv-1", data)
    return data


def test_an_unreadable_file_fails_the_upload_by_default_naming_it_and_the_switch(
    tmp_path: Path, repo: Repository
) -> None:
    unreadable_volume(tmp_path)
    status = MemoryStatus()
    result = without_file_read_override(runner(tmp_path, assignment(), status, repo).run)
    assert result.outcome is Outcome.FAILED
    assert status.status["phase"] == "Failed"
    message = status.status["message"]
    assert message.startswith(
        "backup failed on node node-a: cannot read /locked/secret.bin: Permission denied"
    )
    assert "set spec.dataMoverConfig barge.io/on-unreadable: skip" in message
    assert str(tmp_path) not in message  # paths as the application sees them, not the kubelet's


def test_an_unreadable_file_is_skipped_and_reported_when_asked(tmp_path: Path, repo: Repository) -> None:
    unreadable_volume(tmp_path)
    status = MemoryStatus()
    skip = replace(assignment(), data_mover_config=(("barge.io/on-unreadable", "skip"),))
    result = without_file_read_override(runner(tmp_path, skip, status, repo).run)
    assert result.outcome is Outcome.COMPLETED
    final = status.status
    assert final["phase"] == "Completed"
    assert final["message"] == (
        "completed with 1 unreadable file(s) skipped (barge.io/on-unreadable: skip): "
        "/locked/secret.bin: Permission denied"
    )
    assert final["dataMoverResult"]["barge.io/skipped"] == "1"
    assert final["dataMoverResult"]["barge.io/skipped-files"] == "/locked/secret.bin: Permission denied"
    assert dict(result.result)["barge.io/skipped"] == "1"
    restored = tmp_path / "restored"
    restore_tree(repo, result.snapshot_id, restored)
    assert (restored / "z.txt").read_bytes() == b"after the unreadable file"  # the rest is there
    assert not (restored / "locked" / "secret.bin").exists()


def test_an_unknown_unreadable_policy_fails_saying_what_to_write(tmp_path: Path, repo: Repository) -> None:
    unreadable_volume(tmp_path)
    status = MemoryStatus()
    odd = replace(assignment(), data_mover_config=(("barge.io/on-unreadable", "ignore"),))
    assert runner(tmp_path, odd, status, repo).run().outcome is Outcome.FAILED
    assert status.status["message"].endswith(
        "spec.dataMoverConfig barge.io/on-unreadable='ignore': use 'fail' or 'skip'"
    )


class ManifestRefusingStore(LocalDirectoryStore):
    """A store that dies exactly when the snapshot manifest (the last object) is written."""

    def put(self, key: str, data: bytes | memoryview, *, overwrite: bool = False) -> None:
        if key.startswith("snapshots/"):
            raise TemporaryError(f"put {key}: object store error after retries: 503 SlowDown")
        super().put(key, data, overwrite=overwrite)


def test_a_snapshot_whose_manifest_was_not_written_is_never_reported_completed(tmp_path: Path) -> None:
    store = ManifestRefusingStore(tmp_path / "repo")
    repo = Repository.init(store, PASSWORD, kdf=KdfParams.for_tests())
    write(tmp_path / "volume" / "f.bin", os.urandom(500_000))
    exposed_volume(tmp_path / "kubelet", "pod-1", "pv-1", tmp_path / "volume")
    status = MemoryStatus()
    result = runner(tmp_path, assignment(), status, repo).run()
    assert result.outcome is Outcome.FAILED
    assert result.snapshot_id == ""
    assert status.status["phase"] == "Failed"
    assert "snapshotID" not in status.status
    assert "503 SlowDown" in status.status["message"]
    assert repo.snapshot_ids() == []  # the data packs are there (reused next time), no snapshot


def test_a_failing_repository_disk_fails_the_upload_even_when_unreadable_files_are_skipped(
    tmp_path: Path,
) -> None:
    """A store write error is not a source read error: skip-and-report must not hide a full disk."""
    repo = Repository.init(LocalDirectoryStore(tmp_path / "repo"), PASSWORD, kdf=KdfParams.for_tests())
    tmp_dir = tmp_path / "repo" / ".tmp"
    tmp_dir.rmdir()
    tmp_dir.write_bytes(b"")  # every object write now fails with an OSError
    write(tmp_path / "volume" / "f.bin", os.urandom(500_000))
    exposed_volume(tmp_path / "kubelet", "pod-1", "pv-1", tmp_path / "volume")
    status = MemoryStatus()
    skip = replace(assignment(), data_mover_config=(("barge.io/on-unreadable", "skip"),))
    result = runner(tmp_path, skip, status, repo).run()
    assert result.outcome is Outcome.FAILED
    assert "cannot store" in status.status["message"]
    assert "skipped" not in status.status["message"]


def test_a_fenced_runner_stops_without_writing(tmp_path: Path, repo: Repository) -> None:
    write(tmp_path / "volume" / "f", b"x")
    exposed_volume(tmp_path / "kubelet", "pod-1", "pv-1", tmp_path / "volume")
    status = MemoryStatus()
    status.fence_epoch = 2  # the coordinator reassigned: epoch 1 is stale
    result = runner(tmp_path, assignment(epoch=1), status, repo).run()
    assert result.outcome is Outcome.HANDED_OFF
    assert status.writes == []


def test_status_writes_survive_a_short_api_outage(tmp_path: Path, repo: Repository) -> None:
    write(tmp_path / "volume" / "f", b"x" * 1000)
    exposed_volume(tmp_path / "kubelet", "pod-1", "pv-1", tmp_path / "volume")
    status = MemoryStatus()
    status.failures_left = 3
    result = runner(tmp_path, assignment(), status, repo).run()
    assert result.outcome is Outcome.COMPLETED
    assert status.status["phase"] == "Completed"


class HangingStatus(MemoryStatus):
    """An API server that stops answering once the CR is InProgress, until ``release`` is set."""

    def __init__(self) -> None:
        super().__init__()
        self.release = threading.Event()
        self.hung = threading.Event()

    def update(self, assignment: Assignment, fence: Fence, mutate: Mutation) -> None:
        if self.status.get("phase") == "InProgress" and not self.release.is_set():
            self.hung.set()
            self.release.wait(30)
        super().update(assignment, fence, mutate)


def test_data_keeps_moving_while_status_writes_hang_and_status_catches_up(
    tmp_path: Path, repo: Repository
) -> None:
    write(tmp_path / "volume" / "big.bin", os.urandom(3_000_000))
    exposed_volume(tmp_path / "kubelet", "pod-1", "pv-1", tmp_path / "volume")
    status = HangingStatus()
    job = runner(tmp_path, assignment(), status, repo)
    results: list[AssignmentResult] = []
    worker = threading.Thread(target=lambda: results.append(job.run()))
    worker.start()
    deadline = time.monotonic() + 20
    while not (status.hung.is_set() and job.bytes_total and job.bytes_done == job.bytes_total):
        assert time.monotonic() < deadline, "the data path stalled behind the hung status write"
        time.sleep(0.01)
    assert not results  # all bytes read while the API was down; the final write waits for it
    status.release.set()
    worker.join(30)
    assert results[0].outcome is Outcome.COMPLETED
    assert status.status["phase"] == "Completed"
    assert status.status["progress"] == {"totalBytes": 3_000_000, "bytesDone": 3_000_000}


def test_cancel_writes_canceled_and_hand_off_writes_nothing(tmp_path: Path, repo: Repository) -> None:
    write(tmp_path / "volume" / "f", os.urandom(10_000))
    exposed_volume(tmp_path / "kubelet", "pod-1", "pv-1", tmp_path / "volume")
    for hand_off, outcome, phase in (
        (False, Outcome.CANCELED, "Canceled"),
        (True, Outcome.HANDED_OFF, "InProgress"),
    ):
        status = MemoryStatus()
        job = runner(tmp_path, assignment(), status, repo)
        job.cancel(hand_off=hand_off)  # canceled before the first chunk: the backup stops at once
        assert job.run().outcome is outcome
        assert status.status["phase"] == phase


def test_agent_runs_assignments_once_reports_progress_and_results(tmp_path: Path, repo: Repository) -> None:
    write(tmp_path / "volume" / "f", os.urandom(300_000))
    exposed_volume(tmp_path / "kubelet", "pod-1", "pv-1", tmp_path / "volume")
    settings = RunnerSettings(node="node-a", kubelet_root=tmp_path / "kubelet")
    agent = Agent(settings, status=MemoryStatus(), repositories=Repos(repo), clock=ManualClock(),
                  metrics=AgentMetrics("node-a"), max_concurrent=1)  # fmt: skip
    sent: list[object] = []
    finished = threading.Event()

    def send(event: object) -> None:
        sent.append(event)
        if isinstance(event, AssignmentResult):
            finished.set()

    agent.send = send
    agent.handle(assignment())
    agent.handle(assignment())  # a replay: ignored
    assert finished.wait(30)
    results = [e for e in sent if isinstance(e, AssignmentResult)]
    assert [r.outcome for r in results] == [Outcome.COMPLETED]
    assert any(isinstance(e, ProgressReport) and e.bytes_done == 300_000 for e in sent)
    assert agent.running() == ()
    agent.handle(CancelAssignment("uid-1", 1, "late"))  # for a finished assignment: harmless
    value = agent._metrics.registry.get_sample_value(
        "barge_agent_data_upload_success_total", {"node": "node-a"}
    )
    assert value == 1.0


def test_repository_failures_are_counted_by_operation_and_volume_errors_are_not(
    tmp_path: Path, repo: Repository
) -> None:
    metrics = AgentMetrics("node-a")
    exposed_volume(tmp_path / "kubelet", "pod-1", "pv-1", tmp_path / "target")
    (tmp_path / "target").mkdir()
    settings = RunnerSettings(node="node-a", kubelet_root=tmp_path / "kubelet", status_interval_s=0.0)
    download = assignment(AssignmentKind.DOWNLOAD, "ab" * 32)  # a snapshot the repository lacks
    result = AssignmentRunner(download, settings, status=MemoryStatus(), repositories=Repos(repo),
                              progress=lambda *_: None, clock=ManualClock(),
                              repository_error=metrics.repository_error).run()  # fmt: skip
    assert result.outcome is Outcome.FAILED
    errors = "barge_agent_repository_errors_total"
    assert metrics.registry.get_sample_value(errors, {"operation": "restore"}) == 1.0
    assert metrics.registry.get_sample_value(errors, {"operation": "open"}) == 0.0
    missing = runner(tmp_path / "elsewhere", assignment(), MemoryStatus(), repo).run()  # no volume
    assert missing.outcome is Outcome.FAILED
    assert metrics.registry.get_sample_value(errors, {"operation": "backup"}) == 0.0


@pytest.mark.parametrize(
    "error",
    [RecursionError("maximum recursion depth exceeded"), ValueError("a bug\nover two lines")],
    ids=["RecursionError", "ValueError"],
)
def test_an_unexpected_error_fails_the_assignment_in_one_line_and_frees_the_slot(
    tmp_path: Path, repo: Repository, monkeypatch: pytest.MonkeyPatch, error: Exception
) -> None:
    write(tmp_path / "volume" / "f", b"data")
    exposed_volume(tmp_path / "kubelet", "pod-1", "pv-1", tmp_path / "volume")

    def broken_backup(*args: object, **kwargs: object) -> None:
        raise error

    monkeypatch.setattr(runner_module, "backup_tree", broken_backup)
    status = MemoryStatus()
    settings = RunnerSettings(node="node-a", kubelet_root=tmp_path / "kubelet", status_interval_s=0.0)
    agent = Agent(settings, status=status, repositories=Repos(repo), clock=ManualClock(),
                  metrics=AgentMetrics("node-a"), max_concurrent=1)  # fmt: skip
    results: list[AssignmentResult] = []
    finished = threading.Semaphore(0)

    def send(event: object) -> None:
        if isinstance(event, AssignmentResult):
            results.append(event)
            finished.release()

    agent.send = send
    with structlog.testing.capture_logs() as logs:
        agent.handle(assignment())
        assert finished.acquire(timeout=30)
    one_line = " ".join(str(error).split())
    expected = f"backup failed on node node-a: {type(error).__name__}: {one_line}"
    assert (results[0].outcome, results[0].message) == (Outcome.FAILED, expected)
    assert (status.status["phase"], status.status["message"]) == ("Failed", expected)
    assert any(entry.get("exc_info") for entry in logs)  # the traceback goes to the log only
    assert agent.running() == ()
    monkeypatch.undo()
    agent.handle(replace(assignment(), assignment_id="uid-2"))  # the slot is free again
    assert finished.acquire(timeout=30)
    assert results[1].outcome is Outcome.COMPLETED


class BrokenStatus(MemoryStatus):
    """A status sink with a bug: every write raises something no one expected."""

    def update(self, assignment: Assignment, fence: Fence, mutate: Mutation) -> None:
        raise KeyError("status")


def test_an_assignment_whose_status_writes_fail_unexpectedly_still_reports_failed(
    tmp_path: Path, repo: Repository
) -> None:
    write(tmp_path / "volume" / "f", b"data")
    exposed_volume(tmp_path / "kubelet", "pod-1", "pv-1", tmp_path / "volume")
    result = runner(tmp_path, assignment(), BrokenStatus(), repo).run()
    assert result.outcome is Outcome.FAILED
    assert result.message == "backup failed on node node-a: KeyError: 'status'"


def test_the_agent_reports_and_frees_the_slot_even_if_a_runner_itself_fails(
    tmp_path: Path, repo: Repository, monkeypatch: pytest.MonkeyPatch
) -> None:
    def broken_run(self: AssignmentRunner) -> AssignmentResult:
        raise RuntimeError("runner bug")

    monkeypatch.setattr(AssignmentRunner, "run", broken_run)
    settings = RunnerSettings(node="node-a", kubelet_root=tmp_path / "kubelet")
    agent = Agent(settings, status=MemoryStatus(), repositories=Repos(repo), clock=ManualClock(),
                  metrics=AgentMetrics("node-a"), max_concurrent=1)  # fmt: skip
    results: list[AssignmentResult] = []
    finished = threading.Event()

    def send(event: object) -> None:
        if isinstance(event, AssignmentResult):
            results.append(event)
            finished.set()

    agent.send = send
    agent.handle(assignment())
    assert finished.wait(30)
    assert (results[0].outcome, results[0].message) == (Outcome.FAILED, "RuntimeError: runner bug")
    deadline = time.monotonic() + 10
    while agent.running():
        assert time.monotonic() < deadline, "the slot stayed taken"
        time.sleep(0.01)
