#!/usr/bin/env bash
# Builds the Istio oracle (hack/istioauthz: Istio's own AuthorizationPolicy
# -> Envoy RBAC builder, with -listeners Istio's own listener generator
# for sidecars and gateways, and with -ambient istiod's ambient index, what
# ztunnel is served, at the istio.io/istio version in
# hack/istioauthz/go.mod) into a cache folder keyed by that version and a
# hash of the program (go.mod, go.sum and every .go file). A no-op when
# cached. Prints the binary's path on stdout (progress goes to stderr).
# rbac/istio_oracle_test.go, xds/istio_listeners_oracle_test.go,
# xds/istio_serviceentry_oracle_test.go,
# xds/istio_destinationrule_oracle_test.go,
# xds/istio_routes_oracle_test.go and
# internal/kube/registry/ambient_oracle_test.go run it
# (via internal/testkit.IstioOracle), unless WARDEN_ISTIO_AUTHZ_BIN names a
# binary.
#
# Next to the binary it puts istio-golden/{http,tcp}/*-in.yaml: the inputs of
# Istio's builder golden tests (pilot/pkg/security/authz/builder/testdata),
# copied from the istio.io/istio module at build time. They are Istio's
# files and are not part of warden's tree. Feed them to the oracle with
#   bin=$(hack/istioauthz.sh); "$bin" -list-istio-golden "$(dirname "$bin")/istio-golden" | "$bin"
#
# A cold build takes a few minutes on two cores (the listener generator,
# pilot/pkg/networking/core, adds about 40 packages to the RBAC builder's
# 1550 and some 20 seconds when the rest is in the build cache; the
# ambient index, through pilot/test/xds's fake discovery server, 167 more:
# 1589 -> 1756 in go list -deps).
set -euo pipefail
cd "$(dirname "$0")/istioauthz"

version=$(awk '$1 == "istio.io/istio" {print $2; exit}' go.mod)
sum=$(cat go.mod go.sum *.go | sha256sum | cut -c1-12)
root=${WARDEN_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/warden}
dir=$root/istioauthz/$version-$sum
bin=$dir/istioauthz
golden=$dir/istio-golden
if [ ! -x "$bin" ] || [ ! -d "$golden" ]; then
  mkdir -p "$dir"
  if [ ! -d "$golden" ]; then
    # go list -m names the folder only once the module is downloaded (a
    # fresh machine's module cache is empty).
    go mod download istio.io/istio
    mod=$(go list -m -f '{{.Dir}}' istio.io/istio)
    if [ -z "$mod" ]; then echo "istioauthz: istio.io/istio $version is not in the module cache" >&2; exit 1; fi
    src=$mod/pilot/pkg/security/authz/builder/testdata
    echo "istioauthz: copying Istio's builder golden inputs from $src" >&2
    # Private temporary names, then mv: two runs at once must not see or
    # move each other's half-done output.
    tmp=$(mktemp -d "$dir/istio-golden.XXXXXX")
    mkdir "$tmp/http" "$tmp/tcp"
    cp "$src"/http/*-in.yaml "$tmp/http/"
    cp "$src"/tcp/*-in.yaml "$tmp/tcp/"
    chmod -R u+w,go+rX "$tmp" # the module cache is read-only; mktemp -d is 0700
    mv -T "$tmp" "$golden" 2>/dev/null || rm -rf "$tmp"
  fi
  if [ ! -x "$bin" ]; then
    echo "istioauthz: building Istio $version authorization oracle (cached in $dir)" >&2
    # -mod=mod is not needed: go.sum is complete (plain go mod tidy, no
    # replace lines: istio.io/istio's own requirements all resolve).
    tmp=$(mktemp "$dir/istioauthz.XXXXXX")
    go build -trimpath -o "$tmp" .
    mv -f "$tmp" "$bin"
  fi
fi
echo "$bin"
