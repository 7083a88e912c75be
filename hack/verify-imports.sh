#!/usr/bin/env bash
# The pure cores (ca, authn, rbac, sds, api, token, federation and the xds mesh model;
# not their edge packages such as ca/server, ca/vault, ca/client,
# sds/server, xds/server) must not depend on Kubernetes client code, gRPC,
# Vault or Prometheus, directly or through their dependencies. GOFLAGS
# reaches go list, so hack/verify_imports_test.go can add a bad import
# through an -overlay without touching the tree.
# Exceptions, libraries that merely live under Kubernetes' module paths and
# hold no Kubernetes API or client code: k8s.io/klog (logging; cfssl pulls
# it in through certificate-transparency-go) and sigs.k8s.io/yaml (YAML to
# JSON, used by api/ and for rendering). ca/vault must not depend on
# Kubernetes code either.
set -euo pipefail
cd "$(dirname "$0")/.."

forbidden='^(k8s\.io/|sigs\.k8s\.io/|google\.golang\.org/grpc|github\.com/hashicorp/vault|github\.com/prometheus/)'
allowed='^(k8s\.io/klog(/|$)|sigs\.k8s\.io/yaml(/|$))'
edges='/(server|vault|client)(/|$)'

cores=()
for root in ${VERIFY_IMPORTS_CORES:-ca authn rbac sds api token xds federation}; do
  [ -d "$root" ] || continue
  while IFS= read -r pkg; do
    [[ "$pkg" =~ $edges ]] && continue
    cores+=("$pkg")
  done < <(go list "./$root/..." | grep -v '/catest$')
done

fail=0
for pkg in "${cores[@]}"; do
  bad=$(go list -deps "$pkg" | grep -E "$forbidden" | grep -Ev "$allowed" || true)
  if [ -n "$bad" ]; then
    echo "verify-imports: $pkg depends on forbidden packages:" >&2
    # No pipe into head: it may exit before echo writes, and pipefail
    # would turn that SIGPIPE into a failure of its own.
    sed -n '1,5s/^/  /p' <<<"$bad" >&2
    echo "  ($(wc -l <<<"$bad") in all)" >&2
    fail=1
  fi
done
[ "$fail" = 0 ] && echo "verify-imports: ${#cores[@]} core packages clean (${cores[*]})"

# ca/vault (and its test server helper) talks to Vault, never to
# Kubernetes: Kubernetes auth only reads a token file.
kube='^(k8s\.io/|sigs\.k8s\.io/)'
vault_pkgs=$(go list ./ca/vault/...)
for pkg in $vault_pkgs; do
  bad=$(go list -deps "$pkg" | grep -E "$kube" | grep -Ev "$allowed" || true)
  if [ -n "$bad" ]; then
    echo "verify-imports: $pkg depends on Kubernetes packages:" >&2
    # No pipe into head: it may exit before echo writes, and pipefail
    # would turn that SIGPIPE into a failure of its own.
    sed -n '1,5s/^/  /p' <<<"$bad" >&2
    fail=1
  fi
done
[ "$fail" = 0 ] && echo "verify-imports: $(echo "$vault_pkgs" | wc -w) Vault packages free of Kubernetes code"
exit "$fail"
