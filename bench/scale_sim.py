"""The simulated cluster of ``make bench-scale``, in its own process so its CPU is not the coordinator's.

``python -m bench.scale_sim --kubeconfig K --root R --ready-file F --stats-file S`` runs
``devenv.simcluster.SimCluster``'s controllers (scheduler, kubelets, CSI provisioner and
snapshotter, PV binder, garbage collector) until SIGTERM. Two modes:

* ``--mode poll``: SimCluster exactly as the tests run it: every pass lists pods, PVCs, PVs,
  VolumeSnapshots, contents, nodes and PDBs in full, every ``--poll-s``. At thousands of objects a
  pass costs the simulator (and the API server) seconds, and the simulated kubelet's delay grows
  with it.
* ``--mode watch`` (the default): the same controllers, fed from watch caches instead of full lists
  (a pass runs when something changed, at most every ``--min-pass-s``; the simulator's own writes
  update the cache at once, so it does not act twice on what it already did). Changes that only a
  benchmark needs, none of which alters what a controller decides: a step that would do nothing
  (a Running pod, a Bound claim, a protected content...) is not run at all (``steady``); the
  binder, snapshotter and kubelets act on ``--workers`` objects at once (the scheduler picks nodes
  in order, as it balances them by counting its own bindings, and posts the bindings on the pool;
  the garbage collector stays sequential so that it lists each owner kind once per pass); a
  StorageClass is read once; a volume made from a snapshot is
  copied in-process instead of by ``cp`` (two fork+exec per exposure were most of a pass); claims
  are matched to pre-bound volumes through an index (the stock binder compares every pending
  claim with every PV: quadratic with thousands of pending restore PVCs); the disruption
  controller is not run (the benchmark evicts nothing, and it compares every PDB with every pod);
  the garbage collector runs every ``--gc-interval-s`` (it lists every owner kind per pass), except
  for claims owned by pods that are gone (an exposure's claim, once its pod is deleted): those are
  deleted in the next pass, from the watch cache, as the real collector does at once.

Every ``--probe-interval-s`` the watch mode also times one full listing (what a polling pass would
pay at that moment) and records it in the stats file with the pass durations.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import sys
import threading
import time
from collections.abc import Callable, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from types import FrameType
from typing import Any, Protocol

from kubernetes import client

from barge.kube.resources import (
    NODE,
    PERSISTENT_VOLUME,
    PERSISTENT_VOLUME_CLAIM,
    POD,
    VOLUME_SNAPSHOT,
    VOLUME_SNAPSHOT_CONTENT,
    KubeObjects,
    Resource,
)
from bench.scale_stats import summarize
from bench.scale_watch import Watcher, bench_api_client
from devenv import simstorage
from devenv.simcluster import SimCluster
from devenv.simgc import GarbageCollector
from devenv.simpods import Scheduler, bind_pod, claims_problem
from devenv.simrules import pick_node
from devenv.simsnapshots import CONTENT_FINALIZER, copy_volume_data, quantity_bytes
from devenv.simstorage import StorageController, claim_ref_admits, static_volume_fits
from devenv.simworld import SimContext, World, key, remove_path

Obj = dict[str, Any]
CACHED: tuple[Resource, ...] = (
    NODE,
    PERSISTENT_VOLUME,
    VOLUME_SNAPSHOT_CONTENT,
    PERSISTENT_VOLUME_CLAIM,
    VOLUME_SNAPSHOT,
    POD,
)
_BY_KIND = {r.kind: r for r in CACHED}
STORAGE_CLASS_PATH = "/apis/storage.k8s.io/v1/storageclasses/"


def _version(obj: Obj) -> int:
    try:
        return int((obj.get("metadata") or {}).get("resourceVersion") or 0)
    except ValueError:
        return 0


def _key(resource: Resource, obj: Obj) -> Any:
    return key(obj) if resource.namespaced else obj["metadata"]["name"]


class WorldCache:
    """The objects the simulated controllers read, kept current by watches and by their own writes."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._objects: dict[str, dict[Any, Obj]] = {r.kind: {} for r in CACHED}
        self._gone: dict[tuple[str, Any], int] = {}  # deleted at this resourceVersion (no resurrection)
        self.changed = threading.Event()

    def handler(self, resource: Resource) -> tuple[Any, Any]:
        def on_event(kind: str, obj: Obj, at: float) -> None:
            if kind == "DELETED":
                self._delete(resource, obj)
            else:
                self.upsert(resource, obj)

        def on_relist(items: Sequence[Obj], at: float) -> None:
            with self._lock:
                self._objects[resource.kind] = {_key(resource, o): o for o in items}
            self.changed.set()

        return on_event, on_relist

    def upsert(self, resource: Resource, obj: Obj) -> None:
        item_key, version = _key(resource, obj), _version(obj)
        with self._lock:
            if self._gone.get((resource.kind, item_key), -1) >= version:
                return
            current = self._objects[resource.kind].get(item_key)
            if current is not None and _version(current) > version:
                return
            self._objects[resource.kind][item_key] = obj
        self.changed.set()

    def bind_pod(self, namespace: str, name: str, node: str) -> None:
        with self._lock:
            pod = self._objects[POD.kind].get((namespace, name))
            if pod is not None and not pod["spec"].get("nodeName"):
                self._objects[POD.kind][(namespace, name)] = {
                    **pod,
                    "spec": {**pod["spec"], "nodeName": node},
                }
        self.changed.set()

    def _delete(self, resource: Resource, obj: Obj) -> None:
        item_key = _key(resource, obj)
        with self._lock:
            current = self._objects[resource.kind].get(item_key)
            if current is None or _version(current) <= _version(obj):
                self._objects[resource.kind].pop(item_key, None)
            self._gone[(resource.kind, item_key)] = _version(obj)
        self.changed.set()

    def world(self) -> World:
        with self._lock:
            o = self._objects
            return World(
                nodes=dict(o["Node"]),
                pvs=dict(o["PersistentVolume"]),
                contents=dict(o["VolumeSnapshotContent"]),
                pvcs=dict(o["PersistentVolumeClaim"]),
                snapshots=dict(o["VolumeSnapshot"]),
                pods=list(o["Pod"].values()),
                pdbs=[],
            )

    def sizes(self) -> dict[str, int]:
        with self._lock:
            return {kind: len(objects) for kind, objects in self._objects.items()}


class CachingObjects(KubeObjects):
    """The simulator's API client; what a create, update or patch returns goes into the cache."""

    def __init__(self, api: client.ApiClient, cache: WorldCache) -> None:
        super().__init__(api)
        self._cache = cache
        self._classes: dict[str, Obj] = {}  # StorageClasses do not change during a benchmark

    def _call(
        self,
        method: str,
        path: str,
        *,
        query: list[tuple[str, str | int]] | None = None,
        body: Obj | None = None,
        content_type: str | None = None,
        what: str = "",
    ) -> Obj:
        if method == "GET" and path.startswith(STORAGE_CLASS_PATH) and path in self._classes:
            return self._classes[path]
        answer = super()._call(method, path, query=query, body=body, content_type=content_type, what=what)
        if method == "GET" and path.startswith(STORAGE_CLASS_PATH):
            self._classes[path] = answer
        if method in ("POST", "PUT", "PATCH"):
            resource = _BY_KIND.get(str(answer.get("kind", "")))
            if resource is not None and _version(answer):
                self._cache.upsert(resource, answer)
            elif method == "POST" and path.endswith("/binding") and body is not None:
                # A binding answers with a Status, not the pod: note the node until the watch tells.
                namespace = path.split("/namespaces/", 1)[1].split("/", 1)[0]
                self._cache.bind_pod(namespace, body["metadata"]["name"], body["target"]["name"])
        return answer


class IndexedStorageController(StorageController):
    """The stock binder, with claims matched to volumes through a per-pass index (same answers)."""

    _indexed: World | None = None
    _claimed: dict[tuple[str, str], list[Obj]]
    _unclaimed: list[Obj]
    _index_lock = threading.Lock()

    def _index(self, world: World) -> tuple[dict[tuple[str, str], list[Obj]], list[Obj]]:
        with self._index_lock:
            if self._indexed is not world:
                claimed: dict[tuple[str, str], list[Obj]] = {}
                unclaimed: list[Obj] = []
                for pv in world.pvs.values():
                    ref = pv["spec"].get("claimRef")
                    if ref:
                        claimed.setdefault((ref.get("namespace"), ref.get("name")), []).append(pv)
                    else:
                        unclaimed.append(pv)
                self._claimed, self._unclaimed, self._indexed = claimed, unclaimed, world
            return self._claimed, self._unclaimed

    def _matching_volume(self, pvc: Obj, world: World) -> Obj | None:
        if pvc["spec"].get("volumeName"):
            return super()._matching_volume(pvc, world)
        claimed, unclaimed = self._index(world)
        for pv in claimed.get(key(pvc), ()):
            if not pv["metadata"].get("deletionTimestamp") and claim_ref_admits(pv, pvc):
                return pv
        fitting = [pv for pv in unclaimed if static_volume_fits(pv, pvc)]
        return min(fitting, key=lambda pv: quantity_bytes(pv["spec"]["capacity"]["storage"]), default=None)


class PatientScheduler(Scheduler):
    """The stock scheduler's decisions, two differences in how they are carried out: a pod whose
    claim is not in the cache yet waits for the next pass instead of being marked Unschedulable
    (with watches, the pod's event can arrive before its claim's); and the node is picked (and
    counted) in order, while the bindings are posted on the pool."""

    def __init__(self, ctx: SimContext, post: Callable[..., None]) -> None:
        super().__init__(ctx)
        self._post = post

    def _schedule(self, pod: Obj, world: World, nodes: list[Obj], load: Any) -> None:
        problem = claims_problem(pod, world)
        if problem and "not found" in problem:
            return
        node = None if problem else pick_node(pod, nodes, load)
        if node is None:
            super()._schedule(pod, world, nodes, load)  # marks it Unschedulable, as upstream
            return
        load[node] += 1
        self._post(f"schedule pod {key(pod)}", bind_pod, self._ctx.objects, pod, node)


def copy_in_process(source: Path, target: Path, block: bool) -> None:
    """``copy_volume_data`` for a directory without forking ``cp`` (same result: data, modes, times)."""
    if block:
        copy_volume_data(source, target, block)
        return
    partial = target.with_name(target.name + ".partial")
    remove_path(partial)
    target.parent.mkdir(parents=True, exist_ok=True)
    shutil.copytree(source, partial, symlinks=True)
    partial.rename(target)


def _uid(obj: Obj | None) -> str:
    return str(((obj or {}).get("metadata") or {}).get("uid") or "")


def _phase(obj: Obj | None) -> str:
    return str(((obj or {}).get("status") or {}).get("phase") or "")


# Kubelets._sync: a Running pod stays Running. Its readiness probes are not run here: the fleet
# moves no data and vouches for no exposer pod (they stay unready), and running a probe command
# for each of a thousand pods every 3 s would measure the simulator, not the coordinator.
def _pod_running(pod: Obj, *rest: Any) -> bool:
    return _phase(pod) == "Running"


def _content_protected(content: Obj, *rest: Any) -> bool:  # SnapshotController._protect
    return bool(CONTENT_FINALIZER in (content["metadata"].get("finalizers") or []))


def _content_owned(content: Obj, world: World, *rest: Any) -> bool:  # _delete_if_orphaned
    spec = content.get("spec") or {}
    ref = spec.get("volumeSnapshotRef") or {}
    if spec.get("deletionPolicy") != "Delete" or not ref.get("uid"):
        return True
    return _uid(world.snapshots.get((ref.get("namespace", ""), ref.get("name", "")))) == str(ref["uid"])


def _claim_bound(pvc: Obj, world: World, *rest: Any) -> bool:  # StorageController._claim
    if _phase(pvc) != "Bound":
        return False
    pv = world.pvs.get((pvc.get("spec") or {}).get("volumeName") or "")
    own = pv is not None and (pv["spec"].get("claimRef") or {}).get("uid") == pvc["metadata"]["uid"]
    return not (own and _phase(pv) != "Bound")


def _volume_claimed(pv: Obj, world: World, *rest: Any) -> bool:  # StorageController._volume
    ref = (pv.get("spec") or {}).get("claimRef") or {}
    claim = world.pvcs.get((ref.get("namespace", ""), ref.get("name", "")))
    return bool(ref.get("uid")) and _uid(claim) == ref["uid"]


_STEADY: dict[str, Callable[..., bool]] = {
    "_sync": _pod_running,
    "_protect": _content_protected,
    "_delete_if_orphaned": _content_owned,
    "_claim": _claim_bound,
    "_volume": _volume_claimed,
}


def steady(step: str, args: Sequence[Any]) -> bool:
    """True when the stock controller step ``step`` would do nothing for these objects (read from
    its code: simstorage, simsnapshots, simpods), so it need not be scheduled at all. At thousands
    of objects, most are in such a state on every pass. An object being deleted is never steady."""
    check = _STEADY.get(step)
    if check is None or not args or args[0]["metadata"].get("deletionTimestamp"):
        return False
    return check(*args)


class ParallelAttempts:
    """Replaces ``SimContext.attempt``: a step that would do nothing (``steady``) is skipped; while
    enabled, each other step runs on a pool; ``join`` waits for all."""

    def __init__(self, ctx: SimContext, workers: int) -> None:
        self._sequential: Callable[..., None] = ctx.attempt
        self._pool = ThreadPoolExecutor(workers, thread_name_prefix="sim")
        self._pending: list[Future[None]] = []
        self.enabled = False
        self.skipped = 0

    def attempt(self, what: str, action: Callable[..., Any], *args: Any) -> None:
        if steady(getattr(action, "__name__", ""), args):
            self.skipped += 1
            return
        if not self.enabled:
            self._sequential(what, action, *args)
            return
        self._pending.append(self._pool.submit(self._sequential, what, action, *args))

    def submit(self, what: str, action: Callable[..., Any], *args: Any) -> None:
        """Run on the pool whether enabled or not."""
        self._pending.append(self._pool.submit(self._sequential, what, action, *args))

    def join(self) -> None:
        pending, self._pending = self._pending, []
        for future in pending:
            future.result()

    def shutdown(self) -> None:
        self._pool.shutdown(wait=True)


class _Controller(Protocol):
    def reconcile(self, world: World) -> None: ...


class Every:
    """Runs a controller at most once per ``interval_s``."""

    def __init__(self, inner: _Controller, interval_s: float) -> None:
        self._inner = inner
        self._interval = interval_s
        self._last = 0.0

    def reconcile(self, world: World) -> None:
        now = time.monotonic()
        if now - self._last >= self._interval:
            self._last = now
            self._inner.reconcile(world)


class PodOwnedClaims:
    """The part of the garbage collector an exposure's cleanup waits on, every pass from the watch
    cache: a claim owned only by pods that are gone is deleted at once, as kube-controller-manager's
    collector does when its watch shows the pod's deletion. The full collector (it lists every
    owner kind through the API) runs only every ``gc_interval_s``."""

    def __init__(self, ctx: SimContext) -> None:
        self._ctx = ctx

    def reconcile(self, world: World) -> None:
        live = {p["metadata"]["uid"] for p in world.pods}
        for claim in world.pvcs.values():
            meta = claim["metadata"]
            refs = meta.get("ownerReferences") or []
            orphaned = all(ref.get("kind") == "Pod" and ref.get("uid") not in live for ref in refs)
            if refs and orphaned and not meta.get("deletionTimestamp"):
                self._ctx.attempt(f"gc claim {key(claim)}", self._collect, claim, refs)

    def _collect(self, claim: Obj, refs: list[Obj]) -> None:
        namespace, name = key(claim)
        for ref in refs:  # read again: the cache may not show a pod created a moment ago
            pod = self._ctx.objects.find(POD, namespace, ref["name"])
            if pod is not None and pod["metadata"]["uid"] == ref["uid"]:
                return
        self._ctx.objects.delete(PERSISTENT_VOLUME_CLAIM, namespace, name, uid=claim["metadata"]["uid"])


class PassStats:
    def __init__(self) -> None:
        self.durations: list[float] = []
        self.controllers: dict[str, list[float]] = {}  # controller -> [total s, max s]
        self.probes: list[dict[str, Any]] = []
        self.max_sizes: dict[str, int] = {}
        self.skipped = 0  # controller steps not run because they would have done nothing

    def to_json(self, errors: list[str]) -> dict[str, Any]:
        summary = summarize(self.durations)
        return {
            "passes": len(self.durations),
            "pass_seconds_total": sum(self.durations),
            "pass_seconds": None if summary is None else summary.__dict__,
            "full_list_probes": self.probes,
            "max_objects": self.max_sizes,
            "steady_steps_skipped": self.skipped,
            "controllers": {name: {"total_s": t, "max_s": m} for name, (t, m) in self.controllers.items()},
            "errors": errors,
        }


class WatchedSimCluster(SimCluster):
    def __init__(
        self,
        api: client.ApiClient,
        root: Path,
        *,
        min_pass_s: float,
        max_idle_s: float,
        gc_interval_s: float,
        probe_interval_s: float,
        workers: int,
    ) -> None:
        super().__init__(api, root, poll_s=min_pass_s)
        self.cache = WorldCache()
        self.stats = PassStats()
        self._api = api
        self._ctx.objects = CachingObjects(api, self.cache)
        self._attempts = ParallelAttempts(self._ctx, workers)
        self._ctx.attempt = self._attempts.attempt  # type: ignore[method-assign]
        self._scheduler = PatientScheduler(self._ctx, self._attempts.submit)
        self._gc = Every(GarbageCollector(self._ctx), gc_interval_s)
        self._storage = IndexedStorageController(self._ctx, self._registry)
        # Snapshots before the binder before the scheduler before the kubelets, each on a fresh view:
        # one pass takes a new exposure from clone to Running pod when nothing else holds it up.
        self._controllers = (  # type: ignore[assignment]  # other controllers than the stock six
            self._snapshots,
            self._storage,
            self._scheduler,
            self._kubelets,
            PodOwnedClaims(self._ctx),
            self._gc,
        )
        self._min_pass_s = min_pass_s
        self._max_idle_s = max_idle_s
        self._probe_interval_s = probe_interval_s
        self._watchers: list[Watcher] = []

    def start_watches(self, timeout: float = 60.0) -> None:
        objects = KubeObjects(self._api)
        for resource in CACHED:
            on_event, on_relist = self.cache.handler(resource)
            self._watchers.append(Watcher(objects, resource, on_event, on_relist=on_relist).start())
        deadline = time.monotonic() + timeout
        for watcher in self._watchers:
            if not watcher.synced.wait(max(0.0, deadline - time.monotonic())):
                raise TimeoutError("the simulator's watches did not sync")

    def stop(self) -> None:
        super().stop()
        self._attempts.shutdown()
        for watcher in self._watchers:
            watcher.stop()

    def reconcile_once(self) -> None:
        with self._tick:
            for controller in self._controllers:
                started = time.monotonic()
                world = self.cache.world()
                # Sequential: the scheduler (it counts its own bindings; it posts them on the pool)
                # and the garbage collector (its owner listings are made once per pass).
                self._attempts.enabled = controller not in (self._scheduler, self._gc)
                try:
                    controller.reconcile(world)
                finally:
                    self._attempts.enabled = False
                    self._attempts.join()
                    name = type(getattr(controller, "_inner", controller)).__name__
                    spent = self.stats.controllers.setdefault(name, [0.0, 0.0])
                    elapsed = time.monotonic() - started
                    spent[0] += elapsed
                    spent[1] = max(spent[1], elapsed)

    def _run(self) -> None:
        next_probe = time.monotonic() + self._probe_interval_s
        while not self._stopping.is_set():
            self.cache.changed.wait(self._max_idle_s)
            self.cache.changed.clear()
            started = time.monotonic()
            try:
                self.reconcile_once()
            except Exception as err:  # the loop must outlive any one failure; errors shows it
                self._ctx.record(f"tick: {type(err).__name__}: {err}")
            self.stats.durations.append(time.monotonic() - started)
            self.stats.skipped = self._attempts.skipped
            for kind, count in self.cache.sizes().items():
                self.stats.max_sizes[kind] = max(count, self.stats.max_sizes.get(kind, 0))
            if self._probe_interval_s > 0 and time.monotonic() >= next_probe:
                self._probe()
                next_probe = time.monotonic() + self._probe_interval_s
            self._stopping.wait(max(0.0, self._min_pass_s - (time.monotonic() - started)))

    def _probe(self) -> None:
        started = time.monotonic()
        world = World.observe(KubeObjects(self._api), None)
        self.stats.probes.append(
            {
                "at": time.time(),
                "seconds": time.monotonic() - started,
                "objects": len(world.pods)
                + len(world.pvcs)
                + len(world.pvs)
                + len(world.snapshots)
                + len(world.contents)
                + len(world.nodes)
                + len(world.pdbs),
            }
        )


class TimedSimCluster(SimCluster):
    """The stock polling simulator, with each pass timed."""

    stats: PassStats

    def reconcile_once(self) -> None:
        started = time.monotonic()
        try:
            super().reconcile_once()
        finally:
            self.stats.durations.append(time.monotonic() - started)


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="bench.scale_sim", description=__doc__.splitlines()[0])
    p.add_argument("--kubeconfig", required=True, type=Path)
    p.add_argument("--root", required=True, type=Path)
    p.add_argument("--ready-file", required=True, type=Path)
    p.add_argument("--stats-file", required=True, type=Path)
    p.add_argument("--mode", choices=("watch", "poll"), default="watch")
    p.add_argument("--poll-s", type=float, default=0.2, help="poll mode: seconds between passes")
    p.add_argument("--min-pass-s", type=float, default=0.05, help="watch mode: at most one pass per this")
    p.add_argument("--max-idle-s", type=float, default=1.0, help="watch mode: a pass at least this often")
    p.add_argument("--gc-interval-s", type=float, default=10.0)
    p.add_argument("--probe-interval-s", type=float, default=60.0, help="0: never time a full listing")
    p.add_argument("--workers", type=int, default=16, help="watch mode: objects acted on at once")
    args = p.parse_args(argv)

    stop = threading.Event()

    def handle(signum: int, frame: FrameType | None) -> None:
        stop.set()

    signal.signal(signal.SIGTERM, handle)
    signal.signal(signal.SIGINT, handle)
    api = bench_api_client(args.kubeconfig)
    sim: SimCluster
    stats: PassStats
    if args.mode == "watch":
        watched = WatchedSimCluster(
            api,
            args.root,
            min_pass_s=args.min_pass_s,
            max_idle_s=args.max_idle_s,
            gc_interval_s=args.gc_interval_s,
            probe_interval_s=args.probe_interval_s,
            workers=args.workers,
        )
        simstorage.copy_volume_data = copy_in_process  # type: ignore[attr-defined]
        watched.start_watches()
        sim, stats = watched, watched.stats
    else:
        timed = TimedSimCluster(api, args.root, poll_s=args.poll_s)
        timed.stats = PassStats()
        sim, stats = timed, timed.stats
    sim.start()
    args.ready_file.write_text(str(os.getpid()))

    def write_stats() -> None:
        partial = args.stats_file.with_suffix(".partial")
        partial.write_text(json.dumps({"mode": args.mode, **stats.to_json(sim.errors)}))
        partial.replace(args.stats_file)

    while not stop.wait(5.0):
        write_stats()
    sim.stop()
    write_stats()
    return 0


if __name__ == "__main__":
    sys.exit(main())
