#!/usr/bin/env bash
# warden's demo on the embedded defaults, no cluster needed: start the
# control plane in standalone mode, mint a service-account token for
# default/sleep, get a certificate with it, show its SPIFFE ID, check it
# with openssl, renew it over mTLS, and watch the CA refuse a token that
# asks for somebody else's identity.
#
# Env: WARDEN (binary, default bin/warden), DEMO_DIR (default a temp dir),
# DEMO_CA_PORT (15012), DEMO_HTTP_PORT (15014).
set -euo pipefail
cd "$(dirname "$0")/.."

warden=${WARDEN:-bin/warden}
work=${DEMO_DIR:-$(mktemp -d)}
ca_addr=127.0.0.1:${DEMO_CA_PORT:-15012}
http_addr=127.0.0.1:${DEMO_HTTP_PORT:-15014}
data=$work/warden-data
mkdir -p "$work"

step() { printf '\n\033[1m== %s\033[0m\n' "$*"; }
fail() { echo "demo: FAILED: $*" >&2; exit 1; }

step "warden serve --data-dir $data --listen $ca_addr"
"$warden" serve --data-dir "$data" --listen "$ca_addr" --http-listen "$http_addr" >"$work/serve.log" 2>&1 &
server=$!
trap 'kill $server 2>/dev/null; wait $server 2>/dev/null || true' EXIT
for _ in $(seq 100); do
  (exec 3<>"/dev/tcp/${ca_addr%:*}/${ca_addr#*:}") 2>/dev/null && break
  kill -0 $server 2>/dev/null || { cat "$work/serve.log"; fail "warden serve exited"; }
  sleep 0.1
done
sed 's/^/  /' "$work/serve.log"

step "warden token --namespace default --sa sleep"
"$warden" token --data-dir "$data" --namespace default --sa sleep >"$work/sleep.token"
cut -c1-60 "$work/sleep.token" | sed 's/$/.../'

step "warden cert request --token-file sleep.token --out sleep/"
"$warden" cert request --ca "$ca_addr" --data-dir "$data" --token-file "$work/sleep.token" --out "$work/sleep"

step "warden cert inspect sleep/cert-chain.pem"
"$warden" cert inspect "$work/sleep/cert-chain.pem" | tee "$work/inspect.txt"
grep -q 'SPIFFE ID:   spiffe://cluster.local/ns/default/sa/sleep' "$work/inspect.txt" || fail "wrong SPIFFE ID"

step "openssl verify -CAfile sleep/root-cert.pem sleep/cert-chain.pem"
openssl verify -x509_strict -purpose sslclient -CAfile "$work/sleep/root-cert.pem" "$work/sleep/cert-chain.pem"

step "renew over mTLS with the current SVID (no token)"
"$warden" cert request --ca "$ca_addr" --data-dir "$data" --renew --out "$work/sleep"

step "the sleep token asks for flaskapp's identity: refused"
if "$warden" cert request --ca "$ca_addr" --data-dir "$data" --token-file "$work/sleep.token" \
    --spiffe-id spiffe://cluster.local/ns/default/sa/flaskapp --out "$work/stolen" 2>"$work/refused.txt"; then
  fail "the CA issued flaskapp's identity to sleep"
fi
cat "$work/refused.txt"
grep -q 'code = PermissionDenied' "$work/refused.txt" || fail "expected PermissionDenied"

# ---------------------------------------------------------------------
# The mesh: flaskapp v1/v2 behind warden's xDS, proxyless gRPC workloads.
# ---------------------------------------------------------------------
app_port=${DEMO_APP_PORT:-8080}
mesh=$work/mesh
mkdir -p "$mesh"
for f in docs/examples/flaskapp/*.yaml; do
  sed "s/8080/$app_port/g" "$f" >"$mesh/$(basename "$f")"
done
kill $server; wait $server 2>/dev/null || true

step "warden serve --config-dir mesh/   (ServiceEntry registry, DestinationRule v1/v2, VirtualService -> v2, MeshPolicy STRICT, AuthorizationPolicy)"
"$warden" serve --data-dir "$data" --listen "$ca_addr" --http-listen "$http_addr" --config-dir "$mesh" >"$work/serve.log" 2>&1 &
server=$!
pids=($server)
trap 'kill "${pids[@]}" 2>/dev/null; wait 2>/dev/null || true' EXIT
for _ in $(seq 100); do
  (exec 3<>"/dev/tcp/${ca_addr%:*}/${ca_addr#*:}") 2>/dev/null && break
  kill -0 $server 2>/dev/null || { cat "$work/serve.log"; fail "warden serve exited"; }
  sleep 0.1
done
grep 'mesh configuration loaded' "$work/serve.log" | sed 's/^/  /'

step "warden agent for flaskapp, sleep and intruder (certificates in files for grpc-go's file_watcher)"
for sa in flaskapp sleep intruder; do
  "$warden" token --data-dir "$data" --namespace default --sa $sa >"$work/$sa.token"
  mkdir -p "$work/agent-$sa"
  "$warden" agent --ca "$ca_addr" --root-cert "$data/root-cert.pem" --token-file "$work/$sa.token" \
    --output-dir "$work/certs-$sa" --sds-socket "$work/agent-$sa/sds.sock" --workload-api-socket "" >"$work/agent-$sa.log" 2>&1 &
  pids+=($!)
done
for sa in flaskapp sleep intruder; do
  for _ in $(seq 100); do [ -s "$work/certs-$sa/key.pem" ] && break; sleep 0.1; done
  [ -s "$work/certs-$sa/key.pem" ] || { cat "$work/agent-$sa.log"; fail "agent for $sa wrote no certificate"; }
  echo "  $sa: $("$warden" cert inspect "$work/certs-$sa/cert-chain.pem" | grep 'SPIFFE ID')"
done

node() { echo "sidecar~$1~$2.default~default.svc.cluster.local"; }
step "warden demo server: flaskapp v1 on 127.0.0.2:$app_port, v2 on 127.0.0.3:$app_port"
for v in 1 2; do
  "$warden" demo server --xds "$ca_addr" --node "$(node 127.0.0.$((v + 1)) flaskapp-v$v)" --certs "$work/certs-flaskapp" \
    --listen "127.0.0.$((v + 1)):$app_port" --version v$v >"$work/flaskapp-v$v.log" 2>&1 &
  pids+=($!)
done

client() { # sa ip n
  "$warden" demo client --xds "$ca_addr" --node "$(node "$2" "$1")" --certs "$work/certs-$1" \
    --target "xds:///flaskapp.default.svc.cluster.local:$app_port" -n "$3"
}

step "warden demo client as sleep: the VirtualService sends every call to v2, over mTLS"
client sleep 127.0.0.4 10 | tee "$work/calls-v2.txt"
grep -q '"v2":10' "$work/calls-v2.txt" || fail "expected 10 calls answered by v2"
grep -q 'mTLS to spiffe://cluster.local/ns/default/sa/flaskapp' "$work/calls-v2.txt" || fail "expected mTLS"
! grep -q 'flaskapp v1' "$work/calls-v2.txt" || fail "v1 answered"

step "edit the VirtualService: 50/50 between v1 and v2 (warden re-reads the directory and pushes)"
cat >"$mesh/routing.yaml" <<YAML
apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {name: flaskapp, namespace: default}
spec:
  host: flaskapp
  subsets:
  - {name: v1, labels: {version: v1}}
  - {name: v2, labels: {version: v2}}
---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: flaskapp, namespace: default}
spec:
  hosts: [flaskapp]
  http:
  - route:
    - {destination: {host: flaskapp, subset: v1}, weight: 50}
    - {destination: {host: flaskapp, subset: v2}, weight: 50}
YAML
sed -n '/kind: VirtualService/,$p' "$mesh/routing.yaml" | sed 's/^/  /'
for _ in $(seq 50); do grep -q 'configuration reloaded' "$work/serve.log" && break; sleep 0.1; done
sleep 0.5
client sleep 127.0.0.4 20 | tee "$work/calls-split.txt"
grep -q '"v1":' "$work/calls-split.txt" && grep -q '"v2":' "$work/calls-split.txt" || fail "expected a mix of v1 and v2"

step "warden demo client as intruder: mTLS works, but the AuthorizationPolicy only allows sleep"
client intruder 127.0.0.5 3 >"$work/calls-denied.txt" 2>&1 || true
cat "$work/calls-denied.txt"
grep -q 'PermissionDenied' "$work/calls-denied.txt" || fail "expected PermissionDenied from RBAC"

step "warden proxy-config: the routes warden sends sleep"
"$warden" proxy-config --config-dir "$mesh" --node "$(node 127.0.0.4 sleep)" --generator grpc routes | sed -n '1,30p'

step "done: files in $work"
