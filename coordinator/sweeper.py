"""The leader's sweeps for deleted Velero backups: observe, decide (``coordinator.lifecycle``), act.

Every ``deletedBackups.checkInterval``, for each BackupStorageLocation in Velero's namespace, the
leader asks one connected agent what the location holds (the agents hold the location's
credentials and the repository password; the coordinator does not), lists the cluster's Backup
objects, and decides. A decision to forget goes back to the agent, which checks the location
again before it forgets. When each deleted backup was first seen deleted is kept in the ConfigMap
``barge-deleted-backups`` in Velero's namespace, so a new leader continues the same grace; all
else is read afresh at each sweep. Every forget is logged, counted
(``barge_coordinator_snapshots_forgotten_total``) and recorded as an Event on the location.

After each location's sweep, the same thread runs the repository maintenance that is due there
(``coordinator.maintainer``): the survey names the location's repositories.
"""

from __future__ import annotations

import json
import threading
import uuid
from collections.abc import Mapping
from datetime import datetime, timedelta
from typing import Any, Protocol

import structlog

from barge import __version__
from barge.clock import Clock
from barge.control.messages import Sweep, SweepResult
from barge.errors import BargeError, NotFound, TemporaryError
from barge.kube.resources import BACKUP, BACKUP_STORAGE_LOCATION, CONFIG_MAP, Resource
from barge.probes import Vitals
from barge.velero.backups import label_value
from coordinator.config import DeletedBackupsConfig
from coordinator.hub import Hub
from coordinator.lifecycle import BackupRef, EndGrace, Forget, Observed, StartGrace, decide
from coordinator.maintainer import Maintainer, location_involved, name_of
from coordinator.metrics import CoordinatorMetrics
from coordinator.ports import EventSink

log = structlog.get_logger("barge.coordinator")

Obj = dict[str, Any]
STATE_CONFIG_MAP = "barge-deleted-backups"
SWEEP_TIMEOUT_S = 900.0  # an agent reads every snapshot manifest of the location
DEFAULT_TICK = timedelta(minutes=10)  # how often maintenance is looked at when no sweep forgets
LOOP = "sweeper"


class SweeperObjects(Protocol):
    """``barge.kube.resources.KubeObjects``."""

    def get(self, resource: Resource, namespace: str | None, name: str) -> Obj: ...

    def list(self, resource: Resource, namespace: str | None, selector: str | None = None) -> list[Obj]: ...

    def create(self, resource: Resource, body: Obj, exist_ok: bool = False) -> Obj: ...

    def replace(self, resource: Resource, body: Obj, subresource: str = "") -> Obj: ...


class Sweeper:
    """Runs on the leader only: started and stopped with the controller of each leader term."""

    def __init__(
        self,
        *,
        objects: SweeperObjects,
        events: EventSink,
        hub: Hub,
        metrics: CoordinatorMetrics,
        clock: Clock,
        namespace: str,
        config: DeletedBackupsConfig,
        maintainer: Maintainer | None = None,
        vitals: Vitals | None = None,
    ) -> None:
        self._objects, self._events, self._hub = objects, events, hub
        self._maintainer = maintainer
        self._metrics, self._clock = metrics, clock
        self._namespace = namespace
        self._config = config
        self._vitals = vitals or Vitals(clock)
        self._stopping = threading.Event()
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        maintaining = self._maintainer is not None and self._maintainer.enabled
        if not self._forgetting and not maintaining:
            log.info("no sweeps: deletedBackups.checkInterval and both maintenance intervals are 0")
            return
        if self._maintainer is not None:
            self._maintainer.export()
        self._thread = threading.Thread(target=self._watched, name=LOOP, daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stopping.set()
        if self._thread is not None:
            self._thread.join(timeout=10)
        self._metrics.forget_repositories()

    @property
    def _forgetting(self) -> bool:
        return self._config.check_interval > timedelta(0)

    def _watched(self) -> None:
        """``_loop``, reporting its death to the vitals. For its death only: one pass waits up to
        ``maintenance.timeout`` (2 h) for an agent's answer and the next one comes a check interval
        later, both beyond any useful stall bound; a bound that long would catch nothing, a shorter
        one would restart a healthy leader mid-maintenance. Every wait has its own timeout."""
        self._vitals.run(LOOP, self._loop, self._stopping, stalls=False)

    def _loop(self) -> None:
        """Each location in a thread of its own, one pass at a time per location: a location whose
        storage does not answer (its pass waits on the agent's retries) delays no other."""
        tick = self._config.check_interval if self._forgetting else DEFAULT_TICK
        passes: dict[str, threading.Thread] = {}
        while not self._stopping.wait(tick.total_seconds()):
            for bsl in self._locations():
                running = passes.get(name_of(bsl))
                if running is not None and running.is_alive():
                    continue  # its previous pass has not ended: the next check tries again
                passes[name_of(bsl)] = thread = threading.Thread(
                    target=self._pass, args=(bsl,), name=f"sweep-{name_of(bsl)}", daemon=True
                )
                thread.start()

    def _pass(self, bsl: Obj) -> None:
        """Sweep one location, then run the maintenance due there; never raises."""
        try:
            survey = self.sweep(bsl)
            if survey is not None and self._maintainer is not None:
                nodes = self._hub.connected_nodes(__version__)
                self._maintainer.maintain(bsl, survey.repositories, nodes, self._stopping)
        except BargeError as err:
            self._metrics.location_sweeps.labels("failed").inc()
            log.warning("sweep failed", location=name_of(bsl), error=str(err))
        except Exception:
            self._metrics.location_sweeps.labels("failed").inc()
            log.exception("sweep failed unexpectedly; retried at the next check", location=name_of(bsl))

    def _locations(self) -> list[Obj]:
        try:
            return self._objects.list(BACKUP_STORAGE_LOCATION, self._namespace)
        except BargeError as err:
            log.warning("cannot list BackupStorageLocations", error=str(err))
            return []

    # -- one location -----------------------------------------------------------------------------

    def sweep(self, bsl: Obj) -> SweepResult | None:
        """Survey the location and forget what deleted backups left; the survey (None: no agent)."""
        location = name_of(bsl)
        # An agent of an earlier version (during an upgrade) does not know Sweep: it would drop
        # its stream on the unknown command. Only agents of this coordinator's version sweep.
        nodes = self._hub.connected_nodes(__version__)
        if not nodes:
            self._metrics.location_sweeps.labels("no_agent").inc()
            return None
        survey = self._ask(nodes[0], location, ())
        self._metrics.snapshots_forgotten.labels(location)  # 0 from the start: increase() sees the first
        if self._forgetting:
            try:
                self._forget_deleted(bsl, nodes[0], survey)
            except BargeError as err:  # the survey still serves maintenance
                self._metrics.location_sweeps.labels("failed").inc()
                log.warning("sweep failed", location=location, error=str(err))
                return survey
        self._metrics.location_sweeps.labels("ok").inc()
        return survey

    def _forget_deleted(self, bsl: Obj, node: str, survey: SweepResult) -> None:
        location = name_of(bsl)
        in_cluster = frozenset(label_value(name_of(b)) for b in self._objects.list(BACKUP, self._namespace))
        state, version = self._read_state()
        observed = Observed(
            now=self._clock.now(),
            grace=self._config.grace_period,
            location_writable=_writable(bsl),
            backups_in_cluster=in_cluster,
            backups_in_location=frozenset(survey.backups_in_location),
            snapshots=survey.snapshots,
            deleted_since=_since(state, location),
        )
        actions = decide(observed)
        changed = dict(state)
        forgets = [a for a in actions if isinstance(a, Forget)]
        for action in actions:
            if isinstance(action, StartGrace):
                changed[_key(location, action.backup)] = _record(location, action.backup, action.since)
                log.info(
                    "backup deleted from Velero: its snapshots are forgotten after the grace period",
                    location=location, backup=action.backup.name, uid=action.backup.uid,
                    grace_s=self._config.grace_period.total_seconds(),
                )  # fmt: skip
            elif isinstance(action, EndGrace):
                changed.pop(_key(location, action.backup), None)
                log.info(
                    "deleted backup done", location=location, backup=action.backup.name, reason=action.reason
                )
        if self._stopping.is_set():
            return  # the leader term ended during the survey: the next leader decides afresh
        if forgets:
            answer = self._ask(node, location, tuple(r for f in forgets for r in f.repositories))
            self._report(bsl, forgets, answer)
        if changed != state:
            self._write_state(changed, version)

    def _ask(self, node: str, location: str, forget: tuple[Any, ...]) -> SweepResult:
        sweep = Sweep(uuid.uuid4().hex, self._namespace, location, forget)
        result = self._hub.request(node, sweep, SWEEP_TIMEOUT_S)
        if not isinstance(result, SweepResult):
            raise SweepFailed(f"the agent on {node} answered a sweep with {type(result).__name__}")
        if result.message:
            raise SweepFailed(result.message)
        return result

    def _report(self, bsl: Obj, forgets: list[Forget], answer: SweepResult) -> None:
        location = name_of(bsl)
        forgotten, kept = set(answer.forgotten), set(answer.kept)
        for action in forgets:
            ids = {s for r in action.repositories for s in r.snapshot_ids}
            done, refused = sorted(ids & forgotten), sorted(ids & kept)
            backup = f"{action.backup.name} (uid {action.backup.uid})"
            if done:
                self._metrics.snapshots_forgotten.labels(location).inc(len(done))
                namespaces = ", ".join(r.source_namespace for r in action.repositories)
                log.info(
                    "snapshots of a deleted backup forgotten",
                    location=location,
                    backup=action.backup.name,
                    uid=action.backup.uid,
                    snapshots=done,
                )
                self._events.record(
                    location_involved(bsl),
                    "Normal",
                    "SnapshotsForgotten",
                    f"forgot {len(done)} snapshot(s) of deleted backup {backup} in the repositories of "
                    f"{namespaces}; garbage collection (`barge gc`) reclaims their space",
                )
            if refused:
                log.warning("forget refused: the backup is in the location", location=location, backup=backup)
                self._events.record(
                    location_involved(bsl),
                    "Warning",
                    "ForgetRefused",
                    f"kept {len(refused)} snapshot(s) of backup {backup}: the location holds the backup",
                )

    # -- the recorded grace starts ------------------------------------------------------------------

    def _read_state(self) -> tuple[dict[str, str], str | None]:
        try:
            found = self._objects.get(CONFIG_MAP, self._namespace, STATE_CONFIG_MAP)
        except NotFound:
            return {}, None
        return dict(found.get("data") or {}), str(found["metadata"]["resourceVersion"])

    def _write_state(self, data: dict[str, str], version: str | None) -> None:
        """Create or replace (a concurrent writer makes this fail with Conflict: the next sweep redoes it)."""
        metadata: Obj = {"name": STATE_CONFIG_MAP, "namespace": self._namespace,
                         "labels": {"app.kubernetes.io/managed-by": "barge"}}  # fmt: skip
        if version is None:
            self._objects.create(CONFIG_MAP, {"metadata": metadata, "data": data})
        else:
            self._objects.replace(
                CONFIG_MAP, {"metadata": {**metadata, "resourceVersion": version}, "data": data}
            )


class SweepFailed(TemporaryError):
    """The agent could not sweep the location now; the next sweep tries again."""


def _writable(bsl: Obj) -> bool:
    """Velero deletes backups only from a location that is Available and not ReadOnly."""
    spec, status = bsl.get("spec") or {}, bsl.get("status") or {}
    return spec.get("accessMode", "ReadWrite") != "ReadOnly" and status.get("phase") == "Available"


def _key(location: str, backup: BackupRef) -> str:
    return f"{location}.{backup.uid}"


def _record(location: str, backup: BackupRef, since: datetime) -> str:
    return json.dumps(
        {"location": location, "backup": backup.name, "uid": backup.uid, "since": since.isoformat()}
    )


def _since(state: Mapping[str, str], location: str) -> dict[BackupRef, datetime]:
    """The recorded grace starts of ``location``; an unreadable entry starts again (the safe side)."""
    found = {}
    for text in state.values():
        try:
            entry = json.loads(text)
            if entry["location"] == location:
                found[BackupRef(entry["backup"], entry["uid"])] = datetime.fromisoformat(entry["since"])
        except (ValueError, KeyError, TypeError):
            continue
    return found
