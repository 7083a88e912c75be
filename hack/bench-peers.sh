#!/usr/bin/env bash
# Measures warden beside its peers on this machine, in alternating runs with
# one load shape (ECDSA P-256 CSRs with a SPIFFE URI SAN, CONCURRENCY
# callers, DURATION each): warden serve (gRPC over TLS; renewal mode, each
# caller's token answered from the cache, and fleet mode, a never-seen token
# per request), step-ca (HTTPS, a JWK provisioner's one-time token verified
# per request) and cfssl serve (plain HTTP, no authentication). Each line
# gives certs/s, p99 and the server's CPU per certificate (warden from its
# /metrics, the peers from /proc). step-ca and cfssl are built from the Go
# module proxy at the versions hack/benchpeers/go.mod names, cached like the
# kube and Vault binaries.
#
#   RUNS=3 DURATION=5s CONCURRENCY=16 WARDEN=bin/warden hack/bench-peers.sh
set -euo pipefail
cd "$(dirname "$0")/.."
RUNS=${RUNS:-3}
DURATION=${DURATION:-5s}
CONCURRENCY=${CONCURRENCY:-16}
WARDEN=${WARDEN:-bin/warden}
[ -x "$WARDEN" ] || go build -o "$WARDEN" ./cmd/warden

sum=$(cat hack/benchpeers/go.mod hack/benchpeers/go.sum hack/benchpeers/main.go | sha256sum | cut -c1-12)
cache=${WARDEN_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/warden}/peers/$sum
if [ ! -x "$cache/step-ca" ] || [ ! -x "$cache/cfssl" ] || [ ! -x "$cache/benchpeers" ]; then
  mkdir -p "$cache"
  echo "bench-peers: building step-ca, cfssl and the load generator (cached in $cache)" >&2
  # CGO off: step-ca's YubiKey (PIV) support needs libpcsclite, unused here.
  (cd hack/benchpeers && CGO_ENABLED=0 go build -trimpath -o "$cache/step-ca" github.com/smallstep/certificates/cmd/step-ca \
    && go build -trimpath -o "$cache/cfssl" github.com/cloudflare/cfssl/cmd/cfssl \
    && go build -trimpath -o "$cache/benchpeers" .)
fi

work=$(mktemp -d)
pids=()
cleanup() { for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done; rm -rf "$work"; }
trap cleanup EXIT
free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
wait_port() { for _ in $(seq 100); do (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null && return 0; sleep 0.1; done; echo "port $1 never opened" >&2; return 1; }

# A P-256 root (and, for step-ca, an intermediate) per peer.
cd "$work"
openssl ecparam -name prime256v1 -genkey -noout -out root.key 2>/dev/null
openssl req -x509 -new -key root.key -subj /CN=bench-root -days 30 -out root.crt 2>/dev/null
openssl ecparam -name prime256v1 -genkey -noout -out int.key 2>/dev/null
openssl req -new -key int.key -subj /CN=bench-intermediate -out int.csr 2>/dev/null
printf 'basicConstraints=critical,CA:TRUE,pathlen:0\nkeyUsage=critical,keyCertSign,cRLSign,digitalSignature\n' > int.ext
openssl x509 -req -in int.csr -CA root.crt -CAkey root.key -CAcreateserial -days 30 -extfile int.ext -out int.crt 2>/dev/null

# cfssl serve: the root signs, a 24h profile for server and client auth.
cat > cfssl.json <<'JSON'
{"signing": {"default": {"expiry": "24h", "usages": ["digital signature", "server auth", "client auth"]}}}
JSON
cport=$(free_port)
"$cache/cfssl" serve -address 127.0.0.1 -port "$cport" -ca root.crt -ca-key root.key -config cfssl.json -loglevel 5 >cfssl.log 2>&1 &
pids+=($!); cfssl_pid=$!

# step-ca: the intermediate signs; a JWK provisioner named bench.
pub=$("$cache/benchpeers" jwk "$work/prov.json")
sport=$(free_port)
cat > ca.json <<JSON
{"root": "$work/root.crt", "crt": "$work/int.crt", "key": "$work/int.key", "address": "127.0.0.1:$sport",
 "dnsNames": ["127.0.0.1"], "logger": {"format": "text"},
 "authority": {"provisioners": [{"type": "JWK", "name": "bench", "key": $pub}],
   "claims": {"minTLSCertDuration": "5m", "maxTLSCertDuration": "24h", "defaultTLSCertDuration": "24h"}}}
JSON
"$cache/step-ca" ca.json >step-ca.log 2>&1 &
pids+=($!); stepca_pid=$!

# warden serve.
wport=$(free_port); hport=$(free_port)
cd - >/dev/null
"$WARDEN" serve --data-dir "$work/warden" --listen "127.0.0.1:$wport" --http-listen "127.0.0.1:$hport" >"$work/warden.log" 2>&1 &
pids+=($!)
wait_port "$cport"; wait_port "$sport"; wait_port "$wport"

echo "ECDSA P-256 CSRs, $CONCURRENCY callers, $DURATION per run, $RUNS alternating runs; $(nproc) cores"
for run in $(seq "$RUNS"); do
  echo "== run $run"
  "$WARDEN" bench ca --addr "127.0.0.1:$wport" --data-dir "$work/warden" --duration "$DURATION" --concurrency "$CONCURRENCY" \
    --server-metrics "http://127.0.0.1:$hport/metrics" 2>/dev/null | grep -E 'throughput|latency|server CPU' | sed 's/^/warden (renewal): /'
  "$WARDEN" bench ca --addr "127.0.0.1:$wport" --data-dir "$work/warden" --duration "$DURATION" --concurrency "$CONCURRENCY" --fleet 60000 \
    --server-metrics "http://127.0.0.1:$hport/metrics" 2>/dev/null | grep -E 'throughput|latency|server CPU' | sed 's/^/warden (fleet): /'
  "$cache/benchpeers" -kind stepca -url "https://127.0.0.1:$sport" -pid "$stepca_pid" -root "$work/root.crt" -jwk "$work/prov.json" \
    -c "$CONCURRENCY" -d "$DURATION"
  "$cache/benchpeers" -kind cfssl -url "http://127.0.0.1:$cport" -pid "$cfssl_pid" -c "$CONCURRENCY" -d "$DURATION"
done
