"""Simulated CSI snapshots: a registry of snapshot handles and the snapshot controller.

A handle ``sim-snap:<id>`` names a directory (Filesystem) or image file (Block) recorded in
``<root>/snapshots/<id>.json``; the registry lives on disk so any process sharing the root (a test,
``barge demo``, a second simulator) resolves the same handles.
"""

from __future__ import annotations

import json
import math
import subprocess
import uuid
from dataclasses import dataclass
from decimal import Decimal
from pathlib import Path

from kubernetes.utils import parse_quantity

from barge.devenv.simapi import VOLUME_SNAPSHOT_CONTENTS, VOLUME_SNAPSHOTS, Obj
from barge.devenv.simworld import DRIVER, SimContext, World, key

HANDLE_PREFIX = "sim-snap:"
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
    return sum(p.lstat().st_size for p in path.rglob("*") if p.is_file() and not p.is_symlink())


@dataclass(frozen=True)
class SnapshotData:
    """What a sim snapshot handle stands for."""

    path: Path
    block: bool
    size: int


class SnapshotRegistry:
    def __init__(self, root: Path) -> None:
        self._dir = root / "snapshots"

    def register(self, data: SnapshotData) -> str:
        snapshot_id = uuid.uuid4().hex
        self._dir.mkdir(parents=True, exist_ok=True)
        record = {"path": str(data.path), "block": data.block, "size": data.size}
        (self._dir / f"{snapshot_id}.json").write_text(json.dumps(record))
        return HANDLE_PREFIX + snapshot_id

    def resolve(self, handle: str | None) -> SnapshotData | None:
        if not handle or not handle.startswith(HANDLE_PREFIX):
            return None
        snapshot_id = handle.removeprefix(HANDLE_PREFIX)
        if not snapshot_id.isalnum():
            return None
        try:
            record = json.loads((self._dir / f"{snapshot_id}.json").read_text())
        except FileNotFoundError:
            return None
        return SnapshotData(Path(record["path"]), bool(record["block"]), int(record["size"]))

    def keep_copy(self, source: Path, block: bool, size: int) -> str:
        """A point-in-time copy of ``source`` under the registry, registered (a dynamic snapshot)."""
        copy = self._dir / f"data-{uuid.uuid4().hex}{'.img' if block else ''}"
        copy_volume_data(source, copy, block)
        return self.register(SnapshotData(copy, block, size))


def content_body(vs: Obj, name: str, source: Obj, snapshot_class: str | None, deletion_policy: str) -> Obj:
    namespace, vs_name = key(vs)
    return {
        "apiVersion": "snapshot.storage.k8s.io/v1",
        "kind": "VolumeSnapshotContent",
        "metadata": {"name": name},
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
    """Makes VolumeSnapshots ready the way the snapshot-controller and the CSI sidecar would."""

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
            self._ctx.attempt(f"delete content {key(content)}", self._delete_if_orphaned, content, world)

    def publish(self, vs: Obj, content: Obj, data: SnapshotData, handle: str) -> None:
        """Write the ready statuses of a VolumeSnapshotContent and its VolumeSnapshot."""
        created_ns = int(self._ctx.clock.now().timestamp() * 1e9)
        content_status = {
            "readyToUse": True,
            "snapshotHandle": handle,
            "restoreSize": data.size,
            "creationTime": created_ns,
        }
        rest = self._ctx.rest
        rest.patch(
            VOLUME_SNAPSHOT_CONTENTS, content["metadata"]["name"], {"status": content_status}, sub="status"
        )
        vs_status = {
            "boundVolumeSnapshotContentName": content["metadata"]["name"],
            "readyToUse": True,
            "restoreSize": format_quantity(data.size),
            "creationTime": self._ctx.now_text(),
        }
        namespace, name = key(vs)
        rest.patch(VOLUME_SNAPSHOTS, name, {"status": vs_status}, namespace, sub="status")

    def fail(self, namespace: str, name: str, message: str) -> None:
        error = {"readyToUse": False, "error": {"message": message, "time": self._ctx.now_text()}}
        self._ctx.rest.patch(VOLUME_SNAPSHOTS, name, {"status": error}, namespace, sub="status")

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
        if ref.get("uid") != vs["metadata"]["uid"]:
            ref_patch = {"spec": {"volumeSnapshotRef": {**ref, "uid": vs["metadata"]["uid"]}}}
            self._ctx.rest.patch(VOLUME_SNAPSHOT_CONTENTS, content["metadata"]["name"], ref_patch)
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
        content = self._ctx.rest.create(VOLUME_SNAPSHOT_CONTENTS, body)
        self.publish(vs, content, SnapshotData(Path(), block, size), handle)

    def _delete_if_orphaned(self, content: Obj, world: World) -> None:
        """A Delete-policy content whose snapshot (by uid) is gone goes too; Retain keeps it."""
        spec = content.get("spec") or {}
        ref = spec.get("volumeSnapshotRef") or {}
        if spec.get("deletionPolicy") != "Delete" or spec.get("driver") != DRIVER or not ref.get("uid"):
            return
        if not self._ctx.in_scope(ref.get("namespace")) or content["metadata"].get("deletionTimestamp"):
            return
        vs = world.snapshots.get((ref.get("namespace", ""), ref.get("name", "")))
        if vs is not None and vs["metadata"]["uid"] == ref["uid"]:
            return
        current = self._ctx.rest.get(VOLUME_SNAPSHOTS, ref.get("name", ""), ref.get("namespace"))
        if current is None or current["metadata"]["uid"] != ref["uid"]:
            self._ctx.rest.delete(
                VOLUME_SNAPSHOT_CONTENTS, content["metadata"]["name"], uid=content["metadata"]["uid"]
            )
