"""Building ``Observed`` for one CR from the informer caches and the hub: pure, no I/O.

The caches are read through the tiny ``Caches`` protocol (plain dicts keyed by kind), so the same
code serves the controller and the unit tests.
"""

from __future__ import annotations

import threading
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any, Protocol

from barge.control.naming import AGENT_RECONNECT_WINDOW_S, DATAMOVER, EXPOSER_BUDGET, LABEL_OWNER_UID
from coordinator.config import CoordinatorConfig
from coordinator.exposer import owning_pod_uid
from coordinator.model import (
    DATA_UPLOAD,
    SOURCE_CONTENT_ANNOTATION,
    TERMINAL_PHASES,
    AgentView,
    AssignmentView,
    ContentView,
    CrView,
    ExposureView,
    Observed,
    PodView,
    PvcView,
    SnapshotView,
)
from coordinator.scheduler import ItemKey, NodeState, WorkItem, work_item

Obj = Mapping[str, Any]

POD, PVC, PV = "Pod", "PersistentVolumeClaim", "PersistentVolume"
PDB = "PodDisruptionBudget"
VS, VSC = "VolumeSnapshot", "VolumeSnapshotContent"
NODE, BSL, STORAGE_CLASS = "Node", "BackupStorageLocation", "StorageClass"


class Caches(Protocol):
    def get(self, kind: str, namespace: str | None, name: str) -> Obj | None: ...

    def items(self, kind: str) -> Iterable[Obj]: ...


class HubView(Protocol):
    def assignment(self, assignment_id: str) -> AssignmentView | None: ...

    def released(self, assignment_id: str) -> bool: ...

    def connected(self, node: str) -> bool: ...

    def disconnected_since(self, node: str) -> datetime | None: ...

    def connected_since(self, node: str) -> datetime | None: ...


@dataclass(frozen=True)
class Context:
    """What every Observed of one pass shares."""

    now: datetime
    config: CoordinatorConfig
    coordinator_id: str
    agents: tuple[AgentView, ...]
    leading_since: datetime | None = None  # when this leader term's controller started


def is_ours(cr: Obj) -> bool:
    return (cr.get("spec") or {}).get("datamover") == DATAMOVER


def key_of(cr: Obj) -> ItemKey:
    meta = cr.get("metadata") or {}
    return ItemKey(str(cr.get("kind", "")), str(meta.get("namespace", "")), str(meta.get("name", "")))


def agent_views(
    caches: Caches,
    hub: HubView,
    cordoned_since: Mapping[str, datetime],
    leading_since: datetime | None = None,
) -> tuple[AgentView, ...]:
    """``leading_since``: when this leader's term began; an agent not seen since then is given
    until ``AGENT_RECONNECT_WINDOW_S`` after it to reconnect (``AgentView.reconnect_by``)."""
    views = []
    window = timedelta(seconds=AGENT_RECONNECT_WINDOW_S)
    for node in caches.items(NODE):
        name = str(node["metadata"]["name"])
        cordoned = bool((node.get("spec") or {}).get("unschedulable"))
        unseen = not hub.connected(name) and hub.disconnected_since(name) is None
        views.append(
            AgentView(
                node=name,
                connected=hub.connected(name),
                disconnected_since=hub.disconnected_since(name),
                connected_since=hub.connected_since(name),
                cordoned=cordoned,
                cordoned_since=cordoned_since.get(name) if cordoned else None,
                labels=tuple(sorted((node["metadata"].get("labels") or {}).items())),
                reconnect_by=leading_since + window if unseen and leading_since else None,
            )
        )
    return tuple(sorted(views, key=lambda a: a.node))


def observe(
    cr_obj: Obj, caches: Caches, hub: HubView, context: Context, admitted: bool, *, cr: CrView | None = None
) -> Observed:
    """``cr``: ``cr_obj``'s view when the caller has it (parsed again otherwise)."""
    cr = cr or CrView.from_object(cr_obj)
    exposure = exposure_view(caches, cr)
    snapshot = SnapshotView()
    source_content = source_pvc = target_pvc = None
    if cr.is_upload:
        vs = caches.get(VS, cr.source_namespace, cr.volume_snapshot)
        bound = str(((vs or {}).get("status") or {}).get("boundVolumeSnapshotContentName") or "")
        # Once the source VolumeSnapshot is gone, the clone content still names the source content.
        content_name = bound if vs is not None else exposure.source_content
        vsc = caches.get(VSC, None, content_name) if content_name else None
        snapshot = SnapshotView.from_objects(vs, vsc)
        source_content = ContentView.from_object(vsc) if vsc is not None else None
        source_pvc = _pvc_view(caches, cr.source_namespace, cr.source_pvc)
    else:
        target_pvc = _pvc_view(caches, cr.target_namespace, cr.target_pvc)
    return Observed(
        now=context.now,
        cr=cr,
        config=context.config,
        coordinator_id=context.coordinator_id,
        exposure=exposure,
        snapshot=snapshot,
        source_content=source_content,
        source_pvc=source_pvc,
        target_pvc=target_pvc,
        bsl_present=caches.get(BSL, cr.namespace, cr.backup_storage_location) is not None,
        agents=context.agents,
        assignment=hub.assignment(cr.uid),
        admitted=admitted,
        leading_since=context.leading_since,
    )


def exposure_view(caches: Caches, cr: CrView) -> ExposureView:
    def owned(obj: Obj | None) -> Obj | None:
        return obj if _owned_by(obj, cr) else None

    vsc = owned(caches.get(VSC, None, cr.name)) if cr.is_upload else None
    vs = owned(caches.get(VS, cr.namespace, cr.name)) if cr.is_upload else None
    pvc = owned(caches.get(PVC, cr.namespace, cr.name))
    pod = owned(caches.get(POD, cr.namespace, cr.name))
    own_budget = owned(caches.get(PDB, cr.namespace, cr.name))
    parts = [p for p in (vsc, vs, pvc, pod, own_budget) if p is not None]
    pv_name = str(((pvc or {}).get("spec") or {}).get("volumeName") or "")
    vsc_spec, vsc_status = (vsc or {}).get("spec") or {}, (vsc or {}).get("status") or {}
    vs_status = (vs or {}).get("status") or {}
    handle = str((vsc_spec.get("source") or {}).get("snapshotHandle") or "")
    vsc_annotations = ((vsc or {}).get("metadata") or {}).get("annotations") or {}
    return ExposureView(
        snapshot_content=vsc is not None,
        snapshot=vs is not None,
        pvc=pvc is not None,
        pv_name=pv_name,
        pv_claim=_claim_of(caches.get(PV, None, pv_name) if pv_name else None),
        pod=PodView.from_object(pod) if pod is not None else None,
        terminating=any((p.get("metadata") or {}).get("deletionTimestamp") for p in parts)
        or _claim_orphaned(pvc, pod),
        snapshot_content_deleting=bool(((vsc or {}).get("metadata") or {}).get("deletionTimestamp")),
        disruption_budget=caches.get(PDB, cr.namespace, EXPOSER_BUDGET) is not None,
        own_budget=own_budget is not None,
        snapshot_handle=handle,
        snapshot_driver=str(vsc_spec.get("driver") or ""),
        restore_size=int(vsc_status.get("restoreSize") or 0),
        snapshot_ready=bool(
            handle
            and vs_status.get("readyToUse")
            and vs_status.get("boundVolumeSnapshotContentName") == cr.name
            and vsc_status.get("snapshotHandle") == handle
        ),
        source_content=str(vsc_annotations.get(SOURCE_CONTENT_ANNOTATION) or ""),
    )


def _claim_of(pv: Obj | None) -> str:
    claim = ((pv or {}).get("spec") or {}).get("claimRef") or {}
    return f"{claim.get('namespace', '')}/{claim.get('name', '')}" if claim else ""


def _pvc_view(caches: Caches, namespace: str, name: str) -> PvcView | None:
    if not name:
        return None
    pvc = caches.get(PVC, namespace, name)
    if pvc is None:
        return None
    storage_class = (pvc.get("spec") or {}).get("storageClassName") or ""
    sc = caches.get(STORAGE_CLASS, None, storage_class) if storage_class else None
    wait = (sc or {}).get("volumeBindingMode") == "WaitForFirstConsumer"
    return PvcView.from_object(pvc, wait_for_first_consumer=wait)


def read_state(kind: str, obj: Obj) -> object:
    """What ``observe`` and ``work_items`` read of an object of a kind a CR's exposure or source
    is made of (Pod, claim, volume, snapshot, content, budget), as a comparable value.

    An event that leaves this value as it was cannot change a decision, so it wakes no CR: at 500
    uploads those kinds' events were two thirds of the coordinator's wakeups, most of them a PV's
    status phase, a pod's conditions or a snapshot controller's bookkeeping. Kept complete by a
    test that changes every field of real-shaped objects and checks that any change ``observe``
    sees changes this value too."""
    meta, spec = obj.get("metadata") or {}, obj.get("spec") or {}
    status = obj.get("status") or {}
    common = (
        str(meta.get("uid") or ""),
        bool(meta.get("deletionTimestamp")),
        tuple(sorted((str(k), str(v)) for k, v in (meta.get("labels") or {}).items())),
    )
    if kind == POD:
        return common, PodView.from_object(obj)
    if kind == PVC:
        requests = (spec.get("resources") or {}).get("requests") or {}
        selected = (meta.get("annotations") or {}).get("volume.kubernetes.io/selected-node")
        fields = ("storageClassName", "volumeMode", "volumeName")
        claimed = tuple(str(spec.get(f) or "") for f in fields), tuple(spec.get("accessModes") or ())
        return common, claimed, str(requests.get("storage", "")), str(selected or ""), owning_pod_uid(obj)
    if kind == PV:
        return common, _claim_of(obj)
    if kind == VS:
        error = (status.get("error") or {}).get("message", "")
        bound = str(status.get("boundVolumeSnapshotContentName") or "")
        return common, bool(status.get("readyToUse")), bound, error
    if kind == VSC:
        annotations = meta.get("annotations") or {}
        ref = spec.get("volumeSnapshotRef") or {}
        return (
            common,
            ContentView.from_object(obj),
            str((spec.get("source") or {}).get("snapshotHandle") or ""),
            str(status.get("snapshotHandle") or ""),
            str(spec.get("driver") or ""),
            str(status.get("restoreSize") or ""),
            str(annotations.get(SOURCE_CONTENT_ANNOTATION) or ""),
            (str(ref.get("namespace") or ""), str(ref.get("name") or "")),  # whom it wakes
        )
    return common  # PodDisruptionBudget: only that it exists


# -- the scheduler's view of all items ----------------------------------------------------------


class CrViews:
    """``CrView``s by CR, built again only when the CR's resourceVersion changes.

    The admission pass reads every live CR several times a second; parsing each one afresh
    (timestamps, durations, labels) was most of its cost in a burst of thousands."""

    def __init__(self) -> None:
        self._views: dict[ItemKey, tuple[str, CrView]] = {}
        self._lock = threading.Lock()

    def view(self, kind: str, obj: Obj) -> CrView:
        meta = obj.get("metadata") or {}
        key = ItemKey(kind, str(meta.get("namespace", "")), str(meta.get("name", "")))
        version = str(meta.get("resourceVersion") or "")
        with self._lock:
            known = self._views.get(key)
        if known is not None and version and known[0] == version:
            return known[1]
        view = CrView.from_object(obj, kind)
        with self._lock:
            self._views[key] = (version, view)
        return view

    def keep_only(self, keys: set[ItemKey]) -> None:
        """Forget the views of CRs not in ``keys`` (deleted, or final)."""
        with self._lock:
            for key in [k for k in self._views if k not in keys]:
                del self._views[key]


def work_items(
    crs: Iterable[tuple[str, Obj]], caches: Caches, hub: HubView, now: datetime, views: CrViews
) -> tuple[WorkItem, ...]:
    """The scheduler's view of every live CR Barge serves (``crs``: (kind, object) pairs).

    Final or deleted CRs hold nothing and wait for nothing, so they are left out before any
    parsing: after a burst they are most of the cache. So are CRs the hub let go, whatever an
    older cache copy still shows."""
    items = []
    live: set[ItemKey] = set()
    for kind, obj in crs:
        if not is_ours(obj) or _finished(obj) or hub.released(str(obj["metadata"].get("uid") or "")):
            continue
        cr = views.view(kind, obj)
        live.add(ItemKey(kind, cr.namespace, cr.name))
        pod = caches.get(POD, cr.namespace, cr.name)
        pod_node = str(((pod or {}).get("spec") or {}).get("nodeName") or "") if _owned_by(pod, cr) else ""
        latest = hub.assignment(cr.uid)
        items.append(work_item(cr, now, pod_node, latest is not None and latest.may_run))
    views.keep_only(live)
    return tuple(items)


def _finished(obj: Obj) -> bool:
    """Final or being deleted: ``scheduler.Stage.DONE``, which the scheduler never looks at."""
    phase = (obj.get("status") or {}).get("phase")
    return phase in TERMINAL_PHASES or bool((obj.get("metadata") or {}).get("deletionTimestamp"))


def _claim_orphaned(pvc: Obj | None, pod: Obj | None) -> bool:
    """The exposure's claim belongs to a pod that is gone: the garbage collector is deleting it."""
    owner = owning_pod_uid(pvc) if pvc is not None else ""
    return bool(owner) and owner != str(((pod or {}).get("metadata") or {}).get("uid") or "")


def _owned_by(obj: Obj | None, cr: CrView) -> bool:
    labels = ((obj or {}).get("metadata") or {}).get("labels") or {}
    return obj is not None and labels.get(LABEL_OWNER_UID) == cr.uid


def node_states(agents: Iterable[AgentView]) -> tuple[NodeState, ...]:
    return tuple(NodeState(a.node, a.labels, a.cordoned, a.connected) for a in agents)


__all__ = [
    "DATA_UPLOAD",
    "Caches",
    "Context",
    "CrViews",
    "HubView",
    "agent_views",
    "observe",
    "read_state",
    "work_items",
]
