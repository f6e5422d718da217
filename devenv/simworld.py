"""What every simulated controller shares: the API, the directory tree, and one tick's view of objects."""

from __future__ import annotations

import logging
import subprocess
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from barge.clock import Clock
from barge.errors import BargeError, Conflict, NotFound
from barge.kube.resources import (
    NODE,
    PERSISTENT_VOLUME,
    PERSISTENT_VOLUME_CLAIM,
    POD,
    POD_DISRUPTION_BUDGET,
    VOLUME_SNAPSHOT,
    VOLUME_SNAPSHOT_CONTENT,
    KubeObjects,
    Obj,
    Resource,
)

DRIVER = "sim.csi.barge.io"
ROOT_ANNOTATION = "sim.barge.io/root"
PVC_PROTECTION = "kubernetes.io/pvc-protection"
PV_PROTECTION = "kubernetes.io/pv-protection"
_MAX_ERRORS = 200

log = logging.getLogger("devenv.sim")


def key(obj: Obj) -> tuple[str, str]:
    """(namespace, name); namespace is "" for cluster-scoped objects."""
    return obj["metadata"].get("namespace", ""), obj["metadata"]["name"]


def remove_path(path: Path) -> None:
    """Remove a file, symlink (never what it points to) or directory tree; nothing if absent."""
    if path.is_symlink() or path.is_file():
        path.unlink(missing_ok=True)
    elif path.is_dir():
        subprocess.run(["rm", "-rf", "--", str(path)], check=True)  # any depth (shutil.rmtree recurses)


@dataclass(frozen=True)
class World:
    """One consistent-enough listing, taken in an order that makes stale reads harmless.

    Objects are listed before the objects that refer to them can appear (PVs before PVCs, pods
    last), so "X refers to Y but Y is not listed" means Y is really gone or not yet bound.
    """

    nodes: dict[str, Obj]
    pvs: dict[str, Obj]
    contents: dict[str, Obj]
    pvcs: dict[tuple[str, str], Obj]
    snapshots: dict[tuple[str, str], Obj]
    pods: list[Obj]
    pdbs: list[Obj]

    @classmethod
    def observe(cls, objects: KubeObjects, namespaces: tuple[str, ...] | None) -> World:
        def listed(resource: Resource) -> list[Obj]:
            if namespaces is None or not resource.namespaced:
                return objects.list(resource)
            return [obj for namespace in namespaces for obj in objects.list(resource, namespace)]

        def by_name(resource: Resource) -> dict[str, Obj]:
            return {o["metadata"]["name"]: o for o in listed(resource)}

        def by_key(resource: Resource) -> dict[tuple[str, str], Obj]:
            return {key(o): o for o in listed(resource)}

        nodes, pvs = by_name(NODE), by_name(PERSISTENT_VOLUME)
        contents = by_name(VOLUME_SNAPSHOT_CONTENT)
        pvcs, snapshots = by_key(PERSISTENT_VOLUME_CLAIM), by_key(VOLUME_SNAPSHOT)
        pods = listed(POD)
        return cls(nodes, pvs, contents, pvcs, snapshots, pods, listed(POD_DISRUPTION_BUDGET))


@dataclass
class SimContext:
    """Shared by the controllers of one simulated cluster."""

    objects: KubeObjects
    root: Path
    namespaces: tuple[str, ...] | None
    clock: Clock
    errors: list[str] = field(default_factory=list)
    _lock: threading.Lock = field(default_factory=threading.Lock)

    @property
    def root_tag(self) -> str:
        return str(self.root)

    def in_scope(self, namespace: str | None) -> bool:
        return self.namespaces is None or namespace in self.namespaces

    def owns_node(self, node: Obj | None) -> bool:
        annotations = (node or {}).get("metadata", {}).get("annotations") or {}
        return bool(annotations.get(ROOT_ANNOTATION) == self.root_tag)

    def kubelet_root(self, node: str) -> Path:
        return self.root / "nodes" / node / "kubelet"

    def data_path(self, pv_name: str, block: bool) -> Path:
        """A Filesystem PV's data directory or a Block PV's image file."""
        return self.root / "volumes" / (f"{pv_name}.img" if block else pv_name)

    def now_text(self) -> str:
        return self.clock.now().strftime("%Y-%m-%dT%H:%M:%SZ")

    def attempt(self, what: str, action: Callable[..., Any], *args: Any) -> None:
        """Run one reconcile step; races (404/409) retry next tick, anything else is recorded."""
        try:
            action(*args)
        except (NotFound, Conflict) as err:
            log.debug("sim: %s raced (%s); retrying next tick", what, type(err).__name__)
        except BargeError as err:
            self.record(f"{what}: {type(err).__name__}: {str(err)[:300]}")
        except (OSError, subprocess.CalledProcessError, KeyError, ValueError) as err:
            self.record(f"{what}: {type(err).__name__}: {err}")

    def record(self, message: str) -> None:
        log.warning("sim: %s", message)
        with self._lock:
            if message not in self.errors and len(self.errors) < _MAX_ERRORS:
                self.errors.append(message)

    def remove_finalizer(self, resource: Resource, obj: Obj, finalizer: str) -> None:
        """Drop ``finalizer`` from the version we read (a concurrent change makes this a 409)."""
        metadata = obj["metadata"]
        remaining = [f for f in metadata.get("finalizers") or [] if f != finalizer]
        patch = {"metadata": {"finalizers": remaining, "resourceVersion": metadata["resourceVersion"]}}
        self.objects.patch(resource, metadata.get("namespace"), metadata["name"], patch)
