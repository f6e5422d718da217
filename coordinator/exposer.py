"""Pure builders of the objects that expose a volume on a node (docs/control-plane.md "Exposure").

``plan_exposure(observed)`` decides *what* to expose (sizes, storage class, node constraints);
``manifests(plan)`` renders it as plain dicts ready for the API. The controller creates
``manifests(plan).in_creation_order()`` one by one, treating AlreadyExists as success.

DataUpload: clone VolumeSnapshotContent (cluster-scoped, deletionPolicy Delete, pointing at the
source snapshot's handle, annotated with the source content's name) -> clone VolumeSnapshot -> PVC
restored from it -> pod mounting the PVC. Once the clone is ready the phase machine releases
Velero's source VolumeSnapshot/Content (``coordinator.model.ReleaseSourceSnapshot``), so the clone
is then the only owner of the storage snapshot, and deleting it at the end deletes the snapshot.
DataDownload: an empty PVC shaped like the target PVC -> pod mounting it.
Both: the namespace's one PodDisruptionBudget for exposer pods (``EXPOSER_BUDGET``,
maxUnavailable 0 over the pods labelled ``EXPOSER_ROLE``, ``unhealthyPodEvictionPolicy:
AlwaysAllow``), made before the first pod, so ``kubectl drain`` cannot evict a *Ready* exposer pod;
the coordinator deletes the pod itself once the work has been handed off (or drainGracePeriod is
over), which is what lets the drain end. A pod is Ready only while the agent on its node vouches
that it moves the pod's data with a coordinator on its stream (the exec readiness probe reads the
vouch from the pod's emptyDir ``EXPOSER_STATUS_VOLUME``), so with no coordinator or no agent the
pod turns unready and the drain evicts it within ``DRAIN_BOUND_S`` (docs/control-plane.md
"Drains"). One budget for all, not one per exposure: a burst of thousands costs no budget writes,
and the disruption controller tracks one object instead of thousands.

Everything else is named after the CR, lives in the CR's namespace, carries
``barge.control.naming.owned_labels`` and (namespaced objects) a controller ownerReference to the CR.
The pod only holds the volume (it sleeps): the agent on its node reads or writes the volume through
the kubelet's path, so the pod runs non-root with no privileges, for Block volumes too.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, replace
from typing import Any

from barge.control.messages import VolumeMode
from barge.control.naming import (
    BLOCK_DEVICE_PATH,
    DATA_MOVER_VERSION,
    EXPOSER_BUDGET,
    EXPOSER_POD_LABELS,
    EXPOSER_STATUS_PATH,
    EXPOSER_STATUS_VOLUME,
    FILESYSTEM_MOUNT_PATH,
    LABEL_MANAGED_BY,
    MANAGED_BY,
    READINESS_FAILURES,
    READINESS_PERIOD_S,
    VELERO_GROUP,
    VOUCH_FILE,
    owned_labels,
)
from coordinator.config import LabelSelector, PodResources
from coordinator.model import (
    DATA_UPLOAD,
    GENERATION_LABEL,
    SOURCE_CONTENT_ANNOTATION,
    ExposurePlan,
    Observed,
)

SNAPSHOT_API = "snapshot.storage.k8s.io/v1"
EXPOSER_COMMAND = ("/bin/sh", "-c", "trap 'exit 0' TERM; sleep infinity & wait")
EXPOSER_USER = 65532
VOLUME_NAME = "volume"
# Ready while the agent's vouch (a Unix time, in the working directory: the status volume) is in
# the future; a missing or stale vouch fails. sh and coreutils' date only: the probe runs every
# few seconds in every exposer pod, so it must cost next to nothing.
READINESS_COMMAND = ("/bin/sh", "-c", f'read -r until < {VOUCH_FILE} && [ "$until" -gt "$(date +%s)" ]')

Manifest = dict[str, Any]


@dataclass(frozen=True)
class ExposureManifests:
    snapshot_content: Manifest | None  # uploads only
    snapshot: Manifest | None  # uploads only
    pvc: Manifest
    disruption_budget: Manifest
    pod: Manifest

    def in_creation_order(self) -> tuple[Manifest, ...]:
        """Dependencies first: the PVC needs the snapshot; the budget comes before the pod so the
        pod is never evictable; the PVC comes last, owned by the pod (``claim_owned_by``: the pod
        waits for it unscheduled). Parts that exist are left as they are."""
        parts = (self.snapshot_content, self.snapshot, self.disruption_budget, self.pod, self.pvc)
        return tuple(part for part in parts if part is not None)


def claim_owned_by(claim: Manifest, pod: Mapping[str, Any]) -> Manifest:
    """``claim`` owned by the exposer ``pod`` alone: deleting the pod is the exposure's one delete,
    and Kubernetes' garbage collector deletes the claim once the pod is gone (a claim is not
    deleted while a pod uses it anyway). Owned by the CR too, the claim would stay while the CR
    does: the collector deletes a dependent only when all its owners are gone. The chain CR ->
    pod -> claim keeps the CR's deletion a backstop for both."""
    meta = pod["metadata"]
    owner = {
        "apiVersion": "v1",
        "kind": "Pod",
        "name": meta["name"],
        "uid": meta["uid"],
        "controller": True,
        "blockOwnerDeletion": False,
    }
    return {**claim, "metadata": {**claim["metadata"], "ownerReferences": [owner]}}


def owning_pod_uid(claim: Mapping[str, Any]) -> str:
    """The uid of the pod that owns ``claim`` ("": none; an earlier version's claim is the CR's)."""
    refs = (claim.get("metadata") or {}).get("ownerReferences") or []
    return next((str(ref.get("uid") or "") for ref in refs if ref.get("kind") == "Pod"), "")


def plan_exposure(observed: Observed) -> ExposurePlan:
    """What to expose for this CR now. Uploads need a READY source snapshot view or the clone
    content (after the source was released, a re-exposure has only the clone); downloads a target
    PVC."""
    return _upload_plan(observed) if observed.cr.is_upload else _download_plan(observed)


def _upload_plan(observed: Observed) -> ExposurePlan:
    """The clone, where it exists, is what the snapshot facts come from: it outlives the source."""
    cr, snapshot, clone, source = observed.cr, observed.snapshot, observed.exposure, observed.source_pvc
    override = observed.config.backup_pvc_for(cr.storage_class)
    restore_size = clone.restore_size or snapshot.restore_size
    size = str(restore_size) if restore_size else ""
    plan = _plan(
        observed,
        storage_class=override.storage_class or cr.storage_class,
        volume_mode=source.volume_mode if source else VolumeMode.FILESYSTEM,
        size=size or (source.size if source else ""),
        access_modes=("ReadOnlyMany",) if override.read_only else ("ReadWriteOnce",),
    )
    return replace(
        plan,
        read_only=override.read_only,
        spc_no_relabeling=override.spc_no_relabeling,
        snapshot_handle=clone.snapshot_handle or snapshot.snapshot_handle,
        driver=clone.snapshot_driver or snapshot.driver or cr.driver,
        snapshot_class=cr.snapshot_class,
        source_content=clone.source_content or snapshot.content_name,
    )


def _download_plan(observed: Observed) -> ExposurePlan:
    target = observed.target_pvc
    if target is None:
        raise ValueError("plan_exposure: a DataDownload needs the target PVC view")
    plan = _plan(observed, target.storage_class, target.volume_mode, target.size, target.access_modes)
    pin = target.wait_for_first_consumer and not observed.config.restore_pvc.ignore_delay_binding
    return replace(plan, required_node=target.selected_node) if pin else plan


def _plan(
    observed: Observed, storage_class: str, volume_mode: VolumeMode, size: str, access_modes: tuple[str, ...]
) -> ExposurePlan:
    """The fields both kinds share; nodes whose agent is gone or that are cordoned are avoided."""
    cr, config = observed.cr, observed.config
    return ExposurePlan(
        kind=cr.kind,
        namespace=cr.namespace,
        name=cr.name,
        uid=cr.uid,
        generation=cr.reexposures,
        volume_mode=volume_mode,
        size=size,
        storage_class=storage_class,
        access_modes=access_modes,
        read_only=False,
        image=config.image,
        node_selector=config.affinity_for(storage_class),
        avoid_nodes=tuple(sorted(a.node for a in observed.agents if a.unusable(observed.now))),
        resources=config.pod_resources,
        priority_class_name=config.priority_class_name,
    )


def manifests(plan: ExposurePlan) -> ExposureManifests:
    """Render the plan as the API objects to create."""
    upload = plan.kind == DATA_UPLOAD
    return ExposureManifests(
        snapshot_content=_snapshot_content(plan) if upload else None,
        snapshot=_snapshot(plan) if upload else None,
        pvc=_pvc(plan, from_snapshot=upload),
        disruption_budget=exposer_budget(plan.namespace),
        pod=_pod(plan),
    )


def _metadata(plan: ExposurePlan, namespaced: bool = True) -> Manifest:
    meta: Manifest = {"name": plan.name, "labels": owned_labels(plan.kind, plan.name, plan.uid)}
    if namespaced:
        meta["namespace"] = plan.namespace
        meta["ownerReferences"] = [
            {
                "apiVersion": f"{VELERO_GROUP}/{DATA_MOVER_VERSION}",
                "kind": plan.kind,
                "name": plan.name,
                "uid": plan.uid,
                "controller": True,
                "blockOwnerDeletion": False,
            }
        ]
    return meta


def _snapshot_content(plan: ExposurePlan) -> Manifest:
    """Delete policy, as Velero's exposer: once the source is released this is the snapshot's only
    owner, and deleting it after the movement deletes the storage snapshot."""
    spec: Manifest = {
        "deletionPolicy": "Delete",
        "driver": plan.driver,
        "source": {"snapshotHandle": plan.snapshot_handle},
        "sourceVolumeMode": plan.volume_mode.value,
        "volumeSnapshotRef": {
            "apiVersion": SNAPSHOT_API,
            "kind": "VolumeSnapshot",
            "name": plan.name,
            "namespace": plan.namespace,
        },
    }
    if plan.snapshot_class:
        spec["volumeSnapshotClassName"] = plan.snapshot_class
    metadata = _metadata(plan, namespaced=False)
    if plan.source_content:
        metadata["annotations"] = {SOURCE_CONTENT_ANNOTATION: plan.source_content}
    return {
        "apiVersion": SNAPSHOT_API,
        "kind": "VolumeSnapshotContent",
        "metadata": metadata,
        "spec": spec,
    }


def _snapshot(plan: ExposurePlan) -> Manifest:
    spec: Manifest = {"source": {"volumeSnapshotContentName": plan.name}}
    if plan.snapshot_class:
        spec["volumeSnapshotClassName"] = plan.snapshot_class
    return {"apiVersion": SNAPSHOT_API, "kind": "VolumeSnapshot", "metadata": _metadata(plan), "spec": spec}


def _pvc(plan: ExposurePlan, from_snapshot: bool) -> Manifest:
    spec: Manifest = {
        "accessModes": list(plan.access_modes),
        "volumeMode": plan.volume_mode.value,
        "resources": {"requests": {"storage": plan.size}},
    }
    if plan.storage_class:
        spec["storageClassName"] = plan.storage_class
    if from_snapshot:
        spec["dataSource"] = {
            "apiGroup": "snapshot.storage.k8s.io",
            "kind": "VolumeSnapshot",
            "name": plan.name,
        }
    return {"apiVersion": "v1", "kind": "PersistentVolumeClaim", "metadata": _metadata(plan), "spec": spec}


def exposer_budget(namespace: str) -> Manifest:
    """The budget that refuses every eviction of a Ready exposer pod in ``namespace`` and allows
    that of an unready one (AlwaysAllow; the default would hold an unready pod as long as any pod
    of the budget is unready). It belongs to no CR (the exposures come and go; it stays), so it
    carries only the managed-by label."""
    return {
        "apiVersion": "policy/v1",
        "kind": "PodDisruptionBudget",
        "metadata": {
            "name": EXPOSER_BUDGET,
            "namespace": namespace,
            "labels": {LABEL_MANAGED_BY: MANAGED_BY},
        },
        "spec": {
            "maxUnavailable": 0,
            "selector": {"matchLabels": dict(EXPOSER_POD_LABELS)},
            "unhealthyPodEvictionPolicy": "AlwaysAllow",
        },
    }


def budget_outdated(budget: Mapping[str, Any]) -> bool:
    """A budget made by an earlier version (without AlwaysAllow, it would hold an unready pod, and
    so a drain, while Barge is down): its spec is brought up to date once (never deleted: that
    would leave every exposer pod of the namespace unprotected for a moment)."""
    wanted = exposer_budget("")["spec"]
    spec = budget.get("spec") or {}
    return any(spec.get(field) != value for field, value in wanted.items())


def _pod(plan: ExposurePlan) -> Manifest:
    meta = _metadata(plan)
    meta["labels"][GENERATION_LABEL] = str(plan.generation)
    meta["labels"].update(EXPOSER_POD_LABELS)
    spec: Manifest = {
        "restartPolicy": "Never",
        "automountServiceAccountToken": False,
        "terminationGracePeriodSeconds": 5,
        "securityContext": _pod_security(plan),
        "containers": [_container(plan)],
        "volumes": [
            {
                "name": VOLUME_NAME,
                "persistentVolumeClaim": {"claimName": plan.name, "readOnly": plan.read_only},
            },
            # Where the node's agent keeps its vouch (a few bytes): see READINESS_COMMAND.
            {"name": EXPOSER_STATUS_VOLUME, "emptyDir": {"sizeLimit": "1Mi"}},
        ],
    }
    affinity = _node_affinity(plan)
    if affinity:
        spec["affinity"] = {"nodeAffinity": affinity}
    if plan.priority_class_name:
        spec["priorityClassName"] = plan.priority_class_name
    return {"apiVersion": "v1", "kind": "Pod", "metadata": meta, "spec": spec}


def _pod_security(plan: ExposurePlan) -> Manifest:
    security: Manifest = {
        "runAsNonRoot": True,
        "runAsUser": EXPOSER_USER,
        "runAsGroup": EXPOSER_USER,
        "seccompProfile": {"type": "RuntimeDefault"},
    }
    if plan.spc_no_relabeling:
        security["seLinuxOptions"] = {"type": "spc_t"}  # skip relabeling the (read-only) volume
    return security


def _container(plan: ExposurePlan) -> Manifest:
    container: Manifest = {
        "name": "expose",
        "image": plan.image,
        "command": list(EXPOSER_COMMAND),
        "workingDir": EXPOSER_STATUS_PATH,
        "readinessProbe": {
            "exec": {"command": list(READINESS_COMMAND)},
            "periodSeconds": READINESS_PERIOD_S,
            "failureThreshold": READINESS_FAILURES,
            "successThreshold": 1,
            "timeoutSeconds": 2,
        },
        "securityContext": {
            "allowPrivilegeEscalation": False,
            "readOnlyRootFilesystem": True,
            "capabilities": {"drop": ["ALL"]},
        },
    }
    status_mount = {"name": EXPOSER_STATUS_VOLUME, "mountPath": EXPOSER_STATUS_PATH, "readOnly": True}
    if plan.volume_mode is VolumeMode.BLOCK:
        container["volumeDevices"] = [{"name": VOLUME_NAME, "devicePath": BLOCK_DEVICE_PATH}]
        container["volumeMounts"] = [status_mount]
    else:
        container["volumeMounts"] = [
            {"name": VOLUME_NAME, "mountPath": FILESYSTEM_MOUNT_PATH, "readOnly": plan.read_only},
            status_mount,
        ]
    rendered = _resources(plan.resources)
    if rendered:
        container["resources"] = rendered
    return container


def _resources(resources: PodResources) -> Manifest:
    rendered: Manifest = {}
    for section, cpu, memory in (
        ("requests", resources.cpu_request, resources.memory_request),
        ("limits", resources.cpu_limit, resources.memory_limit),
    ):
        values = {name: value for name, value in (("cpu", cpu), ("memory", memory)) if value}
        if values:
            rendered[section] = values
    return rendered


def _node_affinity(plan: ExposurePlan) -> Manifest:
    """One required node-selector term: the loadAffinity selector, minus unusable nodes, plus the
    node a WaitForFirstConsumer target PVC was bound to."""
    expressions = _selector_expressions(plan.node_selector)
    # The API server accepts exactly one value per metadata.name requirement (HTTP 422 otherwise):
    # one NotIn per node to avoid; the requirements of a term are ANDed.
    fields: list[Manifest] = [
        {"key": "metadata.name", "operator": "NotIn", "values": [node]} for node in plan.avoid_nodes
    ]
    if plan.required_node:
        fields.append({"key": "metadata.name", "operator": "In", "values": [plan.required_node]})
    term: Manifest = {}
    if expressions:
        term["matchExpressions"] = expressions
    if fields:
        term["matchFields"] = fields
    if not term:
        return {}
    return {"requiredDuringSchedulingIgnoredDuringExecution": {"nodeSelectorTerms": [term]}}


def _selector_expressions(selector: LabelSelector | None) -> list[Manifest]:
    if selector is None:
        return []
    expressions: list[Manifest] = [
        {"key": key, "operator": "In", "values": [value]} for key, value in selector.match_labels
    ]
    for requirement in selector.match_expressions:
        expression: Manifest = {"key": requirement.key, "operator": requirement.operator}
        if requirement.values:
            expression["values"] = list(requirement.values)
        expressions.append(expression)
    return expressions
