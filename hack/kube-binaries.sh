#!/usr/bin/env bash
# Builds kube-apiserver and etcd (and kubectl when the machine has none)
# from the Go module proxy at the Kubernetes version matching warden's
# client-go, into a cache folder keyed by that version. A no-op when the
# cache is complete. Prints the folder, which is what envtest wants in
# KUBEBUILDER_ASSETS.
#
# A cold build takes several minutes on two cores.
set -euo pipefail
cd "$(dirname "$0")/kubebin"

version=$(awk '$1 == "k8s.io/kubernetes" {print $2}' go.mod)
root=${WARDEN_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/warden}
dir=$root/kube/$version
mkdir -p "$dir"

build() { # name package
  if [ ! -x "$dir/$1" ]; then
    echo "kube-binaries: building $1 $version (cached in $dir)" >&2
    tmp=$(mktemp "$dir/$1.XXXXXX") # private: concurrent builds must not collide
    go build -trimpath -o "$tmp" "$2"
    mv -f "$tmp" "$dir/$1"
  fi
}
build etcd ./etcd
build kube-apiserver k8s.io/kubernetes/cmd/kube-apiserver
if ! command -v kubectl >/dev/null 2>&1; then
  build kubectl k8s.io/kubernetes/cmd/kubectl
fi
echo "$dir"
