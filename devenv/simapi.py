"""A small dict-in, dict-out REST client for the cluster simulator.

The simulator touches many kinds (core, policy, storage, snapshot CRDs) and polls them often; the
generated typed models are slow to build and awkward to patch, so it talks JSON through the
official client's transport (``ApiClient.call_api``) instead: same TLS, same credentials.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

from kubernetes import client
from kubernetes.client.exceptions import ApiException

Obj = dict[str, Any]

HTTP_NOT_FOUND = 404
HTTP_CONFLICT = 409
HTTP_TOO_MANY_REQUESTS = 429
_REQUEST_TIMEOUT = 10.0

MERGE_PATCH = "application/merge-patch+json"
STRATEGIC_PATCH = "application/strategic-merge-patch+json"


@dataclass(frozen=True)
class Resource:
    """Where a kind lives in the REST tree: ``prefix`` is ``/api/v1`` or ``/apis/<group>/<version>``."""

    prefix: str
    plural: str
    namespaced: bool

    def path(self, namespace: str | None = None, name: str | None = None, sub: str | None = None) -> str:
        parts = [self.prefix]
        if self.namespaced and namespace is not None:
            parts += ["namespaces", namespace]
        parts.append(self.plural)
        if name is not None:
            parts.append(name)
        if sub is not None:
            parts.append(sub)
        return "/".join(parts)


NODES = Resource("/api/v1", "nodes", namespaced=False)
PODS = Resource("/api/v1", "pods", namespaced=True)
PVCS = Resource("/api/v1", "persistentvolumeclaims", namespaced=True)
PVS = Resource("/api/v1", "persistentvolumes", namespaced=False)
PDBS = Resource("/apis/policy/v1", "poddisruptionbudgets", namespaced=True)
STORAGE_CLASSES = Resource("/apis/storage.k8s.io/v1", "storageclasses", namespaced=False)
SNAPSHOT_API = "/apis/snapshot.storage.k8s.io/v1"
VOLUME_SNAPSHOTS = Resource(SNAPSHOT_API, "volumesnapshots", namespaced=True)
VOLUME_SNAPSHOT_CONTENTS = Resource(SNAPSHOT_API, "volumesnapshotcontents", namespaced=False)
VOLUME_SNAPSHOT_CLASSES = Resource(SNAPSHOT_API, "volumesnapshotclasses", namespaced=False)


class Rest:
    """GET/LIST/POST/PATCH/DELETE of JSON objects; a missing object is ``None``, never an exception."""

    def __init__(self, api: client.ApiClient) -> None:
        self._api = api
        self._discovered: dict[str, dict[str, Resource]] = {}

    def request(
        self,
        method: str,
        path: str,
        body: Obj | None = None,
        *,
        query: dict[str, str] | None = None,
        content_type: str = "application/json",
    ) -> Obj:
        response = self._api.call_api(
            path,
            method,
            query_params=list((query or {}).items()),
            header_params={"Accept": "application/json", "Content-Type": content_type},
            body=body,
            auth_settings=["BearerToken"],
            _preload_content=False,
            _return_http_data_only=True,
            _request_timeout=_REQUEST_TIMEOUT,
        )
        data = response.data
        parsed: Obj = json.loads(data) if data else {}
        return parsed

    def get(self, resource: Resource, name: str, namespace: str | None = None) -> Obj | None:
        try:
            return self.request("GET", resource.path(namespace, name))
        except ApiException as err:
            if err.status == HTTP_NOT_FOUND:
                return None
            raise

    def list(self, resource: Resource, namespaces: tuple[str, ...] | None = None) -> list[Obj]:
        """All objects of ``resource``, in ``namespaces`` only when given (cluster-scoped: all)."""
        if namespaces is None or not resource.namespaced:
            return list(self.request("GET", resource.path()).get("items") or [])
        items: list[Obj] = []
        for namespace in namespaces:
            items += self.request("GET", resource.path(namespace)).get("items") or []
        return items

    def create(self, resource: Resource, body: Obj, namespace: str | None = None) -> Obj:
        return self.request("POST", resource.path(namespace), body)

    def post(self, resource: Resource, name: str, sub: str, body: Obj, namespace: str | None = None) -> Obj:
        return self.request("POST", resource.path(namespace, name, sub), body)

    def patch(
        self,
        resource: Resource,
        name: str,
        patch: Obj,
        namespace: str | None = None,
        *,
        sub: str | None = None,
        content_type: str = MERGE_PATCH,
    ) -> Obj | None:
        try:
            return self.request(
                "PATCH", resource.path(namespace, name, sub), patch, content_type=content_type
            )
        except ApiException as err:
            if err.status == HTTP_NOT_FOUND:
                return None
            raise

    def delete(
        self,
        resource: Resource,
        name: str,
        namespace: str | None = None,
        *,
        uid: str | None = None,
        grace_seconds: int | None = None,
    ) -> bool:
        """Delete ``name`` (only the incarnation ``uid`` when given); False if it was already gone."""
        options: Obj = {"apiVersion": "v1", "kind": "DeleteOptions", "propagationPolicy": "Background"}
        if uid is not None:
            options["preconditions"] = {"uid": uid}
        if grace_seconds is not None:
            options["gracePeriodSeconds"] = grace_seconds
        try:
            self.request("DELETE", resource.path(namespace, name), options)
        except ApiException as err:
            if err.status == HTTP_NOT_FOUND:
                return False
            if err.status == HTTP_CONFLICT and uid is not None:
                return False  # a newer object with the same name: not ours to delete
            raise
        return True

    def resource_for(self, api_version: str, kind: str) -> Resource | None:
        """The REST resource serving ``kind`` in ``api_version`` (discovery, cached; refreshed on miss)."""
        known = self._discovered.get(api_version, {})
        if kind not in known:
            known = self._discover(api_version)
            self._discovered[api_version] = known
        return known.get(kind)

    def _discover(self, api_version: str) -> dict[str, Resource]:
        prefix = "/api/v1" if api_version == "v1" else f"/apis/{api_version}"
        try:
            listing = self.request("GET", prefix)
        except ApiException as err:
            if err.status == HTTP_NOT_FOUND:
                return {}
            raise
        return {
            entry["kind"]: Resource(prefix, entry["name"], bool(entry.get("namespaced")))
            for entry in listing.get("resources") or []
            if "/" not in entry["name"]
        }
