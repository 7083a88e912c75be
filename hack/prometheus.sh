#!/usr/bin/env bash
# Builds the Prometheus server and promtool (github.com/prometheus/prometheus
# at the version hack/prombin/go.mod names; no web UI assets) into a cache
# folder keyed by that version and a hash of go.mod and go.sum. A no-op when
# cached. Prints the folder on stdout (progress goes to stderr); the
# dashboard and alert test reads it from WARDEN_PROMETHEUS_DIR.
#
# A cold build takes several minutes on two cores.
set -euo pipefail
cd "$(dirname "$0")/prombin"

version=$(awk '$1 == "github.com/prometheus/prometheus" {print $2; exit}' go.mod)
sum=$(cat go.mod go.sum | sha256sum | cut -c1-12)
root=${WARDEN_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/warden}
dir=$root/prometheus/$version-$sum
if [ ! -x "$dir/prometheus" ] || [ ! -x "$dir/promtool" ]; then
  mkdir -p "$dir"
  echo "prometheus: building Prometheus $version and promtool (cached in $dir)" >&2
  tmp=$(mktemp -d "$dir/build.XXXXXX")
  go build -trimpath -o "$tmp/prometheus" github.com/prometheus/prometheus/cmd/prometheus
  go build -trimpath -o "$tmp/promtool" github.com/prometheus/prometheus/cmd/promtool
  mv -f "$tmp/prometheus" "$dir/prometheus"
  mv -f "$tmp/promtool" "$dir/promtool"
  rmdir "$tmp"
fi
echo "$dir"
