"""Carrying out ``decide``'s actions through the Kubernetes adapter and the hub.

Each action is idempotent (creating what exists, deleting what is gone, re-sending a cancel are
harmless), so a crash between two actions is repaired by the next reconcile. Phase writes are
guarded: a write happens only if the CR is still in the phase ``decide`` saw, so a decision made on
a stale cache can never overwrite what an agent wrote meanwhile.
"""

from __future__ import annotations

import threading
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

import structlog

from barge.clock import Clock
from barge.control.naming import ASSIGNMENT_ANNOTATION, FINALIZER, LABEL_OWNER_UID, Fence
from barge.errors import NotFound, TemporaryError
from barge.kube.resources import (
    PERSISTENT_VOLUME,
    PERSISTENT_VOLUME_CLAIM,
    POD,
    POD_DISRUPTION_BUDGET,
    VOLUME_SNAPSHOT,
    VOLUME_SNAPSHOT_CONTENT,
    Resource,
    resource_for,
)
from coordinator.exposer import Manifest, budget_outdated, claim_owned_by, manifests, owning_pod_uid
from coordinator.metrics import CoordinatorMetrics
from coordinator.model import (
    REEXPOSED_AT_ANNOTATION,
    REEXPOSURES_ANNOTATION,
    Action,
    Assign,
    BindRestoredVolume,
    CreateExposure,
    CrView,
    DeleteExposure,
    DeleteSourceSnapshot,
    MarkReexposure,
    Phase,
    RecordEvent,
    ReleaseSourceSnapshot,
    RemoveFinalizer,
    Requeue,
    RevokeAssignment,
    SetPhase,
    StopAssignment,
    content_handle,
    format_timestamp,
    parse_timestamp,
)
from coordinator.ownwrites import OwnWrites
from coordinator.ports import AgentCommands, CachedLookup, ClusterObjects, CrWrites, EventSink

log = structlog.get_logger("barge.coordinator")

Obj = dict[str, Any]
ORIGINAL_RECLAIM_ANNOTATION = "barge.io/original-reclaim-policy"
DYNAMIC_PV_RESTORE_LABEL = "velero.io/dynamic-pv-restore"
_ASSIGN_RETRY = timedelta(seconds=2)
_RELEASE_RETRY = timedelta(seconds=5)


@dataclass(frozen=True)
class Executed:
    """What carrying out one reconcile's actions asks of the work queue (not to be confused with
    ``messages.Outcome``, how an agent's assignment ended)."""

    requeue_after: timedelta | None


class Executor:
    def __init__(
        self,
        *,
        objects: ClusterObjects,
        status: CrWrites,
        hub: AgentCommands,
        recorder: EventSink,
        metrics: CoordinatorMetrics,
        clock: Clock,
        cached: CachedLookup | None = None,
        own: OwnWrites | None = None,
    ) -> None:
        """``cached``: the informers' view of an object (``None`` when absent), so deleting what is
        already gone costs no request; without it every delete is preceded by a GET. ``own``: where
        each write's answer is kept until the informers show it (``coordinator.ownwrites``)."""
        self._cached = cached
        self._own = own
        self._shared_parts = threading.Lock()  # the namespace's one budget: created once, not per worker
        self._objects = objects
        self._status = status
        self._hub = hub
        self._recorder = recorder
        self._metrics = metrics
        self._clock = clock
        self._local = threading.local()  # the CR as last read or written by this worker's execute

    def execute(self, cr_obj: Mapping[str, Any], cr: CrView, actions: tuple[Action, ...]) -> Executed:
        """Run ``actions`` in order; stop at the first that cannot proceed (the next pass re-decides).

        The CR's writes start from ``cr_obj`` (the informer's copy) and then from what each write
        returned, instead of a GET before every write; a stale copy costs one 409 and a re-read."""
        self._local.current = dict(cr_obj)
        self._local.began = _version(cr_obj)
        requeue: timedelta | None = None
        for action in actions:
            later = self._one(cr_obj, cr, action)
            if later is not None:
                requeue = later if requeue is None else min(requeue, later)
                if not isinstance(action, Requeue):
                    break
        return Executed(requeue)

    def _one(self, cr_obj: Mapping[str, Any], cr: CrView, action: Action) -> timedelta | None:  # noqa: PLR0912 - one arm per action
        match action:
            case RemoveFinalizer():
                self._metadata(cr, _without_finalizer)
                self._let_go(cr, cr.phase)
            case SetPhase():
                return self._set_phase(cr, action)
            case CreateExposure():
                self._create_exposure(action)
            case DeleteExposure():
                self._delete_exposure(cr, action)
            case ReleaseSourceSnapshot():
                return self._release_source(cr, action)
            case DeleteSourceSnapshot():
                self._delete_source(action)
            case Assign():
                return self._assign(cr, action)
            case StopAssignment():
                self._hub.cancel(cr.uid, action.node, action.epoch, action.reason, action.hand_off)
            case RecordEvent():
                if action.type == "Warning":
                    self._recorder.record(dict(cr_obj), "Warning", action.reason, action.message)
                else:
                    self._recorder.record(dict(cr_obj), "Normal", action.reason, action.message)
            case Requeue():
                return action.after
            case BindRestoredVolume():
                self._bind_restored_volume(cr, action)
            case RevokeAssignment():
                self._metadata(cr, _annotate({ASSIGNMENT_ANNOTATION: f"{action.epoch}:-"}))
            case MarkReexposure():
                self._metrics.reassignments.labels("reexposed").inc()
                self._metadata(
                    cr,
                    _annotate(
                        {
                            REEXPOSURES_ANNOTATION: str(action.count),
                            REEXPOSED_AT_ANNOTATION: format_timestamp(action.at),
                        }
                    ),
                )
        return None

    # -- phases and metadata ----------------------------------------------------------------------

    def _set_phase(self, cr: CrView, action: SetPhase) -> timedelta | None:
        patch = action.status_patch()["status"]
        wrote = False

        def mutate(status: Obj) -> Obj | None:
            nonlocal wrote  # as of the last attempt: one that lost a race is retried on a fresh read
            wrote = (status.get("phase") or "New") == cr.phase.value
            # Otherwise someone (an agent, or this coordinator on a newer copy) moved it on: decide
            # again from fresh state.
            return _merge(status, patch) if wrote else None

        before = self._current()
        self._local.current = self._status.update_status(
            cr.kind, cr.namespace, cr.name, mutate, current=before, metadata=_metadata_of(action)
        )
        self._wrote_cr(cr, before)
        if not wrote:
            return timedelta(0)
        if action.remove_finalizer:
            self._let_go(cr, action.phase)
        self._metrics.transitions.labels(cr.kind, action.phase.value).inc()
        log.info("phase", phase=action.phase.value, message=action.message, previous=cr.phase.value)
        return None

    def _let_go(self, cr: CrView, phase: Phase) -> None:
        """The finalizer is gone: the hub forgets the CR, and its duration is observed once per CR
        (whoever wrote the final phase, an agent writes an upload's Completed itself, the
        coordinator removes the finalizer exactly once)."""
        self._hub.forget(cr.uid)
        if phase.is_terminal and cr.created_at is not None:
            seconds = (self._clock.now() - cr.created_at).total_seconds()
            self._metrics.duration.labels(cr.kind, phase.value).observe(max(0.0, seconds))

    def _metadata(self, cr: CrView, mutate: Any) -> None:
        before = self._current()
        self._local.current = self._status.update_metadata(
            cr.kind, cr.namespace, cr.name, mutate, current=before
        )
        self._wrote_cr(cr, before)

    def _wrote_cr(self, cr: CrView, before: Obj | None) -> None:
        """Keep the CR as written over the cache copy it replaced (and the one this reconcile began
        from), so the reconcile the write itself wakes does not decide on the older copy."""
        written = self._current()
        if self._own is not None and written is not None:
            self._own.replaced(cr.kind, written, (_version(before), self._local.began))

    def _current(self) -> Obj | None:
        current: Obj | None = getattr(self._local, "current", None)
        return current

    def _assign(self, cr: CrView, action: Assign) -> timedelta | None:
        if not self._hub.connected(action.node):
            return _ASSIGN_RETRY
        fence = Fence(action.epoch, action.node).render()
        self._metadata(cr, _annotate({ASSIGNMENT_ANNOTATION: fence}))
        if action.epoch > 1:
            self._metrics.reassignments.labels("new_epoch").inc()
        if not self._hub.assign(action.node, action.assignment):
            return _ASSIGN_RETRY
        log.info("assigned", node=action.node, epoch=action.epoch)
        return None

    # -- exposure ---------------------------------------------------------------------------------

    def _create_exposure(self, action: CreateExposure) -> None:
        """Create the parts the cache does not show (a part created meanwhile is AlreadyExists: fine);
        bring the namespace's budget up to date if an earlier version made it."""
        pod: Mapping[str, Any] | None = None
        for manifest in manifests(action.plan).in_creation_order():
            resource = resource_for(manifest["kind"])
            if resource == POD_DISRUPTION_BUDGET:
                # Shared by every exposure in the namespace: the first of a burst's workers creates
                # it and the others find it (unserialised, each of them sent a create).
                with self._shared_parts:
                    self._ensure_budget(manifest)
                continue
            cached = self._lookup(resource, manifest)
            if cached is None:
                claim = resource == PERSISTENT_VOLUME_CLAIM and pod is not None
                body = claim_owned_by(manifest, pod) if claim and pod is not None else manifest
                cached = self._create(resource, body)
            if resource == POD:
                pod = cached  # the claim, created after it, is the pod's

    def _lookup(self, resource: Resource, manifest: Manifest) -> Mapping[str, Any] | None:
        """The part as the cache shows it (None: absent, or no cache to ask)."""
        meta = manifest["metadata"]
        return self._cached(resource, meta.get("namespace"), meta["name"]) if self._cached else None

    def _create(self, resource: Resource, body: Manifest) -> Mapping[str, Any]:
        """Create a part (one created meanwhile is AlreadyExists: fine), kept as our own write."""
        created = self._objects.create(resource, body, exist_ok=True)
        if self._own is not None:
            self._own.created(resource.kind, created)
        return created

    def _ensure_budget(self, manifest: Manifest) -> None:
        """Create the budget, or bring it up to date if an earlier version made it."""
        cached = self._lookup(POD_DISRUPTION_BUDGET, manifest)
        if cached is None:
            self._create(POD_DISRUPTION_BUDGET, manifest)
        elif budget_outdated(cached):
            namespace, name = manifest["metadata"]["namespace"], manifest["metadata"]["name"]
            self._objects.patch(POD_DISRUPTION_BUDGET, namespace, name, {"spec": manifest["spec"]})
            log.info("exposer budget brought up to date", namespace=namespace)

    def _delete_exposure(self, cr: CrView, action: DeleteExposure) -> None:
        parts: list[tuple[Resource, str | None]] = [
            (POD, cr.namespace),
            (POD_DISRUPTION_BUDGET, cr.namespace),  # after the pod: it must never be evictable
            (PERSISTENT_VOLUME_CLAIM, cr.namespace),
        ]
        if cr.is_upload and action.snapshot:
            parts.append((VOLUME_SNAPSHOT, cr.namespace))  # its Delete-policy content follows
        if cr.is_upload and action.snapshot_content:
            parts.append((VOLUME_SNAPSHOT_CONTENT, None))
        for resource, namespace in parts:
            self._delete_owned(resource, namespace, cr.name, cr.uid)

    def _release_source(self, cr: CrView, action: ReleaseSourceSnapshot) -> timedelta | None:
        """``ReleaseSourceSnapshot``'s steps. Nothing of the source is deleted unless, read just now,
        this CR's clone holds the handle and the source content is Retain (or already gone)."""
        clone = self._get(VOLUME_SNAPSHOT_CONTENT, None, action.clone_content)
        clone_source = ((clone or {}).get("spec") or {}).get("source") or {}
        clone_handle = str(clone_source.get("snapshotHandle") or "")
        labels = ((clone or {}).get("metadata") or {}).get("labels") or {}
        ours = labels.get(LABEL_OWNER_UID) == cr.uid
        if clone_handle != action.snapshot_handle or not ours:
            log.warning(
                "not releasing the source snapshot: the clone does not hold its handle",
                clone=action.clone_content,
                handle=action.snapshot_handle,
                clone_handle=clone_handle or None,
            )
            return _RELEASE_RETRY
        content = self._get(VOLUME_SNAPSHOT_CONTENT, None, action.content)
        if content is not None:
            if content_handle(content) != action.snapshot_handle:
                log.warning(
                    "not releasing the source snapshot: its content holds another handle",
                    content=action.content,
                    handle=content_handle(content),
                )
                return _RELEASE_RETRY
            if (content.get("spec") or {}).get("deletionPolicy") != "Retain":
                patch = {
                    "metadata": {"resourceVersion": content["metadata"]["resourceVersion"]},
                    "spec": {"deletionPolicy": "Retain"},
                }
                before = content
                content = self._objects.patch(VOLUME_SNAPSHOT_CONTENT, None, action.content, patch)
                self._replaced(VOLUME_SNAPSHOT_CONTENT, None, content, before)
                if (content.get("spec") or {}).get("deletionPolicy") != "Retain":
                    raise TemporaryError(
                        f"VolumeSnapshotContent {action.content} did not take deletionPolicy Retain"
                    )
        source = self._get(VOLUME_SNAPSHOT, action.namespace, action.snapshot)
        if source is not None and not _deleting(source):
            bound = ((source.get("status") or {}).get("boundVolumeSnapshotContentName")) or ""
            if bound == action.content:
                self._delete(VOLUME_SNAPSHOT, action.namespace, action.snapshot, source["metadata"]["uid"])
            else:
                log.warning(
                    "not deleting the source VolumeSnapshot: it is bound to another content",
                    snapshot=f"{action.namespace}/{action.snapshot}",
                    bound=bound or None,
                )
        if content is not None and not _deleting(content):  # a release cut short may have asked already
            self._delete(VOLUME_SNAPSHOT_CONTENT, None, action.content, content["metadata"]["uid"])
        log.info(
            "source snapshot released to the clone",
            snapshot=f"{action.namespace}/{action.snapshot}",
            content=action.content,
            clone=action.clone_content,
        )
        return None

    def _delete_source(self, action: DeleteSourceSnapshot) -> None:
        if self._delete(VOLUME_SNAPSHOT, action.namespace, action.name, None):
            log.info("source VolumeSnapshot deleted", snapshot=f"{action.namespace}/{action.name}")

    def _delete(self, resource: Resource, namespace: str | None, name: str, uid: str | None) -> bool:
        """Delete (by uid when given) and remember it: the cache may show the object a while yet."""
        deleted = self._objects.delete(resource, namespace, name, uid=uid)
        if self._own is not None:
            self._own.deleted(resource.kind, namespace, name, uid)
        return deleted

    def _replaced(self, resource: Resource, namespace: str | None, written: Obj, before: Obj | None) -> None:
        """Remember ``written`` over the copies a stale cache may still show: ``before`` (what the
        write was computed from) and the cache's own."""
        if self._own is None or self._cached is None:
            return
        name = written["metadata"]["name"]
        cached = self._cached(resource, namespace, name)
        self._own.replaced(resource.kind, written, (_version(before), _version(cached)))

    def _get(self, resource: Resource, namespace: str | None, name: str) -> Obj | None:
        try:
            return self._objects.get(resource, namespace, name)
        except NotFound:
            return None

    def _delete_owned(self, resource: Resource, namespace: str | None, name: str, owner_uid: str) -> None:
        """Delete ``name`` if it is this owner's (by uid, so never a newer object of the same name).
        Read from the cache when there is one: an object it does not show yet (just created) is
        deleted by the reconcile its ADDED event triggers, or with its owner by the garbage collector.
        A VolumeSnapshotContent has no owner reference (it is cluster-scoped) and holds a storage
        snapshot: it is always read fresh."""
        if self._cached is not None and resource != VOLUME_SNAPSHOT_CONTENT:
            obj = self._cached(resource, namespace, name)
            if obj is None:
                return
        else:
            try:
                obj = self._objects.get(resource, namespace, name)
            except NotFound:
                return
        if (obj["metadata"].get("labels") or {}).get(LABEL_OWNER_UID) != owner_uid:
            return  # same name, not ours: never touch it
        if obj["metadata"].get("deletionTimestamp"):
            return  # already going (a pod's grace period, a claim's protection): asking again adds nothing
        if resource == PERSISTENT_VOLUME_CLAIM and owning_pod_uid(obj):
            return  # the garbage collector deletes it once its pod is gone (deleted just before)
        self._delete(resource, namespace, name, obj["metadata"]["uid"])

    def _bind_restored_volume(self, cr: CrView, action: BindRestoredVolume) -> None:
        """Velero's hand-over: keep the PV, drop the temporary claim, point the PV at the target PVC."""
        pv = self._objects.get(PERSISTENT_VOLUME, None, action.pv_name)
        target = self._objects.get(PERSISTENT_VOLUME_CLAIM, action.target_namespace, action.target_pvc)
        spec, meta = pv.get("spec") or {}, pv["metadata"]
        if _claims(pv, target):
            return  # handed over already (a reconcile on a cache that did not show it yet): the binder's turn
        original = (meta.get("annotations") or {}).get(ORIGINAL_RECLAIM_ANNOTATION)
        if original is None:
            policy = spec.get("persistentVolumeReclaimPolicy", "Delete")
            retained = self._objects.patch(
                PERSISTENT_VOLUME,
                None,
                action.pv_name,
                {
                    "metadata": {"annotations": {ORIGINAL_RECLAIM_ANNOTATION: policy}},
                    "spec": {"persistentVolumeReclaimPolicy": "Retain"},
                },
            )
            self._replaced(PERSISTENT_VOLUME, None, retained, pv)
            pv, original = retained, policy
        self._delete_owned(POD, cr.namespace, cr.name, cr.uid)
        self._delete_owned(PERSISTENT_VOLUME_CLAIM, cr.namespace, cr.name, cr.uid)
        selector = ((target.get("spec") or {}).get("selector") or {}).get("matchLabels") or {}
        claim = {
            "apiVersion": "v1",
            "kind": "PersistentVolumeClaim",
            "namespace": action.target_namespace,
            "name": action.target_pvc,
            "uid": target["metadata"]["uid"],
        }
        handed = self._objects.patch(
            PERSISTENT_VOLUME,
            None,
            action.pv_name,
            {
                "metadata": {"labels": dict(selector), "annotations": {ORIGINAL_RECLAIM_ANNOTATION: None}},
                "spec": {"claimRef": claim, "persistentVolumeReclaimPolicy": original},
            },
        )
        self._replaced(PERSISTENT_VOLUME, None, handed, pv)
        log.info(
            "restored volume handed over",
            pv=action.pv_name,
            pvc=f"{action.target_namespace}/{action.target_pvc}",
        )


def _version(obj: Mapping[str, Any] | None) -> str:
    return str(((obj or {}).get("metadata") or {}).get("resourceVersion") or "")


def _deleting(obj: Mapping[str, Any]) -> bool:
    return bool((obj.get("metadata") or {}).get("deletionTimestamp"))


def _claims(pv: Mapping[str, Any], target: Mapping[str, Any]) -> bool:
    """``pv``'s claimRef names ``target`` (by uid) and no hand-over is half done (the original
    reclaim policy is back)."""
    ref = (pv.get("spec") or {}).get("claimRef") or {}
    annotations = (pv.get("metadata") or {}).get("annotations") or {}
    return ref.get("uid") == target["metadata"]["uid"] and ORIGINAL_RECLAIM_ANNOTATION not in annotations


def _merge(status: Obj, patch: Mapping[str, Any]) -> Obj:
    """JSON-merge ``patch`` into ``status``: maps merge, ``None`` removes, everything else replaces."""
    merged = dict(status)
    for key, value in patch.items():
        if value is None:
            merged.pop(key, None)
        elif isinstance(value, Mapping) and isinstance(merged.get(key), Mapping) and key != "dataMoverResult":
            merged[key] = _merge(dict(merged[key]), value)
        else:
            merged[key] = value
    return merged


def _metadata_of(action: SetPhase) -> Any:
    """The metadata change that goes with ``action``'s phase (None: none)."""
    if action.remove_finalizer:
        return _without_finalizer
    if not action.add_finalizer and not action.annotations:
        return None
    annotate = _annotate(dict(action.annotations))

    def mutate(meta: Obj) -> Obj | None:
        finalizers = list(meta.get("finalizers") or [])
        add = action.add_finalizer and FINALIZER not in finalizers
        annotated = annotate(meta)
        if not add and annotated is None:
            return None
        changed = annotated or dict(meta)
        return {**changed, "finalizers": [*finalizers, FINALIZER]} if add else changed

    return mutate


def _without_finalizer(meta: Obj) -> Obj | None:
    finalizers = list(meta.get("finalizers") or [])
    if FINALIZER not in finalizers:
        return None
    return {**meta, "finalizers": [f for f in finalizers if f != FINALIZER]}


def _annotate(values: Mapping[str, str]) -> Any:
    def mutate(meta: Obj) -> Obj | None:
        annotations = dict(meta.get("annotations") or {})
        if all(annotations.get(k) == v for k, v in values.items()):
            return None
        return {**meta, "annotations": {**annotations, **values}}

    return mutate


__all__ = ["Executed", "Executor", "Phase", "parse_timestamp"]
