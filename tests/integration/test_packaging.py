"""What ships: the wheel holds the product (barge, coordinator, agent) and nothing of the
development environment, the benchmarks or the tests; the image is built from that wheel."""

from __future__ import annotations

import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
pytestmark = pytest.mark.integration


def test_the_wheel_holds_the_product_and_no_development_environment(tmp_path: Path) -> None:
    """Built as the Dockerfile builds it (`pip wheel .`), from a copy of the checkout so that the
    build leaves nothing in the work tree."""
    source = tmp_path / "src"
    skip = shutil.ignore_patterns(
        ".git", ".venv", "build", "*.egg-info", "__pycache__", ".*_cache", ".hypothesis"
    )
    shutil.copytree(ROOT, source, ignore=skip)
    wheels = tmp_path / "wheels"
    build = [
        sys.executable,
        "-m",
        "pip",
        "wheel",
        "--no-deps",
        "--no-build-isolation",
        "-q",
        "-w",
        str(wheels),
        ".",
    ]
    subprocess.run(build, cwd=source, check=True, capture_output=True)
    (wheel,) = wheels.glob("barge-*.whl")
    names = zipfile.ZipFile(wheel).namelist()
    top = {name.split("/")[0] for name in names if not name.split("/")[0].endswith(".dist-info")}
    assert top == {"barge", "coordinator", "agent"}
    assert not [name for name in names if "devenv" in name or name.endswith(".yaml")]  # no test CRDs
    assert "barge/rpc/generated/control_pb2.py" in names
    entry_points = next(n for n in names if n.endswith("entry_points.txt"))
    scripts = zipfile.ZipFile(wheel).read(entry_points).decode()
    assert "barge = barge.cli.main:main" in scripts


def test_the_console_scripts_import_nothing_of_the_development_environment() -> None:
    """In a fresh interpreter, as an installed command would run: importing each command's module
    must not pull in devenv (the import-linter contract proves it for every import; this checks
    the real import graph, lazy imports included, for the three commands)."""
    probe = (
        "import sys, barge.cli.main, coordinator.main, agent.main; "
        "leaked = sorted(m for m in sys.modules if m.split('.')[0] in ('devenv', 'bench', 'tests')); "
        "print(leaked); sys.exit(1 if leaked else 0)"
    )
    done = subprocess.run(
        [sys.executable, "-c", probe], cwd=ROOT, capture_output=True, text=True, check=False
    )
    assert done.returncode == 0, done.stdout + done.stderr
