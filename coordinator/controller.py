"""The coordinator's control loop: informers -> work queue -> observe -> decide -> execute.

Everything the loop knows comes from the API server (informer caches) and from the agents (hub);
nothing it needs survives only in its memory, so a new leader continues where the old one stopped.
The decisions are made by the pure ``coordinator.decide``; this module only wires.
"""

from __future__ import annotations

import threading
from collections import Counter
from collections.abc import Callable, Iterable, Mapping
from datetime import datetime, timedelta
from typing import Any

import structlog

from barge.clock import Clock
from barge.control.messages import RunningAssignment
from barge.control.naming import LABEL_MANAGED_BY, MANAGED_BY
from barge.errors import BargeError, TemporaryError
from barge.kube.client import ApiClient
from barge.kube.events import EventRecorder
from barge.kube.informer import Informer
from barge.kube.resources import (
    BACKUP_STORAGE_LOCATION,
    DATA_DOWNLOAD,
    DATA_UPLOAD,
    NODE,
    PERSISTENT_VOLUME,
    PERSISTENT_VOLUME_CLAIM,
    POD,
    POD_DISRUPTION_BUDGET,
    STORAGE_CLASS,
    VOLUME_SNAPSHOT,
    VOLUME_SNAPSHOT_CONTENT,
    KubeObjects,
    Resource,
)
from barge.kube.status import StatusWriter
from barge.probes import Vitals
from barge.retry import Backoff
from coordinator.config import CoordinatorConfig
from coordinator.decide import claim_problem, decide
from coordinator.executor import Executor
from coordinator.hub import Hub
from coordinator.metrics import CoordinatorMetrics
from coordinator.model import TERMINAL_PHASES, AgentView, CrView
from coordinator.ownwrites import OwnWrites
from coordinator.ports import CacheFeed, ControllerAdapters, EventHandler, FeedFactory
from coordinator.routing import Changes, References, keys_for_event, owner_key
from coordinator.scheduler import Admission, ItemKey, WorkItem, admit, permits
from coordinator.sweeper import Sweeper
from coordinator.workqueue import WorkQueue
from coordinator.world import Context, CrViews, agent_views, is_ours, node_states, observe, work_items

log = structlog.get_logger("barge.coordinator")

Obj = Mapping[str, Any]
_CR_KINDS = ("DataUpload", "DataDownload")
# What a CR's exposure and source are made of: their events wake a CR only when what it reads of
# them changed (``routing.Changes``).
_EXPOSURE_KINDS = frozenset(
    (
        "Pod",
        "PodDisruptionBudget",
        "PersistentVolumeClaim",
        "PersistentVolume",
        "VolumeSnapshot",
        "VolumeSnapshotContent",
    )
)
# A new term's first pass: an exposure ready for an agent first, then work to re-adopt, exposures
# on their way, and admission last (terminal CRs with a finalizer to remove come after all).
_FIRST_PASS_ORDER = {"Prepared": 0, "InProgress": 1, "Accepted": 2, "Canceling": 3, "New": 4}
_ERROR_BACKOFF = Backoff(first_s=0.5, max_s=60.0)
_ADMISSION_INTERVAL_S = 0.25
_ADMISSION_REFRESH_S = 2.0


def kubernetes_adapters(
    api: ApiClient, clock: Clock, identity: str, vitals: Vitals | None = None
) -> ControllerAdapters:
    """The controller's adapters on a real API server: informers (their deaths reported to
    ``vitals``), objects, guarded CR writes, Events."""

    def feed(
        resource: Resource, namespace: str | None, selector: str | None, handler: EventHandler
    ) -> CacheFeed:
        return Informer(
            api, resource, namespace, selector, resync_s=300.0, on_event=handler, clock=clock, vitals=vitals
        )

    return ControllerAdapters(
        feeds=feed,
        objects=KubeObjects(api),
        status=StatusWriter(api),
        events=EventRecorder(api, "barge-coordinator", clock, identity),
    )


class InformerCaches:
    """``coordinator.world.Caches`` over the informers, by kind name; with ``own``, an object this
    coordinator wrote is seen as written until its informer catches up."""

    def __init__(self, informers: Mapping[str, CacheFeed], own: OwnWrites | None = None) -> None:
        self._informers = informers
        self._own = own

    def get(self, kind: str, namespace: str | None, name: str) -> Obj | None:
        informer = self._informers.get(kind)
        cached = informer.get(namespace, name) if informer else None
        return self._own.overlay(kind, namespace, name, cached) if self._own is not None else cached

    def items(self, kind: str) -> Iterable[Obj]:
        informer = self._informers.get(kind)
        return informer.items() if informer else ()


class Controller:
    def __init__(
        self,
        adapters: ControllerAdapters,
        *,
        namespace: str,
        config: CoordinatorConfig,
        hub: Hub,
        metrics: CoordinatorMetrics,
        clock: Clock,
        identity: str,
        workers: int = 2,
        resync_s: float = 30.0,
        sweeper: Sweeper | None = None,
        vitals: Vitals | None = None,
    ) -> None:
        self.namespace = namespace
        self.config = config
        self._hub = hub
        self._metrics = metrics
        self._clock = clock
        self._identity = identity
        self._workers = workers
        self._resync_s = resync_s
        self._sweeper = sweeper
        self._vitals = vitals or Vitals(clock)  # each loop beats here; /healthz reads it
        self._queue: WorkQueue[ItemKey] = WorkQueue(
            clock, on_wait=metrics.queue_wait.observe, on_due=metrics.wakeups.labels("requeue").inc
        )
        self._stopping = threading.Event()
        self._threads: list[threading.Thread] = []
        self._failures: Counter[ItemKey] = Counter()
        self._cordoned_since: dict[str, datetime] = {}
        self._leading_since: datetime | None = None  # this controller runs for one leader term
        self._drained: set[str] = set()
        self._admissions: dict[ItemKey, Admission] = {}
        self._agents: tuple[AgentView, ...] = ()
        self._admission_dirty = threading.Event()
        self._views = CrViews()
        self._references = References()
        self._changes = Changes()
        self._lock = threading.Lock()
        self._warming = False
        self._informers = self._make_informers(adapters.feeds)
        self._own = OwnWrites(clock)
        self.caches = InformerCaches(self._informers, self._own)
        self._executor = Executor(
            objects=adapters.objects,
            status=adapters.status,
            hub=hub,
            recorder=adapters.events,
            metrics=metrics,
            clock=clock,
            cached=lambda resource, namespace, name: self.caches.get(resource.kind, namespace, name),
            own=self._own,
        )
        hub.on_change = self._on_hub_change
        hub.on_agent_connected = lambda _node: self._admission_dirty.set()  # its node has slots now
        hub.claim_problem = self._claim_problem

    # -- lifecycle --------------------------------------------------------------------------------

    def warm(self) -> None:
        """Start the informers (list, then watch) without acting on anything: a standby replica
        keeps its caches current this way, so that taking over costs no listing. Idempotent."""
        with self._lock:
            if self._warming:
                return
            self._warming = True
        for informer in self._informers.values():
            informer.start()

    def synced(self) -> bool:
        """Whether every cache holds its first listing."""
        return all(informer.wait_synced(0) for informer in self._informers.values())

    def start(self, sync_timeout: float = 60.0) -> None:
        """Lead: wait for the caches (already synced when ``warm`` ran during the standby), then
        run admission, the reconcile workers, the resync tick and the sweeper."""
        self.warm()
        for kind, informer in self._informers.items():
            if not informer.wait_synced(sync_timeout):
                raise TemporaryError(f"the {kind} cache did not sync within {sync_timeout:.0f}s")
        self._leading_since = self._clock.now()  # agents can find this leader from about now
        self._queue.clear()  # what events queued while standing by, in the first pass's order instead
        self.recompute_admissions()
        self._enqueue_all()
        self._spawn(self._admission_loop, "admission")
        for index in range(self._workers):
            self._spawn(self._work, f"reconcile-{index}")
        self._spawn(self._tick, "resync")
        if self._sweeper is not None:
            self._sweeper.start()
        log.info("controller started", namespace=self.namespace, workers=self._workers)

    def stop(self) -> None:
        self._stopping.set()
        if self._sweeper is not None:
            self._sweeper.stop()
        self._queue.close()
        for informer in self._informers.values():
            informer.stop()
        for thread in self._threads:
            thread.join(timeout=10)

    def _spawn(self, loop: Callable[[Callable[[], None]], None], name: str) -> None:
        """Run ``loop(beat)`` in a thread, watched by the vitals: it beats once per pass."""

        def run() -> None:
            self._vitals.run(name, lambda: loop(lambda: self._vitals.beat(name)), self._stopping)

        thread = threading.Thread(target=run, name=name, daemon=True)
        self._threads.append(thread)
        thread.start()

    # -- informers and what they wake up ------------------------------------------------------------

    def _make_informers(self, feeds: FeedFactory) -> dict[str, CacheFeed]:
        managed = f"{LABEL_MANAGED_BY}={MANAGED_BY}"
        specs: list[tuple[Resource, str | None, str | None]] = [
            (DATA_UPLOAD, self.namespace, None),
            (DATA_DOWNLOAD, self.namespace, None),
            (POD, self.namespace, managed),
            (POD_DISRUPTION_BUDGET, self.namespace, managed),
            (PERSISTENT_VOLUME_CLAIM, None, None),  # exposure claims and the app's source/target claims
            (PERSISTENT_VOLUME, None, None),
            (VOLUME_SNAPSHOT, None, None),  # the source snapshots live in the apps' namespaces
            (VOLUME_SNAPSHOT_CONTENT, None, None),
            (NODE, None, None),
            (BACKUP_STORAGE_LOCATION, self.namespace, None),
            (STORAGE_CLASS, None, None),
        ]
        return {
            resource.kind: feeds(resource, namespace, selector, self._handler(resource.kind))
            for resource, namespace, selector in specs
        }

    def _handler(self, kind: str) -> Any:
        """Route an event to the CRs it concerns (``coordinator.routing``), never to all of them."""

        def on_event(event_type: str, obj: dict[str, Any]) -> None:
            if self._stopping.is_set():
                return
            meta = obj.get("metadata") or {}
            # An informer's periodic re-delivery (SYNC) is a safety net like the resync: background.
            add = self._queue.add_background if event_type == "SYNC" else self._queue.add
            woken = self._metrics.wakeups.labels("sync" if event_type == "SYNC" else kind)
            if kind in _CR_KINDS:
                key = ItemKey(kind, meta.get("namespace", ""), meta.get("name", ""))
                self._references.update(key, None if event_type == "DELETED" else obj)
                if event_type != "SYNC":
                    self._admission_dirty.set()  # a phase may have changed: capacity may have moved
                add(key)
                woken.inc()
                return
            if kind in ("Node", "BackupStorageLocation"):
                if event_type == "SYNC" or not self._changes.changed(kind, event_type, obj):
                    return
                self._admission_dirty.set()
                if kind == "Node":
                    self._enqueue_on_node(str(meta.get("name", "")))
            keys = keys_for_event(kind, obj, self._references, self.namespace)
            if kind in _EXPOSURE_KINDS:
                if not keys:
                    self._changes.forget(kind, obj)
                    return
                if self._changes.changed(kind, event_type, obj):
                    add, woken = self._queue.add, self._metrics.wakeups.labels(kind)  # even a SYNC's
                elif event_type != "SYNC":
                    return  # nothing a decision reads has changed
            for key in keys:
                add(key)
                woken.inc()

        return on_event

    def _enqueue_on_node(self, node: str) -> None:
        """The CRs exposed on ``node`` (a cordon or relabel changes what they may do)."""
        for pod in self.caches.items("Pod"):
            owner = owner_key(pod, self.namespace)
            if owner is not None and (pod.get("spec") or {}).get("nodeName") == node:
                self._queue.add(owner)
                self._metrics.wakeups.labels("Node").inc()

    def _on_hub_change(self, assignment_id: str) -> None:
        self._admission_dirty.set()
        key = self._references.by_uid(assignment_id)
        if key is not None:
            self._queue.add(key)
            self._metrics.wakeups.labels("hub").inc()

    def _claim_problem(self, node: str, claim: RunningAssignment) -> str:
        """What is wrong with an agent's claim to run ``claim`` (``decide.claim_problem``), checked
        against the CR in the cache: a new leader adopts only what the CR's fence names."""
        key = self._references.by_uid(claim.assignment_id)
        obj = self.caches.get(key.kind, key.namespace, key.name) if key is not None else None
        if key is None or obj is None:
            return claim_problem(None, node, claim)
        try:
            cr = self._views.view(key.kind, obj)
        except BargeError as err:
            return f"{key.kind} {key.namespace}/{key.name} cannot be read: {err}"
        return claim_problem(cr, node, claim)

    def _enqueue_all(self, resync: bool = False) -> None:
        """Queue every CR of ours, those closest to moving data first: when a new leader starts with
        thousands of CRs, its first pass reaches the exposures that are ready before the new ones.
        A ``resync`` (the safety net for a missed event) queues only CRs not yet let go, and in the
        queue's background: at 2,000 live items each pass queued 2,000 keys ahead of real events."""
        keyed: list[tuple[int, ItemKey]] = []
        for kind in _CR_KINDS:
            for obj in self.caches.items(kind):
                if not is_ours(obj):
                    continue
                phase = (obj.get("status") or {}).get("phase") or "New"
                if resync and phase in TERMINAL_PHASES and not (obj.get("metadata") or {}).get("finalizers"):
                    continue
                meta = obj.get("metadata") or {}
                key = ItemKey(kind, meta.get("namespace", ""), meta.get("name", ""))
                keyed.append((_FIRST_PASS_ORDER.get(phase, len(_FIRST_PASS_ORDER)), key))
        keyed.sort(key=lambda entry: entry[0])
        for _, key in keyed:
            if resync:
                self._queue.add_background(key)
            else:
                self._queue.add(key)
        self._metrics.wakeups.labels("resync" if resync else "first_pass").inc(len(keyed))

    # -- the loops --------------------------------------------------------------------------------

    def _work(self, beat: Callable[[], None]) -> None:
        while not self._stopping.is_set():
            self.process_next(timeout=1.0)
            beat()

    def process_next(self, timeout: float) -> ItemKey | None:
        """Reconcile the next queued CR, as each worker thread does in a loop; None when nothing was
        due within ``timeout``. A failed reconcile is queued again after a backoff, never dropped."""
        key = self._queue.get(timeout=timeout)
        if key is None:
            return None
        try:
            self._reconcile_safely(key)
        finally:
            self._queue.done(key)
        return key

    def _tick(self, beat: Callable[[], None]) -> None:
        """Cordon tracking and gauges every few seconds; a full pass over live items every resync."""
        last_resync = self._clock.monotonic()
        while not self._stopping.wait(min(5.0, self._resync_s)):
            self._track_cordons()
            self._update_gauges()
            if self._clock.monotonic() - last_resync >= self._resync_s:
                last_resync = self._clock.monotonic()
                self._enqueue_all(resync=True)
            beat()

    def _reconcile_safely(self, key: ItemKey) -> None:
        """Reconcile ``key``; any failure queues it again after a backoff. An unexpected exception
        (a bug met on this CR) is logged with its traceback and retried the same way, as
        controller-runtime recovers a panicking Reconcile: it must not end the worker."""
        started = self._clock.monotonic()
        try:
            after = self.reconcile(key)
            self._failures.pop(key, None)
        except Exception as err:
            self._failures[key] += 1
            delay = _ERROR_BACKOFF.delay(self._failures[key])
            self._metrics.api_errors.labels(type(err).__name__).inc()
            log.warning(
                "reconcile failed; retrying",
                item=f"{key.kind} {key.namespace}/{key.name}",
                error=str(err),
                retry_in_s=delay,
                exc_info=not isinstance(err, BargeError),
            )
            after = timedelta(seconds=delay)
        finally:
            self._metrics.reconcile.observe(self._clock.monotonic() - started)
        if after is not None:
            self._queue.add_after(key, after.total_seconds())

    def reconcile(self, key: ItemKey) -> timedelta | None:
        cr_obj = self.caches.get(key.kind, key.namespace, key.name)
        if cr_obj is None or not is_ours(cr_obj):
            return None
        cr_obj = {**cr_obj, "kind": key.kind}
        cr = self._views.view(key.kind, cr_obj)
        if self._hub.released(cr.uid):
            return None  # let go by this coordinator; the cache has not shown that write yet
        with structlog.contextvars.bound_contextvars(namespace=key.namespace, name=key.name, kind=key.kind):
            admitted = self._admitted(key, cr)
            observed = observe(cr_obj, self.caches, self._hub, self._context(), admitted, cr=cr)
            actions = decide(observed)
            if actions:
                log.debug("decided", actions=[type(a).__name__ for a in actions])
            return self._executor.execute(cr_obj, cr, actions).requeue_after

    def _context(self) -> Context:
        with self._lock:
            agents = self._agents
        return Context(self._clock.now(), self.config, self._identity, agents, self._leading_since)

    def _admitted(self, key: ItemKey, cr: CrView) -> bool:
        with self._lock:
            admission = self._admissions.get(key)
        return permits(admission, cr)

    def _admission_loop(self, beat: Callable[[], None]) -> None:
        """One scheduler pass over every item whenever something changed (at most every
        ``_ADMISSION_INTERVAL_S``) and at least every ``_ADMISSION_REFRESH_S`` (agents connect and
        disconnect); items it newly admits are queued. A reconcile only looks the answer up:
        recomputing it per reconcile made a burst quadratic."""
        while not self._stopping.is_set():
            self._admission_dirty.wait(timeout=_ADMISSION_REFRESH_S)
            self._admission_dirty.clear()
            self.recompute_admissions()
            beat()
            self._stopping.wait(_ADMISSION_INTERVAL_S)

    def recompute_admissions(self) -> None:
        agents = agent_views(self.caches, self._hub, dict(self._cordoned_since), self._leading_since)
        items = self._work_items()
        with self._lock:
            previous = self._admissions
        admitted = {a.key: a for a in admit(items, node_states(agents), self.config, previous.values())}
        with self._lock:
            newly = [key for key, admission in admitted.items() if self._admissions.get(key) != admission]
            before = {agent.node: agent.cordoned for agent in self._agents}
            self._admissions, self._agents = admitted, agents
        for key in newly:
            self._queue.add(key, urgent=True)
        self._metrics.wakeups.labels("admission").inc(len(newly))
        # A reconcile woken by the Node event itself may have run on the agent views of the pass
        # before: the CRs on a node whose cordon just changed are reconciled again on these.
        for agent in agents:
            if before.get(agent.node, agent.cordoned) != agent.cordoned:
                self._enqueue_on_node(agent.node)

    def _work_items(self) -> tuple[WorkItem, ...]:
        crs = ((kind, obj) for kind in _CR_KINDS for obj in self.caches.items(kind))
        return work_items(crs, self.caches, self._hub, self._clock.now(), self._views)

    # -- nodes, drains and gauges -------------------------------------------------------------------

    def _track_cordons(self) -> None:
        now = self._clock.now()
        cordoned = {
            str(n["metadata"]["name"])
            for n in self.caches.items("Node")
            if (n.get("spec") or {}).get("unschedulable")
        }
        with self._lock:
            for node in cordoned - set(self._cordoned_since):
                self._cordoned_since[node] = now
            for node in set(self._cordoned_since) - cordoned:
                del self._cordoned_since[node]
                self._drained.discard(node)
            new_drains = cordoned - self._drained
            self._drained |= new_drains
        grace = self.config.drain_grace_period.total_seconds()
        for node in sorted(new_drains):
            log.info("node cordoned: draining its agent", node=node, grace_s=grace)
            self._hub.drain(node, grace, "node cordoned")
            self._enqueue_on_node(node)
        if new_drains:
            self._admission_dirty.set()

    def _update_gauges(self) -> None:
        phases = Counter(
            (kind, str((obj.get("status") or {}).get("phase") or "New"))
            for kind in _CR_KINDS
            for obj in self.caches.items(kind)
            if is_ours(obj)
        )
        for kind in _CR_KINDS:
            for phase in (
                "New",
                "Accepted",
                "Prepared",
                "InProgress",
                "Canceling",
                "Canceled",
                "Completed",
                "Failed",
            ):
                self._metrics.items.labels(kind, phase).set(phases.get((kind, phase), 0))
        items = self._work_items()
        stages = Counter(item.stage.value for item in items)
        for stage in ("waiting", "preparing", "prepared", "running"):
            self._metrics.queue.labels(stage).set(stages.get(stage, 0))


__all__ = ["Controller", "InformerCaches"]
