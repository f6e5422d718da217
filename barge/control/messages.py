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


@dataclass(frozen=True)
class ForgetBackup:
    """Forget these snapshots of a deleted Velero backup in one repository of the location."""

    source_namespace: str  # with the location, selects the repository
    backup_name: str  # the snapshots' velero.io/backup-name tag
    backup_uid: str  # the snapshots' velero.io/backup-uid tag
    snapshot_ids: tuple[str, ...]


@dataclass(frozen=True)
class Sweep:
    """Coordinator -> agent: list what a location holds for Velero backups, after forgetting
    ``forget`` (each only if its backup is still absent from the location)."""

    sweep_id: str  # names the SweepResult that answers
    velero_namespace: str  # where the BackupStorageLocation and its Secrets live
    backup_storage_location: str
    forget: tuple[ForgetBackup, ...] = ()


@dataclass(frozen=True)
class BackupSnapshot:
    """One snapshot a Velero backup wrote, as a sweep found it."""

    source_namespace: str
    snapshot_id: str
    backup_name: str
    backup_uid: str
    time: str  # ISO 8601, when the backup of this volume finished


@dataclass(frozen=True)
class SweepResult:
    """Agent -> coordinator: what the location holds (after the forgets) and what was forgotten."""

    sweep_id: str
    message: str = ""  # not empty: the sweep failed, and why; the other fields are then empty
    backups_in_location: tuple[str, ...] = ()  # names with backups/<name>/velero-backup.json
    snapshots: tuple[BackupSnapshot, ...] = ()  # every snapshot tagged with a backup
    forgotten: tuple[str, ...] = ()  # snapshot IDs this sweep forgot
    kept: tuple[str, ...] = ()  # asked to forget, but their backup is in the location
    repositories: tuple[str, ...] = ()  # source namespaces with a repository in the location


@dataclass(frozen=True)
class Maintain:
    """Coordinator -> agent: maintain one repository of a location (the leader schedules it)."""

    maintenance_id: str  # names the MaintenanceResult that answers
    velero_namespace: str
    backup_storage_location: str
    source_namespace: str  # with the location, selects the repository
    collect_garbage: bool  # one garbage-collection pass (mark, or sweep + mark)
    check: bool  # verify the structure
    read_data_fraction: float = 0.0  # with check: the share of packs whose every byte is read


@dataclass(frozen=True)
class MaintenanceResult:
    """Agent -> coordinator: what a maintenance run did and found."""

    maintenance_id: str
    message: str = ""  # not empty: the run failed, and why
    gc_phase: str = ""  # "mark", "sweep+mark", "waiting"; empty when no garbage collection ran
    reclaimed_bytes: int = 0
    deleted_packs: int = 0
    size_bytes: int = -1  # pack bytes stored after the run; -1 when not measured
    checked: bool = False  # the check ran to its end
    problems: tuple[str, ...] = ()  # damage found: the first few
    problem_count: int = 0  # how many problems in all
    gc_seconds: float = 0.0
    check_seconds: float = 0.0


AgentEvent = Hello | Heartbeat | ProgressReport | AssignmentResult | SweepResult | MaintenanceResult
CoordinatorCommand = Welcome | Assignment | CancelAssignment | Drain | Sweep | Maintain
