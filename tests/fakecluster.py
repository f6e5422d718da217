"""In-memory stand-ins for the coordinator's ports (``coordinator.ports``), for unit tests only:
a dict of objects with JSON merge patches and uid preconditions, guarded CR writes over it, and
informer feeds that read it. The integration and end-to-end tiers use the real API server."""

from __future__ import annotations

import copy
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from barge.control.messages import CoordinatorCommand, Hello
from barge.errors import NotFound
from barge.kube.resources import Resource
from coordinator.ports import EventHandler

Obj = dict[str, Any]
Key = tuple[str, str | None, str]


class FakeObjects:
    """The ClusterObjects port over a dict: JSON merge patches, uid preconditions, a write log."""

    def __init__(self, *objects: Obj) -> None:
        self.store: dict[Key, Obj] = {}
        self.writes: list[str] = []
        self.feeds: list[FakeFeed] = []
        for obj in objects:
            self.put(obj)

    def announce(self, event_type: str, obj: Obj) -> None:
        """Store ``obj`` (or drop it, for DELETED) and deliver the watch event to the feeds of its kind."""
        if event_type == "DELETED":
            self.store.pop((obj["kind"], obj["metadata"].get("namespace"), obj["metadata"]["name"]), None)
        else:
            self.put(obj)
        for feed in self.feeds:
            namespace = obj["metadata"].get("namespace")
            if feed.resource.kind == obj["kind"] and feed.namespace in (None, namespace):
                feed.handler(event_type, obj)

    def put(self, obj: Obj) -> None:
        meta = obj["metadata"]
        meta.setdefault("uid", f"uid-{meta['name']}")
        self.store[(obj["kind"], meta.get("namespace"), meta["name"])] = obj

    def get(self, resource: Resource, namespace: str | None, name: str) -> Obj:
        try:
            return copy.deepcopy(self.store[(resource.kind, namespace, name)])
        except KeyError:
            raise NotFound(f"{resource.kind} {name}") from None

    def create(self, resource: Resource, body: Obj, exist_ok: bool = False) -> Obj:
        self.writes.append(f"create {resource.kind} {body['metadata']['name']}")
        made = copy.deepcopy({**body, "kind": resource.kind})
        self.put(made)
        return copy.deepcopy(made)

    def patch(
        self, resource: Resource, namespace: str | None, name: str, patch: Obj, subresource: str = ""
    ) -> Obj:
        obj = self.store[(resource.kind, namespace, name)]
        merge(obj, patch)
        self.writes.append(f"patch {resource.kind} {name}")
        return copy.deepcopy(obj)

    def delete(self, resource: Resource, namespace: str | None, name: str, uid: str | None = None) -> bool:
        obj = self.store.get((resource.kind, namespace, name))
        if obj is None or (uid is not None and obj["metadata"]["uid"] != uid):
            return False
        del self.store[(resource.kind, namespace, name)]
        self.writes.append(f"delete {resource.kind} {name}")
        return True

    def cached(self, resource: Resource, namespace: str | None, name: str) -> Mapping[str, Any] | None:
        return self.store.get((resource.kind, namespace, name))


def merge(target: Obj, patch: Mapping[str, Any]) -> None:
    for key, value in patch.items():
        if value is None:
            target.pop(key, None)
        elif isinstance(value, Mapping) and isinstance(target.get(key), dict):
            merge(target[key], value)
        else:
            target[key] = copy.deepcopy(value)


class FakeCrWrites:
    """The CrWrites port over FakeObjects: metadata and status of the stored CR, in one write."""

    def __init__(self, objects: FakeObjects) -> None:
        self.objects = objects

    def update_status(
        self,
        kind: Resource | str,
        namespace: str,
        name: str,
        mutate: Any,
        *,
        current: Obj | None = None,
        metadata: Any = None,
    ) -> Obj:
        obj = self.objects.store[(_kind(kind), namespace, name)]
        status = mutate(copy.deepcopy(obj.get("status") or {}))
        if status is None:
            return copy.deepcopy(obj)
        if metadata is not None:
            obj["metadata"] = metadata(copy.deepcopy(obj["metadata"])) or obj["metadata"]
        obj["status"] = status
        self.objects.writes.append(f"update {_kind(kind)} {name} status.phase={status.get('phase')}")
        return copy.deepcopy(obj)

    def update_metadata(
        self, kind: Resource | str, namespace: str, name: str, mutate_meta: Any, *, current: Obj | None = None
    ) -> Obj:
        obj = self.objects.store[(_kind(kind), namespace, name)]
        changed = mutate_meta(copy.deepcopy(obj["metadata"]))
        if changed is not None:
            obj["metadata"] = changed
            self.objects.writes.append(f"update {_kind(kind)} {name} metadata")
        return copy.deepcopy(obj)


class FakeEvents:
    def __init__(self) -> None:
        self.recorded: list[tuple[str, str]] = []

    def record(self, involved: Obj, event_type: Any, reason: str, message: str) -> Obj | None:
        self.recorded.append((reason, message))
        return None


class FakeFeed:
    """A CacheFeed that reads FakeObjects: always synced; calls back only for ``announce``d events."""

    def __init__(
        self, objects: FakeObjects, resource: Resource, namespace: str | None, handler: EventHandler
    ) -> None:
        self.objects, self.resource, self.namespace, self.handler = objects, resource, namespace, handler
        objects.feeds.append(self)

    def start(self) -> None:
        pass

    def stop(self, timeout: float = 2.0) -> None:
        pass

    def wait_synced(self, timeout: float) -> bool:
        return True

    def get(self, namespace: str | None, name: str) -> Obj | None:
        return self.objects.store.get((self.resource.kind, namespace, name))

    def items(self) -> list[Obj]:
        return [
            o
            for (kind, ns, _), o in self.objects.store.items()
            if kind == self.resource.kind and (self.namespace in (None, ns))
        ]


def feeds_over(objects: FakeObjects) -> Any:
    def feed(
        resource: Resource, namespace: str | None, selector: str | None, handler: EventHandler
    ) -> FakeFeed:
        return FakeFeed(objects, resource, namespace, handler)

    return feed


def _kind(kind: Resource | str) -> str:
    return kind if isinstance(kind, str) else kind.kind


@dataclass
class RecordingSession:
    """An agent's stream as the hub sees it (the AgentSession port): what was sent to it is kept."""

    node: str
    hello: Hello
    sent: list[CoordinatorCommand] = field(default_factory=list)

    def send(self, command: CoordinatorCommand) -> None:
        self.sent.append(command)

    def close(self, reason: str) -> None:
        pass

