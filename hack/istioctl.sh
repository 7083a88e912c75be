#!/usr/bin/env bash
# Builds Istio's istioctl (unmodified, from istio.io/istio at the version
# hack/istioagent/go.mod names: one hack/ module for Istio's binaries,
# pilot-agent's too) into a cache folder keyed by that version and a hash
# of the module. A no-op when
# cached. Prints the binary's path on stdout (progress goes to stderr); the
# "In istiod's place" migration test (internal/kube/e2e/istiodplace) reads
# it from WARDEN_ISTIOCTL: it renders Istio's install with `istioctl
# manifest generate` and injects sidecars with `istioctl kube-inject`, as
# the migration's steps do.
#
# A cold build takes a few minutes on two cores (about two when
# hack/istioagent.sh has filled the build cache).
set -euo pipefail
cd "$(dirname "$0")/istioagent"

version=$(awk '$1 == "istio.io/istio" {print $2; exit} $1 == "require" && $2 == "istio.io/istio" {print $3; exit}' go.mod)
sum=$(cat go.mod go.sum tools.go | sha256sum | cut -c1-12)
root=${WARDEN_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/warden}
dir=$root/istioctl/$version-$sum
if [ ! -x "$dir/istioctl" ]; then
  mkdir -p "$dir"
  echo "istioctl: building Istio $version istioctl (cached in $dir)" >&2
  tmp=$(mktemp "$dir/istioctl.XXXXXX") # private: concurrent builds must not collide
  go build -trimpath -o "$tmp" istio.io/istio/istioctl/cmd/istioctl
  mv -f "$tmp" "$dir/istioctl"
fi
echo "$dir/istioctl"
