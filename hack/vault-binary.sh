#!/usr/bin/env bash
# Builds the test Vault server (hack/vaultbin: Vault's core, HTTP API, PKI,
# AppRole and Kubernetes auth at the version in hack/vaultbin/go.mod) into a
# cache folder keyed by that version and a hash of the program. A no-op when
# cached. Prints the binary's path, which is what the tests want in
# WARDEN_VAULT_BIN.
#
# A cold build takes several minutes on two cores.
set -euo pipefail
cd "$(dirname "$0")/vaultbin"

version=$(awk '$1 == "github.com/hashicorp/vault" {print $2; exit}' go.mod)
sum=$(cat go.mod go.sum main.go | sha256sum | cut -c1-12)
root=${WARDEN_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/warden}
dir=$root/vault/$version-$sum
bin=$dir/vault
if [ ! -x "$bin" ]; then
  mkdir -p "$dir"
  echo "vault-binary: building Vault $version test server (cached in $dir)" >&2
  # -mod=mod is not needed: go.sum is complete for this program's packages
  # (go mod tidy -e: Vault's own test imports name modules the checksum
  # database does not have, which this program never builds).
  # A private temporary name: two builds at once (make test in two
  # checkouts) must not move each other's output.
  tmp=$(mktemp "$dir/vault.XXXXXX")
  go build -trimpath -o "$tmp" .
  mv -f "$tmp" "$bin"
fi
echo "$bin"
