"""The agent's brain: takes the coordinator's commands, runs assignments, reports what happened.

One ``AssignmentRunner`` thread per assignment, keyed by assignment id; a command for an
``(id, epoch)`` already known is a replay and is ignored. A newer epoch for a running id means the
coordinator moved the work: the old runner is stopped (it would be fenced anyway).

``renew_vouches`` keeps each running assignment's exposer pod Ready while a coordinator is on the
stream, and hands the work back when the kubelet tears the pod down (``agent.vouch``).
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from dataclasses import dataclass, field

import structlog

from agent.maintenance import run_maintenance
from agent.metrics import AgentMetrics
from agent.runner import AssignmentRunner, ProgressSink, RepositoryOpener, RunnerSettings, StatusSink
from agent.sweeper import LocationOpener, ManifestCache, run_sweep
from agent.vouch import Vouch
from barge import __version__
from barge.clock import Clock
from barge.control.messages import (
    AgentEvent,
    Assignment,
    AssignmentResult,
    CancelAssignment,
    CoordinatorCommand,
    Drain,
    Hello,
    Maintain,
    MaintenanceResult,
    Outcome,
    ProgressReport,
    RunningAssignment,
    Sweep,
    SweepResult,
)
from barge.control.naming import VOUCH_TTL_S
from barge.errors import one_line

log = structlog.get_logger("barge.agent")


@dataclass
class _Job:
    runner: AssignmentRunner
    thread: threading.Thread
    started: float
    vouch: Vouch | None  # None: its exposer pod has no status volume (made by an earlier version)
    vouch_failing: bool = False  # a renewal failed: logged once, not every second
    done: threading.Event = field(default_factory=threading.Event)


class Agent:
    """Implements the gRPC client's ``CommandHandler``; ``send`` is wired to the client afterwards."""

    def __init__(
        self,
        settings: RunnerSettings,
        *,
        status: StatusSink,
        repositories: RepositoryOpener,
        clock: Clock,
        metrics: AgentMetrics,
        max_concurrent: int = 2,
        progress_interval_s: float = 1.0,
        locations: LocationOpener | None = None,
    ) -> None:
        self.settings = settings
        self.max_concurrent = max_concurrent
        self.draining = False
        self.send: Callable[[AgentEvent], None] = lambda event: None
        self.coordinator_connected: Callable[[], bool] = lambda: False  # wired to the client too
        self._status = status
        self._repositories = repositories
        self._clock = clock
        self._metrics = metrics
        self._progress_interval_s = progress_interval_s
        self._last_progress: dict[str, float] = {}
        self._jobs: dict[str, _Job] = {}
        self._lock = threading.Lock()
        self._vouching = threading.Lock()  # vouch files: a renewal never follows the withdrawal
        self._locations = locations
        self._housekeeping_locks: dict[tuple[str, str], threading.Lock] = {}
        self._manifests = ManifestCache()

    # -- what the client asks ---------------------------------------------------------------------

    def hello(self) -> Hello:
        return Hello(self.settings.node, __version__, self.max_concurrent, self.running())

    def running(self) -> tuple[RunningAssignment, ...]:
        with self._lock:
            jobs = list(self._jobs.values())
        return tuple(
            RunningAssignment(
                j.runner.assignment.assignment_id,
                j.runner.assignment.epoch,
                j.runner.bytes_done,
                j.runner.bytes_total,
            )
            for j in jobs
            if not j.done.is_set()
        )

    def handle(self, command: CoordinatorCommand) -> None:
        if isinstance(command, Assignment):
            self._assign(command)
        elif isinstance(command, CancelAssignment):
            self._cancel(command)
        elif isinstance(command, Sweep):
            threading.Thread(target=self._sweep, args=(command,), daemon=True, name="sweep").start()
        elif isinstance(command, Maintain):
            threading.Thread(target=self._maintain, args=(command,), daemon=True, name="maintain").start()
        elif isinstance(command, Drain):
            self.draining = True
            log.info("node draining: no new work accepted here", grace_s=command.grace_seconds)

    # -- assignments --------------------------------------------------------------------------------

    def _assign(self, assignment: Assignment) -> None:
        with self._lock:
            current = self._jobs.get(assignment.assignment_id)
            if current and current.runner.assignment.epoch >= assignment.epoch:
                return  # a replay, or an older epoch arriving late
            busy = sum(1 for j in self._jobs.values() if not j.done.is_set())
        if current:
            current.runner.cancel(hand_off=True)
            current.done.wait(timeout=30)
        elif busy >= self.max_concurrent:
            self.send(
                AssignmentResult(
                    assignment.assignment_id,
                    assignment.epoch,
                    Outcome.HANDED_OFF,
                    f"agent on {self.settings.node} is at capacity ({busy})",
                )
            )
            return
        self._start(assignment)

    def _start(self, assignment: Assignment) -> None:
        runner = AssignmentRunner(
            assignment,
            self.settings,
            status=self._status,
            repositories=self._repositories,
            progress=self._progress_sink(),
            clock=self._clock,
            repository_error=self._metrics.repository_error,
        )
        thread = threading.Thread(
            target=self._run,
            args=(assignment.assignment_id,),
            daemon=True,
            name=f"assignment-{assignment.cr.name}",
        )
        vouch = Vouch(self.settings.kubelet_root, assignment.pod_uid)
        job = _Job(runner, thread, self._clock.monotonic(), vouch if vouch.pod_has_it() else None)
        with self._lock:
            self._jobs[assignment.assignment_id] = job
            self._metrics.running.set(sum(1 for j in self._jobs.values() if not j.done.is_set()))
        thread.start()
        self.renew_vouches()  # Ready at the probe's next look, not a renewal later

    def _run(self, assignment_id: str) -> None:
        with self._lock:
            job = self._jobs[assignment_id]
        a = job.runner.assignment
        try:
            try:
                result = job.runner.run()
            except Exception as err:  # the runner ends every assignment in a result; the last guard
                log.error("assignment runner failed", exc_info=True)
                result = AssignmentResult(a.assignment_id, a.epoch, Outcome.FAILED, one_line(err))
            self._withdraw(job)
            seconds = self._clock.monotonic() - job.started
            self._metrics.finished(a.kind, result.outcome, seconds, result.bytes_done, result.bytes_new)
            self.send(result)  # before leaving running(): a heartbeat must never show it gone but unreported
        finally:
            job.done.set()
            with self._lock:
                if self._jobs.get(assignment_id) is job:
                    del self._jobs[assignment_id]
                self._metrics.running.set(sum(1 for j in self._jobs.values() if not j.done.is_set()))

    def _cancel(self, command: CancelAssignment) -> None:
        with self._lock:
            job = self._jobs.get(command.assignment_id)
        if job and job.runner.assignment.epoch <= command.epoch:
            log.info(
                "canceling assignment",
                name=job.runner.assignment.cr.name,
                reason=command.reason,
                hand_off=command.hand_off,
            )
            job.runner.cancel(hand_off=command.hand_off)

    # -- the exposer pods' readiness ------------------------------------------------------------------

    def renew_vouches(self) -> None:
        """Every VOUCH_REFRESH_S (and when work starts): vouch for the exposer pod of every running
        assignment while a coordinator is on the stream, withdraw otherwise (nobody could hand the
        work off, so a drain must not wait for it); hand back work whose pod is being torn down."""
        with self._lock:
            jobs = [j for j in self._jobs.values() if j.vouch is not None]
        until = int(self._clock.now().timestamp()) + VOUCH_TTL_S
        connected = self.coordinator_connected()
        for job in jobs:
            with self._vouching:  # never renewed after _withdraw
                try:
                    self._renew(job, until, connected)
                    job.vouch_failing = False
                except OSError as err:  # the kubelet removing the volume meanwhile: seen next round
                    if not job.vouch_failing:
                        pod_uid = job.runner.assignment.pod_uid
                        log.warning("exposer pod's vouch not renewed", pod_uid=pod_uid, error=str(err))
                    job.vouch_failing = True

    @staticmethod
    def _renew(job: _Job, until: int, connected: bool) -> None:
        vouch, runner = job.vouch, job.runner
        if vouch is None:
            return  # the work ended meanwhile
        if not vouch.pod_has_it():
            if not runner.stopping:
                log.warning(
                    "exposer pod torn down (evicted or deleted): handing the work back",
                    name=runner.assignment.cr.name,
                    pod_uid=runner.assignment.pod_uid,
                )
                runner.cancel(hand_off=True)
            return
        if connected and not runner.stopping:
            vouch.give(until)
        else:
            vouch.withdraw()

    def _withdraw(self, job: _Job) -> None:
        """The work ended: the pod is unready from the probe's next look, not when the vouch expires."""
        with self._vouching:
            vouch, job.vouch = job.vouch, None
            if vouch is not None:
                try:
                    vouch.withdraw()
                except OSError as err:
                    log.warning("exposer pod's vouch not withdrawn; it expires", error=str(err))

    # -- location sweeps -----------------------------------------------------------------------------

    def _sweep(self, sweep: Sweep) -> None:
        """A location sweep, beside the assignments (it moves no volume data)."""
        if self._locations is None:
            self.send(SweepResult(sweep.sweep_id, message=f"the agent on {self.settings.node} cannot sweep"))
            return
        with self._housekeeping(sweep.velero_namespace, sweep.backup_storage_location):
            self.send(run_sweep(sweep, self._locations, self._manifests))

    def _maintain(self, task: Maintain) -> None:
        """Maintenance of one repository, beside the assignments, after any sweep before it."""
        if self._locations is None:
            message = f"the agent on {self.settings.node} cannot maintain repositories"
            self.send(MaintenanceResult(task.maintenance_id, message=message))
            return
        with self._housekeeping(task.velero_namespace, task.backup_storage_location):
            self.send(run_maintenance(task, self._locations, self._clock))

    def _housekeeping(self, namespace: str, location: str) -> threading.Lock:
        """One sweep or maintenance run at a time per location (background work, bounded memory);
        a location whose storage hangs holds up no other."""
        with self._lock:
            return self._housekeeping_locks.setdefault((namespace, location), threading.Lock())

    def _progress_sink(self) -> ProgressSink:
        def report(assignment: Assignment, done: int, total: int) -> None:
            now = self._clock.monotonic()
            key = assignment.assignment_id
            if now - self._last_progress.get(key, -1e9) >= self._progress_interval_s or done >= total:
                self._last_progress[key] = now
                self.send(ProgressReport(key, assignment.epoch, done, total))

        return report

    def stop_all(self, timeout: float) -> None:
        """SIGTERM: hand every assignment back (data uploaded so far stays for the next agent)."""
        with self._lock:
            jobs = list(self._jobs.values())
        for job in jobs:
            job.runner.cancel(hand_off=True)
        for job in jobs:
            job.done.wait(timeout=timeout)
