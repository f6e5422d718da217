"""A simulated kubelet, scheduler, CSI driver and controllers around a real kube-apiserver.

The test control plane (and the demo (``make demo``)) runs only etcd + kube-apiserver. ``SimCluster`` plays
every missing component by writing objects through the real API, as envtest users do, so Barge's
coordinator and agents run unmodified: pods get scheduled and Running, PVCs get provisioned (from
CSI snapshots too) and bound, volumes appear at the kubelet's paths on the node's filesystem,
evictions honour PodDisruptionBudgets and orphans are garbage-collected.

Layout under ``root``: ``volumes/<pv>`` (a Filesystem PV's data) or ``volumes/<pv>.img`` (a Block
PV's image), ``nodes/<node>/kubelet`` (a node's kubelet root), ``snapshots/`` (snapshot handles).
The simulator only runs nodes it added (annotated with its root) and acts only on namespaced
objects in ``namespaces`` (all when None), so several simulators with disjoint namespaces can
share one API server.
"""

from __future__ import annotations

import contextlib
import functools
import secrets
import string
import threading
from pathlib import Path
from types import TracebackType
from typing import Protocol

from kubernetes import client

from barge.clock import Clock, SystemClock
from barge.errors import Conflict, InvalidInput, NotFound, TooManyRequests
from barge.kube.resources import (
    NODE,
    PERSISTENT_VOLUME,
    PERSISTENT_VOLUME_CLAIM,
    POD,
    STORAGE_CLASS,
    VOLUME_SNAPSHOT,
    VOLUME_SNAPSHOT_CLASS,
    VOLUME_SNAPSHOT_CONTENT,
    KubeObjects,
    Obj,
    Resource,
)
from devenv.simgc import GarbageCollector
from devenv.simpods import DisruptionController, Kubelets, Scheduler
from devenv.simsnapshots import (
    SnapshotController,
    SnapshotData,
    SnapshotRegistry,
    content_body,
    copy_volume_data,
    format_quantity,
    tree_size,
)
from devenv.simstorage import StorageController
from devenv.simworld import DRIVER, ROOT_ANNOTATION, SimContext, World, key, remove_path
from devenv.waiting import wait_for

__all__ = ["DRIVER", "SimCluster"]

_GIB = 1 << 30
_BIND_TIMEOUT_S = 60.0  # the real PV controller's binding (storage_only), usually well under a second
_SUFFIX_ALPHABET = string.ascii_lowercase + string.digits


def _default_size(source: Path, block: bool) -> int:
    """A block image's length; a directory gets whole GiB, at least 1Gi, like a real volume."""
    size = tree_size(source)
    return size if block else max(_GIB, -(-size // _GIB) * _GIB)


class Controller(Protocol):
    def reconcile(self, world: World) -> None: ...


class SimCluster:
    """The missing cluster components, driven by one background thread that polls the API.

    ``storage_only``: on a real node (``devenv.realnode``), only the CSI driver's controllers run
    (provisioning, binding, reclaim, snapshots); the real scheduler, kubelet, disruption controller
    and garbage collector do the rest, and the node's CSI plugin mounts the volumes."""

    def __init__(
        self,
        api: client.ApiClient,
        root: Path,
        *,
        namespaces: tuple[str, ...] | None = None,
        poll_s: float = 0.2,
        clock: Clock | None = None,
        storage_only: bool = False,
    ) -> None:
        root = root.resolve()
        root.mkdir(parents=True, exist_ok=True)
        self._ctx = SimContext(KubeObjects(api), root, namespaces, clock or SystemClock())
        self._registry = SnapshotRegistry(root)
        self._storage = StorageController(self._ctx, self._registry, provisioner_only=storage_only)
        self._snapshots = SnapshotController(self._ctx, self._registry)
        self._kubelets = Kubelets(self._ctx)
        self._controllers: tuple[Controller, ...] = (self._storage, self._snapshots)
        if not storage_only:
            self._controllers += (
                Scheduler(self._ctx),
                self._kubelets,
                DisruptionController(self._ctx),
                GarbageCollector(self._ctx),
            )
        self._poll_s = poll_s
        self._tick = threading.Lock()
        self._stopping = threading.Event()
        self._thread: threading.Thread | None = None

    # -- lifecycle -------------------------------------------------------------------------------

    @property
    def root(self) -> Path:
        return self._ctx.root

    @property
    def errors(self) -> list[str]:
        """Unexpected failures of the simulated components (races that retry are not errors)."""
        return list(self._ctx.errors)

    def start(self) -> SimCluster:
        if self._thread is None:
            self._stopping.clear()
            self._thread = threading.Thread(target=self._run, name="barge-simcluster", daemon=True)
            self._thread.start()
        return self

    def stop(self) -> None:
        self._stopping.set()
        if self._thread is not None:
            self._thread.join(timeout=30)
            self._thread = None

    def __enter__(self) -> SimCluster:
        return self.start()

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()

    def _run(self) -> None:
        while not self._stopping.is_set():
            try:
                self.reconcile_once()
            except Exception as err:  # the loop must outlive any one failure; errors shows it
                self._ctx.record(f"tick: {type(err).__name__}: {err}")
            self._stopping.wait(self._poll_s)

    def reconcile_once(self) -> None:
        """One pass of every simulated controller over a fresh listing."""
        with self._tick:
            world = World.observe(self._ctx.objects, self._ctx.namespaces)
            for controller in self._controllers:
                controller.reconcile(world)

    # -- nodes -----------------------------------------------------------------------------------

    def kubelet_root(self, node: str) -> Path:
        return self._ctx.kubelet_root(node)

    def add_node(self, name: str, labels: dict[str, str] | None = None) -> Path:
        """A Ready node run by this simulator; returns its kubelet root (created)."""
        metadata = {
            "name": name,
            "labels": {
                "kubernetes.io/hostname": name,
                "kubernetes.io/os": "linux",
                "kubernetes.io/arch": "amd64",
                **(labels or {}),
            },
            "annotations": {ROOT_ANNOTATION: self._ctx.root_tag},
        }
        objects = self._ctx.objects
        try:
            objects.create(NODE, {"apiVersion": "v1", "kind": "Node", "metadata": metadata})
        except Conflict:
            objects.patch(NODE, None, name, {"metadata": metadata})  # adopt it (a restarted demo)
        objects.patch(NODE, None, name, {"status": self._node_status(name)}, "status")
        self._drop_not_ready_taint(name)
        kubelet_root = self.kubelet_root(name)
        kubelet_root.mkdir(parents=True, exist_ok=True)
        return kubelet_root

    def _drop_not_ready_taint(self, name: str) -> None:
        """The node lifecycle controller's part: the admission-added not-ready taint goes once Ready."""
        node = self._ctx.objects.find(NODE, None, name)
        taints = ((node or {}).get("spec") or {}).get("taints") or []
        kept = [t for t in taints if t.get("key") != "node.kubernetes.io/not-ready"]
        if node is not None and kept != taints:
            patch = {
                "metadata": {"resourceVersion": node["metadata"]["resourceVersion"]},
                "spec": {"taints": kept},
            }
            self._ctx.objects.patch(NODE, None, name, patch)

    def _node_status(self, name: str) -> Obj:
        now = self._ctx.now_text()
        resources = {"cpu": "4", "memory": "8Gi", "pods": "110", "ephemeral-storage": "100Gi"}
        return {
            "conditions": [
                {
                    "type": "Ready",
                    "status": "True",
                    "reason": "KubeletReady",
                    "message": "simulated kubelet is posting ready status",
                    "lastHeartbeatTime": now,
                    "lastTransitionTime": now,
                }
            ],
            "addresses": [
                {"type": "InternalIP", "address": "127.0.0.1"},
                {"type": "Hostname", "address": name},
            ],
            "capacity": resources,
            "allocatable": resources,
            "nodeInfo": {
                "operatingSystem": "linux",
                "architecture": "amd64",
                "kubeletVersion": "v0.0.0-sim",
                "containerRuntimeVersion": "sim://1",
                "kernelVersion": "",
                "osImage": "barge simulated node",
                "machineID": name,
                "systemUUID": name,
                "bootID": name,
                "kubeProxyVersion": "",
            },
        }

    def set_node_ready(self, name: str, ready: bool) -> None:
        """Flip the node's Ready condition (a kubelet that stopped posting status, or came back)."""
        now = self._ctx.now_text()
        condition = {
            "type": "Ready",
            "status": "True" if ready else "Unknown",
            "reason": "KubeletReady" if ready else "NodeStatusUnknown",
            "message": "simulated kubelet is posting ready status"
            if ready
            else "Kubelet stopped posting node status.",
            "lastHeartbeatTime": now,
            "lastTransitionTime": now,
        }
        patch = {"status": {"conditions": [condition]}}
        self._ctx.objects.patch(NODE, None, name, patch, "status", strategic=True)

    def cordon(self, name: str) -> None:
        self._set_unschedulable(name, True)

    def uncordon(self, name: str) -> None:
        self._set_unschedulable(name, False)

    def _set_unschedulable(self, name: str, unschedulable: bool) -> None:
        self._ctx.objects.patch(NODE, None, name, {"spec": {"unschedulable": unschedulable}})

    def remove_node(self, name: str) -> None:
        """Delete the Node; the pod garbage collector then deletes the pods bound to it."""
        self._ctx.objects.delete(NODE, None, name)

    # -- pods ------------------------------------------------------------------------------------

    def fail_pod(self, namespace: str, name: str, reason: str) -> None:
        """Simulate a crash: the pod goes Failed (and the kubelet unmounts its volumes)."""
        try:
            self._kubelets.fail(namespace, name, reason)
        except KeyError as err:
            raise NotFound(str(err.args[0])) from err

    def evict(self, namespace: str, pod: str) -> bool:
        """Evict through policy/v1: True if the API server allowed it, False if a PDB refused (429)."""
        body = {
            "apiVersion": "policy/v1",
            "kind": "Eviction",
            "metadata": {"name": pod, "namespace": namespace},
        }
        try:
            self._ctx.objects.create_subresource(POD, namespace, pod, "eviction", body)
        except TooManyRequests:
            return False
        return True

    def drain(self, node: str, timeout: float = 60.0) -> list[str]:
        """``kubectl drain --ignore-daemonsets --delete-emptydir-data``: cordon, evict every pod,
        retry PDB refusals.

        Returns ``namespace/name`` of the pods still on the node at the deadline (empty: drained).
        """
        self.cordon(node)
        clock = self._ctx.clock
        deadline = clock.monotonic() + timeout
        while True:
            pods = self._pods_on(node)
            for pod in pods:
                if not pod["metadata"].get("deletionTimestamp"):
                    self._try_evict(pod)
            if not pods or clock.monotonic() >= deadline:
                return sorted(f"{ns}/{name}" for ns, name in map(key, pods))
            clock.sleep(min(max(self._poll_s, 0.05), max(0.0, deadline - clock.monotonic())))

    def _pods_on(self, node: str) -> list[Obj]:
        """The node's pods except DaemonSet ones (they would come straight back)."""
        listing = self._ctx.objects.list(POD, field_selector=f"spec.nodeName={node}")
        return [
            p
            for p in listing
            if not any(ref.get("kind") == "DaemonSet" for ref in p["metadata"].get("ownerReferences") or [])
        ]

    def _try_evict(self, pod: Obj) -> None:
        with contextlib.suppress(NotFound):
            self.evict(*key(pod))

    # -- volumes and snapshots -------------------------------------------------------------------

    def claim_data(self, namespace: str, claim: str) -> Path:
        """Where the data of the volume bound to ``claim`` lives (a directory, or a Block image)."""
        pvc = self._ctx.objects.find(PERSISTENT_VOLUME_CLAIM, namespace, claim)
        pv_name = str(((pvc or {}).get("spec") or {}).get("volumeName") or "")
        pv = self._ctx.objects.find(PERSISTENT_VOLUME, None, pv_name) if pv_name else None
        if pv is None:
            raise NotFound(f"PVC {namespace}/{claim} is not bound to a volume")
        return self._ctx.data_path(pv_name, pv["spec"].get("volumeMode") == "Block").resolve()

    def snapshot_source(
        self,
        namespace: str,
        pvc_name: str,
        source: Path,
        *,
        block: bool = False,
        storage_class: str = "standard",
        snapshot_class: str = "csi-snapclass",
        size: int | None = None,
    ) -> tuple[str, str]:
        """What Velero's CSI plugin and the CSI driver leave behind for a backup of ``pvc_name``.

        The source PVC and PV (bound; the PV's data is ``source``), a ready VolumeSnapshot
        ``velero-<pvc>-<5 random>`` and its VolumeSnapshotContent. Returns (snapshot name, handle).
        """
        source = source.resolve()
        if block != source.is_file() or not source.exists():
            kind = "an image file" if block else "a directory"
            raise InvalidInput(f"snapshot source {source} must be {kind} (block={block})")
        data = SnapshotData(source, block, size or _default_size(source, block))
        self._ensure_classes(storage_class, snapshot_class)
        with self._tick:  # the background controllers must not provision or snapshot these themselves
            pvc = self._source_claim(namespace, pvc_name, data, storage_class)
            handle = self._registry.register(data)
            vs = self._ctx.objects.create(
                VOLUME_SNAPSHOT,
                {
                    "apiVersion": "snapshot.storage.k8s.io/v1",
                    "kind": "VolumeSnapshot",
                    "metadata": {"name": f"velero-{pvc_name}-{self._suffix()}", "namespace": namespace},
                    "spec": {
                        "source": {"persistentVolumeClaimName": pvc_name},
                        "volumeSnapshotClassName": snapshot_class,
                    },
                },
            )
            volume_source = {"volumeHandle": pvc["spec"]["volumeName"]}
            body = content_body(
                vs, f"snapcontent-{vs['metadata']['uid']}", volume_source, snapshot_class, "Delete"
            )
            content = self._ctx.objects.create(VOLUME_SNAPSHOT_CONTENT, body)
            self._snapshots.publish(vs, content, data, handle)
        return vs["metadata"]["name"], handle

    def provision_claim(
        self,
        namespace: str,
        pvc_name: str,
        source: Path,
        *,
        block: bool = False,
        storage_class: str = "standard",
        size: int | None = None,
    ) -> Path:
        """An application's bound PVC whose volume holds a copy of ``source`` (a directory, or an
        image file for Block): what a workload leaves for Velero to back up. Returns where the
        volume's data lives; writing there changes the live volume (its next snapshot sees it)."""
        source = source.resolve()
        if block != source.is_file() or not source.exists():
            kind = "an image file" if block else "a directory"
            raise InvalidInput(f"volume source {source} must be {kind} (block={block})")
        staged = self._ctx.root / "staging" / f"{namespace}-{pvc_name}-{self._suffix()}"
        copy_volume_data(source, staged, block)
        data = SnapshotData(staged, block, size or _default_size(source, block))
        with self._tick:
            pvc = self._source_claim(namespace, pvc_name, data, storage_class)
            # the volume owns its data (no link to the source): snapshots copy it, writes change it
            volume = self._ctx.data_path(pvc["spec"]["volumeName"], block)
            volume.unlink()
            staged.rename(volume)
        return volume

    @staticmethod
    def _suffix() -> str:
        return "".join(secrets.choice(_SUFFIX_ALPHABET) for _ in range(5))

    def _source_claim(self, namespace: str, name: str, data: SnapshotData, storage_class: str) -> Obj:
        """The application's PVC, bound to a PV whose data is the snapshot source (reused if present)."""
        objects = self._ctx.objects
        existing = objects.find(PERSISTENT_VOLUME_CLAIM, namespace, name)
        if existing is not None and existing["spec"].get("volumeName"):
            return existing
        pvc = existing or objects.create(
            PERSISTENT_VOLUME_CLAIM,
            {
                "apiVersion": "v1",
                "kind": "PersistentVolumeClaim",
                "metadata": {"name": name, "namespace": namespace},
                "spec": {
                    "accessModes": ["ReadWriteOnce"],
                    "storageClassName": storage_class,
                    "volumeMode": "Block" if data.block else "Filesystem",
                    "resources": {"requests": {"storage": format_quantity(data.size)}},
                },
            },
        )
        pv_name = f"pvc-{pvc['metadata']['uid']}"
        link = self._ctx.data_path(pv_name, data.block)
        link.parent.mkdir(parents=True, exist_ok=True)
        remove_path(link)
        link.symlink_to(data.path)
        request = pvc["spec"]["resources"]["requests"]["storage"]
        body = self._storage.volume_body(pvc, pv_name, data.block, request)
        created = objects.create(PERSISTENT_VOLUME, body)
        if not self._storage.provisioner_only:
            self._storage.bind(created, pvc)
        return wait_for(functools.partial(self._bound_claim, namespace, name), _BIND_TIMEOUT_S,
                        what=f"PVC {namespace}/{name} bound to {pv_name}")  # fmt: skip

    def _bound_claim(self, namespace: str, name: str) -> Obj | None:
        bound = self._ctx.objects.find(PERSISTENT_VOLUME_CLAIM, namespace, name)
        if bound is None:
            raise NotFound(f"PVC {namespace}/{name} vanished while it was being bound")
        return bound if bound["spec"].get("volumeName") else None

    def _ensure_classes(self, storage_class: str, snapshot_class: str) -> None:
        """The StorageClass and VolumeSnapshotClass a cluster with the sim CSI driver would have."""
        classes: list[tuple[Resource, Obj]] = [
            (
                STORAGE_CLASS,
                {
                    "apiVersion": "storage.k8s.io/v1",
                    "kind": "StorageClass",
                    "metadata": {"name": storage_class},
                    "provisioner": DRIVER,
                    "reclaimPolicy": "Delete",
                    "volumeBindingMode": "Immediate",
                },
            ),
            (
                VOLUME_SNAPSHOT_CLASS,
                {
                    "apiVersion": "snapshot.storage.k8s.io/v1",
                    "kind": "VolumeSnapshotClass",
                    "metadata": {"name": snapshot_class},
                    "driver": DRIVER,
                    "deletionPolicy": "Delete",
                },
            ),
        ]
        for resource, body in classes:
            self._ctx.objects.create(resource, body, exist_ok=True)

    def storage_snapshots(self) -> dict[str, SnapshotData]:
        """The storage snapshots the simulated driver holds, by handle: a handle stays here until a
        Delete-policy VolumeSnapshotContent naming it is deleted (a leak shows up here)."""
        return self._registry.live()

    def fail_snapshot(self, namespace: str, vs_name: str, message: str) -> None:
        """The CSI driver failed to cut the snapshot: status.error set, not ready."""
        self._snapshots.fail(namespace, vs_name, message)
