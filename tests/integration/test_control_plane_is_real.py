"""Proof that the test control plane is a real kube-apiserver + etcd with the real CRDs installed."""

from __future__ import annotations

import copy
import threading
import uuid
from collections.abc import Iterator
from typing import Any

import pytest
from kubernetes import client, watch
from kubernetes.client.exceptions import ApiException

from barge.kube.client import api_client
from devenv.controlplane import ControlPlaneEndpoints, write_kubeconfig
from devenv.crds import apply_crd, load_crd
from tests.integration.objects import VELERO_NS, data_upload

pytestmark = pytest.mark.integration

GROUP, VERSION, PLURAL = "velero.io", "v2alpha1", "datauploads"


@pytest.fixture(scope="module")
def velero_namespace(kube: client.ApiClient) -> str:
    core = client.CoreV1Api(kube)
    try:
        core.create_namespace({"metadata": {"name": VELERO_NS}})
    except ApiException as err:
        if err.status != 409:
            raise
    return VELERO_NS


@pytest.fixture
def crs(kube: client.ApiClient, velero_namespace: str) -> client.CustomObjectsApi:
    return client.CustomObjectsApi(kube)


def create_du(crs: client.CustomObjectsApi, body: dict[str, Any]) -> dict[str, Any]:
    created: dict[str, Any] = crs.create_namespaced_custom_object(GROUP, VERSION, VELERO_NS, PLURAL, body)
    return created


def test_api_server_rejects_a_data_upload_missing_a_required_field(crs: client.CustomObjectsApi) -> None:
    body = data_upload()
    del body["spec"]["sourcePVC"]
    with pytest.raises(ApiException) as raised:
        create_du(crs, body)
    assert raised.value.status == 422
    assert "spec.sourcePVC: Required value" in raised.value.body


def test_api_server_rejects_a_wrong_type_and_a_bad_phase(crs: client.CustomObjectsApi) -> None:
    body = data_upload()
    body["spec"]["cancel"] = "yes"
    with pytest.raises(ApiException) as raised:
        create_du(crs, body)
    assert raised.value.status == 422
    assert "spec.cancel" in raised.value.body

    created = create_du(crs, data_upload())
    created["status"] = {"phase": "Exploded"}
    with pytest.raises(ApiException) as raised:
        crs.replace_namespaced_custom_object_status(
            GROUP, VERSION, VELERO_NS, PLURAL, created["metadata"]["name"], created
        )
    assert raised.value.status == 422
    assert "status.phase" in raised.value.body


def test_generate_name_labels_and_owner_survive_as_velero_sets_them(crs: client.CustomObjectsApi) -> None:
    created = create_du(crs, data_upload(backup="weekly"))
    assert created["metadata"]["name"].startswith("weekly-")
    assert created["metadata"]["labels"]["velero.io/backup-name"] == "weekly"
    assert created["metadata"]["ownerReferences"][0]["kind"] == "Backup"
    assert created["spec"]["datamover"] == "barge"


def test_status_update_through_the_subresource_does_not_change_spec(crs: client.CustomObjectsApi) -> None:
    created = create_du(crs, data_upload())
    name = created["metadata"]["name"]
    sneaky = copy.deepcopy(created)
    sneaky["spec"]["sourcePVC"] = "someone-elses-pvc"
    sneaky["status"] = {"phase": "Accepted", "progress": {"totalBytes": 100, "bytesDone": 0}}
    crs.replace_namespaced_custom_object_status(GROUP, VERSION, VELERO_NS, PLURAL, name, sneaky)

    stored = crs.get_namespaced_custom_object(GROUP, VERSION, VELERO_NS, PLURAL, name)
    assert stored["status"]["phase"] == "Accepted"
    assert stored["status"]["progress"] == {"totalBytes": 100, "bytesDone": 0}
    assert stored["spec"]["sourcePVC"] == created["spec"]["sourcePVC"]


def test_spec_update_through_the_main_resource_does_not_change_status(crs: client.CustomObjectsApi) -> None:
    created = create_du(crs, data_upload())
    name = created["metadata"]["name"]
    created["status"] = {"phase": "Completed"}
    created["spec"]["cancel"] = True
    crs.replace_namespaced_custom_object(GROUP, VERSION, VELERO_NS, PLURAL, name, created)
    stored = crs.get_namespaced_custom_object(GROUP, VERSION, VELERO_NS, PLURAL, name)
    assert stored["spec"]["cancel"] is True
    assert "status" not in stored or stored["status"].get("phase") != "Completed"


def test_stale_resource_version_update_gets_409_conflict(crs: client.CustomObjectsApi) -> None:
    created = create_du(crs, data_upload())
    name = created["metadata"]["name"]
    first = copy.deepcopy(created)
    first["status"] = {"phase": "Accepted"}
    crs.replace_namespaced_custom_object_status(GROUP, VERSION, VELERO_NS, PLURAL, name, first)

    stale = copy.deepcopy(created)  # still carries the original resourceVersion
    stale["status"] = {"phase": "Failed", "message": "from a stale writer"}
    with pytest.raises(ApiException) as raised:
        crs.replace_namespaced_custom_object_status(GROUP, VERSION, VELERO_NS, PLURAL, name, stale)
    assert raised.value.status == 409
    stored = crs.get_namespaced_custom_object(GROUP, VERSION, VELERO_NS, PLURAL, name)
    assert stored["status"]["phase"] == "Accepted"


def _watch_events(
    crs: client.CustomObjectsApi, resource_version: str, want: int, label: str
) -> Iterator[tuple[str, dict[str, Any]]]:
    stream = watch.Watch()
    for seen, event in enumerate(
        stream.stream(
            crs.list_namespaced_custom_object,
            GROUP,
            VERSION,
            VELERO_NS,
            PLURAL,
            resource_version=resource_version,
            label_selector=label,
            timeout_seconds=30,
        ),
        start=1,
    ):
        yield event["type"], event["object"]
        if seen == want:
            stream.stop()


def test_watch_sees_create_update_delete_in_order(crs: client.CustomObjectsApi) -> None:
    marker = f"watch-{uuid.uuid4().hex[:8]}"
    listing = crs.list_namespaced_custom_object(GROUP, VERSION, VELERO_NS, PLURAL)
    start_rv = listing["metadata"]["resourceVersion"]

    body = data_upload()
    body["metadata"]["labels"]["test"] = marker
    created = create_du(crs, body)
    name = created["metadata"]["name"]
    created["status"] = {"phase": "Accepted"}
    crs.replace_namespaced_custom_object_status(GROUP, VERSION, VELERO_NS, PLURAL, name, created)
    crs.delete_namespaced_custom_object(GROUP, VERSION, VELERO_NS, PLURAL, name)

    events = list(_watch_events(crs, start_rv, 3, f"test={marker}"))
    assert [kind for kind, _ in events] == ["ADDED", "MODIFIED", "DELETED"]
    versions = [int(obj["metadata"]["resourceVersion"]) for _, obj in events]
    assert versions == sorted(versions)
    assert events[1][1]["status"]["phase"] == "Accepted"


def test_nodes_running_pods_and_ready_snapshots_are_simulated_through_the_api(kube: client.ApiClient) -> None:
    """No kubelet or snapshot controller: tests play them by writing status through the real API."""
    core = client.CoreV1Api(kube)
    node_name = f"node-{uuid.uuid4().hex[:6]}"
    core.create_node({"metadata": {"name": node_name, "labels": {"kubernetes.io/hostname": node_name}}})
    core.patch_node_status(
        node_name, {"status": {"conditions": [{"type": "Ready", "status": "True", "reason": "Simulated"}]}}
    )
    pod = core.create_namespaced_pod(
        "default",
        {
            "metadata": {"generateName": "exposer-"},
            "spec": {"nodeName": node_name, "containers": [{"name": "c", "image": "busybox"}]},
        },
    )
    assert pod.status.phase == "Pending"
    core.patch_namespaced_pod_status(pod.metadata.name, "default", {"status": {"phase": "Running"}})
    assert core.read_namespaced_pod(pod.metadata.name, "default").status.phase == "Running"

    crs = client.CustomObjectsApi(kube)
    snapshot = crs.create_namespaced_custom_object(
        "snapshot.storage.k8s.io",
        "v1",
        "default",
        "volumesnapshots",
        {
            "apiVersion": "snapshot.storage.k8s.io/v1",
            "kind": "VolumeSnapshot",
            "metadata": {"generateName": "snap-"},
            "spec": {"source": {"persistentVolumeClaimName": "data"}, "volumeSnapshotClassName": "csi"},
        },
    )
    snapshot["status"] = {"readyToUse": True, "restoreSize": "1Gi", "boundVolumeSnapshotContentName": "c1"}
    crs.replace_namespaced_custom_object_status(
        "snapshot.storage.k8s.io", "v1", "default", "volumesnapshots", snapshot["metadata"]["name"], snapshot
    )
    stored = crs.get_namespaced_custom_object(
        "snapshot.storage.k8s.io", "v1", "default", "volumesnapshots", snapshot["metadata"]["name"]
    )
    assert stored["status"]["readyToUse"] is True


def test_newer_velero_status_fields_are_pruned_by_the_seed_schema_and_kept_by_1_16(
    kube: client.ApiClient, crs: client.CustomObjectsApi
) -> None:
    """Barge writes acceptedByNode & co.; with the seed CRD the server drops them, with 1.16 it keeps them."""
    extra = {"acceptedByNode": "node-a", "acceptedTimestamp": "2026-11-24T10:00:00Z"}

    def write_and_read() -> dict[str, Any]:
        created = create_du(crs, data_upload())
        created["status"] = {"phase": "Accepted", **extra}
        crs.replace_namespaced_custom_object_status(
            GROUP, VERSION, VELERO_NS, PLURAL, created["metadata"]["name"], created
        )
        stored: dict[str, Any] = crs.get_namespaced_custom_object(
            GROUP, VERSION, VELERO_NS, PLURAL, created["metadata"]["name"]
        )
        return stored["status"]

    assert "acceptedByNode" not in write_and_read()
    try:
        apply_crd(kube, load_crd("velero.io_datauploads-velero-1.16.yaml"))
        status = write_and_read()
        assert status["acceptedByNode"] == "node-a"
        assert status["phase"] == "Accepted"
    finally:
        apply_crd(kube, load_crd("velero.io_datauploads.yaml"))


@pytest.fixture(scope="module")
def restricted(
    kube: client.ApiClient,
    control_plane: ControlPlaneEndpoints,
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[client.ApiClient]:
    core, rbac = client.CoreV1Api(kube), client.RbacAuthorizationV1Api(kube)
    namespace = f"rbac-{uuid.uuid4().hex[:6]}"
    core.create_namespace({"metadata": {"name": namespace}})
    core.create_namespaced_service_account(namespace, {"metadata": {"name": "reader"}})
    rbac.create_namespaced_role(
        namespace,
        {
            "metadata": {"name": "du-reader"},
            "rules": [{"apiGroups": ["velero.io"], "resources": ["datauploads"], "verbs": ["get", "list"]}],
        },
    )
    rbac.create_namespaced_role_binding(
        namespace,
        {
            "metadata": {"name": "du-reader"},
            "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": "du-reader"},
            "subjects": [{"kind": "ServiceAccount", "name": "reader", "namespace": namespace}],
        },
    )
    token = core.create_namespaced_service_account_token(
        "reader", namespace, {"spec": {"expirationSeconds": 3600}}
    ).status.token
    kubeconfig = write_kubeconfig(
        tmp_path_factory.mktemp("rbac") / "reader.kubeconfig",
        control_plane.url,
        control_plane.pki.ca.cert_path,
        {"token": token},
        "reader",
    )
    with api_client(kubeconfig) as api:
        api.namespace = namespace  # type: ignore[attr-defined]
        yield api


class TestRbacWithARestrictedServiceAccount:
    """An identity that is not an admin: RBAC is enforced, so chart permissions can be tested."""

    def test_the_token_authenticates_as_the_service_account(self, restricted: client.ApiClient) -> None:
        review = client.AuthenticationV1Api(restricted).create_self_subject_review({})
        assert review.status.user_info.username == f"system:serviceaccount:{restricted.namespace}:reader"  # type: ignore[attr-defined]

    def test_granted_verbs_work(self, restricted: client.ApiClient) -> None:
        listing = client.CustomObjectsApi(restricted).list_namespaced_custom_object(
            GROUP,
            VERSION,
            restricted.namespace,
            PLURAL,  # type: ignore[attr-defined]
        )
        assert listing["items"] == []

    def test_everything_else_is_forbidden(self, restricted: client.ApiClient) -> None:
        crs = client.CustomObjectsApi(restricted)
        namespace = restricted.namespace  # type: ignore[attr-defined]
        attempts = [
            lambda: crs.create_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL, data_upload()),
            lambda: crs.list_namespaced_custom_object(GROUP, VERSION, VELERO_NS, PLURAL),
            lambda: client.CoreV1Api(restricted).list_namespaced_secret(namespace),
            lambda: client.CoreV1Api(restricted).list_node(),
        ]
        for attempt in attempts:
            with pytest.raises(ApiException) as raised:
                attempt()
            assert raised.value.status == 403


def test_concurrent_status_writers_one_wins_the_other_conflicts(crs: client.CustomObjectsApi) -> None:
    """Optimistic concurrency across threads: exactly one of two racing writes lands."""
    created = create_du(crs, data_upload())
    name = created["metadata"]["name"]
    outcomes: list[int] = []
    barrier = threading.Barrier(2)

    def write(phase: str) -> None:
        body = copy.deepcopy(created)
        body["status"] = {"phase": phase}
        barrier.wait()
        try:
            crs.replace_namespaced_custom_object_status(GROUP, VERSION, VELERO_NS, PLURAL, name, body)
            outcomes.append(200)
        except ApiException as err:
            outcomes.append(err.status)

    threads = [threading.Thread(target=write, args=(p,)) for p in ("Accepted", "Failed")]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert sorted(outcomes) == [200, 409]
