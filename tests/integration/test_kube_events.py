"""EventRecorder: Events land on the involved object; a failure is logged, never raised."""

from __future__ import annotations

import logging
from collections.abc import Iterator
from datetime import UTC, datetime

import pytest
from kubernetes import client

from barge.clock import ManualClock
from barge.kube.client import api_client
from barge.kube.events import EventRecorder
from barge.kube.resources import DATA_UPLOAD, EVENT, NODE, KubeObjects
from devenv.controlplane import ControlPlaneEndpoints
from tests.integration.kubetest import fresh_namespace, unique
from tests.integration.objects import data_upload

pytestmark = pytest.mark.integration

CLOCK = ManualClock(datetime(2026, 11, 25, 9, 0, tzinfo=UTC))


@pytest.fixture
def namespace(kube: client.ApiClient) -> Iterator[str]:
    yield from fresh_namespace(kube, "events")


def test_an_event_is_recorded_on_a_custom_resource(kube: client.ApiClient, namespace: str) -> None:
    objects = KubeObjects(kube)
    body = data_upload()
    body["metadata"]["namespace"] = namespace
    upload = objects.create(DATA_UPLOAD, body)
    recorder = EventRecorder(kube, "barge-coordinator", CLOCK)

    recorder.record(upload, "Warning", "ExposeFailed", "snapshot not ready: " + "x" * 2000)

    events = objects.list(EVENT, namespace)
    assert len(events) == 1
    event = events[0]
    assert event["involvedObject"] == {
        "apiVersion": "velero.io/v2alpha1",
        "kind": "DataUpload",
        "name": upload["metadata"]["name"],
        "namespace": namespace,
        "uid": upload["metadata"]["uid"],
        "resourceVersion": upload["metadata"]["resourceVersion"],
    }
    assert (event["type"], event["reason"]) == ("Warning", "ExposeFailed")
    assert event["message"].startswith("snapshot not ready: xxx")
    assert len(event["message"]) == 1024
    assert event["source"] == {"component": "barge-coordinator"}
    assert event["lastTimestamp"] == "2026-11-25T09:00:00Z"


def test_events_on_cluster_scoped_objects_go_to_the_default_namespace(kube: client.ApiClient) -> None:
    objects = KubeObjects(kube)
    node = objects.create(NODE, {"metadata": {"name": unique("node")}})
    try:
        created = EventRecorder(kube, "barge-coordinator", CLOCK).record(
            node, "Normal", "Drained", "node drained"
        )
        assert created is not None
        assert created["metadata"]["namespace"] == "default"
        assert created["involvedObject"]["name"] == node["metadata"]["name"]
    finally:
        objects.delete(NODE, None, node["metadata"]["name"])


def test_a_failure_is_logged_and_swallowed(
    control_plane: ControlPlaneEndpoints, namespace: str, caplog: pytest.LogCaptureFixture
) -> None:
    involved = {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "p", "namespace": namespace}}
    with api_client(control_plane.kubeconfig) as api:
        api.configuration.host = "https://127.0.0.1:1"  # unreachable
        recorder = EventRecorder(api, "barge-agent", CLOCK)
        with caplog.at_level(logging.WARNING, logger="barge.kube.events"):
            assert recorder.record(involved, "Normal", "Started", "moving data") is None
            assert recorder.record({"kind": "Pod"}, "Normal", "Started", "no metadata") is None
    assert "could not record event Started on Pod p" in caplog.text
    assert len([r for r in caplog.records if r.name == "barge.kube.events"]) == 2
