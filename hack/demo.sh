#!/usr/bin/env bash
# Barge's main job on its embedded defaults (the README's first command): a local Kubernetes control
# plane (real etcd + kube-apiserver, built once from pinned Go modules), a simulated two-node
# cluster, the coordinator and two agents as processes, a DataUpload and a DataDownload exactly as
# Velero creates them, and a bit-exact check of the restored volume.
set -euo pipefail
cd "$(dirname "$0")/.."
bash hack/install-tools.sh etcd kube-apiserver minio velero velero-plugin-for-aws
bash hack/bootstrap-python.sh
exec .venv/bin/python -m devenv.demo "$@"
