"""Optimistic, fenced writes of a CR's status and metadata.

Every write carries the resourceVersion of the read it was computed from, so a concurrent change
gives a 409 and the write is recomputed from a fresh read instead of overwriting it. With a
``Fence`` the read must also show the writer's own assignment (``barge.io/assignment``): an agent
whose work was reassigned can never overwrite the new owner's status.

Velero's published CRDs have no status subresource (status is written through the main resource);
Barge's test CRDs have one. Which form is installed is found once per kind through discovery.
"""

from __future__ import annotations

import copy
import threading
from collections.abc import Callable

from kubernetes import client

from barge.control.naming import ASSIGNMENT_ANNOTATION, Fence
from barge.errors import Conflict, Fenced, NotFound
from barge.kube.resources import KubeObjects, Obj, Resource, resource_for

TERMINAL_PHASES = frozenset({"Completed", "Failed", "Canceled"})

StatusMutation = Callable[[Obj], Obj | None]
MetadataMutation = Callable[[Obj], Obj | None]


class StatusWriter:
    """Read-modify-write of ``status`` or ``metadata`` with conflict retry (bounded)."""

    def __init__(self, api: client.ApiClient, max_attempts: int = 10) -> None:
        self._objects = KubeObjects(api)
        self._max_attempts = max_attempts
        self._lock = threading.Lock()
        self._has_status_subresource: dict[Resource, bool] = {}

    def update_status(
        self,
        kind: Resource | str,
        namespace: str,
        name: str,
        mutate: StatusMutation,
        *,
        fence: Fence | None = None,
        current: Obj | None = None,
        metadata: MetadataMutation | None = None,
    ) -> Obj:
        """Write ``mutate(copy of status)``; None from ``mutate`` writes nothing. Returns the object.

        ``current``: a recent read (an informer's copy) to compute the first attempt from instead of
        a GET; a stale one only costs a 409 and a fresh read. Raises Fenced when ``fence`` no longer
        matches the CR (or it is gone or final), Conflict when every attempt raced another writer.

        ``metadata``: a change of metadata that goes with this status (finalizer, annotations),
        made only when ``mutate`` writes: in the same request where status is written through the
        main resource, in a request just before the status one where the CRD has a subresource.
        """
        resource = resource_for(kind)
        for attempt in range(self._max_attempts):
            if attempt or current is None:
                current = self._read(resource, namespace, name, fence)
            elif fence is not None:
                _check_fence(resource, current, fence)
            status = mutate(copy.deepcopy(current.get("status") or {}))
            if status is None:
                return current
            try:
                if metadata is not None:
                    current = self._apply_metadata(resource, current, metadata)
                return self._write_status(resource, {**current, "status": status})
            except Conflict:
                continue
        raise self._exhausted(resource, namespace, name)

    def _apply_metadata(self, resource: Resource, current: Obj, mutate_meta: MetadataMutation) -> Obj:
        """``current`` with ``mutate_meta`` applied: written now if status has its own subresource
        (a status write would drop it), else only in the object for the status write to carry."""
        changed = mutate_meta(copy.deepcopy(current["metadata"]))
        if changed is None:
            return current
        fenced = _fenced(current, changed)
        return self._objects.replace(resource, fenced) if self.has_status_subresource(resource) else fenced

    def update_metadata(
        self,
        kind: Resource | str,
        namespace: str,
        name: str,
        mutate_meta: MetadataMutation,
        *,
        current: Obj | None = None,
    ) -> Obj:
        """Write ``mutate_meta(copy of metadata)`` (finalizers, annotations, labels); None writes
        nothing. ``current``: as for ``update_status``."""
        resource = resource_for(kind)
        for attempt in range(self._max_attempts):
            if attempt or current is None:
                current = self._objects.get(resource, namespace, name)
            metadata = mutate_meta(copy.deepcopy(current["metadata"]))
            if metadata is None:
                return current
            try:
                return self._objects.replace(resource, _fenced(current, metadata))
            except Conflict:
                continue
        raise self._exhausted(resource, namespace, name)

    def has_status_subresource(self, resource: Resource) -> bool:
        """Whether the server serves ``<plural>/status`` for ``resource`` (discovery, cached)."""
        with self._lock:
            known = self._has_status_subresource.get(resource)
        if known is None:
            served = self._objects.api_resources(resource.group, resource.version)
            known = f"{resource.plural}/status" in served
            with self._lock:
                self._has_status_subresource[resource] = known
        return known

    def _read(self, resource: Resource, namespace: str, name: str, fence: Fence | None) -> Obj:
        try:
            current = self._objects.get(resource, namespace, name)
        except NotFound:
            if fence is None:
                raise
            gone = f"{resource.describe(namespace, name)} is gone; assignment {fence.render()} ended"
            raise Fenced(gone) from None
        if fence is not None:
            _check_fence(resource, current, fence)
        return current

    def _write_status(self, resource: Resource, body: Obj) -> Obj:
        if not self.has_status_subresource(resource):
            return self._objects.replace(resource, body)
        try:
            return self._objects.replace(resource, body, subresource="status")
        except NotFound:
            self._forget(resource)  # the CRD lost its status subresource since discovery: ask again
            raise Conflict(f"{resource.kind} status subresource disappeared") from None

    def _forget(self, resource: Resource) -> None:
        with self._lock:
            self._has_status_subresource.pop(resource, None)

    def _exhausted(self, resource: Resource, namespace: str, name: str) -> Conflict:
        return Conflict(
            f"{resource.describe(namespace, name)} kept changing under {self._max_attempts} write attempts"
        )


def _fenced(current: Obj, metadata: Obj) -> Obj:
    """``current`` with ``metadata``, still carrying the resourceVersion it was read at: the write
    conflicts (409) instead of overwriting a change made since."""
    return {**current, "metadata": {**metadata, "resourceVersion": current["metadata"]["resourceVersion"]}}


def _check_fence(resource: Resource, current: Obj, fence: Fence) -> None:
    """Raise Fenced unless ``current`` still names ``fence`` as its assignment and is not final."""
    meta = current["metadata"]
    what = resource.describe(meta.get("namespace"), meta["name"])
    holder = (meta.get("annotations") or {}).get(ASSIGNMENT_ANNOTATION)
    if holder != fence.render():
        raise Fenced(f"{what} is assigned to {holder or 'nobody'}, not {fence.render()}: write refused")
    phase = (current.get("status") or {}).get("phase", "")
    if phase in TERMINAL_PHASES:
        raise Fenced(f"{what} is already {phase}: write refused")
