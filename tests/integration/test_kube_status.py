"""StatusWriter against the real API server, with both forms of the DataUpload CRD.

``velero.io`` (Barge's test CRD) has the status subresource; ``velerotest.io`` is the same schema
without it, as Velero publishes its CRDs, so status must go through the main resource there.
"""

from __future__ import annotations

import copy
import dataclasses
from collections.abc import Iterator
from typing import Any

import pytest
from kubernetes import client

from barge.control.naming import ASSIGNMENT_ANNOTATION, FINALIZER, Fence
from barge.errors import Conflict, Fenced, NotFound
from barge.kube.resources import DATA_UPLOAD, KubeObjects, Resource
from barge.kube.status import StatusWriter
from devenv.crds import apply_crd, load_crd
from tests.integration.kubetest import fresh_namespace
from tests.integration.objects import data_upload

pytestmark = pytest.mark.integration

TEST_GROUP = "velerotest.io"
NO_SUBRESOURCE_UPLOAD = dataclasses.replace(DATA_UPLOAD, group=TEST_GROUP)


@pytest.fixture(scope="module")
def crd_without_status_subresource(kube: client.ApiClient) -> Resource:
    crd = load_crd("velero.io_datauploads.yaml")
    crd["metadata"]["name"] = f"datauploads.{TEST_GROUP}"
    crd["spec"]["group"] = TEST_GROUP
    for version in crd["spec"]["versions"]:
        version["subresources"] = {}
    apply_crd(kube, crd)
    return NO_SUBRESOURCE_UPLOAD


@pytest.fixture(params=["status-subresource", "main-resource"])
def kind(request: pytest.FixtureRequest, crd_without_status_subresource: Resource) -> Resource:
    return DATA_UPLOAD if request.param == "status-subresource" else crd_without_status_subresource


@pytest.fixture
def namespace(kube: client.ApiClient) -> Iterator[str]:
    yield from fresh_namespace(kube, "status")


@pytest.fixture
def objects(kube: client.ApiClient) -> KubeObjects:
    return KubeObjects(kube)


@pytest.fixture
def writer(kube: client.ApiClient) -> StatusWriter:
    return StatusWriter(kube)


def create_upload(
    objects: KubeObjects, kind: Resource, namespace: str, assignment: str | None = None
) -> dict[str, Any]:
    body = data_upload()
    body["apiVersion"] = kind.api_version
    body["metadata"]["namespace"] = namespace
    if assignment:
        body["metadata"]["annotations"] = {ASSIGNMENT_ANNOTATION: assignment}
    return objects.create(kind, body)


def accept(status: dict[str, Any]) -> dict[str, Any]:
    return {**status, "phase": "Accepted", "progress": {"totalBytes": 100, "bytesDone": 0}}


def test_discovery_tells_the_two_crd_forms_apart(
    writer: StatusWriter, crd_without_status_subresource: Resource
) -> None:
    assert writer.has_status_subresource(DATA_UPLOAD) is True
    assert writer.has_status_subresource(crd_without_status_subresource) is False


def test_status_is_written_and_spec_left_alone(
    writer: StatusWriter, objects: KubeObjects, kind: Resource, namespace: str
) -> None:
    created = create_upload(objects, kind, namespace)
    name = created["metadata"]["name"]
    written = writer.update_status(kind, namespace, name, accept)
    assert written["status"]["phase"] == "Accepted"
    stored = objects.get(kind, namespace, name)
    assert stored["status"] == {"phase": "Accepted", "progress": {"totalBytes": 100, "bytesDone": 0}}
    assert stored["spec"] == created["spec"]
    assert stored["metadata"]["resourceVersion"] == written["metadata"]["resourceVersion"]


def test_a_concurrent_spec_change_is_kept_and_the_status_recomputed(
    writer: StatusWriter, objects: KubeObjects, kind: Resource, namespace: str
) -> None:
    """The first write races Velero setting spec.cancel: it conflicts, is redone on a fresh read."""
    name = create_upload(objects, kind, namespace)["metadata"]["name"]
    calls: list[dict[str, Any]] = []

    def mutate(status: dict[str, Any]) -> dict[str, Any]:
        calls.append(copy.deepcopy(status))
        if len(calls) == 1:
            objects.patch(kind, namespace, name, {"spec": {"cancel": True}})
        return {**status, "phase": "InProgress"}

    writer.update_status(kind, namespace, name, mutate)
    stored = objects.get(kind, namespace, name)
    assert len(calls) == 2
    assert stored["spec"]["cancel"] is True
    assert stored["status"]["phase"] == "InProgress"


def test_nothing_is_written_when_mutate_returns_none(
    writer: StatusWriter, objects: KubeObjects, kind: Resource, namespace: str
) -> None:
    created = create_upload(objects, kind, namespace)
    name = created["metadata"]["name"]
    returned = writer.update_status(kind, namespace, name, lambda status: None)
    assert returned["metadata"]["resourceVersion"] == created["metadata"]["resourceVersion"]
    assert (
        objects.get(kind, namespace, name)["metadata"]["resourceVersion"]
        == created["metadata"]["resourceVersion"]
    )


def test_the_current_fence_may_write(
    writer: StatusWriter, objects: KubeObjects, kind: Resource, namespace: str
) -> None:
    name = create_upload(objects, kind, namespace, assignment="3:node-a")["metadata"]["name"]
    written = writer.update_status(kind, namespace, name, accept, fence=Fence(3, "node-a"))
    assert written["status"]["phase"] == "Accepted"


def test_a_stale_fence_is_refused_and_writes_nothing(
    writer: StatusWriter, objects: KubeObjects, kind: Resource, namespace: str
) -> None:
    created = create_upload(objects, kind, namespace, assignment="4:node-b")
    name = created["metadata"]["name"]
    mutated: list[dict[str, Any]] = []

    def mutate(status: dict[str, Any]) -> dict[str, Any]:
        mutated.append(status)
        return {"phase": "Failed", "message": "from the stale agent"}

    for stale in (Fence(3, "node-a"), Fence(3, "node-b"), Fence(4, "node-a")):
        with pytest.raises(Fenced, match=f"assigned to 4:node-b, not {stale.render()}"):
            writer.update_status(kind, namespace, name, mutate, fence=stale)
    assert mutated == []
    stored = objects.get(kind, namespace, name)
    assert stored["metadata"]["resourceVersion"] == created["metadata"]["resourceVersion"]
    assert "status" not in stored or stored["status"].get("phase") != "Failed"


def test_an_unassigned_final_or_deleted_cr_is_fenced(
    writer: StatusWriter, objects: KubeObjects, kind: Resource, namespace: str
) -> None:
    unassigned = create_upload(objects, kind, namespace)["metadata"]["name"]
    with pytest.raises(Fenced, match="assigned to nobody"):
        writer.update_status(kind, namespace, unassigned, accept, fence=Fence(1, "node-a"))

    final = create_upload(objects, kind, namespace, assignment="1:node-a")["metadata"]["name"]
    writer.update_status(kind, namespace, final, lambda status: {"phase": "Completed"})
    with pytest.raises(Fenced, match="already Completed"):
        writer.update_status(kind, namespace, final, accept, fence=Fence(1, "node-a"))

    objects.delete(kind, namespace, final)
    with pytest.raises(Fenced, match="is gone"):
        writer.update_status(kind, namespace, final, accept, fence=Fence(1, "node-a"))
    with pytest.raises(NotFound):
        writer.update_status(kind, namespace, final, accept)


def test_a_writer_that_always_loses_the_race_gives_up_with_conflict(
    kube: client.ApiClient, objects: KubeObjects, kind: Resource, namespace: str
) -> None:
    name = create_upload(objects, kind, namespace)["metadata"]["name"]
    attempts: list[int] = []

    def mutate(status: dict[str, Any]) -> dict[str, Any]:
        attempts.append(1)
        objects.patch(kind, namespace, name, {"metadata": {"labels": {"bump": str(len(attempts))}}})
        return accept(status)

    with pytest.raises(Conflict, match="kept changing under 3 write attempts"):
        StatusWriter(kube, max_attempts=3).update_status(kind, namespace, name, mutate)
    assert len(attempts) == 3


def test_metadata_updates_add_finalizers_and_annotations_under_concurrency(
    writer: StatusWriter, objects: KubeObjects, kind: Resource, namespace: str
) -> None:
    name = create_upload(objects, kind, namespace)["metadata"]["name"]
    writer.update_status(kind, namespace, name, accept)
    raced: list[int] = []

    def add(meta: dict[str, Any]) -> dict[str, Any]:
        if not raced:
            raced.append(1)
            objects.patch(kind, namespace, name, {"metadata": {"annotations": {"velero": "was-here"}}})
        meta.setdefault("annotations", {})[ASSIGNMENT_ANNOTATION] = "1:node-a"
        meta["finalizers"] = [*meta.get("finalizers", []), FINALIZER]
        return meta

    written = writer.update_metadata(kind, namespace, name, add)
    assert written["metadata"]["finalizers"] == [FINALIZER]
    stored = objects.get(kind, namespace, name)
    assert stored["metadata"]["annotations"] == {"velero": "was-here", ASSIGNMENT_ANNOTATION: "1:node-a"}
    assert stored["status"]["phase"] == "Accepted"  # a metadata write never loses status

    writer.update_metadata(kind, namespace, name, lambda meta: {**meta, "finalizers": []})
    assert "finalizers" not in objects.get(kind, namespace, name)["metadata"]


def test_a_write_from_a_given_copy_needs_no_read_and_a_stale_copy_costs_a_retry(
    writer: StatusWriter, objects: KubeObjects, kind: Resource, namespace: str
) -> None:
    """The coordinator writes from its informer's copy: no GET first; a stale copy gets a 409 and
    the write is recomputed from a fresh read, never applied over the newer state."""
    created = create_upload(objects, kind, namespace)
    name = created["metadata"]["name"]
    first = writer.update_status(kind, namespace, name, accept, current=created)
    assert first["status"]["phase"] == "Accepted"
    seen: list[object] = []

    def prepared(status: dict[str, Any]) -> dict[str, Any]:
        seen.append(status.get("phase"))
        return {**status, "phase": "Prepared"}

    second = writer.update_status(kind, namespace, name, prepared, current=created)  # stale by now
    assert second["status"]["phase"] == "Prepared"
    assert seen == [None, "Accepted"]  # recomputed from the fresh read after the 409
    assert objects.get(kind, namespace, name)["status"]["progress"] == {"totalBytes": 100, "bytesDone": 0}


def test_metadata_that_goes_with_a_status_is_written_with_it(
    writer: StatusWriter,
    objects: KubeObjects,
    kind: Resource,
    namespace: str,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Velero's CRDs (no subresource): finalizer, annotation and phase in one request; with a
    subresource, the metadata request first. A guard that refuses writes neither."""
    created = create_upload(objects, kind, namespace)
    name = created["metadata"]["name"]
    requests: list[str | None] = []
    replace = writer._objects.replace

    def counting(resource: Resource, body: dict[str, Any], subresource: str | None = None) -> dict[str, Any]:
        requests.append(subresource)
        return replace(resource, body, subresource=subresource)

    monkeypatch.setattr(writer._objects, "replace", counting)

    def finalize(meta: dict[str, Any]) -> dict[str, Any]:
        return {**meta, "finalizers": [FINALIZER], "annotations": {"barge.io/accepted-at": "now"}}

    writer.update_status(kind, namespace, name, lambda status: None, current=created, metadata=finalize)
    assert requests == []
    assert "finalizers" not in objects.get(kind, namespace, name)["metadata"]

    writer.update_status(kind, namespace, name, accept, current=created, metadata=finalize)
    assert requests == ([None, "status"] if kind == DATA_UPLOAD else [None])
    stored = objects.get(kind, namespace, name)
    assert stored["metadata"]["finalizers"] == [FINALIZER]
    assert stored["metadata"]["annotations"]["barge.io/accepted-at"] == "now"
    assert stored["status"]["phase"] == "Accepted"
