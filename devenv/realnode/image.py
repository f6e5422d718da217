"""OCI images assembled from a root filesystem, for a node that has no registry to pull from.

``oci_archive`` writes an OCI image layout as a tar (what ``ctr images import`` loads) with one
uncompressed layer, named ``localhost/NAME:TAG``; pods then run it with ``imagePullPolicy: Never``.
``busybox_layer`` is the smallest useful root filesystem: Debian's static busybox
(``hack/install-tools.sh busybox``) and a link per applet, so ``sh``, ``httpd``, ``sleep``... exist.
Everything is built in memory with fixed timestamps and owners: the same input gives the same digests.
"""

from __future__ import annotations

import hashlib
import io
import json
import platform
import subprocess
import tarfile
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from devenv.tools import tool_path

_ARCHITECTURES = {"x86_64": "amd64", "aarch64": "arm64"}
_LAYER = "application/vnd.oci.image.layer.v1.tar"
_CONFIG = "application/vnd.oci.image.config.v1+json"
_MANIFEST = "application/vnd.oci.image.manifest.v1+json"


@dataclass(frozen=True)
class ImageRef:
    """``localhost/NAME:TAG``: a name no registry resolves, so nothing is ever pulled."""

    name: str
    tag: str

    def __str__(self) -> str:
        return f"localhost/{self.name}:{self.tag}"


def _tar_member(tar: tarfile.TarFile, name: str, kind: bytes, *, data: bytes = b"", mode: int = 0o755,
                link: str = "") -> None:
    info = tarfile.TarInfo(name)
    info.type, info.mode, info.mtime, info.uid, info.gid = kind, mode, 0, 0, 0
    info.linkname = link
    info.size = len(data) if kind == tarfile.REGTYPE else 0
    tar.addfile(info, io.BytesIO(data) if kind == tarfile.REGTYPE else None)


def busybox_layer(files: Mapping[str, bytes] = {}) -> bytes:
    """A layer tar: ``/bin/busybox``, ``/bin/APPLET`` links, empty ``/tmp`` ``/etc`` ``/proc``
    ``/sys`` ``/dev``, and ``files`` (path inside: content, mode 0644)."""
    busybox = tool_path("busybox")
    applets = subprocess.run(
        [str(busybox), "--list"], capture_output=True, text=True, check=True
    ).stdout.split()
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for directory in ("bin", "dev", "etc", "proc", "sys", "tmp"):
            _tar_member(tar, directory, tarfile.DIRTYPE, mode=0o1777 if directory == "tmp" else 0o755)
        _tar_member(tar, "bin/busybox", tarfile.REGTYPE, data=busybox.read_bytes())
        for applet in sorted(set(applets) - {"busybox"}):
            _tar_member(tar, f"bin/{applet}", tarfile.SYMTYPE, mode=0o777, link="busybox")
        for path, content in sorted(files.items()):
            _tar_member(tar, path.lstrip("/"), tarfile.REGTYPE, data=content, mode=0o644)
    return buffer.getvalue()


def _blob(tar: tarfile.TarFile, data: bytes, media_type: str) -> dict[str, Any]:
    digest = f"sha256:{hashlib.sha256(data).hexdigest()}"
    _tar_member(tar, f"blobs/sha256/{digest.removeprefix('sha256:')}", tarfile.REGTYPE, data=data, mode=0o644)
    return {"mediaType": media_type, "digest": digest, "size": len(data)}


def _json(value: Any) -> bytes:
    return json.dumps(value, sort_keys=True, separators=(",", ":")).encode()


def oci_archive(
    path: Path,
    ref: ImageRef,
    layers: Sequence[bytes],
    *,
    entrypoint: Sequence[str] = (),
    cmd: Sequence[str] = (),
    env: Sequence[str] = ("PATH=/bin",),
    user: str = "",
) -> Path:
    """Write ``ref`` as an OCI image layout tar at ``path``: ``layers`` (uncompressed tars, bottom
    first) and a config for this machine's platform."""
    architecture = _ARCHITECTURES.get(platform.machine(), platform.machine())
    config = {
        "architecture": architecture,
        "os": "linux",
        "config": {"Entrypoint": list(entrypoint), "Cmd": list(cmd), "Env": list(env), "User": user},
        "rootfs": {"type": "layers", "diff_ids": [f"sha256:{hashlib.sha256(x).hexdigest()}" for x in layers]},
    }
    with tarfile.open(path, mode="w", format=tarfile.PAX_FORMAT) as tar:
        _tar_member(tar, "blobs", tarfile.DIRTYPE)
        _tar_member(tar, "blobs/sha256", tarfile.DIRTYPE)
        layer_descriptors = [_blob(tar, layer, _LAYER) for layer in layers]
        manifest = {
            "schemaVersion": 2,
            "mediaType": _MANIFEST,
            "config": _blob(tar, _json(config), _CONFIG),
            "layers": layer_descriptors,
        }
        descriptor = _blob(tar, _json(manifest), _MANIFEST)
        descriptor["annotations"] = {
            "io.containerd.image.name": str(ref),
            "org.opencontainers.image.ref.name": ref.tag,
        }
        descriptor["platform"] = {"architecture": architecture, "os": "linux"}
        index = {"schemaVersion": 2, "mediaType": "application/vnd.oci.image.index.v1+json",
                 "manifests": [descriptor]}
        _tar_member(tar, "index.json", tarfile.REGTYPE, data=_json(index), mode=0o644)
        layout = _json({"imageLayoutVersion": "1.0.0"})
        _tar_member(tar, "oci-layout", tarfile.REGTYPE, data=layout, mode=0o644)
    return path
