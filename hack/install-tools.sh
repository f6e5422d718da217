#!/usr/bin/env bash
# Builds the pinned upstream tools the tests and benchmarks use (etcd, kube-apiserver, minio, ...)
# from Go modules, and unpacks the node runtime (containerd, runc, CNI plugins) from Debian
# packages, into a cache outside the repository; reuses them while they stay intact.
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
#
# A hack/tools/NAME/ with only a tool.conf that sets DEB_PACKAGE is a Debian package instead
# (then, optionally, the libraries it needs that a host may lack, unpacked alongside):
# `apt-get download` fetches the distribution's candidate (the host's apt lists), its upstream
# version must start with VERSION, and `dpkg-deb -x` unpacks it into the cache: nothing is
# installed on the system. LINKS (paths inside the package) get a bin/ link each, by base name;
# the first one is what VERSION_ARGS/VERSION_EXPECT run. The stamp `.ok` holds the sha256 of the
# unpacked tree, `.deb-version` the exact Debian version unpacked. Only the upstream version is
# pinned: Debian replaces its revisions (security updates) and drops the old ones from the mirrors.
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

require_go() {
  command -v go >/dev/null || die "Go is required to build the test tools (none on PATH); install Go 1.26+"
  local go_minor
  go_minor=$(go env GOVERSION | sed -E 's/^go1\.([0-9]+).*/\1/')
  [ "${go_minor:-0}" -ge 26 ] || die "Go 1.26+ is required to build the pinned tools (found $(go env GOVERSION))"
}
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

tree_sum() {  # one sha256 over an unpacked package: every name, link target and file content
  (cd "$1" \
    && find . -path ./.ok -prune -o -printf '%y %p %l\n' | LC_ALL=C sort \
    && find . -path ./.ok -prune -o -type f -print0 | LC_ALL=C sort -z | xargs -0 -r sha256sum) \
    | sha256sum | cut -d' ' -f1
}

link_tool() {  # target dir: bin/ links to what the tool provides
  local target=$1 link
  if [ -z "${DEB_PACKAGE:-}" ]; then
    ln -sfn "$target/$name" "$bin_dir/$name"
    return
  fi
  for link in $LINKS; do
    ln -sfn "$target/$link" "$bin_dir/$(basename "$link")"
  done
}

build_go_tool() {  # staging dir
  (cd "$dir" && CGO_ENABLED=0 go build -trimpath -mod=readonly -tags "$TAGS" -ldflags "$LDFLAGS" \
      -o "$1/$name" "$PACKAGE") >"$1/build.log" 2>&1 || { tail -20 "$1/build.log" >&2; return 1; }
  rm -f "$1/build.log"
}

unpack_deb_tool() {  # staging dir
  command -v apt-get >/dev/null && command -v dpkg-deb >/dev/null \
    || { say "$name: apt-get and dpkg-deb are required (a Debian or Ubuntu host)"; return 1; }
  local downloads=$1/.download deb version main=${DEB_PACKAGE%% *}
  mkdir "$downloads"
  # shellcheck disable=SC2086  # DEB_PACKAGE: the package, then the libraries it needs that a host may lack
  if ! (cd "$downloads" && apt-get download -q -o APT::Sandbox::User=root $DEB_PACKAGE) \
      >"$1/download.log" 2>&1; then
    tail -5 "$1/download.log" >&2
    say "$name: apt-get download $DEB_PACKAGE failed (no apt lists? run apt-get update)"
    return 1
  fi
  for deb in "$downloads"/*.deb; do
    version=$(dpkg-deb -f "$deb" Version)
    if [ "$(dpkg-deb -f "$deb" Package)" = "$main" ]; then
      case "${version#*:}" in
        "$VERSION"*) ;;
        *) say "$name: Debian offers $main $version, tool.conf pins upstream $VERSION"; return 1 ;;
      esac
    fi
    dpkg-deb -x "$deb" "$1"
    echo "$(dpkg-deb -f "$deb" Package) $version" >>"$1/.deb-version"
  done
  rm -rf "$downloads" "$1/download.log"
}

install_tool() {
  local name=$1 dir=$here/tools/$1
  [ -f "$dir/tool.conf" ] || die "unknown tool '$name' (no $dir/tool.conf)"
  local VERSION PACKAGE= LDFLAGS="" TAGS="" VERSION_ARGS VERSION_EXPECT BUILDINFO_EXPECT= DEB_PACKAGE= LINKS=
  # shellcheck disable=SC1091
  source "$dir/tool.conf"
  [ -n "$DEB_PACKAGE" ] || require_go
  # One lock per tool: parallel invocations (hack/test.sh builds several at once) never build the
  # same tool twice, and different tools build concurrently (Go's build cache is safe for that).
  exec 9>"$cache/tools/.$name.lock"
  flock 9
  local hash
  if [ -n "$DEB_PACKAGE" ]; then
    hash=$(sha256sum <"$dir/tool.conf" | cut -c1-12)
  else
    hash=$(cd "$dir" && cat go.mod go.sum tool.conf $(ls ./*.go 2>/dev/null) | sha256sum | cut -c1-12)
  fi
  local target=$cache/tools/$name-$VERSION-$hash
  local binary=$target/$name
  [ -z "$DEB_PACKAGE" ] || binary=$target/${LINKS%% *}
  local origin="from Go modules (the first time takes minutes)"
  [ -z "$DEB_PACKAGE" ] || origin="from Debian's ${DEB_PACKAGE// /, } package(s)"

  if [ -f "$target/.ok" ] && [ -x "$binary" ]; then
    local sum
    if [ -n "$DEB_PACKAGE" ]; then sum=$(tree_sum "$target"); else sum=$(sha256sum "$binary" | cut -d' ' -f1); fi
    if [ "$sum" = "$(cat "$target/.ok")" ] \
        && version_ok "$binary" "$VERSION_ARGS" "$VERSION_EXPECT" "$BUILDINFO_EXPECT"; then
      link_tool "$target"
      say "$name $VERSION: cached"
      exec 9>&-
      return
    fi
    say "$name $VERSION: cache broken (checksum or version mismatch), reinstalling"
  elif [ -d "$target" ]; then
    say "$name $VERSION: partial cache found, reinstalling"
  else
    say "$name $VERSION: installing $origin..."
  fi
  rm -rf "$target"
  local staging
  staging=$(mktemp -d "$cache/tools/.build-$name-XXXXXX")
  local started=$SECONDS
  if [ -n "$DEB_PACKAGE" ]; then
    unpack_deb_tool "$staging" || { rm -rf "$staging"; die "$name $VERSION: unpacking failed (above)"; }
  else
    build_go_tool "$staging" || { rm -rf "$staging"; die "$name $VERSION: build failed (log above)"; }
  fi
  local built=$staging/${binary#"$target"/}
  if ! version_ok "$built" "$VERSION_ARGS" "$VERSION_EXPECT" "$BUILDINFO_EXPECT"; then
    say "$built $VERSION_ARGS said: $(timeout 30 "$built" $VERSION_ARGS 2>&1 | head -3)"
    rm -rf "$staging"
    die "$name $VERSION: the installed binary does not report '$VERSION_EXPECT'"
  fi
  local sum
  if [ -n "$DEB_PACKAGE" ]; then sum=$(tree_sum "$staging"); else sum=$(sha256sum "$built" | cut -d' ' -f1); fi
  echo "$sum" >"$staging/.ok.pending"
  mv "$staging" "$target"
  mv "$target/.ok.pending" "$target/.ok"
  link_tool "$target"
  say "$name $VERSION: installed in $((SECONDS - started))s"
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
