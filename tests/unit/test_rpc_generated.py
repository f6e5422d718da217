"""The committed protoc output must match proto/barge/v1/control.proto."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
GENERATED = ROOT / "barge" / "rpc" / "generated"


def test_committed_generated_code_is_up_to_date(tmp_path: Path) -> None:
    subprocess.run(
        ["bash", str(ROOT / "hack" / "gen-proto.sh"), str(tmp_path)],
        check=True,
        timeout=120,
        env={"PYTHON": sys.executable, "PATH": "/usr/bin:/bin"},
    )
    fresh = sorted(p.name for p in tmp_path.iterdir())
    committed = sorted(p.name for p in GENERATED.iterdir() if p.is_file())
    assert fresh == committed
    stale = [name for name in fresh if (tmp_path / name).read_bytes() != (GENERATED / name).read_bytes()]
    assert not stale, f"{stale} are stale: run `bash hack/gen-proto.sh` and commit the result"


def test_generated_code_imports_as_a_package() -> None:
    from barge.rpc.generated import control_pb2, control_pb2_grpc

    assert control_pb2_grpc.AgentControlStub is not None
    assert control_pb2.DESCRIPTOR.package == "barge.v1"
    assert control_pb2.DESCRIPTOR.services_by_name["AgentControl"].methods_by_name["Connect"]
