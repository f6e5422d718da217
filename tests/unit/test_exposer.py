"""The exposure manifests: what docs/control-plane.md "Exposure" promises, object by object."""

from __future__ import annotations

import subprocess
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest

from barge.clock import SystemClock
from barge.control.messages import VolumeMode
from barge.control.naming import (
    BLOCK_DEVICE_PATH,
    EXPOSER_STATUS_PATH,
    FILESYSTEM_MOUNT_PATH,
    LABEL_MANAGED_BY,
    LABEL_OWNER_KIND,
    LABEL_OWNER_NAME,
    LABEL_OWNER_UID,
    READINESS_FAILURES,
    READINESS_PERIOD_S,
    VOUCH_FILE,
)
from coordinator.config import CoordinatorConfig
from coordinator.exposer import (
    EXPOSER_COMMAND,
    READINESS_COMMAND,
    budget_outdated,
    claim_owned_by,
    manifests,
    owning_pod_uid,
    plan_exposure,
)
from coordinator.model import (
    GENERATION_LABEL,
    SOURCE_CONTENT_ANNOTATION,
    ExposureView,
    Observed,
    SnapshotView,
)
from devenv.crds import load_crd
from tests.coordinator_world import (
    OTHER_NODE,
    SOURCE_PVC,
    T0,
    TARGET_PVC,
    agent,
    clone_fields,
    download_cr,
    minutes,
    observed,
    upload_cr,
)

CONFIG = CoordinatorConfig.from_dict(
    {
        "backupPVC": {"standard": {"storageClass": "backup-sc", "readOnly": True, "spcNoRelabeling": True}},
        "loadAffinity": [{"nodeSelector": {"matchLabels": {"role": "backup"}}, "storageClass": "backup-sc"}],
        "podResources": {"cpuRequest": "100m", "memoryLimit": "512Mi"},
        "priorityClassName": "low",
        "image": "example.org/barge:1",
    }
)


def upload_world(**changes: Any) -> Observed:
    return observed(upload_cr(), **changes)


def schema_keys_exist(value: Any, schema: dict[str, Any], path: str = "") -> list[str]:
    """Paths in ``value`` that the OpenAPI ``schema`` does not declare (what the apiserver prunes)."""
    if not isinstance(value, dict):
        return []
    properties = schema.get("properties")
    if properties is None:
        return []
    missing = [f"{path}.{key}" for key in value if key not in properties]
    for key, child in value.items():
        if key in properties:
            missing += schema_keys_exist(child, properties[key], f"{path}.{key}")
    return missing


def crd_schema(file_name: str) -> dict[str, Any]:
    versions = load_crd(file_name)["spec"]["versions"]
    return next(v for v in versions if v["name"] == "v1")["schema"]["openAPIV3Schema"]


def test_upload_clones_the_snapshot_with_delete_and_ties_everything_to_the_cr() -> None:
    """Velero's exposer: the clone content is Delete (after the release it alone owns the storage
    snapshot) and remembers the source content it came from."""
    rendered = manifests(plan_exposure(upload_world()))
    content, snapshot, budget, pod, pvc = rendered.in_creation_order()
    assert [m["kind"] for m in (content, snapshot, budget, pod, pvc)] == [
        "VolumeSnapshotContent",
        "VolumeSnapshot",
        "PodDisruptionBudget",
        "Pod",
        "PersistentVolumeClaim",
    ]
    assert content["spec"]["deletionPolicy"] == "Delete"
    assert content["metadata"]["annotations"] == {SOURCE_CONTENT_ANNOTATION: "snapcontent-1"}
    assert content["spec"]["source"] == {"snapshotHandle": "handle-1"}
    assert content["spec"]["driver"] == "hostpath.csi.k8s.io"
    assert content["spec"]["volumeSnapshotRef"]["name"] == "backup-1-abcde"
    assert content["spec"]["volumeSnapshotRef"]["namespace"] == "velero"
    assert "namespace" not in content["metadata"]
    assert "ownerReferences" not in content["metadata"]
    assert snapshot["spec"]["source"] == {"volumeSnapshotContentName": "backup-1-abcde"}
    assert pvc["spec"]["dataSource"] == {
        "apiGroup": "snapshot.storage.k8s.io",
        "kind": "VolumeSnapshot",
        "name": "backup-1-abcde",
    }
    assert pvc["spec"]["resources"]["requests"]["storage"] == str(10 * 2**30)
    assert pvc["spec"]["storageClassName"] == "standard"
    for manifest in (content, snapshot, pvc, pod):
        meta = manifest["metadata"]
        assert meta["name"] == "backup-1-abcde"
        assert meta["labels"][LABEL_MANAGED_BY] == "barge"
        assert meta["labels"][LABEL_OWNER_KIND] == "DataUpload"
        assert meta["labels"][LABEL_OWNER_NAME] == "backup-1-abcde"
        assert meta["labels"][LABEL_OWNER_UID] == "uid-upload-1"
    for manifest in (snapshot, pvc, pod):
        assert manifest["metadata"]["namespace"] == "velero"
        (owner,) = manifest["metadata"]["ownerReferences"]
        assert owner == {
            "apiVersion": "velero.io/v2alpha1",
            "kind": "DataUpload",
            "name": "backup-1-abcde",
            "uid": "uid-upload-1",
            "controller": True,
            "blockOwnerDeletion": False,
        }


def test_the_pod_is_protected_from_eviction_by_the_namespace_budget_for_exposer_pods() -> None:
    rendered = manifests(plan_exposure(upload_world()))
    budget, pod = rendered.disruption_budget, rendered.pod
    assert budget["apiVersion"] == "policy/v1"
    assert budget["metadata"] == {
        "name": "barge-exposers",
        "namespace": "velero",
        "labels": {LABEL_MANAGED_BY: "barge"},  # no owner: it outlives every exposure
    }
    assert budget["spec"]["maxUnavailable"] == 0
    # Only a Ready pod is protected: an unready one (nobody vouches that its data moves) may go.
    assert budget["spec"]["unhealthyPodEvictionPolicy"] == "AlwaysAllow"
    assert not budget_outdated(budget)
    selector = budget["spec"]["selector"]["matchLabels"]
    assert selector.items() <= pod["metadata"]["labels"].items()  # it covers this pod ...
    assert "barge.io/exposure-generation" not in selector  # ... and the next exposure's
    assert LABEL_OWNER_UID not in selector  # ... and every other CR's
    other = manifests(plan_exposure(observed(download_cr())))
    assert other.disruption_budget == budget
    order = [m["kind"] for m in rendered.in_creation_order()]
    assert order.index("PodDisruptionBudget") < order.index("Pod")


def test_snapshot_objects_use_only_fields_the_crds_declare() -> None:
    rendered = manifests(plan_exposure(upload_world()))
    assert rendered.snapshot_content is not None
    assert rendered.snapshot is not None
    schema = crd_schema("snapshot.storage.k8s.io_volumesnapshotcontents.yaml")
    assert schema_keys_exist(rendered.snapshot_content["spec"], schema["properties"]["spec"]) == []
    schema = crd_schema("snapshot.storage.k8s.io_volumesnapshots.yaml")
    assert schema_keys_exist(rendered.snapshot["spec"], schema["properties"]["spec"]) == []


def test_filesystem_pod_mounts_the_volume_and_only_sleeps() -> None:
    pod = manifests(plan_exposure(upload_world())).pod
    spec = pod["spec"]
    (container,) = spec["containers"]
    assert container["command"] == list(EXPOSER_COMMAND)
    assert container["volumeMounts"] == [
        {"name": "volume", "mountPath": FILESYSTEM_MOUNT_PATH, "readOnly": False},
        {"name": "barge-status", "mountPath": EXPOSER_STATUS_PATH, "readOnly": True},
    ]
    assert "volumeDevices" not in container
    assert spec["volumes"] == [
        {"name": "volume", "persistentVolumeClaim": {"claimName": "backup-1-abcde", "readOnly": False}},
        {"name": "barge-status", "emptyDir": {"sizeLimit": "1Mi"}},
    ]
    assert spec["restartPolicy"] == "Never"
    assert "nodeName" not in spec
    assert "tolerations" not in spec
    assert spec["securityContext"]["runAsNonRoot"] is True
    assert container["securityContext"]["allowPrivilegeEscalation"] is False
    assert pod["metadata"]["labels"][GENERATION_LABEL] == "0"


def test_block_pod_gets_a_device_not_a_mount() -> None:
    world = upload_world(source_pvc=replace(SOURCE_PVC, volume_mode=VolumeMode.BLOCK))
    rendered = manifests(plan_exposure(world))
    (container,) = rendered.pod["spec"]["containers"]
    assert container["volumeDevices"] == [{"name": "volume", "devicePath": BLOCK_DEVICE_PATH}]
    assert [m["name"] for m in container["volumeMounts"]] == ["barge-status"]  # the vouch only
    assert rendered.pvc["spec"]["volumeMode"] == "Block"
    assert rendered.snapshot_content is not None
    assert rendered.snapshot_content["spec"]["sourceVolumeMode"] == "Block"


def test_backup_pvc_override_affinity_resources_priority_and_image_come_from_config() -> None:
    rendered = manifests(plan_exposure(upload_world(config=CONFIG)))
    pvc, pod = rendered.pvc, rendered.pod
    assert pvc["spec"]["storageClassName"] == "backup-sc"
    assert pvc["spec"]["accessModes"] == ["ReadOnlyMany"]
    spec = pod["spec"]
    (container,) = spec["containers"]
    assert container["image"] == "example.org/barge:1"
    assert container["volumeMounts"][0]["readOnly"] is True
    assert spec["volumes"][0]["persistentVolumeClaim"]["readOnly"] is True
    assert container["resources"] == {"requests": {"cpu": "100m"}, "limits": {"memory": "512Mi"}}
    assert spec["priorityClassName"] == "low"
    assert spec["securityContext"]["seLinuxOptions"] == {"type": "spc_t"}
    (term,) = spec["affinity"]["nodeAffinity"]["requiredDuringSchedulingIgnoredDuringExecution"][
        "nodeSelectorTerms"
    ]
    assert term == {"matchExpressions": [{"key": "role", "operator": "In", "values": ["backup"]}]}


def test_nodes_without_a_usable_agent_are_avoided() -> None:
    agents = (agent(), agent(OTHER_NODE, connected=False), agent("node-c", cordoned=True))
    spec = manifests(plan_exposure(upload_world(agents=agents))).pod["spec"]
    (term,) = spec["affinity"]["nodeAffinity"]["requiredDuringSchedulingIgnoredDuringExecution"][
        "nodeSelectorTerms"
    ]
    # The API server allows exactly one value per node field requirement: one NotIn each (ANDed).
    assert term == {
        "matchFields": [
            {"key": "metadata.name", "operator": "NotIn", "values": [OTHER_NODE]},
            {"key": "metadata.name", "operator": "NotIn", "values": ["node-c"]},
        ]
    }


def test_a_node_whose_agent_may_still_be_reconnecting_to_a_new_leader_is_not_avoided() -> None:
    """A just-started leader has not seen any agent yet: placing around all of them would leave
    the pod unschedulable for good (its affinity never changes)."""
    reconnecting = agent(OTHER_NODE, connected=False, reconnect_by=T0 + minutes(1))
    assert "affinity" not in manifests(plan_exposure(upload_world(agents=(reconnecting,)))).pod["spec"]
    late = upload_world(agents=(reconnecting,), now=T0 + minutes(1))
    assert "affinity" in manifests(plan_exposure(late)).pod["spec"]  # past it: gone, avoided


def test_no_constraints_means_no_affinity() -> None:
    assert "affinity" not in manifests(plan_exposure(upload_world())).pod["spec"]


def test_size_falls_back_to_the_source_pvc_when_the_snapshot_has_no_restore_size() -> None:
    world = upload_world()
    world = replace(world, snapshot=replace(world.snapshot, restore_size=0))
    assert manifests(plan_exposure(world)).pvc["spec"]["resources"]["requests"]["storage"] == "10Gi"


def test_a_re_exposure_after_the_release_takes_the_snapshot_facts_from_the_clone() -> None:
    """The source VolumeSnapshot/Content are gone: handle, driver, size and the source content's
    name come from the clone content (whose own manifest then already exists)."""
    clone = ExposureView(snapshot_content=True, snapshot=True, **clone_fields())  # type: ignore[arg-type]
    clone = replace(clone, snapshot_handle="handle-9", snapshot_driver="clone.csi", restore_size=3 << 30)
    rendered = manifests(plan_exposure(upload_world(snapshot=SnapshotView(), exposure=clone)))
    assert rendered.snapshot_content is not None
    assert rendered.snapshot_content["spec"]["source"] == {"snapshotHandle": "handle-9"}
    assert rendered.snapshot_content["spec"]["driver"] == "clone.csi"
    assert rendered.snapshot_content["metadata"]["annotations"] == {
        SOURCE_CONTENT_ANNOTATION: "snapcontent-1"
    }
    assert rendered.pvc["spec"]["resources"]["requests"]["storage"] == str(3 << 30)
    not_ready = replace(clone, restore_size=0)  # no size on the clone yet: the source PVC's
    world = upload_world(snapshot=SnapshotView(), exposure=not_ready)
    assert manifests(plan_exposure(world)).pvc["spec"]["resources"]["requests"]["storage"] == "10Gi"


def test_download_has_a_plain_pvc_shaped_like_the_target_and_a_pod() -> None:
    target = replace(TARGET_PVC, storage_class="fast", size="5Gi", access_modes=("ReadWriteOncePod",))
    rendered = manifests(plan_exposure(observed(download_cr(), target_pvc=target)))
    assert rendered.snapshot_content is None
    assert rendered.snapshot is None
    budget, pod, pvc = rendered.in_creation_order()
    assert budget["kind"] == "PodDisruptionBudget"
    assert "dataSource" not in pvc["spec"]
    assert pvc["spec"]["storageClassName"] == "fast"
    assert pvc["spec"]["accessModes"] == ["ReadWriteOncePod"]
    assert pvc["spec"]["resources"]["requests"]["storage"] == "5Gi"
    assert pod["metadata"]["labels"][LABEL_OWNER_KIND] == "DataDownload"
    assert pod["spec"]["volumes"][0]["persistentVolumeClaim"]["claimName"] == "restore-1-xyz"


@pytest.mark.parametrize(("ignore_delay_binding", "pinned"), [(False, True), (True, False)])
def test_download_follows_a_wait_for_first_consumer_target_unless_told_not_to(
    ignore_delay_binding: bool, pinned: bool
) -> None:
    target = replace(TARGET_PVC, wait_for_first_consumer=True, selected_node="node-z")
    config = CoordinatorConfig.from_dict({"restorePVC": {"ignoreDelayBinding": ignore_delay_binding}})
    spec = manifests(plan_exposure(observed(download_cr(), target_pvc=target, config=config))).pod["spec"]
    if not pinned:
        assert "affinity" not in spec
        return
    (term,) = spec["affinity"]["nodeAffinity"]["requiredDuringSchedulingIgnoredDuringExecution"][
        "nodeSelectorTerms"
    ]
    assert term == {"matchFields": [{"key": "metadata.name", "operator": "In", "values": ["node-z"]}]}


def test_a_re_exposure_labels_the_pod_with_its_generation() -> None:
    world = upload_world()
    world = replace(world, cr=replace(world.cr, reexposures=2))
    assert manifests(plan_exposure(world)).pod["metadata"]["labels"][GENERATION_LABEL] == "2"


def test_download_plan_needs_the_target_pvc() -> None:
    with pytest.raises(ValueError, match="target PVC"):
        plan_exposure(observed(download_cr(), target_pvc=None))


def test_the_pod_is_ready_only_while_the_vouch_in_its_status_volume_is_in_the_future(tmp_path: Path) -> None:
    """The probe runs in the status volume (the container's workingDir); run here in a directory
    standing for it, with the vouch the agent would write."""
    (container,) = manifests(plan_exposure(upload_world())).pod["spec"]["containers"]
    probe = container["readinessProbe"]
    assert container["workingDir"] == EXPOSER_STATUS_PATH
    assert probe["exec"]["command"] == list(READINESS_COMMAND)
    assert (probe["periodSeconds"], probe["failureThreshold"]) == (READINESS_PERIOD_S, READINESS_FAILURES)

    def ready() -> bool:
        done = subprocess.run(READINESS_COMMAND, cwd=tmp_path, capture_output=True, check=False)
        return done.returncode == 0

    now = int(SystemClock().now().timestamp())
    assert not ready()  # no vouch yet
    (tmp_path / VOUCH_FILE).write_text(f"{now + 60}\n")
    assert ready()
    (tmp_path / VOUCH_FILE).write_text(f"{now - 1}\n")
    assert not ready()  # expired: the agent stopped renewing it
    (tmp_path / VOUCH_FILE).write_text("")
    assert not ready()  # unreadable


def test_a_budget_an_earlier_version_made_is_outdated() -> None:
    earlier = {"spec": {"maxUnavailable": 0, "selector": {"matchLabels": {"barge.io/role": "exposer"}}}}
    assert budget_outdated(earlier)
    current = manifests(plan_exposure(upload_world())).disruption_budget
    assert budget_outdated({"spec": {**current["spec"], "unhealthyPodEvictionPolicy": "IfHealthyBudget"}})


def test_the_claim_is_owned_by_its_pod_alone_so_deleting_the_pod_deletes_both() -> None:
    """Kubernetes' garbage collector deletes a dependent only once all its owners are gone: owned
    by the pod alone, the claim goes with the pod (CR -> pod -> claim keeps the CR a backstop)."""
    rendered = manifests(plan_exposure(upload_world()))
    pod = {**rendered.pod, "metadata": {**rendered.pod["metadata"], "uid": "uid-pod"}}
    claim = claim_owned_by(rendered.pvc, pod)
    assert claim["metadata"]["ownerReferences"] == [
        {
            "apiVersion": "v1",
            "kind": "Pod",
            "name": "backup-1-abcde",
            "uid": "uid-pod",
            "controller": True,
            "blockOwnerDeletion": False,
        }
    ]
    assert owning_pod_uid(claim) == "uid-pod"
    assert owning_pod_uid(rendered.pvc) == ""  # as an earlier version made it: the CR's
    assert pod["metadata"]["ownerReferences"][0]["kind"] == "DataUpload"
