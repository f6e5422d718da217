#!/usr/bin/env bash
# Barge's main job on its embedded defaults: a local-directory repository, a generated volume.
# Backs it up, backs it up again (nothing new is stored), restores it and proves it bit-exact.
set -euo pipefail
cd "$(dirname "$0")/.."
bash hack/bootstrap-python.sh

work=$(mktemp -d "${TMPDIR:-/tmp}/barge-demo.XXXXXX")
trap 'rm -rf "$work"' EXIT
export BARGE_REPOSITORY="file://$work/repository" BARGE_PASSWORD="demo-password-$RANDOM$RANDOM"
barge=.venv/bin/barge
step() { printf '\n\033[1m== %s\033[0m\n' "$*"; }

step "Generating a demo volume in $work/volume (files, dirs, a sparse image, hardlinks, odd names)"
.venv/bin/python - "$work/volume" <<'PY'
import os, random, sys
root = sys.argv[1]
rng = random.Random(42)
for d in range(20):
    os.makedirs(f"{root}/app/dir{d:02d}", exist_ok=True)
    for f in range(25):
        size = rng.choice([0, 100, 4096, 70_000, 300_000])
        with open(f"{root}/app/dir{d:02d}/file{f:03d}.dat", "wb") as out:
            out.write(rng.randbytes(size // 2) + b"log line\n" * (size // 18))
with open(f"{root}/disk.img", "wb") as out:
    out.truncate(256 * 2**20)
    out.seek(100 * 2**20); out.write(rng.randbytes(8 * 2**20))
os.link(f"{root}/app/dir00/file000.dat", f"{root}/hardlink.dat")
open(os.path.join(os.fsencode(root), b"caf\xe9-latin1.txt"), "wb").write(b"non-UTF-8 name\n")
os.symlink("app/dir01", f"{root}/shortcut")
PY

step "barge repo init (repository: $BARGE_REPOSITORY)"
$barge repo init
step "barge backup (first: everything is new)"
$barge backup "$work/volume" --json | .venv/bin/python -m json.tool
step "barge backup (second: unchanged files are skipped, nothing new is stored)"
$barge backup "$work/volume" --json | .venv/bin/python -m json.tool
step "barge snapshots"
$barge snapshots
snapshot=$($barge snapshots --json | .venv/bin/python -c 'import json,sys; print(json.load(sys.stdin)[-1]["id"])')
step "barge restore $snapshot"
$barge restore "$snapshot" "$work/restored"
step "Verifying the restore is bit-exact (content, modes, times, links, holes)"
.venv/bin/python - "$work/volume" "$work/restored" <<'PY'
import sys
sys.path.insert(0, ".")
from pathlib import Path
from barge.devenv.trees import capture
source, restored = capture(Path(sys.argv[1])), capture(Path(sys.argv[2]))
assert source == restored, "restore differs from the source"
print(f"identical: {len(source)} entries")
PY
step "barge check --read-data (every stored byte verified)"
$barge check --read-data
step "Done"
