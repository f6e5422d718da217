"""Simulated garbage collector: background deletion of Pods, PVCs and VolumeSnapshots whose owners are gone.

The API server alone never cascades; without this a forgotten exposer pod or PVC would outlive its
DataUpload, which a real cluster would not allow.
"""

from __future__ import annotations

from barge.devenv.simapi import PODS, PVCS, VOLUME_SNAPSHOTS, Obj, Resource
from barge.devenv.simworld import SimContext, World, key


class GarbageCollector:
    def __init__(self, ctx: SimContext) -> None:
        self._ctx = ctx

    def reconcile(self, world: World) -> None:
        owner_uids: dict[tuple[str, str, str], set[str] | None] = {}
        dependents: list[tuple[Resource, Obj]] = [(PODS, p) for p in world.pods]
        dependents += [(PVCS, c) for c in world.pvcs.values()]
        dependents += [(VOLUME_SNAPSHOTS, s) for s in world.snapshots.values()]
        for resource, obj in dependents:
            refs = obj["metadata"].get("ownerReferences") or []
            if not refs or obj["metadata"].get("deletionTimestamp"):
                continue
            self._ctx.attempt(
                f"gc {resource.plural} {key(obj)}", self._collect, resource, obj, refs, owner_uids
            )

    def _collect(
        self,
        resource: Resource,
        obj: Obj,
        refs: list[Obj],
        owner_uids: dict[tuple[str, str, str], set[str] | None],
    ) -> None:
        namespace, name = key(obj)
        for ref in refs:
            listing_key = (ref["apiVersion"], ref["kind"], namespace)
            if listing_key not in owner_uids:
                owner_uids[listing_key] = self._owner_uids(*listing_key)
            known = owner_uids[listing_key]
            if known is None or ref["uid"] in known:
                return  # an owner exists (or its kind is unknown: keep, as upstream does)
        if all(self._confirmed_gone(namespace, ref) for ref in refs):
            self._ctx.rest.delete(resource, name, namespace, uid=obj["metadata"]["uid"])

    def _owner_uids(self, api_version: str, kind: str, namespace: str) -> set[str] | None:
        resource = self._ctx.rest.resource_for(api_version, kind)
        if resource is None:
            return None
        listing = self._ctx.rest.request("GET", resource.path(namespace if resource.namespaced else None))
        return {item["metadata"]["uid"] for item in listing.get("items") or []}

    def _confirmed_gone(self, namespace: str, ref: Obj) -> bool:
        """Re-read the owner by name: a listing may predate an owner created a moment ago."""
        resource = self._ctx.rest.resource_for(ref["apiVersion"], ref["kind"])
        if resource is None:
            return False
        owner = self._ctx.rest.get(resource, ref["name"], namespace if resource.namespaced else None)
        return owner is None or owner["metadata"]["uid"] != ref["uid"]
