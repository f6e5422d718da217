"""The leader's scheduled repository maintenance: read the records, decide, ask an agent, record.

Runs in the sweeper's thread after each location's sweep (``coordinator.sweeper``), so on one
leader at a time and one repository at a time; the repository's own ``gc/lock`` keeps a run that
an old leader started apart from a new leader's. The records live in the ConfigMap
``barge-maintenance`` in Velero's namespace, one key per repository (``coordinator.maintenance``):
``kubectl -n velero get configmap barge-maintenance -o yaml`` shows each repository's last garbage
collection and check, the bytes reclaimed, its size and the problems found. The same figures are
Prometheus metrics, and damage and reclaimed space are Events on the BackupStorageLocation.
"""

from __future__ import annotations

import contextlib
import threading
import uuid
from collections.abc import Callable, Mapping
from typing import Any, Protocol

import structlog

from barge.clock import Clock
from barge.control.messages import Maintain, MaintenanceResult
from barge.errors import BargeError, Conflict, InvalidInput, NotFound
from barge.kube.resources import BACKUP_STORAGE_LOCATION, CONFIG_MAP, Resource
from coordinator.hub import Hub
from coordinator.maintenance import (
    MaintenanceConfig,
    RepositoryRecord,
    Task,
    answered,
    attempted,
    decode,
    due_tasks,
    encode,
    record_key,
)
from coordinator.metrics import CoordinatorMetrics
from coordinator.ports import EventSink

log = structlog.get_logger("barge.coordinator")

Obj = dict[str, Any]
STATUS_CONFIG_MAP = "barge-maintenance"
UPDATE_ATTEMPTS = 5


class MaintainerObjects(Protocol):
    """``barge.kube.resources.KubeObjects``."""

    def get(self, resource: Resource, namespace: str | None, name: str) -> Obj: ...

    def create(self, resource: Resource, body: Obj, exist_ok: bool = False) -> Obj: ...

    def replace(self, resource: Resource, body: Obj, subresource: str = "") -> Obj: ...


class Maintainer:
    def __init__(
        self,
        *,
        objects: MaintainerObjects,
        events: EventSink,
        hub: Hub,
        metrics: CoordinatorMetrics,
        clock: Clock,
        namespace: str,
        config: MaintenanceConfig,
    ) -> None:
        self._objects, self._events, self._hub = objects, events, hub
        self._metrics, self._clock = metrics, clock
        self._namespace = namespace
        self._config = config
        self._turn = 0  # spreads the runs over the agents
        metrics.maintenance_interval.labels("gc").set(config.gc_interval.total_seconds())
        metrics.maintenance_interval.labels("check").set(config.check_interval.total_seconds())

    @property
    def enabled(self) -> bool:
        return self._config.enabled

    def export(self) -> None:
        """At the start of a leader term: the metrics of every recorded repository."""
        for record in self._read()[0].values():
            self._export(record)

    def maintain(
        self, bsl: Obj, repositories: tuple[str, ...], nodes: list[str], stopping: threading.Event
    ) -> None:
        """Run what is due in this location, one repository at a time, until the term ends."""
        if not self._config.enabled or not nodes:
            return
        location = name_of(bsl)
        records, _ = self._read()
        self._forget_gone(location, repositories, records)
        read_only = (bsl.get("spec") or {}).get("accessMode") == "ReadOnly"
        due = due_tasks(self._clock.now(), self._config, location, repositories, records, read_only=read_only)
        for task in due:
            if stopping.is_set():
                return
            node = nodes[self._turn % len(nodes)]
            self._turn += 1
            fresh = RepositoryRecord(location, task.namespace, self._clock.now())
            self._run(bsl, task, node, records.get(record_key(location, task.namespace)) or fresh)

    def _run(self, bsl: Obj, task: Task, node: str, record: RepositoryRecord) -> None:
        """Only this location's pass writes its records, so ``record`` (read when the pass began)
        is the current one: it is not read again."""
        location = name_of(bsl)
        started = attempted(record, task, self._clock.now())
        self._write(started)
        request = Maintain(
            uuid.uuid4().hex,
            self._namespace,
            location,
            task.namespace,
            collect_garbage=task.collect_garbage,
            check=task.check,
            read_data_fraction=self._config.read_data_fraction,
        )
        log.info("repository maintenance", location=location, source_namespace=task.namespace,
                 node=node, gc=task.collect_garbage, check=task.check)  # fmt: skip
        try:
            result = self._hub.request(node, request, self._config.timeout.total_seconds())
        except BargeError as err:
            result = MaintenanceResult(request.maintenance_id, message=str(err))
        if not isinstance(result, MaintenanceResult):
            result = MaintenanceResult(request.maintenance_id, message=f"unexpected answer from {node}")
        done = answered(started, task, result, self._clock.now())
        self._write(done)
        self._count(task, result, done)
        self._tell(bsl, done, result)

    # -- what users see -----------------------------------------------------------------------------

    def _count(self, task: Task, result: MaintenanceResult, record: RepositoryRecord) -> None:
        m = self._metrics
        if task.collect_garbage:
            gc_ok = bool(result.gc_phase)
            m.maintenance_runs.labels("gc", "ok" if gc_ok else "failed").inc()
            if gc_ok:
                m.maintenance_duration.labels("gc").observe(result.gc_seconds)
        if task.check:
            check_ok = result.checked and not result.message
            m.maintenance_runs.labels("check", "ok" if check_ok else "failed").inc()
            if check_ok:
                m.maintenance_duration.labels("check").observe(result.check_seconds)
        m.repository_reclaimed.labels(record.location).inc(result.reclaimed_bytes)
        self._export(record)

    def _export(self, record: RepositoryRecord) -> None:
        m = self._metrics
        labels = (record.location, record.namespace)
        m.repository_reclaimed.labels(record.location)  # 0 from the start: increase() sees the first
        for task, interval, succeeded in (
            ("gc", self._config.gc_interval, record.gc_succeeded),
            ("check", self._config.check_interval, record.check_succeeded),
        ):
            if interval.total_seconds() > 0:
                when = succeeded or record.first_seen
                m.maintenance_last_success.labels(*labels, task).set(when.timestamp())
        if record.size_bytes >= 0:
            m.repository_size.labels(*labels).set(record.size_bytes)
        m.repository_problems.labels(*labels).set(record.problem_count)

    def _tell(self, bsl: Obj, record: RepositoryRecord, result: MaintenanceResult) -> None:
        where = f"the repository of namespace {record.namespace}"
        fields = {"location": record.location, "source_namespace": record.namespace}
        if result.message:
            log.warning("repository maintenance failed", **fields, error=result.message)
        else:
            log.info("repository maintenance done", **fields, gc_phase=result.gc_phase,
                     reclaimed_bytes=result.reclaimed_bytes, size_bytes=result.size_bytes,
                     problems=result.problem_count, gc_s=round(result.gc_seconds, 3),
                     check_s=round(result.check_seconds, 3))  # fmt: skip
        if result.problem_count:
            first = result.problems[0] if result.problems else ""
            self._events.record(
                location_involved(bsl), "Warning", "RepositoryDamaged",
                f"{where} has {result.problem_count} problem(s), e.g. {first}; see docs/operations.md "
                "(BargeRepositoryDamaged) before the next backup or restore depends on it",
            )  # fmt: skip
        if result.reclaimed_bytes:
            self._events.record(
                location_involved(bsl), "Normal", "SpaceReclaimed",
                f"garbage collection deleted {result.deleted_packs} pack(s), {result.reclaimed_bytes:,} "
                f"bytes, from {where}",
            )  # fmt: skip

    # -- the records -------------------------------------------------------------------------------

    def _forget_gone(
        self, location: str, repositories: tuple[str, ...], records: Mapping[str, RepositoryRecord]
    ) -> None:
        """Records of repositories the location no longer holds (their namespace's folder is gone)."""
        present = set(repositories)
        gone = [r for r in records.values() if r.location == location and r.namespace not in present]
        if not gone:
            return
        self._update(lambda data: {k: v for k, v in data.items() if k not in {r.key for r in gone}})
        for record in gone:
            for gauge in (self._metrics.repository_size, self._metrics.repository_problems):
                _remove(gauge, record.location, record.namespace)
            for task in ("gc", "check"):
                _remove(self._metrics.maintenance_last_success, record.location, record.namespace, task)

    def _read(self) -> tuple[dict[str, RepositoryRecord], Obj | None]:
        try:
            found = self._objects.get(CONFIG_MAP, self._namespace, STATUS_CONFIG_MAP)
        except NotFound:
            return {}, None
        records = {}
        for key, text in (found.get("data") or {}).items():
            try:
                records[key] = decode(str(text))
            except InvalidInput as err:
                log.warning("unreadable maintenance record: that repository starts afresh",
                            key=key, error=str(err))  # fmt: skip
        return records, found

    def _write(self, record: RepositoryRecord) -> None:
        self._update(lambda data: {**data, record.key: encode(record)})

    def _update(self, change: Callable[[dict[str, str]], dict[str, str]]) -> None:
        """Read, change, replace; on a conflict (another location's pass writing too) again from a
        fresh read."""
        for attempt in range(1, UPDATE_ATTEMPTS + 1):
            _, found = self._read()
            try:
                if found is None:
                    body = {"metadata": self._metadata(), "data": change({})}
                    self._objects.create(CONFIG_MAP, body)
                else:
                    metadata = {**self._metadata(), "resourceVersion": found["metadata"]["resourceVersion"]}
                    data = change({k: str(v) for k, v in (found.get("data") or {}).items()})
                    self._objects.replace(CONFIG_MAP, {"metadata": metadata, "data": data})
                return
            except Conflict:
                if attempt == UPDATE_ATTEMPTS:
                    raise

    def _metadata(self) -> Obj:
        return {"name": STATUS_CONFIG_MAP, "namespace": self._namespace,
                "labels": {"app.kubernetes.io/managed-by": "barge"}}  # fmt: skip


def _remove(gauge: Any, *labels: str) -> None:
    with contextlib.suppress(KeyError):
        gauge.remove(*labels)


def name_of(obj: Mapping[str, Any]) -> str:
    """An object's name, as listed (the sweeper's locations and Backups too)."""
    return str((obj.get("metadata") or {}).get("name", ""))


def location_involved(bsl: Obj) -> Obj:
    """The location as an Event's involved object (listed objects lack apiVersion and kind)."""
    return {**bsl, "apiVersion": BACKUP_STORAGE_LOCATION.api_version, "kind": BACKUP_STORAGE_LOCATION.kind}
