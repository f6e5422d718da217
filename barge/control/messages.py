"""What agents and the coordinator say to each other, independent of the wire format.

``barge.rpc`` converts these to and from protobuf (``proto/barge/v1/control.proto``); nothing else
sees protobuf. Every message that changes state names its assignment by ``(assignment_id, epoch)``,
so a duplicated or replayed message is recognised and ignored.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import Enum


class AssignmentKind(Enum):
    UPLOAD = "upload"  # DataUpload: volume -> repository
    DOWNLOAD = "download"  # DataDownload: repository -> volume


class VolumeMode(Enum):
    FILESYSTEM = "Filesystem"
    BLOCK = "Block"


class Outcome(Enum):
    COMPLETED = "completed"
    FAILED = "failed"
    CANCELED = "canceled"
    HANDED_OFF = "handed_off"  # stopped on request (drain/reassign); uploaded data stays for reuse


@dataclass(frozen=True)
class CrRef:
    """The DataUpload or DataDownload an assignment serves."""

    kind: str  # "DataUpload" | "DataDownload"
    namespace: str
    name: str
    uid: str


Pairs = tuple[tuple[str, str], ...]  # an immutable string map


@dataclass(frozen=True)
class Assignment:
    """Coordinator -> agent: move one volume's data."""

    assignment_id: str  # the CR's uid
    epoch: int  # bumped on every (re)assignment: the fence for status writes
    kind: AssignmentKind
    cr: CrRef
    pod_uid: str  # the exposer pod whose volume the agent reads or writes
    volume_name: str  # the PV name, part of the kubelet's path to the volume
    volume_mode: VolumeMode
    backup_storage_location: str
    source_namespace: str  # with the BSL, selects the repository
    snapshot_id: str = ""  # DOWNLOAD: the snapshot to restore
    source_pvc: str = ""  # UPLOAD: identifies the source for incremental (parent) lookups
    tags: Pairs = ()
    data_mover_config: Pairs = ()


@dataclass(frozen=True)
class CancelAssignment:
    """Coordinator -> agent: stop this assignment (cancel, timeout, or reassigned elsewhere)."""

    assignment_id: str
    epoch: int
    reason: str
    hand_off: bool = False  # True: stop for a reassignment (drain), not a user cancel


@dataclass(frozen=True)
class Drain:
    """Coordinator -> agent: this node is cordoned; take no new work, finish within the grace."""

    grace_seconds: float
    reason: str


@dataclass(frozen=True)
class Welcome:
    """Coordinator -> agent, first message on an accepted stream."""

    coordinator_id: str
    heartbeat_interval_s: float


@dataclass(frozen=True)
class RunningAssignment:
    assignment_id: str
    epoch: int
    bytes_done: int = 0
    bytes_total: int = 0


@dataclass(frozen=True)
class Hello:
    """Agent -> coordinator, first message on every (re)connect: lets a new leader adopt running work."""

    node_name: str
    agent_version: str
    max_concurrent: int
    running: tuple[RunningAssignment, ...] = ()


@dataclass(frozen=True)
class Heartbeat:
    running: tuple[RunningAssignment, ...] = ()


@dataclass(frozen=True)
class ProgressReport:
    assignment_id: str
    epoch: int
    bytes_done: int
    bytes_total: int


@dataclass(frozen=True)
class AssignmentResult:
    assignment_id: str
    epoch: int
    outcome: Outcome
    message: str = ""
    snapshot_id: str = ""
    path: str = ""
    bytes_total: int = 0
    bytes_done: int = 0
    bytes_new: int = 0
    result: Pairs = field(default=())  # dataMoverResult


AgentEvent = Hello | Heartbeat | ProgressReport | AssignmentResult
CoordinatorCommand = Welcome | Assignment | CancelAssignment | Drain
