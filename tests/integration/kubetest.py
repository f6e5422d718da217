"""Helpers for the barge.kube integration tests: unique namespaces and polling."""

from __future__ import annotations

import uuid
from collections.abc import Callable, Iterator
from typing import Any, TypeVar

from kubernetes import client

from barge.errors import TemporaryError
from barge.kube.resources import KubeObjects, Resource
from devenv.waiting import wait_for
from tests.integration.objects import data_upload

T = TypeVar("T")

NAMESPACE = Resource("Namespace", "", "v1", "namespaces", False)


def unique(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:8]}"


def fresh_namespace(kube: client.ApiClient, prefix: str) -> Iterator[str]:
    """A namespace of its own for one test (the API server is shared by the whole session)."""
    name = unique(prefix)
    objects = KubeObjects(kube)
    objects.create(NAMESPACE, {"metadata": {"name": name}})
    yield name
    objects.delete(NAMESPACE, None, name)  # no namespace controller runs: contents stay, harmlessly


def named_upload(namespace: str, name: str) -> dict[str, Any]:
    """A DataUpload as Velero creates it, but with a fixed name in ``namespace``."""
    body = data_upload()
    body["metadata"].update(name=name, namespace=namespace)
    del body["metadata"]["generateName"]
    return body


def eventually(probe: Callable[[], T | None], timeout: float = 10.0, interval: float = 0.05) -> T:
    """``devenv.waiting.wait_for`` for a test: its timeout fails the test as an assertion."""
    try:
        return wait_for(probe, timeout, what="the test's condition", interval=interval)
    except TemporaryError as err:
        raise AssertionError(str(err)) from None
