#!/usr/bin/env bash
# Builds podcertclient (hack/kubebin/podcertclient): the kubelet's own
# pod-certificate client, k8s.io/kubernetes/pkg/kubelet/podcertificate's
# IssuingManager unmodified, at the Kubernetes version hack/kubebin/go.mod
# names, into a cache folder keyed by that version and a hash of the
# program. A no-op when cached. Prints the binary's path on stdout
# (progress goes to stderr); the tests read it from WARDEN_PODCERT_CLIENT.
#
# It shares hack/kubebin's module (and build cache) with kube-apiserver:
# after hack/kube-binaries.sh it takes seconds; cold, about a minute on
# two cores.
set -euo pipefail
cd "$(dirname "$0")/kubebin"

version=$(awk '$1 == "k8s.io/kubernetes" {print $2; exit}' go.mod)
sum=$(cat go.mod go.sum podcertclient/main.go | sha256sum | cut -c1-12)
root=${WARDEN_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/warden}
dir=$root/podcertclient/$version-$sum
if [ ! -x "$dir/podcertclient" ]; then
  mkdir -p "$dir"
  echo "podcert-client: building the kubelet's pod-certificate client at Kubernetes $version (cached in $dir)" >&2
  tmp=$(mktemp "$dir/podcertclient.XXXXXX") # private: concurrent builds must not collide
  go build -trimpath -o "$tmp" ./podcertclient
  mv -f "$tmp" "$dir/podcertclient"
fi
echo "$dir/podcertclient"
