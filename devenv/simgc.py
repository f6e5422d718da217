"""Simulated garbage collector for Pods, PVCs and VolumeSnapshots (ownerReferences).

The API server alone never cascades; without this a forgotten exposer pod or PVC would outlive its
DataUpload, which a real cluster would not allow. Background deletion: a dependent whose owners
are all gone (by uid) is deleted. Foreground deletion: the dependents of an owner carrying the
``foregroundDeletion`` finalizer are deleted, and the finalizer is removed once none is left.
"""

from __future__ import annotations

from dataclasses import dataclass

from barge.kube.resources import PERSISTENT_VOLUME_CLAIM, POD, VOLUME_SNAPSHOT, Obj, Resource
from devenv.simworld import SimContext, World, key

FOREGROUND = "foregroundDeletion"


@dataclass(frozen=True)
class _Owner:
    resource: Resource
    namespace: str | None
    name: str
    uid: str


class _OwnerCache:
    """Owners listed once per (apiVersion, kind, namespace) per pass, by uid; None: unknown kind."""

    def __init__(self, ctx: SimContext) -> None:
        self._ctx = ctx
        self._listings: dict[tuple[str, str, str], dict[str, Obj] | None] = {}

    def lookup(self, namespace: str, ref: Obj) -> tuple[bool, Obj | None]:
        """(known kind, the owner if it exists)."""
        listing_key = (ref["apiVersion"], ref["kind"], namespace)
        if listing_key not in self._listings:
            self._listings[listing_key] = self._list(*listing_key)
        owners = self._listings[listing_key]
        if owners is None:
            return False, None
        return True, owners.get(ref["uid"])

    def _list(self, api_version: str, kind: str, namespace: str) -> dict[str, Obj] | None:
        resource = self._ctx.objects.resource_of(api_version, kind)
        if resource is None:
            return None
        listing = self._ctx.objects.list(resource, namespace if resource.namespaced else None)
        return {item["metadata"]["uid"]: item for item in listing}


class GarbageCollector:
    def __init__(self, ctx: SimContext) -> None:
        self._ctx = ctx
        self._foreground: set[_Owner] = set()

    def reconcile(self, world: World) -> None:
        owners = _OwnerCache(self._ctx)
        dependents: list[tuple[Resource, Obj]] = [(POD, p) for p in world.pods]
        dependents += [(PERSISTENT_VOLUME_CLAIM, c) for c in world.pvcs.values()]
        dependents += [(VOLUME_SNAPSHOT, s) for s in world.snapshots.values()]
        for resource, obj in dependents:
            refs = obj["metadata"].get("ownerReferences") or []
            if refs and not obj["metadata"].get("deletionTimestamp"):
                self._ctx.attempt(
                    f"gc {resource.plural} {key(obj)}", self._collect, resource, obj, refs, owners
                )
        remaining = {
            ref["uid"] for _, obj in dependents for ref in obj["metadata"].get("ownerReferences") or []
        }
        for owner in list(self._foreground):
            if owner.uid not in remaining:
                self._ctx.attempt(f"gc finish foreground {owner.name}", self._finish_foreground, owner)

    def _collect(self, resource: Resource, obj: Obj, refs: list[Obj], owners: _OwnerCache) -> None:
        namespace, name = key(obj)
        gone = 0
        for ref in refs:
            known, owner = owners.lookup(namespace, ref)
            if not known:
                return  # an owner kind the API does not serve: keep, as upstream does
            if owner is None:
                gone += 1
            elif FOREGROUND in (owner["metadata"].get("finalizers") or []) and owner["metadata"].get(
                "deletionTimestamp"
            ):
                self._track_foreground(namespace, ref)
                self._ctx.objects.delete(resource, namespace, name, uid=obj["metadata"]["uid"])
                return
        if gone == len(refs) and all(self._confirmed_gone(namespace, ref) for ref in refs):
            self._ctx.objects.delete(resource, namespace, name, uid=obj["metadata"]["uid"])

    def _track_foreground(self, namespace: str, ref: Obj) -> None:
        resource = self._ctx.objects.resource_of(ref["apiVersion"], ref["kind"])
        if resource is not None:
            scope = namespace if resource.namespaced else None
            self._foreground.add(_Owner(resource, scope, ref["name"], ref["uid"]))

    def _finish_foreground(self, owner: _Owner) -> None:
        """No dependent is left: the owner's foregroundDeletion finalizer goes, and with it the owner."""
        current = self._ctx.objects.find(owner.resource, owner.namespace, owner.name)
        if current is not None and current["metadata"]["uid"] == owner.uid:
            self._ctx.remove_finalizer(owner.resource, current, FOREGROUND)
        self._foreground.discard(owner)

    def _confirmed_gone(self, namespace: str, ref: Obj) -> bool:
        """Re-read the owner by name: a listing may predate an owner created a moment ago."""
        resource = self._ctx.objects.resource_of(ref["apiVersion"], ref["kind"])
        if resource is None:
            return False
        owner = self._ctx.objects.find(resource, namespace if resource.namespaced else None, ref["name"])
        return owner is None or owner["metadata"]["uid"] != ref["uid"]
