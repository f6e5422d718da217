"""An informer: a local, always-current cache of one resource, fed by list + watch.

Controllers read the cache instead of polling the API and react to ``on_event``. Cached objects
are shared, not copied: every watch event *replaces* an entry and nothing mutates one, so readers
get them for free and must treat them as read-only (copy before changing). A copy per read made
every pass over the cache cost a deep copy of all of it. Cached objects carry no
``metadata.managedFields`` (server-side apply bookkeeping nobody here reads, often the largest part
of an object): a write of a cached object without it leaves the server's copy as it was. The cache is
rebuilt by a fresh list whenever the watch's resourceVersion has expired (410 Gone), and every cached
object is re-delivered as ``SYNC`` every ``resync_s`` so a handler that missed or dropped work gets
another chance (level-triggered, as in client-go).
"""

from __future__ import annotations

import contextlib
import logging
import sys
import threading
from collections.abc import Callable
from typing import Any

from kubernetes import client

from barge.clock import Clock, SystemClock
from barge.errors import BargeError, Expired, InvalidInput
from barge.kube.resources import KubeObjects, Listing, Obj, Resource, WatchStream, object_key
from barge.probes import Vitals
from barge.retry import Backoff

log = logging.getLogger(__name__)

EventHandler = Callable[[str, Obj], None]
Key = tuple[str, str]

_RELIST_BACKOFF = Backoff(first_s=0.5, max_s=30.0)
_MAX_WATCH_S = 300


class Informer:
    """List, then watch from the list's resourceVersion; ``items()``/``get()`` read the cache."""

    def __init__(
        self,
        api: client.ApiClient,
        resource: Resource,
        namespace: str | None = None,
        label_selector: str | None = None,
        *,
        resync_s: float = 300.0,
        on_event: EventHandler | None = None,
        clock: Clock | None = None,
        vitals: Vitals | None = None,
    ) -> None:
        if resync_s <= 0:
            raise InvalidInput(f"resync_s must be positive, not {resync_s}")
        self.resource = resource
        self._objects = KubeObjects(api)
        self._namespace = namespace
        self._selector = label_selector
        self._resync_s = resync_s
        self._on_event = on_event
        self._clock = clock or SystemClock()
        self._vitals = vitals
        self._lock = threading.Lock()
        self._cache: dict[Key, Obj] = {}
        self._resource_version = ""
        self._stream: WatchStream | None = None
        self._interrupted = False  # set under the lock: the current (or just opening) watch must end
        self._stopping = threading.Event()
        self._synced = threading.Event()
        self._thread: threading.Thread | None = None
        self.relists = 0  # how many full lists were needed (1 + expired watches): for metrics and tests

    # -- reading the cache ------------------------------------------------------------------------

    def get(self, namespace: str | None, name: str) -> Obj | None:
        """The cached object (read-only), or None; ``namespace`` is None for cluster-scoped kinds."""
        with self._lock:
            return self._cache.get((namespace or "", name))

    def items(self) -> list[Obj]:
        """Every cached object (read-only)."""
        with self._lock:
            return list(self._cache.values())

    # -- lifecycle --------------------------------------------------------------------------------

    def start(self) -> None:
        if self._thread is not None:
            raise InvalidInput(f"informer for {self.resource.plural} already started")
        name = f"informer-{self.resource.plural}"
        self._thread = threading.Thread(target=self._watched, args=(name,), name=name, daemon=True)
        self._thread.start()

    def wait_synced(self, timeout: float) -> bool:
        """True once the first list is in the cache (and its events delivered)."""
        return self._synced.wait(timeout)

    def stop(self, timeout: float = 2.0) -> None:
        """End the watch at once (the socket is shut down, not waited on) and join the thread."""
        self._stopping.set()
        self._interrupt_watch()
        if self._thread is not None:
            self._thread.join(timeout)
            if self._thread.is_alive():
                log.warning("informer for %s did not stop within %.1fs", self.resource.plural, timeout)

    # -- the loop ---------------------------------------------------------------------------------

    def _watched(self, name: str) -> None:
        """``_run``, reporting its death to the vitals. For its death only: a watch stays open and
        quiet for up to ``_MAX_WATCH_S`` (beyond the stall bound), and ends by the client's read
        timeout at the latest, so the loop cannot hang unnoticed by itself."""
        if self._vitals is None:
            self._run()
        else:
            self._vitals.run(name, self._run, self._stopping, stalls=False)

    def _run(self) -> None:
        failures = 0
        next_resync = self._clock.monotonic() + self._resync_s
        while not self._stopping.is_set():
            try:
                if not self._resource_version:
                    self._relist()
                self._watch_once(next_resync)
                failures = 0
            except Expired as err:
                log.info("%s; relisting %s", err, self.resource.plural)
                self._resource_version = ""
            except BargeError as err:
                if self._stopping.is_set():
                    break
                failures += 1
                delay = _RELIST_BACKOFF.delay(failures)
                log.warning("informer for %s: %s; retrying in %.1fs", self.resource.plural, err, delay)
                self._stopping.wait(delay)
            if self._clock.monotonic() >= next_resync and not self._stopping.is_set():
                self._resync()
                next_resync = self._clock.monotonic() + self._resync_s

    def _relist(self) -> None:
        """Replace the cache with a fresh list; deliver the differences as ADDED/MODIFIED/DELETED."""
        listing = self._objects.list_with_version(self.resource, self._namespace, self._selector)
        self.relists += 1
        for kind, obj in self._replace_cache(listing):
            self._deliver(kind, obj)
        self._resource_version = listing.resource_version
        self._synced.set()

    def _replace_cache(self, listing: Listing) -> list[tuple[str, Obj]]:
        fresh = {object_key(obj): _slim(obj) for obj in listing.items}
        with self._lock:
            old, self._cache = self._cache, fresh
        changes = [("DELETED", obj) for key, obj in old.items() if key not in fresh]
        for key, obj in fresh.items():
            before = old.get(key)
            if before is None:
                changes.append(("ADDED", obj))
            elif _version(before) != _version(obj):
                changes.append(("MODIFIED", obj))
        return changes

    def _watch_once(self, next_resync: float) -> None:
        """Follow one watch until the server ends it, the resync is due, or ``stop()``."""
        until_resync = max(1, int(next_resync - self._clock.monotonic()) + 1)
        stream = self._objects.watch(
            self.resource,
            self._namespace,
            self._resource_version,
            self._selector,
            timeout_s=min(until_resync, _MAX_WATCH_S),
        )
        with self._lock:
            self._stream, interrupted, self._interrupted = stream, self._interrupted, False
        try:
            if interrupted or self._stopping.is_set():
                return
            for kind, obj in stream.events():
                self._apply(kind, obj)
                if self._stopping.is_set():
                    return
        finally:
            with self._lock:
                self._stream = None
            with contextlib.suppress(Exception):
                stream.close()

    def _apply(self, kind: str, obj: Obj) -> None:
        version = _version(obj)
        if kind != "BOOKMARK":
            obj = _slim(obj)
            key = object_key(obj)
            with self._lock:
                if kind == "DELETED":
                    self._cache.pop(key, None)
                else:
                    self._cache[key] = obj
            self._deliver(kind, obj)
        if version:
            self._resource_version = version

    def _resync(self) -> None:
        for obj in self.items():
            self._deliver("SYNC", obj)

    def _deliver(self, kind: str, obj: Obj) -> None:
        """Hand the (read-only) object to the handler; a failing handler is logged, never allowed to
        stop the informer."""
        if self._on_event is None:
            return
        try:
            self._on_event(kind, obj)
        except Exception:
            log.exception("event handler failed on %s %s/%s", kind, *object_key(obj))

    def _interrupt_watch(self) -> None:
        """End the open watch now, or the one being opened as soon as it is open."""
        with self._lock:
            stream, self._interrupted = self._stream, self._stream is None
        if stream is not None:
            stream.abort()

    def _watch_from(self, resource_version: str) -> None:
        """Force the next watch to start at ``resource_version`` (tests use an expired one)."""
        self._resource_version = resource_version
        self._interrupt_watch()


def _version(obj: Obj) -> str:
    version: str = obj.get("metadata", {}).get("resourceVersion", "")
    return version


def _slim(obj: Obj) -> Obj:
    """``obj`` without ``metadata.managedFields``, its keys and short strings shared with every other
    cached object's (``_shared``); the object is fresh from JSON, owned by the cache."""
    metadata = obj.get("metadata")
    if isinstance(metadata, dict):
        metadata.pop("managedFields", None)
    slim: Obj = _shared(obj)
    return slim


_SHARED_STRING_MAX = 64


def _shared(value: Any) -> Any:
    """``value`` rebuilt with interned dict keys and short strings. JSON decoding makes a new string
    for every key of every object ("metadata", "namespace", "persistentVolumeClaim", ...) and every
    repeated value ("Bound", "ReadWriteOnce", a namespace): thousands of cached objects repeat them,
    and sharing one copy halves a cached object's size (measured on PVs and DataUploads)."""
    if type(value) is dict:
        return {sys.intern(key): _shared(item) for key, item in value.items()}
    if type(value) is list:
        return [_shared(item) for item in value]
    if type(value) is str and len(value) <= _SHARED_STRING_MAX:
        return sys.intern(value)
    return value

