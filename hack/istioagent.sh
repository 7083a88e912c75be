#!/usr/bin/env bash
# Builds Istio's own agent (pilot-agent, unmodified, from istio.io/istio at
# the version hack/istioagent/go.mod names) and istio-probe (hack/istioagent:
# Istio's citadel client and secret cache, and gRPC apps reading the
# bootstrap pilot-agent writes) into a cache folder keyed by that version and
# a hash of the module. A no-op when cached. Prints the folder on stdout
# (progress goes to stderr); the end-to-end test reads it from
# WARDEN_ISTIO_AGENT_DIR.
#
# A cold build takes a few minutes on two cores.
set -euo pipefail
cd "$(dirname "$0")/istioagent"

version=$(awk '$1 == "istio.io/istio" {print $2; exit}' go.mod)
sum=$(cat go.mod go.sum main.go tools.go | sha256sum | cut -c1-12)
root=${WARDEN_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/warden}
dir=$root/istioagent/$version-$sum
if [ ! -x "$dir/pilot-agent" ] || [ ! -x "$dir/istio-probe" ]; then
  mkdir -p "$dir"
  echo "istioagent: building Istio $version pilot-agent and istio-probe (cached in $dir)" >&2
  # Private temporary names, then mv: two runs at once must not see each
  # other's half-written binaries.
  tmp=$(mktemp -d "$dir/build.XXXXXX")
  go build -trimpath -o "$tmp/pilot-agent" istio.io/istio/pilot/cmd/pilot-agent
  go build -trimpath -o "$tmp/istio-probe" .
  mv -f "$tmp/pilot-agent" "$dir/pilot-agent"
  mv -f "$tmp/istio-probe" "$dir/istio-probe"
  rmdir "$tmp"
fi
echo "$dir"
