#!/usr/bin/env bash
# Installs Azurite (Microsoft's Azure Storage emulator, the Azure Blob backend's test server) from
# the npm registry at a pinned version into the shared cache, and reuses it while it stays intact.
#
#   hack/install-azurite.sh
#
# Cache: $BARGE_CACHE_DIR (default ~/.cache/barge)/azurite/VERSION/ with a stamp `.ok` written only
# after the installed server reports the pinned version; bin/azurite-blob always points at it.
# 3.35.0 is the newest Azurite that supports Node.js 20 (3.36 requires Node 21+, 3.37 Node 22+).
set -euo pipefail

VERSION=3.35.0
cache=${BARGE_CACHE_DIR:-$HOME/.cache/barge}
bin_dir=$cache/bin
target=$cache/azurite/$VERSION

say() { echo "install-azurite: $*" >&2; }
die() { say "$*"; exit 1; }

command -v node >/dev/null || die "Node.js 20+ is required for Azurite (none on PATH)"
command -v npm >/dev/null || die "npm is required to install Azurite (none on PATH)"
node_major=$(node --version | sed -E 's/^v([0-9]+).*/\1/')
[ "${node_major:-0}" -ge 20 ] || die "Node.js 20+ is required for Azurite (found $(node --version))"
command -v flock >/dev/null || die "flock (util-linux) is required"

mkdir -p "$cache/azurite" "$bin_dir"
exec 9>"$cache/.install-azurite.lock"
flock 9

server=$target/node_modules/.bin/azurite-blob
version_ok() { [ "$(timeout 30 "$1" --version 2>/dev/null)" = "$VERSION" ]; }

if [ -f "$target/.ok" ] && [ -x "$server" ] && version_ok "$server"; then
  ln -sfn "$server" "$bin_dir/azurite-blob"
  say "azurite $VERSION: cached"
  exit 0
fi
[ -d "$target" ] && say "azurite $VERSION: partial or broken cache found, reinstalling"
rm -rf "$target"
staging=$(mktemp -d "$cache/azurite/.install-XXXXXX")
started=$SECONDS
say "azurite $VERSION: installing from the npm registry..."
if ! npm install --prefix "$staging" --no-audit --no-fund --omit=dev --loglevel=error \
      "azurite@$VERSION" >"$staging/install.log" 2>&1; then
  tail -20 "$staging/install.log" >&2
  rm -rf "$staging"
  die "azurite $VERSION: npm install failed (log above)"
fi
rm -f "$staging/install.log"
mv "$staging" "$target"
version_ok "$server" || { rm -rf "$target"; die "azurite $VERSION: installed server does not report $VERSION"; }
touch "$target/.ok"
ln -sfn "$server" "$bin_dir/azurite-blob"
say "azurite $VERSION: installed in $((SECONDS - started))s"
