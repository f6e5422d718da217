"""Which CRs an event concerns: the work an event causes must not grow with the number of CRs.

Waking every active CR on any PersistentVolume, VolumeSnapshot or Node event made a burst of N
DataUploads cost N reconciles per event, N² in all. Instead each event is routed to the CRs that
name the object, through an index kept from the CR events themselves (``References``), and an
event counts only when something a decision reads of the object has changed (``Changes``): a
Node's status heartbeat, a PersistentVolume's status phase or a pod's conditions change nothing
Barge reads.

Pure: plain dicts in, ``ItemKey`` sets out.
"""

from __future__ import annotations

import threading
from collections import defaultdict
from collections.abc import Mapping
from typing import Any

from barge.control.naming import LABEL_OWNER_KIND, LABEL_OWNER_NAME
from coordinator.scheduler import ItemKey
from coordinator.world import read_state

Obj = Mapping[str, Any]
Ref = tuple[str, str, str]  # (kind, namespace, name) of an object a CR names
CR_KINDS = ("DataUpload", "DataDownload")


def _meta(obj: Obj) -> Obj:
    return obj.get("metadata") or {}


def references_of(kind: str, cr: Obj) -> set[Ref]:
    """The objects outside its exposure that a CR's decisions read, by (kind, namespace, name)."""
    meta, spec = _meta(cr), cr.get("spec") or {}
    namespace = str(meta.get("namespace", ""))
    refs: set[Ref] = {("BackupStorageLocation", namespace, str(spec.get("backupStorageLocation", "")))}
    if kind == "DataUpload":
        source_ns = str(spec.get("sourceNamespace", ""))
        snapshot = str((spec.get("csiSnapshot") or {}).get("volumeSnapshot", ""))
        refs.add(("VolumeSnapshot", source_ns, snapshot))
        refs.add(("PersistentVolumeClaim", source_ns, str(spec.get("sourcePVC", ""))))
    else:
        target = spec.get("targetVolume") or {}
        refs.add(("PersistentVolumeClaim", str(target.get("namespace", "")), str(target.get("pvc", ""))))
    return {ref for ref in refs if ref[2]}


class References:
    """The index from referenced objects (and CR uids) to CRs; thread-safe."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._by_ref: dict[Ref, set[ItemKey]] = defaultdict(set)
        self._refs_of: dict[ItemKey, set[Ref]] = {}
        self._by_uid: dict[str, ItemKey] = {}
        self._uid_of: dict[ItemKey, str] = {}

    def update(self, key: ItemKey, cr: Obj | None) -> None:
        """Record what ``key`` names now (``None``: the CR is gone)."""
        refs = references_of(key.kind, cr) if cr is not None else set()
        uid = str(_meta(cr).get("uid", "")) if cr is not None else ""
        with self._lock:
            for ref in self._refs_of.pop(key, set()) - refs:
                self._discard(ref, key)
            for ref in refs:
                self._by_ref[ref].add(key)
            if refs:
                self._refs_of[key] = refs
            old_uid = self._uid_of.pop(key, "")
            self._by_uid.pop(old_uid, None)
            if uid:
                self._by_uid[uid], self._uid_of[key] = key, uid

    def _discard(self, ref: Ref, key: ItemKey) -> None:
        keys = self._by_ref.get(ref)
        if keys is not None:
            keys.discard(key)
            if not keys:
                del self._by_ref[ref]

    def naming(self, kind: str, namespace: str, name: str) -> set[ItemKey]:
        with self._lock:
            return set(self._by_ref.get((kind, namespace, name), ()))

    def by_uid(self, uid: str) -> ItemKey | None:
        with self._lock:
            return self._by_uid.get(uid)

    def has(self, key: ItemKey) -> bool:
        """The CR exists (as far as its own events told)."""
        with self._lock:
            return key in self._uid_of


def owner_key(obj: Obj, own_namespace: str) -> ItemKey | None:
    """The CR an object Barge created for it belongs to (its owner labels), or None."""
    labels = _meta(obj).get("labels") or {}
    kind, name = labels.get(LABEL_OWNER_KIND), labels.get(LABEL_OWNER_NAME)
    return ItemKey(str(kind), own_namespace, str(name)) if kind in CR_KINDS and name else None


def keys_for_event(kind: str, obj: Obj, refs: References, own_namespace: str) -> set[ItemKey]:
    """The CRs an event on a non-CR object concerns (a BSL event counts only if ``Changes`` says so)."""
    meta, spec = _meta(obj), obj.get("spec") or {}
    owner = owner_key(obj, own_namespace)
    keys: set[ItemKey] = {owner} if owner is not None else set()
    namespace, name = str(meta.get("namespace", "")), str(meta.get("name", ""))
    if kind in ("VolumeSnapshot", "PersistentVolumeClaim", "BackupStorageLocation"):
        keys |= refs.naming(kind, namespace, name)
    elif kind == "VolumeSnapshotContent":
        ref = spec.get("volumeSnapshotRef") or {}
        keys |= refs.naming("VolumeSnapshot", str(ref.get("namespace", "")), str(ref.get("name", "")))
    elif kind == "PersistentVolume":
        claim = spec.get("claimRef") or {}
        claim_ns, claim_name = str(claim.get("namespace", "")), str(claim.get("name", ""))
        keys |= refs.naming("PersistentVolumeClaim", claim_ns, claim_name)
        if claim_ns == own_namespace and claim_name:  # an exposure claim is named after its CR
            named = (ItemKey(cr_kind, own_namespace, claim_name) for cr_kind in CR_KINDS)
            keys |= {key for key in named if refs.has(key)}
    return keys


def _relevant_state(kind: str, obj: Obj) -> object:
    """What decisions read of a Node (cordon, labels), a BSL (its spec: ``generation``) or an
    object a CR's exposure or source is made of (``world.read_state``)."""
    meta = _meta(obj)
    if kind == "Node":
        labels = tuple(sorted((str(k), str(v)) for k, v in (meta.get("labels") or {}).items()))
        return bool((obj.get("spec") or {}).get("unschedulable")), labels
    if kind == "BackupStorageLocation":
        return meta.get("generation")
    return read_state(kind, obj)


class Changes:
    """Tells an event that matters (added, removed, or what decisions read changed) from one that
    does not: a Node's status heartbeat, Velero's periodic BSL validation status, a volume's
    status phase. Remembers the state of the objects it is asked about until ``forget``."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._seen: dict[tuple[str, str, str], object] = {}

    def changed(self, kind: str, event_type: str, obj: Obj) -> bool:
        meta = _meta(obj)
        key = (kind, str(meta.get("namespace", "")), str(meta.get("name", "")))
        with self._lock:
            if event_type == "DELETED":
                self._seen.pop(key, None)
                return True
            state = _relevant_state(kind, obj)
            known = key in self._seen
            previous = self._seen.get(key)
            self._seen[key] = state
            return not known or previous != state

    def forget(self, kind: str, obj: Obj) -> None:
        """Stop remembering ``obj``: an event no CR cares about now leaves no memory behind (and
        the next one that concerns a CR counts as a change, whatever happened in between)."""
        meta = _meta(obj)
        with self._lock:
            self._seen.pop((kind, str(meta.get("namespace", "")), str(meta.get("name", ""))), None)
