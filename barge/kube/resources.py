"""The resources Barge touches, and generic CRUD on them that speaks plain dicts.

Every request goes through ``KubeObjects._call`` with raw JSON in and out (no generated models), so
a CR, a Pod and a Lease are handled by the same few lines, and every error is translated once.
"""

from __future__ import annotations

import contextlib
import copy
import json
from collections.abc import Iterator
from dataclasses import dataclass
from types import TracebackType
from typing import Any
from urllib.parse import quote

import urllib3
from kubernetes import client
from kubernetes.client.exceptions import ApiException

from barge.errors import Conflict, InvalidInput, NotFound
from barge.kube.errors import status_error, translate

Obj = dict[str, Any]
Query = list[tuple[str, str | int]]

MERGE_PATCH = "application/merge-patch+json"
STRATEGIC_MERGE_PATCH = "application/strategic-merge-patch+json"
_LIST_PAGE = 500


@dataclass(frozen=True)
class Resource:
    """Where a kind lives in the API: enough to build every URL Barge needs."""

    kind: str
    group: str  # "" for the core API
    version: str
    plural: str
    namespaced: bool

    @property
    def api_version(self) -> str:
        return f"{self.group}/{self.version}" if self.group else self.version

    @property
    def group_version_path(self) -> str:
        return f"/apis/{self.group}/{self.version}" if self.group else f"/api/{self.version}"

    def path(self, namespace: str | None = None, name: str | None = None, subresource: str = "") -> str:
        """The URL path of the collection (``name`` None) or of one object, optionally a subresource."""
        if self.namespaced and namespace is not None:
            base = f"{self.group_version_path}/namespaces/{quote(namespace, safe='')}/{self.plural}"
        elif self.namespaced and name is not None:
            raise InvalidInput(f"{self.kind} is namespaced: name the namespace of {name!r}")
        elif not self.namespaced and namespace is not None:
            raise InvalidInput(f"{self.kind} is cluster-scoped: pass namespace=None, not {namespace!r}")
        else:
            base = f"{self.group_version_path}/{self.plural}"
        if name is None:
            return base
        return f"{base}/{quote(name, safe='')}" + (f"/{subresource}" if subresource else "")

    def describe(self, namespace: str | None, name: str) -> str:
        return f"{self.kind} {namespace}/{name}" if namespace else f"{self.kind} {name}"


DATA_UPLOAD = Resource("DataUpload", "velero.io", "v2alpha1", "datauploads", True)
DATA_DOWNLOAD = Resource("DataDownload", "velero.io", "v2alpha1", "datadownloads", True)
BACKUP_STORAGE_LOCATION = Resource("BackupStorageLocation", "velero.io", "v1", "backupstoragelocations", True)
VOLUME_SNAPSHOT = Resource("VolumeSnapshot", "snapshot.storage.k8s.io", "v1", "volumesnapshots", True)
VOLUME_SNAPSHOT_CONTENT = Resource(
    "VolumeSnapshotContent", "snapshot.storage.k8s.io", "v1", "volumesnapshotcontents", False
)
POD = Resource("Pod", "", "v1", "pods", True)
PERSISTENT_VOLUME_CLAIM = Resource("PersistentVolumeClaim", "", "v1", "persistentvolumeclaims", True)
PERSISTENT_VOLUME = Resource("PersistentVolume", "", "v1", "persistentvolumes", False)
NODE = Resource("Node", "", "v1", "nodes", False)
SECRET = Resource("Secret", "", "v1", "secrets", True)
CONFIG_MAP = Resource("ConfigMap", "", "v1", "configmaps", True)
EVENT = Resource("Event", "", "v1", "events", True)
LEASE = Resource("Lease", "coordination.k8s.io", "v1", "leases", True)
POD_DISRUPTION_BUDGET = Resource("PodDisruptionBudget", "policy", "v1", "poddisruptionbudgets", True)
TOKEN_REVIEW = Resource("TokenReview", "authentication.k8s.io", "v1", "tokenreviews", False)
STORAGE_CLASS = Resource("StorageClass", "storage.k8s.io", "v1", "storageclasses", False)
NAMESPACE = Resource("Namespace", "", "v1", "namespaces", False)
SERVICE_ACCOUNT = Resource("ServiceAccount", "", "v1", "serviceaccounts", True)
DAEMON_SET = Resource("DaemonSet", "apps", "v1", "daemonsets", True)
DEPLOYMENT = Resource("Deployment", "apps", "v1", "deployments", True)
VOLUME_SNAPSHOT_CLASS = Resource(
    "VolumeSnapshotClass", "snapshot.storage.k8s.io", "v1", "volumesnapshotclasses", False
)
# Velero's own objects: the Velero tier and the demo drive and read them.
BACKUP = Resource("Backup", "velero.io", "v1", "backups", True)
RESTORE = Resource("Restore", "velero.io", "v1", "restores", True)
DELETE_BACKUP_REQUEST = Resource("DeleteBackupRequest", "velero.io", "v1", "deletebackuprequests", True)

BY_KIND: dict[str, Resource] = {
    r.kind: r
    for r in (
        DATA_UPLOAD,
        DATA_DOWNLOAD,
        BACKUP_STORAGE_LOCATION,
        VOLUME_SNAPSHOT,
        VOLUME_SNAPSHOT_CONTENT,
        POD,
        PERSISTENT_VOLUME_CLAIM,
        PERSISTENT_VOLUME,
        NODE,
        SECRET,
        EVENT,
        LEASE,
        POD_DISRUPTION_BUDGET,
        TOKEN_REVIEW,
        STORAGE_CLASS,
        NAMESPACE,
        SERVICE_ACCOUNT,
        DAEMON_SET,
        DEPLOYMENT,
        VOLUME_SNAPSHOT_CLASS,
    )
}


def resource_for(kind: Resource | str) -> Resource:
    """``kind`` itself, or the known resource of that kind name (e.g. ``"DataUpload"``)."""
    if isinstance(kind, Resource):
        return kind
    try:
        return BY_KIND[kind]
    except KeyError:
        raise InvalidInput(f"unknown kind {kind!r}; known: {', '.join(sorted(BY_KIND))}") from None


def object_key(obj: Obj) -> tuple[str, str]:
    """``(namespace, name)`` of an object; namespace is "" for cluster-scoped objects."""
    meta = obj.get("metadata", {})
    return meta.get("namespace", ""), meta.get("name", "")


@dataclass(frozen=True)
class Listing:
    """A consistent list: the items and the resourceVersion to watch from."""

    items: tuple[Obj, ...]
    resource_version: str


class WatchStream:
    """An open watch: iterate ``events()``; ``abort()`` from any thread ends it promptly."""

    def __init__(self, response: urllib3.BaseHTTPResponse, what: str) -> None:
        self._response = response
        self._what = what

    def events(self) -> Iterator[tuple[str, Obj]]:
        """``(type, object)`` per event; an ERROR event raises its translated error (410 -> Expired)."""
        try:
            for line in self._lines():
                event = json.loads(line)
                if event.get("type") == "ERROR":
                    status = event.get("object", {})
                    raise status_error(int(status.get("code", 0)), status.get("message", ""), self._what)
                yield event["type"], event["object"]
        except (urllib3.exceptions.HTTPError, OSError, ValueError) as err:
            raise translate(err, self._what) from err

    def _lines(self) -> Iterator[bytes]:
        buffer = b""
        for chunk in self._response.stream(amt=None, decode_content=True):
            buffer += chunk
            *lines, buffer = buffer.split(b"\n")
            yield from (line for line in lines if line.strip())

    def abort(self) -> None:
        """Unblock a reader in another thread: shut the socket down instead of waiting for data."""
        with contextlib.suppress(ValueError, RuntimeError, OSError):  # closed: nobody is blocked on it
            self._response.shutdown()

    def close(self) -> None:
        self._response.close()
        self._response.release_conn()

    def __enter__(self) -> WatchStream:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()


class KubeObjects:
    """Create, read, update, delete and watch any ``Resource`` as plain dicts."""

    def __init__(self, api: client.ApiClient, request_timeout_s: float = 30.0) -> None:
        self.api = api
        self._timeout = request_timeout_s
        self._discovered: dict[str, dict[str, Resource]] = {}

    def get(self, resource: Resource, namespace: str | None, name: str) -> Obj:
        what = f"get {resource.describe(namespace, name)}"
        return self._call("GET", resource.path(namespace, name), what=what)

    def find(self, resource: Resource, namespace: str | None, name: str) -> Obj | None:
        """``get``, with None for an object that does not exist (a normal answer, not an error)."""
        try:
            return self.get(resource, namespace, name)
        except NotFound:
            return None

    def list(
        self,
        resource: Resource,
        namespace: str | None = None,
        label_selector: str | None = None,
        field_selector: str | None = None,
    ) -> list[Obj]:
        """Every matching object (all namespaces when ``namespace`` is None)."""
        return list(self.list_with_version(resource, namespace, label_selector, field_selector).items)

    def list_with_version(
        self,
        resource: Resource,
        namespace: str | None = None,
        label_selector: str | None = None,
        field_selector: str | None = None,
    ) -> Listing:
        """All pages of one consistent list, with the resourceVersion a watch should start from."""
        items: list[Obj] = []
        first: Query = [("limit", _LIST_PAGE)]
        first += [("labelSelector", label_selector)] if label_selector else []
        first += [("fieldSelector", field_selector)] if field_selector else []
        query = first
        what = f"list {resource.plural}" + (f" in {namespace}" if namespace else "")
        while True:
            page = self._call("GET", _collection(resource, namespace), query=query, what=what)
            items.extend(_with_type(resource, item) for item in page.get("items") or [])
            token = page.get("metadata", {}).get("continue")
            if not token:
                return Listing(tuple(items), page["metadata"]["resourceVersion"])
            query = [*first, ("continue", token)]

    def create(self, resource: Resource, body: Obj, exist_ok: bool = False) -> Obj:
        """Create ``body`` in its ``metadata.namespace``; with ``exist_ok`` a 409 returns the existing one."""
        namespace, name = _namespace_of(resource, body), body.get("metadata", {}).get("name")
        what = f"create {resource.describe(namespace, name or '(generated name)')}"
        try:
            return self._call("POST", resource.path(namespace), body=_with_type(resource, body), what=what)
        except Conflict:
            if not exist_ok or not name:
                raise
            return self.get(resource, namespace, name)

    def replace(self, resource: Resource, body: Obj, subresource: str = "") -> Obj:
        """PUT ``body``; ``metadata.resourceVersion`` is required, so a concurrent change gives Conflict."""
        meta = body.get("metadata", {})
        namespace, name = _namespace_of(resource, body), meta.get("name", "")
        if not meta.get("resourceVersion"):
            raise InvalidInput(f"replace {resource.describe(namespace, name)}: body has no resourceVersion")
        path = resource.path(namespace, name, subresource)
        return self._call("PUT", path, body=body, what=f"replace {resource.describe(namespace, name)}")

    def patch(
        self,
        resource: Resource,
        namespace: str | None,
        name: str,
        patch: Obj,
        subresource: str = "",
        *,
        strategic: bool = False,
    ) -> Obj:
        """A JSON merge patch (RFC 7386): maps merge, lists and scalars replace, ``None`` deletes.

        ``strategic`` sends a strategic merge patch instead (built-in kinds only), whose lists merge
        by key: how a kubelet updates one pod or node condition without rewriting the others.
        """
        return self._call(
            "PATCH",
            resource.path(namespace, name, subresource),
            body=patch,
            content_type=STRATEGIC_MERGE_PATCH if strategic else MERGE_PATCH,
            what=f"patch {resource.describe(namespace, name)}",
        )

    def delete(
        self,
        resource: Resource,
        namespace: str | None,
        name: str,
        uid: str | None = None,
        grace_seconds: int | None = None,
    ) -> bool:
        """Delete (background propagation); False when already gone or, with ``uid``, replaced by another."""
        options: Obj = {"propagationPolicy": "Background"}
        if uid:
            options["preconditions"] = {"uid": uid}
        if grace_seconds is not None:
            options["gracePeriodSeconds"] = grace_seconds
        try:
            self._call(
                "DELETE",
                resource.path(namespace, name),
                body=options,
                what=f"delete {resource.describe(namespace, name)}",
            )
        except NotFound:
            return False
        except Conflict:
            if uid is None:
                raise
            return False  # the uid precondition failed: the object we meant no longer exists
        return True

    def create_subresource(
        self, resource: Resource, namespace: str | None, name: str, sub: str, body: Obj
    ) -> Obj:
        """POST to a subresource that creates something (``serviceaccounts/token``, ``pods/eviction``)."""
        what = f"create {sub} of {resource.describe(namespace, name)}"
        return self._call("POST", resource.path(namespace, name, sub), body=body, what=what)

    def read_text(
        self, resource: Resource, namespace: str | None, name: str, sub: str, query: Query | None = None
    ) -> str:
        """GET a subresource that answers plain text: ``pods/log`` (``query``: container, tailLines...)."""
        what = f"read {sub} of {resource.describe(namespace, name)}"
        response = self._request(
            "GET",
            resource.path(namespace, name, sub),
            query=query,
            what=what,
            accept="text/plain, */*",
            _preload_content=False,
            _request_timeout=(min(self._timeout, 10.0), self._timeout),
        )
        try:
            return str(response.data.decode(errors="replace"))
        finally:
            response.release_conn()

    def api_resources(self, group: str, version: str) -> frozenset[str]:
        """Discovery: the resource names the server serves in ``group/version`` (e.g. ``pods/status``)."""
        return frozenset(r["name"] for r in self._served(group, version))

    def resource_of(self, api_version: str, kind: str) -> Resource | None:
        """The resource serving ``kind`` in ``api_version`` by discovery (cached; asked again on a miss):
        for kinds named only at run time, such as an owner reference's."""
        known = self._discovered.get(api_version, {})
        if kind not in known:
            known = self._discover(api_version)
            self._discovered[api_version] = known
        return known.get(kind)

    def _discover(self, api_version: str) -> dict[str, Resource]:
        group, _, version = api_version.rpartition("/")
        try:
            served = self._served(group, version)
        except NotFound:
            return {}
        return {
            entry["kind"]: Resource(
                entry["kind"], group, version, entry["name"], bool(entry.get("namespaced"))
            )
            for entry in served
            if "/" not in entry["name"]
        }

    def _served(self, group: str, version: str) -> tuple[Obj, ...]:
        """The discovery document's resource entries for ``group/version`` (subresources included)."""
        path = f"/apis/{group}/{version}" if group else f"/api/{version}"
        listing = self._call("GET", path, what=f"discover {group or 'core'}/{version}")
        return tuple(listing.get("resources") or ())

    def watch(
        self,
        resource: Resource,
        namespace: str | None,
        resource_version: str,
        label_selector: str | None = None,
        timeout_s: int = 300,
    ) -> WatchStream:
        """Watch from ``resource_version`` with bookmarks; the server ends the stream after ``timeout_s``."""
        query: Query = [
            ("watch", "true"),
            ("resourceVersion", resource_version),
            ("allowWatchBookmarks", "true"),
            ("timeoutSeconds", timeout_s),
        ]
        if label_selector:
            query.append(("labelSelector", label_selector))
        what = f"watch {resource.plural}" + (f" in {namespace}" if namespace else "")
        response = self._request(
            "GET",
            _collection(resource, namespace),
            query=query,
            what=what,
            _preload_content=False,
            _request_timeout=(min(self._timeout, 10.0), timeout_s + 30),
        )
        return WatchStream(response, what)

    def _call(
        self,
        method: str,
        path: str,
        *,
        query: Query | None = None,
        body: Obj | None = None,
        content_type: str | None = None,
        what: str = "",
    ) -> Obj:
        """One request whose JSON answer is returned as a dict."""
        decoded: Obj | None = self._request(
            method,
            path,
            query=query,
            body=body,
            content_type=content_type,
            what=what,
            response_types_map={200: "object", 201: "object", 202: "object"},
            _return_http_data_only=True,
            _request_timeout=(min(self._timeout, 10.0), self._timeout),
        )
        return decoded or {}

    def _request(
        self,
        method: str,
        path: str,
        *,
        query: Query | None,
        body: Obj | None = None,
        content_type: str | None = None,
        what: str,
        accept: str = "application/json",
        **options: Any,
    ) -> Any:
        """One HTTP request through the client (auth, TLS, proxies); errors translated."""
        headers = {"Accept": accept, "Content-Type": content_type or "application/json"}
        try:
            return self.api.call_api(
                path,
                method,
                query_params=query or [],
                header_params=headers,
                body=body,
                auth_settings=["BearerToken"],
                **options,
            )
        except (ApiException, urllib3.exceptions.HTTPError, OSError) as err:
            raise translate(err, what) from err


def _collection(resource: Resource, namespace: str | None) -> str:
    """The collection path; a namespaced resource without a namespace means all namespaces."""
    return resource.path(namespace if resource.namespaced else None)


def _namespace_of(resource: Resource, body: Obj) -> str | None:
    namespace = body.get("metadata", {}).get("namespace")
    if resource.namespaced and not namespace:
        raise InvalidInput(f"a {resource.kind} needs metadata.namespace")
    return namespace if resource.namespaced else None


def _with_type(resource: Resource, obj: Obj) -> Obj:
    """``obj`` with apiVersion and kind set (list items come without them)."""
    if obj.get("kind") == resource.kind and obj.get("apiVersion") == resource.api_version:
        return obj
    typed = copy.copy(obj)
    typed["apiVersion"], typed["kind"] = resource.api_version, resource.kind
    return typed
