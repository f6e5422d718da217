"""Kubernetes Events on the objects Barge serves, for ``kubectl describe``.

An Event is a courtesy to the operator: failing to record one must never fail the work it
describes, so every error is logged and swallowed here.
"""

from __future__ import annotations

import logging
import uuid
from typing import Literal

from kubernetes import client

from barge.clock import Clock
from barge.errors import BargeError
from barge.kube.resources import EVENT, KubeObjects, Obj

log = logging.getLogger(__name__)

EventType = Literal["Normal", "Warning"]
_MESSAGE_LIMIT = 1024  # the API server rejects longer Event messages


class EventRecorder:
    """Records core/v1 Events as ``component`` (e.g. ``barge-coordinator``)."""

    def __init__(self, api: client.ApiClient, component: str, clock: Clock, instance: str = "") -> None:
        self._objects = KubeObjects(api, request_timeout_s=10.0)
        self._component = component
        self._instance = instance or component
        self._clock = clock

    def record(self, involved: Obj, event_type: EventType, reason: str, message: str) -> Obj | None:
        """Create the Event on ``involved`` (a full object dict); the created Event, or None on failure."""
        try:
            return self._objects.create(EVENT, self._event(involved, event_type, reason, message))
        except (BargeError, KeyError) as err:
            name = (involved.get("metadata") or {}).get("name")
            log.warning("could not record event %s on %s %s: %s", reason, involved.get("kind"), name, err)
            return None

    def _event(self, involved: Obj, event_type: EventType, reason: str, message: str) -> Obj:
        meta = involved["metadata"]
        namespace = meta.get("namespace") or "default"  # events about cluster-scoped objects
        now = self._clock.now().strftime("%Y-%m-%dT%H:%M:%SZ")
        return {
            "metadata": {"name": f"{meta['name']}.{uuid.uuid4().hex[:16]}", "namespace": namespace},
            "involvedObject": {
                "apiVersion": involved.get("apiVersion", ""),
                "kind": involved.get("kind", ""),
                "name": meta["name"],
                "namespace": meta.get("namespace", ""),
                "uid": meta.get("uid", ""),
                "resourceVersion": meta.get("resourceVersion", ""),
            },
            "type": event_type,
            "reason": reason,
            "message": message[:_MESSAGE_LIMIT],
            "source": {"component": self._component},
            "reportingComponent": self._component,
            "reportingInstance": self._instance,
            "firstTimestamp": now,
            "lastTimestamp": now,
            "count": 1,
        }
