#!/usr/bin/env bash
# Runs every fuzz target for a fixed number of executions each. The seed
# corpora live in each package's testdata/fuzz; plain 'go test' replays
# them too.
#
# Budgets are execution counts, not durations: with a duration, Go 1.26's
# fuzz coordinator can report "context deadline exceeded" at the deadline
# when a worker is slow to stop (golang/go#75804, fixed in Go 1.27), which
# fails the run with no crasher. A count has no deadline to race. The
# counts give roughly 5-10 s per target on a 2-core machine; FUZZ_SCALE
# multiplies them (e.g. FUZZ_SCALE=10 for a longer local run).
set -euo pipefail
cd "$(dirname "$0")/.."
scale=${FUZZ_SCALE:-1}
targets=(
  "./ca FuzzParseCSR 8000"
  "./ca FuzzSign 10000"
  "./ca FuzzWorkloadCSR 30000"
  "./token FuzzVerify 40000"
  "./token FuzzFromAuthorization 100000"
  "./api FuzzDecode 40000"
  "./authn FuzzCompile 12000"
  "./rbac FuzzExplain 10000"
  "./rbac FuzzMonotonic 6000"
  "./xds FuzzProxyConfig 3000"
  "./xds/ambient FuzzAmbientCompile 60000"
  "./federation FuzzBundleDocument 60000"
  "./federation FuzzParse 40000"
  "./federation FuzzParseSpec 30000"
  "./federation FuzzParseObjects 20000"
  "./ca/vault FuzzSignResponse 8000"
  "./ca/vault FuzzIssuerRoot 8000"
)
for t in "${targets[@]}"; do
  set -- $t
  n=$(($3 * scale))
  echo "fuzz: $2 in $1 for ${n} executions"
  go test -run '^$' -fuzz "^$2\$" -fuzztime "${n}x" -fuzzminimizetime 200x "$1"
done
