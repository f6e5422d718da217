"""Simulated scheduler, kubelets, pod garbage collection and disruption controller."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

from barge.control.naming import kubelet_empty_dir_path, kubelet_volume_path
from barge.kube.resources import (
    NODE,
    PERSISTENT_VOLUME_CLAIM,
    POD,
    POD_DISRUPTION_BUDGET,
    KubeObjects,
    Obj,
)
from devenv.simprobes import ReadinessProber
from devenv.simrules import (
    TERMINAL_PHASES,
    claim_names,
    pdb_status,
    pick_node,
    pod_is_active,
)
from devenv.simsnapshots import quantity_bytes
from devenv.simstorage import prepare_empty
from devenv.simworld import SimContext, World, key, remove_path

DEFAULT_SCHEDULER = "default-scheduler"
READY_CONDITIONS = ("ContainersReady", "Ready")


def _status(obj: Obj) -> Obj:
    status: Obj = obj.get("status") or {}
    return status


def claims_problem(pod: Obj, world: World) -> str | None:
    """Why the pod's claims keep it from being scheduled (the scheduler's VolumeBinding filter)."""
    namespace = pod["metadata"]["namespace"]
    for name in claim_names(pod):
        pvc = world.pvcs.get((namespace, name))
        if pvc is None:
            return f'persistentvolumeclaim "{name}" not found'
        if pvc["metadata"].get("deletionTimestamp"):
            return f'persistentvolumeclaim "{name}" is being deleted'
        if _status(pvc).get("phase") != "Bound":
            return "pod has unbound immediate PersistentVolumeClaims"
    return None


def bind_pod(objects: KubeObjects, pod: Obj, node: str) -> None:
    """What the scheduler writes to place a pod: a Binding (``pods/binding``)."""
    namespace, name = key(pod)
    binding = {
        "apiVersion": "v1",
        "kind": "Binding",
        "metadata": {"name": name, "uid": pod["metadata"]["uid"]},
        "target": {"apiVersion": "v1", "kind": "Node", "name": node},
    }
    objects.create_subresource(POD, namespace, name, "binding", binding)


class Scheduler:
    """Binds unscheduled pods to the least-loaded fitting node this simulator runs."""

    def __init__(self, ctx: SimContext) -> None:
        self._ctx = ctx

    def reconcile(self, world: World) -> None:
        nodes = [n for n in world.nodes.values() if self._ctx.owns_node(n)]
        load = Counter(p["spec"]["nodeName"] for p in world.pods if pod_is_active(p))
        for pod in world.pods:
            spec, metadata = pod["spec"], pod["metadata"]
            if spec.get("nodeName") or metadata.get("deletionTimestamp"):
                continue
            if _status(pod).get("phase") in TERMINAL_PHASES:
                continue
            if spec.get("schedulerName", DEFAULT_SCHEDULER) != DEFAULT_SCHEDULER:
                continue
            self._ctx.attempt(f"schedule pod {key(pod)}", self._schedule, pod, world, nodes, load)

    def _schedule(self, pod: Obj, world: World, nodes: list[Obj], load: Counter[str]) -> None:
        problem = claims_problem(pod, world)
        node = None if problem else pick_node(pod, nodes, load)
        if node is None:
            self._mark_unschedulable(pod, problem or self._no_node_message(len(nodes)))
            return
        bind_pod(self._ctx.objects, pod, node)
        load[node] += 1

    @staticmethod
    def _no_node_message(count: int) -> str:
        return (
            f"0/{count} nodes are available: none is Ready, schedulable and matches the pod's "
            "node selector, node affinity and tolerations"
        )

    def _mark_unschedulable(self, pod: Obj, message: str) -> None:
        current = [c for c in _status(pod).get("conditions") or [] if c.get("type") == "PodScheduled"]
        if current and current[0].get("reason") == "Unschedulable" and current[0].get("message") == message:
            return
        condition = {
            "type": "PodScheduled",
            "status": "False",
            "reason": "Unschedulable",
            "message": message,
            "lastTransitionTime": self._ctx.now_text(),
        }
        namespace, name = key(pod)
        patch = {"status": {"phase": "Pending", "conditions": [condition]}}
        self._ctx.objects.patch(POD, namespace, name, patch, "status", strategic=True)


class Kubelets:
    """Every simulated node's kubelet: mounts volumes as symlinks (an emptyDir as a directory), runs
    pods, probes their readiness (``devenv.simprobes``), finishes deletions."""

    def __init__(self, ctx: SimContext) -> None:
        self._ctx = ctx
        self._next_ip = 0
        self._prober = ReadinessProber(ctx, self._volume_directory)

    def reconcile(self, world: World) -> None:
        for pod in world.pods:
            node_name = pod["spec"].get("nodeName")
            if not node_name:
                continue
            node = world.nodes.get(node_name)
            if self._ctx.owns_node(node):
                self._ctx.attempt(f"kubelet pod {key(pod)}", self._sync, pod, world)
            elif node is None and self._ctx.kubelet_root(node_name).exists() and self._node_gone(node_name):
                self._ctx.attempt(f"pod gc {key(pod)}", self._finish_deletion, pod)
        self._prober.forget({str(p["metadata"]["uid"]) for p in world.pods})

    def _node_gone(self, name: str) -> bool:
        """Confirmed by a fresh read: the pass's listing may predate a node created since."""
        return self._ctx.objects.find(NODE, None, name) is None

    def _sync(self, pod: Obj, world: World) -> None:
        phase = _status(pod).get("phase")
        if pod["metadata"].get("deletionTimestamp"):
            self._finish_deletion(pod)
        elif phase in TERMINAL_PHASES:
            self._unmount(pod)
        elif phase in (None, "Pending"):
            self._start(pod, world)
        elif phase == "Running":
            self._report_readiness(pod, self._prober.readiness(pod))

    def pod_dir(self, pod: Obj) -> Path:
        return self._ctx.kubelet_root(str(pod["spec"]["nodeName"])) / "pods" / str(pod["metadata"]["uid"])

    def _unmount(self, pod: Obj) -> None:
        remove_path(self.pod_dir(pod))

    def _volume_directory(self, pod: Obj, volume: str) -> Path | None:
        """Where the pod's volume ``volume`` is on its node (a claim's: the kubelet's mount path)."""
        spec = next((v for v in pod["spec"].get("volumes") or [] if v["name"] == volume), None)
        root = str(self._ctx.kubelet_root(str(pod["spec"]["nodeName"])))
        uid = str(pod["metadata"]["uid"])
        if spec is not None and "emptyDir" in spec:
            return Path(kubelet_empty_dir_path(root, uid, volume))
        claim = (spec or {}).get("persistentVolumeClaim")
        if claim is None:
            return None
        namespace = pod["metadata"]["namespace"]
        pvc = self._ctx.objects.find(PERSISTENT_VOLUME_CLAIM, namespace, claim["claimName"]) or {}
        pv_name = (pvc.get("spec") or {}).get("volumeName")
        return Path(kubelet_volume_path(root, uid, str(pv_name), block=False)) if pv_name else None

    def _finish_deletion(self, pod: Obj) -> None:
        self._unmount(pod)
        namespace, name = key(pod)
        self._ctx.objects.delete(POD, namespace, name, uid=pod["metadata"]["uid"], grace_seconds=0)

    def _start(self, pod: Obj, world: World) -> None:
        volumes = self._volumes(pod, world)
        if volumes is None:
            return  # ContainerCreating: a claim or its volume is not there yet
        kubelet_root = str(self._ctx.kubelet_root(pod["spec"]["nodeName"]))
        for pv in volumes:
            pv_name = pv["metadata"]["name"]
            block = pv["spec"].get("volumeMode") == "Block"
            data = self._ctx.data_path(pv_name, block)
            if not data.exists():
                prepare_empty(data, block, quantity_bytes(pv["spec"]["capacity"]["storage"]))
            link = Path(kubelet_volume_path(kubelet_root, pod["metadata"]["uid"], pv_name, block))
            link.parent.mkdir(parents=True, exist_ok=True)
            remove_path(link)
            link.symlink_to(data)
        for volume in pod["spec"].get("volumes") or []:
            if "emptyDir" in volume:
                path = kubelet_empty_dir_path(kubelet_root, pod["metadata"]["uid"], volume["name"])
                Path(path).mkdir(parents=True, exist_ok=True)
        self._report_running(pod)

    @staticmethod
    def _volumes(pod: Obj, world: World) -> list[Obj] | None:
        namespace = pod["metadata"]["namespace"]
        volumes = []
        for claim in claim_names(pod):
            pvc = world.pvcs.get((namespace, claim)) or {}
            pv = world.pvs.get((pvc.get("spec") or {}).get("volumeName") or "")
            if _status(pvc).get("phase") != "Bound" or pv is None:
                return None
            volumes.append(pv)
        return volumes

    def _report_running(self, pod: Obj) -> None:
        """Running; a container with a readiness probe starts unready (the prober decides)."""
        now = self._ctx.now_text()
        self._next_ip += 1
        ip = f"127.0.0.{2 + self._next_ip % 250}"
        ready = all("readinessProbe" not in c for c in pod["spec"]["containers"])
        conditions = [
            {"type": kind, "status": "True", "lastTransitionTime": now}
            for kind in ("PodScheduled", "Initialized")
        ] + _ready_conditions(ready, now)
        containers = [
            {
                "name": c["name"],
                "image": c.get("image", ""),
                "imageID": f"sim://{c.get('image', '')}",
                "containerID": f"sim://{pod['metadata']['uid']}/{c['name']}",
                "ready": "readinessProbe" not in c,
                "started": True,
                "restartCount": 0,
                "state": {"running": {"startedAt": now}},
            }
            for c in pod["spec"]["containers"]
        ]
        status = {
            "phase": "Running",
            "conditions": conditions,
            "hostIP": "127.0.0.1",
            "hostIPs": [{"ip": "127.0.0.1"}],
            "podIP": ip,
            "podIPs": [{"ip": ip}],
            "startTime": now,
            "containerStatuses": containers,
        }
        namespace, name = key(pod)
        self._ctx.objects.patch(POD, namespace, name, {"status": status}, "status", strategic=True)

    def _report_readiness(self, pod: Obj, ready: dict[str, bool]) -> None:
        """Write the containers' readiness and the pod's Ready condition when they changed."""
        statuses = _status(pod).get("containerStatuses") or []
        if all(s.get("ready") == ready.get(s["name"], s.get("ready")) for s in statuses):
            return
        status = {
            "conditions": _ready_conditions(all(ready.values()), self._ctx.now_text()),
            "containerStatuses": [{**s, "ready": ready.get(s["name"], s.get("ready"))} for s in statuses],
        }
        namespace, name = key(pod)
        self._ctx.objects.patch(POD, namespace, name, {"status": status}, "status", strategic=True)

    def fail(self, namespace: str, name: str, reason: str) -> None:
        """The pod's containers crashed: phase Failed, not ready, containers terminated."""
        pod = self._ctx.objects.find(POD, namespace, name)
        if pod is None:
            raise KeyError(f"pod {namespace}/{name} does not exist")
        now = self._ctx.now_text()
        terminated = {"exitCode": 1, "reason": reason, "finishedAt": now, "startedAt": now}
        containers = [
            {
                "name": c["name"],
                "image": c.get("image", ""),
                "imageID": "",
                "ready": False,
                "restartCount": 0,
                "state": {"terminated": terminated},
            }
            for c in pod["spec"]["containers"]
        ]
        conditions = [
            {"type": kind, "status": "False", "reason": reason, "lastTransitionTime": now}
            for kind in READY_CONDITIONS
        ]
        status = {
            "phase": "Failed",
            "reason": reason,
            "message": f"simulated failure: {reason}",
            "conditions": conditions,
            "containerStatuses": containers,
        }
        self._ctx.objects.patch(POD, namespace, name, {"status": status}, "status", strategic=True)


def _ready_conditions(ready: bool, now: str) -> list[Obj]:
    value = "True" if ready else "False"
    return [{"type": kind, "status": value, "lastTransitionTime": now} for kind in READY_CONDITIONS]


class DisruptionController:
    """Keeps PodDisruptionBudget status current so the API server's eviction checks decide correctly."""

    def __init__(self, ctx: SimContext) -> None:
        self._ctx = ctx

    def reconcile(self, world: World) -> None:
        now = self._ctx.clock.now()
        for pdb in world.pdbs:
            namespace = pdb["metadata"]["namespace"]
            pods = [p for p in world.pods if p["metadata"]["namespace"] == namespace]
            wanted = pdb_status(pdb, pods, now)
            self._ctx.attempt(f"pdb {key(pdb)}", self._write, pdb, wanted)

    def _write(self, pdb: Obj, wanted: Obj) -> None:
        current = _status(pdb)
        if all(
            current.get(field, {} if field == "disruptedPods" else 0) == value
            for field, value in wanted.items()
        ):
            return
        allowed = wanted["disruptionsAllowed"] > 0
        condition = {
            "type": "DisruptionAllowed",
            "status": "True" if allowed else "False",
            "reason": "SufficientPods" if allowed else "InsufficientPods",
            "message": "",
            "observedGeneration": pdb["metadata"].get("generation", 0),
            "lastTransitionTime": self._ctx.now_text(),
        }
        body = {**pdb, "status": {**current, **wanted, "conditions": [condition]}}
        self._ctx.objects.replace(POD_DISRUPTION_BUDGET, body, "status")
