"""A fleet of simulated agents in one process: one authenticated gRPC stream per node, no data moved.

``python -m bench.scale_fleet ...`` (started by ``bench.scale``) opens, for every node, the same
stream the real agent opens: Barge's ``barge.rpc.client.AgentClient`` over TLS (the coordinator's
CA), the bearer token of a TokenRequest bound to that node's agent pod, ``Hello`` with the node
name. Each ``Assignment`` is handled the way ``agent.agent.Agent`` and ``agent.runner`` handle it
(replays ignored, capacity checked, a newer epoch replaces the older run, cancel honoured), and it
writes the CR's status exactly as the real runner does, fenced by the assignment epoch through
``barge.kube.status.StatusWriter``: InProgress (node, nodeOS, startTimestamp), progress (at once,
then every ``--status-interval`` s), and for a DataUpload Completed with a snapshot ID (64 hex),
path, progress, sizes and dataMoverResult; a DataDownload only gets its final progress, the
coordinator hands the restored volume over and completes it. Instead of moving data it waits
``--transfer-seconds`` and reports progress over the stream every second meanwhile.

It checks that the exposed volume is where the real agent would look (the simulated kubelet's
path under ``<sim root>/nodes/<node>/kubelet``), and fails the assignment as the agent would if not.

What it records (``--records``, JSON lines, one per assignment run; ``--summary`` at exit): when
each Assignment arrived, when InProgress was written, when the result was sent, and the gRPC
messages received and sent per assignment, plus Welcomes (with the coordinator's identity, for
failover), heartbeats and the most assignments a node ran at once.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import signal
import sys
import threading
import time
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import FrameType
from typing import Any

from barge import __version__
from barge.clock import SystemClock
from barge.control.messages import (
    AgentEvent,
    Assignment,
    AssignmentKind,
    AssignmentResult,
    CancelAssignment,
    CoordinatorCommand,
    Drain,
    Hello,
    Outcome,
    ProgressReport,
    RunningAssignment,
    VolumeMode,
    Welcome,
)
from barge.control.naming import Fence, data_mover_config_problem, kubelet_volume_path
from barge.errors import BargeError, Fenced, TemporaryError
from barge.kube.status import StatusWriter
from barge.rpc.client import AgentClient
from bench.scale_watch import bench_api_client
from devenv.service import Backend, LocalService

Obj = dict[str, Any]
NODE_OS = "linux"
VOLUME_BYTES = 1 << 20  # what each simulated volume "holds"


def timestamp(moment: float) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(moment))


def fake_snapshot_id(assignment_id: str) -> str:
    return hashlib.sha256(f"bench-scale/{assignment_id}".encode()).hexdigest()


class _Canceled(Exception):
    pass


@dataclass
class Job:
    assignment: Assignment
    received: float
    cancel: threading.Event = field(default_factory=threading.Event)
    hand_off: bool = False
    done: threading.Event = field(default_factory=threading.Event)
    final_written: bool = False  # a DataUpload's Completed is written: the coordinator may count it done
    bytes_done: int = 0
    bytes_total: int = VOLUME_BYTES


@dataclass(frozen=True)
class Settings:
    transfer_s: float
    status_interval_s: float
    progress_interval_s: float
    max_concurrent: int
    load_concurrency: int
    sim_root: Path


class Fleet:
    """What every fake agent shares: the status writer, the settings and the books."""

    def __init__(self, settings: Settings, status: StatusWriter, records: Path) -> None:
        self.settings = settings
        self.status = status
        self._records = records.open("a", buffering=1)
        self._lock = threading.Lock()
        self.received: Counter[str] = Counter()  # assignment id -> commands received for it
        self.sent: Counter[str] = Counter()  # assignment id -> events sent for it
        self.commands: Counter[str] = Counter()  # command type -> count
        self.events: Counter[str] = Counter()  # event type -> count
        self.welcomes: list[tuple[str, str, float]] = []  # (node, coordinator id, time)
        self.hellos_and_heartbeats = 0
        self.max_running: Counter[str] = Counter()
        self.over_capacity = 0  # assignments beyond loadConcurrency (the coordinator's limit)
        self.errors: list[str] = []
        self.streams = 0

    def record(self, entry: Obj) -> None:
        with self._lock:
            self._records.write(json.dumps(entry) + "\n")

    def count_command(self, command: CoordinatorCommand, assignment_id: str, node: str, at: float) -> None:
        with self._lock:
            self.commands[type(command).__name__] += 1
            if assignment_id:
                self.received[assignment_id] += 1
            if isinstance(command, Welcome):
                self.welcomes.append((node, command.coordinator_id, at))

    def count_event(self, event: AgentEvent, assignment_id: str) -> None:
        with self._lock:
            self.events[type(event).__name__] += 1
            if assignment_id:
                self.sent[assignment_id] += 1

    def count_running(self) -> None:
        with self._lock:
            self.hellos_and_heartbeats += 1

    def note_running(self, node: str, running: int) -> None:
        with self._lock:
            self.max_running[node] = max(self.max_running[node], running)
            if running > self.settings.load_concurrency:
                self.over_capacity += 1

    def error(self, message: str) -> None:
        with self._lock:
            if len(self.errors) < 200:
                self.errors.append(message)

    def summary(self) -> Obj:
        with self._lock:
            return {
                "streams": self.streams,
                "received_per_assignment": dict(self.received),
                "sent_per_assignment": dict(self.sent),
                "commands": dict(self.commands),
                "events": dict(self.events),
                "welcomes": self.welcomes,
                "hellos_and_heartbeats": self.hellos_and_heartbeats,
                "max_running": dict(self.max_running),
                "over_capacity": self.over_capacity,
                "errors": self.errors,
            }

    def close(self) -> None:
        self._records.close()


class FakeAgent:
    """One node's agent: ``barge.control.ports.CommandHandler`` for its ``AgentClient``."""

    def __init__(self, node: str, fleet: Fleet) -> None:
        self.node = node
        self.fleet = fleet
        self.settings = fleet.settings
        self.send: Callable[[AgentEvent], None] = lambda event: None
        self._jobs: dict[str, Job] = {}
        self._lock = threading.Lock()

    # -- what the client asks ---------------------------------------------------------------------

    def hello(self) -> Hello:
        return Hello(self.node, __version__, self.settings.max_concurrent, self.running())

    def running(self) -> tuple[RunningAssignment, ...]:
        self.fleet.count_running()
        with self._lock:
            jobs = [j for j in self._jobs.values() if not j.done.is_set()]
        return tuple(
            RunningAssignment(j.assignment.assignment_id, j.assignment.epoch, j.bytes_done, j.bytes_total)
            for j in jobs
        )

    def handle(self, command: CoordinatorCommand) -> None:
        now = time.time()
        assignment_id = command.assignment_id if isinstance(command, Assignment | CancelAssignment) else ""
        self.fleet.count_command(command, assignment_id, self.node, now)
        if isinstance(command, Assignment):
            self._assign(command, now)
        elif isinstance(command, CancelAssignment):
            with self._lock:
                job = self._jobs.get(command.assignment_id)
            if job is not None and job.assignment.epoch <= command.epoch:
                job.hand_off = command.hand_off
                job.cancel.set()
        elif isinstance(command, Drain):
            self.fleet.error(f"{self.node}: unexpected Drain: {command.reason}")

    def _emit(self, event: AgentEvent, assignment_id: str) -> None:
        self.fleet.count_event(event, assignment_id)
        self.send(event)

    # -- assignments (as agent.agent.Agent) -------------------------------------------------------

    def _assign(self, assignment: Assignment, received: float) -> None:
        with self._lock:
            current = self._jobs.get(assignment.assignment_id)
            if current and current.assignment.epoch >= assignment.epoch:
                return  # a replay, or an older epoch arriving late
            busy = sum(1 for j in self._jobs.values() if not j.done.is_set())
        if current:
            current.hand_off = True
            current.cancel.set()
            current.done.wait(timeout=30)
        elif busy >= self.settings.max_concurrent:
            self._emit(
                AssignmentResult(
                    assignment.assignment_id,
                    assignment.epoch,
                    Outcome.HANDED_OFF,
                    f"agent on {self.node} is at capacity ({busy})",
                ),
                assignment.assignment_id,
            )
            return
        job = Job(assignment, received)
        with self._lock:
            # What the coordinator could know was busy: not counting a job whose final status is
            # written (a DataUpload ends then for the coordinator, before its result is sent).
            running = 1 + sum(1 for j in self._jobs.values() if not j.done.is_set() and not j.final_written)
            self._jobs[assignment.assignment_id] = job
        self.fleet.note_running(self.node, running)
        threading.Thread(target=self._run, args=(job,), daemon=True, name=f"job-{assignment.cr.name}").start()

    def _run(self, job: Job) -> None:
        a = job.assignment
        entry: Obj = {
            "node": self.node,
            "kind": a.cr.kind,
            "namespace": a.cr.namespace,
            "name": a.cr.name,
            "id": a.assignment_id,
            "epoch": a.epoch,
            "received": job.received,
        }
        try:
            result = self._work(job, entry)
        except BaseException as err:  # never leave the coordinator without an answer
            self.fleet.error(f"{a.cr.name}: {type(err).__name__}: {err}")
            result = AssignmentResult(a.assignment_id, a.epoch, Outcome.FAILED, f"bench agent crashed: {err}")
        self._emit(result, a.assignment_id)
        entry.update(result_sent=time.time(), outcome=result.outcome.value, message=result.message)
        job.done.set()
        with self._lock:
            if self._jobs.get(a.assignment_id) is job:
                del self._jobs[a.assignment_id]
        self.fleet.record(entry)

    def _work(self, job: Job, entry: Obj) -> AssignmentResult:
        a = job.assignment
        fence = Fence(a.epoch, self.node)
        try:
            return self._move(job, fence, entry)
        except Fenced as err:
            return AssignmentResult(a.assignment_id, a.epoch, Outcome.HANDED_OFF, f"fenced: {err}")
        except _Canceled:
            if job.hand_off:
                return AssignmentResult(
                    a.assignment_id, a.epoch, Outcome.HANDED_OFF, "stopped for hand-off to another node"
                )
            self._final(a, fence, "Canceled", "canceled on request")
            return AssignmentResult(a.assignment_id, a.epoch, Outcome.CANCELED, "canceled on request")
        except BargeError as err:
            return self._fail(job, fence, str(err))

    def _move(self, job: Job, fence: Fence, entry: Obj) -> AssignmentResult:
        """What agent.runner does, minus the data: InProgress, progress, the ending."""
        a = job.assignment
        if problem := data_mover_config_problem(a.data_mover_config):
            return self._fail(job, fence, problem)
        path = self._volume_path(a)
        self._write(a, fence, self._in_progress)
        entry["in_progress"] = time.time()
        self._transfer(job, fence)
        if a.kind is AssignmentKind.UPLOAD:
            return self._complete_upload(job, fence, path, entry)
        self._write(a, fence, _progress(job.bytes_total, job.bytes_total))
        return AssignmentResult(
            a.assignment_id,
            a.epoch,
            Outcome.COMPLETED,
            path=str(path),
            bytes_total=job.bytes_total,
            bytes_done=job.bytes_total,
        )

    def _volume_path(self, a: Assignment) -> Path:
        block = a.volume_mode is VolumeMode.BLOCK
        root = self.settings.sim_root / "nodes" / self.node / "kubelet"
        raw = Path(kubelet_volume_path(str(root), a.pod_uid, a.volume_name, block))
        if not raw.exists():
            raise TemporaryError(
                f"volume {a.volume_name} of pod {a.pod_uid} is not mounted at {raw} on node {self.node}"
            )
        return raw.resolve()

    def _transfer(self, job: Job, fence: Fence) -> None:
        """The simulated data movement: progress over gRPC every second, status every interval."""
        a, s = job.assignment, self.settings
        started = time.monotonic()
        end = started + s.transfer_s
        next_progress = next_status = started
        while True:
            now = time.monotonic()
            job.bytes_done = min(
                job.bytes_total, int(job.bytes_total * (now - started) / max(s.transfer_s, 1e-9))
            )
            if now >= end:
                break
            if now >= next_progress:
                self._emit(
                    ProgressReport(a.assignment_id, a.epoch, job.bytes_done, job.bytes_total), a.assignment_id
                )
                next_progress = now + s.progress_interval_s
            if now >= next_status:
                self._write(a, fence, _progress(job.bytes_done, job.bytes_total))
                next_status = now + s.status_interval_s
            if job.cancel.wait(max(0.0, min(end, next_progress, next_status) - time.monotonic())):
                raise _Canceled
        job.bytes_done = job.bytes_total
        self._emit(
            ProgressReport(a.assignment_id, a.epoch, job.bytes_total, job.bytes_total), a.assignment_id
        )

    def _complete_upload(self, job: Job, fence: Fence, path: Path, entry: Obj) -> AssignmentResult:
        a = job.assignment
        snapshot_id = fake_snapshot_id(a.assignment_id)
        result_map = {
            "barge.io/bytes-total": str(job.bytes_total),
            "barge.io/bytes-new": str(job.bytes_total),
            "barge.io/bytes-stored": str(job.bytes_total // 2),
            "barge.io/files": "1",
            "barge.io/files-unchanged": "0",
            "barge.io/skipped": "0",
        }
        fields = {
            "phase": "Completed",
            "snapshotID": snapshot_id,
            "path": str(path),
            "progress": {"totalBytes": job.bytes_total, "bytesDone": job.bytes_total},
            "completionTimestamp": timestamp(time.time()),
            "incrementalBytes": job.bytes_total,
            "snapshotSize": job.bytes_total,
            "dataMoverResult": result_map,
            "message": "",
        }
        self._write(a, fence, lambda status: {**status, **fields})
        job.final_written = True
        entry["final_written"] = time.time()
        return AssignmentResult(
            a.assignment_id,
            a.epoch,
            Outcome.COMPLETED,
            snapshot_id=snapshot_id,
            path=str(path),
            bytes_total=job.bytes_total,
            bytes_done=job.bytes_total,
            bytes_new=job.bytes_total,
            result=tuple(sorted(result_map.items())),
        )

    def _fail(self, job: Job, fence: Fence, message: str) -> AssignmentResult:
        a = job.assignment
        verb = "backup" if a.kind is AssignmentKind.UPLOAD else "restore"
        text = f"{verb} failed on node {self.node}: {message}"
        self.fleet.error(f"{a.cr.name}: {text}")
        self._final(a, fence, "Failed", text)
        return AssignmentResult(a.assignment_id, a.epoch, Outcome.FAILED, text)

    def _final(self, a: Assignment, fence: Fence, phase: str, message: str) -> None:
        stamp = timestamp(time.time())
        try:
            self._write(
                a,
                fence,
                lambda status: {**status, "phase": phase, "message": message, "completionTimestamp": stamp},
            )
        except BargeError as err:
            self.fleet.error(f"{a.cr.name}: final status not written: {err}")

    def _in_progress(self, status: Obj) -> Obj | None:
        if status.get("phase") == "InProgress":
            return None
        return {
            **status,
            "phase": "InProgress",
            "node": self.node,
            "nodeOS": NODE_OS,
            "startTimestamp": status.get("startTimestamp") or timestamp(time.time()),
        }

    def _write(self, a: Assignment, fence: Fence, mutate: Callable[[Obj], Obj | None]) -> None:
        """A fenced status write, retried while the API server is unavailable (bounded)."""
        delay = 0.5
        for attempt in range(8):
            try:
                self.fleet.status.update_status(a.cr.kind, a.cr.namespace, a.cr.name, mutate, fence=fence)
                return
            except TemporaryError:
                if attempt == 7:
                    raise
                time.sleep(delay)
                delay = min(delay * 2, 5.0)


def _progress(done: int, total: int) -> Callable[[Obj], Obj | None]:
    """Progress only while InProgress (as agent.runner): a late write never touches a final CR."""

    def mutate(status: Obj) -> Obj | None:
        progress = {"totalBytes": total, "bytesDone": done}
        if status.get("progress") == progress or status.get("phase") != "InProgress":
            return None
        return {**status, "progress": progress}

    return mutate


def _token_reader(path: Path) -> Callable[[], str]:
    """Re-read on every connect, as the agent does (the kubelet rotates projected tokens)."""
    return lambda: path.read_text().strip()


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="bench.scale_fleet", description=__doc__.splitlines()[0])
    p.add_argument("--backend", action="append", required=True, help="GRPC_PORT:READY_PORT of a coordinator")
    p.add_argument("--ca-file", required=True, type=Path)
    p.add_argument("--server-name", default="localhost")
    p.add_argument("--tokens-dir", required=True, type=Path, help="<dir>/<node> holds each node's token")
    p.add_argument("--kubeconfig", required=True, type=Path)
    p.add_argument("--sim-root", required=True, type=Path)
    p.add_argument("--transfer-seconds", type=float, default=1.0)
    p.add_argument("--status-interval", type=float, default=5.0, help="as the agent's --status-interval")
    p.add_argument("--max-concurrent", type=int, default=2, help="as the agent's --max-concurrent")
    p.add_argument("--load-concurrency", type=int, default=1, help="the coordinator's limit, to check it")
    p.add_argument("--records", required=True, type=Path)
    p.add_argument("--summary", required=True, type=Path)
    p.add_argument("--ready-file", required=True, type=Path)
    args = p.parse_args(argv)

    stop = threading.Event()

    def handle(signum: int, frame: FrameType | None) -> None:
        stop.set()

    signal.signal(signal.SIGTERM, handle)
    signal.signal(signal.SIGINT, handle)
    backends = []
    for spec in args.backend:
        grpc_port, _, ready_port = spec.partition(":")
        backends.append(Backend(int(grpc_port), int(ready_port)))
    service = LocalService(backends).start()  # kube-proxy's part: any ready coordinator replica
    settings = Settings(
        transfer_s=args.transfer_seconds,
        status_interval_s=args.status_interval,
        progress_interval_s=1.0,
        max_concurrent=max(args.max_concurrent, args.load_concurrency),
        load_concurrency=args.load_concurrency,
        sim_root=args.sim_root.resolve(),
    )
    api = bench_api_client(args.kubeconfig, pool=64)
    fleet = Fleet(settings, StatusWriter(api), args.records)
    clients = []
    for token_file in sorted(args.tokens_dir.iterdir()):
        agent = FakeAgent(token_file.name, fleet)
        agent_client = AgentClient(
            service.address,
            ca_file=args.ca_file,
            token_source=_token_reader(token_file),
            hello=agent.hello,
            handler=agent,
            running=agent.running,
            clock=SystemClock(),
            server_name_override=args.server_name,
        )
        agent.send = agent_client.send
        agent_client.start()
        clients.append(agent_client)
    fleet.streams = len(clients)
    args.ready_file.write_text(str(len(clients)))

    def write_summary() -> None:
        partial = args.summary.with_suffix(".partial")
        partial.write_text(json.dumps(fleet.summary()))
        partial.replace(args.summary)

    while not stop.wait(5.0):
        write_summary()
    for agent_client in clients:
        agent_client.stop(timeout=2)
    service.stop()
    write_summary()
    fleet.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
