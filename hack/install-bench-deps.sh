#!/usr/bin/env bash
# The benchmark's peers: kopia (pinned Go module, cached) and restic (Debian package).
set -euo pipefail
cd "$(dirname "$0")/.."
bash hack/install-tools.sh kopia
if ! command -v restic >/dev/null; then
  echo "install-bench-deps: installing restic from Debian" >&2
  if [ "$(id -u)" -eq 0 ]; then apt-get update -qq && apt-get install -y -qq restic
  else sudo apt-get update -qq && sudo apt-get install -y -qq restic; fi
fi
restic version >&2
