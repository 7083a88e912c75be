#!/usr/bin/env bash
# Runs every fuzz target for the given time each (default 10s). The seed
# corpora live in each package's testdata/fuzz; plain 'go test' replays
# them too.
set -euo pipefail
cd "$(dirname "$0")/.."
fuzztime=${1:-10s}
targets=(
  "./ca FuzzParseCSR"
  "./ca FuzzSign"
  "./token FuzzVerify"
  "./api FuzzDecode"
  "./authn FuzzCompile"
  "./rbac FuzzExplain"
  "./xds FuzzProxyConfig"
)
for t in "${targets[@]}"; do
  set -- $t
  echo "fuzz: $2 in $1 for $fuzztime"
  go test -run '^$' -fuzz "^$2\$" -fuzztime "$fuzztime" "$1"
done
