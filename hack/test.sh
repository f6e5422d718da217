#!/usr/bin/env bash
# The whole test suite, exactly as CI runs it: tools, Python env, lint, types, layers, tests.
set -euo pipefail
cd "$(dirname "$0")/.."

bash hack/install-tools.sh etcd kube-apiserver minio helm fake-gcs-server prometheus promtool velero velero-plugin-for-aws \
  kubelet kube-scheduler kube-controller-manager kube-proxy kubectl coredns containerd runc cni-plugins iptables busybox mmdebstrap
bash hack/install-azurite.sh
bash hack/bootstrap-python.sh

echo "== ruff" >&2
.venv/bin/ruff check .
echo "== mypy --strict" >&2
.venv/bin/mypy
echo "== import-linter (layer contracts)" >&2
.venv/bin/lint-imports
echo "== pytest" >&2
set +e
.venv/bin/pytest "$@"
code=$?
set -e
if [ "$code" -eq 5 ]; then
  echo "pytest collected no tests: that is a broken suite, not a green one" >&2
  exit 1
fi
exit "$code"
