"""What the executor needs from the world, as small Protocols: the Kubernetes adapter
(``barge.kube``) and the hub implement them in production, in-memory fakes in the unit tests
(``tests/unit/test_executor.py``), so every action's writes can be checked without a server."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, Protocol

from barge.control.messages import Assignment
from barge.kube.resources import Resource

Obj = dict[str, Any]
Mutation = Callable[[Obj], Obj | None]


class ClusterObjects(Protocol):
    """Reads and writes of plain objects (``barge.kube.resources.KubeObjects``)."""

    def get(self, resource: Resource, namespace: str | None, name: str) -> Obj: ...

    def create(self, resource: Resource, body: Obj, exist_ok: bool = False) -> Obj: ...

    def patch(
        self, resource: Resource, namespace: str | None, name: str, patch: Obj, subresource: str = ""
    ) -> Obj: ...

    def delete(
        self, resource: Resource, namespace: str | None, name: str, uid: str | None = None
    ) -> bool: ...


class CrWrites(Protocol):
    """Guarded read-modify-writes of a CR (``barge.kube.status.StatusWriter``)."""

    def update_status(
        self,
        kind: Resource | str,
        namespace: str,
        name: str,
        mutate: Mutation,
        *,
        current: Obj | None = None,
        metadata: Mutation | None = None,
    ) -> Obj: ...

    def update_metadata(
        self,
        kind: Resource | str,
        namespace: str,
        name: str,
        mutate_meta: Mutation,
        *,
        current: Obj | None = None,
    ) -> Obj: ...


class EventSink(Protocol):
    """Kubernetes Events on the CR (``barge.kube.events.EventRecorder``)."""

    def record(self, involved: Obj, event_type: Any, reason: str, message: str) -> Obj | None: ...


class AgentCommands(Protocol):
    """What the executor asks of the agents' streams (``coordinator.hub.Hub``)."""

    def connected(self, node: str) -> bool: ...

    def assign(self, node: str, assignment: Assignment) -> bool: ...

    def cancel(self, assignment_id: str, node: str, epoch: int, reason: str, hand_off: bool) -> None: ...

    def forget(self, assignment_id: str) -> None: ...


CachedLookup = Callable[[Resource, str | None, str], Mapping[str, Any] | None]

EventHandler = Callable[[str, Obj], None]  # (event type: ADDED/MODIFIED/DELETED/SYNC, object)


class CacheFeed(Protocol):
    """One kind's informer: a cache kept current by list + watch, calling back on every change
    (``barge.kube.informer.Informer``)."""

    def start(self) -> None: ...

    def stop(self, timeout: float = 2.0) -> None: ...

    def wait_synced(self, timeout: float) -> bool: ...

    def get(self, namespace: str | None, name: str) -> Obj | None: ...

    def items(self) -> list[Obj]: ...


# (resource, namespace or None for all, label selector or None, handler) -> a started-later feed
FeedFactory = Callable[[Resource, str | None, str | None, EventHandler], CacheFeed]


@dataclass(frozen=True)
class ControllerAdapters:
    """Everything the controller reads and writes through: the Kubernetes adapter in production
    (``coordinator.controller.kubernetes_adapters``), in-memory fakes in unit tests."""

    feeds: FeedFactory
    objects: ClusterObjects
    status: CrWrites
    events: EventSink
