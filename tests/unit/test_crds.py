"""The CRD files are valid, and the DataUpload CRD is exactly the seed spec's schema."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pytest

from devenv.crds import DEFAULT_CRD_FILES, load_crd

SEED = Path(__file__).parent.parent / "data" / "dataupload-v2alpha1.txt"
TYPES = ("string", "boolean", "object", "integer")


def seed_sections() -> dict[str, dict[str, Any]]:
    """Parse the seed's rendered reference page: per section, its properties and required list."""
    sections: dict[str, dict[str, Any]] = {}
    current: dict[str, Any] | None = None
    lines = SEED.read_text().splitlines()
    for i, line in enumerate(lines):
        if re.fullmatch(r"\.(spec|status)(\.\w+)?", line):
            current = sections.setdefault(line, {"properties": {}, "required": ""})
        elif current is not None and line == "Required":
            current["required"] = lines[i + 1]
        elif current is not None and (m := re.fullmatch(rf"([a-zA-Z]+?)({'|'.join(TYPES)})", line)):
            current["properties"][m.group(1)] = m.group(2)
        elif line.startswith("API Endpoints"):
            break
    return sections


def schema_at(crd: dict[str, Any], path: str) -> dict[str, Any]:
    node: dict[str, Any] = crd["spec"]["versions"][0]["schema"]["openAPIV3Schema"]
    for part in path.strip(".").split("."):
        node = node["properties"][part]
    return node


def test_seed_parser_sees_every_section() -> None:
    expected = {".spec", ".spec.csiSnapshot", ".spec.dataMoverConfig", ".status", ".status.progress"}
    assert set(seed_sections()) == expected | {".status.dataMoverResult"}


@pytest.mark.parametrize("section", [".spec", ".spec.csiSnapshot", ".status", ".status.progress"])
def test_data_upload_crd_matches_the_seed_exactly(section: str) -> None:
    seed = seed_sections()[section]
    schema = schema_at(load_crd("velero.io_datauploads.yaml"), section)
    assert {name: spec["type"] for name, spec in schema["properties"].items()} == seed["properties"]
    assert "".join(schema.get("required", [])) == seed["required"]


def test_seed_free_form_maps_keep_their_keys() -> None:
    """The seed shows dataMoverConfig/Result as bare objects; as string maps (Velero's real CRD) the
    API server keeps their keys instead of pruning them."""
    crd = load_crd("velero.io_datauploads.yaml")
    for path in (".spec.dataMoverConfig", ".status.dataMoverResult"):
        assert schema_at(crd, path)["additionalProperties"] == {"type": "string"}


def test_newer_velero_variant_only_adds_fields() -> None:
    seed, newer = load_crd("velero.io_datauploads.yaml"), load_crd("velero.io_datauploads-velero-1.16.yaml")
    added = set(schema_at(newer, ".status")["properties"]) - set(schema_at(seed, ".status")["properties"])
    assert added == {"acceptedByNode", "acceptedTimestamp", "nodeOS", "incrementalBytes", "snapshotSize"}
    assert "driver" in schema_at(newer, ".spec.csiSnapshot")["properties"]
    assert schema_at(newer, ".spec")["required"] == schema_at(seed, ".spec")["required"]


@pytest.mark.parametrize("file_name", [*DEFAULT_CRD_FILES, "velero.io_datauploads-velero-1.16.yaml"])
def test_every_crd_is_structural_and_has_what_barge_needs(file_name: str) -> None:
    crd = load_crd(file_name)
    (version,) = crd["spec"]["versions"]
    assert version["served"]
    assert version["storage"]

    def typed(node: dict[str, Any], where: str) -> None:
        assert "type" in node or node.get("x-kubernetes-int-or-string"), f"{file_name}: {where} has no type"
        for name, child in node.get("properties", {}).items():
            typed(child, f"{where}.{name}")

    typed(version["schema"]["openAPIV3Schema"], "")
    if crd["spec"]["names"]["kind"] != "VolumeSnapshotClass":
        assert version["subresources"] == {"status": {}}
