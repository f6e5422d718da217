"""Simulated CSI snapshots: a registry of snapshot handles and the snapshot controller.

A handle ``sim-snap:<id>`` names a directory (Filesystem) or image file (Block) recorded in
``<root>/snapshots/<id>.json``; the registry lives on disk so any process sharing the root (a test,
the demo (``make demo``), a second simulator) resolves the same handles. The registry is the storage system:
a record is a storage snapshot, and it lives until a VolumeSnapshotContent with deletionPolicy
Delete that names it is deleted (``SnapshotRegistry.live`` lists what is left, so tests see leaks).

Like the external-snapshotter, every content of the simulated driver carries the finalizer
``CONTENT_FINALIZER`` while it exists; when one is deleted the controller deletes the storage
snapshot first if the policy is Delete (a Retain content just lets go), then removes the finalizer.
"""

from __future__ import annotations

import json
import math
import subprocess
import uuid
from dataclasses import dataclass
from decimal import Decimal
from pathlib import Path
from typing import Any

from kubernetes.utils import parse_quantity

from barge.fs.backup import scan_total_bytes
from barge.kube.resources import VOLUME_SNAPSHOT, VOLUME_SNAPSHOT_CONTENT, Obj
from devenv.simworld import DRIVER, SimContext, World, key, remove_path

HANDLE_PREFIX = "sim-snap:"
CONTENT_FINALIZER = "snapshot.storage.kubernetes.io/volumesnapshotcontent-bound-protection"
_BINARY_SUFFIXES = (("Ti", 1 << 40), ("Gi", 1 << 30), ("Mi", 1 << 20), ("Ki", 1 << 10))


def quantity_bytes(quantity: str | int) -> int:
    value: Decimal = parse_quantity(quantity)
    return math.ceil(value)


def format_quantity(size: int) -> str:
    """Canonical binary-SI form, as the API server prints an int64 quantity ("1Gi", "1536Mi", "1000")."""
    for suffix, unit in _BINARY_SUFFIXES:
        if size >= unit and size % unit == 0:
            return f"{size // unit}{suffix}"
    return str(size)


def copy_volume_data(source: Path, target: Path, block: bool) -> None:
    """``cp -a --reflink=auto`` of a directory, or of an image file keeping (and finding) its holes."""
    partial = target.with_name(target.name + ".partial")
    subprocess.run(["rm", "-rf", "--", str(partial)], check=True)
    target.parent.mkdir(parents=True, exist_ok=True)
    if block:
        argv = ["cp", "--reflink=auto", "--sparse=always", "--", str(source), str(partial)]
    else:
        argv = ["cp", "-a", "--reflink=auto", "--no-target-directory", "--", str(source), str(partial)]
    subprocess.run(argv, check=True, capture_output=True)
    partial.rename(target)


def tree_size(path: Path) -> int:
    """Bytes a volume needs for ``path``: an image's length, or a directory's apparent file sizes."""
    if path.is_file():
        return path.stat().st_size
    return scan_total_bytes(path)  # any depth (rglob recurses)


@dataclass(frozen=True)
class SnapshotData:
    """What a sim snapshot handle stands for."""

    path: Path
    block: bool
    size: int


class SnapshotRegistry:
    """The simulated storage system's snapshots: one record per handle, on disk under the root."""

    def __init__(self, root: Path) -> None:
        self._dir = root / "snapshots"

    def register(self, data: SnapshotData, *, copy: bool = False) -> str:
        """Record a snapshot of ``data``; ``copy``: the data is the registry's own (``keep_copy``),
        deleted with the record."""
        snapshot_id = uuid.uuid4().hex
        self._dir.mkdir(parents=True, exist_ok=True)
        record = {"path": str(data.path), "block": data.block, "size": data.size, "copy": copy}
        (self._dir / f"{snapshot_id}.json").write_text(json.dumps(record))
        return HANDLE_PREFIX + snapshot_id

    def resolve(self, handle: str | None) -> SnapshotData | None:
        record = self._record(handle)
        if record is None:
            return None
        return SnapshotData(Path(record["path"]), bool(record["block"]), int(record["size"]))

    def keep_copy(self, source: Path, block: bool, size: int) -> str:
        """A point-in-time copy of ``source`` under the registry, registered (a dynamic snapshot)."""
        copy = self._dir / f"data-{uuid.uuid4().hex}{'.img' if block else ''}"
        copy_volume_data(source, copy, block)
        return self.register(SnapshotData(copy, block, size), copy=True)

    def delete(self, handle: str | None) -> bool:
        """Delete the storage snapshot: its record and, if the registry made it, its data copy.
        False when there was none (CSI DeleteSnapshot is idempotent, so is this)."""
        record = self._record(handle)
        path = self._path(handle)
        if record is None or path is None:
            return False
        path.unlink(missing_ok=True)
        if record.get("copy"):
            remove_path(Path(record["path"]))
        return True

    def live(self) -> dict[str, SnapshotData]:
        """Every storage snapshot that exists, by handle."""
        snapshots = {}
        for path in sorted(self._dir.glob("*.json")) if self._dir.is_dir() else ():
            handle = HANDLE_PREFIX + path.stem
            data = self.resolve(handle)
            if data is not None:
                snapshots[handle] = data
        return snapshots

    def _path(self, handle: str | None) -> Path | None:
        if not handle or not handle.startswith(HANDLE_PREFIX):
            return None
        snapshot_id = handle.removeprefix(HANDLE_PREFIX)
        return self._dir / f"{snapshot_id}.json" if snapshot_id.isalnum() else None

    def _record(self, handle: str | None) -> dict[str, Any] | None:
        path = self._path(handle)
        if path is None:
            return None
        try:
            record: dict[str, Any] = json.loads(path.read_text())
        except FileNotFoundError:
            return None
        return record


def content_handle(content: Obj) -> str:
    """The storage snapshot a content stands for (dynamic: status; pre-provisioned: spec)."""
    status, spec = content.get("status") or {}, content.get("spec") or {}
    return str(status.get("snapshotHandle") or (spec.get("source") or {}).get("snapshotHandle") or "")


def content_body(vs: Obj, name: str, source: Obj, snapshot_class: str | None, deletion_policy: str) -> Obj:
    namespace, vs_name = key(vs)
    return {
        "apiVersion": "snapshot.storage.k8s.io/v1",
        "kind": "VolumeSnapshotContent",
        "metadata": {"name": name, "finalizers": [CONTENT_FINALIZER]},
        "spec": {
            "deletionPolicy": deletion_policy,
            "driver": DRIVER,
            "source": source,
            "volumeSnapshotClassName": snapshot_class,
            "volumeSnapshotRef": {
                "apiVersion": "snapshot.storage.k8s.io/v1",
                "kind": "VolumeSnapshot",
                "namespace": namespace,
                "name": vs_name,
                "uid": vs["metadata"]["uid"],
            },
        },
    }


class SnapshotController:
    """Makes VolumeSnapshots ready the way the snapshot-controller and the CSI sidecar would, and
    deletes storage snapshots when a Delete-policy content of the simulated driver is deleted."""

    def __init__(self, ctx: SimContext, registry: SnapshotRegistry) -> None:
        self._ctx = ctx
        self._registry = registry

    def reconcile(self, world: World) -> None:
        for vs in world.snapshots.values():
            status = vs.get("status") or {}
            if vs["metadata"].get("deletionTimestamp") or status.get("readyToUse") or status.get("error"):
                continue
            source = (vs.get("spec") or {}).get("source") or {}
            if source.get("volumeSnapshotContentName"):
                self._ctx.attempt(f"ready snapshot {key(vs)}", self._ready_pre_provisioned, vs, world)
            elif source.get("persistentVolumeClaimName"):
                self._ctx.attempt(f"take snapshot {key(vs)}", self._take_dynamic, vs, world)
        for content in world.contents.values():
            if not self._ours(content):
                continue
            if content["metadata"].get("deletionTimestamp"):
                self._ctx.attempt(f"finalize content {key(content)[1]}", self._finalize, content)
                continue
            self._ctx.attempt(f"protect content {key(content)[1]}", self._protect, content)
            self._ctx.attempt(f"delete content {key(content)}", self._delete_if_orphaned, content, world)

    def _ours(self, content: Obj) -> bool:
        """A content of the simulated driver bound (or to be bound) to a snapshot in scope."""
        spec = content.get("spec") or {}
        ref = spec.get("volumeSnapshotRef") or {}
        return spec.get("driver") == DRIVER and self._ctx.in_scope(ref.get("namespace"))

    def _protect(self, content: Obj) -> None:
        """The snapshot-controller's finalizer on every live content (upstream: needToAddContentFinalizer)."""
        metadata = content["metadata"]
        finalizers = list(metadata.get("finalizers") or [])
        if CONTENT_FINALIZER not in finalizers:
            patch = {
                "metadata": {
                    "finalizers": [*finalizers, CONTENT_FINALIZER],
                    "resourceVersion": metadata["resourceVersion"],
                }
            }
            self._ctx.objects.patch(VOLUME_SNAPSHOT_CONTENT, None, metadata["name"], patch)

    def _finalize(self, content: Obj) -> None:
        """A deleted content: Delete policy deletes the storage snapshot, then the finalizer goes."""
        if CONTENT_FINALIZER not in (content["metadata"].get("finalizers") or []):
            return
        if (content.get("spec") or {}).get("deletionPolicy") == "Delete":
            self._registry.delete(content_handle(content))
        self._ctx.remove_finalizer(VOLUME_SNAPSHOT_CONTENT, content, CONTENT_FINALIZER)

    def publish(self, vs: Obj, content: Obj, data: SnapshotData, handle: str) -> None:
        """Write the ready statuses of a VolumeSnapshotContent and its VolumeSnapshot."""
        created_ns = int(self._ctx.clock.now().timestamp() * 1e9)
        content_status = {
            "readyToUse": True,
            "snapshotHandle": handle,
            "restoreSize": data.size,
            "creationTime": created_ns,
        }
        objects = self._ctx.objects
        objects.patch(
            VOLUME_SNAPSHOT_CONTENT, None, content["metadata"]["name"], {"status": content_status}, "status"
        )
        vs_status = {
            "boundVolumeSnapshotContentName": content["metadata"]["name"],
            "readyToUse": True,
            "restoreSize": format_quantity(data.size),
            "creationTime": self._ctx.now_text(),
        }
        namespace, name = key(vs)
        objects.patch(VOLUME_SNAPSHOT, namespace, name, {"status": vs_status}, "status")

    def fail(self, namespace: str, name: str, message: str) -> None:
        error = {"readyToUse": False, "error": {"message": message, "time": self._ctx.now_text()}}
        self._ctx.objects.patch(VOLUME_SNAPSHOT, namespace, name, {"status": error}, "status")

    def _ready_pre_provisioned(self, vs: Obj, world: World) -> None:
        content = world.contents.get(vs["spec"]["source"]["volumeSnapshotContentName"])
        if content is None:
            return  # the content may be created after the snapshot; wait for it
        ref = content["spec"].get("volumeSnapshotRef") or {}
        namespace, name = key(vs)
        if (ref.get("namespace"), ref.get("name")) != (namespace, name):
            self.fail(
                namespace, name, f"VolumeSnapshotContent {key(content)[1]} is bound to another snapshot"
            )
            return
        handle = (content["spec"].get("source") or {}).get("snapshotHandle")
        data = self._registry.resolve(handle)
        if data is None:
            self.fail(
                namespace, name, f"snapshot handle {handle!r} does not exist in the simulated CSI driver"
            )
            return
        finalizers = list(content["metadata"].get("finalizers") or [])
        if ref.get("uid") != vs["metadata"]["uid"] or CONTENT_FINALIZER not in finalizers:
            # Bound and protected in one write: a ready snapshot's content always has the finalizer.
            bind = {
                "metadata": {
                    "finalizers": sorted({*finalizers, CONTENT_FINALIZER}),
                    "resourceVersion": content["metadata"]["resourceVersion"],
                },
                "spec": {"volumeSnapshotRef": {**ref, "uid": vs["metadata"]["uid"]}},
            }
            self._ctx.objects.patch(VOLUME_SNAPSHOT_CONTENT, None, content["metadata"]["name"], bind)
        self.publish(vs, content, data, str(handle))

    def _take_dynamic(self, vs: Obj, world: World) -> None:
        namespace, _ = key(vs)
        pvc = world.pvcs.get((namespace, vs["spec"]["source"]["persistentVolumeClaimName"]))
        pv = world.pvs.get(((pvc or {}).get("spec") or {}).get("volumeName") or "")
        if pvc is None or pv is None or (pvc.get("status") or {}).get("phase") != "Bound":
            return  # upstream waits for the claim to be bound
        block = pv["spec"].get("volumeMode") == "Block"
        size = quantity_bytes(pv["spec"]["capacity"]["storage"])
        handle = self._registry.keep_copy(self._ctx.data_path(pv["metadata"]["name"], block), block, size)
        content_name = f"snapcontent-{vs['metadata']['uid']}"
        body = content_body(
            vs,
            content_name,
            {"volumeHandle": pv["spec"].get("csi", {}).get("volumeHandle", pv["metadata"]["name"])},
            vs["spec"].get("volumeSnapshotClassName"),
            "Delete",
        )
        content = self._ctx.objects.create(VOLUME_SNAPSHOT_CONTENT, body)
        self.publish(vs, content, SnapshotData(Path(), block, size), handle)

    def _delete_if_orphaned(self, content: Obj, world: World) -> None:
        """A Delete-policy content whose snapshot (by uid) is gone goes too; Retain keeps it."""
        spec = content.get("spec") or {}
        ref = spec.get("volumeSnapshotRef") or {}
        if spec.get("deletionPolicy") != "Delete" or not ref.get("uid"):
            return
        vs = world.snapshots.get((ref.get("namespace", ""), ref.get("name", "")))
        if vs is not None and vs["metadata"]["uid"] == ref["uid"]:
            return
        current = self._ctx.objects.find(VOLUME_SNAPSHOT, ref.get("namespace"), ref.get("name", ""))
        if current is None or current["metadata"]["uid"] != ref["uid"]:
            self._ctx.objects.delete(
                VOLUME_SNAPSHOT_CONTENT, None, content["metadata"]["name"], uid=content["metadata"]["uid"]
            )
