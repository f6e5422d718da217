"""List + watch of one resource on a thread, stamping each event with its arrival time.

Used by ``bench.scale`` (the observer that times every phase change) and ``bench.scale_sim`` (the
simulator's object caches). Built on ``barge.kube.resources.KubeObjects`` (paged list, watch with
bookmarks); a 410 or a broken stream relists.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from kubernetes import client, config

from barge.errors import BargeError
from barge.kube.resources import KubeObjects, Resource, WatchStream

Obj = dict[str, Any]
EventHandler = Callable[[str, Obj, float], None]  # (ADDED|MODIFIED|DELETED, object, time.time())
RelistHandler = Callable[[Sequence[Obj], float], None]

log = logging.getLogger("bench.scale")


def bench_api_client(kubeconfig: Path, pool: int = 32) -> client.ApiClient:
    """An API client with a connection pool big enough for many threads (no reconnect churn)."""
    configuration = client.Configuration()
    config.load_kube_config(config_file=str(kubeconfig), client_configuration=configuration)
    configuration.connection_pool_maxsize = pool
    return client.ApiClient(configuration)


class Watcher:
    """Calls ``on_event`` for every object listed (as ADDED, or ``on_relist`` with them all) and then
    for every watch event; relists after an expired resourceVersion or a failure."""

    def __init__(
        self,
        objects: KubeObjects,
        resource: Resource,
        on_event: EventHandler,
        *,
        namespace: str | None = None,
        label_selector: str | None = None,
        on_relist: RelistHandler | None = None,
        watch_timeout_s: int = 120,
    ) -> None:
        self._objects = objects
        self._resource = resource
        self._on_event = on_event
        self._on_relist = on_relist
        self._namespace = namespace
        self._selector = label_selector
        self._watch_timeout_s = watch_timeout_s
        self.synced = threading.Event()
        self.failures = 0
        self._stopping = threading.Event()
        self._stream: WatchStream | None = None
        self._lock = threading.Lock()
        self._thread = threading.Thread(target=self._run, name=f"watch-{resource.plural}", daemon=True)

    def start(self) -> Watcher:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stopping.set()
        with self._lock:
            stream = self._stream
        if stream is not None:
            stream.abort()
        self._thread.join(timeout=10)

    def _run(self) -> None:
        while not self._stopping.is_set():
            try:
                version = self._relist()
                self.synced.set()
                while not self._stopping.is_set():
                    version = self._watch(version)
            except BargeError as err:
                if self._stopping.is_set():
                    return
                self.failures += 1
                log.debug("watch %s: %s; relisting", self._resource.plural, err)
                self._stopping.wait(0.5)

    def _relist(self) -> str:
        listing = self._objects.list_with_version(self._resource, self._namespace, self._selector)
        now = time.time()
        if self._on_relist is not None:
            self._on_relist(listing.items, now)
        else:
            for item in listing.items:
                self._deliver("ADDED", item, now)
        return listing.resource_version

    def _watch(self, version: str) -> str:
        stream = self._objects.watch(
            self._resource, self._namespace, version, self._selector, timeout_s=self._watch_timeout_s
        )
        with self._lock:
            self._stream = stream
        try:
            with stream:
                for kind, obj in stream.events():
                    version = str((obj.get("metadata") or {}).get("resourceVersion") or version)
                    if kind != "BOOKMARK":
                        self._deliver(kind, obj, time.time())
        finally:
            with self._lock:
                self._stream = None
        return version

    def _deliver(self, kind: str, obj: Obj, at: float) -> None:
        try:
            self._on_event(kind, obj, at)
        except Exception:  # a handler bug must not stop the watch; it shows in the log
            log.exception("handler for %s %s failed", kind, self._resource.plural)
