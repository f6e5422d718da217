"""Labels, annotations, finalizer and object names Barge puts on what it creates and serves.

One place, so the coordinator, the agents, the cluster simulator and the Helm chart agree.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import Literal

from barge.errors import InvalidInput

DATAMOVER = "barge"
FINALIZER = "velero.io/data-upload-download-finalizer"
ASSIGNMENT_ANNOTATION = "barge.io/assignment"

LABEL_MANAGED_BY = "app.kubernetes.io/managed-by"
LABEL_OWNER_KIND = "barge.io/owner-kind"
LABEL_OWNER_NAME = "barge.io/owner-name"
LABEL_OWNER_UID = "barge.io/owner-uid"
MANAGED_BY = "barge"
EXPOSER_ROLE_LABEL = "barge.io/role"
EXPOSER_POD_LABELS = ((LABEL_MANAGED_BY, MANAGED_BY), (EXPOSER_ROLE_LABEL, "exposer"))
EXPOSER_BUDGET = "barge-exposers"  # the PodDisruptionBudget over every exposer pod of a namespace

# An exposer pod is Ready only while the agent on its node vouches that it moves the pod's data and
# has a coordinator on its stream (docs/control-plane.md "Drains"): the budget protects only Ready
# pods (unhealthyPodEvictionPolicy AlwaysAllow), so a drain never waits on a Barge that is down.
# The agent keeps, in the pod's emptyDir EXPOSER_STATUS_VOLUME, a file VOUCH_FILE holding the Unix
# time until which it vouches; the pod's exec readiness probe compares it with the node's clock.
EXPOSER_STATUS_VOLUME = "barge-status"
EXPOSER_STATUS_PATH = "/barge-status"  # its mount in the exposer container, also its workingDir
VOUCH_FILE = "ready-until"
VOUCH_REFRESH_S = 1.0  # how often the agent renews (or withdraws) its vouches
VOUCH_TTL_S = 10  # a vouch outlives its last renewal by this much: a dead agent's expires
READINESS_PERIOD_S = 3  # the exposer pod's readiness probe: every 3 s ...
READINESS_FAILURES = 2  # ... and not Ready after 2 failures in a row
COORDINATOR_LOSS_S = 30  # the agent's gRPC keepalive notices a silently vanished coordinator
# An agent that lost its coordinator retries at least this often (its backoff's ceiling), so a
# leader that has just started gives every agent it has not seen yet until AGENT_RECONNECT_WINDOW_S
# (a retry, TLS, the TokenReview and Hello) before it judges that agent gone or places work around it.
AGENT_RECONNECT_MAX_S = 30.0
AGENT_RECONNECT_WINDOW_S = AGENT_RECONNECT_MAX_S + 10.0
# The longest a drain waits on Barge for an exposer pod that nobody can hand off (the kubelet's
# status write and the drain's own retry interval come on top): a coordinator that vanished
# without closing the stream, noticed by the keepalive, then one renewal and the probe's failures.
# A dead agent's vouch expires sooner (VOUCH_TTL_S); a stopped coordinator closes the stream at once.
DRAIN_BOUND_S = COORDINATOR_LOSS_S + VOUCH_REFRESH_S + READINESS_PERIOD_S * READINESS_FAILURES

VELERO_GROUP = "velero.io"
DATA_MOVER_VERSION = "v2alpha1"
PLURALS = {"DataUpload": "datauploads", "DataDownload": "datadownloads"}

FILESYSTEM_MOUNT_PATH = "/data"
BLOCK_DEVICE_PATH = "/dev/barge-volume"

# spec.dataMoverConfig key of a DataUpload: what a file that cannot be read does to the backup.
# "fail" (default): the DataUpload fails naming the file; "skip": the rest is backed up and the
# skipped files are listed in the status message and dataMoverResult.
ON_UNREADABLE_KEY = "barge.io/on-unreadable"
UnreadablePolicy = Literal["fail", "skip"]


def unreadable_policy(data_mover_config: Iterable[tuple[str, str]]) -> UnreadablePolicy:
    """The per-file error policy a DataUpload asks for; InvalidInput names the key and the choices."""
    value = dict(data_mover_config).get(ON_UNREADABLE_KEY, "fail")
    if value == "fail":
        return "fail"
    if value == "skip":
        return "skip"
    raise InvalidInput(f"spec.dataMoverConfig {ON_UNREADABLE_KEY}={value!r}: use 'fail' or 'skip'")


# spec.dataMoverConfig key of a DataDownload: "true" recreates what the snapshot records that grants
# privilege (device nodes, setuid/setgid bits, security.*/trusted.* xattrs); "false" (default)
# withholds it and says so (barge.fs.privileged). Barge's own key: Velero never sets it.
RESTORE_PRIVILEGED_KEY = "barge.io/restore-privileged"


def restore_privileged(data_mover_config: Iterable[tuple[str, str]]) -> bool:
    """Whether a restore recreates privileged entries; InvalidInput names the key."""
    return _boolean(data_mover_config, RESTORE_PRIVILEGED_KEY)


# spec.dataMoverConfig keys Velero itself sets (pkg/uploader/util/uploader_config.go); no others.
# WriteSparseFiles (every DataDownload; "false" unless `velero restore create --write-sparse-files`):
# "true" also leaves all-zero blocks of file data unwritten, as holes.
WRITE_SPARSE_FILES_KEY = "WriteSparseFiles"
# ParallelFilesUpload (DataUpload) / ParallelFilesDownload (DataDownload), set only when > 0: an
# upper bound on the agent's workers for that one assignment.
PARALLEL_FILES_UPLOAD_KEY = "ParallelFilesUpload"
PARALLEL_FILES_DOWNLOAD_KEY = "ParallelFilesDownload"


def write_sparse_files(data_mover_config: Iterable[tuple[str, str]]) -> bool:
    """Whether a restore leaves all-zero file data as holes; InvalidInput names the key."""
    return _boolean(data_mover_config, WRITE_SPARSE_FILES_KEY)


def _boolean(data_mover_config: Iterable[tuple[str, str]], key: str) -> bool:
    """``true``/``false`` in any case; false when absent."""
    value = dict(data_mover_config).get(key, "false")
    if value.lower() == "true":
        return True
    if value.lower() == "false":
        return False
    raise InvalidInput(f"spec.dataMoverConfig {key}={value!r}: use 'true' or 'false'")


def parallel_files(data_mover_config: Iterable[tuple[str, str]], key: str) -> int | None:
    """The worker bound ``key`` asks for, or None when absent; InvalidInput names the key."""
    value = dict(data_mover_config).get(key)
    if value is None:
        return None
    if not (value.isascii() and value.isdigit() and len(value) <= 9) or int(value) < 1:
        raise InvalidInput(f"spec.dataMoverConfig {key}={value!r}: use a positive whole number")
    return int(value)


def data_mover_config_problem(data_mover_config: Iterable[tuple[str, str]]) -> str:
    """The first bad value of a dataMoverConfig key Barge reads (any CR kind), or ""."""
    config = tuple(data_mover_config)
    try:
        unreadable_policy(config)
        write_sparse_files(config)
        restore_privileged(config)
        parallel_files(config, PARALLEL_FILES_UPLOAD_KEY)
        parallel_files(config, PARALLEL_FILES_DOWNLOAD_KEY)
    except InvalidInput as err:
        return str(err)
    return ""


def owned_labels(kind: str, name: str, uid: str) -> dict[str, str]:
    """Labels on every object Barge creates for the CR ``kind/name``: found again by the owner uid."""
    return {
        LABEL_MANAGED_BY: MANAGED_BY,
        LABEL_OWNER_KIND: kind,
        LABEL_OWNER_NAME: name[:63],
        LABEL_OWNER_UID: uid,
    }


@dataclass(frozen=True)
class Fence:
    """Who may write a CR's status: the agent on ``node`` holding assignment ``epoch``."""

    epoch: int
    node: str

    def render(self) -> str:
        return f"{self.epoch}:{self.node}"

    @classmethod
    def parse(cls, text: str | None) -> Fence | None:
        if not text:
            return None
        epoch, sep, node = text.partition(":")
        if not sep or not epoch.isdigit() or not node:
            raise InvalidInput(f"annotation {ASSIGNMENT_ANNOTATION}={text!r} is not '<epoch>:<node>'")
        return cls(int(epoch), node)


def kubelet_empty_dir_path(kubelet_root: str, pod_uid: str, volume: str) -> str:
    """Where the kubelet keeps a pod's emptyDir volume ``volume`` on the node's filesystem."""
    return f"{kubelet_root}/pods/{pod_uid}/volumes/kubernetes.io~empty-dir/{volume}"


def kubelet_volume_path(kubelet_root: str, pod_uid: str, pv_name: str, block: bool) -> str:
    """Where the kubelet exposes a pod's CSI volume on the node's filesystem."""
    if block:
        return f"{kubelet_root}/pods/{pod_uid}/volumeDevices/kubernetes.io~csi/{pv_name}"
    return f"{kubelet_root}/pods/{pod_uid}/volumes/kubernetes.io~csi/{pv_name}/mount"
