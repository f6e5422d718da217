"""Informer against the real API server: list+watch, expired resourceVersions, resync, prompt stop."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from typing import Any

import pytest
from kubernetes import client

from barge.errors import Expired
from barge.kube.informer import Informer
from barge.kube.resources import DATA_UPLOAD, NODE, SECRET, KubeObjects
from tests.integration.kubetest import eventually, fresh_namespace, named_upload, unique
from tests.integration.objects import data_upload

pytestmark = pytest.mark.integration


class Recorder:
    """Collects (type, name) pairs delivered to on_event, thread-safely."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.events: list[tuple[str, str]] = []

    def __call__(self, kind: str, obj: dict[str, Any]) -> None:
        with self._lock:
            self.events.append((kind, obj["metadata"]["name"]))

    def of(self, name: str) -> list[str]:
        with self._lock:
            return [kind for kind, seen in self.events if seen == name]


@pytest.fixture
def namespace(kube: client.ApiClient) -> Iterator[str]:
    yield from fresh_namespace(kube, "informer")


@pytest.fixture
def objects(kube: client.ApiClient) -> KubeObjects:
    return KubeObjects(kube)


def secret(namespace: str, name: str, value: str = "1", **labels: str) -> dict[str, Any]:
    return {"metadata": {"name": name, "namespace": namespace, "labels": labels}, "stringData": {"v": value}}


def start(informer: Informer) -> Informer:
    informer.start()
    assert informer.wait_synced(10)
    return informer


def test_initial_list_then_create_update_delete(
    kube: client.ApiClient, objects: KubeObjects, namespace: str
) -> None:
    objects.create(SECRET, secret(namespace, "before"))
    recorder = Recorder()
    informer = start(Informer(kube, SECRET, namespace, on_event=recorder))
    try:
        assert recorder.of("before") == ["ADDED"]
        assert informer.get(namespace, "before") is not None

        objects.create(SECRET, secret(namespace, "live"))
        eventually(lambda: informer.get(namespace, "live"))
        objects.patch(SECRET, namespace, "live", {"metadata": {"labels": {"changed": "yes"}}})
        eventually(lambda: (informer.get(namespace, "live") or {}).get("metadata", {}).get("labels"))
        objects.delete(SECRET, namespace, "live")
        eventually(lambda: informer.get(namespace, "live") is None)

        assert recorder.of("live") == ["ADDED", "MODIFIED", "DELETED"]
        assert {obj["metadata"]["name"] for obj in informer.items()} == {"before"}
    finally:
        informer.stop()


def test_label_selector_and_cluster_scoped_resources(kube: client.ApiClient, objects: KubeObjects) -> None:
    marker = unique("m")
    informer = start(Informer(kube, NODE, label_selector=f"marker={marker}"))
    name = unique("node")
    try:
        objects.create(NODE, {"metadata": {"name": "other-" + name}})
        objects.create(NODE, {"metadata": {"name": name, "labels": {"marker": marker}}})
        eventually(lambda: informer.get(None, name))
        assert [obj["metadata"]["name"] for obj in informer.items()] == [name]
    finally:
        informer.stop()
        objects.delete(NODE, None, name)
        objects.delete(NODE, None, "other-" + name)


def test_custom_resources_are_informed_too(
    kube: client.ApiClient, objects: KubeObjects, namespace: str
) -> None:
    informer = start(Informer(kube, DATA_UPLOAD, namespace))
    try:
        body = data_upload()
        body["metadata"]["namespace"] = namespace
        created = objects.create(DATA_UPLOAD, body)
        cached = eventually(lambda: informer.get(namespace, created["metadata"]["name"]))
        assert cached["spec"]["datamover"] == "barge"
    finally:
        informer.stop()


def test_the_api_server_expires_an_ancient_resource_version(objects: KubeObjects, namespace: str) -> None:
    """The premise of the relist test: a CR watch from resourceVersion 1 is answered with 410 Gone.

    (The watch cache of a CRD starts when the CRD is installed, long after revision 1; built-in
    kinds' caches start with the server, so their window may still reach back that far.)
    """
    objects.create(DATA_UPLOAD, named_upload(namespace, "x"))
    with objects.watch(DATA_UPLOAD, namespace, "1", timeout_s=5) as stream, pytest.raises(Expired):
        list(stream.events())


def test_an_expired_watch_relists_and_reports_what_changed_meanwhile(
    kube: client.ApiClient, objects: KubeObjects, namespace: str
) -> None:
    objects.create(DATA_UPLOAD, named_upload(namespace, "stays"))
    objects.create(DATA_UPLOAD, named_upload(namespace, "goes"))
    recorder = Recorder()
    informer = start(Informer(kube, DATA_UPLOAD, namespace, on_event=recorder))
    try:
        informer._watch_from("1")  # as after a long disconnect: the next watch gets 410 Gone
        eventually(lambda: informer.relists >= 2)
        objects.create(DATA_UPLOAD, named_upload(namespace, "new"))
        objects.delete(DATA_UPLOAD, namespace, "goes")
        eventually(lambda: informer.get(namespace, "new") and not informer.get(namespace, "goes"))
        assert recorder.of("stays") == ["ADDED"]  # unchanged objects are not re-announced by a relist
        assert recorder.of("new") == ["ADDED"]
        assert recorder.of("goes") == ["ADDED", "DELETED"]
    finally:
        informer.stop()


def test_relist_delivers_deletions_and_updates_missed_while_not_watching(
    kube: client.ApiClient, objects: KubeObjects, namespace: str
) -> None:
    objects.create(SECRET, secret(namespace, "deleted"))
    objects.create(SECRET, secret(namespace, "updated"))
    recorder = Recorder()
    informer = Informer(kube, SECRET, namespace, on_event=recorder)
    informer._relist()  # the cache as a first list fills it, without a watch running
    objects.delete(SECRET, namespace, "deleted")
    objects.patch(SECRET, namespace, "updated", {"stringData": {"v": "2"}})
    informer._relist()
    assert recorder.of("deleted") == ["ADDED", "DELETED"]
    assert recorder.of("updated") == ["ADDED", "MODIFIED"]
    assert informer.relists == 2


def test_periodic_resync_redelivers_every_cached_object(
    kube: client.ApiClient, objects: KubeObjects, namespace: str
) -> None:
    objects.create(SECRET, secret(namespace, "a"))
    objects.create(SECRET, secret(namespace, "b"))
    recorder = Recorder()
    informer = start(Informer(kube, SECRET, namespace, resync_s=1.0, on_event=recorder))
    try:
        eventually(lambda: recorder.of("a").count("SYNC") >= 2 and recorder.of("b").count("SYNC") >= 2, 10)
        assert informer.relists == 1  # resync replays the cache; it does not list again
    finally:
        informer.stop()


def test_a_failing_handler_does_not_stop_the_informer(
    kube: client.ApiClient, objects: KubeObjects, namespace: str
) -> None:
    seen: list[str] = []

    def flaky(kind: str, obj: dict[str, Any]) -> None:
        seen.append(obj["metadata"]["name"])
        if obj["metadata"]["name"] == "poison":
            raise RuntimeError("handler bug")

    informer = start(Informer(kube, SECRET, namespace, on_event=flaky))
    try:
        objects.create(SECRET, secret(namespace, "poison"))
        objects.create(SECRET, secret(namespace, "after"))
        eventually(lambda: "after" in seen)
    finally:
        informer.stop()


def test_stop_returns_promptly_while_the_watch_is_idle(kube: client.ApiClient, namespace: str) -> None:
    informer = start(Informer(kube, SECRET, namespace))
    time.sleep(0.5)  # blocked reading a quiet watch stream
    began = time.monotonic()
    informer.stop()
    assert time.monotonic() - began < 2.0
    assert not any(thread.name == "informer-secrets" for thread in threading.enumerate())


def test_stop_returns_promptly_while_backing_off(control_plane: Any, namespace: str) -> None:
    """An unreachable server puts the informer into backoff; stop() still ends it at once."""
    from barge.kube.client import api_client

    with api_client(control_plane.kubeconfig) as api:
        api.configuration.host = "https://127.0.0.1:1"  # nothing listens there: connection refused
        informer = Informer(api, SECRET, namespace)
        informer.start()
        assert not informer.wait_synced(1.5)
        began = time.monotonic()
        informer.stop()
        assert time.monotonic() - began < 2.0
        assert not any(thread.name == "informer-secrets" for thread in threading.enumerate())


def test_the_cache_holds_no_managed_fields_and_writing_a_cached_object_keeps_the_servers(
    kube: client.ApiClient, objects: KubeObjects, namespace: str
) -> None:
    body = {**named_upload(namespace, "slim"), "apiVersion": "velero.io/v2alpha1", "kind": "DataUpload"}
    path = DATA_UPLOAD.path(namespace)
    objects._call("POST", path, query=[("fieldManager", "creator")], body=body, what="create")
    informer = start(Informer(kube, DATA_UPLOAD, namespace))
    try:
        cached = informer.get(namespace, "slim")
        assert cached is not None
        assert "managedFields" not in cached["metadata"]
        assert objects.get(DATA_UPLOAD, namespace, "slim")["metadata"]["managedFields"]

        changed = {**cached, "metadata": {**cached["metadata"], "labels": {"edited": "yes"}}}
        objects.replace(DATA_UPLOAD, changed)
        managed = objects.get(DATA_UPLOAD, namespace, "slim")["metadata"]["managedFields"]
        # The creator's entry survives: a write without managedFields keeps the server's ([{}] resets).
        assert "creator" in {entry["manager"] for entry in managed}

        def updated() -> dict[str, Any] | None:
            seen = informer.get(namespace, "slim")
            return seen if seen and (seen["metadata"].get("labels") or {}).get("edited") else None

        assert "managedFields" not in eventually(updated)["metadata"]
    finally:
        informer.stop()


def test_cached_objects_share_their_keys_and_short_strings_whether_listed_or_watched(
    kube: client.ApiClient, objects: KubeObjects, namespace: str
) -> None:
    """Thousands of cached objects repeat the same keys and values: each is held once."""
    objects.create(DATA_UPLOAD, named_upload(namespace, "listed"))
    informer = start(Informer(kube, DATA_UPLOAD, namespace))
    try:
        objects.create(DATA_UPLOAD, named_upload(namespace, "watched"))
        watched = eventually(lambda: informer.get(namespace, "watched"))
        listed = informer.get(namespace, "listed")
        assert listed is not None

        def key_ids(obj: dict[str, Any]) -> dict[str, int]:
            return {key: id(key) for key in obj["metadata"]}

        assert key_ids(listed)["namespace"] == key_ids(watched)["namespace"]
        assert listed["metadata"]["namespace"] is watched["metadata"]["namespace"]
        assert listed["spec"]["snapshotType"] is watched["spec"]["snapshotType"]
    finally:
        informer.stop()
