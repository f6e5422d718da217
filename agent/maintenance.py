"""Maintenance of one repository, run by an agent when the leader asks (``coordinator.maintenance``).

The agents hold the locations' credentials and the repository password, so they do the work; the
leader only schedules it, one repository at a time. What runs is the repository's own garbage
collection (safe beside backups; ``gc/lock`` keeps two collectors apart even across a leader
failover) and ``check``, reading a share of the packs in full. Any failure is the result's message:
a maintenance run never raises into the agent.
"""

from __future__ import annotations

from dataclasses import replace

import structlog

from agent.sweeper import LocationOpener
from barge.clock import Clock
from barge.control.messages import Maintain, MaintenanceResult
from barge.errors import BargeError, CorruptionDetected
from barge.repo.check import check_repository
from barge.repo.gc import collect_garbage
from barge.repo.repository import Repository

log = structlog.get_logger("barge.agent")
PROBLEMS_REPORTED = 5  # the first few travel to the status ConfigMap; the agent's log has them all


def run_maintenance(task: Maintain, locations: LocationOpener, clock: Clock) -> MaintenanceResult:
    where = {"location": task.backup_storage_location, "source_namespace": task.source_namespace}
    with structlog.contextvars.bound_contextvars(**where):
        try:
            location = locations.location(task.velero_namespace, task.backup_storage_location)
            repo = location.repository(task.source_namespace)
            if repo is None:
                return MaintenanceResult(
                    task.maintenance_id, message=f"no repository for namespace {task.source_namespace}"
                )
            return _maintain(task, repo, clock)
        except BargeError as err:
            log.warning("maintenance failed", error=str(err))
            return MaintenanceResult(task.maintenance_id, message=f"maintenance failed: {err}")


def _maintain(task: Maintain, repo: Repository, clock: Clock) -> MaintenanceResult:
    result = MaintenanceResult(task.maintenance_id)
    if task.collect_garbage:
        started = clock.monotonic()
        try:
            report = collect_garbage(repo, log=lambda line: log.info("gc", detail=line))
        except CorruptionDetected as err:
            # Damage stops garbage collection (it cannot tell what the damaged object references):
            # a problem to report, not a failure to retry.
            return _with_problems(result, [str(err)], message=f"garbage collection refused: {err}")
        gc_seconds = clock.monotonic() - started
        log.info("garbage collection done", phase=report.phase, deleted_packs=report.deleted_packs,
                 reclaimed_bytes=report.deleted_bytes, seconds=round(gc_seconds, 3))  # fmt: skip
        result = MaintenanceResult(
            task.maintenance_id,
            gc_phase=report.phase,
            reclaimed_bytes=report.deleted_bytes,
            deleted_packs=report.deleted_packs,
            gc_seconds=gc_seconds,
        )
    size = sum(info.size for info in repo.store.list("data/"))
    if not task.check:
        return replace(result, size_bytes=size)
    started = clock.monotonic()
    checked = check_repository(
        repo, read_data=task.read_data_fraction, log=lambda line: log.info("check", detail=line)
    )
    for problem in checked.problems:
        log.warning("check found a problem", problem=problem)
    log.info("check done", problems=len(checked.problems), blobs_verified=checked.blobs_verified)
    result = replace(result, size_bytes=size, checked=True, check_seconds=clock.monotonic() - started)
    return _with_problems(result, checked.problems)


def _with_problems(result: MaintenanceResult, problems: list[str], message: str = "") -> MaintenanceResult:
    first = tuple(problems[:PROBLEMS_REPORTED])
    return replace(result, problems=first, problem_count=len(problems), message=message)
