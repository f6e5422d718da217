"""What the coordinator's pure decision logic sees (``Observed``) and asks for (``Action``).

The controller builds one ``Observed`` per DataUpload/DataDownload from its informer caches and the
hub's view of the agents, calls ``coordinator.decide.decide(observed)`` and executes the returned
actions **in order** through its adapters, stopping at the first that fails (the next reconcile
re-decides from fresh state). Everything here is a frozen value; nothing does I/O.

How the controller fills ``Observed`` (one CR):

* ``cr``: ``CrView.from_object(cr_dict)``.
* ``exposure``: the objects named ``<cr-name>`` that Barge created (see ``coordinator.exposer``):
  clone VolumeSnapshotContent/VolumeSnapshot (uploads; with what the clone content says: its
  handle, readiness, size and the source content it was cloned from), the PVC (and the PV it is
  bound to), the pod (``PodView.from_object``) and its PodDisruptionBudget. ``terminating`` if any
  of them has a deletionTimestamp.
* ``snapshot`` (uploads): ``SnapshotView.from_objects(volume_snapshot, its_content)`` for
  ``spec.csiSnapshot.volumeSnapshot`` in ``spec.sourceNamespace`` (``None`` dicts when absent).
* ``source_content`` (uploads): ``ContentView.from_object`` of the source VolumeSnapshotContent:
  the one the source VolumeSnapshot is bound to or, once that snapshot is gone, the one the clone
  content's ``SOURCE_CONTENT_ANNOTATION`` names (``None`` when absent).
* ``source_pvc`` (uploads, for the volume mode) / ``target_pvc`` (downloads): ``PvcView.from_object``.
* ``bsl_present``: whether BackupStorageLocation ``spec.backupStorageLocation`` exists in the CR's
  namespace.
* ``agents``: one ``AgentView`` per node the hub or the node informer knows about.
* ``assignment``: the hub's record for this CR's assignment (latest epoch), or ``None``.
* ``admitted``: ``True`` if ``coordinator.scheduler.admit`` admitted this CR in this pass.
* ``leading_since``: when this coordinator's leader term (its controller) began.

How to execute the actions: see each class's docstring. Actions are idempotent by design (creating
something that exists, deleting something absent, re-sending a cancel are harmless).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from enum import Enum, StrEnum
from typing import Any

from barge.control import messages
from barge.control.messages import VolumeMode
from barge.control.naming import ASSIGNMENT_ANNOTATION, DATAMOVER, FINALIZER, Fence
from barge.errors import InvalidInput
from coordinator.config import (
    CoordinatorConfig,
    LabelSelector,
    PodResources,
    format_go_duration,
    parse_go_duration,
)

DATA_UPLOAD = "DataUpload"
DATA_DOWNLOAD = "DataDownload"
DEFAULT_OPERATION_TIMEOUT = timedelta(hours=4)

# Annotations the coordinator keeps on the CR (main resource) to survive its own restarts.
REEXPOSURES_ANNOTATION = "barge.io/reexposures"  # how many times the exposure was rebuilt
REEXPOSED_AT_ANNOTATION = "barge.io/reexposed-at"  # when (RFC 3339): restarts the prepare timer
# The seed DataUpload CRD has no status.acceptedTimestamp (its structural schema prunes it), so the
# acceptance time is also kept here: the prepare and operation timeouts count from it.
ACCEPTED_AT_ANNOTATION = "barge.io/accepted-at"
# Label on exposer pods: which exposure generation (= the reexposure count) they belong to.
GENERATION_LABEL = "barge.io/exposure-generation"
# Annotation on the clone VolumeSnapshotContent: the source content it was cloned from, so the source
# can still be found (and released) after the source VolumeSnapshot that named it is gone.
SOURCE_CONTENT_ANNOTATION = "barge.io/source-volumesnapshotcontent"

BACKUP_NAME_LABEL = "velero.io/backup-name"
RESTORE_NAME_LABEL = "velero.io/restore-name"

Pairs = tuple[tuple[str, str], ...]


class Phase(StrEnum):
    NEW = "New"
    ACCEPTED = "Accepted"
    PREPARED = "Prepared"
    IN_PROGRESS = "InProgress"
    CANCELING = "Canceling"
    CANCELED = "Canceled"
    COMPLETED = "Completed"
    FAILED = "Failed"

    @property
    def is_terminal(self) -> bool:
        return self in (Phase.COMPLETED, Phase.FAILED, Phase.CANCELED)


TERMINAL_PHASES = frozenset(str(phase) for phase in Phase if phase.is_terminal)  # as status.phase says


def format_timestamp(moment: datetime) -> str:
    """RFC 3339 in UTC with second precision, as Kubernetes writes ``metav1.Time``."""
    return moment.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def parse_timestamp(text: str | None) -> datetime | None:
    if not text:
        return None
    try:
        parsed = datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        raise InvalidInput(f"{text!r} is not an RFC 3339 timestamp") from None
    return parsed if parsed.tzinfo else parsed.replace(tzinfo=UTC)


@dataclass(frozen=True)
class CrView:
    """A DataUpload or DataDownload, parsed. ``phase`` New also stands for an empty status."""

    kind: str
    namespace: str
    name: str
    uid: str
    datamover: str = DATAMOVER
    phase: Phase = Phase.NEW
    cancel: bool = False
    deleting: bool = False
    has_finalizer: bool = False
    created_at: datetime | None = None
    operation_timeout: timedelta = DEFAULT_OPERATION_TIMEOUT
    operation_timeout_problem: str = ""  # why spec.operationTimeout was replaced by the default
    accepted_at: datetime | None = None
    started_at: datetime | None = None
    completed_at: datetime | None = None  # status.completionTimestamp
    node: str = ""  # status.node
    fence: Fence | None = None
    reexposures: int = 0
    reexposed_at: datetime | None = None
    labels: Pairs = ()
    # spec, both kinds
    backup_storage_location: str = ""
    source_namespace: str = ""
    data_mover_config: Pairs = ()
    # spec, DataUpload
    snapshot_type: str = "CSI"
    volume_snapshot: str = ""
    storage_class: str = ""
    snapshot_class: str = ""
    driver: str = ""
    source_pvc: str = ""
    # spec, DataDownload
    snapshot_id: str = ""
    target_pvc: str = ""
    target_pv: str = ""
    target_namespace: str = ""
    # status.progress, for messages
    bytes_done: int = 0
    bytes_total: int = 0

    @property
    def is_upload(self) -> bool:
        return self.kind == DATA_UPLOAD

    @property
    def ref(self) -> str:
        return f"{self.kind} {self.namespace}/{self.name}"

    @property
    def group(self) -> str:
        """The Velero backup or restore this item belongs to: the unit of fairness."""
        labels = dict(self.labels)
        return labels.get(BACKUP_NAME_LABEL) or labels.get(RESTORE_NAME_LABEL) or ""

    @property
    def prepare_started_at(self) -> datetime | None:
        """When the current exposure attempt began: acceptance, or the latest re-exposure."""
        moments = [m for m in (self.accepted_at, self.reexposed_at) if m is not None]
        return max(moments) if moments else None

    @classmethod
    def from_object(cls, obj: Mapping[str, Any], kind: str = "") -> CrView:
        """Parse a DataUpload/DataDownload dict as the API returns it (camelCase keys).

        Raises ``InvalidInput`` only for an unknown ``status.phase``; a bad ``operationTimeout`` or
        fence annotation is tolerated (default timeout, reported via ``operation_timeout_problem``;
        fence ignored, the next assignment overwrites it). ``kind`` is needed for items of a list
        response, which carry no ``kind`` of their own."""
        return _cr_view(obj, kind)


class PodPhase(StrEnum):
    PENDING = "Pending"
    RUNNING = "Running"
    SUCCEEDED = "Succeeded"
    FAILED = "Failed"
    UNKNOWN = "Unknown"


@dataclass(frozen=True)
class PodView:
    uid: str
    phase: PodPhase
    node: str = ""
    deleting: bool = False
    generation: int = 0  # GENERATION_LABEL
    reason: str = ""  # status.reason/message, e.g. "Evicted: node low on ephemeral storage"

    @classmethod
    def from_object(cls, pod: Mapping[str, Any]) -> PodView:
        meta, status = pod.get("metadata") or {}, pod.get("status") or {}
        try:
            phase = PodPhase(status.get("phase") or "Pending")
        except ValueError:
            phase = PodPhase.UNKNOWN
        generation = str((meta.get("labels") or {}).get(GENERATION_LABEL, "0"))
        reason = ": ".join(p for p in (status.get("reason"), status.get("message")) if p)
        return cls(
            uid=str(meta.get("uid", "")),
            phase=phase,
            node=str((pod.get("spec") or {}).get("nodeName") or ""),
            deleting=bool(meta.get("deletionTimestamp")),
            generation=int(generation) if generation.isdigit() else -1,
            reason=reason,
        )


@dataclass(frozen=True)
class ExposureView:
    """The objects Barge created for one CR. The default value means: nothing exists."""

    snapshot_content: bool = False  # the cloned VolumeSnapshotContent (uploads)
    snapshot: bool = False  # the cloned VolumeSnapshot (uploads)
    pvc: bool = False
    pv_name: str = ""  # the PV the PVC is bound to ("" = not bound yet)
    pv_claim: str = ""  # that PV's spec.claimRef as "namespace/name" ("" = none or PV not seen)
    pod: PodView | None = None
    terminating: bool = False  # at least one of them has a deletionTimestamp
    snapshot_content_deleting: bool = False  # the clone content has a deletionTimestamp
    # The namespace's budget over exposer pods (exposer.EXPOSER_BUDGET) is in place: a drain waits
    # for the hand-off. Shared by every exposure, so not one of this CR's own objects.
    disruption_budget: bool = False
    own_budget: bool = False  # a budget of this CR's own, as earlier versions made per exposure
    # What the clone content says (uploads; "" / 0 / False while it does not exist):
    snapshot_handle: str = ""  # its spec.source.snapshotHandle: the storage snapshot it holds
    snapshot_driver: str = ""  # its spec.driver
    restore_size: int = 0  # its status.restoreSize (bytes), once the snapshot controller wrote it
    # The clone VolumeSnapshot is readyToUse, bound to the clone content, and that content's
    # status.snapshotHandle is its spec handle: the storage system accepted the clone.
    snapshot_ready: bool = False
    source_content: str = ""  # SOURCE_CONTENT_ANNOTATION: the source content it was cloned from

    @property
    def exists(self) -> bool:
        parts = (self.snapshot_content, self.snapshot, self.pvc, self.own_budget)
        return any(parts) or self.pod is not None

    def complete(self, upload: bool) -> bool:
        """Every object the kind needs exists (creating the exposure again would change nothing)."""
        snapshot_parts = self.snapshot_content and self.snapshot if upload else True
        return snapshot_parts and self.pvc and self.disruption_budget and self.pod is not None


class SnapshotState(Enum):
    ABSENT = "absent"
    PENDING = "pending"  # exists, not readyToUse yet
    READY = "ready"
    ERROR = "error"  # status.error is set


@dataclass(frozen=True)
class SnapshotView:
    """The source VolumeSnapshot of a DataUpload and what its VolumeSnapshotContent says."""

    state: SnapshotState = SnapshotState.ABSENT
    content_name: str = ""
    snapshot_handle: str = ""
    driver: str = ""
    restore_size: int = 0  # bytes
    error: str = ""
    deleting: bool = False  # the VolumeSnapshot has a deletionTimestamp

    @classmethod
    def from_objects(
        cls, snapshot: Mapping[str, Any] | None, content: Mapping[str, Any] | None
    ) -> SnapshotView:
        """From the VolumeSnapshot and its bound VolumeSnapshotContent (either may be ``None``)."""
        if snapshot is None:
            return cls()
        status = snapshot.get("status") or {}
        deleting = bool((snapshot.get("metadata") or {}).get("deletionTimestamp"))
        error = (status.get("error") or {}).get("message", "")
        content_name = str(status.get("boundVolumeSnapshotContentName") or "")
        if error:
            return cls(SnapshotState.ERROR, content_name, error=str(error), deleting=deleting)
        content_status = (content or {}).get("status") or {}
        handle = str(content_status.get("snapshotHandle") or "")
        if not status.get("readyToUse") or content is None or not handle:
            return cls(SnapshotState.PENDING, content_name, deleting=deleting)
        return cls(
            SnapshotState.READY,
            content_name,
            snapshot_handle=handle,
            driver=str((content.get("spec") or {}).get("driver", "")),
            restore_size=int(content_status.get("restoreSize") or 0),
            deleting=deleting,
        )


@dataclass(frozen=True)
class ContentView:
    """A VolumeSnapshotContent as the release of a DataUpload's source snapshot needs it."""

    name: str
    snapshot_handle: str = ""  # status.snapshotHandle, else spec.source.snapshotHandle
    deletion_policy: str = "Delete"  # spec.deletionPolicy: Delete | Retain
    deleting: bool = False  # it has a deletionTimestamp

    @classmethod
    def from_object(cls, content: Mapping[str, Any]) -> ContentView:
        meta, spec = content.get("metadata") or {}, content.get("spec") or {}
        return cls(
            name=str(meta.get("name", "")),
            snapshot_handle=content_handle(content),
            deletion_policy=str(spec.get("deletionPolicy") or "Delete"),
            deleting=bool(meta.get("deletionTimestamp")),
        )


def content_handle(content: Mapping[str, Any]) -> str:
    """The storage snapshot a VolumeSnapshotContent stands for: ``status.snapshotHandle`` (dynamic
    snapshots) or ``spec.source.snapshotHandle`` (pre-provisioned ones)."""
    status, spec = content.get("status") or {}, content.get("spec") or {}
    return str(status.get("snapshotHandle") or (spec.get("source") or {}).get("snapshotHandle") or "")


@dataclass(frozen=True)
class PvcView:
    namespace: str
    name: str
    storage_class: str = ""
    size: str = ""  # spec.resources.requests.storage, a quantity
    volume_mode: VolumeMode = VolumeMode.FILESYSTEM
    access_modes: tuple[str, ...] = ("ReadWriteOnce",)
    volume_name: str = ""  # the bound PV ("" = unbound)
    selected_node: str = ""  # annotation volume.kubernetes.io/selected-node
    wait_for_first_consumer: bool = False  # its StorageClass has volumeBindingMode WaitForFirstConsumer

    @classmethod
    def from_object(cls, pvc: Mapping[str, Any], wait_for_first_consumer: bool = False) -> PvcView:
        meta, spec = pvc.get("metadata") or {}, pvc.get("spec") or {}
        requests = (spec.get("resources") or {}).get("requests") or {}
        return cls(
            namespace=str(meta.get("namespace", "")),
            name=str(meta.get("name", "")),
            storage_class=str(spec.get("storageClassName") or ""),
            size=str(requests.get("storage", "")),
            volume_mode=VolumeMode(spec.get("volumeMode") or "Filesystem"),
            access_modes=tuple(spec.get("accessModes") or ("ReadWriteOnce",)),
            volume_name=str(spec.get("volumeName") or ""),
            selected_node=str((meta.get("annotations") or {}).get("volume.kubernetes.io/selected-node", "")),
            wait_for_first_consumer=wait_for_first_consumer,
        )


@dataclass(frozen=True)
class AgentView:
    """An agent (one per node) as the hub and the node informer see it."""

    node: str
    connected: bool  # the hub accepted its Hello, so ``Observed.assignment`` reflects what it runs
    disconnected_since: datetime | None = None  # None while connected (or never seen)
    connected_since: datetime | None = None  # when its current stream began (None: not connected)
    cordoned: bool = False  # node.spec.unschedulable
    cordoned_since: datetime | None = None
    labels: Pairs = ()  # the node's labels (scheduler)
    # Not connected and not seen since this leader started: it is given until then to reconnect
    # (AGENT_RECONNECT_WINDOW_S after the start) before it is judged gone or avoided. None otherwise.
    reconnect_by: datetime | None = None

    def unusable(self, now: datetime) -> bool:
        """No place for new work: cordoned, or its agent is gone (not merely reconnecting to a
        leader that has just started)."""
        if self.cordoned:
            return True
        return not self.connected and (self.reconnect_by is None or now >= self.reconnect_by)


class HubState(Enum):
    SENT = "sent"  # the assignment went out; the agent has not reported yet
    RUNNING = "running"  # the agent reports progress
    FINISHED = "finished"  # a result arrived


@dataclass(frozen=True)
class AssignmentView:
    """The hub's record of the latest assignment of one CR."""

    epoch: int
    node: str
    state: HubState
    bytes_done: int = 0
    bytes_total: int = 0
    result: messages.AssignmentResult | None = None
    cancel_sent_at: datetime | None = None
    cancel_hand_off: bool = False
    # Where the transfer rate is measured from: the first progress of this epoch (or the moment a
    # new leader adopted it) and bytes_done then. None until the agent reports progress.
    running_since: datetime | None = None
    bytes_at_running_since: int = 0
    # When the agent last showed life for this work: the assignment sent or adopted, or bytes_done
    # grew. operationTimeout bounds the time since then (a stall), never the queue or a long transfer.
    progressed_at: datetime | None = None

    @property
    def may_run(self) -> bool:
        """An agent may still be working on it and was not told to stop."""
        return self.state is not HubState.FINISHED and self.cancel_sent_at is None


@dataclass(frozen=True)
class Observed:
    """Everything ``decide`` may look at for one CR, captured at ``now``."""

    now: datetime
    cr: CrView
    config: CoordinatorConfig = field(default_factory=CoordinatorConfig)
    coordinator_id: str = "barge-coordinator"
    exposure: ExposureView = field(default_factory=ExposureView)
    snapshot: SnapshotView = field(default_factory=SnapshotView)
    source_content: ContentView | None = None
    source_pvc: PvcView | None = None
    target_pvc: PvcView | None = None
    bsl_present: bool = True
    agents: tuple[AgentView, ...] = ()
    assignment: AssignmentView | None = None
    admitted: bool = False
    # When this coordinator began leading: it has seen no agent before then, so an agent it never
    # saw connected gets agentGracePeriod from here to reconnect (None: counts from the work's start).
    leading_since: datetime | None = None

    def agent(self, node: str) -> AgentView | None:
        return next((a for a in self.agents if a.node == node), None)


# ---------------------------------------------------------------------------------------------
# Actions


@dataclass(frozen=True)
class RemoveFinalizer:
    """Remove ``barge.control.naming.FINALIZER``; decide emits it only once no exposure is left."""


StatusValue = str | int | Pairs | None  # None: remove the field


@dataclass(frozen=True)
class SetPhase:
    """Write status.phase, status.message and ``fields`` (dotted status paths, e.g.
    ``progress.bytesDone``). ``status_patch()`` renders the JSON merge patch body.

    ``add_finalizer`` and ``annotations`` change the CR's metadata with the phase: in the same
    write where status is written through the main resource (Velero's CRDs), just before it where
    the CRD has a status subresource. The finalizer is never written without the phase's guard
    holding, and always before anything the finalizer protects is created. ``remove_finalizer``:
    a final phase entered with nothing left to clean up lets go in the same write (what
    ``RemoveFinalizer`` would do one reconcile later)."""

    phase: Phase
    message: str = ""
    fields: tuple[tuple[str, StatusValue], ...] = ()
    add_finalizer: bool = False
    annotations: Pairs = ()
    remove_finalizer: bool = False

    def status_patch(self) -> dict[str, Any]:
        status: dict[str, Any] = {"phase": str(self.phase), "message": self.message}
        for path, value in self.fields:
            *parents, leaf = path.split(".")
            node = status
            for part in parents:
                node = node.setdefault(part, {})
            node[leaf] = dict(value) if isinstance(value, tuple) else value
        return {"status": status}


@dataclass(frozen=True)
class ExposurePlan:
    """Everything ``coordinator.exposer.manifests`` needs to render one CR's exposure."""

    kind: str
    namespace: str
    name: str
    uid: str
    generation: int
    volume_mode: VolumeMode
    size: str  # quantity
    storage_class: str
    access_modes: tuple[str, ...]
    read_only: bool
    image: str
    snapshot_handle: str = ""  # uploads
    driver: str = ""  # uploads
    snapshot_class: str = ""  # uploads
    source_content: str = ""  # uploads: the source VolumeSnapshotContent (SOURCE_CONTENT_ANNOTATION)
    node_selector: LabelSelector | None = None  # from config.loadAffinity
    required_node: str = ""  # downloads with WaitForFirstConsumer: the target PVC's selected node
    avoid_nodes: tuple[str, ...] = ()  # nodes whose agent is gone or that are cordoned
    spc_no_relabeling: bool = False
    resources: PodResources = field(default_factory=PodResources)
    priority_class_name: str = ""


@dataclass(frozen=True)
class CreateExposure:
    """Create whatever of ``coordinator.exposer.manifests(plan)`` does not exist yet, in order
    (an AlreadyExists is success)."""

    plan: ExposurePlan


@dataclass(frozen=True)
class DeleteExposure:
    """Delete the pod and PVC named after the CR (only those carrying its owner-uid label; a budget
    of its own, as earlier versions made, too); NotFound is success. With ``snapshot`` (terminal
    cleanup only) also the clone VolumeSnapshot: its content's deletionPolicy is Delete, so the
    snapshot controller deletes the content, and the storage snapshot with it, as it does for every
    bound snapshot. ``snapshot_content``: delete the clone content as well, for when that did not
    happen (the snapshot never bound it, or no controller acted in time). A re-exposure keeps the
    clone: once the source is released it is the only thing holding the snapshot."""

    reason: str
    snapshot: bool = False
    snapshot_content: bool = False


@dataclass(frozen=True)
class ReleaseSourceSnapshot:
    """Hand the storage snapshot from Velero's source objects to the clone (Velero's own exposer
    does the same, ``pkg/exposer/csi_snapshot.go``). In order, each step idempotent:

    1. read the clone content ``clone_content``: it must exist and hold ``snapshot_handle``
       (otherwise stop, touching nothing);
    2. read the source content ``content``: if it exists it must hold ``snapshot_handle``; set its
       ``deletionPolicy`` to Retain (unless it already is) and check the API's answer says Retain;
    3. delete the source VolumeSnapshot ``namespace/snapshot`` if it is bound to ``content``;
    4. delete the source content (with the uid read in 2): the storage snapshot survives (Retain),
       the clone owns it."""

    namespace: str
    snapshot: str
    content: str
    snapshot_handle: str
    clone_content: str


@dataclass(frozen=True)
class DeleteSourceSnapshot:
    """Delete the source VolumeSnapshot ``namespace/name`` that was never cloned (NotFound is
    success). Its content follows its own deletionPolicy (the VolumeSnapshotClass's), as when
    Velero's exposer cleans up a DataUpload it never exposed."""

    namespace: str
    name: str


@dataclass(frozen=True)
class Assign:
    """Set the fence annotation (``barge.control.naming.ASSIGNMENT_ANNOTATION``) to
    ``Fence(epoch, node).render()`` on the CR, then send ``assignment`` to the agent on ``node``."""

    node: str
    epoch: int
    assignment: messages.Assignment


@dataclass(frozen=True)
class StopAssignment:
    """Send ``barge.control.messages.CancelAssignment`` to the agent on ``node`` (if connected)
    and record ``cancel_sent_at`` in the hub."""

    node: str
    epoch: int
    reason: str
    hand_off: bool = False


REVOKED_NODE = "-"  # never a node name: a fence naming it lets no agent write


@dataclass(frozen=True)
class RevokeAssignment:
    """Set the fence annotation to ``Fence(epoch, REVOKED_NODE).render()``: the agent that held the
    previous epoch can no longer write the CR's status (it was told to stop; this makes sure)."""

    epoch: int


@dataclass(frozen=True)
class RecordEvent:
    """Emit a Kubernetes Event on the CR. ``type`` is "Normal" or "Warning"."""

    type: str
    reason: str
    message: str


@dataclass(frozen=True)
class Requeue:
    """Reconcile this CR again after ``after`` even if nothing changes (a deadline is pending)."""

    after: timedelta


@dataclass(frozen=True)
class BindRestoredVolume:
    """DataDownload hand-over: set the PV's reclaim policy to Retain (remembering the original),
    point its claimRef at the target PVC (and the target PVC's volumeName at the PV), delete the
    temporary pod and PVC, then restore the original reclaim policy. Idempotent step by step."""

    pv_name: str
    target_namespace: str
    target_pvc: str


@dataclass(frozen=True)
class MarkReexposure:
    """Write REEXPOSURES_ANNOTATION=str(count) and REEXPOSED_AT_ANNOTATION=format_timestamp(at)."""

    count: int
    at: datetime


Action = (
    RemoveFinalizer
    | SetPhase
    | CreateExposure
    | DeleteExposure
    | ReleaseSourceSnapshot
    | DeleteSourceSnapshot
    | Assign
    | StopAssignment
    | RevokeAssignment
    | RecordEvent
    | Requeue
    | BindRestoredVolume
    | MarkReexposure
)


# ---------------------------------------------------------------------------------------------
# Parsing the CR


def _operation_timeout(text: str) -> tuple[timedelta, str]:
    if not text:
        return DEFAULT_OPERATION_TIMEOUT, ""
    try:
        value = parse_go_duration(text)
    except InvalidInput as err:
        return DEFAULT_OPERATION_TIMEOUT, (
            f"spec.operationTimeout: {err}; using the default {format_go_duration(DEFAULT_OPERATION_TIMEOUT)}"
        )
    if value <= timedelta(0):
        return DEFAULT_OPERATION_TIMEOUT, (
            f"spec.operationTimeout {text!r} is not positive; "
            f"using the default {format_go_duration(DEFAULT_OPERATION_TIMEOUT)}"
        )
    return value, ""


def _phase(text: str | None) -> Phase:
    try:
        return Phase(text or "New")
    except ValueError:
        raise InvalidInput(f"status.phase {text!r} is not a Velero data-mover phase") from None


def _fence(annotations: Mapping[str, str]) -> Fence | None:
    try:
        return Fence.parse(annotations.get(ASSIGNMENT_ANNOTATION))
    except InvalidInput:
        return None  # unreadable: the next assignment overwrites it with a fresh epoch


def _count(text: str | None) -> int:
    return int(text) if text and text.isdigit() else 0


def _pairs(mapping: Mapping[str, Any] | None) -> Pairs:
    return tuple(sorted((str(k), str(v)) for k, v in (mapping or {}).items()))


def _cr_view(obj: Mapping[str, Any], kind: str) -> CrView:
    meta, spec, status = obj.get("metadata") or {}, obj.get("spec") or {}, obj.get("status") or {}
    annotations = meta.get("annotations") or {}
    timeout, problem = _operation_timeout(str(spec.get("operationTimeout") or ""))
    csi = spec.get("csiSnapshot") or {}
    target = spec.get("targetVolume") or {}
    progress = status.get("progress") or {}
    return CrView(
        kind=kind or str(obj.get("kind", "")),
        namespace=str(meta.get("namespace", "")),
        name=str(meta.get("name", "")),
        uid=str(meta.get("uid", "")),
        datamover=str(spec.get("datamover") or ""),
        phase=_phase(status.get("phase")),
        cancel=bool(spec.get("cancel")),
        deleting=bool(meta.get("deletionTimestamp")),
        has_finalizer=FINALIZER in (meta.get("finalizers") or ()),
        created_at=parse_timestamp(meta.get("creationTimestamp")),
        operation_timeout=timeout,
        operation_timeout_problem=problem,
        accepted_at=parse_timestamp(
            status.get("acceptedTimestamp") or annotations.get(ACCEPTED_AT_ANNOTATION)
        ),
        started_at=parse_timestamp(status.get("startTimestamp")),
        completed_at=parse_timestamp(status.get("completionTimestamp")),
        node=str(status.get("node") or ""),
        fence=_fence(annotations),
        reexposures=_count(annotations.get(REEXPOSURES_ANNOTATION)),
        reexposed_at=parse_timestamp(annotations.get(REEXPOSED_AT_ANNOTATION)),
        labels=_pairs(meta.get("labels")),
        backup_storage_location=str(spec.get("backupStorageLocation") or ""),
        source_namespace=str(spec.get("sourceNamespace") or ""),
        data_mover_config=_pairs(spec.get("dataMoverConfig")),
        snapshot_type=str(spec.get("snapshotType") or ""),
        volume_snapshot=str(csi.get("volumeSnapshot") or ""),
        storage_class=str(csi.get("storageClass") or ""),
        snapshot_class=str(csi.get("snapshotClass") or ""),
        driver=str(csi.get("driver") or ""),
        source_pvc=str(spec.get("sourcePVC") or ""),
        snapshot_id=str(spec.get("snapshotID") or ""),
        target_pvc=str(target.get("pvc") or ""),
        target_pv=str(target.get("pv") or ""),
        target_namespace=str(target.get("namespace") or ""),
        bytes_done=int(progress.get("bytesDone") or 0),
        bytes_total=int(progress.get("totalBytes") or 0),
    )
