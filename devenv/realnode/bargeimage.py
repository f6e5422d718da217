"""The Barge image, built on this machine without a container engine or a registry.

Two layers, the Dockerfile's equivalent (same contents: Python 3.11, Barge and its dependencies in
``/opt/barge``, user 65532, ``barge --help`` by default; the chart sets the command):

* the base: Debian bookworm's Python 3.11 and the libraries it links, extracted by ``mmdebstrap``
  (``--variant=extract``: no maintainer scripts run, no shell, no package manager state kept), the
  CA bundle, ``/bin/sh`` (dash) with coreutils, which the exposer pods run (``sleep``, and ``date``
  in their readiness probe: ``coordinator.exposer``), a passwd with the ``barge`` user, and Barge's
  dependencies as binary wheels for that
  Python (``pip install --target``). Cached in ``~/.cache/barge/images/`` by what decides it: the
  dependency list in ``pyproject.toml`` and this module's package list;
* Barge itself: its wheel (``pip wheel --no-deps .``, as the Dockerfile builds it), rebuilt each
  time, with ``barge``, ``barge-coordinator`` and ``barge-agent`` launchers in ``/opt/barge/bin``,
  and ``python`` there too (the Dockerfile's virtual environment has it; the chart's ``helm test``
  pod runs it).
"""

from __future__ import annotations

import fcntl
import hashlib
import io
import os
import shutil
import subprocess
import sys
import tarfile
import tempfile
import tomllib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from barge.errors import TemporaryError
from devenv.realnode.image import ImageRef, oci_archive
from devenv.tools import cache_dir, tool_path

BARGE_IMAGE = ImageRef("barge", "dev")
PYTHON = "/usr/bin/python3.11"
USER = "65532:65532"
DEBIAN_PACKAGES = (
    "python3.11-minimal", "libpython3.11-stdlib", "libstdc++6", "ca-certificates", "dash", "coreutils",
)
_PRUNED = ("usr/share/doc", "usr/share/man", "usr/share/locale", "usr/share/info", "usr/share/lintian",
           "var/cache", "var/lib/apt", "var/log")
_ROOT = Path(__file__).resolve().parents[2]


@dataclass(frozen=True)
class BuiltImage:
    archive: Path
    ref: ImageRef
    layer_bytes: tuple[int, ...]  # uncompressed size of each layer, base first

    @property
    def size(self) -> int:
        return sum(self.layer_bytes)


def _run(argv: list[str], **options: object) -> None:
    done = subprocess.run(argv, capture_output=True, text=True, stdin=subprocess.DEVNULL, check=False,
                          **options)  # type: ignore[call-overload]
    if done.returncode != 0:
        raise TemporaryError(f"{' '.join(argv[:3])}... failed ({done.returncode}): {done.stderr[-2000:]}")


def _project() -> dict[str, Any]:
    return dict(tomllib.loads((_ROOT / "pyproject.toml").read_text())["project"])


def _dependencies() -> list[str]:
    return list(_project()["dependencies"])


def _layer_of(root: Path) -> bytes:
    """``root`` as a layer tar: owners numeric and zero, times zero, no device nodes."""
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for path in sorted(root.rglob("*")):
            info = tar.gettarinfo(str(path), arcname=str(path.relative_to(root)))
            if not (info.isfile() or info.isdir() or info.issym() or info.islnk()):
                continue
            info.uid = info.gid = 0
            info.uname = info.gname = ""
            info.mtime = 0
            if info.isfile():
                with path.open("rb") as content:
                    tar.addfile(info, content)
            else:
                tar.addfile(info)
    return buffer.getvalue()


def _platforms() -> list[str]:
    """Every manylinux tag bookworm's glibc 2.36 runs (pip does not expand a given one downwards)."""
    machine = os.uname().machine
    tags = [f"manylinux_2_{minor}_{machine}" for minor in range(36, 4, -1)]
    tags += [f"manylinux{legacy}_{machine}" for legacy in ("2014", "2010", "1")]
    return [f"--platform={tag}" for tag in tags]


def _pip_target(target: Path, requirements: list[str], *, deps: bool) -> None:
    """Binary wheels for the image's Python (CPython 3.11 on glibc 2.36) into ``target``."""
    _run([
        sys.executable, "-m", "pip", "install", "--quiet", "--disable-pip-version-check",
        "--no-compile", "--only-binary=:all:", "--implementation=cp", "--python-version=3.11",
        "--abi=cp311", *_platforms(), f"--target={target}",
        *([] if deps else ["--no-deps"]), *requirements,
    ])


def _base_layer() -> bytes:
    """The cached base layer (built once per dependency list)."""
    key = hashlib.sha256(
        "\n".join([*_dependencies(), *DEBIAN_PACKAGES, *_PRUNED, PYTHON, USER]).encode()
    ).hexdigest()[:16]
    images = cache_dir() / "images"
    images.mkdir(parents=True, exist_ok=True)
    cached = images / f"barge-base-{key}.tar"
    with (images / ".barge-base.lock").open("w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if not cached.exists():
            with tempfile.TemporaryDirectory(dir=images) as scratch:
                staged = Path(scratch) / "layer.tar"
                staged.write_bytes(_build_base(Path(scratch) / "rootfs"))
                staged.rename(cached)
    return cached.read_bytes()


def _build_base(rootfs: Path) -> bytes:
    env = {**os.environ, "PATH": f"{cache_dir() / 'bin'}:{os.environ.get('PATH', '/usr/bin:/bin')}"}
    _run([str(tool_path("mmdebstrap")), "--mode=root",
          "--variant=extract", f"--include={','.join(DEBIAN_PACKAGES)}", "bookworm", str(rootfs)], env=env)
    for pruned in _PRUNED:
        shutil.rmtree(rootfs / pruned, ignore_errors=True)
    shell = rootfs / "bin/sh"
    if not shell.is_symlink():  # bookworm's dash ships it; older ones made it in a maintainer script
        shell.symlink_to("dash")
    # What ca-certificates' maintainer script would have made (extract runs none).
    bundle = rootfs / "etc/ssl/certs/ca-certificates.crt"
    bundle.parent.mkdir(parents=True, exist_ok=True)
    certificates = sorted((rootfs / "usr/share/ca-certificates").rglob("*.crt"))
    bundle.write_bytes(b"".join(p.read_bytes() for p in certificates))
    uid, gid = USER.split(":")
    (rootfs / "etc/passwd").write_text(
        "root:x:0:0:root:/root:/usr/sbin/nologin\n"
        f"barge:x:{uid}:{gid}:barge:/nonexistent:/usr/sbin/nologin\n"
    )
    (rootfs / "etc/group").write_text(f"root:x:0:\nbarge:x:{gid}:\n")
    (rootfs / "tmp").chmod(0o1777)
    _pip_target(rootfs / "opt/barge/lib", _dependencies(), deps=True)
    return _layer_of(rootfs)


def _barge_layer(scratch: Path) -> bytes:
    """Barge's wheel, as the Dockerfile builds it, and its launchers."""
    wheels = scratch / "wheels"
    _run([sys.executable, "-m", "pip", "wheel", "--quiet", "--no-deps", "--no-build-isolation",
          f"--wheel-dir={wheels}", str(_ROOT)], cwd=scratch)
    (wheel,) = wheels.glob("barge-*.whl")
    root = scratch / "barge-layer"
    _pip_target(root / "opt/barge/lib", [str(wheel)], deps=False)
    shutil.rmtree(root / "opt/barge/lib/bin", ignore_errors=True)  # launchers with the host's Python
    bin_dir = root / "opt/barge/bin"
    bin_dir.mkdir(parents=True)
    for name, target in _project()["scripts"].items():  # barge, barge-coordinator, barge-agent
        module, _, function = target.partition(":")
        launcher = bin_dir / name
        launcher.write_text(
            f"#!{PYTHON}\nimport sys\nfrom {module} import {function}\nsys.exit({function}())\n"
        )
        launcher.chmod(0o755)
    (bin_dir / "python").symlink_to(PYTHON)
    return _layer_of(root)


def build_barge_image(archive: Path) -> BuiltImage:
    """The Barge image as an OCI archive at ``archive`` (``RealNode.import_image`` loads it)."""
    base = _base_layer()
    with tempfile.TemporaryDirectory(prefix="barge-image-") as scratch:
        app = _barge_layer(Path(scratch))
    oci_archive(
        archive,
        BARGE_IMAGE,
        [base, app],
        cmd=["barge", "--help"],
        env=("PATH=/opt/barge/bin:/usr/bin:/bin", "PYTHONPATH=/opt/barge/lib", "PYTHONUNBUFFERED=1",
             "PYTHONDONTWRITEBYTECODE=1"),
        user=USER,
    )
    return BuiltImage(archive, BARGE_IMAGE, (len(base), len(app)))
