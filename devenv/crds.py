"""Installing the CustomResourceDefinitions Barge serves and reads (shipped as package data)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml
from kubernetes import client

from barge.errors import Conflict
from barge.kube.resources import KubeObjects, Resource
from devenv.helm import CHART_DIR
from devenv.waiting import wait_for

CUSTOM_RESOURCE_DEFINITION = Resource(
    "CustomResourceDefinition", "apiextensions.k8s.io", "v1", "customresourcedefinitions", False
)
SNAPSHOT_CRDS = (  # the CSI snapshot CRDs, which Velero does not install
    "snapshot.storage.k8s.io_volumesnapshots.yaml",
    "snapshot.storage.k8s.io_volumesnapshotcontents.yaml",
    "snapshot.storage.k8s.io_volumesnapshotclasses.yaml",
)
DEFAULT_CRD_FILES = (
    "velero.io_datauploads.yaml",
    "velero.io_datadownloads.yaml",
    "velero.io_backupstoragelocations.yaml",
    *SNAPSHOT_CRDS,
)


CRD_DIRS = (
    CHART_DIR / "files" / "crds",  # what the chart installs (crds.install): one copy, shipped there
    Path(__file__).resolve().parent / "crds",  # test-only variants (an older Velero's DataUpload)
)


def load_crd(file_name: str) -> dict[str, Any]:
    path = next((folder / file_name for folder in CRD_DIRS if (folder / file_name).is_file()), None)
    if path is None:
        raise ValueError(f"no CRD file {file_name} in {', '.join(str(d) for d in CRD_DIRS)}")
    document = yaml.safe_load(path.read_text())
    if not isinstance(document, dict) or document.get("kind") != "CustomResourceDefinition":
        raise ValueError(f"{path} is not a CustomResourceDefinition")
    return document


def apply_crd(api: client.ApiClient, crd: dict[str, Any], timeout: float = 30.0) -> None:
    """Create or replace ``crd`` and wait until the API server reports it Established."""
    objects = KubeObjects(api)
    name = crd["metadata"]["name"]
    try:
        objects.create(CUSTOM_RESOURCE_DEFINITION, crd)
    except Conflict:
        current = objects.get(CUSTOM_RESOURCE_DEFINITION, None, name)
        version = current["metadata"]["resourceVersion"]
        metadata = {**crd["metadata"], "resourceVersion": version}
        objects.replace(CUSTOM_RESOURCE_DEFINITION, {**crd, "metadata": metadata})

    def established() -> bool:
        status = objects.get(CUSTOM_RESOURCE_DEFINITION, None, name).get("status") or {}
        conditions = status.get("conditions") or []
        return any(c.get("type") == "Established" and c.get("status") == "True" for c in conditions)

    wait_for(established, timeout, what=f"CRD {name} to be Established", interval=0.1)


def install_crds(api: client.ApiClient, files: tuple[str, ...] = DEFAULT_CRD_FILES) -> None:
    for file_name in files:
        apply_crd(api, load_crd(file_name))
