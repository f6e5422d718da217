"""KubeObjects: generic CRUD as plain dicts against the real API server, errors via translate()."""

from __future__ import annotations

import copy
from collections.abc import Iterator

import pytest
from kubernetes import client

from barge.control.naming import EXPOSER_BUDGET
from barge.errors import Conflict, InvalidInput, NotFound
from barge.kube.resources import (
    BY_KIND,
    DATA_UPLOAD,
    LEASE,
    NODE,
    POD,
    POD_DISRUPTION_BUDGET,
    SECRET,
    KubeObjects,
    resource_for,
)
from coordinator.exposer import budget_outdated, exposer_budget
from tests.integration.kubetest import fresh_namespace, named_upload, unique

pytestmark = pytest.mark.integration


@pytest.fixture
def namespace(kube: client.ApiClient) -> Iterator[str]:
    yield from fresh_namespace(kube, "objects")


@pytest.fixture
def objects(kube: client.ApiClient) -> KubeObjects:
    return KubeObjects(kube)


def test_create_get_list_patch_replace_delete_a_custom_resource(objects: KubeObjects, namespace: str) -> None:
    created = objects.create(DATA_UPLOAD, named_upload(namespace, "du-1"))
    assert created["metadata"]["uid"]
    fetched = objects.get(DATA_UPLOAD, namespace, "du-1")
    assert fetched["spec"]["sourcePVC"] == "data-db-0"
    assert fetched["kind"] == "DataUpload"

    patched = objects.patch(DATA_UPLOAD, namespace, "du-1", {"metadata": {"annotations": {"a": "1"}}})
    assert patched["metadata"]["annotations"] == {"a": "1"}
    patched["spec"]["cancel"] = True
    replaced = objects.replace(DATA_UPLOAD, patched)
    assert replaced["spec"]["cancel"] is True
    assert int(replaced["metadata"]["resourceVersion"]) > int(created["metadata"]["resourceVersion"])

    assert objects.delete(DATA_UPLOAD, namespace, "du-1") is True
    with pytest.raises(NotFound, match=f"get DataUpload {namespace}/du-1"):
        objects.get(DATA_UPLOAD, namespace, "du-1")
    assert objects.delete(DATA_UPLOAD, namespace, "du-1") is False


def test_list_filters_by_label_and_fills_in_kind(objects: KubeObjects, namespace: str) -> None:
    for index in range(3):
        body = named_upload(namespace, f"du-{index}")
        body["metadata"]["labels"]["pick"] = "yes" if index else "no"
        objects.create(DATA_UPLOAD, body)
    picked = objects.list(DATA_UPLOAD, namespace, label_selector="pick=yes")
    assert sorted(item["metadata"]["name"] for item in picked) == ["du-1", "du-2"]
    assert {item["kind"] for item in picked} == {"DataUpload"}
    assert {item["apiVersion"] for item in picked} == {"velero.io/v2alpha1"}
    everywhere = objects.list(DATA_UPLOAD, None, label_selector="pick")
    assert {
        item["metadata"]["name"] for item in everywhere if item["metadata"]["namespace"] == namespace
    } == {
        "du-0",
        "du-1",
        "du-2",
    }


def test_list_follows_continue_tokens(
    kube: client.ApiClient, namespace: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr("barge.kube.resources._LIST_PAGE", 2)
    objects = KubeObjects(kube)
    for index in range(5):
        objects.create(SECRET, {"metadata": {"name": f"s{index}", "namespace": namespace}, "data": {}})
    listing = objects.list_with_version(SECRET, namespace)
    assert sorted(item["metadata"]["name"] for item in listing.items) == [f"s{i}" for i in range(5)]
    assert int(listing.resource_version) > 0


def test_create_exist_ok_returns_the_existing_object(objects: KubeObjects, namespace: str) -> None:
    first = objects.create(
        SECRET, {"metadata": {"name": "s", "namespace": namespace}, "stringData": {"k": "1"}}
    )
    again = objects.create(
        SECRET, {"metadata": {"name": "s", "namespace": namespace}, "stringData": {"k": "2"}}, exist_ok=True
    )
    assert again["metadata"]["uid"] == first["metadata"]["uid"]
    with pytest.raises(Conflict, match="already exists"):
        objects.create(SECRET, {"metadata": {"name": "s", "namespace": namespace}})


def test_replace_with_a_stale_resource_version_is_a_conflict(objects: KubeObjects, namespace: str) -> None:
    created = objects.create(
        SECRET, {"metadata": {"name": "s", "namespace": namespace}, "stringData": {"k": "1"}}
    )
    objects.patch(SECRET, namespace, "s", {"stringData": {"k": "2"}})
    stale = copy.deepcopy(created)
    stale["stringData"] = {"k": "3"}
    with pytest.raises(Conflict):
        objects.replace(SECRET, stale)
    del stale["metadata"]["resourceVersion"]
    with pytest.raises(InvalidInput, match="no resourceVersion"):
        objects.replace(SECRET, stale)


def test_delete_with_a_uid_precondition_spares_a_recreated_object(
    objects: KubeObjects, namespace: str
) -> None:
    first = objects.create(SECRET, {"metadata": {"name": "s", "namespace": namespace}})
    objects.delete(SECRET, namespace, "s")
    second = objects.create(SECRET, {"metadata": {"name": "s", "namespace": namespace}})
    assert objects.delete(SECRET, namespace, "s", uid=first["metadata"]["uid"]) is False
    assert objects.get(SECRET, namespace, "s")["metadata"]["uid"] == second["metadata"]["uid"]
    assert objects.delete(SECRET, namespace, "s", uid=second["metadata"]["uid"]) is True


def test_cluster_scoped_and_core_resources(objects: KubeObjects) -> None:
    name = unique("node")
    objects.create(NODE, {"metadata": {"name": name, "labels": {"kubernetes.io/hostname": name}}})
    patched = objects.patch(
        NODE, None, name, {"status": {"conditions": [{"type": "Ready", "status": "True"}]}}, "status"
    )
    assert patched["status"]["conditions"][0]["type"] == "Ready"
    assert name in {node["metadata"]["name"] for node in objects.list(NODE)}
    assert objects.delete(NODE, None, name) is True


def test_invalid_objects_and_wrong_scopes_are_invalid_input(objects: KubeObjects, namespace: str) -> None:
    body = named_upload(namespace, "bad")
    del body["spec"]["sourcePVC"]
    with pytest.raises(InvalidInput, match=r"spec.sourcePVC: Required value \(HTTP 422\)"):
        objects.create(DATA_UPLOAD, body)
    with pytest.raises(InvalidInput, match="cluster-scoped"):
        objects.get(NODE, namespace, "x")
    with pytest.raises(InvalidInput, match=r"needs metadata\.namespace"):
        objects.create(POD, {"metadata": {"name": "p"}})
    with pytest.raises(InvalidInput, match="unknown kind 'Dataupload'"):
        resource_for("Dataupload")


def test_every_described_resource_is_served_by_the_api_server(objects: KubeObjects) -> None:
    """Group, version, plural and scope of each description match the server's own discovery."""
    for resource in BY_KIND.values():
        listing = objects._call("GET", resource.group_version_path, what="discovery")
        served = {r["name"]: r for r in listing["resources"]}
        assert resource.plural in served, resource
        assert served[resource.plural]["kind"] == resource.kind
        assert served[resource.plural]["namespaced"] == resource.namespaced
    assert "leases" in objects.api_resources(LEASE.group, LEASE.version)
    assert "pods/status" in objects.api_resources("", "v1")


def test_find_answers_none_for_a_missing_object(objects: KubeObjects, namespace: str) -> None:
    assert objects.find(SECRET, namespace, "absent") is None
    objects.create(SECRET, {"metadata": {"name": "present", "namespace": namespace}})
    found = objects.find(SECRET, namespace, "present")
    assert found is not None
    assert found["metadata"]["name"] == "present"


def test_a_strategic_patch_merges_one_condition_where_a_merge_patch_replaces_the_list(
    objects: KubeObjects,
) -> None:
    name = unique("node")
    objects.create(NODE, {"metadata": {"name": name}})
    both = [{"type": "Ready", "status": "True"}, {"type": "MemoryPressure", "status": "False"}]
    objects.patch(NODE, None, name, {"status": {"conditions": both}}, "status")
    one = {"status": {"conditions": [{"type": "Ready", "status": "Unknown"}]}}
    merged = objects.patch(NODE, None, name, one, "status", strategic=True)
    assert {c["type"]: c["status"] for c in merged["status"]["conditions"]} == {
        "Ready": "Unknown",
        "MemoryPressure": "False",
    }
    replaced = objects.patch(NODE, None, name, one, "status")
    assert [c["type"] for c in replaced["status"]["conditions"]] == ["Ready"]
    objects.delete(NODE, None, name)


def test_list_by_field_selector_and_delete_with_no_grace(objects: KubeObjects, namespace: str) -> None:
    for pod_name, node in (("on-a", "node-a"), ("on-b", "node-b")):
        body = {
            "metadata": {"name": pod_name, "namespace": namespace},
            "spec": {"nodeName": node, "containers": [{"name": "c", "image": "busybox"}]},
        }
        objects.create(POD, body)
    on_a = objects.list(POD, namespace, field_selector="spec.nodeName=node-a")
    assert [pod["metadata"]["name"] for pod in on_a] == ["on-a"]
    # No kubelet here: only a zero grace period makes a bound pod go at once.
    assert objects.delete(POD, namespace, "on-a", grace_seconds=0) is True
    assert objects.find(POD, namespace, "on-a") is None


def test_resource_of_discovers_kinds_named_at_run_time(objects: KubeObjects) -> None:
    assert objects.resource_of("v1", "Pod") == POD
    assert objects.resource_of("velero.io/v2alpha1", "DataUpload") == DATA_UPLOAD
    assert objects.resource_of("velero.io/v2alpha1", "NoSuchKind") is None
    assert objects.resource_of("nowhere.example.com/v1", "Thing") is None


def test_an_earlier_versions_exposer_budget_takes_the_executors_patch_in_place(
    objects: KubeObjects, namespace: str
) -> None:
    """What ``Executor._create_exposure`` sends for an outdated budget: a merge patch of the spec,
    accepted by the API server (a budget's spec is mutable), same object, no moment without it."""
    earlier = exposer_budget(namespace)
    del earlier["spec"]["unhealthyPodEvictionPolicy"]
    created = objects.create(POD_DISRUPTION_BUDGET, earlier)
    assert budget_outdated(created)
    wanted = exposer_budget(namespace)
    patched = objects.patch(POD_DISRUPTION_BUDGET, namespace, EXPOSER_BUDGET, {"spec": wanted["spec"]})
    assert patched["metadata"]["uid"] == created["metadata"]["uid"]
    assert patched["spec"]["unhealthyPodEvictionPolicy"] == "AlwaysAllow"
    assert not budget_outdated(patched)
