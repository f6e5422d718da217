#!/usr/bin/env bash
# Generates barge/rpc/generated/ from proto/barge/v1/control.proto (protoc from grpcio-tools, typed
# stubs from mypy-protobuf). Usage: hack/gen-proto.sh [OUTPUT_DIR]   (default: barge/rpc/generated)
# The generated files are committed; tests/unit/test_rpc_generated.py fails when they are stale.
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
out=${1:-$root/barge/rpc/generated}
python=${PYTHON:-$root/.venv/bin/python}
bindir=$(dirname "$python")
for plugin in protoc-gen-mypy protoc-gen-mypy_grpc; do
  if [ ! -x "$bindir/$plugin" ]; then
    echo "gen-proto: $bindir/$plugin is missing; run 'bash hack/bootstrap-python.sh'" >&2
    exit 1
  fi
done
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
(cd "$root/proto" && "$python" -m grpc_tools.protoc -I . \
  --python_out="$work" --grpc_python_out="$work" \
  --plugin=protoc-gen-mypy="$bindir/protoc-gen-mypy" \
  --plugin=protoc-gen-mypy_grpc="$bindir/protoc-gen-mypy_grpc" \
  --mypy_out=quiet:"$work" --mypy_grpc_out=quiet:"$work" \
  barge/v1/control.proto)
# protoc names modules after the proto path (barge.v1.control_pb2); make them importable from the
# package they are committed in.
sed -i -e 's/^from barge\.v1 import /from barge.rpc.generated import /' "$work"/barge/v1/*.py "$work"/barge/v1/*.pyi
mkdir -p "$out"
cp "$work"/barge/v1/control_pb2.py "$work"/barge/v1/control_pb2.pyi \
  "$work"/barge/v1/control_pb2_grpc.py "$work"/barge/v1/control_pb2_grpc.pyi "$out"/
printf '"""protoc output for proto/barge/v1/control.proto; regenerate with hack/gen-proto.sh."""\n' \
  > "$out/__init__.py"
