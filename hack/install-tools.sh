#!/usr/bin/env bash
# Builds the pinned upstream tools the tests and benchmarks use (etcd, kube-apiserver, minio, ...)
# from Go modules into a cache outside the repository, and reuses them while they stay intact.
#
#   hack/install-tools.sh [NAME ...]     build/verify the named tools (default: all under hack/tools/)
#   hack/install-tools.sh --print-bin-dir
#
# Each hack/tools/NAME/ is a Go wrapper module (go.mod + go.sum pin every version) plus tool.conf:
# VERSION, PACKAGE (what `go build` builds), LDFLAGS, TAGS (optional build tags), VERSION_ARGS,
# VERSION_EXPECT (empty: the binary is not run, e.g. a plugin), and optionally BUILDINFO_EXPECT (a
# line `go version -m` must show, for tools without a version flag).
# Cache: $BARGE_CACHE_DIR (default ~/.cache/barge)/tools/NAME-VERSION-HASH/NAME with a stamp `.ok`
# holding the binary's sha256; HASH covers the wrapper module, so any pin change rebuilds.
# bin/NAME always points at the verified build.
set -euo pipefail

here=$(cd "$(dirname "$0")" && pwd)
cache=${BARGE_CACHE_DIR:-$HOME/.cache/barge}
bin_dir=$cache/bin

if [ "${1:-}" = "--print-bin-dir" ]; then
  echo "$bin_dir"
  exit 0
fi

say() { echo "install-tools: $*" >&2; }
die() { say "$*"; exit 1; }

command -v go >/dev/null || die "Go is required to build the test tools (none on PATH); install Go 1.26+"
go_minor=$(go env GOVERSION | sed -E 's/^go1\.([0-9]+).*/\1/')
[ "${go_minor:-0}" -ge 26 ] || die "Go 1.26+ is required to build the pinned tools (found $(go env GOVERSION))"
command -v flock >/dev/null || die "flock (util-linux) is required"

mkdir -p "$cache/tools" "$bin_dir"

version_ok() {  # binary, args, expected substring (empty: not run), expected build-info line (optional)
  local out
  if [ -n "$3" ]; then
    out=$(timeout 30 "$1" $2 2>&1) || return 1
    case "$out" in *"$3"*) ;; *) return 1 ;; esac
  fi
  [ -z "${4:-}" ] && return 0
  out=$(go version -m "$1" 2>&1) || return 1
  case "$out" in *"$4"*) return 0 ;; *) return 1 ;; esac
}

install_tool() {
  local name=$1 dir=$here/tools/$1
  [ -f "$dir/tool.conf" ] || die "unknown tool '$name' (no $dir/tool.conf)"
  local VERSION PACKAGE LDFLAGS="" TAGS="" VERSION_ARGS VERSION_EXPECT BUILDINFO_EXPECT=
  # shellcheck disable=SC1091
  source "$dir/tool.conf"
  # One lock per tool: parallel invocations (hack/test.sh builds several at once) never build the
  # same tool twice, and different tools build concurrently (Go's build cache is safe for that).
  exec 9>"$cache/tools/.$name.lock"
  flock 9
  local hash
  hash=$(cd "$dir" && cat go.mod go.sum tool.conf $(ls ./*.go 2>/dev/null) | sha256sum | cut -c1-12)
  local target=$cache/tools/$name-$VERSION-$hash
  local binary=$target/$name

  if [ -f "$target/.ok" ] && [ -x "$binary" ]; then
    if [ "$(sha256sum "$binary" | cut -d' ' -f1)" = "$(cat "$target/.ok")" ] \
        && version_ok "$binary" "$VERSION_ARGS" "$VERSION_EXPECT" "$BUILDINFO_EXPECT"; then
      ln -sfn "$binary" "$bin_dir/$name"
      say "$name $VERSION: cached"
      exec 9>&-
      return
    fi
    say "$name $VERSION: cache broken (checksum or version mismatch), rebuilding"
  elif [ -d "$target" ]; then
    say "$name $VERSION: partial cache found, rebuilding"
  else
    say "$name $VERSION: building from Go modules (the first time takes minutes)..."
  fi
  rm -rf "$target"
  local staging
  staging=$(mktemp -d "$cache/tools/.build-$name-XXXXXX")
  local started=$SECONDS
  if ! (cd "$dir" && CGO_ENABLED=0 go build -trimpath -mod=readonly -tags "$TAGS" -ldflags "$LDFLAGS" \
          -o "$staging/$name" "$PACKAGE") >"$staging/build.log" 2>&1; then
    tail -20 "$staging/build.log" >&2
    rm -rf "$staging"
    die "$name $VERSION: build failed (log above)"
  fi
  version_ok "$staging/$name" "$VERSION_ARGS" "$VERSION_EXPECT" "$BUILDINFO_EXPECT" \
    || { rm -rf "$staging"; die "$name $VERSION: built binary does not report '$VERSION_EXPECT'"; }
  sha256sum "$staging/$name" | cut -d' ' -f1 >"$staging/.ok.pending"
  rm -f "$staging/build.log"
  mv "$staging" "$target"
  mv "$target/.ok.pending" "$target/.ok"
  ln -sfn "$binary" "$bin_dir/$name"
  say "$name $VERSION: built in $((SECONDS - started))s"
  exec 9>&-
}

if [ "$#" -eq 0 ]; then
  set -- $(cd "$here/tools" && ls -d */ | tr -d /)
fi
# Up to BARGE_TOOL_JOBS builds at once (default 3): module downloads and links overlap with
# compiles, and a fresh machine builds everything in well under the sum of the build times.
jobs_max=${BARGE_TOOL_JOBS:-3}
pids=() failed=0
for tool in "$@"; do
  while [ "$(jobs -rp | wc -l)" -ge "$jobs_max" ]; do wait -n || failed=1; done
  install_tool "$tool" &
  pids+=($!)
done
for pid in "${pids[@]}"; do wait "$pid" || failed=1; done
[ "$failed" -eq 0 ] || die "some tools failed to build (see above)"
