"""Installing the CustomResourceDefinitions Barge serves and reads (shipped as package data)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml
from kubernetes import client
from kubernetes.client.exceptions import ApiException

from devenv.helm import CHART_DIR
from devenv.waiting import wait_for

HTTP_CONFLICT = 409
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
    extensions = client.ApiextensionsV1Api(api)
    name = crd["metadata"]["name"]
    try:
        extensions.create_custom_resource_definition(crd)
    except ApiException as err:
        if err.status != HTTP_CONFLICT:
            raise
        current = extensions.read_custom_resource_definition(name)
        replacement = {
            **crd,
            "metadata": {**crd["metadata"], "resourceVersion": current.metadata.resource_version},
        }
        extensions.replace_custom_resource_definition(name, replacement)
    _wait_established(extensions, name, timeout)


def _wait_established(extensions: client.ApiextensionsV1Api, name: str, timeout: float) -> None:
    def established() -> bool:
        conditions = extensions.read_custom_resource_definition(name).status.conditions or []
        return any(c.type == "Established" and c.status == "True" for c in conditions)

    wait_for(established, timeout, what=f"CRD {name} to be Established", interval=0.1)


def install_crds(api: client.ApiClient, files: tuple[str, ...] = DEFAULT_CRD_FILES) -> None:
    for file_name in files:
        apply_crd(api, load_crd(file_name))
