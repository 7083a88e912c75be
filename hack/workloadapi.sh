#!/usr/bin/env bash
# Regenerates the Go code of warden's copy of Istio's workload API
# (xds/ambient/workloadapi: istio.workload.Address and
# istio.security.Authorization, the resources ztunnel subscribes to) from
# the .proto files next to it. Needs protoc (Debian: protobuf-compiler)
# and installs protoc-gen-go at the google.golang.org/protobuf version of
# go.mod into a cache folder. xds/ambient's TestGeneratedCodeIsCurrent
# runs it into a temporary directory and compares.
#
#   hack/workloadapi.sh            # rewrite the checked-in .pb.go files
#   hack/workloadapi.sh OUTDIR     # write them under OUTDIR instead
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
out=${1:-$root/xds/ambient}
command -v protoc >/dev/null || { echo "workloadapi.sh: protoc not found; install it (apt-get install protobuf-compiler)" >&2; exit 1; }
version=$(cd "$root" && go list -m -f '{{.Version}}' google.golang.org/protobuf)
cache=${WARDEN_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/warden}/protoc-gen-go/$version
if [ ! -x "$cache/protoc-gen-go" ]; then
	GOBIN=$cache go install "google.golang.org/protobuf/cmd/protoc-gen-go@$version" >&2
fi
src=$root/xds/ambient
mkdir -p "$out"
cd "$src"
PATH=$cache:$PATH protoc -I "$src" -I /usr/include \
	--go_out="$out" --go_opt=paths=source_relative \
	workloadapi/workload.proto workloadapi/security/authorization.proto
