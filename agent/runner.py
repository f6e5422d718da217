"""Running one assignment: find the exposed volume, move its bytes, publish status, report the result.

The runner owns no Kubernetes or gRPC code: it writes CR status through a ``StatusSink`` (fenced by
the assignment epoch, so a reassigned runner can never overwrite its successor) and returns an
``AssignmentResult`` that the agent forwards to the coordinator.

Who writes which terminal phase: for a DataUpload the runner writes Completed itself (snapshotID is
known here). For a DataDownload it writes only progress: the coordinator must first hand the
restored volume over to the target PVC, then it writes Completed. Failed and Canceled are written
here for both kinds, with a message that says what went wrong.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any, Protocol

import structlog

from barge.clock import Clock
from barge.control.messages import (
    Assignment,
    AssignmentKind,
    AssignmentResult,
    Outcome,
    VolumeMode,
)
from barge.control.naming import (
    ON_UNREADABLE_KEY,
    PARALLEL_FILES_DOWNLOAD_KEY,
    PARALLEL_FILES_UPLOAD_KEY,
    RESTORE_PRIVILEGED_KEY,
    Fence,
    data_mover_config_problem,
    kubelet_volume_path,
    parallel_files,
    restore_privileged,
    unreadable_policy,
    write_sparse_files,
)
from barge.errors import BargeError, Canceled, Fenced, InvalidInput, TemporaryError, one_line
from barge.fs.backup import BackupOptions, BackupResult, SourceUnreadable, backup_tree
from barge.fs.block import backup_device, restore_device
from barge.fs.privileged import Withheld
from barge.fs.progress import CancelToken
from barge.fs.restore import restore_tree
from barge.repo.repository import Repository
from barge.repo.snapshot import SnapshotKind

log = structlog.get_logger("barge.agent")

Mutation = Callable[[dict[str, Any]], dict[str, Any] | None]
TOLERATED_IN_NEW_VOLUMES = frozenset({"lost+found"})
SKIPPED_LISTED = 10  # skipped files named in the status; the count covers the rest
# status.nodeOS: Velero copies a DataUpload's into the DataDownload that restores it (spec.nodeOS)
# and its own mover writes "linux" or "windows". Barge's agent runs on Linux nodes only.
NODE_OS = "linux"


class StatusSink(Protocol):
    def update(self, assignment: Assignment, fence: Fence, mutate: Mutation) -> None:
        """Apply ``mutate`` to the CR's status; raises Fenced once this agent no longer owns it."""


class RepositoryOpener(Protocol):
    def open(self, assignment: Assignment) -> Repository:
        """The repository of the assignment's BackupStorageLocation and source namespace."""


class ProgressSink(Protocol):
    def __call__(self, assignment: Assignment, done: int, total: int) -> None: ...


@dataclass(frozen=True)
class RunnerSettings:
    node: str
    kubelet_root: Path
    status_interval_s: float = 5.0  # at most one progress write per CR per interval
    final_status_deadline_s: float = 3600.0  # keep retrying a terminal write while the API is down
    workers: int = 4


def timestamp(moment: datetime) -> str:
    return moment.strftime("%Y-%m-%dT%H:%M:%SZ")


class AssignmentRunner:
    """Runs one assignment to its end; ``cancel(hand_off)`` stops it from another thread."""

    def __init__(
        self,
        assignment: Assignment,
        settings: RunnerSettings,
        *,
        status: StatusSink,
        repositories: RepositoryOpener,
        progress: ProgressSink,
        clock: Clock,
        repository_error: Callable[[str], None] = lambda operation: None,
    ) -> None:
        self.assignment = assignment
        self.settings = settings
        self.fence = Fence(assignment.epoch, settings.node)
        self._status = status
        self._repositories = repositories
        self._report_progress = progress
        self._clock = clock
        self._repository_error = repository_error
        self._token = CancelToken()
        self._hand_off = False
        self._fenced: Fenced | None = None
        self._progress_lock = threading.Lock()
        self._progress_pending = threading.Event()  # a newer progress than the last one written
        self._publishing = threading.Event()  # cleared: the publisher thread ends
        self.bytes_done = 0
        self.bytes_total = 0

    def cancel(self, hand_off: bool) -> None:
        self._hand_off = hand_off
        self._token.cancel()

    @property
    def stopping(self) -> bool:
        """Asked to stop (or fenced): the data no longer moves for long."""
        return self._token.canceled

    def run(self) -> AssignmentResult:
        assignment = self.assignment
        with structlog.contextvars.bound_contextvars(
            namespace=assignment.cr.namespace,
            name=assignment.cr.name,
            kind=assignment.cr.kind,
            node=self.settings.node,
            epoch=assignment.epoch,
        ):
            try:
                return self._run()
            except Exception as err:  # a bug, or a limit hit: the assignment still ends, and says how
                log.error("assignment failed unexpectedly", exc_info=True)
                return self._finish_failed(one_line(err))

    def _run(self) -> AssignmentResult:
        publisher = threading.Thread(target=self._publish_progress, name="progress", daemon=True)
        try:
            if problem := data_mover_config_problem(self.assignment.data_mover_config):
                raise InvalidInput(problem)
            path = self.volume_path()
            self._write_status(self._in_progress)
            self._publishing.set()
            publisher.start()
            with self._counting_errors("open"):
                repo = self._repositories.open(self.assignment)
            if self.assignment.kind is AssignmentKind.UPLOAD:
                with self._counting_errors("backup"):
                    backed_up = self._upload(repo, path)
                return self._finish_upload(backed_up, path)
            with self._counting_errors("restore"):
                withheld = self._download(repo, path)
            return self._finish_download(path, withheld)
        except Fenced as err:
            return self._fenced_result(err)
        except Canceled:
            return self._fenced_result(self._fenced) if self._fenced else self._finish_canceled()
        except BargeError as err:
            return self._finish_failed(str(err))
        except OSError as err:
            where = f" ({os.fsdecode(err.filename)})" if err.filename else ""
            return self._finish_failed(f"{err.strerror or err}{where}")
        finally:
            self._publishing.clear()
            self._progress_pending.set()  # wake the publisher so that it sees the end

    def _fenced_result(self, err: Fenced) -> AssignmentResult:
        log.warning("assignment fenced: another agent owns it now", reason=str(err))
        return self._result(Outcome.HANDED_OFF, f"fenced: {err}")

    @contextmanager
    def _counting_errors(self, operation: str) -> Iterator[None]:
        """Count repository failures for the metrics; volume I/O errors (OSError) are not counted."""
        try:
            yield
        except (Canceled, Fenced):
            raise
        except BargeError:
            self._repository_error(operation)
            raise

    # -- the data ---------------------------------------------------------------------------------

    def volume_path(self) -> Path:
        """The kubelet's path of the exposer pod's volume on this node, symlinks resolved once."""
        a = self.assignment
        block = a.volume_mode is VolumeMode.BLOCK
        raw = Path(kubelet_volume_path(str(self.settings.kubelet_root), a.pod_uid, a.volume_name, block))
        if not raw.exists():
            raise TemporaryError(
                f"volume {a.volume_name} of pod {a.pod_uid} is not mounted at {raw} "
                f"on node {self.settings.node}"
            )
        return raw.resolve()

    def _upload(self, repo: Repository, path: Path) -> BackupResult:
        a = self.assignment
        identity = {"barge.io/source-namespace": a.source_namespace, "barge.io/source-pvc": a.source_pvc}
        tags = dict(a.tags) | identity
        block = a.volume_mode is VolumeMode.BLOCK
        policy = unreadable_policy(a.data_mover_config)
        parent = repo.latest_snapshot(SnapshotKind.BLOCK if block else SnapshotKind.FILESYSTEM, tags=identity)
        workers = self._workers(PARALLEL_FILES_UPLOAD_KEY)
        options = BackupOptions(workers=workers, on_unreadable=policy, parent=parent, tags=tags)
        backup = backup_device if block else backup_tree
        log.info("backup started", path=str(path), parent=parent, on_unreadable=policy, workers=workers)
        try:
            return backup(
                repo, path, options=options, progress=self._on_progress, cancel=self._token, clock=self._clock
            )
        except SourceUnreadable as err:
            raise SourceUnreadable(
                f"{_in_volume(str(err), path)}; set spec.dataMoverConfig {ON_UNREADABLE_KEY}: skip "
                "to back up the rest and list such files"
            ) from err

    def _download(self, repo: Repository, path: Path) -> Withheld | None:
        """Restore in the mode of the target PVC (never the snapshot's choice); for a filesystem,
        what was withheld of the privileges the snapshot records (None for a block volume)."""
        a = self.assignment
        if not a.snapshot_id:
            raise InvalidInput("the DataDownload has no spec.snapshotID; nothing to restore")
        block = a.volume_mode is VolumeMode.BLOCK
        _require_snapshot_kind(repo, a.snapshot_id, block)
        workers = self._workers(PARALLEL_FILES_DOWNLOAD_KEY)
        sparse = write_sparse_files(a.data_mover_config)
        privileged = restore_privileged(a.data_mover_config)
        log.info("restore started", path=str(path), snapshot=a.snapshot_id, workers=workers, sparse=sparse,
                 restore_privileged=privileged, volume_mode=a.volume_mode.value)  # fmt: skip
        if block:
            # A provisioned device may hold an earlier tenant's bytes: the snapshot's holes are
            # written as zeros whatever WriteSparseFiles says (on an image file they stay holes).
            # Forced: the exposed PVC is this DataDownload's own (the user's target is bound to it
            # only afterwards), and a restarted agent re-runs on the device it half wrote.
            device = restore_device(
                repo,
                a.snapshot_id,
                path,
                zero_fill=True,
                force=True,
                progress=self._on_progress,
                cancel=self._token,
                workers=workers,
                clock=self._clock,
            )
            if not device.target_was_blank:
                log.warning("the exposed device was not blank (data in its first or last MiB); "
                            "every byte of it was overwritten")  # fmt: skip
            return None
        result = restore_tree(
            repo,
            a.snapshot_id,
            path,
            progress=self._on_progress,
            cancel=self._token,
            workers=workers,
            clock=self._clock,
            tolerated=TOLERATED_IN_NEW_VOLUMES,
            sparse=sparse,
            restore_privileged=privileged,
        )
        if result.withheld:
            log.warning(
                "privileges in the snapshot not restored",
                withheld=result.withheld.summary(),
                examples=[w for w in result.warnings if w.startswith("withheld: ")],
                switch=RESTORE_PRIVILEGED_KEY,
            )
        return result.withheld

    def _workers(self, key: str) -> int:
        """The agent's workers per assignment, lowered to the bound the CR's ``key`` asks for."""
        bound = parallel_files(self.assignment.data_mover_config, key)
        return min(self.settings.workers, bound) if bound else self.settings.workers

    # -- progress and status ------------------------------------------------------------------------

    def _on_progress(self, done: int, total: int) -> None:
        """Called by the data path: only remembers the numbers; the publisher thread writes them."""
        with self._progress_lock:
            self.bytes_done, self.bytes_total = done, total
        self._progress_pending.set()
        self._report_progress(self.assignment, done, total)

    def _publish_progress(self) -> None:
        """Write the latest progress at most every status_interval_s, off the data path: while the
        API server is unreachable the data keeps moving, only the newest numbers wait, and the next
        successful write catches the status up."""
        while self._publishing.is_set():
            self._progress_pending.wait()
            self._progress_pending.clear()
            if not self._publishing.is_set():
                return
            with self._progress_lock:
                done, total = self.bytes_done, self.bytes_total
            if not self._try_progress_write(done, total):
                return
            self._publishing_pause()

    def _publishing_pause(self) -> None:
        """status_interval_s between writes, in short steps so that the end of the run is seen soon."""
        deadline = self._clock.monotonic() + self.settings.status_interval_s
        while self._publishing.is_set() and self._clock.monotonic() < deadline:
            self._clock.sleep(min(0.2, self.settings.status_interval_s))

    def _try_progress_write(self, done: int, total: int) -> bool:
        """Best effort; False once fenced (someone else owns the CR: the data path is stopped)."""
        try:
            self._status.update(self.assignment, self.fence, _progress_mutation(done, total))
        except Fenced as err:
            self._fenced = err
            self._token.cancel()
            return False
        except TemporaryError as err:
            log.warning("progress not written; the data keeps moving, status will catch up", error=str(err))
            self._progress_pending.set()  # retry with the newest numbers after the pause
        return True

    def _in_progress(self, status: dict[str, Any]) -> dict[str, Any] | None:
        if status.get("phase") == "InProgress":
            return None
        return {
            **status,
            "phase": "InProgress",
            "node": self.settings.node,
            "nodeOS": NODE_OS,
            "startTimestamp": status.get("startTimestamp") or timestamp(self._clock.now()),
        }

    def _write_status(self, mutate: Mutation) -> None:
        """A phase write: retried while the API server is unreachable, for a bounded time."""
        deadline = self._clock.monotonic() + self.settings.final_status_deadline_s
        delay = 0.5
        while True:
            try:
                self._status.update(self.assignment, self.fence, mutate)
                return
            except TemporaryError as err:
                if self._clock.monotonic() + delay > deadline:
                    raise
                log.warning("status write failed; retrying", error=str(err), retry_in_s=delay)
                self._clock.sleep(delay)
                delay = min(delay * 2, 30.0)

    # -- endings --------------------------------------------------------------------------------

    def _finish_upload(self, result: BackupResult, path: Path) -> AssignmentResult:
        message = "" if result.bytes_total else "the volume is empty; an empty snapshot was stored"
        skipped = [_in_volume(entry, path) for entry in result.skipped]
        if skipped:
            message = _skipped_message(skipped)
            log.warning("unreadable files skipped", count=len(skipped), files=skipped[:SKIPPED_LISTED])
        result_map = _result_map(result, skipped)
        fields = {
            "phase": "Completed",
            "snapshotID": result.snapshot_id,
            "path": str(path),
            "progress": {"totalBytes": result.bytes_total, "bytesDone": result.bytes_total},
            "completionTimestamp": timestamp(self._clock.now()),
            "incrementalBytes": result.bytes_new,
            "snapshotSize": result.bytes_total,
            "dataMoverResult": result_map,
            "message": message,
        }
        self._write_status(lambda status: {**status, **fields})
        log.info(
            "backup completed",
            snapshot=result.snapshot_id,
            bytes_total=result.bytes_total,
            bytes_new=result.bytes_new,
            seconds=round(result.duration_s, 3),
        )
        return AssignmentResult(
            self.assignment.assignment_id,
            self.assignment.epoch,
            Outcome.COMPLETED,
            message,
            snapshot_id=result.snapshot_id,
            path=str(path),
            bytes_total=result.bytes_total,
            bytes_done=result.bytes_total,
            bytes_new=result.bytes_new,
            result=tuple(sorted(result_map.items())),
        )

    def _finish_download(self, path: Path, withheld: Withheld | None) -> AssignmentResult:
        """The coordinator writes Completed with this result's message (DataDownloads have no
        dataMoverResult in Velero's schema: the message is where what was withheld shows)."""
        total = max(self.bytes_total, self.bytes_done)
        self._write_status(_progress_mutation(total, total))
        log.info("restore written; the coordinator hands the volume over", bytes=total)
        message = _withheld_message(withheld) if withheld else ""
        return AssignmentResult(
            self.assignment.assignment_id,
            self.assignment.epoch,
            Outcome.COMPLETED,
            message,
            path=str(path),
            bytes_total=total,
            bytes_done=total,
        )

    def _finish_canceled(self) -> AssignmentResult:
        if self._hand_off:
            log.info("stopped for hand-off; uploaded data stays in the repository for reuse")
            return self._result(Outcome.HANDED_OFF, "stopped for hand-off to another node")
        self._write_final("Canceled", "canceled on request")
        return self._result(Outcome.CANCELED, "canceled on request")

    def _finish_failed(self, message: str) -> AssignmentResult:
        verb = "backup" if self.assignment.kind is AssignmentKind.UPLOAD else "restore"
        text = f"{verb} failed on node {self.settings.node}: {message}"
        log.error("assignment failed", error=message)
        self._write_final("Failed", text)
        return self._result(Outcome.FAILED, text)

    def _write_final(self, phase: str, message: str) -> None:
        stamp = timestamp(self._clock.now())
        try:
            self._write_status(
                lambda status: {**status, "phase": phase, "message": message, "completionTimestamp": stamp}
            )
        except Fenced:
            log.warning("not writing final status: fenced")
        except TemporaryError as err:
            log.error("final status could not be written; the coordinator will resolve it", error=str(err))
        except Exception:  # the result must still reach the coordinator
            log.error("final status could not be written; the coordinator will resolve it", exc_info=True)

    def _result(self, outcome: Outcome, message: str) -> AssignmentResult:
        return AssignmentResult(
            self.assignment.assignment_id,
            self.assignment.epoch,
            outcome,
            message,
            bytes_total=self.bytes_total,
            bytes_done=self.bytes_done,
        )


def _progress_mutation(done: int, total: int) -> Mutation:
    """Progress only while InProgress: a late write never touches a finished CR's numbers."""

    def mutate(status: dict[str, Any]) -> dict[str, Any] | None:
        progress = {"totalBytes": total, "bytesDone": done}
        if status.get("progress") == progress or status.get("phase") != "InProgress":
            return None
        return {**status, "progress": progress}

    return mutate


def _in_volume(text: str, volume: Path) -> str:
    """Paths inside the volume as the application sees them (``/dir/file``), not the kubelet's."""
    return text.replace(str(volume), "", 1) if str(volume) != "/" else text


def _skipped_message(skipped: list[str]) -> str:
    listed = "; ".join(skipped[:SKIPPED_LISTED])
    more = f"; and {len(skipped) - SKIPPED_LISTED} more" if len(skipped) > SKIPPED_LISTED else ""
    return (
        f"completed with {len(skipped)} unreadable file(s) skipped "
        f"({ON_UNREADABLE_KEY}: skip): {listed}{more}"
    )


def _require_snapshot_kind(repo: Repository, snapshot_id: str, block: bool) -> None:
    """The target PVC's volumeMode, which Velero copied from the user's PVC, decides the mode; a
    snapshot of the other kind fails before anything is written."""
    kind = repo.load_snapshot(snapshot_id).kind
    if kind is (SnapshotKind.BLOCK if block else SnapshotKind.FILESYSTEM):
        return
    mode, needed = ("Block", "Filesystem") if block else ("Filesystem", "Block")
    what = "a filesystem" if kind is SnapshotKind.FILESYSTEM else "a block device image"
    raise InvalidInput(
        f"the target PVC has volumeMode {mode} but snapshot {snapshot_id[:16]} holds {what}; "
        f"restore it into a PVC with volumeMode {needed}"
    )


def _withheld_message(withheld: Withheld) -> str:
    return (
        f"restored without the privileges the snapshot records: {withheld.summary()} "
        f'(set spec.dataMoverConfig {RESTORE_PRIVILEGED_KEY}: "true" to restore them)'
    )


def _result_map(result: BackupResult, skipped: list[str]) -> dict[str, str]:
    """``dataMoverResult``: strings only (Velero's schema); what an operator wants to see."""
    extra = {"barge.io/skipped-files": "\n".join(skipped[:SKIPPED_LISTED])} if skipped else {}
    return extra | {
        "barge.io/bytes-total": str(result.bytes_total),
        "barge.io/bytes-new": str(result.bytes_new),
        "barge.io/bytes-stored": str(result.bytes_stored),
        "barge.io/files": str(result.files),
        "barge.io/files-unchanged": str(result.files_unchanged),
        "barge.io/skipped": str(len(result.skipped)),
    }
