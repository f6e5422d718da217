"""Simulated CSI provisioner, PV controller (binding, reclaim) and the storage-protection controllers."""

from __future__ import annotations

import os
from pathlib import Path

from barge.kube.resources import PERSISTENT_VOLUME, PERSISTENT_VOLUME_CLAIM, STORAGE_CLASS, Obj
from devenv.simrules import claim_names, pod_is_active, selector_matches
from devenv.simsnapshots import SnapshotData, SnapshotRegistry, copy_volume_data, quantity_bytes
from devenv.simworld import DRIVER, PV_PROTECTION, PVC_PROTECTION, SimContext, World, key, remove_path

SNAPSHOT_GROUP = "snapshot.storage.k8s.io"
_UNCLAIMED = (None, "Pending", "Available")
PROVISIONER_ANNOTATION = "volume.kubernetes.io/storage-provisioner"  # set by the PV controller


def in_use(path: Path) -> bool:
    """Whether a process on this machine holds a file under ``path`` open, or works in it.

    A real volume cannot be deleted while a node still has it mounted, and a node cannot unmount
    it while a process uses it: the simulator has no mounts, so a volume's data is kept while its
    user (an agent that has not let go of an exposure yet) still holds it."""
    prefix = str(path)
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            links = [*(proc / "fd").iterdir(), proc / "cwd"]
        except OSError:
            continue  # gone meanwhile, or not ours to look at
        for link in links:
            try:
                target = os.readlink(link)
            except OSError:
                continue  # closed meanwhile
            if target == prefix or target.startswith(prefix + os.sep):
                return True
    return False


def _phase(obj: Obj) -> str | None:
    phase: str | None = (obj.get("status") or {}).get("phase")
    return phase


def prepare_empty(path: Path, block: bool, size: int) -> None:
    """A fresh volume: an empty directory, or a sparse image of the requested size."""
    path.parent.mkdir(parents=True, exist_ok=True)
    if block:
        with path.open("ab") as image:
            os.truncate(image.fileno(), max(size, image.tell()))
    else:
        path.mkdir(exist_ok=True)


def claim_ref_admits(pv: Obj, pvc: Obj) -> bool:
    """The PV is free, or pre-bound to this claim (by name, and by uid once it has one)."""
    ref = pv["spec"].get("claimRef")
    if not ref:
        return _phase(pv) in _UNCLAIMED
    namespace, name = key(pvc)
    return (ref.get("namespace"), ref.get("name")) == (namespace, name) and ref.get("uid") in (
        None,
        "",
        pvc["metadata"]["uid"],
    )


def static_volume_fits(pv: Obj, pvc: Obj) -> bool:
    """An Available, unclaimed PV that satisfies the claim: class, selector, mode, access, size."""
    pv_spec, claim = pv["spec"], pvc["spec"]
    if pv_spec.get("claimRef") or pv["metadata"].get("deletionTimestamp") or _phase(pv) not in _UNCLAIMED:
        return False
    if pv_spec.get("storageClassName", "") != (claim.get("storageClassName") or ""):
        return False
    if claim.get("selector") and not selector_matches(claim["selector"], pv["metadata"].get("labels") or {}):
        return False
    if pv_spec.get("volumeMode", "Filesystem") != claim.get("volumeMode", "Filesystem"):
        return False
    if not set(claim.get("accessModes") or []) <= set(pv_spec.get("accessModes") or []):
        return False
    request = quantity_bytes(claim["resources"]["requests"]["storage"])
    return quantity_bytes(pv_spec["capacity"]["storage"]) >= request


class StorageController:
    """PVC -> PV provisioning (empty, from a snapshot, or a clone), binding, protection and reclaim.

    ``provisioner_only``: a real kube-controller-manager runs beside it (``devenv.realnode``), whose
    PV controller binds (a provisioned PV names its claim in ``claimRef``, as the external
    provisioner's do) and whose protection controllers remove the finalizers; this one then plays
    only the CSI provisioner: it creates volumes and deletes Released ones of its driver."""

    def __init__(
        self, ctx: SimContext, registry: SnapshotRegistry, *, provisioner_only: bool = False
    ) -> None:
        self._ctx = ctx
        self._registry = registry
        self.provisioner_only = provisioner_only

    def reconcile(self, world: World) -> None:
        for pvc in world.pvcs.values():
            self._ctx.attempt(f"claim {key(pvc)}", self._claim, pvc, world)
        for pv in world.pvs.values():
            self._ctx.attempt(f"volume {key(pv)[1]}", self._volume, pv, world)

    # -- claims ----------------------------------------------------------------------------------

    def _claim(self, pvc: Obj, world: World) -> None:
        if self.provisioner_only:
            if self._handed_to_provisioner(pvc):
                self._provision(pvc, world)
            return
        if pvc["metadata"].get("deletionTimestamp"):
            self._release_protection(pvc, world)
            return
        if _phase(pvc) == "Bound":
            pv = world.pvs.get(pvc["spec"].get("volumeName") or "")
            ref = (pv or {}).get("spec", {}).get("claimRef") or {}
            if pv is not None and _phase(pv) != "Bound" and ref.get("uid") == pvc["metadata"]["uid"]:
                self._ctx.objects.patch(
                    PERSISTENT_VOLUME, None, pv["metadata"]["name"], {"status": {"phase": "Bound"}}, "status"
                )
            return
        pv = self._matching_volume(pvc, world)
        if pv is not None:
            self.bind(pv, pvc)
        elif self._wants_provisioning(pvc):
            self._provision(pvc, world)

    @classmethod
    def _handed_to_provisioner(cls, pvc: Obj) -> bool:
        """The real PV controller found no volume and named this driver to provision one."""
        annotations = pvc["metadata"].get("annotations") or {}
        return (
            annotations.get(PROVISIONER_ANNOTATION) == DRIVER
            and not pvc["metadata"].get("deletionTimestamp")
            and cls._wants_provisioning(pvc)
        )

    @staticmethod
    def _wants_provisioning(pvc: Obj) -> bool:
        """Dynamic provisioning: a class, and neither a named volume nor a selector to wait for."""
        spec = pvc["spec"]
        return bool(spec.get("storageClassName")) and not spec.get("volumeName") and not spec.get("selector")

    def _matching_volume(self, pvc: Obj, world: World) -> Obj | None:
        wanted = pvc["spec"].get("volumeName")
        if wanted:
            pv = world.pvs.get(wanted)
            return pv if pv is not None and claim_ref_admits(pv, pvc) else None
        for pv in world.pvs.values():
            if (
                pv["spec"].get("claimRef")
                and not pv["metadata"].get("deletionTimestamp")
                and claim_ref_admits(pv, pvc)
            ):
                return pv
        fitting = [pv for pv in world.pvs.values() if static_volume_fits(pv, pvc)]
        return min(fitting, key=lambda pv: quantity_bytes(pv["spec"]["capacity"]["storage"]), default=None)

    def bind(self, pv: Obj, pvc: Obj) -> None:
        """Point each at the other and mark both Bound (the PV first, as the PV controller does)."""
        objects, pv_name = self._ctx.objects, pv["metadata"]["name"]
        namespace, name = key(pvc)
        claim_ref = {
            "apiVersion": "v1",
            "kind": "PersistentVolumeClaim",
            "namespace": namespace,
            "name": name,
            "uid": pvc["metadata"]["uid"],
        }
        if (pv["spec"].get("claimRef") or {}).get("uid") != claim_ref["uid"]:
            # Against the version read: two claims racing for one PV cannot both win it (409).
            version = {"resourceVersion": pv["metadata"]["resourceVersion"]}
            claim = {"metadata": version, "spec": {"claimRef": claim_ref}}
            objects.patch(PERSISTENT_VOLUME, None, pv_name, claim)
        objects.patch(PERSISTENT_VOLUME, None, pv_name, {"status": {"phase": "Bound"}}, "status")
        annotations = {
            "pv.kubernetes.io/bind-completed": "yes",
            "pv.kubernetes.io/bound-by-controller": "yes",
        }
        binding = {"metadata": {"annotations": annotations}, "spec": {"volumeName": pv_name}}
        objects.patch(PERSISTENT_VOLUME_CLAIM, namespace, name, binding)
        status = {
            "phase": "Bound",
            "capacity": pv["spec"].get("capacity"),
            "accessModes": pv["spec"].get("accessModes"),
        }
        objects.patch(PERSISTENT_VOLUME_CLAIM, namespace, name, {"status": status}, "status")

    def _provision(self, pvc: Obj, world: World) -> None:
        spec = pvc["spec"]
        pv_name = f"pvc-{pvc['metadata']['uid']}"
        existing = world.pvs.get(pv_name) or self._ctx.objects.find(PERSISTENT_VOLUME, None, pv_name)
        if existing is not None:
            if not self.provisioner_only:
                self.bind(existing, pvc)
            return
        block = spec.get("volumeMode") == "Block"
        request = spec["resources"]["requests"]["storage"]
        target = self._ctx.data_path(pv_name, block)
        if not target.exists():
            ready, source = self._data_source(pvc, world)
            if not ready:
                return  # wait for the snapshot or source claim
            if source is None:
                prepare_empty(target, block, quantity_bytes(request))
            else:
                copy_volume_data(source.path.resolve(), target, block)
                if block:
                    prepare_empty(target, block, quantity_bytes(request))
        created = self._ctx.objects.create(PERSISTENT_VOLUME, self.volume_body(pvc, pv_name, block, request))
        if not self.provisioner_only:
            self.bind(created, pvc)

    def volume_body(self, pvc: Obj, pv_name: str, block: bool, request: str) -> Obj:
        namespace, name = key(pvc)
        class_name = pvc["spec"]["storageClassName"]
        storage_class = self._ctx.objects.find(STORAGE_CLASS, None, class_name) or {}
        csi: Obj = {"driver": DRIVER, "volumeHandle": pv_name}
        if not block:
            csi["fsType"] = "ext4"
        return {
            "apiVersion": "v1",
            "kind": "PersistentVolume",
            "metadata": {
                "name": pv_name,
                "annotations": {"pv.kubernetes.io/provisioned-by": DRIVER},
            },
            "spec": {
                "capacity": {"storage": request},
                "accessModes": pvc["spec"].get("accessModes") or ["ReadWriteOnce"],
                "volumeMode": "Block" if block else "Filesystem",
                "persistentVolumeReclaimPolicy": storage_class.get("reclaimPolicy", "Delete"),
                "storageClassName": class_name,
                "claimRef": {
                    "apiVersion": "v1",
                    "kind": "PersistentVolumeClaim",
                    "namespace": namespace,
                    "name": name,
                    "uid": pvc["metadata"]["uid"],
                },
                "csi": csi,
            },
        }

    def _data_source(self, pvc: Obj, world: World) -> tuple[bool, SnapshotData | None]:
        """(ready, data): what to fill a new volume from, None for an empty volume."""
        source = pvc["spec"].get("dataSourceRef") or pvc["spec"].get("dataSource") or {}
        namespace, _ = key(pvc)
        if source.get("kind") == "VolumeSnapshot" and source.get("apiGroup") == SNAPSHOT_GROUP:
            data = self._from_snapshot(namespace, source["name"], world)
            return data is not None, data
        if source.get("kind") == "PersistentVolumeClaim" and not source.get("apiGroup"):
            data = self._from_claim(namespace, source["name"], world)
            return data is not None, data
        return True, None  # no source, or a populator Barge does not use: an empty volume

    def _from_snapshot(self, namespace: str, name: str, world: World) -> SnapshotData | None:
        status = (world.snapshots.get((namespace, name)) or {}).get("status") or {}
        content = world.contents.get(status.get("boundVolumeSnapshotContentName") or "")
        if not status.get("readyToUse") or content is None:
            return None
        handle = (content.get("status") or {}).get("snapshotHandle")
        data = self._registry.resolve(handle)
        if data is None:
            self._ctx.record(f"snapshot {namespace}/{name}: handle {handle!r} is unknown to the simulator")
        return data

    def _from_claim(self, namespace: str, name: str, world: World) -> SnapshotData | None:
        origin = world.pvcs.get((namespace, name))
        pv = world.pvs.get(((origin or {}).get("spec") or {}).get("volumeName") or "")
        if pv is None:
            return None
        block = pv["spec"].get("volumeMode") == "Block"
        size = quantity_bytes(pv["spec"]["capacity"]["storage"])
        return SnapshotData(self._ctx.data_path(pv["metadata"]["name"], block), block, size)

    def _release_protection(self, pvc: Obj, world: World) -> None:
        if PVC_PROTECTION not in (pvc["metadata"].get("finalizers") or []):
            return
        namespace, name = key(pvc)
        in_use = any(
            p["metadata"]["namespace"] == namespace and pod_is_active(p) and name in claim_names(p)
            for p in world.pods
        )
        if not in_use:
            self._ctx.remove_finalizer(PERSISTENT_VOLUME_CLAIM, pvc, PVC_PROTECTION)

    # -- volumes ---------------------------------------------------------------------------------

    def _volume(self, pv: Obj, world: World) -> None:
        if self.provisioner_only:
            deleting = pv["metadata"].get("deletionTimestamp")
            if _phase(pv) == "Released" and self._deletable(pv) and not deleting:
                self._reclaim(pv)
            return
        ref = pv["spec"].get("claimRef") or {}
        if not ref and _phase(pv) in (None, "Pending") and not pv["metadata"].get("deletionTimestamp"):
            self._ctx.objects.patch(
                PERSISTENT_VOLUME, None, pv["metadata"]["name"], {"status": {"phase": "Available"}}, "status"
            )
            return
        if not self._ctx.in_scope(ref.get("namespace")):
            return
        metadata = pv["metadata"]
        if (
            metadata.get("deletionTimestamp")
            and _phase(pv) != "Bound"
            and PV_PROTECTION in (metadata.get("finalizers") or [])
        ):
            self._ctx.remove_finalizer(PERSISTENT_VOLUME, pv, PV_PROTECTION)
            return
        if ref.get("uid") and not self._reclaimed(pv) and self._claim_is_gone(ref, world):
            self._reclaim(pv)

    def _reclaimed(self, pv: Obj) -> bool:
        """Nothing more to do: Released and kept (Retain, or not ours), or already being deleted."""
        if pv["metadata"].get("deletionTimestamp"):
            return True
        return _phase(pv) in ("Released", "Failed") and not self._deletable(pv)

    @staticmethod
    def _deletable(pv: Obj) -> bool:
        spec = pv["spec"]
        return bool(
            spec.get("persistentVolumeReclaimPolicy") == "Delete"
            and (spec.get("csi") or {}).get("driver") == DRIVER
        )

    def _claim_is_gone(self, ref: Obj, world: World) -> bool:
        listed = world.pvcs.get((ref["namespace"], ref["name"]))
        if listed is not None and listed["metadata"]["uid"] == ref["uid"]:
            return False
        current = self._ctx.objects.find(PERSISTENT_VOLUME_CLAIM, ref["namespace"], ref["name"])
        return current is None or current["metadata"]["uid"] != ref["uid"]

    def _reclaim(self, pv: Obj) -> None:
        """Released; then, for a Delete-policy volume of this driver, the PV and its data go."""
        name = pv["metadata"]["name"]
        if _phase(pv) not in ("Released", "Failed"):
            released = {"status": {"phase": "Released"}}
            self._ctx.objects.patch(PERSISTENT_VOLUME, None, name, released, "status")
        if self._deletable(pv):
            data = self._ctx.data_path(name, pv["spec"].get("volumeMode") == "Block")
            if in_use(data):
                return  # still published on a node: DeleteVolume waits (the next pass tries again)
            remove_path(data)
            self._ctx.objects.delete(PERSISTENT_VOLUME, None, name, uid=pv["metadata"]["uid"])
